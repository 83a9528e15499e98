//! Authorisation records: the decision as a persisted state machine.
//!
//! ```text
//!   (none) --claim--> processing --settle--> decided (approved | declined)
//!                                              approved --reverse--> declined, reversed
//! ```
//! Every transition is a compare-and-set, so exactly one of the racers wins: the saga's own
//! decision (conditioned on its claim), the timeout decline of any caller at its deadline, the
//! sweeper finishing an abandoned claim, and card-api's stand-in decline. `declined` is final.
//! An `open_authorisations` row (in a bucket of its second) is written before the claim; the
//! sweeper passes over the buckets in order and moves its watermark past a bucket only once
//! every decision in it stands, is announced, and whatever a decline must undo is undone.
//! The decision's announcement is written with the decision, in the same compare-and-set.

use std::time::Duration;

use sterling_money::{Currency, Money};
use sterling_storage::{Applied, Condition, Mutation, Query, Row, SharedStore, Value, now_millis};
use sterling_template::{Error, Result};

use crate::authorisation::Authorisation;
use crate::payment_store::PaymentStore;

/// Width of one `open_authorisations` partition, in milliseconds of `opened_at`.
pub const OPEN_BUCKET_MS: i64 = 1_000;

/// How long an `open_authorisations` row lives at most (long after any sweep needs it).
pub const OPEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A decided authorisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The processor's id.
    pub processor_authorisation_id: String,
    /// Approved or declined.
    pub approved: bool,
    /// Stable reason code.
    pub reason: String,
    /// Account charged (empty when it was not known when deciding).
    pub account_id: String,
    /// Held amount in minor units (0 when declined).
    pub held_amount: i64,
    /// Held currency.
    pub held_currency: String,
    /// Transaction id (UUIDv7).
    pub transaction_id: String,
    /// The event announcing this decision.
    pub event_id: String,
    /// Declined after having been approved (card-api answered a decline on its own).
    pub reversed: bool,
}

/// Where an authorisation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Being decided under `claim` until about `deadline_at` (ms since the epoch).
    Processing {
        /// The claim token of the saga deciding.
        claim: String,
        /// When its decider's budget runs out.
        deadline_at: i64,
    },
    /// Decided.
    Decided(Decision),
}

/// An authorisation's stored record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The request, as first received.
    pub authorisation: Authorisation,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The transaction id fixed at claim time.
    pub transaction_id: String,
    /// Where it stands.
    pub state: State,
    /// The announcement of the decision (an encoded envelope), once decided.
    pub event: Option<Vec<u8>>,
}

impl Record {
    /// The decision, if decided.
    pub fn decision(&self) -> Option<&Decision> {
        match &self.state {
            State::Decided(d) => Some(d),
            State::Processing { .. } => None,
        }
    }
}

/// What [`AuthorisationStore::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// This request decides; here is the transaction id to use.
    Won {
        /// The claim token.
        claim: String,
        /// The transaction id fixed for this authorisation.
        transaction_id: String,
    },
    /// Someone else claimed it first (deciding, or decided).
    Taken(Box<Record>),
}

/// Which state a [`AuthorisationStore::settle`] may move from.
#[derive(Debug, Clone)]
pub enum From {
    /// Processing under this claim (the saga's own decision).
    Claim(String),
    /// Processing under any claim (a timeout decline, the sweeper, a stand-in).
    AnyClaim,
    /// Approved and announced by this event (a reversal).
    Approved(String),
}

/// Data access of card-processing.
#[derive(Clone)]
pub struct AuthorisationStore {
    store: SharedStore,
    /// How long an approval holds funds before the expiry job releases them.
    expiry: Duration,
}

/// How long an authorisation holds funds uncleared, unless configured otherwise.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

fn key(id: &str) -> Row {
    Row::new().with("processor_authorisation_id", id)
}

fn text(row: &Row, column: &str) -> String {
    row.text(column).unwrap_or_default().to_string()
}

fn record_from_row(id: &str, row: &Row) -> Result<Record> {
    let currency = Currency::from_code(row.text("currency")?)
        .map_err(|e| Error::internal(format!("stored currency: {e}")))?;
    let authorisation = Authorisation {
        processor_authorisation_id: id.to_string(),
        card_token: text(row, "card_token"),
        amount: Money::from_minor(row.i64("amount")?, currency),
        merchant_descriptor: text(row, "merchant_descriptor"),
        mcc: text(row, "mcc"),
        merchant_country: text(row, "merchant_country"),
        merchant_city: text(row, "merchant_city"),
    };
    let transaction_id = row.text("transaction_id")?.to_string();
    let state = match row.text("state")? {
        "decided" => State::Decided(Decision {
            processor_authorisation_id: id.to_string(),
            approved: row.bool("approved")?,
            reason: row.text("reason")?.to_string(),
            account_id: text(row, "account_id"),
            held_amount: row.i64("held_amount").unwrap_or_default(),
            held_currency: text(row, "held_currency"),
            transaction_id: transaction_id.clone(),
            event_id: text(row, "event_id"),
            reversed: row.bool("reversed").unwrap_or(false),
        }),
        _ => State::Processing {
            claim: text(row, "claim"),
            deadline_at: row
                .timestamp("deadline_at")
                .or_else(|_| row.timestamp("claimed_at"))?,
        },
    };
    Ok(Record {
        authorisation,
        fingerprint: text(row, "fingerprint"),
        transaction_id,
        state,
        event: row.blob("event").ok().map(<[u8]>::to_vec),
    })
}

impl AuthorisationStore {
    /// Wraps the service's store.
    pub fn new(store: SharedStore) -> Self {
        AuthorisationStore {
            store,
            expiry: DEFAULT_EXPIRY,
        }
    }

    /// The same store, with authorisations expiring `expiry` after they are claimed.
    pub fn expiring_after(mut self, expiry: Duration) -> Self {
        self.expiry = expiry;
        self
    }

    /// Records `id` declined for good before any request for it was seen (a reversal or a
    /// clearing arrived first): the authorisation request, when it comes, finds this record
    /// (it matches any request) and is declined. Returns the record that stands.
    pub async fn close_unseen(
        &self,
        id: &str,
        card_token: &str,
        amount: Money,
        reason: &str,
    ) -> Result<Record> {
        let row = key(id)
            .with("fingerprint", "")
            .with("state", "decided")
            .with("approved", false)
            .with("reason", reason)
            .with("transaction_id", uuid::Uuid::now_v7().to_string())
            .with("card_token", card_token)
            .with("amount", amount.minor_units())
            .with("currency", amount.currency().code())
            .with("held_amount", 0i64)
            .with("held_currency", "")
            .with("event_id", "")
            .with("reversed", false)
            .with("claimed_at", Value::Timestamp(now_millis()))
            .with("decided_at", Value::Timestamp(now_millis()));
        self.store
            .apply(vec![Mutation::insert_if_not_exists("authorisations", row)])
            .await?;
        self.record(id)
            .await?
            .ok_or_else(|| Error::internal("closed authorisation has no record"))
    }

    /// The record of `id`, if any.
    pub async fn record(&self, id: &str) -> Result<Option<Record>> {
        match self.store.get("authorisations", &key(id)).await? {
            Some(row) => Ok(Some(record_from_row(id, &row)?)),
            None => Ok(None),
        }
    }

    /// The decision for `id`: `None` while it is being decided, `not_found` if unknown.
    pub async fn decision(&self, id: &str) -> Result<Option<Decision>> {
        match self.record(id).await? {
            Some(record) => Ok(record.decision().cloned()),
            None => Err(Error::not_found("authorisation", "no such authorisation")
                .with_param("processor_authorisation_id", id)),
        }
    }

    fn open_row(id: &str) -> Mutation {
        let now = now_millis();
        let row = Row::new()
            .with("shard", Self::bucket_of(now))
            .with("processor_authorisation_id", id)
            .with("opened_at", Value::Timestamp(now));
        Mutation::insert("open_authorisations", row).with_ttl(OPEN_TTL)
    }

    /// Marks `id` as possibly needing work (the sweeper will look at it).
    pub async fn open(&self, id: &str) -> Result<()> {
        self.store.apply(vec![Self::open_row(id)]).await?;
        Ok(())
    }

    /// The open ids of one bucket, with when they were opened.
    pub async fn open_in_bucket(&self, bucket: i64) -> Result<Vec<(String, i64)>> {
        let rows = self
            .store
            .query(Query::partition(
                "open_authorisations",
                Row::new().with("shard", bucket),
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.text("processor_authorisation_id")?.to_string(),
                    r.timestamp("opened_at")?,
                ))
            })
            .collect()
    }

    /// The bucket of a time, in milliseconds since the epoch.
    pub fn bucket_of(millis: i64) -> i64 {
        millis.div_euclid(OPEN_BUCKET_MS)
    }

    /// Claims the right to decide `a` until `deadline_at`, or reports who has it. A record
    /// under another fingerprint is a `conflict.authorisation`. The open row goes first (in
    /// the same commit where the backend allows), so that a claim is never out of the
    /// sweeper's sight.
    pub async fn claim(&self, a: &Authorisation, deadline_at: i64) -> Result<Claim> {
        let claim = uuid::Uuid::new_v4().to_string();
        let transaction_id = uuid::Uuid::now_v7().to_string();
        let fingerprint = a.fingerprint();
        let row = key(&a.processor_authorisation_id)
            .with("fingerprint", fingerprint.as_str())
            .with("state", "processing")
            .with("claim", claim.as_str())
            .with("claimed_at", Value::Timestamp(now_millis()))
            .with("deadline_at", Value::Timestamp(deadline_at))
            .with("transaction_id", transaction_id.as_str())
            .with("card_token", a.card_token.as_str())
            .with("amount", a.amount.minor_units())
            .with("currency", a.amount.currency().code())
            .with("merchant_descriptor", a.merchant_descriptor.as_str())
            .with("mcc", a.mcc.as_str())
            .with("merchant_country", a.merchant_country.as_str())
            .with("merchant_city", a.merchant_city.as_str());
        let mut outcomes = self
            .store
            .apply_in_order(vec![
                vec![
                    Self::open_row(&a.processor_authorisation_id),
                    PaymentStore::expiring_row(
                        &a.processor_authorisation_id,
                        now_millis() + self.expiry.as_millis() as i64,
                    ),
                ],
                vec![Mutation::insert_if_not_exists("authorisations", row)],
            ])
            .await?;
        match outcomes.pop().unwrap_or(Applied::Yes) {
            Applied::Yes => Ok(Claim::Won {
                claim,
                transaction_id,
            }),
            Applied::No(current) => {
                let existing = current
                    .into_iter()
                    .flatten()
                    .next()
                    .ok_or_else(|| Error::internal("claim failed without a current row"))?;
                let record = record_from_row(&a.processor_authorisation_id, &existing)?;
                // An empty fingerprint: closed before any request was seen, for every request.
                if record.fingerprint != fingerprint && !record.fingerprint.is_empty() {
                    return Err(Authorisation::conflict(&a.processor_authorisation_id));
                }
                Ok(Claim::Taken(Box::new(record)))
            }
        }
    }

    fn decided_columns(row: Row, decision: &Decision) -> Row {
        row.with("state", "decided")
            .with("approved", decision.approved)
            .with("reason", decision.reason.as_str())
            .with("account_id", decision.account_id.as_str())
            .with("held_amount", decision.held_amount)
            .with("held_currency", decision.held_currency.as_str())
            .with("event_id", decision.event_id.as_str())
            .with("reversed", decision.reversed)
            .with("decided_at", Value::Timestamp(now_millis()))
    }

    /// Moves `decision`'s authorisation to decided with its announcement `event` (an encoded
    /// envelope), if it is still in the state `from` expects. Returns whether this call won;
    /// either way the caller reads what stands.
    pub async fn settle(&self, from: &From, decision: &Decision, event: Vec<u8>) -> Result<bool> {
        let mut conditions = Vec::new();
        match from {
            From::Claim(claim) => {
                conditions.push(Condition::Equals("state".into(), "processing".into()));
                conditions.push(Condition::Equals("claim".into(), claim.as_str().into()));
            }
            From::AnyClaim => {
                conditions.push(Condition::Equals("state".into(), "processing".into()));
            }
            From::Approved(event_id) => {
                conditions.push(Condition::Equals("state".into(), "decided".into()));
                conditions.push(Condition::Equals("approved".into(), true.into()));
                conditions.push(Condition::Equals(
                    "event_id".into(),
                    event_id.as_str().into(),
                ));
            }
        }
        let update = Mutation::update(
            "authorisations",
            key(&decision.processor_authorisation_id),
            Self::decided_columns(Row::new(), decision).with("event", event),
            conditions,
        );
        Ok(self.store.apply(vec![update]).await?.applied())
    }
}
