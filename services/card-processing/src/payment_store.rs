//! Data access of a card payment's life after its authorisation: message claims, the
//! payment's state with the messages applied to it, and the expiry index.
//!
//! ```text
//!   payment_messages   message id -> fingerprint, payment id        (claimed first)
//!   payments           payment id -> 'state' + 'message:<id>'        (one CAS per message)
//!   expiring_authorisations  minute of expiry -> authorisation ids  (written with the claim)
//! ```

use std::time::Duration;

use prost::Message;
use sterling_money::{Currency, Money};
use sterling_proto::cardprocessing::v1::PaymentMessageResult;
use sterling_storage::{Applied, Condition, Mutation, Query, Row, SharedStore, Value, now_millis};
use sterling_template::{Error, Result};

/// Width of one `expiring_authorisations` partition, in milliseconds of `expires_at`.
pub const EXPIRY_BUCKET_MS: i64 = 60_000;

/// How long an expiry index row is kept past the expiry it announces.
const EXPIRY_ROW_MARGIN: Duration = Duration::from_secs(7 * 24 * 3600);

const STATE: &str = "state";

fn message_entry(message_id: &str) -> String {
    format!("message:{message_id}")
}

fn entry_key(payment_id: &str, entry: &str) -> Row {
    Row::new()
        .with("payment_id", payment_id)
        .with("entry", entry)
}

/// A payment as it stands, in its account's currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentState {
    /// The authorisation id, or the message id of a refund or force post with none.
    pub payment_id: String,
    /// The account it moves money on (empty when none is known).
    pub account_id: String,
    /// The account's currency.
    pub currency: Currency,
    /// The authorisation's transaction (or the refund's, the force post's).
    pub transaction_id: String,
    /// Still reserved.
    pub held: i64,
    /// Posted by clearings and force posts.
    pub settled: i64,
    /// Given back.
    pub refunded: i64,
    /// Held when approved, plus increments.
    pub authorised: i64,
    /// pending | settled | reversed | expired | refunded | declined
    pub status: String,
    /// One more per message applied; 0 before the first.
    pub version: i64,
}

impl PaymentState {
    /// An amount of this payment's currency.
    pub fn money(&self, minor: i64) -> Money {
        Money::from_minor(minor, self.currency)
    }
}

/// Who a message belongs to, as its claim recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageClaim {
    /// The payment.
    pub payment_id: String,
    /// The transaction id fixed for the message (used by refunds and force posts).
    pub transaction_id: String,
}

/// Data access of payments.
#[derive(Clone)]
pub struct PaymentStore {
    store: SharedStore,
}

impl PaymentStore {
    /// Wraps the service's store.
    pub fn new(store: SharedStore) -> Self {
        PaymentStore { store }
    }

    /// Claims `message_id` for a message with `fingerprint`; a repeat gets the first claim,
    /// a different message under the id `conflict.message`.
    pub async fn claim_message(
        &self,
        message_id: &str,
        fingerprint: &str,
        payment_id: &str,
    ) -> Result<MessageClaim> {
        let transaction_id = uuid::Uuid::now_v7().to_string();
        let row = Row::new()
            .with("message_id", message_id)
            .with("fingerprint", fingerprint)
            .with("payment_id", payment_id)
            .with("transaction_id", transaction_id.as_str())
            .with("claimed_at", Value::Timestamp(now_millis()));
        match self
            .store
            .apply(vec![Mutation::insert_if_not_exists(
                "payment_messages",
                row,
            )])
            .await?
        {
            Applied::Yes => Ok(MessageClaim {
                payment_id: payment_id.to_string(),
                transaction_id,
            }),
            Applied::No(current) => {
                let row = current
                    .into_iter()
                    .flatten()
                    .next()
                    .ok_or_else(|| Error::internal("message claim failed without a row"))?;
                if row.text("fingerprint")? != fingerprint {
                    return Err(Error::conflict(
                        "message",
                        "message id already used for a different message",
                    )
                    .with_param("message_id", message_id));
                }
                Ok(MessageClaim {
                    payment_id: row.text("payment_id")?.to_string(),
                    transaction_id: row.text("transaction_id")?.to_string(),
                })
            }
        }
    }

    /// The recorded result of a message, once applied.
    pub async fn result(
        &self,
        payment_id: &str,
        message_id: &str,
    ) -> Result<Option<PaymentMessageResult>> {
        let Some(row) = self
            .store
            .get(
                "payments",
                &entry_key(payment_id, &message_entry(message_id)),
            )
            .await?
        else {
            return Ok(None);
        };
        let result = PaymentMessageResult::decode(row.blob("result")?)
            .map_err(|e| Error::internal(format!("stored result: {e}")))?;
        Ok(Some(result))
    }

    /// The event id recorded with a message's result, if it was applied.
    pub async fn event_id(&self, payment_id: &str, message_id: &str) -> Result<Option<String>> {
        let row = self
            .store
            .get(
                "payments",
                &entry_key(payment_id, &message_entry(message_id)),
            )
            .await?;
        Ok(row.map(|r| r.text("event_id").unwrap_or_default().to_string()))
    }

    /// A payment's state, if any message was applied to it.
    pub async fn payment(&self, payment_id: &str) -> Result<Option<PaymentState>> {
        let Some(row) = self
            .store
            .get("payments", &entry_key(payment_id, STATE))
            .await?
        else {
            return Ok(None);
        };
        let currency = Currency::from_code(row.text("currency")?)
            .map_err(|e| Error::internal(format!("stored currency: {e}")))?;
        Ok(Some(PaymentState {
            payment_id: payment_id.to_string(),
            account_id: row.text("account_id").unwrap_or_default().to_string(),
            currency,
            transaction_id: row.text("transaction_id").unwrap_or_default().to_string(),
            held: row.i64("held")?,
            settled: row.i64("settled")?,
            refunded: row.i64("refunded")?,
            authorised: row.i64("authorised")?,
            status: row.text("status")?.to_string(),
            version: row.i64("version")?,
        }))
    }

    /// Moves the payment from `before` (its version; 0: no state yet) to `after` and records
    /// the message's `result` with its `event_id`, in one compare-and-set. `false` if another
    /// message moved the payment first (read it again and retry) or this message is already
    /// recorded.
    pub async fn record(
        &self,
        after: &PaymentState,
        message_id: &str,
        result: &PaymentMessageResult,
        event_id: &str,
    ) -> Result<bool> {
        let before = after.version - 1;
        let columns = Row::new()
            .with("account_id", after.account_id.as_str())
            .with("currency", after.currency.code())
            .with("transaction_id", after.transaction_id.as_str())
            .with("held", after.held)
            .with("settled", after.settled)
            .with("refunded", after.refunded)
            .with("authorised", after.authorised)
            .with("status", after.status.as_str())
            .with("version", after.version)
            .with("updated_at", Value::Timestamp(now_millis()));
        let state = if before == 0 {
            let mut row = entry_key(&after.payment_id, STATE);
            row.0.extend(columns.0);
            Mutation::insert_if_not_exists("payments", row)
        } else {
            Mutation::update(
                "payments",
                entry_key(&after.payment_id, STATE),
                columns,
                vec![Condition::Equals("version".into(), Value::BigInt(before))],
            )
        };
        let message = entry_key(&after.payment_id, &message_entry(message_id))
            .with("result", result.encode_to_vec())
            .with("event_id", event_id)
            .with("updated_at", Value::Timestamp(now_millis()));
        let outcome = self
            .store
            .apply(vec![
                state,
                Mutation::insert_if_not_exists("payments", message),
            ])
            .await?;
        Ok(outcome.applied())
    }

    /// The index row that makes the expiry job look at an authorisation at `expires_at`.
    pub fn expiring_row(authorisation_id: &str, expires_at: i64) -> Mutation {
        let row = Row::new()
            .with("bucket", expires_at.div_euclid(EXPIRY_BUCKET_MS))
            .with("processor_authorisation_id", authorisation_id)
            .with("expires_at", Value::Timestamp(expires_at));
        let lives = Duration::from_millis((expires_at - now_millis()).max(0) as u64);
        Mutation::insert("expiring_authorisations", row).with_ttl(lives + EXPIRY_ROW_MARGIN)
    }

    /// The authorisations expiring in one bucket, with when.
    pub async fn expiring_in(&self, bucket: i64) -> Result<Vec<(String, i64)>> {
        let rows = self
            .store
            .query(Query::partition(
                "expiring_authorisations",
                Row::new().with("bucket", bucket),
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.text("processor_authorisation_id")?.to_string(),
                    r.timestamp("expires_at")?,
                ))
            })
            .collect()
    }

    /// The expiry job's watermark (every bucket below it is done), if it ever ran.
    pub async fn expiry_watermark(&self) -> Result<Option<i64>> {
        let row = self
            .store
            .get(
                "sweeper_progress",
                &Row::new().with("name", "expiring_authorisations"),
            )
            .await?;
        row.map(|r| Ok(r.i64("bucket")?)).transpose()
    }

    /// Saves the expiry job's watermark.
    pub async fn save_expiry_watermark(&self, bucket: i64) -> Result<()> {
        let row = Row::new()
            .with("name", "expiring_authorisations")
            .with("bucket", bucket);
        self.store
            .apply(vec![Mutation::insert("sweeper_progress", row)])
            .await?;
        Ok(())
    }
}
