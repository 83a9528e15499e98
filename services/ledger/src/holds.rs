//! Holds placed in groups: the holds waiting on one account are checked against its available
//! amount in order and written in one conditional batch (one compare-and-set on the account's
//! balance row, one insert-if-not-exists per hold, all in the account's partition). A burst on
//! one account costs a few compare-and-sets instead of one per hold, which on Cassandra means a
//! few Paxos rounds instead of a queue of them.
//!
//! Rules kept: one hold per hold id (a repeat reports the hold as it stands: active with the
//! same amount is the hold, released is `precondition_failed.hold_released`, another amount is
//! `conflict.hold`); a customer account's available amount never goes below zero; a group whose
//! compare-and-set fails (another process moved the balance, a release tombstone landed) is
//! read again and retried.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use sterling_money::Money;
use sterling_storage::{Mutation, Value, now_millis};
use sterling_template::{Error, Result, failpoint};
use tokio::sync::oneshot;

use crate::announce::Cause;
use crate::store::{
    Account, AccountKind, Book, Hold, HoldStatus, MAX_ROUNDS, contended, entry_key, hold_entry,
    insufficient,
};

/// Most holds written in one batch (Cassandra warns on large batches).
const MAX_GROUP: usize = 64;

/// One hold waiting to be placed.
pub(crate) struct HoldRequest {
    hold_id: String,
    amount: Money,
    reply: oneshot::Sender<Result<Hold>>,
}

/// Holds waiting per account; an account is present while a leader task places its groups.
pub(crate) type HoldQueues = Arc<Mutex<HashMap<String, Vec<HoldRequest>>>>;

fn released(hold_id: &str) -> Error {
    Error::precondition_failed(
        "hold_released",
        "the hold was released and cannot be placed again",
    )
    .with_param("hold_id", hold_id)
}

fn conflict(hold_id: &str) -> Error {
    Error::conflict("hold", "hold id already used for another amount")
        .with_param("hold_id", hold_id)
}

/// What a request gets when its hold id is already taken by `existing`.
fn repeat(existing: &Hold, amount: Money) -> Result<Hold> {
    if existing.status == HoldStatus::Released {
        // A released hold (or the tombstone of a release that came first) reserves nothing,
        // so it is never a success.
        return Err(released(&existing.hold_id));
    }
    if existing.amount != amount {
        return Err(conflict(&existing.hold_id));
    }
    Ok(existing.clone())
}

impl Book {
    /// Reserves `amount` on an account, once per `hold_id`, placed in a group with the other
    /// holds waiting on the same account.
    pub async fn place_hold(&self, hold_id: &str, account_id: &str, amount: Money) -> Result<Hold> {
        let account = self.account(account_id).await?;
        Self::check_currency(&account, amount)?;
        let (reply, answer) = oneshot::channel();
        let request = HoldRequest {
            hold_id: hold_id.to_string(),
            amount,
            reply,
        };
        let lead = {
            let mut queues = self.hold_queues.lock().unwrap_or_else(|p| p.into_inner());
            match queues.get_mut(account_id) {
                Some(waiting) => {
                    waiting.push(request);
                    false
                }
                None => {
                    queues.insert(account_id.to_string(), vec![request]);
                    true
                }
            }
        };
        if lead {
            // Detached: a caller that goes away does not strand the others in its group.
            let book = self.clone();
            tokio::spawn(async move { book.lead(account).await });
        }
        answer
            .await
            .map_err(|_| Error::internal("the hold's group was abandoned"))?
    }

    /// Places the account's waiting holds, group after group, until none wait.
    async fn lead(&self, account: Account) {
        loop {
            let group: Vec<HoldRequest> = {
                let mut queues = self.hold_queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(waiting) = queues.get_mut(&account.account_id) else {
                    return;
                };
                if waiting.is_empty() {
                    queues.remove(&account.account_id);
                    return;
                }
                let n = waiting.len().min(MAX_GROUP);
                waiting.drain(..n).collect()
            };
            let _queued = self.lock_account(&account.account_id).await;
            let placing = std::panic::AssertUnwindSafe(self.place_group(&account, &group));
            let outcomes = placing.catch_unwind().await.unwrap_or_else(|_| {
                let error = Error::internal("placing a group of holds panicked");
                group.iter().map(|_| Err(error.clone())).collect()
            });
            for (request, outcome) in group.into_iter().zip(outcomes) {
                let _ = request.reply.send(outcome);
            }
        }
    }

    /// One outcome per request, in order.
    async fn place_group(&self, account: &Account, group: &[HoldRequest]) -> Vec<Result<Hold>> {
        let mut outcomes: Vec<Option<Result<Hold>>> = group.iter().map(|_| None).collect();
        for _ in 0..MAX_ROUNDS {
            match self.place_round(account, group, &mut outcomes).await {
                Ok(true) => break,
                Ok(false) => continue,
                Err(e) => {
                    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                        *outcome = Some(Err(e.clone()));
                    }
                    break;
                }
            }
        }
        // A hold id twice in one group: the later ones get what the first got.
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, request) in group.iter().enumerate() {
            first.entry(request.hold_id.as_str()).or_insert(i);
        }
        let resolved: Vec<Option<Result<Hold>>> = outcomes.clone();
        group
            .iter()
            .zip(outcomes)
            .map(|(request, outcome)| match outcome {
                Some(outcome) => outcome,
                None => match &resolved[first[request.hold_id.as_str()]] {
                    Some(Ok(hold)) => repeat(hold, request.amount),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(contended()),
                },
            })
            .collect()
    }

    /// One compare-and-set round over the undecided requests; `Ok(true)` once every request
    /// that can be decided is.
    async fn place_round(
        &self,
        account: &Account,
        group: &[HoldRequest],
        outcomes: &mut [Option<Result<Hold>>],
    ) -> Result<bool> {
        let b = self.row_balance(account).await?;
        let mut available = b.available.minor_units();
        let mut held = b.held.minor_units();
        let mut seen = HashSet::new();
        let undecided: Vec<usize> = (0..group.len())
            .filter(|&i| outcomes[i].is_none() && seen.insert(group[i].hold_id.as_str()))
            .collect();
        let existing = futures::future::join_all(
            undecided
                .iter()
                .map(|&i| self.hold(&group[i].hold_id, &account.account_id)),
        )
        .await;
        let mut batch = Vec::new();
        let mut accepted = Vec::new();
        let placed_at_ms = now_millis();
        for (&i, existing) in undecided.iter().zip(existing) {
            let request = &group[i];
            if let Some(existing) = existing? {
                outcomes[i] = Some(repeat(&existing, request.amount));
                continue;
            }
            let amount = request.amount.minor_units();
            if account.kind == AccountKind::Customer && available < amount {
                let left = Money::from_minor(available, account.currency);
                outcomes[i] = Some(Err(insufficient(&account.account_id, left, request.amount)));
                continue;
            }
            available = available
                .checked_sub(amount)
                .ok_or_else(|| Error::bad_request("amount", "amount out of range"))?;
            held = held
                .checked_add(amount)
                .ok_or_else(|| Error::bad_request("amount", "amount out of range"))?;
            let row = entry_key(&account.account_id, &hold_entry(&request.hold_id))
                .with("amount", amount)
                .with("remaining", amount)
                .with("status", "active")
                .with("created_at", Value::Timestamp(placed_at_ms));
            batch.push(Mutation::insert_if_not_exists("account_entries", row));
            accepted.push(i);
        }
        if accepted.is_empty() {
            return Ok(true);
        }
        let holds: Vec<&str> = accepted
            .iter()
            .map(|&i| group[i].hold_id.as_str())
            .collect();
        let (change, announcement) = self
            .change(
                account,
                &b,
                (b.balance.minor_units(), held),
                Cause::HoldPlaced,
                &holds.join(","),
            )
            .await?;
        batch.extend(change);
        failpoint::step("ledger::place_hold::before_write").await?;
        if !self.apply_change(batch, announcement).await? {
            return Ok(false);
        }
        failpoint::step("ledger::place_hold::after_write").await?;
        for i in accepted {
            outcomes[i] = Some(Ok(group[i].placed(account, placed_at_ms)));
        }
        Ok(true)
    }
}

impl HoldRequest {
    /// The hold this request placed.
    fn placed(&self, account: &Account, placed_at_ms: i64) -> Hold {
        let nothing = Money::from_minor(0, account.currency);
        Hold {
            hold_id: self.hold_id.clone(),
            account_id: account.account_id.clone(),
            amount: self.amount,
            remaining: self.amount,
            increased: nothing,
            captured: nothing,
            status: HoldStatus::Active,
            placed_at_ms,
        }
    }
}
