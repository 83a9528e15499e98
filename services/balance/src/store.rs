//! The read model's data: the highest-version ledger snapshot per account, and approved card
//! payments per account per UTC day. Both are idempotent by construction and written without
//! a compare-and-set (a snapshot never replaces a higher version; a payment is one row per
//! authorisation id that never replaces a higher rank), so a redelivered event changes nothing.

use prost::Message;
use sterling_bus::Envelope;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{
    AccountBalanceChanged, CardAuthorisationDecided, CardPaymentUpdated,
};
use sterling_storage::{Mutation, Query, Row, SharedStore, Value, now_millis, utc_date};
use sterling_template::by_month::{for_each_row, move_data_once};
use sterling_template::{Error, Result};

/// Each account's latest ledger snapshot, the highest version kept.
const SNAPSHOTS: &str = "snapshots";

/// Where snapshots were kept before, by compare-and-set; copied from once, at start.
const LEGACY_SNAPSHOTS: &str = "balances";

/// Card payments per account per UTC day, each row the highest rank written for it.
const SPENDING: &str = "day_spending";

/// Where payments were kept before, by compare-and-set; copied from once, at start.
const LEGACY_SPENDING: &str = "spending";

/// The kinds of payment message that are rows of their own in a day's spending, under the id
/// `<kind>:<message id>` (an authorisation's row is under the processor's id).
const OWN_ROWS: [&str; 2] = ["refund", "force_post"];

/// The rank of an approval's row (and of a refund's or a force post's, rows of their own).
const APPROVED: i64 = 1;

/// The rank of a reversal's row: above its approval, below the payment's own messages.
const REVERSED: i64 = 2;

/// The rank of the row after the payment's message of `version`: above any decision.
fn payment_rank(version: i64) -> i64 {
    3i64.saturating_add(version.max(0))
}

/// A payment's row at `rank`: an insert that never replaces a higher rank.
fn spending_at(row: Row, rank: i64) -> Mutation {
    Mutation::insert_newest(SPENDING, row.with("rank", rank), "rank")
}

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

/// The rank a legacy payment row stands at: a payment's message's if it has a version, a
/// reversal's if it was zeroed, an approval's otherwise.
fn legacy_rank(row: &Row) -> Result<i64> {
    if let Ok(version) = row.i64("payment_version") {
        return Ok(payment_rank(version));
    }
    let id = row.text("authorisation_id")?;
    let refund_or_force_post = OWN_ROWS.iter().any(|kind| {
        id.strip_prefix(kind)
            .is_some_and(|rest| rest.starts_with(':'))
    });
    Ok(if row.i64("amount")? == 0 && !refund_or_force_post {
        REVERSED
    } else {
        APPROVED
    })
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
    /// follows its approval) is taken out, whichever arrives first. Once the payment's own
    /// messages have moved the row, they alone move it (their rank is higher).
    /// A reversal needs no amount (card-processing announces one without it: nothing is held
    /// any more); it leaves the payment's row at zero.
    async fn take_decision(&self, d: &CardAuthorisationDecided) -> Result<()> {
        if d.account_id.is_empty() || !(d.approved || d.reversed) {
            return Ok(());
        }
        let day = day_of_payment(&d.transaction_id, d.decided_at_ms);
        let row = spending_key(&d.account_id, &day, &d.processor_authorisation_id);
        let mutation = match (d.reversed, d.amount.as_ref()) {
            (true, amount) => {
                let currency = amount.map_or("", |m| m.currency.as_str());
                spending_at(
                    row.with("amount", 0i64).with("currency", currency),
                    REVERSED,
                )
            }
            (false, Some(amount)) => spending_at(
                row.with("amount", amount.minor_units)
                    .with("currency", amount.currency.as_str()),
                APPROVED,
            ),
            (false, None) => return Ok(()),
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
        if OWN_ROWS.contains(&e.kind.as_str()) {
            let sign = if e.kind == "refund" { -1 } else { 1 };
            let id = format!("{}:{}", e.kind, e.message_id);
            let row = spending_key(&e.account_id, &utc_date(e.occurred_at_ms), &id)
                .with("amount", sign * minor(&e.amount))
                .with("currency", currency);
            self.store.apply(vec![spending_at(row, APPROVED)]).await?;
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
        let row = spending_key(&e.account_id, &day, &e.processor_authorisation_id)
            .with("amount", amount)
            .with("currency", currency);
        self.store
            .apply(vec![spending_at(row, payment_rank(e.payment_version))])
            .await?;
        Ok(())
    }

    /// Copies the payments kept in the legacy table `spending` (by compare-and-set) into
    /// [`SPENDING`] once for the service, as [`BalanceStore::move_legacy_snapshots`] does the
    /// snapshots. Returns how many this call copied.
    pub async fn move_legacy_spending(&self) -> Result<u64> {
        let name = format!("{LEGACY_SPENDING}->{SPENDING}");
        let moved = move_data_once(&self.store, &name, || {
            for_each_row(&self.store, LEGACY_SPENDING, |row| async move {
                let copy = spending_key(
                    row.text("account_id")?,
                    row.text("day")?,
                    row.text("authorisation_id")?,
                )
                .with("amount", row.i64("amount")?)
                .with("currency", row.text("currency").unwrap_or_default());
                self.store
                    .apply(vec![spending_at(copy, legacy_rank(&row)?)])
                    .await?;
                Ok(())
            })
        })
        .await?;
        if moved > 0 {
            tracing::info!(rows = moved, "card payments moved to their own table");
        }
        Ok(moved)
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
            .query(Query::partition(SPENDING, partition).limit(100_000))
            .await?;
        rows.iter().try_fold(0i64, |sum, row| {
            sum.checked_add(row.i64("amount")?)
                .ok_or_else(|| Error::internal("spending out of range"))
        })
    }
}
