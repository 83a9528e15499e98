//! push: buzzes the customer's phones. Keeps each account's devices, consumes card decisions
//! and sends one notification per decision per device through an APNs-shaped HTTP/2 gateway
//! (`STERLING_PUSH_GATEWAY_URL`, or the local [`sink`] found through discovery), retried with
//! jittered exponential backoff, at most once per event and device, dead-lettered after the
//! bound.

pub mod gateway;
pub mod handlers;
pub mod notify;
pub mod sink;

use std::time::Duration;

use sterling_bus::ConsumerConfig;
use sterling_proto::event_types as types;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::push::v1::push_server::PushServer;
use sterling_storage::Migration;
use sterling_template::{Api, OPERATOR, Rule, ServiceContext, ServiceDefinition, Setting};

use crate::gateway::Gateway;
use crate::handlers::PushHandlers;
use crate::notify::Notifier;

/// The public API service that calls for an account's owner.
const ACCOUNTS: &str = "accounts";

/// The versioned migrations of the `sterling_push` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(
    1 => "0001_push.cql",
    2 => "0002_outcomes.cql",
);

/// The push service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::push::v1::PUSH_SERVICE,
    migrations: MIGRATIONS,
    settings: &[Setting {
        name: "gateway_url",
        default: "",
        help: "APNs-shaped HTTP/2 push gateway; the push-sink in discovery when empty",
    }],
    depends_on: &[sterling_proto::ledger::v1::LEDGER_SERVICE],
    access: &[
        // Devices registered and read by the operator, and by accounts for the account's owner.
        Rule::new("RegisterDevice", &[OPERATOR, ACCOUNTS]),
        Rule::new("ListDevices", &[OPERATOR, ACCOUNTS]),
        Rule::new("UnregisterDevice", &[OPERATOR, ACCOUNTS]),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

/// Retry schedule of a notification: about 4 minutes in all, then the dead-letter subject.
/// Eight deliveries, as the template's default: in a soak, Cassandra down for about a minute
/// with NATS restarted twice around it used up six deliveries of one approval in under two
/// minutes, shorter than six steps of the schedule.
pub fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        ack_wait: Duration::from_secs(15),
        max_deliver: 8,
        backoff: [200, 1_000, 5_000, 15_000, 30_000, 60_000, 120_000]
            .into_iter()
            .map(Duration::from_millis)
            .collect(),
        ..ConsumerConfig::new("push", &[types::CARD_AUTHORISATION_ALL])
    }
}

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let url = ctx.setting("gateway_url");
    if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
        let expected = "an http:// or https:// URL, or nothing for the push-sink";
        return Err(ctx.invalid_setting("gateway_url", expected).into());
    }
    let gateway = Gateway::new(&url, ctx.platform.discovery.clone())?;
    let notifier = Notifier::new(ctx.store.clone(), gateway);
    let consumer = notifier.clone();
    ctx.consume_by_account(consumer_config(), move |envelope| {
        let notifier = consumer.clone();
        async move { notifier.handle(envelope).await }
    });
    let payments = notifier.clone();
    let payment_config = ConsumerConfig {
        durable: "push-payments".into(),
        subjects: vec![types::CARD_PAYMENT_ALL.into()],
        ..consumer_config()
    };
    ctx.consume_by_account(payment_config, move |envelope| {
        let notifier = payments.clone();
        async move { notifier.handle(envelope).await }
    });
    let ledger = LedgerClient::new(
        ctx.channel(sterling_proto::ledger::v1::LEDGER_SERVICE)
            .await?,
    );
    Ok(Api::grpc(PushServer::new(PushHandlers {
        notifier,
        ledger,
    })))
}
