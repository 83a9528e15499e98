//! The read model's data: the highest-version ledger snapshot per account, and approved card
//! payments per account per UTC day. Both are idempotent by construction (a snapshot never
//! replaces a higher version; a payment is one row per authorisation id), so a redelivered
//! event changes nothing.

use prost::Message;
use sterling_bus::Envelope;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{
    AccountBalanceChanged, CardAuthorisationDecided, CardPaymentUpdated,
};
use sterling_storage::{Condition, Mutation, Query, Row, SharedStore, Value, now_millis, utc_date};
use sterling_template::by_month::{for_each_row, move_data_once};
use sterling_template::{Error, Result};

/// How many compare-and-set rounds a payment's row may take.
const MAX_ROUNDS: usize = 100;

/// Each account's latest ledger snapshot, the highest version kept.
const SNAPSHOTS: &str = "snapshots";

/// Where snapshots were kept before, by compare-and-set; copied from once, at start.
const LEGACY_SNAPSHOTS: &str = "balances";

/// An account's balance as the read model holds it, in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The account.
    pub account_id: String,
    /// ISO 4217.
    pub currency: String,
    /// Sum of postings.
    pub balance: i64,
    /// Sum of active holds: pending card payments.
    pub held: i64,
    /// The ledger's version of the account.
    pub version: i64,
    /// When the ledger made that version.
    pub changed_at_ms: i64,
}

/// The read model's store.
#[derive(Clone)]
pub struct BalanceStore {
    store: SharedStore,
}

fn key(account_id: &str) -> Row {
    Row::new().with("account_id", account_id)
}

fn spending_key(account_id: &str, day: &str, id: &str) -> Row {
    Row::new()
        .with("account_id", account_id)
        .with("day", day)
        .with("authorisation_id", id)
}

/// The UTC day a card payment counts on: that of its transaction id (a UUIDv7 made when it
/// was decided), or of `fallback_ms` for an id that carries no time.
fn day_of_payment(transaction_id: &str, fallback_ms: i64) -> String {
    utc_date(sterling_storage::uuid_v7_millis(transaction_id).unwrap_or(fallback_ms))
}

impl BalanceStore {
    /// Wraps the service's store.
    pub fn new(store: SharedStore) -> Self {
        BalanceStore { store }
    }

    /// Takes one event: a ledger snapshot or a card decision; others are refused.
    pub async fn apply_event(&self, envelope: &Envelope) -> Result<()> {
        let bad = |e: prost::DecodeError| Error::bad_request("event", e.to_string());
        match envelope.r#type.as_str() {
            types::LEDGER_BALANCE_CHANGED => {
                let e = AccountBalanceChanged::decode(envelope.payload.as_slice()).map_err(bad)?;
                self.take_snapshot(&e).await
            }
            types::CARD_AUTHORISATION_APPROVED | types::CARD_AUTHORISATION_DECLINED => {
                let d =
                    CardAuthorisationDecided::decode(envelope.payload.as_slice()).map_err(bad)?;
                self.take_decision(&d).await
            }
            t if t.starts_with("card.payment.") => {
                let e = CardPaymentUpdated::decode(envelope.payload.as_slice()).map_err(bad)?;
                self.take_payment(&e).await
            }
            other => Err(Error::bad_request(
                "event",
                format!("balance does not take {other}"),
            )),
        }
    }

    /// Keeps `e` if it is newer than what is held for its account: an insert of the newest
    /// version, no compare-and-set.
    async fn take_snapshot(&self, e: &AccountBalanceChanged) -> Result<()> {
        let row = key(&e.account_id)
            .with("currency", e.currency.as_str())
            .with("balance", e.balance)
            .with("held", e.held)
            .with("version", e.version)
            .with("changed_at", Value::Timestamp(e.changed_at_ms));
        self.store
            .apply(vec![Mutation::insert_newest(SNAPSHOTS, row, "version")])
            .await?;
        let lag = (now_millis() - e.changed_at_ms).max(0) as f64 / 1000.0;
        metrics::histogram!("sterling_balance_lag_seconds").record(lag);
        Ok(())
    }

    /// Copies the snapshots kept in the legacy table `balances` (by compare-and-set) into
    /// [`SNAPSHOTS`], once for the service (recorded in `data_moves`; the legacy rows are left,
    /// never read again, rather than deleted into tombstones that every later scan would
    /// wade through). Returns how many this call copied.
    pub async fn move_legacy_snapshots(&self) -> Result<u64> {
        let name = format!("{LEGACY_SNAPSHOTS}->{SNAPSHOTS}");
        let moved = move_data_once(&self.store, &name, || self.copy_legacy_snapshots()).await?;
        if moved > 0 {
            tracing::info!(rows = moved, "balance snapshots moved to their own table");
        }
        Ok(moved)
    }

    /// Copies every legacy snapshot, each as an insert of its version (so one newer already
    /// there stays).
    async fn copy_legacy_snapshots(&self) -> Result<u64> {
        for_each_row(&self.store, LEGACY_SNAPSHOTS, |row| async move {
            self.store
                .apply(vec![Mutation::insert_newest(SNAPSHOTS, row, "version")])
                .await?;
            Ok(())
        })
        .await
    }

    /// Records an approved payment in its day's spending; a reversed one (a decline that
    /// follows its approval) is taken out, whichever arrives first.
    async fn take_decision(&self, d: &CardAuthorisationDecided) -> Result<()> {
        let Some(amount) = d.amount.as_ref() else {
            return Ok(());
        };
        if d.account_id.is_empty() || !(d.approved || d.reversed) {
            return Ok(());
        }
        let day = day_of_payment(&d.transaction_id, d.decided_at_ms);
        let row = spending_key(&d.account_id, &day, &d.processor_authorisation_id);
        // A reversal leaves the payment's row at zero, whatever came first: an approval that
        // arrives after it finds the row taken and changes nothing. Once the payment's own
        // messages have moved the row (it has a version), they alone move it.
        if d.reversed
            && let Some(existing) = self.store.get("spending", &row).await?
            && existing.i64("payment_version").is_ok()
        {
            return Ok(());
        }
        let mutation = if d.reversed {
            Mutation::insert(
                "spending",
                row.with("amount", 0i64)
                    .with("currency", amount.currency.as_str()),
            )
        } else {
            Mutation::insert_if_not_exists(
                "spending",
                row.with("amount", amount.minor_units)
                    .with("currency", amount.currency.as_str()),
            )
        };
        self.store.apply(vec![mutation]).await?;
        Ok(())
    }

    /// Moves an approved payment's row to what it comes to after a later message (highest
    /// version wins); a refund or force post is a row of its own.
    async fn take_payment(&self, e: &CardPaymentUpdated) -> Result<()> {
        let minor =
            |m: &Option<sterling_proto::common::v1::Money>| m.as_ref().map_or(0, |m| m.minor_units);
        let currency = e.amount.as_ref().map_or("", |m| m.currency.as_str());
        if e.account_id.is_empty() {
            return Ok(());
        }
        if matches!(e.kind.as_str(), "refund" | "force_post") {
            let sign = if e.kind == "refund" { -1 } else { 1 };
            let id = format!("{}:{}", e.kind, e.message_id);
            let row = spending_key(&e.account_id, &utc_date(e.occurred_at_ms), &id)
                .with("amount", sign * minor(&e.amount))
                .with("currency", currency);
            self.store
                .apply(vec![Mutation::insert("spending", row)])
                .await?;
            return Ok(());
        }
        if e.authorisation_transaction_id.is_empty() || e.processor_authorisation_id.is_empty() {
            return Ok(());
        }
        let amount = match e.status.as_str() {
            "pending" => minor(&e.held) + minor(&e.settled),
            _ => minor(&e.settled),
        };
        let day = day_of_payment(&e.authorisation_transaction_id, e.occurred_at_ms);
        let key = spending_key(&e.account_id, &day, &e.processor_authorisation_id);
        let set = Row::new()
            .with("amount", amount)
            .with("payment_version", e.payment_version);
        for _ in 0..MAX_ROUNDS {
            let existing = self.store.get("spending", &key).await?;
            let seen = existing
                .as_ref()
                .and_then(|r| r.i64("payment_version").ok());
            if seen.unwrap_or(0) >= e.payment_version {
                return Ok(());
            }
            let mutation = match (existing, seen) {
                (None, _) => {
                    let mut row = key.clone().with("currency", currency);
                    row.0.extend(set.0.clone());
                    Mutation::insert_if_not_exists("spending", row)
                }
                (Some(_), Some(v)) => Mutation::update(
                    "spending",
                    key.clone(),
                    set.clone(),
                    vec![Condition::Equals(
                        "payment_version".into(),
                        Value::BigInt(v),
                    )],
                ),
                (Some(row), None) => Mutation::update(
                    "spending",
                    key.clone(),
                    set.clone(),
                    vec![Condition::Equals(
                        "amount".into(),
                        Value::BigInt(row.i64("amount")?),
                    )],
                ),
            };
            if self.store.apply(vec![mutation]).await?.applied() {
                return Ok(());
            }
        }
        Err(Error::unavailable(
            "contention",
            "too much contention on a day's spending",
        ))
    }

    /// The account's latest snapshot, if one has arrived.
    pub async fn snapshot(&self, account_id: &str) -> Result<Option<Snapshot>> {
        let Some(row) = self.store.get(SNAPSHOTS, &key(account_id)).await? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            account_id: account_id.to_string(),
            currency: row.text("currency")?.to_string(),
            balance: row.i64("balance")?,
            held: row.i64("held")?,
            version: row.i64("version")?,
            changed_at_ms: row.timestamp("changed_at")?,
        }))
    }

    /// What the account's approved card payments add up to on the UTC day of `now_ms`.
    pub async fn spent_on(&self, account_id: &str, now_ms: i64) -> Result<i64> {
        let partition = Row::new()
            .with("account_id", account_id)
            .with("day", utc_date(now_ms));
        let rows = self
            .store
            .query(Query::partition("spending", partition).limit(100_000))
            .await?;
        rows.iter().try_fold(0i64, |sum, row| {
            sum.checked_add(row.i64("amount")?)
                .ok_or_else(|| Error::internal("spending out of range"))
        })
    }
}
