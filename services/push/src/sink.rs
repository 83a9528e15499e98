//! The local push sink: an HTTP/2 server in the shape of the APNs gateway that records the
//! notifications it accepts, for development and tests. `GET /deliveries[?from=N]` lists them
//! (each numbered from 0 in the order it arrived; the most recent [`DELIVERIES_KEPT`] are kept,
//! so a bank that runs for days does not fill its memory); `POST /control` with
//! `{"fail_status": 500, "delay_ms": 0}` makes it fail or slow down (`fail_status` 0 to stop
//! failing).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sterling_template::{Api, ServiceDefinition};

/// Notifications the sink keeps: older ones are forgotten (their numbers are not reused).
pub const DELIVERIES_KEPT: usize = 20_000;

/// One notification the sink accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkDelivery {
    /// Its number: the sink's N-th accepted notification, from 0.
    pub index: usize,
    /// The `apns-id` header.
    pub apns_id: String,
    /// The device token in the path.
    pub device_token: String,
    /// The JSON payload, as it was sent (kept unparsed: parsed, a payload took about 1.9 KB).
    pub payload: Box<serde_json::value::RawValue>,
    /// When it arrived, microseconds since the epoch.
    pub received_at_us: i64,
}

/// `GET /deliveries?from=N`: the deliveries kept from the N-th on.
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

struct SinkState {
    deliveries: Mutex<Kept>,
    control: Mutex<SinkControl>,
}

/// The most recent deliveries (at most `limit`) and how many were accepted in all.
struct Kept {
    recent: VecDeque<SinkDelivery>,
    accepted: usize,
    limit: usize,
}

impl Kept {
    fn new(limit: usize) -> Kept {
        Kept {
            recent: VecDeque::new(),
            accepted: 0,
            limit,
        }
    }

    /// Keeps `delivery` as the next number, forgetting the oldest beyond the limit.
    fn record(&mut self, mut delivery: SinkDelivery) {
        delivery.index = self.accepted;
        self.accepted += 1;
        if self.recent.len() == self.limit {
            self.recent.pop_front();
        }
        self.recent.push_back(delivery);
    }

    /// The deliveries kept numbered `from` or later.
    fn from(&self, from: usize) -> Vec<SinkDelivery> {
        let forgotten = self.accepted - self.recent.len();
        let skip = from.saturating_sub(forgotten);
        self.recent.iter().skip(skip).cloned().collect()
    }
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
    let state = Arc::new(SinkState {
        deliveries: Mutex::new(Kept::new(DELIVERIES_KEPT)),
        control: Mutex::new(SinkControl::default()),
    });
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
    body: axum::body::Bytes,
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
    let Some(delivery) = delivery_of(apns_id, token, &body) else {
        return (StatusCode::BAD_REQUEST, reply);
    };
    state
        .deliveries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(delivery);
    (StatusCode::OK, reply)
}

/// The delivery a notification with `body` makes (numbered when recorded), if the body is JSON.
fn delivery_of(apns_id: String, device_token: String, body: &[u8]) -> Option<SinkDelivery> {
    let payload = serde_json::from_slice(body).ok()?;
    Some(SinkDelivery {
        index: 0,
        apns_id,
        device_token,
        payload,
        received_at_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default(),
    })
}

async fn deliveries(
    State(state): State<Arc<SinkState>>,
    axum::extract::Query(from): axum::extract::Query<From>,
) -> Json<Vec<SinkDelivery>> {
    let kept = state.deliveries.lock().unwrap_or_else(|p| p.into_inner());
    Json(kept.from(from.from))
}

async fn control(
    State(state): State<Arc<SinkState>>,
    Json(control): Json<SinkControl>,
) -> StatusCode {
    *state.control.lock().unwrap_or_else(|p| p.into_inner()) = control;
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(token: &str) -> SinkDelivery {
        delivery_of(String::new(), token.to_string(), b"null").unwrap()
    }

    fn tokens(deliveries: &[SinkDelivery]) -> Vec<(usize, &str)> {
        deliveries
            .iter()
            .map(|d| (d.index, d.device_token.as_str()))
            .collect()
    }

    #[test]
    fn the_sink_keeps_the_most_recent_and_numbers_never_repeat() {
        let mut kept = Kept::new(3);
        for token in ["a", "b"] {
            kept.record(delivery(token));
        }
        assert_eq!(tokens(&kept.from(0)), [(0, "a"), (1, "b")]);
        for token in ["c", "d", "e"] {
            kept.record(delivery(token));
        }
        // Five accepted, three kept: the first two are forgotten, the numbers go on.
        assert_eq!(tokens(&kept.from(0)), [(2, "c"), (3, "d"), (4, "e")]);
        assert_eq!(tokens(&kept.from(3)), [(3, "d"), (4, "e")]);
        assert_eq!(tokens(&kept.from(5)), []);
        assert_eq!(tokens(&kept.from(usize::MAX)), []);
    }

    #[test]
    fn a_payload_is_listed_as_it_was_sent_and_one_not_json_is_refused() {
        let sent =
            br#"{"aps":{"alert":{"title":"PRET A MANGER","body":"\u00a33.50"}},"n":[1,2.5]}"#;
        let mut kept = Kept::new(3);
        kept.record(delivery_of("id-1".into(), "phone".into(), sent).unwrap());
        let listed = serde_json::to_string(&kept.from(0)).unwrap();
        let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
        let expected: serde_json::Value = serde_json::from_slice(sent).unwrap();
        assert_eq!(listed[0]["payload"], expected);
        assert_eq!(listed[0]["apns_id"], "id-1");
        assert_eq!(listed[0]["device_token"], "phone");
        assert!(delivery_of("id-2".into(), "phone".into(), b"{\"aps\":").is_none());
        assert!(delivery_of("id-3".into(), "phone".into(), b"").is_none());
    }
}
