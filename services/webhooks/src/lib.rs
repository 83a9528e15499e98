//! webhooks: the customer's own integrations. Registers, lists and deletes URLs per account;
//! consumes card decisions and POSTs each as JSON to every URL of the account, signed with
//! `Sterling-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` under the
//! webhook's secret, with a timeout, retries over hours, a circuit breaker per URL and a
//! delivery log.

pub mod address;
pub mod attempts;
pub mod dispatch;
pub mod due;
pub mod handlers;
pub mod store;

use std::time::Duration;

use sterling_bus::ConsumerConfig;
use sterling_proto::event_types as types;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::webhooks::v1::webhooks_server::WebhooksServer;
use sterling_storage::Migration;
use sterling_template::{Api, OPERATOR, Rule, ServiceContext, ServiceDefinition, Setting};

use crate::address::UrlPolicy;
use crate::dispatch::{DEFAULT_SCHEDULE, Dispatcher};
use crate::handlers::WebhooksHandlers;
use crate::store::Registry;

/// The public API service that calls for an account's owner.
const ACCOUNTS: &str = "accounts";

/// The versioned migrations of the `sterling_webhooks` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(
    1 => "0001_webhooks.cql",
    2 => "0002_due_deliveries.cql",
    3 => "0003_deliveries_by_month.cql",
    4 => "0004_delivery_attempts.cql",
);

/// The webhooks service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_proto::webhooks::v1::WEBHOOKS_SERVICE,
    migrations: MIGRATIONS,
    settings: &[
        Setting {
            name: "timeout_ms",
            default: "5000",
            help: "timeout of one delivery attempt",
        },
        Setting {
            name: "allow_local_receivers",
            default: "false",
            help: "development only: allow http and loopback or private receivers",
        },
        Setting {
            name: "retry_schedule_ms",
            default: "",
            help: "retry delays, comma separated; about 16 h when empty",
        },
    ],
    depends_on: &[sterling_proto::ledger::v1::LEDGER_SERVICE],
    access: &[
        // Registered and read by the operator, and by accounts for the account's owner.
        Rule::new("RegisterWebhook", &[OPERATOR, ACCOUNTS]),
        Rule::new("ListWebhooks", &[OPERATOR, ACCOUNTS]),
        Rule::new("DeleteWebhook", &[OPERATOR, ACCOUNTS]),
        Rule::new("ListDeliveries", &[OPERATOR, ACCOUNTS]),
    ],
    build: |ctx| Box::pin(build(ctx)),
};

/// The retry schedule from `STERLING_WEBHOOKS_RETRY_SCHEDULE_MS` (comma separated
/// milliseconds), or [`DEFAULT_SCHEDULE`].
fn schedule(setting: &str) -> anyhow::Result<Vec<Duration>> {
    if setting.is_empty() {
        return Ok(DEFAULT_SCHEDULE
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect());
    }
    setting
        .split(',')
        .map(|ms| Ok(Duration::from_millis(ms.trim().parse()?)))
        .collect()
}

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let policy = UrlPolicy {
        allow_local: ctx.setting_as("allow_local_receivers", "true or false")?,
    };
    if policy.allow_local {
        tracing::warn!(
            "STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS: http and local receivers allowed (development only)"
        );
    }
    let registry = Registry::new(ctx.store.clone(), policy);
    let timeout_ms: u64 = ctx.setting_as("timeout_ms", "a whole number of milliseconds")?;
    let dispatcher = Dispatcher::new(
        ctx.store.clone(),
        registry.clone(),
        schedule(&ctx.setting("retry_schedule_ms")).map_err(|_| {
            ctx.invalid_setting(
                "retry_schedule_ms",
                "whole numbers of milliseconds, comma separated",
            )
        })?,
        Duration::from_millis(timeout_ms),
        policy,
    )?
    .with_owners(ctx.owners());
    dispatcher.move_first_table().await?;
    ctx.spawn(dispatcher.clone().run(ctx.stopping()));
    let queue = dispatcher.clone();
    ctx.consume_by_account(
        ConsumerConfig::new("webhooks", &[types::CARD_AUTHORISATION_ALL]),
        move |envelope| {
            let dispatcher = queue.clone();
            async move { dispatcher.enqueue(envelope).await }
        },
    );
    // The rest of a payment's life, on a durable of its own.
    let payments = dispatcher.clone();
    ctx.consume_by_account(
        ConsumerConfig::new("webhooks-payments", &[types::CARD_PAYMENT_ALL]),
        move |envelope| {
            let dispatcher = payments.clone();
            async move { dispatcher.enqueue(envelope).await }
        },
    );
    let ledger = LedgerClient::new(
        ctx.channel(sterling_proto::ledger::v1::LEDGER_SERVICE)
            .await?,
    );
    Ok(Api::grpc(WebhooksServer::new(WebhooksHandlers {
        registry,
        dispatcher,
        ledger,
    })))
}
