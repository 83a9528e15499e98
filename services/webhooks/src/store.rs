//! Webhook registrations: register, list, delete.

use crate::address::UrlPolicy;
use rand::RngCore;
use sterling_storage::{Applied, Mutation, Query, Row, SharedStore, Value, now_millis};
use sterling_template::{Error, Result};

/// A registered webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// Id.
    pub webhook_id: String,
    /// Owner.
    pub account_id: String,
    /// Where deliveries go.
    pub url: String,
    /// HMAC key of its signatures.
    pub secret: String,
    /// When registered, ms.
    pub created_at_ms: i64,
}

fn from_row(row: &Row) -> Result<WebhookRecord> {
    Ok(WebhookRecord {
        webhook_id: row.text("webhook_id")?.to_string(),
        account_id: row.text("account_id")?.to_string(),
        url: row.text("url")?.to_string(),
        secret: row.text("secret")?.to_string(),
        created_at_ms: row.timestamp("created_at").unwrap_or_default(),
    })
}

/// Data access of registrations.
#[derive(Clone)]
pub struct Registry {
    store: SharedStore,
    policy: UrlPolicy,
}

impl Registry {
    /// Over the service's store, registering only URLs `policy` allows.
    pub fn new(store: SharedStore, policy: UrlPolicy) -> Self {
        Registry { store, policy }
    }

    /// Registers a URL once per idempotency key.
    pub async fn register(&self, key: &str, account_id: &str, url: &str) -> Result<WebhookRecord> {
        self.policy.check(url)?;
        let webhook_id = format!("wh_{}", uuid::Uuid::now_v7().simple());
        let claim = Row::new()
            .with("idempotency_key", key)
            .with("webhook_id", webhook_id.as_str())
            .with("account_id", account_id)
            .with("url", url);
        let webhook_id = match self
            .store
            .apply(vec![Mutation::insert_if_not_exists(
                "webhook_registrations",
                claim,
            )])
            .await?
        {
            Applied::Yes => webhook_id,
            Applied::No(current) => {
                let existing =
                    current.into_iter().flatten().next().ok_or_else(|| {
                        Error::internal("registration claim failed without a row")
                    })?;
                if existing.text("account_id")? != account_id || existing.text("url")? != url {
                    return Err(Error::conflict(
                        "idempotency_key",
                        "idempotency key used for another webhook",
                    ));
                }
                existing.text("webhook_id")?.to_string()
            }
        };
        let mut secret = [0u8; 24];
        rand::rng().fill_bytes(&mut secret);
        let row = Row::new()
            .with("account_id", account_id)
            .with("webhook_id", webhook_id.as_str())
            .with("url", url)
            .with("secret", format!("whsec_{}", hex::encode(secret)))
            .with("created_at", Value::Timestamp(now_millis()));
        self.store
            .apply(vec![Mutation::insert_if_not_exists("webhooks", row)])
            .await?;
        self.get(account_id, &webhook_id)
            .await?
            .ok_or_else(|| Error::internal("webhook vanished after registration"))
    }

    /// One webhook.
    pub async fn get(&self, account_id: &str, webhook_id: &str) -> Result<Option<WebhookRecord>> {
        let key = Row::new()
            .with("account_id", account_id)
            .with("webhook_id", webhook_id);
        self.store
            .get("webhooks", &key)
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    /// An account's webhooks.
    pub async fn list(&self, account_id: &str) -> Result<Vec<WebhookRecord>> {
        let rows = self
            .store
            .query(Query::partition(
                "webhooks",
                Row::new().with("account_id", account_id),
            ))
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Deletes a webhook (a compare-and-set, like its registration); its pending deliveries
    /// fail when attempted.
    pub async fn delete(&self, account_id: &str, webhook_id: &str) -> Result<()> {
        self.store
            .apply(vec![Mutation::Delete {
                table: "webhooks".into(),
                key: Row::new()
                    .with("account_id", account_id)
                    .with("webhook_id", webhook_id),
                if_exists: true,
            }])
            .await?;
        Ok(())
    }
}
