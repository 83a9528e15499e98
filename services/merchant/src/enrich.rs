//! Enriching card decisions: the consumer of `card.authorisation.*` that publishes
//! `transaction.enriched` once per transaction, through the outbox.

use std::sync::Arc;

use prost::Message;
use sterling_bus::Envelope;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{CardAuthorisationDecided, TransactionEnriched};
use sterling_storage::{Applied, Mutation, Row, SharedStore, Value, now_millis};
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
        let event = outbox::event(types::TRANSACTION_ENRICHED, &enriched);
        let row = key(&decided.transaction_id)
            .with("account_id", decided.account_id.as_str())
            .with("event_id", event.event_id.as_str())
            .with("name", merchant.name.as_str())
            .with("category", merchant.category.as_str())
            .with("logo_url", merchant.logo_url.as_str())
            .with("created_at", Value::Timestamp(now_millis()));
        // The event staged, then the enrichment that it announces (one commit on the
        // embedded store).
        let outcome = self
            .store
            .apply_in_order(vec![
                vec![self.outbox.staging(&event)?],
                vec![Mutation::insert_if_not_exists("enrichments", row)],
            ])
            .await?
            .pop()
            .unwrap_or(Applied::Yes);
        match outcome {
            Applied::Yes => {
                tracing::info!(merchant = %merchant.name, known = merchant.known, "transaction enriched");
                self.outbox.publish_soon(event);
            }
            // Enriched before (a redelivery): that enrichment's own event stands.
            Applied::No(_) => self.outbox.discard(&event).await?,
        }
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
