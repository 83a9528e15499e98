//! The double-entry book: accounts, immutable postings, holds.
//!
//! Invariants: every transfer writes two postings of opposite sign (so all balances sum to zero
//! per currency); at most one transfer per transfer id and one hold per hold id; a hold resolves
//! at most once; a customer account's available amount (balance - held) never goes below zero.
//! Each change is a compare-and-set on the account's `version`, batched with the posting or hold
//! row in the same partition, retried on contention.

use sterling_money::{Currency, Money};
use sterling_storage::{Applied, Condition, Mutation, Row, SharedStore, Value, now_millis};
use sterling_template::{Error, Result, failpoint};

use crate::announce::{Announcement, Announcer, Cause};
use sterling_proto::events::v1::TransferCompleted;

/// How many compare-and-set rounds an operation may take before giving up as contended.
pub(crate) const MAX_ROUNDS: usize = 1000;

/// Whether an account may go below zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A customer's money: available may never be negative.
    Customer,
    /// The bank's own account (funding, settlement): may be negative.
    Internal,
}

impl AccountKind {
    fn as_str(self) -> &'static str {
        match self {
            AccountKind::Customer => "customer",
            AccountKind::Internal => "internal",
        }
    }
    fn parse(text: &str) -> Result<Self> {
        match text {
            "customer" => Ok(AccountKind::Customer),
            "internal" => Ok(AccountKind::Internal),
            other => Err(Error::internal(format!("stored account kind {other:?}"))),
        }
    }
}

/// A ledger account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Caller-supplied id.
    pub account_id: String,
    /// Its one currency.
    pub currency: Currency,
    /// Customer or internal.
    pub kind: AccountKind,
}

/// An account's balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// Sum of postings.
    pub balance: Money,
    /// Sum of active holds.
    pub held: Money,
    /// `balance - held`.
    pub available: Money,
    /// A force post or a clearing took the account below zero (stays set).
    pub overdrawn: bool,
    pub(crate) version: i64,
}

/// Whether a hold still reserves funds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStatus {
    /// Reserving funds.
    Active,
    /// Released; reserves nothing.
    Released,
    /// Used up by clearings, or a final clearing released the rest; reserves nothing.
    Cleared,
}

impl HoldStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Active => "active",
            HoldStatus::Released => "released",
            HoldStatus::Cleared => "cleared",
        }
    }
    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "active" => HoldStatus::Active,
            "cleared" => HoldStatus::Cleared,
            _ => HoldStatus::Released,
        }
    }
}

/// A hold on an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Caller-supplied id (for card payments: the processor's authorisation id).
    pub hold_id: String,
    /// The account.
    pub account_id: String,
    /// Amount reserved when placed (increases are in `increased`).
    pub amount: Money,
    /// What it still reserves (zero unless active).
    pub remaining: Money,
    /// What incremental authorisations added.
    pub increased: Money,
    /// What captures against it posted, in all.
    pub captured: Money,
    /// Active, released or cleared.
    pub status: HoldStatus,
    /// When it was placed (or, for a release that came first, recorded), ms since the epoch.
    pub placed_at_ms: i64,
}

/// A transfer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Caller-supplied id: at most one transfer per id.
    pub transfer_id: String,
    /// Account whose balance goes down.
    pub debit_account_id: String,
    /// Account whose balance goes up.
    pub credit_account_id: String,
    /// Positive amount in both accounts' currency.
    pub amount: Money,
    /// Free text.
    pub description: String,
    /// Post even below zero and flag the debit account (a force post).
    pub force: bool,
}

/// How many account locks a ledger process keeps (accounts share one by hash).
const ACCOUNT_LOCKS: usize = 256;

/// How long an account's partition keeps a finished entry: a posting's or a hold change's
/// idempotency row, and a hold that reserves nothing any more. Longer than any card message
/// comes after its authorisation (clearings within 30 days, chargebacks within 120), so a
/// repeat in that time finds what happened; after it the partition forgets the entry, and
/// holds the balance, the active holds and at most 13 months of changes. A transfer's own
/// record (`transfers`, a partition per id) is kept for good, so a repeat of a completed
/// transfer is answered from it at any age.
pub const FINISHED_ENTRY_TTL: std::time::Duration = std::time::Duration::from_secs(400 * 24 * 3600);

/// The ledger's data access and rules.
#[derive(Clone)]
pub struct Book {
    pub(crate) store: SharedStore,
    /// Changes to one account from this process queue here instead of racing each other's
    /// compare-and-set: under a burst on one account, optimistic rounds (Paxos rounds on
    /// Cassandra) would mostly fail and time out. Other processes still race by CAS, which
    /// keeps it correct; the lock only keeps it fast.
    account_locks: std::sync::Arc<Vec<tokio::sync::Mutex<()>>>,
    /// Holds waiting to be placed, per account, in groups (see [`crate::holds`]).
    pub(crate) hold_queues: crate::holds::HoldQueues,
    /// Announces every balance change, when set (see [`crate::announce`]).
    announcer: Option<Announcer>,
    /// Internal accounts post on shards (see [`crate::journal`]); off only to measure the
    /// one compare-and-set it replaces.
    shard_internal: bool,
    /// How long finished entries are kept ([`FINISHED_ENTRY_TTL`] but in tests).
    pub(crate) finished_ttl: std::time::Duration,
}

pub(crate) fn entry_key(account_id: &str, entry: &str) -> Row {
    Row::new()
        .with("account_id", account_id)
        .with("entry", entry)
}

pub(crate) const BALANCE: &str = "balance";

pub(crate) fn hold_entry(hold_id: &str) -> String {
    format!("hold:{hold_id}")
}

pub(crate) fn posting_entry(transfer_id: &str) -> String {
    format!("posting:{transfer_id}")
}

/// Whether an error is a refusal that a retry gets again (so nothing is left to finish).
pub(crate) fn is_refusal(e: &Error) -> bool {
    use sterling_template::ErrorClass;
    matches!(
        e.class(),
        ErrorClass::BadRequest
            | ErrorClass::NotFound
            | ErrorClass::Conflict
            | ErrorClass::PreconditionFailed
    )
}

pub(crate) fn contended() -> Error {
    Error::unavailable("contention", "too much contention on the account; retry")
}

pub(crate) fn insufficient(account_id: &str, available: Money, amount: Money) -> Error {
    Error::precondition_failed("insufficient_funds", "insufficient available funds")
        .with_param("account_id", account_id)
        .with_param("available", available)
        .with_param("amount", amount)
}

impl Book {
    /// Wraps the ledger's store.
    pub fn new(store: SharedStore) -> Self {
        Book {
            store,
            account_locks: std::sync::Arc::new(
                (0..ACCOUNT_LOCKS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            ),
            hold_queues: crate::holds::HoldQueues::default(),
            announcer: None,
            shard_internal: true,
            finished_ttl: FINISHED_ENTRY_TTL,
        }
    }

    /// The book keeping finished entries for `ttl` instead of [`FINISHED_ENTRY_TTL`]: for
    /// tests that watch them expire.
    pub fn keeping_finished_entries_for(mut self, ttl: std::time::Duration) -> Self {
        self.finished_ttl = ttl;
        self
    }

    /// The write of a finished entry: an insert, once, expiring after the book's TTL.
    pub(crate) fn finished_entry(&self, table: &str, row: Row) -> Mutation {
        Mutation::insert_if_not_exists(table, row).with_ttl(self.finished_ttl)
    }

    /// The write that finishes a hold (`hold` as it is afterwards, reserving nothing): its
    /// whole row again, expiring after the book's TTL. Every column is written, so no cell of
    /// the lasting row outlives it on Cassandra. The balance's compare-and-set in the same
    /// batch keeps it from racing another change (every change to a hold moves the version).
    pub(crate) fn finished_hold(&self, hold: &Hold) -> Mutation {
        let row = entry_key(&hold.account_id, &hold_entry(&hold.hold_id))
            .with("amount", hold.amount.minor_units())
            .with("remaining", 0i64)
            .with("increased", hold.increased.minor_units())
            .with("captured", hold.captured.minor_units())
            .with("status", hold.status.as_str())
            .with("created_at", Value::Timestamp(hold.placed_at_ms));
        Mutation::insert("account_entries", row).with_ttl(self.finished_ttl)
    }

    /// The book with internal accounts posted on their one balance row (`false`), as before
    /// shards: for measuring what shards change.
    pub fn sharding_internal_accounts(mut self, shard: bool) -> Self {
        self.shard_internal = shard;
        self
    }

    /// The book, announcing every balance change with `announcer`.
    pub fn announcing(mut self, announcer: Announcer) -> Self {
        self.announcer = Some(announcer);
        self
    }

    /// The mutations that move `account`'s balance row from `b` to `balance` and `held`, its
    /// announcement staged first, and the announcement to settle once the batch is applied.
    pub(crate) async fn change(
        &self,
        account: &Account,
        b: &Balance,
        (balance, held): (i64, i64),
        cause: Cause,
        entry: &str,
    ) -> Result<(Vec<Mutation>, Option<Announcement>)> {
        let overdrawn = b.overdrawn
            || (account.kind == AccountKind::Customer && balance.saturating_sub(held) < 0);
        let mut mutations = vec![Self::balance_cas(
            &account.account_id,
            b,
            (balance, held),
            overdrawn,
        )];
        let Some(announcer) = &self.announcer else {
            return Ok((mutations, None));
        };
        let (announcement, record) = announcer.stage(
            &account.account_id,
            account.currency.code(),
            b.version + 1,
            (balance, held),
            cause,
            entry,
        )?;
        mutations.push(record);
        Ok((mutations, Some(announcement)))
    }

    /// Stages a change's announcement and applies its batch (one commit on the embedded
    /// store), then settles the announcement: published if the batch applied, discarded if
    /// not, left to the relay if the outcome is unknown.
    pub(crate) async fn apply_change(
        &self,
        batch: Vec<Mutation>,
        mut announcement: Option<Announcement>,
    ) -> Result<bool> {
        let staging = announcement.as_mut().and_then(Announcement::take_staging);
        let batches = match staging {
            Some(staging) => vec![vec![staging], batch],
            None => vec![batch],
        };
        let applied = self
            .store
            .apply_in_order(batches)
            .await?
            .pop()
            .is_some_and(|outcome| outcome.applied());
        // Dying here leaves the announcement staged: the relay publishes it.
        failpoint::step("ledger::change::after_write").await?;
        if let (Some(announcer), Some(announcement)) = (&self.announcer, announcement) {
            announcer.settle(announcement, applied);
        }
        Ok(applied)
    }

    /// This process's lock for changes to `account_id`.
    pub(crate) async fn lock_account(&self, account_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let hash = account_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        self.account_locks[(hash % ACCOUNT_LOCKS as u64) as usize]
            .lock()
            .await
    }

    /// Opens an account; a repeat with the same currency and kind returns it.
    pub async fn create_account(
        &self,
        account_id: &str,
        currency: Currency,
        kind: AccountKind,
    ) -> Result<Account> {
        let row = Row::new()
            .with("account_id", account_id)
            .with("currency", currency.code())
            .with("kind", kind.as_str())
            .with("created_at", Value::Timestamp(now_millis()));
        if let Applied::No(_) = self
            .store
            .apply(vec![Mutation::insert_if_not_exists("accounts", row)])
            .await?
        {
            let existing = self.account(account_id).await?;
            if existing.currency != currency || existing.kind != kind {
                return Err(Error::conflict(
                    "account",
                    "account exists with another currency or kind",
                )
                .with_param("account_id", account_id));
            }
        }
        let balance = entry_key(account_id, BALANCE)
            .with("balance", 0i64)
            .with("held", 0i64)
            .with("version", 0i64);
        self.store
            .apply(vec![Mutation::insert_if_not_exists(
                "account_entries",
                balance,
            )])
            .await?;
        self.account(account_id).await
    }

    /// An account by id.
    pub async fn account(&self, account_id: &str) -> Result<Account> {
        let row = self
            .store
            .get("accounts", &Row::new().with("account_id", account_id))
            .await?
            .ok_or_else(|| {
                Error::not_found("account", "no such account").with_param("account_id", account_id)
            })?;
        Ok(Account {
            account_id: account_id.to_string(),
            currency: Currency::from_code(row.text("currency")?)
                .map_err(|e| Error::internal(e.to_string()))?,
            kind: AccountKind::parse(row.text("kind")?)?,
        })
    }

    /// An account's balance, held and available amounts (an internal account's shards
    /// included).
    pub async fn balance(&self, account: &Account) -> Result<Balance> {
        let mut b = self.row_balance(account).await?;
        if account.kind == AccountKind::Internal {
            let shards = Money::from_minor(self.internal_balance(account).await?, account.currency);
            let out_of_range = |e: sterling_money::MoneyError| Error::internal(e.to_string());
            b.balance = b.balance.checked_add(shards).map_err(out_of_range)?;
            b.available = b.available.checked_add(shards).map_err(out_of_range)?;
        }
        Ok(b)
    }

    /// The account's balance row alone: what its compare-and-set moves (an internal
    /// account's shards are apart).
    pub(crate) async fn row_balance(&self, account: &Account) -> Result<Balance> {
        let row = self
            .store
            .get("account_entries", &entry_key(&account.account_id, BALANCE))
            .await?
            .ok_or_else(|| Error::internal("account has no balance row"))?;
        let balance = Money::from_minor(row.i64("balance")?, account.currency);
        let held = Money::from_minor(row.i64("held")?, account.currency);
        Ok(Balance {
            balance,
            held,
            available: balance
                .checked_sub(held)
                .map_err(|e| Error::internal(e.to_string()))?,
            overdrawn: row.bool("overdrawn").unwrap_or(false),
            version: row.i64("version")?,
        })
    }

    pub(crate) fn check_currency(account: &Account, amount: Money) -> Result<()> {
        if account.currency != amount.currency() {
            return Err(Error::bad_request(
                "currency",
                format!(
                    "account is in {}, amount in {}",
                    account.currency,
                    amount.currency()
                ),
            )
            .with_param("account_id", &account.account_id));
        }
        Ok(())
    }

    pub(crate) fn balance_cas(
        account_id: &str,
        b: &Balance,
        (balance, held): (i64, i64),
        overdrawn: bool,
    ) -> Mutation {
        Mutation::update(
            "account_entries",
            entry_key(account_id, BALANCE),
            Row::new()
                .with("balance", balance)
                .with("held", held)
                .with("overdrawn", overdrawn)
                .with("version", b.version + 1),
            vec![Condition::Equals(
                "version".into(),
                Value::BigInt(b.version),
            )],
        )
    }

    /// A hold, if there is one.
    pub async fn hold(&self, hold_id: &str, account_id: &str) -> Result<Option<Hold>> {
        let Some(row) = self
            .store
            .get(
                "account_entries",
                &entry_key(account_id, &hold_entry(hold_id)),
            )
            .await?
        else {
            return Ok(None);
        };
        let account = self.account(account_id).await?;
        Ok(Some(hold_from_row(hold_id, &account, &row)?))
    }

    /// Releases an active hold; releasing a released hold returns it unchanged.
    ///
    /// Releasing a hold that does not exist (yet) records it as released with a zero amount, so
    /// a placement still in flight, e.g. from a caller that gave up at its deadline, can never
    /// land afterwards: it finds the tombstone and reserves nothing.
    pub async fn release_hold(&self, hold_id: &str, account_id: &str) -> Result<Hold> {
        let account = self.account(account_id).await?;
        let _queued = self.lock_account(account_id).await;
        for _ in 0..MAX_ROUNDS {
            let Some(hold) = self.hold(hold_id, account_id).await? else {
                let tombstone = entry_key(account_id, &hold_entry(hold_id))
                    .with("amount", 0i64)
                    .with("status", "released")
                    .with("created_at", Value::Timestamp(now_millis()));
                self.store
                    .apply(vec![self.finished_entry("account_entries", tombstone)])
                    .await?;
                continue;
            };
            if hold.status == HoldStatus::Released {
                return Ok(hold);
            }
            let b = self.row_balance(&account).await?;
            let held = b
                .held
                .minor_units()
                .checked_sub(hold.remaining.minor_units())
                .ok_or_else(|| Error::internal("held amount out of range"))?;
            let (mut batch, announcement) = self
                .change(
                    &account,
                    &b,
                    (b.balance.minor_units(), held),
                    Cause::HoldReleased,
                    hold_id,
                )
                .await?;
            let released = Hold {
                status: HoldStatus::Released,
                remaining: Money::from_minor(0, account.currency),
                ..hold
            };
            batch.push(self.finished_hold(&released));
            if self.apply_change(batch, announcement).await? {
                return Ok(released);
            }
        }
        Err(contended())
    }

    /// Moves money with two postings, at most once per transfer id. A retry of a transfer
    /// interrupted half way completes it; so does the outbox's relay when nobody retries
    /// ([`crate::finish`]). Announced as `ledger.transfer.completed` once complete.
    pub async fn transfer(&self, t: &Transfer) -> Result<()> {
        if t.debit_account_id == t.credit_account_id {
            return Err(Error::bad_request(
                "transfer",
                "debit and credit accounts are the same",
            ));
        }
        let debit = self.account(&t.debit_account_id).await?;
        let credit = self.account(&t.credit_account_id).await?;
        Self::check_currency(&debit, t.amount)?;
        Self::check_currency(&credit, t.amount)?;
        let announcement = self.stage_transfer(t, "").await?;
        let outcome = self.run_transfer(t, &debit, &credit).await;
        self.settle_transfer(announcement, outcome.as_ref().copied());
        outcome.map(|_| ())
    }

    /// Stages a transfer's announcement (`hold_id`: the hold a capture uses), when announcing.
    pub(crate) async fn stage_transfer(
        &self,
        t: &Transfer,
        hold_id: &str,
    ) -> Result<Option<Announcement>> {
        let Some(announcer) = &self.announcer else {
            return Ok(None);
        };
        let event = TransferCompleted {
            transfer_id: t.transfer_id.clone(),
            debit_account_id: t.debit_account_id.clone(),
            credit_account_id: t.credit_account_id.clone(),
            amount: t.amount.minor_units(),
            currency: t.amount.currency().code().to_string(),
            hold_id: hold_id.to_string(),
            forced: t.force,
            description: t.description.clone(),
            requested_at_ms: now_millis(),
        };
        Ok(Some(announcer.stage_transfer(&event).await?))
    }

    /// After a transfer: its announcement published if it completed now, discarded if it had
    /// before or was refused for good, left to the relay if the outcome is unknown.
    pub(crate) fn settle_transfer(
        &self,
        announcement: Option<Announcement>,
        outcome: std::result::Result<bool, &Error>,
    ) {
        let (Some(announcer), Some(announcement)) = (&self.announcer, announcement) else {
            return;
        };
        match outcome {
            Ok(now) => announcer.settle(announcement, now),
            Err(e) if is_refusal(e) => announcer.settle(announcement, false),
            Err(_) => {}
        }
    }

    /// The transfer's record claimed (or found) and its postings made; `Ok(true)` if it
    /// completed in this call, `Ok(false)` if it had before.
    pub(crate) async fn run_transfer(
        &self,
        t: &Transfer,
        debit: &Account,
        credit: &Account,
    ) -> Result<bool> {
        let record = Row::new()
            .with("transfer_id", t.transfer_id.as_str())
            .with("debit_account_id", t.debit_account_id.as_str())
            .with("credit_account_id", t.credit_account_id.as_str())
            .with("amount", t.amount.minor_units())
            .with("currency", t.amount.currency().code())
            .with("description", t.description.as_str())
            .with("state", "pending")
            .with("forced", t.force)
            .with("created_at", Value::Timestamp(now_millis()));
        if let Applied::No(current) = self
            .store
            .apply(vec![Mutation::insert_if_not_exists("transfers", record)])
            .await?
        {
            let existing =
                current.into_iter().flatten().next().ok_or_else(|| {
                    Error::internal("transfer claim failed without a current row")
                })?;
            let same = existing.text("debit_account_id")? == t.debit_account_id
                && existing.text("credit_account_id")? == t.credit_account_id
                && existing.i64("amount")? == t.amount.minor_units()
                && existing.text("currency")? == t.amount.currency().code()
                && existing.bool("forced").unwrap_or(false) == t.force;
            if !same {
                return Err(Error::conflict(
                    "transfer",
                    "transfer id already used for another transfer",
                )
                .with_param("transfer_id", &t.transfer_id));
            }
            match existing.text("state")? {
                "completed" => return Ok(false),
                "failed" => {
                    return Err(Error::precondition_failed(
                        "insufficient_funds",
                        "this transfer failed for insufficient funds",
                    )
                    .with_param("transfer_id", &t.transfer_id));
                }
                _ => {}
            }
        }
        let amount = t.amount.minor_units();
        if let Err(e) = self
            .post(
                debit,
                &t.transfer_id,
                -amount,
                &t.credit_account_id,
                t.force,
            )
            .await
        {
            if e.code() == "precondition_failed.insufficient_funds" {
                self.set_transfer_state(&t.transfer_id, "failed").await?;
            }
            return Err(e);
        }
        failpoint::step("ledger::transfer::between_postings").await?;
        self.post(credit, &t.transfer_id, amount, &t.debit_account_id, false)
            .await?;
        self.set_transfer_state(&t.transfer_id, "completed").await?;
        Ok(true)
    }

    pub(crate) async fn set_transfer_state(&self, transfer_id: &str, state: &str) -> Result<()> {
        self.store
            .apply(vec![Mutation::update(
                "transfers",
                Row::new().with("transfer_id", transfer_id),
                Row::new().with("state", state),
                vec![Condition::Equals("state".into(), "pending".into())],
            )])
            .await?;
        Ok(())
    }

    /// Writes one posting of a transfer to one account, once; `force` lets a customer account
    /// go below zero (and flags it).
    pub(crate) async fn post(
        &self,
        account: &Account,
        transfer_id: &str,
        amount: i64,
        counterparty: &str,
        force: bool,
    ) -> Result<()> {
        if account.kind == AccountKind::Internal && self.shard_internal {
            return self
                .post_internal(account, transfer_id, amount, counterparty)
                .await;
        }
        let entry = posting_entry(transfer_id);
        let _queued = self.lock_account(&account.account_id).await;
        for _ in 0..MAX_ROUNDS {
            if let Some(row) = self
                .store
                .get("account_entries", &entry_key(&account.account_id, &entry))
                .await?
            {
                return self.journal_row(account, transfer_id, &row).await;
            }
            let b = self.row_balance(account).await?;
            let balance = b
                .balance
                .minor_units()
                .checked_add(amount)
                .ok_or_else(|| Error::bad_request("amount", "amount out of range"))?;
            if account.kind == AccountKind::Customer
                && !force
                && amount < 0
                && balance - b.held.minor_units() < 0
            {
                return Err(insufficient(
                    &account.account_id,
                    b.available,
                    Money::from_minor(-amount, account.currency),
                ));
            }
            let posting = entry_key(&account.account_id, &entry)
                .with("amount", amount)
                .with("transfer_id", transfer_id)
                .with("counterparty", counterparty)
                .with("created_at", Value::Timestamp(now_millis()));
            let (mut batch, announcement) = self
                .change(
                    account,
                    &b,
                    (balance, b.held.minor_units()),
                    Cause::Posting,
                    transfer_id,
                )
                .await?;
            batch.push(self.finished_entry("account_entries", posting.clone()));
            if self.apply_change(batch, announcement).await? {
                return self.journal_row(account, transfer_id, &posting).await;
            }
        }
        Err(contended())
    }
}

/// A hold from its stored row (rows written before `remaining` existed reserve their amount
/// while active).
pub(crate) fn hold_from_row(hold_id: &str, account: &Account, row: &Row) -> Result<Hold> {
    let status = HoldStatus::parse(row.text("status")?);
    let amount = row.i64("amount")?;
    let remaining = match (status, row.i64("remaining")) {
        (HoldStatus::Active, Ok(remaining)) => remaining,
        (HoldStatus::Active, Err(_)) => amount,
        _ => 0,
    };
    Ok(Hold {
        hold_id: hold_id.to_string(),
        account_id: account.account_id.clone(),
        amount: Money::from_minor(amount, account.currency),
        remaining: Money::from_minor(remaining, account.currency),
        increased: Money::from_minor(row.i64("increased").unwrap_or(0), account.currency),
        captured: Money::from_minor(row.i64("captured").unwrap_or(0), account.currency),
        status,
        placed_at_ms: row.timestamp("created_at").unwrap_or(0),
    })
}
