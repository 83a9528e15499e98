//! The acceptance customers' own webhook receiver: keeps what arrives, verified with the
//! webhook's secret as a customer's server would (a delivery that fails verification is kept
//! as such, and answered 400 so the bank retries it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// Most deliveries kept; older ones are dropped (the continuous mode runs for days). A run of
/// every journey brings about a dozen, and a journey looks only for its own, within seconds:
/// ten runs' worth is plenty, and keeps the runner's memory flat from its first minutes.
const KEPT: usize = 200;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `Sterling-Event-Id` header.
    pub event_id: String,
    /// The JSON body.
    pub body: Value,
    /// Whether its signature verified against the secret.
    pub verified: bool,
}

/// Receives webhooks for the acceptance accounts.
#[derive(Default)]
pub struct Receiver {
    /// The secret of the webhook registered for it, once known.
    secret: Mutex<Option<String>>,
    received: Mutex<Vec<Delivery>>,
}

impl Receiver {
    /// Starts a receiver on `listen`; returns it and the address it took.
    pub async fn start(listen: SocketAddr) -> anyhow::Result<(Arc<Receiver>, SocketAddr)> {
        let receiver = Arc::new(Receiver::default());
        let app = axum::Router::new()
            .route("/webhooks", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((receiver, address))
    }

    /// Verifies deliveries with `secret` from now on.
    pub fn verify_with(&self, secret: &str) {
        *self.secret.lock().unwrap_or_else(|p| p.into_inner()) = Some(secret.to_string());
    }

    /// The deliveries whose `data` has `field` equal to `value`.
    pub fn about(&self, field: &str, value: &str) -> Vec<Delivery> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|d| d.body["data"][field] == value)
            .cloned()
            .collect()
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let secret = receiver
        .secret
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let verified = secret.is_some_and(|secret| {
        sterling_signature::verify(
            secret.as_bytes(),
            &header(sterling_signature::SIGNATURE_HEADER),
            &body,
            now,
        )
        .is_ok()
    });
    let delivery = Delivery {
        event_id: header("sterling-event-id"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
    };
    let mut received = receiver.received.lock().unwrap_or_else(|p| p.into_inner());
    received.push(delivery);
    if received.len() > KEPT {
        let excess = received.len() - KEPT;
        received.drain(..excess);
    }
    if verified {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}
