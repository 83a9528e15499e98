//! The ledger that scales: the bank's own accounts posted on shards, and every posting in a
//! journal bucketed by account and UTC day.
//!
//! A customer account keeps one compare-and-set partition: the rule that its available amount
//! never goes below zero needs every change in order. An internal account has no such rule,
//! so its postings spread over [`SHARDS`] partitions by transfer id, each with its own balance
//! and compare-and-set: many clearings into the one settlement account no longer queue on one
//! Paxos partition. Its balance is the sum of the shards.

use sterling_money::Money;
use sterling_storage::{Condition, Mutation, Query, Row, Value, now_millis, utc_date};
use sterling_template::{Error, Result};

use crate::store::{Account, Book, MAX_ROUNDS, contended};

/// Shards of an internal account.
pub const SHARDS: i64 = 16;

/// One posting as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    /// The transfer (or change) that made it.
    pub transfer_id: String,
    /// Signed: positive credits the account.
    pub amount: Money,
    /// The other account.
    pub counterparty: String,
    /// When it was posted, ms since the epoch.
    pub created_at_ms: i64,
}

fn shard_of(transfer_id: &str) -> i64 {
    let hash = transfer_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    (hash % SHARDS as u64) as i64
}

fn shard_key(account_id: &str, shard: i64, entry: &str) -> Row {
    Row::new()
        .with("account_id", account_id)
        .with("shard", shard)
        .with("entry", entry)
}

impl Book {
    /// Writes a posting to the journal (again, harmlessly, on a retry).
    pub(crate) async fn journal(&self, account: &Account, posting: &Posting) -> Result<()> {
        let row = Row::new()
            .with("account_id", account.account_id.as_str())
            .with("day", utc_date(posting.created_at_ms))
            .with("transfer_id", posting.transfer_id.as_str())
            .with("amount", posting.amount.minor_units())
            .with("currency", account.currency.code())
            .with("counterparty", posting.counterparty.as_str())
            .with("created_at", Value::Timestamp(posting.created_at_ms));
        self.store
            .apply(vec![Mutation::insert("postings", row)])
            .await?;
        Ok(())
    }

    /// The journal of a posting whose idempotency row is `row` (amount, counterparty,
    /// created_at).
    pub(crate) async fn journal_row(
        &self,
        account: &Account,
        transfer_id: &str,
        row: &Row,
    ) -> Result<()> {
        let posting = Posting {
            transfer_id: transfer_id.to_string(),
            amount: Money::from_minor(row.i64("amount")?, account.currency),
            counterparty: row.text("counterparty").unwrap_or_default().to_string(),
            created_at_ms: row.timestamp("created_at")?,
        };
        self.journal(account, &posting).await
    }

    /// An account's postings on a UTC day (`YYYY-MM-DD`), oldest first.
    pub async fn postings(&self, account: &Account, day: &str) -> Result<Vec<Posting>> {
        let rows = self
            .store
            .query(Query::partition(
                "postings",
                Row::new()
                    .with("account_id", account.account_id.as_str())
                    .with("day", day),
            ))
            .await?;
        let mut postings = rows
            .iter()
            .map(|r| {
                Ok(Posting {
                    transfer_id: r.text("transfer_id")?.to_string(),
                    amount: Money::from_minor(r.i64("amount")?, account.currency),
                    counterparty: r.text("counterparty").unwrap_or_default().to_string(),
                    created_at_ms: r.timestamp("created_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        postings.sort_by(|a, b| {
            (a.created_at_ms, &a.transfer_id).cmp(&(b.created_at_ms, &b.transfer_id))
        });
        Ok(postings)
    }

    /// Posts to an internal account, once per transfer id, on the transfer's shard.
    pub(crate) async fn post_internal(
        &self,
        account: &Account,
        transfer_id: &str,
        amount: i64,
        counterparty: &str,
    ) -> Result<()> {
        let shard = shard_of(transfer_id);
        let entry = format!("posting:{transfer_id}");
        let posting_key = shard_key(&account.account_id, shard, &entry);
        let balance_key = shard_key(&account.account_id, shard, "balance");
        for _ in 0..MAX_ROUNDS {
            if let Some(row) = self.store.get("internal_shards", &posting_key).await? {
                return self.journal_row(account, transfer_id, &row).await;
            }
            let current = self.store.get("internal_shards", &balance_key).await?;
            let (balance, version) = match &current {
                Some(row) => (row.i64("balance")?, row.i64("version")?),
                None => (0, 0),
            };
            let next = balance
                .checked_add(amount)
                .ok_or_else(|| Error::bad_request("amount", "amount out of range"))?;
            let set = Row::new()
                .with("balance", next)
                .with("version", version + 1);
            let balance_write = match current {
                None => {
                    let mut row = balance_key.clone();
                    row.0.extend(set.0);
                    Mutation::insert_if_not_exists("internal_shards", row)
                }
                Some(_) => Mutation::update(
                    "internal_shards",
                    balance_key.clone(),
                    set,
                    vec![Condition::Equals("version".into(), Value::BigInt(version))],
                ),
            };
            let posting = posting_key
                .clone()
                .with("amount", amount)
                .with("counterparty", counterparty)
                .with("created_at", Value::Timestamp(now_millis()));
            let batch = vec![
                balance_write,
                self.finished_entry("internal_shards", posting.clone()),
            ];
            if self.store.apply(batch).await?.applied() {
                return self.journal_row(account, transfer_id, &posting).await;
            }
        }
        Err(contended())
    }

    /// What an internal account's shards add up to.
    pub(crate) async fn internal_balance(&self, account: &Account) -> Result<i64> {
        let keys: Vec<Row> = (0..SHARDS)
            .map(|shard| shard_key(&account.account_id, shard, "balance"))
            .collect();
        let reads = keys
            .iter()
            .map(|key| self.store.get("internal_shards", key));
        let mut sum = 0i64;
        for row in futures::future::join_all(reads).await {
            if let Some(row) = row? {
                sum = sum
                    .checked_add(row.i64("balance")?)
                    .ok_or_else(|| Error::internal("balance out of range"))?;
            }
        }
        Ok(sum)
    }
}
