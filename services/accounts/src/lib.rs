//! accounts: the public API of customers' accounts, behind the gateway (`/v1/accounts`).
//! Opens ledger accounts for the authenticated customer and remembers who owns each; reads an
//! account's balance from the ledger; a customer asking for another's account gets
//! `not_found.account`, never its data. Development top-ups move money from the bank's
//! funding account through the ledger. An account's transactions and cards ([`activity`]),
//! its feed, live as Server-Sent Events ([`feed`]), its phones and webhooks
//! ([`notifications`]) are reached through it.

pub mod activity;
pub mod feed;
pub mod handlers;
pub mod notifications;
pub mod store;
pub mod terminal;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};
use sterling_proto::balance::v1::balance_client::BalanceClient;
use sterling_proto::cards::v1::cards_client::CardsClient;
use sterling_proto::feed::v1::feed_client::FeedClient;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::push::v1::push_client::PushClient;
use sterling_proto::transactions::v1::transactions_client::TransactionsClient;
use sterling_proto::webhooks::v1::webhooks_client::WebhooksClient;
use sterling_storage::Migration;
use sterling_template::platform::PublicApi;
use sterling_template::{Api, ServiceContext, ServiceDefinition, Setting};

use crate::handlers::AccountsState;
use crate::store::AccountStore;

/// The versioned migrations of the `sterling_accounts` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(1 => "0001_accounts.cql");

/// The accounts service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: "accounts",
    migrations: MIGRATIONS,
    settings: &[
        Setting {
            name: "development_top_ups",
            default: "false",
            help: "development only: customers may top up from the bank's funding account",
        },
        Setting {
            name: "development_terminal",
            default: "false",
            help: "development only: customers may pay with their card at a terminal",
        },
        Setting {
            name: "processor_secret",
            default: sterling_signature::DEVELOPMENT_SECRET,
            help: "the key the development terminal signs authorisations with (card-api's secret)",
        },
    ],
    depends_on: &[
        sterling_proto::ledger::v1::LEDGER_SERVICE,
        sterling_proto::balance::v1::BALANCE_SERVICE,
        sterling_proto::transactions::v1::TRANSACTIONS_SERVICE,
        sterling_proto::cards::v1::CARDS_SERVICE,
        sterling_proto::feed::v1::FEED_SERVICE,
        sterling_proto::push::v1::PUSH_SERVICE,
        sterling_proto::webhooks::v1::WEBHOOKS_SERVICE,
    ],
    // Part of the public API: the gateway alone calls it, for a customer.
    access: &[],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let state = Arc::new(AccountsState {
        accounts: AccountStore::new(ctx.store.clone()),
        ledger: LedgerClient::new(
            ctx.channel(sterling_proto::ledger::v1::LEDGER_SERVICE)
                .await?,
        ),
        balances: BalanceClient::new(
            ctx.channel(sterling_proto::balance::v1::BALANCE_SERVICE)
                .await?,
        ),
        transactions: TransactionsClient::new(
            ctx.channel(sterling_proto::transactions::v1::TRANSACTIONS_SERVICE)
                .await?,
        ),
        cards: CardsClient::new(
            ctx.channel(sterling_proto::cards::v1::CARDS_SERVICE)
                .await?,
        ),
        feed: FeedClient::new(ctx.channel(sterling_proto::feed::v1::FEED_SERVICE).await?),
        push: PushClient::new(ctx.channel(sterling_proto::push::v1::PUSH_SERVICE).await?),
        webhooks: WebhooksClient::new(
            ctx.channel(sterling_proto::webhooks::v1::WEBHOOKS_SERVICE)
                .await?,
        ),
        top_ups: ctx.setting_as("development_top_ups", "true or false")?,
        terminal: ctx
            .setting_as::<bool>("development_terminal", "true or false")?
            .then(|| ctx.setting("processor_secret").into_bytes()),
        discovery: ctx.platform.discovery.clone(),
        http: reqwest::Client::new(),
    });
    Ok(Api::Public(PublicApi {
        router: router(state),
        prefixes: vec!["/v1/accounts".into()],
    }))
}

/// Every route of the service, all under `/v1/accounts`.
fn router(state: Arc<AccountsState>) -> Router {
    Router::new()
        .route("/v1/accounts", post(handlers::open).get(handlers::list))
        .route("/v1/accounts/{account_id}", get(handlers::get))
        .route("/v1/accounts/{account_id}/top-ups", post(handlers::top_up))
        .route(
            "/v1/accounts/{account_id}/transactions",
            get(activity::transactions),
        )
        .route(
            "/v1/accounts/{account_id}/cards",
            post(activity::issue_card),
        )
        .route(
            "/v1/accounts/{account_id}/cards/{card_token}/freeze",
            post(activity::freeze_card),
        )
        .route(
            "/v1/accounts/{account_id}/cards/{card_token}/unfreeze",
            post(activity::unfreeze_card),
        )
        .route(
            "/v1/accounts/{account_id}/cards/{card_token}/terminal",
            post(terminal::pay),
        )
        .route("/v1/accounts/{account_id}/feed", get(feed::list))
        .route("/v1/accounts/{account_id}/feed/stream", get(feed::stream))
        .route(
            "/v1/accounts/{account_id}/devices",
            post(notifications::register_device).get(notifications::list_devices),
        )
        .route(
            "/v1/accounts/{account_id}/devices/{device_token}",
            delete(notifications::unregister_device),
        )
        .route(
            "/v1/accounts/{account_id}/webhooks",
            post(notifications::register_webhook).get(notifications::list_webhooks),
        )
        .route(
            "/v1/accounts/{account_id}/webhooks/{webhook_id}",
            delete(notifications::delete_webhook),
        )
        .route(
            "/v1/accounts/{account_id}/webhooks/{webhook_id}/deliveries",
            get(notifications::deliveries),
        )
        .with_state(state)
}
