//! Changes to a hold after it is placed: a clearing captures it (posting the money to the
//! counter account), a reversal or expiry reduces it, an incremental authorisation increases
//! it.
//!
//! Each change is keyed by the caller's `change_id` and written, as made, in an entry
//! `change:<id>` of the account's partition, in the same compare-and-set as the balance and
//! the hold, so a repeat returns what happened and never applies twice. A capture is also a
//! transfer (its `transfers` record has the change id): the customer's side is that one
//! compare-and-set, the counter account's posting follows, and a retry of a capture cut in
//! between finishes it.

use sterling_money::Money;
use sterling_storage::{Applied, Condition, Mutation, Row, Value, now_millis};
use sterling_template::{Error, Result, failpoint};

use crate::announce::Cause;
use crate::store::{
    Account, AccountKind, Balance, Book, Hold, HoldStatus, MAX_ROUNDS, Transfer, contended,
    entry_key, hold_entry, insufficient, posting_entry,
};

/// What a change does to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A clearing: posts the amount, uses the hold for what it covers.
    Capture {
        /// Release whatever the hold still reserves afterwards.
        last: bool,
    },
    /// A reversal or expiry: releases part of the hold (`None`: all of it).
    Reduce,
    /// An incremental authorisation: reserves more.
    Increase,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Capture { last: false } => "capture",
            ChangeKind::Capture { last: true } => "capture_final",
            ChangeKind::Reduce => "reduce",
            ChangeKind::Increase => "increase",
        }
    }
}

/// A change asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldChangeRequest {
    /// The caller's id of this change: at most one change per id.
    pub change_id: String,
    /// The hold changed.
    pub hold_id: String,
    /// Its account.
    pub account_id: String,
    /// What the change does.
    pub kind: ChangeKind,
    /// The amount (captured, released or added); `None` for a reduction releases all.
    pub amount: Option<Money>,
    /// For a capture: the account credited.
    pub counter_account_id: String,
    /// For a capture: how far the hold's captures may exceed its amount and increases, in
    /// percent (`None`: no limit).
    pub over_capture_percent: Option<u32>,
}

/// A change as made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldChange {
    /// The caller's id.
    pub change_id: String,
    /// The hold.
    pub hold_id: String,
    /// Its account.
    pub account_id: String,
    /// `capture`, `capture_final`, `reduce` or `increase`.
    pub kind: String,
    /// Debited from the account.
    pub posted: Money,
    /// No longer reserved (used by a capture, or released).
    pub released: Money,
    /// Added to the hold.
    pub increased: Money,
    /// What the hold reserves afterwards.
    pub remaining: Money,
    /// The hold's status afterwards.
    pub status: HoldStatus,
    /// The change took the account below zero (and flagged it).
    pub overdrawn: bool,
}

/// A capture's transfer description: what makes two captures under one id the same.
fn capture_description(request: &HoldChangeRequest) -> String {
    format!(
        "{} of {} (limit {:?})",
        request.kind.as_str(),
        request.hold_id,
        request.over_capture_percent
    )
}

pub(crate) fn change_entry(change_id: &str) -> String {
    format!("change:{change_id}")
}

fn out_of_range() -> Error {
    Error::bad_request("amount", "amount out of range")
}

/// The same change asked again (same hold, kind and amount), or a conflict.
fn check_repeat(request: &HoldChangeRequest, row: &Row) -> Result<()> {
    let asked = request.amount.map(|m| m.minor_units()).unwrap_or(0);
    let same = row.text("hold_id")? == request.hold_id
        && row.text("kind")? == request.kind.as_str()
        && row.i64("amount")? == asked
        && row.text("counterparty").unwrap_or_default() == request.counter_account_id;
    if same {
        Ok(())
    } else {
        Err(
            Error::conflict("change", "change id already used for another change")
                .with_param("change_id", &request.change_id),
        )
    }
}

fn change_from_row(
    request: &HoldChangeRequest,
    account: &Account,
    row: &Row,
) -> Result<HoldChange> {
    let money = |column: &str| -> Result<Money> {
        Ok(Money::from_minor(row.i64(column)?, account.currency))
    };
    Ok(HoldChange {
        change_id: request.change_id.clone(),
        hold_id: request.hold_id.clone(),
        account_id: account.account_id.clone(),
        kind: row.text("kind")?.to_string(),
        posted: money("posted")?,
        released: money("released")?,
        increased: money("increased")?,
        remaining: money("remaining")?,
        status: HoldStatus::parse(row.text("status")?),
        overdrawn: row.bool("overdrawn").unwrap_or(false),
    })
}

/// Whether the rules let the change happen: a capture within its limit, an increase of an
/// active hold within the available funds.
fn check_allowed(
    request: &HoldChangeRequest,
    account: &Account,
    hold: Option<&Hold>,
    b: &Balance,
    effect: &Effect,
) -> Result<()> {
    if let (ChangeKind::Capture { .. }, Some(percent), Some(h)) =
        (request.kind, request.over_capture_percent, hold)
    {
        check_capture_limit(h, effect.posted, percent, &request.change_id)?;
    }
    if request.kind != ChangeKind::Increase {
        return Ok(());
    }
    if !hold.is_some_and(|h| h.status == HoldStatus::Active) {
        return Err(Error::precondition_failed(
            "hold_released",
            "the hold no longer reserves anything and cannot be increased",
        )
        .with_param("hold_id", &request.hold_id));
    }
    if account.kind == AccountKind::Customer && b.available.minor_units() < effect.increased {
        let amount = Money::from_minor(effect.increased, account.currency);
        return Err(insufficient(&account.account_id, b.available, amount));
    }
    Ok(())
}

/// Refuses a capture that would take a placed hold's captures beyond its amount and increases
/// by more than `percent`.
fn check_capture_limit(hold: &Hold, posting: i64, percent: u32, change_id: &str) -> Result<()> {
    let authorised =
        i128::from(hold.amount.minor_units()) + i128::from(hold.increased.minor_units());
    if authorised == 0 {
        // A tombstone: the authorisation never held anything, so nothing limits its clearing.
        return Ok(());
    }
    let limit = authorised * (100 + i128::from(percent)) / 100;
    let total = i128::from(hold.captured.minor_units()) + i128::from(posting);
    if total > limit {
        return Err(over_capture(change_id));
    }
    Ok(())
}

/// The refusal of a capture beyond the tolerance: the same the first time and on every repeat.
fn over_capture(change_id: &str) -> Error {
    Error::precondition_failed(
        "over_capture",
        "clearings would exceed the authorised amount by more than the tolerance",
    )
    .with_param("change_id", change_id)
}

/// The answer to a capture repeated after its entry expired: it was made, and moves nothing
/// again.
fn forgotten(change_id: &str) -> Error {
    Error::precondition_failed(
        "change_forgotten",
        "this capture was made long ago; what it did is no longer kept, and it is not made again",
    )
    .with_param("change_id", change_id)
}

/// What one change does, worked out from the hold as it stands.
struct Effect {
    posted: i64,
    released: i64,
    increased: i64,
    remaining: i64,
    status: HoldStatus,
}

impl Effect {
    /// The effect of `kind` with `amount` on `hold` (`None`: no hold, or a tombstone).
    fn of(kind: ChangeKind, amount: Option<i64>, hold: Option<&Hold>) -> Result<Effect> {
        let (remaining, status) = match hold {
            Some(h) if h.status == HoldStatus::Active => (h.remaining.minor_units(), h.status),
            Some(h) => (0, h.status),
            None => (0, HoldStatus::Released),
        };
        let amount = amount.unwrap_or(remaining);
        Ok(match kind {
            ChangeKind::Capture { last } => {
                let used = amount.min(remaining);
                let released = if last { remaining } else { used };
                let left = remaining - released;
                Effect {
                    posted: amount,
                    released,
                    increased: 0,
                    remaining: left,
                    status: if status == HoldStatus::Active && left == 0 {
                        HoldStatus::Cleared
                    } else {
                        status
                    },
                }
            }
            ChangeKind::Reduce => {
                let released = amount.min(remaining);
                let left = remaining - released;
                Effect {
                    posted: 0,
                    released,
                    increased: 0,
                    remaining: left,
                    status: if status == HoldStatus::Active && left == 0 {
                        HoldStatus::Released
                    } else {
                        status
                    },
                }
            }
            ChangeKind::Increase => Effect {
                posted: 0,
                released: 0,
                increased: amount,
                remaining: remaining.checked_add(amount).ok_or_else(out_of_range)?,
                status,
            },
        })
    }
}

impl Book {
    /// Makes a change to a hold, once per change id; a repeat returns the change as made.
    pub async fn change_hold(&self, request: &HoldChangeRequest) -> Result<HoldChange> {
        let account = self.account(&request.account_id).await?;
        if let Some(amount) = request.amount {
            Self::check_currency(&account, amount)?;
            if amount.minor_units() < 0 {
                return Err(Error::bad_request("amount", "amount must not be negative"));
            }
        }
        let change_key = entry_key(&account.account_id, &change_entry(&request.change_id));
        let recorded = self.store.get("account_entries", &change_key).await?;
        if let Some(row) = &recorded {
            // Used before: the same change is a repeat, another a conflict (checked before a
            // capture claims the id as a transfer).
            check_repeat(request, row)?;
        }
        // A capture not made yet is a transfer to announce, and to finish if cut half way.
        let announcement = match (request.kind, &recorded, request.amount) {
            (ChangeKind::Capture { .. }, None, Some(amount)) => {
                let transfer = Transfer {
                    transfer_id: request.change_id.clone(),
                    debit_account_id: account.account_id.clone(),
                    credit_account_id: request.counter_account_id.clone(),
                    amount,
                    description: capture_description(request),
                    force: true,
                };
                self.stage_transfer(&transfer, &request.hold_id).await?
            }
            _ => None,
        };
        let outcome = self.make_change(request, &account).await;
        self.settle_transfer(announcement, outcome.as_ref().map(|_| true));
        outcome
    }

    /// The change made: for a capture, its transfer claimed, the hold's side, then the counter
    /// account's posting.
    async fn make_change(
        &self,
        request: &HoldChangeRequest,
        account: &Account,
    ) -> Result<HoldChange> {
        let counter = match request.kind {
            ChangeKind::Capture { .. } => Some(self.claim_capture(request, account).await?),
            _ => None,
        };
        let change = match self.change_own_side(request, account).await {
            Err(e) if e.code() == "precondition_failed.over_capture" => {
                // Nothing moved: the capture's transfer record says so.
                self.set_transfer_state(&request.change_id, "failed")
                    .await?;
                return Err(e);
            }
            other => other?,
        };
        if change.posted.minor_units() > 0 {
            let key = entry_key(&account.account_id, &posting_entry(&request.change_id));
            if let Some(row) = self.store.get("account_entries", &key).await? {
                self.journal_row(account, &request.change_id, &row).await?;
            }
        }
        if let Some(counter) = counter {
            failpoint::step("ledger::capture::before_counter_posting").await?;
            let amount = change.posted.minor_units();
            self.post(
                &counter,
                &request.change_id,
                amount,
                &account.account_id,
                false,
            )
            .await?;
            self.set_transfer_state(&request.change_id, "completed")
                .await?;
        }
        Ok(change)
    }

    /// A capture's transfer record (so it is found and finished like any transfer), and the
    /// counter account.
    async fn claim_capture(
        &self,
        request: &HoldChangeRequest,
        account: &Account,
    ) -> Result<Account> {
        if request.counter_account_id == account.account_id {
            return Err(Error::bad_request(
                "counter_account_id",
                "a capture cannot credit the account it debits",
            ));
        }
        let counter = self.account(&request.counter_account_id).await?;
        let amount = request
            .amount
            .ok_or_else(|| Error::bad_request("amount", "a capture needs an amount"))?;
        Self::check_currency(&counter, amount)?;
        let record = Row::new()
            .with("transfer_id", request.change_id.as_str())
            .with("debit_account_id", account.account_id.as_str())
            .with("credit_account_id", counter.account_id.as_str())
            .with("amount", amount.minor_units())
            .with("currency", amount.currency().code())
            .with("description", capture_description(request))
            .with("state", "pending")
            .with("forced", true)
            .with("created_at", Value::Timestamp(now_millis()));
        if let Applied::No(current) = self
            .store
            .apply(vec![Mutation::insert_if_not_exists("transfers", record)])
            .await?
        {
            let existing = current
                .into_iter()
                .flatten()
                .next()
                .ok_or_else(|| Error::internal("capture claim failed without a current row"))?;
            let same = existing.text("debit_account_id")? == account.account_id
                && existing.text("credit_account_id")? == counter.account_id
                && existing.i64("amount")? == amount.minor_units()
                && existing.text("description")? == capture_description(request);
            if !same {
                return Err(Error::conflict(
                    "change",
                    "change id already used for another transfer",
                )
                .with_param("change_id", &request.change_id));
            }
            match existing.text("state")? {
                // Refused once, refused for good: a repeat reports it and moves nothing.
                "failed" => return Err(over_capture(&request.change_id)),
                // Completed, and its entry expired (FINISHED_ENTRY_TTL): it happened, but what
                // it did to the hold is no longer kept; doing it again would post twice.
                "completed" => {
                    let change_key =
                        entry_key(&account.account_id, &change_entry(&request.change_id));
                    if self
                        .store
                        .get("account_entries", &change_key)
                        .await?
                        .is_none()
                    {
                        return Err(forgotten(&request.change_id));
                    }
                }
                _ => {}
            }
        }
        Ok(counter)
    }

    /// The change on the hold's own account: one compare-and-set of balance, hold, change
    /// entry (and, for a capture, the debit posting).
    async fn change_own_side(
        &self,
        request: &HoldChangeRequest,
        account: &Account,
    ) -> Result<HoldChange> {
        let _queued = self.lock_account(&account.account_id).await;
        let change_key = entry_key(&account.account_id, &change_entry(&request.change_id));
        for _ in 0..MAX_ROUNDS {
            if let Some(row) = self.store.get("account_entries", &change_key).await? {
                check_repeat(request, &row)?;
                return change_from_row(request, account, &row);
            }
            let hold = self.hold(&request.hold_id, &account.account_id).await?;
            let b = self.row_balance(account).await?;
            let effect = Effect::of(
                request.kind,
                request.amount.map(|m| m.minor_units()),
                hold.as_ref(),
            )?;
            if let Some(change) = self
                .try_change(request, account, hold.as_ref(), &b, &effect)
                .await?
            {
                return Ok(change);
            }
        }
        Err(contended())
    }

    /// One compare-and-set round of a change; `None` if another change won the round.
    async fn try_change(
        &self,
        request: &HoldChangeRequest,
        account: &Account,
        hold: Option<&Hold>,
        b: &Balance,
        effect: &Effect,
    ) -> Result<Option<HoldChange>> {
        let held = b
            .held
            .minor_units()
            .checked_sub(effect.released)
            .and_then(|h| h.checked_add(effect.increased))
            .ok_or_else(out_of_range)?;
        let balance = b
            .balance
            .minor_units()
            .checked_sub(effect.posted)
            .ok_or_else(out_of_range)?;
        check_allowed(request, account, hold, b, effect)?;
        let cause = match request.kind {
            ChangeKind::Capture { .. } => Cause::Posting,
            ChangeKind::Reduce => Cause::HoldReleased,
            ChangeKind::Increase => Cause::HoldPlaced,
        };
        let (mut batch, announcement) = self
            .change(account, b, (balance, held), cause, &request.change_id)
            .await?;
        let overdrawn = account.kind == AccountKind::Customer
            && effect.posted > 0
            && balance.saturating_sub(held) < 0;
        batch.push(self.hold_mutation(request, account, hold, effect));
        let asked = request.amount.map(|m| m.minor_units()).unwrap_or(0);
        let change_row = entry_key(&account.account_id, &change_entry(&request.change_id))
            .with("hold_id", request.hold_id.as_str())
            .with("kind", request.kind.as_str())
            .with("amount", asked)
            .with("counterparty", request.counter_account_id.as_str())
            .with("posted", effect.posted)
            .with("released", effect.released)
            .with("increased", effect.increased)
            .with("remaining", effect.remaining)
            .with("status", effect.status.as_str())
            .with("overdrawn", overdrawn)
            .with("created_at", Value::Timestamp(now_millis()));
        batch.push(self.finished_entry("account_entries", change_row.clone()));
        if effect.posted > 0 {
            let posting = entry_key(&account.account_id, &posting_entry(&request.change_id))
                .with("amount", -effect.posted)
                .with("transfer_id", request.change_id.as_str())
                .with("counterparty", request.counter_account_id.as_str())
                .with("created_at", Value::Timestamp(now_millis()));
            batch.push(self.finished_entry("account_entries", posting));
        }
        if !self.apply_change(batch, announcement).await? {
            return Ok(None);
        }
        Ok(Some(change_from_row(request, account, &change_row)?))
    }

    /// The write to the hold's row: its new remaining and status (the whole row, expiring,
    /// once it reserves nothing), or, with no hold yet, a released tombstone so that a
    /// placement still in flight can never land afterwards.
    fn hold_mutation(
        &self,
        request: &HoldChangeRequest,
        account: &Account,
        hold: Option<&Hold>,
        effect: &Effect,
    ) -> Mutation {
        let key = entry_key(&account.account_id, &hold_entry(&request.hold_id));
        match hold {
            Some(h) if effect.status != HoldStatus::Active => self.finished_hold(&Hold {
                remaining: Money::from_minor(0, account.currency),
                increased: Money::from_minor(
                    h.increased.minor_units() + effect.increased,
                    account.currency,
                ),
                captured: Money::from_minor(
                    h.captured.minor_units() + effect.posted,
                    account.currency,
                ),
                status: effect.status,
                ..h.clone()
            }),
            Some(h) => {
                let increased = h.increased.minor_units() + effect.increased;
                let captured = h.captured.minor_units() + effect.posted;
                Mutation::update(
                    "account_entries",
                    key,
                    Row::new()
                        .with("remaining", effect.remaining)
                        .with("increased", increased)
                        .with("captured", captured)
                        .with("status", effect.status.as_str()),
                    vec![Condition::Equals("status".into(), h.status.as_str().into())],
                )
            }
            None => self.finished_entry(
                "account_entries",
                key.with("amount", 0i64)
                    .with("remaining", 0i64)
                    .with("status", "released")
                    .with("created_at", Value::Timestamp(now_millis())),
            ),
        }
    }
}
