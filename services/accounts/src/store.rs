//! Data access of accounts: who owns which ledger account, and the requests that opened them.

use sterling_storage::{Applied, Mutation, Query, Row, SharedStore, Value, now_millis};
use sterling_template::{Error, Result};

/// A customer's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedAccount {
    /// The ledger account.
    pub account_id: String,
    /// Its owner.
    pub customer_id: String,
    /// Its currency.
    pub currency: String,
}

/// Data access of accounts.
#[derive(Clone)]
pub struct AccountStore {
    store: SharedStore,
}

impl AccountStore {
    /// Over the service's store.
    pub fn new(store: SharedStore) -> Self {
        AccountStore { store }
    }

    /// The account id an opening request claims: a new one, or the one the same request
    /// (customer and key) claimed before; another currency under the same key is
    /// `conflict.idempotency_key`.
    pub async fn claim(&self, customer_id: &str, key: &str, currency: &str) -> Result<String> {
        let account_id = format!("acc_{}", uuid::Uuid::now_v7().simple());
        let row = Row::new()
            .with("customer_id", customer_id)
            .with("idempotency_key", key)
            .with("account_id", account_id.as_str())
            .with("currency", currency);
        match self
            .store
            .apply(vec![Mutation::insert_if_not_exists("account_opens", row)])
            .await?
        {
            Applied::Yes => Ok(account_id),
            Applied::No(current) => {
                let existing = current
                    .into_iter()
                    .flatten()
                    .next()
                    .ok_or_else(|| Error::internal("claim failed without a current row"))?;
                if existing.text("currency")? != currency {
                    return Err(Error::conflict(
                        "idempotency_key",
                        "idempotency key already used to open an account in another currency",
                    ));
                }
                Ok(existing.text("account_id")?.to_string())
            }
        }
    }

    /// Records that `customer_id` owns the account (idempotent).
    pub async fn record(&self, account: &OwnedAccount) -> Result<()> {
        let row = Row::new()
            .with("account_id", account.account_id.as_str())
            .with("customer_id", account.customer_id.as_str())
            .with("currency", account.currency.as_str())
            .with("created_at", Value::Timestamp(now_millis()));
        self.store
            .apply(vec![Mutation::insert_if_not_exists("accounts", row)])
            .await?;
        let by_customer = Row::new()
            .with("customer_id", account.customer_id.as_str())
            .with("account_id", account.account_id.as_str());
        self.store
            .apply(vec![Mutation::insert("accounts_by_customer", by_customer)])
            .await?;
        Ok(())
    }

    /// The account if `customer_id` owns it; `not_found.account` otherwise, whether it is
    /// another customer's or nobody's.
    pub async fn owned(&self, customer_id: &str, account_id: &str) -> Result<OwnedAccount> {
        let row = self
            .store
            .get("accounts", &Row::new().with("account_id", account_id))
            .await?
            .filter(|r| r.text("customer_id").is_ok_and(|c| c == customer_id))
            .ok_or_else(|| Error::not_found("account", format!("no account {account_id}")))?;
        from_row(&row)
    }

    /// The customer's accounts, at most `limit`.
    pub async fn list(&self, customer_id: &str, limit: usize) -> Result<Vec<OwnedAccount>> {
        let ids = self
            .store
            .query(
                Query::partition(
                    "accounts_by_customer",
                    Row::new().with("customer_id", customer_id),
                )
                .limit(limit),
            )
            .await?;
        let mut accounts = Vec::new();
        for id in ids {
            accounts.push(self.owned(customer_id, id.text("account_id")?).await?);
        }
        Ok(accounts)
    }
}

fn from_row(row: &Row) -> Result<OwnedAccount> {
    Ok(OwnedAccount {
        account_id: row.text("account_id")?.to_string(),
        customer_id: row.text("customer_id")?.to_string(),
        currency: row.text("currency")?.to_string(),
    })
}
