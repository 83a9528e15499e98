//! card-api: the processor-facing HTTP endpoint. Verifies the webhook signature, validates the
//! request, asks card-processing for a decision within the budget and answers approve or
//! decline. Bad input gets `application/problem+json` with a stable code and stores nothing.
//! Every answer is recorded before it is given ([`answers`]) and repeats are answered from
//! the record; a decline card-api gives on its own is handed to card-processing through the
//! outbox so that both records end the same way.

pub mod answers;
pub mod handlers;
pub mod messages;
pub mod webhook;

pub use sterling_signature as signature;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use sterling_proto::cardprocessing::v1::card_processing_client::CardProcessingClient;
use sterling_template::client::policy::ClientPolicy;
use sterling_template::{Api, ServiceContext, ServiceDefinition, Setting};

use sterling_storage::Migration;

use crate::answers::{AnswerStore, StandInConfirm};
use crate::handlers::CardApiState;

/// The development secret used when `STERLING_CARD_API_SECRET` is not set.
pub const DEVELOPMENT_SECRET: &str = sterling_signature::DEVELOPMENT_SECRET;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The versioned migrations of the `sterling_card_api` keyspace.
pub const MIGRATIONS: &[Migration] = sterling_storage::migrations!(1 => "0001_answers.cql");

/// The card-api service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: "card-api",
    migrations: MIGRATIONS,
    settings: &[
        Setting {
            name: "secret",
            default: DEVELOPMENT_SECRET,
            help: "HMAC key of processor webhooks",
        },
        Setting {
            name: "budget_ms",
            default: "100",
            help: "time card-processing gets for one decision",
        },
        Setting {
            name: "message_budget_ms",
            default: "5000",
            help: "time card-processing gets for a clearing, reversal, refund or force post",
        },
    ],
    depends_on: &[sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE],
    // An HTTP API: processors authenticate with the webhook signature.
    access: &[],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let secret = ctx.setting("secret");
    if secret == DEVELOPMENT_SECRET {
        tracing::warn!("STERLING_CARD_API_SECRET is not set: using the development secret");
    }
    let budget_ms: u64 = ctx.setting_as("budget_ms", "a whole number of milliseconds")?;
    let message_budget_ms: u64 =
        ctx.setting_as("message_budget_ms", "a whole number of milliseconds")?;
    let outbox = ctx.outbox(Arc::new(StandInConfirm {
        store: ctx.store.clone(),
    }));
    let budget = Duration::from_millis(budget_ms);
    let message_budget = Duration::from_millis(message_budget_ms);
    // Every call to card-processing is bounded by its budget alone: the platform's cap on a
    // call's timeout (STERLING_CALL_TIMEOUT_MS) would cut a budget set longer than it.
    let policy = ClientPolicy {
        timeout_cap: budget.max(message_budget),
        ..ClientPolicy::default()
    };
    let state = Arc::new(CardApiState {
        answers: AnswerStore::new(ctx.store.clone(), outbox),
        secret: secret.into_bytes(),
        budget,
        message_budget,
        card_processing: CardProcessingClient::new(
            ctx.channel_with(
                sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
                policy,
            )
            .await?,
        ),
    });
    let router = Router::new()
        .route("/v1/authorisations", post(handlers::authorise))
        .route("/v1/authorisations/{id}", get(handlers::recorded_answer))
        .route("/v1/clearings", post(messages::clearing))
        .route("/v1/reversals", post(messages::reversal))
        .route("/v1/refunds", post(messages::refund))
        .route("/v1/force_posts", post(messages::force_post))
        .route("/v1/incremental_authorisations", post(messages::increment))
        .route("/v1/payments/{id}", get(messages::payment))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    Ok(Api::Http(router))
}
