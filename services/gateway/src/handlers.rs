//! HTTP handlers of the gateway: sign-up, sign-in, refresh and sign-out (answered with auth),
//! and every other request forwarded to the API service whose prefix it falls under, with the
//! customer its access token belongs to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sterling_proto::auth::v1::{
    RefreshRequest, Session, SignInRequest, SignOutRequest, SignUpRequest,
};
use sterling_template::Error;
use sterling_template::client::{IDEMPOTENCY_KEY_HEADER, reconnect_pause};
use sterling_template::context::{REQUEST_ID_HEADER, RequestContext, TRACEPARENT_HEADER};
use sterling_template::identity::{CUSTOMER_HEADER, GATEWAY, IDENTITY_HEADER, Identity};
use sterling_template::server::Problem;

use crate::limits::{Limited, Limits};
use crate::routes::RouteTable;
use crate::sessions::{Sessions, bearer};

/// What the handlers share.
pub struct GatewayState {
    /// Access tokens, checked with auth.
    pub sessions: Sessions,
    /// Where each prefix is served.
    pub routes: RouteTable,
    /// Rate limits.
    pub limits: Limits,
    /// Client of the API services.
    pub http: reqwest::Client,
    /// The gateway's identity, proven to the API services.
    pub identity: Identity,
    /// Largest request body forwarded.
    pub max_body: usize,
    /// How long an API service has to answer.
    pub timeout: Duration,
    /// Spreads requests over the instances of a prefix.
    pub next: AtomicUsize,
}

type Shared = State<Arc<GatewayState>>;

/// A refusal as the client sees it: problem+json, with `Retry-After` when rate limited.
pub struct Refusal(Response);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.0
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        let unauthorized = e.http_status() == StatusCode::UNAUTHORIZED;
        let mut response = Problem(e).into_response();
        if unauthorized {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        Refusal(response)
    }
}

impl From<Limited> for Refusal {
    fn from(l: Limited) -> Self {
        let mut response = Problem(l.error).into_response();
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(l.retry_after_s),
        );
        Refusal(response)
    }
}

impl From<tonic::Status> for Refusal {
    fn from(s: tonic::Status) -> Self {
        Error::from(s).into()
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::bad_request("json", format!("bad JSON: {e}")))
}

fn session_json(s: Session) -> Json<Value> {
    Json(json!({
        "customer_id": s.customer_id,
        "token_type": "Bearer",
        "access_token": s.access_token,
        "access_expires_at_ms": s.access_expires_at_ms,
        "refresh_token": s.refresh_token,
        "refresh_expires_at_ms": s.refresh_expires_at_ms,
    }))
}

/// The public API's OpenAPI 3.1 document, checked against the running API by schemathesis
/// (`make test-api`) and by the gateway's tests.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /v1/openapi.json`: the document, to anyone.
pub async fn openapi() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Email and password.
#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

/// `POST /v1/sign-up` with an `Idempotency-Key`: 201 and the new customer.
pub async fn sign_up(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Refusal> {
    state.limits.address(peer.ip())?;
    let key = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let c: Credentials = parse(&body)?;
    let customer = state
        .sessions
        .auth()
        .sign_up(SignUpRequest {
            idempotency_key: key.to_string(),
            email: c.email,
            password: c.password,
        })
        .await?
        .into_inner();
    let body = json!({"customer_id": customer.customer_id, "email": customer.email});
    Ok((StatusCode::CREATED, Json(body)))
}

/// `POST /v1/sign-in`: a session's tokens.
pub async fn sign_in(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    state.limits.address(peer.ip())?;
    let c: Credentials = parse(&body)?;
    state.limits.sign_in(&c.email)?;
    let session = state
        .sessions
        .auth()
        .sign_in(SignInRequest {
            email: c.email,
            password: c.password,
        })
        .await?
        .into_inner();
    Ok(session_json(session))
}

/// A refresh token.
#[derive(Deserialize)]
struct Refresh {
    refresh_token: String,
}

/// `POST /v1/refresh`: new tokens for a refresh token, which is spent.
pub async fn refresh(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    state.limits.address(peer.ip())?;
    let r: Refresh = parse(&body)?;
    let session = state
        .sessions
        .auth()
        .refresh(RefreshRequest {
            refresh_token: r.refresh_token,
        })
        .await?
        .into_inner();
    Ok(session_json(session))
}

/// `POST /v1/sign-out` with the access token: the session ends; 204.
pub async fn sign_out(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<StatusCode, Refusal> {
    state.limits.address(peer.ip())?;
    let token = bearer(&headers)?;
    // Like every route: an expired or revoked token is refused, not signed out again.
    state.sessions.customer(token).await?;
    state
        .sessions
        .auth()
        .sign_out(SignOutRequest {
            access_token: token.to_string(),
        })
        .await?;
    state.sessions.forget(token);
    Ok(StatusCode::NO_CONTENT)
}

/// Every other request: authenticated, then forwarded to the API service serving its path.
/// The API service must answer within the timeout; a `text/event-stream` answer is then
/// relayed as it comes, any other is read whole within what is left of it.
pub async fn forward(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, Refusal> {
    let deadline = tokio::time::Instant::now() + state.timeout;
    state.limits.address(peer.ip())?;
    let (parts, body) = request.into_parts();
    let token = bearer(&parts.headers)?;
    state.limits.token(token)?;
    let customer = state.sessions.customer(token).await?;
    let pick = state.next.fetch_add(1, Ordering::Relaxed);
    let address = state
        .routes
        .route(parts.uri.path(), pick)
        .ok_or_else(|| Error::not_found("route", "no such endpoint"))?;
    // Over the limit: a bare 413, which the template's problem layer documents.
    let body = axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|_| Refusal(StatusCode::PAYLOAD_TOO_LARGE.into_response()))?;
    let onward = onward(&state, &parts, &address, customer.as_str())?.body(body);
    let too_late = || Error::timeout("the API service did not answer in time");
    let unreachable = || Error::unavailable("api_service", "the API service cannot be reached");
    let answer = tokio::time::timeout_at(deadline, send_connecting(onward, deadline))
        .await
        .map_err(|_| too_late())?
        .map_err(|e| {
            tracing::warn!(error = %e, address = %address, "the API service could not be reached");
            unreachable()
        })?;
    let mut response = Response::builder().status(answer.status().as_u16());
    for name in [
        http::header::CONTENT_TYPE,
        http::header::RETRY_AFTER,
        http::header::ALLOW,
        http::header::CACHE_CONTROL,
    ] {
        if let Some(value) = answer.headers().get(&name) {
            response = response.header(name, value.as_bytes());
        }
    }
    let streamed = answer
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let body = if streamed {
        Body::from_stream(answer.bytes_stream())
    } else {
        let bytes = tokio::time::timeout_at(deadline, answer.bytes())
            .await
            .map_err(|_| too_late())?
            .map_err(|_| Error::unavailable("api_service", "the API service's answer broke off"))?;
        Body::from(bytes)
    };
    response
        .body(body)
        .map_err(|e| Error::internal(format!("response: {e}")).into())
}

/// Sends `request`. A connection that could not be made (the API service restarting, or its
/// name not resolving for a moment while its container comes back) sent nothing, so it is made
/// again, whatever the method, after the template client's pause
/// ([`sterling_template::client::reconnect_pause`]) while the next try fits before `deadline`.
async fn send_connecting(
    mut request: reqwest::RequestBuilder,
    deadline: tokio::time::Instant,
) -> reqwest::Result<reqwest::Response> {
    let mut failures = 0;
    loop {
        let Some(again) = request.try_clone() else {
            return request.send().await;
        };
        match request.send().await {
            Err(e) if e.is_connect() => {
                failures += 1;
                let pause = reconnect_pause(failures);
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(e);
                }
                tracing::info!(error = %e, "the API service could not be reached; connecting again");
                tokio::time::sleep(pause).await;
                request = again;
            }
            outcome => return outcome,
        }
    }
}

/// The request to the API service at `address`: the caller's method, path, content headers
/// and idempotency key, this request's id and trace, the gateway's identity and the
/// authenticated customer.
fn onward(
    state: &GatewayState,
    parts: &http::request::Parts,
    address: &str,
    customer: &str,
) -> Result<reqwest::RequestBuilder, Error> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut onward = state
        .http
        .request(parts.method.clone(), format!("http://{address}{path}"));
    for name in [
        http::header::CONTENT_TYPE,
        http::header::ACCEPT,
        http::HeaderName::from_static(IDEMPOTENCY_KEY_HEADER),
    ] {
        if let Some(value) = parts.headers.get(&name) {
            onward = onward.header(name, value);
        }
    }
    if let Some(context) = RequestContext::current() {
        onward = onward
            .header(REQUEST_ID_HEADER, context.request_id.as_str())
            .header(TRACEPARENT_HEADER, context.trace.header());
    }
    let identity = state
        .identity
        .token_for(GATEWAY)
        .ok_or_else(|| Error::internal("the gateway has no identity to call with"))?;
    Ok(onward
        .header(IDENTITY_HEADER, identity)
        .header(CUSTOMER_HEADER, customer))
}
