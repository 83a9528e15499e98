//! Announcing decisions on the bus. The announcement is written with the decision (the record
//! is its own outbox), published right after the compare-and-set that decided, and published
//! again by the sweeper if this process cannot vouch that it went out (it died first, or the
//! bus was down). The bus deduplicates on the event id and every consumer remembers the ids it
//! handled, so publishing twice is harmless; publishing never is not possible.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost::Message;
use sterling_bus::{Bus, Envelope};
use sterling_storage::now_millis;
use sterling_template::{Error, Result};

use crate::store::{Record, State};

/// Publishes decision events and remembers which went out from this process.
#[derive(Clone)]
pub struct Announcer {
    bus: Arc<dyn Bus>,
    /// Event ids this process published, with when (forgotten once the sweeper is past them).
    published: Arc<Mutex<HashMap<String, i64>>>,
}

impl Announcer {
    /// An announcer on `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Announcer {
            bus,
            published: Arc::default(),
        }
    }

    fn published(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes now.
    pub async fn publish(&self, envelope: &Envelope) -> Result<()> {
        self.bus
            .publish(envelope)
            .await
            .map_err(|e| Error::unavailable("bus", e.to_string()))?;
        self.published()
            .insert(envelope.event_id.clone(), now_millis());
        Ok(())
    }

    /// Publishes in the background; the sweeper publishes it if this fails.
    pub fn publish_soon(&self, envelope: Envelope) {
        let announcer = self.clone();
        tokio::spawn(async move {
            if let Err(e) = announcer.publish(&envelope).await {
                tracing::warn!(event_id = %envelope.event_id, error = %e, "publish failed; the sweeper will publish it");
            }
        });
    }

    /// Publishes a decided record's announcement unless this process already did.
    pub async fn ensure_published(&self, record: &Record) -> Result<()> {
        let (State::Decided(decision), Some(event)) = (&record.state, &record.event) else {
            return Ok(());
        };
        if self.published().contains_key(&decision.event_id) {
            return Ok(());
        }
        let envelope = Envelope::decode(event.as_slice())
            .map_err(|e| Error::internal(format!("stored announcement is not an envelope: {e}")))?;
        self.publish(&envelope).await?;
        tracing::info!(event_id = %envelope.event_id, "sweeper published a decision");
        Ok(())
    }

    /// Forgets ids published before `millis` (the sweeper will not look at them again).
    pub fn forget_before(&self, millis: i64) {
        self.published().retain(|_, at| *at >= millis);
    }
}
