//! gateway: the bank's front door for customers' HTTP/JSON. Sign-up, sign-in, refresh and
//! sign-out are answered with auth; every other request must carry an access token and is
//! forwarded to the API service that registered its path prefix in discovery ([`routes`]),
//! with the customer the token belongs to ([`sessions`]) and the gateway's own identity, so
//! an API service believes the customer only from the gateway. Rate limits per client
//! address, per token and per sign-in email ([`limits`]), a body limit and a timeout on the
//! way in; the template's stack (request id, trace, metrics, shedding, panic guard,
//! problem+json) around it all. It also serves the web page at `/` ([`web`]).

pub mod cors;
pub mod handlers;
pub mod limits;
pub mod routes;
pub mod sessions;
pub mod web;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use sterling_proto::auth::v1::auth_client::AuthClient;
use sterling_template::{Api, ServiceContext, ServiceDefinition, Setting};

use crate::cors::AllowedOrigins;
use crate::handlers::GatewayState;
use crate::limits::{LimitSettings, Limits};
use crate::routes::RouteTable;
use crate::sessions::Sessions;

/// The gateway service.
pub const SERVICE: ServiceDefinition = ServiceDefinition {
    name: sterling_template::identity::GATEWAY,
    migrations: &[],
    settings: &[
        Setting {
            name: "max_body_bytes",
            default: "65536",
            help: "largest request body accepted",
        },
        Setting {
            name: "timeout_ms",
            default: "5000",
            help: "how long an API service has to answer",
        },
        Setting {
            name: "token_cache_ms",
            default: "2000",
            help: "how long an access token's customer is remembered",
        },
        Setting {
            name: "per_address_per_s",
            default: "50",
            help: "requests per second from one client address",
        },
        Setting {
            name: "per_token_per_s",
            default: "20",
            help: "requests per second with one access token",
        },
        Setting {
            name: "sign_ins_per_minute",
            default: "10",
            help: "sign-in attempts per minute for one email",
        },
        Setting {
            name: "web_origins",
            default: "",
            help: "origins (comma-separated) of web pages served elsewhere that may call the API",
        },
    ],
    depends_on: &[sterling_proto::auth::v1::AUTH_SERVICE],
    // An HTTP API for the public: callers authenticate with access tokens.
    access: &[],
    build: |ctx| Box::pin(build(ctx)),
};

async fn build(ctx: ServiceContext) -> anyhow::Result<Api> {
    let count = "a whole number above 0";
    let limits = LimitSettings {
        per_address: ctx.setting_as::<NonZeroU32>("per_address_per_s", count)?,
        per_token: ctx.setting_as::<NonZeroU32>("per_token_per_s", count)?,
        sign_ins_per_minute: ctx.setting_as::<NonZeroU32>("sign_ins_per_minute", count)?,
    };
    let millis = "a whole number of milliseconds";
    let max_body: usize = ctx.setting_as("max_body_bytes", "a number of bytes")?;
    let auth = AuthClient::new(ctx.channel(sterling_proto::auth::v1::AUTH_SERVICE).await?);
    let state = Arc::new(GatewayState {
        sessions: Sessions::new(
            auth,
            Duration::from_millis(ctx.setting_as("token_cache_ms", millis)?),
        ),
        routes: RouteTable::follow(ctx.platform.discovery.clone()).await?,
        limits: Limits::new(limits),
        http: reqwest::Client::builder().build()?,
        identity: ctx.platform.identity.clone(),
        max_body,
        timeout: Duration::from_millis(ctx.setting_as("timeout_ms", millis)?),
        next: AtomicUsize::new(0),
    });
    let (shrinking, stopping) = (state.clone(), ctx.stopping());
    ctx.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = tick.tick() => shrinking.limits.shrink(),
            }
        }
    });
    let origins = Arc::new(AllowedOrigins::parse(&ctx.setting("web_origins")));
    Ok(Api::Http(router(state, max_body).layer(
        axum::middleware::from_fn_with_state(origins, cors::cors),
    )))
}

/// The gateway's routes.
pub fn router(state: Arc<GatewayState>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/sign-up", post(handlers::sign_up))
        .route("/v1/sign-in", post(handlers::sign_in))
        .route("/v1/refresh", post(handlers::refresh))
        .route("/v1/sign-out", post(handlers::sign_out))
        .route("/v1/openapi.json", get(handlers::openapi))
        .route("/", get(web::page))
        .route("/app.js", get(web::script))
        .route("/app.css", get(web::style))
        .route("/favicon.ico", get(web::icon))
        .fallback(handlers::forward)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
