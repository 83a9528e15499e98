//! A customer's webhook receiver for tests, and the signature check a customer would run.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

/// A customer's webhook receiver: records what arrives; can fail or hang on purpose.
#[derive(Default)]
pub struct Receiver {
    pub received: Mutex<Vec<(HeaderMap, Bytes)>>,
    pub first_accepted: Mutex<Option<Instant>>,
    pub fail_first: AtomicU32,
    pub hang_ms: AtomicU32,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let hang = r.hang_ms.load(Ordering::SeqCst);
    if hang > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(hang))).await;
    }
    if r.fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.received.lock().unwrap().push((headers, body));
    r.first_accepted
        .lock()
        .unwrap()
        .get_or_insert_with(Instant::now);
    StatusCode::OK
}

/// A receiver on an ephemeral port, and its URL.
pub async fn receiver() -> (Arc<Receiver>, String) {
    let state = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, url)
}

impl Receiver {
    /// Distinct event ids received, and how many POSTs in all.
    pub fn events(&self) -> (BTreeSet<String>, usize) {
        let received = self.received.lock().unwrap();
        let ids = received
            .iter()
            .map(|(h, _)| h["sterling-event-id"].to_str().unwrap().to_string())
            .collect();
        (ids, received.len())
    }
}

impl Receiver {
    /// The transactions the deliveries received are about (`data.transaction_id`).
    pub fn transactions(&self) -> BTreeSet<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, body)| {
                let body: serde_json::Value = serde_json::from_slice(body).ok()?;
                Some(body["data"]["transaction_id"].as_str()?.to_string())
            })
            .collect()
    }

    /// Whether every delivery's MAC verifies with one of `secrets` (at the time it was
    /// signed: the staleness check is the receiver's at arrival).
    pub fn all_verify(&self, secrets: &[String]) -> bool {
        self.received.lock().unwrap().iter().all(|(headers, body)| {
            let header = headers["sterling-signature"].to_str().unwrap_or_default();
            let signed_at = header
                .split(',')
                .find_map(|p| p.strip_prefix("t="))
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            secrets.iter().any(|secret| {
                card_api::signature::verify(secret.as_bytes(), header, body, signed_at).is_ok()
            })
        })
    }
}

/// Checks a delivery's signature the way a customer would, in Python with its standard library.
pub fn python_verifies(secret: &str, header: &str, body: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::write(&path, body).unwrap();
    let script = "import hmac, hashlib, sys\n\
secret, header, path = sys.argv[1], sys.argv[2], sys.argv[3]\n\
parts = dict(p.split('=', 1) for p in header.split(','))\n\
body = open(path, 'rb').read()\n\
mac = hmac.new(secret.encode(), parts['t'].encode() + b'.' + body, hashlib.sha256).hexdigest()\n\
sys.exit(0 if hmac.compare_digest(mac, parts['v1']) else 1)\n";
    std::process::Command::new("python3")
        .args(["-c", script, secret, header, path.to_str().unwrap()])
        .status()
        .expect("python3 runs")
        .success()
}
