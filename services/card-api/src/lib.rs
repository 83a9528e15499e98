//! card-api: the processor-facing HTTP endpoint. Verifies the webhook signature, validates the
//! request, asks card-processing for a decision within the budget and answers approve or
//! decline. Bad input gets `application/problem+json` with a stable code and stores nothing.

pub mod handlers;
pub mod webhook;

pub use sterling_template::signature;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use sterling_proto::cardprocessing::v1::card_processing_client::CardProcessingClient;
use sterling_template::{Api, ServiceContext, ServiceDefinition};

use crate::handlers::CardApiState;

/// The development secret used when `STERLING_CARD_API_SECRET` is not set.
pub const DEVELOPMENT_SECRET: &str = "sterling-development-secret";

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The card-api service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: "card-api",
    migrations: &[],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let secret = ctx.setting("secret", DEVELOPMENT_SECRET);
    if secret == DEVELOPMENT_SECRET {
        tracing::warn!("STERLING_CARD_API_SECRET is not set: using the development secret");
    }
    let budget_ms: u64 = ctx.setting("budget_ms", "100").parse()?;
    let state = Arc::new(CardApiState {
        secret: secret.into_bytes(),
        budget: Duration::from_millis(budget_ms),
        card_processing: CardProcessingClient::new(ctx.channel("card-processing").await?),
    });
    let router = Router::new()
        .route("/v1/authorisations", post(handlers::authorise))
        .route("/healthz", get(handlers::healthz))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    Ok(Api::Http(router))
}
