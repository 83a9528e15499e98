//! Transaction records in the transactions keyspace.

use sterling_proto::events::v1::CardPaymentUpdated;
use sterling_storage::{Applied, Condition, Mutation, Row, SharedStore, Value};
use sterling_template::by_month::ByMonth;
use sterling_template::{Error, Result, failpoint};

/// A stored transaction. Amounts are minor units of the named currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    /// UUIDv7 text, chosen by the caller.
    pub transaction_id: String,
    /// Ledger account.
    pub account_id: String,
    /// Processor authorisation id.
    pub authorisation_id: String,
    /// Card used.
    pub card_token: String,
    /// Amount in the account's currency.
    pub amount: i64,
    /// The account's currency.
    pub currency: String,
    /// Amount as charged.
    pub local_amount: i64,
    /// Currency as charged.
    pub local_currency: String,
    /// Merchant descriptor as the processor sent it.
    pub merchant_descriptor: String,
    /// Merchant category code.
    pub mcc: String,
    /// pending | settled | released.
    pub status: String,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// Merchant name from the enrichment (empty until it arrives).
    pub merchant_name: String,
    /// Spending category from the enrichment.
    pub category: String,
    /// Merchant logo from the enrichment.
    pub logo_url: String,
    /// card_payment | refund | force_post.
    pub kind: String,
}

impl TransactionRecord {
    /// Whether this is the record of a release that came before the transaction itself.
    pub fn is_tombstone(&self) -> bool {
        self.status == "released" && self.amount == 0
    }

    fn to_row(&self) -> Row {
        key(&self.account_id, &self.transaction_id)
            .with("authorisation_id", self.authorisation_id.as_str())
            .with("card_token", self.card_token.as_str())
            .with("amount", self.amount)
            .with("currency", self.currency.as_str())
            .with("local_amount", self.local_amount)
            .with("local_currency", self.local_currency.as_str())
            .with("merchant_descriptor", self.merchant_descriptor.as_str())
            .with("mcc", self.mcc.as_str())
            .with("status", self.status.as_str())
            .with("kind", self.kind.as_str())
            .with("created_at", Value::Timestamp(self.created_at_ms))
    }

    fn from_row(row: &Row) -> Result<Self> {
        let text = |c: &str| row.text(c).map(str::to_string).unwrap_or_default();
        Ok(TransactionRecord {
            transaction_id: row.text("transaction_id")?.to_string(),
            account_id: row.text("account_id")?.to_string(),
            authorisation_id: text("authorisation_id"),
            card_token: text("card_token"),
            amount: row.i64("amount")?,
            currency: row.text("currency")?.to_string(),
            local_amount: row.i64("local_amount")?,
            local_currency: row.text("local_currency")?.to_string(),
            merchant_descriptor: text("merchant_descriptor"),
            mcc: text("mcc"),
            status: row.text("status")?.to_string(),
            created_at_ms: row.timestamp("created_at")?,
            merchant_name: text("merchant_name"),
            category: text("category"),
            logo_url: text("logo_url"),
            kind: match text("kind") {
                kind if kind.is_empty() => "card_payment".to_string(),
                kind => kind,
            },
        })
    }
}

/// An account's transactions by month.
pub const BY_ACCOUNT: ByMonth = ByMonth {
    table: "account_transactions",
    months: "account_transactions_months",
    owner: "account_id",
    id: "transaction_id",
};

fn key(account_id: &str, transaction_id: &str) -> Row {
    BY_ACCOUNT.key(account_id, transaction_id)
}

/// The key of `record`'s entry in the id -> account index.
fn index_key(record: &TransactionRecord) -> Row {
    Row::new().with("transaction_id", record.transaction_id.as_str())
}

/// Data access of the transactions service.
#[derive(Clone)]
pub struct TransactionStore {
    store: SharedStore,
}

impl TransactionStore {
    /// Wraps the service's store.
    pub fn new(store: SharedStore) -> Self {
        TransactionStore { store }
    }

    /// Records a transaction once per id; a repeat returns the stored one.
    pub async fn record(&self, record: &TransactionRecord) -> Result<TransactionRecord> {
        failpoint::step("transactions::record::before_write").await?;
        // The id -> account index first, in the same commit where the backend allows, so that
        // a recorded transaction is always found by its id. A plain write (no compare-and-set:
        // a repeat writes the same row); an id already indexed to another account is refused.
        let index = index_key(record).with("account_id", record.account_id.as_str());
        if let Some(indexed) = self.store.get("transactions", &index_key(record)).await?
            && indexed.text("account_id")? != record.account_id
        {
            return Err(Error::conflict(
                "transaction",
                "transaction id already used for another account",
            )
            .with_param("transaction_id", &record.transaction_id));
        }
        let mut outcomes = self
            .store
            .apply_in_order(vec![
                vec![Mutation::insert("transactions", index)],
                vec![BY_ACCOUNT.month_entry(&record.account_id, &record.transaction_id)],
                vec![Mutation::insert_if_not_exists(
                    BY_ACCOUNT.table,
                    record.to_row(),
                )],
            ])
            .await?;
        let stored = match outcomes.pop().unwrap_or(Applied::Yes) {
            Applied::Yes => record.clone(),
            Applied::No(current) => {
                let existing = current
                    .into_iter()
                    .flatten()
                    .next()
                    .ok_or_else(|| Error::internal("insert failed without a current row"))?;
                let existing = TransactionRecord::from_row(&existing)?;
                if existing.status == "released" {
                    // Released (or released before it was recorded): a repeat reports that,
                    // never a pending transaction that does not exist.
                    return Err(Error::precondition_failed(
                        "transaction_released",
                        "the transaction was released and cannot be recorded again",
                    )
                    .with_param("transaction_id", &record.transaction_id));
                }
                if existing.authorisation_id != record.authorisation_id
                    || existing.amount != record.amount
                {
                    return Err(Error::conflict(
                        "transaction",
                        "transaction id already used for another transaction",
                    )
                    .with_param("transaction_id", &record.transaction_id));
                }
                existing
            }
        };
        failpoint::step("transactions::record::after_write").await?;
        Ok(stored)
    }

    /// Marks a transaction released; one not recorded yet is recorded as a released tombstone
    /// (zero amount) so that a late [`TransactionStore::record`] cannot revive it.
    pub async fn release(
        &self,
        transaction_id: &str,
        account_id: &str,
        authorisation_id: &str,
    ) -> Result<TransactionRecord> {
        let key = key(account_id, transaction_id);
        loop {
            match self.store.get(BY_ACCOUNT.table, &key).await? {
                Some(row) => {
                    let record = TransactionRecord::from_row(&row)?;
                    if record.status != "pending" {
                        return Ok(record);
                    }
                    let release = Mutation::update(
                        BY_ACCOUNT.table,
                        key.clone(),
                        Row::new().with("status", "released"),
                        vec![Condition::Equals("status".into(), "pending".into())],
                    );
                    if self.store.apply(vec![release]).await?.applied() {
                        return Ok(TransactionRecord {
                            status: "released".into(),
                            ..record
                        });
                    }
                }
                None => {
                    let tombstone = TransactionRecord {
                        transaction_id: transaction_id.to_string(),
                        account_id: account_id.to_string(),
                        authorisation_id: authorisation_id.to_string(),
                        card_token: String::new(),
                        amount: 0,
                        currency: String::new(),
                        local_amount: 0,
                        local_currency: String::new(),
                        merchant_descriptor: String::new(),
                        mcc: String::new(),
                        status: "released".into(),
                        created_at_ms: sterling_storage::now_millis(),
                        merchant_name: String::new(),
                        category: String::new(),
                        logo_url: String::new(),
                        kind: "card_payment".into(),
                    };
                    self.store
                        .apply(vec![BY_ACCOUNT.month_entry(account_id, transaction_id)])
                        .await?;
                    self.store
                        .apply(vec![Mutation::insert_if_not_exists(
                            BY_ACCOUNT.table,
                            tombstone.to_row(),
                        )])
                        .await?;
                    self.store
                        .apply(vec![Mutation::insert(
                            "transactions",
                            Row::new()
                                .with("transaction_id", transaction_id)
                                .with("account_id", account_id),
                        )])
                        .await?;
                }
            }
        }
    }

    /// Adds the merchant's enrichment to a recorded transaction; one that was never recorded
    /// (a declined authorisation) is left alone. Repeats change nothing.
    pub async fn enrich(
        &self,
        account_id: &str,
        transaction_id: &str,
        merchant_name: &str,
        category: &str,
        logo_url: &str,
    ) -> Result<bool> {
        let key = key(account_id, transaction_id);
        // Read, then a plain write of the merchant's columns (no compare-and-set): a recorded
        // transaction is never deleted, and nothing else writes these columns after it is
        // recorded, so a write that finds the row cannot race anything.
        if self.store.get(BY_ACCOUNT.table, &key).await?.is_none() {
            return Ok(false);
        }
        let set = Row::new()
            .with("merchant_name", merchant_name)
            .with("category", category)
            .with("logo_url", logo_url);
        self.store
            .apply(vec![Mutation::update(
                BY_ACCOUNT.table,
                key,
                set,
                Vec::new(),
            )])
            .await?;
        Ok(true)
    }

    /// Applies a `card.payment.*` event: the authorisation's transaction settles (at the
    /// settled amount), or is released; a refund or force post is a settled transaction of its
    /// own. The highest payment version wins, so repeated and reordered events leave it right.
    pub async fn apply_payment(&self, e: &CardPaymentUpdated) -> Result<()> {
        if e.account_id.is_empty() || e.transaction_id.is_empty() {
            return Ok(());
        }
        match e.kind.as_str() {
            "refund" | "force_post" => self.record_own(e).await,
            _ => self.move_payment(e).await,
        }
    }

    /// A refund's or force post's own transaction, settled.
    async fn record_own(&self, e: &CardPaymentUpdated) -> Result<()> {
        let amount = e.amount.clone().unwrap_or_default();
        let local = e.local_amount.clone().unwrap_or_else(|| amount.clone());
        let record = TransactionRecord {
            transaction_id: e.transaction_id.clone(),
            account_id: e.account_id.clone(),
            authorisation_id: e.processor_authorisation_id.clone(),
            card_token: e.card_token.clone(),
            amount: amount.minor_units,
            currency: amount.currency,
            local_amount: local.minor_units,
            local_currency: local.currency,
            merchant_descriptor: e.merchant_descriptor.clone(),
            mcc: e.mcc.clone(),
            status: "settled".into(),
            created_at_ms: e.occurred_at_ms,
            merchant_name: String::new(),
            category: String::new(),
            logo_url: String::new(),
            kind: e.kind.clone(),
        };
        self.record(&record).await?;
        Ok(())
    }

    /// The authorisation's transaction, moved to what the payment's newest version says.
    async fn move_payment(&self, e: &CardPaymentUpdated) -> Result<()> {
        let key = key(&e.account_id, &e.transaction_id);
        let minor =
            |m: &Option<sterling_proto::common::v1::Money>| m.as_ref().map_or(0, |m| m.minor_units);
        for _ in 0..100 {
            let Some(row) = self.store.get(BY_ACCOUNT.table, &key).await? else {
                // Not recorded (a declined authorisation): nothing to move.
                return Ok(());
            };
            let seen = row.i64("payment_version").ok();
            if seen.unwrap_or(0) >= e.payment_version {
                return Ok(());
            }
            let (status, amount) = match e.status.as_str() {
                "pending" => ("pending", minor(&e.held) + minor(&e.settled)),
                "settled" | "refunded" => ("settled", minor(&e.settled)),
                _ => ("released", row.i64("amount")?),
            };
            let condition = match seen {
                Some(v) => Condition::Equals("payment_version".into(), Value::BigInt(v)),
                None => Condition::Equals("status".into(), row.text("status")?.into()),
            };
            let update = Mutation::update(
                BY_ACCOUNT.table,
                key.clone(),
                Row::new()
                    .with("status", status)
                    .with("amount", amount)
                    .with("payment_version", e.payment_version),
                vec![condition],
            );
            if self.store.apply(vec![update]).await?.applied() {
                return Ok(());
            }
        }
        Err(Error::unavailable(
            "contention",
            "too much contention on a transaction",
        ))
    }

    /// Moves the rows of `transactions_by_account` (a partition per account forever) to the
    /// monthly partitions, once; returns how many this call moved.
    pub async fn move_first_table(&self) -> Result<u64> {
        BY_ACCOUNT
            .move_once(&self.store, "transactions_by_account")
            .await
    }

    /// A transaction by id.
    pub async fn get(&self, transaction_id: &str) -> Result<TransactionRecord> {
        let not_found = || {
            Error::not_found("transaction", "no such transaction")
                .with_param("transaction_id", transaction_id)
        };
        let index = self
            .store
            .get(
                "transactions",
                &Row::new().with("transaction_id", transaction_id),
            )
            .await?
            .ok_or_else(not_found)?;
        let row = self
            .store
            .get(
                BY_ACCOUNT.table,
                &key(index.text("account_id")?, transaction_id),
            )
            .await?
            .ok_or_else(not_found)?;
        TransactionRecord::from_row(&row)
    }

    /// A page of an account's transactions, newest first, after `cursor` (a transaction id).
    /// Tombstones (releases that came before their transaction) are not transactions and are
    /// left out; the page is still filled up to `limit`.
    pub async fn list(
        &self,
        account_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Vec<TransactionRecord>> {
        let mut page = Vec::new();
        let mut after = cursor.map(str::to_string);
        while page.len() < limit {
            let wanted = limit - page.len();
            let rows = BY_ACCOUNT
                .page(&self.store, account_id, after.as_deref(), wanted)
                .await?;
            let exhausted = rows.len() < wanted;
            for row in &rows {
                let record = TransactionRecord::from_row(row)?;
                after = Some(record.transaction_id.clone());
                if !record.is_tombstone() {
                    page.push(record);
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(page)
    }
}
