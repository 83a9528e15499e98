//! merchant: makes card payments readable. Consumes `card.authorisation.*`, looks the
//! descriptor up in the merchant directory (`data/merchants.csv`, a few hundred merchants,
//! with a fallback from the descriptor and the MCC) and publishes `transaction.enriched` once
//! per transaction through the outbox.

pub mod directory;
pub mod enrich;
pub mod handlers;

use std::sync::Arc;
use std::time::Duration;

use sterling_bus::ConsumerConfig;
use sterling_proto::event_types as types;
use sterling_proto::merchant::v1::merchant_server::MerchantServer;
use sterling_storage::Migration;
use sterling_template::{Api, OPERATOR, Rule, ServiceContext, ServiceDefinition};

use crate::directory::{BUILTIN, Directory};
use crate::enrich::{Enricher, EnrichmentConfirm};
use crate::handlers::MerchantHandlers;

/// The versioned migrations of the `sterling_merchant` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(1 => "0001_enrichments.cql");

/// The merchant service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::merchant::v1::MERCHANT_SERVICE,
    migrations: MIGRATIONS,
    settings: &[],
    depends_on: &[],
    access: &[
        // Read by the operator.
        Rule::new("GetMerchant", &[OPERATOR]),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let directory = Arc::new(Directory::parse(BUILTIN)?);
    let outbox = ctx.outbox(Arc::new(EnrichmentConfirm {
        store: ctx.store.clone(),
    }));
    let enricher = Enricher {
        directory: directory.clone(),
        store: ctx.store.clone(),
        outbox,
    };
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(10),
        ..ConsumerConfig::new("merchant", &[types::CARD_AUTHORISATION_ALL])
    };
    ctx.consume_by_account(config, move |envelope| {
        let enricher = enricher.clone();
        async move { enricher.handle(envelope).await }
    });
    Ok(Api::grpc(MerchantServer::new(MerchantHandlers {
        directory,
    })))
}
