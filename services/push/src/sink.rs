//! The local push sink: an HTTP/2 server in the shape of the APNs gateway that records every
//! notification it accepts, for development and tests. `GET /deliveries[?from=N]` lists them;
//! `POST /control` with `{"fail_status": 500, "delay_ms": 0}` makes it fail or slow down
//! (`fail_status` 0 to stop failing).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sterling_template::{Api, ServiceDefinition};

/// One notification the sink accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkDelivery {
    /// The `apns-id` header.
    pub apns_id: String,
    /// The device token in the path.
    pub device_token: String,
    /// The JSON payload.
    pub payload: serde_json::Value,
    /// When it arrived, microseconds since the epoch.
    pub received_at_us: i64,
}

/// `GET /deliveries?from=N`: deliveries from the N-th on.
#[derive(Debug, Default, Deserialize)]
pub struct From {
    /// Index of the first delivery wanted.
    #[serde(default)]
    pub from: usize,
}

/// How the sink behaves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SinkControl {
    /// Answer every notification with this status (0: accept).
    #[serde(default)]
    pub fail_status: u16,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
}

#[derive(Default)]
struct SinkState {
    deliveries: Mutex<Vec<SinkDelivery>>,
    control: Mutex<SinkControl>,
}

/// The sink as a service of the bank (`push-sink`, HTTP).
pub const SINK: ServiceDefinition = ServiceDefinition {
    name: "push-sink",
    migrations: &[],
    settings: &[],
    depends_on: &[],
    // An HTTP stand-in for the push gateway, in development only.
    access: &[],
    build: |_ctx| Box::pin(async { Ok(Api::Http(router())) }),
};

/// The sink's routes.
pub fn router() -> Router {
    let state = Arc::new(SinkState::default());
    Router::new()
        .route("/3/device/{token}", post(accept))
        .route("/deliveries", get(deliveries))
        .route("/control", post(control))
        .with_state(state)
}

async fn accept(
    State(state): State<Arc<SinkState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    Json(payload): Json<serde_json::Value>,
) -> (StatusCode, HeaderMap) {
    let control = state
        .control
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if control.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(control.delay_ms)).await;
    }
    let apns_id = headers
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut reply = HeaderMap::new();
    if let Ok(v) = apns_id.parse() {
        reply.insert("apns-id", v);
    }
    if control.fail_status != 0 {
        let status =
            StatusCode::from_u16(control.fail_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, reply);
    }
    state
        .deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(SinkDelivery {
            apns_id,
            device_token: token,
            payload,
            received_at_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or_default(),
        });
    (StatusCode::OK, reply)
}

async fn deliveries(
    State(state): State<Arc<SinkState>>,
    axum::extract::Query(from): axum::extract::Query<From>,
) -> Json<Vec<SinkDelivery>> {
    let all = state.deliveries.lock().unwrap_or_else(|p| p.into_inner());
    Json(all.iter().skip(from.from).cloned().collect())
}

async fn control(
    State(state): State<Arc<SinkState>>,
    Json(control): Json<SinkControl>,
) -> StatusCode {
    *state.control.lock().unwrap_or_else(|p| p.into_inner()) = control;
    StatusCode::NO_CONTENT
}
