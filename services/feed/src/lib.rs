//! feed: the customer's feed. Consumes card decisions and enrichments into one item per
//! payment (idempotent: an update replaces, never duplicates), lists it newest first with
//! cursors, and streams new and updated items live (`FollowFeed`) to the clients connected to
//! this instance.

pub mod handlers;
pub mod store;

use std::time::Duration;

use sterling_bus::ConsumerConfig;
use sterling_proto::event_types as types;
use sterling_proto::feed::v1::feed_server::FeedServer;
use sterling_storage::Migration;
use sterling_template::{Api, OPERATOR, Rule, ServiceContext, ServiceDefinition};

use crate::handlers::FeedHandlers;
use crate::store::FeedStore;

/// The public API service that calls for an account's owner.
const ACCOUNTS: &str = "accounts";

/// The versioned migrations of the `sterling_feed` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(
    1 => "0001_feed.cql",
    2 => "0002_payment_life.cql",
    3 => "0003_feed_by_month.cql",
);

/// The feed service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::feed::v1::FEED_SERVICE,
    migrations: MIGRATIONS,
    settings: &[],
    depends_on: &[],
    access: &[
        // Read by the operator, and by accounts for the customer it checked owns the account.
        Rule::new("ListFeed", &[OPERATOR, ACCOUNTS]),
        Rule::new("FollowFeed", &[OPERATOR, ACCOUNTS]),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let feed = FeedStore::new(ctx.store.clone());
    feed.move_first_table().await?;
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(10),
        ..ConsumerConfig::new(
            "feed",
            &[types::CARD_AUTHORISATION_ALL, types::TRANSACTION_ENRICHED],
        )
    };
    let consumer = feed.clone();
    ctx.consume_by_account(config, move |envelope| {
        let feed = consumer.clone();
        async move { feed.apply_event(&envelope).await }
    });
    // The rest of a payment's life on a durable of its own (an existing durable keeps the
    // subjects it was made with).
    let payments = feed.clone();
    let payment_config = ConsumerConfig {
        ack_wait: Duration::from_secs(10),
        ..ConsumerConfig::new("feed-payments", &[types::CARD_PAYMENT_ALL])
    };
    ctx.consume_by_account(payment_config, move |envelope| {
        let feed = payments.clone();
        async move { feed.apply_event(&envelope).await }
    });
    Ok(Api::grpc(FeedServer::new(FeedHandlers { feed })))
}
