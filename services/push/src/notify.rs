//! Devices and notifications: one notification per card decision per registered device, at
//! most once, retried with backoff through the bus until the bound, then dead-lettered.

use prost::Message;
use sterling_bus::Envelope;
use sterling_money::{Currency, Money};
use sterling_proto::events::v1::{CardAuthorisationDecided, CardPaymentUpdated};
use sterling_storage::{Applied, Condition, Mutation, Query, Row, SharedStore, Value, now_millis};
use sterling_template::{Error, Result};

use crate::gateway::{Gateway, Notification};

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Account notified.
    pub account_id: String,
    /// Push token.
    pub device_token: String,
    /// ios | android.
    pub platform: String,
    /// When registered, ms.
    pub registered_at_ms: i64,
}

/// Devices and notifications.
#[derive(Clone)]
pub struct Notifier {
    store: SharedStore,
    gateway: Gateway,
}

/// The claims of (event, device) pairs, changed only by compare-and-set.
const NOTIFICATIONS: &str = "notifications";

/// The outcome of each numbered attempt, written plainly by the attempt's holder.
const OUTCOMES: &str = "notification_outcomes";

fn notification_key(event_id: &str, device_token: &str) -> Row {
    Row::new()
        .with("event_id", event_id)
        .with("device_token", device_token)
}

fn describe(money: Option<&sterling_proto::common::v1::Money>) -> String {
    money
        .and_then(|m| {
            Currency::from_code(&m.currency)
                .ok()
                .map(|c| Money::from_minor(m.minor_units, c).to_string())
        })
        .unwrap_or_default()
}

impl Notifier {
    /// Over the service's store and a gateway.
    pub fn new(store: SharedStore, gateway: Gateway) -> Self {
        Notifier { store, gateway }
    }

    /// Registers a device; registering it again is a no-op.
    pub async fn register(
        &self,
        account_id: &str,
        device_token: &str,
        platform: &str,
    ) -> Result<DeviceRecord> {
        let row = Row::new()
            .with("account_id", account_id)
            .with("device_token", device_token)
            .with("platform", platform)
            .with("registered_at", Value::Timestamp(now_millis()));
        self.store
            .apply(vec![Mutation::insert_if_not_exists("devices", row)])
            .await?;
        self.devices(account_id)
            .await?
            .into_iter()
            .find(|d| d.device_token == device_token)
            .ok_or_else(|| Error::internal("device vanished after registration"))
    }

    /// An account's devices.
    pub async fn devices(&self, account_id: &str) -> Result<Vec<DeviceRecord>> {
        let rows = self
            .store
            .query(Query::partition(
                "devices",
                Row::new().with("account_id", account_id),
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceRecord {
                    account_id: account_id.to_string(),
                    device_token: r.text("device_token")?.to_string(),
                    platform: r.text("platform").unwrap_or_default().to_string(),
                    registered_at_ms: r.timestamp("registered_at").unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Removes a device (a compare-and-set, like its registration).
    pub async fn unregister(&self, account_id: &str, device_token: &str) -> Result<()> {
        self.store
            .apply(vec![Mutation::Delete {
                table: "devices".into(),
                key: Row::new()
                    .with("account_id", account_id)
                    .with("device_token", device_token),
                if_exists: true,
            }])
            .await?;
        Ok(())
    }

    /// Notifies every device of the account of a card decision. Devices already notified for
    /// this event are skipped; any failure makes the whole event fail so the bus retries it.
    pub async fn handle(&self, envelope: Envelope) -> Result<()> {
        if envelope.r#type.starts_with("card.payment.") {
            return self.handle_payment(envelope).await;
        }
        let d = CardAuthorisationDecided::decode(envelope.payload.as_slice())
            .map_err(|e| Error::bad_request("event", format!("not a card decision: {e}")))?;
        if d.account_id.is_empty() {
            return Ok(());
        }
        let (title, body) = if d.approved {
            (
                describe(d.amount.as_ref()),
                format!(
                    "{} at {}",
                    describe(d.local_amount.as_ref()),
                    d.merchant_descriptor
                ),
            )
        } else {
            (
                "Payment declined".to_string(),
                format!(
                    "{} at {}: {}",
                    describe(d.local_amount.as_ref()),
                    d.merchant_descriptor,
                    d.reason.replace('_', " ")
                ),
            )
        };
        self.send_all(&envelope, &d.account_id, (title, body), &d.transaction_id)
            .await
    }

    /// Notifies the account's devices of money that came back (a refund) or went out without
    /// an authorisation (a force post); the rest of a payment's life is not news to the phone.
    pub async fn handle_payment(&self, envelope: Envelope) -> Result<()> {
        let p = CardPaymentUpdated::decode(envelope.payload.as_slice())
            .map_err(|e| Error::bad_request("event", format!("not a payment update: {e}")))?;
        let text = match p.kind.as_str() {
            "refund" => (
                format!("Refund of {}", describe(p.amount.as_ref())),
                format!("from {}", p.merchant_descriptor),
            ),
            "force_post" => (
                describe(p.amount.as_ref()),
                format!("at {} (approved offline)", p.merchant_descriptor),
            ),
            _ => return Ok(()),
        };
        if p.account_id.is_empty() {
            return Ok(());
        }
        self.send_all(&envelope, &p.account_id, text, &p.transaction_id)
            .await
    }

    /// Sends one notification per device of the account, once per event and device.
    async fn send_all(
        &self,
        envelope: &Envelope,
        account_id: &str,
        (title, body): (String, String),
        transaction_id: &str,
    ) -> Result<()> {
        let mut failures = Vec::new();
        for device in self.devices(account_id).await? {
            let notification = Notification {
                apns_id: uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_OID,
                    format!("{}/{}", envelope.event_id, device.device_token).as_bytes(),
                )
                .to_string(),
                device_token: device.device_token.clone(),
                title: title.clone(),
                body: body.clone(),
                transaction_id: transaction_id.to_string(),
                event_id: envelope.event_id.clone(),
            };
            if let Err(e) = self.notify_once(&envelope.event_id, &notification).await {
                tracing::warn!(device = %device.device_token, error = %e, "push failed");
                failures.push(e);
            }
        }
        match failures.into_iter().next() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Claims an attempt at the (event, device) pair, sends, records the attempt's outcome. A
    /// pair sent before, or being sent right now, is not sent again.
    async fn notify_once(&self, event_id: &str, n: &Notification) -> Result<()> {
        let key = notification_key(event_id, &n.device_token);
        let Some(attempt) = self.claim(&key, n).await? else {
            // Sent, or being sent by another delivery of the same event.
            return Ok(());
        };
        let outcome = self.gateway.send(n).await;
        let (status, error) = match &outcome {
            Ok(()) => ("sent", String::new()),
            Err(e) => ("failed", e.to_string()),
        };
        // A row of its own, written plainly: only the holder of the attempt writes it (on
        // Cassandra, no second Paxos transaction per notification).
        let row = key
            .with("attempt", attempt)
            .with("status", status)
            .with("last_error", error)
            .with("sent_at", Value::Timestamp(now_millis()));
        self.store
            .apply(vec![Mutation::insert(OUTCOMES, row)])
            .await?;
        if outcome.is_ok() {
            tracing::info!(device = %n.device_token, attempt, "push delivered");
        }
        outcome
    }

    /// Takes the next attempt at the pair: the first if it was never claimed, the one after a
    /// failed last attempt. `None` if it was sent, is being sent, or another delivery took the
    /// attempt first.
    async fn claim(&self, key: &Row, n: &Notification) -> Result<Option<i64>> {
        let claim = key
            .clone()
            .with("status", "sending")
            .with("attempt", 1i64)
            .with("apns_id", n.apns_id.as_str())
            .with("claimed_at", Value::Timestamp(now_millis()));
        let current = match self
            .store
            .apply(vec![Mutation::insert_if_not_exists(NOTIFICATIONS, claim)])
            .await?
        {
            Applied::Yes => return Ok(Some(1)),
            Applied::No(current) => current
                .into_iter()
                .flatten()
                .next()
                .ok_or_else(|| Error::internal("claim refused without a current row"))?,
        };
        let (condition, last) = match current.i64("attempt").ok() {
            Some(last) => {
                let outcome = self
                    .store
                    .get(OUTCOMES, &key.clone().with("attempt", last))
                    .await?;
                if outcome.is_none_or(|o| o.text("status").ok() != Some("failed")) {
                    return Ok(None);
                }
                let condition = Condition::Equals("attempt".into(), Value::BigInt(last));
                (condition, last)
            }
            // Claimed before attempts were numbered: the claim's status says how it ended.
            None => {
                if current.text("status").ok() != Some("failed") {
                    return Ok(None);
                }
                (Condition::Equals("status".into(), "failed".into()), 0)
            }
        };
        let retry = Mutation::update(
            NOTIFICATIONS,
            key.clone(),
            Row::new()
                .with("status", "sending")
                .with("attempt", last + 1)
                .with("claimed_at", Value::Timestamp(now_millis())),
            vec![condition],
        );
        Ok(self
            .store
            .apply(vec![retry])
            .await?
            .applied()
            .then_some(last + 1))
    }
}
