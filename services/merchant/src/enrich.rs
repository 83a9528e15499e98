//! Enriching card decisions: the consumer of `card.authorisation.*` that publishes
//! `transaction.enriched` once per transaction, through the outbox. The event's id is derived
//! from the transaction id, so the enrichment needs no compare-and-set: deliveries of one
//! decision write the same row and announce the same event.

use std::sync::Arc;

use prost::Message;
use sterling_bus::Envelope;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{CardAuthorisationDecided, TransactionEnriched};
use sterling_storage::{Mutation, Row, SharedStore, Value, now_millis};
use sterling_template::outbox::{self, Confirm, Outbox, Verdict};
use sterling_template::{Error, Result};

use crate::directory::Directory;

/// Enriches decisions.
#[derive(Clone)]
pub struct Enricher {
    /// The directory.
    pub directory: Arc<Directory>,
    /// The service's store.
    pub store: SharedStore,
    /// Where `transaction.enriched` is staged and published from.
    pub outbox: Outbox,
}

fn key(transaction_id: &str) -> Row {
    Row::new().with("transaction_id", transaction_id)
}

impl Enricher {
    /// Handles one decision event; a repeat publishes nothing new.
    pub async fn handle(&self, envelope: Envelope) -> Result<()> {
        let decided = CardAuthorisationDecided::decode(envelope.payload.as_slice())
            .map_err(|e| Error::bad_request("event", format!("not a card decision: {e}")))?;
        if decided.transaction_id.is_empty() {
            return Err(Error::bad_request(
                "event",
                "a card decision without a transaction id",
            ));
        }
        let merchant = self.directory.lookup(
            &decided.merchant_descriptor,
            &decided.mcc,
            &decided.merchant_country,
            &decided.merchant_city,
        );
        let enriched = TransactionEnriched {
            transaction_id: decided.transaction_id.clone(),
            account_id: decided.account_id.clone(),
            processor_authorisation_id: decided.processor_authorisation_id.clone(),
            merchant: Some(merchant.clone()),
            approved: decided.approved,
            amount: decided.amount.clone(),
        };
        // Made the same by every delivery of this decision: one event, whoever writes.
        let event = outbox::derived_event(
            types::TRANSACTION_ENRICHED,
            &enriched,
            &decided.transaction_id,
            sterling_storage::uuid_v7_millis(&decided.transaction_id)
                .unwrap_or(decided.decided_at_ms),
        );
        let key = key(&decided.transaction_id);
        if self.store.get("enrichments", &key).await?.is_some() {
            // Enriched before (a redelivery): its event is published, or staged for the relay.
            return Ok(());
        }
        let row = key
            .with("account_id", decided.account_id.as_str())
            .with("event_id", event.event_id.as_str())
            .with("name", merchant.name.as_str())
            .with("category", merchant.category.as_str())
            .with("logo_url", merchant.logo_url.as_str())
            .with("created_at", Value::Timestamp(now_millis()));
        // The event staged, then the enrichment that it announces (one commit on the embedded
        // store). A plain write: two deliveries at once write the same enrichment and stage the
        // same event, which is published twice at most and taken once.
        self.store
            .apply_in_order(vec![
                vec![self.outbox.staging(&event)?],
                vec![Mutation::insert("enrichments", row)],
            ])
            .await?;
        tracing::info!(merchant = %merchant.name, known = merchant.known, "transaction enriched");
        self.outbox.publish_soon(event);
        Ok(())
    }
}

/// Tells the outbox relay whether a staged `transaction.enriched` stands.
pub struct EnrichmentConfirm {
    /// The service's store.
    pub store: SharedStore,
}

#[async_trait::async_trait]
impl Confirm for EnrichmentConfirm {
    async fn confirm(&self, envelope: &Envelope) -> Result<Verdict> {
        let event = TransactionEnriched::decode(envelope.payload.as_slice())
            .map_err(|e| Error::internal(format!("staged event is not an enrichment: {e}")))?;
        Ok(
            match self
                .store
                .get("enrichments", &key(&event.transaction_id))
                .await?
            {
                Some(row) if row.text("event_id")? == envelope.event_id => Verdict::Publish,
                Some(_) => Verdict::Discard,
                None => Verdict::Wait,
            },
        )
    }
}
