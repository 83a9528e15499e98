//! The two doors the acceptance customers use: the public API through the gateway (as the
//! customer's app), and card-api (as the card processor, every message signed).

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The public API, signed in as one customer.
#[derive(Clone)]
pub struct PublicApi {
    http: reqwest::Client,
    /// The gateway's base URL.
    pub url: String,
    token: String,
}

/// An answer of the public API: its status and JSON body (a problem document on errors).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body, `null` when it is not JSON.
    pub body: Value,
}

impl Answer {
    /// The body, if the status is `expected`; otherwise an error naming both.
    pub fn expect(self, expected: StatusCode, what: &str) -> anyhow::Result<Value> {
        if self.status == expected {
            return Ok(self.body);
        }
        bail!(
            "{what}: expected {expected}, got {}: {}",
            self.status,
            self.body
        )
    }
}

/// How many times a call refused with 429 is tried again, after its `Retry-After`.
const RATE_LIMITED_RETRIES: usize = 3;

/// Sends the request `request` builds; a 429 is sent again after the `Retry-After` it gives
/// (at most 5 s), [`RATE_LIMITED_RETRIES`] times, as a well-behaved app does.
async fn send(
    request: impl Fn() -> reqwest::RequestBuilder,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    for attempt in 0.. {
        let response = request()
            .send()
            .await
            .with_context(|| format!("{what} unreachable"))?;
        if response.status() != StatusCode::TOO_MANY_REQUESTS || attempt >= RATE_LIMITED_RETRIES {
            return Ok(response);
        }
        let seconds = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, 5);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
    unreachable!("the loop returns")
}

/// A call to the public API (see [`send`] for a 429).
async fn call(
    http: &reqwest::Client,
    url: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<Answer> {
    let request = || {
        let mut request = http.request(method.clone(), format!("{url}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        request
    };
    let response = send(request, path).await?;
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok(Answer { status, body })
}

impl PublicApi {
    /// Signs `email` in, signing it up first (with an idempotency key of the email) the first
    /// time.
    pub async fn sign_in(
        http: reqwest::Client,
        url: &str,
        email: &str,
        password: &str,
    ) -> anyhow::Result<PublicApi> {
        let credentials = json!({"email": email, "password": password});
        let attempt = |credentials: Value| {
            call(
                &http,
                url,
                Method::POST,
                "/v1/sign-in",
                None,
                None,
                Some(credentials),
            )
        };
        let mut session = attempt(credentials.clone()).await?;
        if session.status == StatusCode::UNAUTHORIZED {
            let key = format!("sign-up-{email}");
            call(
                &http,
                url,
                Method::POST,
                "/v1/sign-up",
                None,
                Some(&key),
                Some(credentials.clone()),
            )
            .await?
            .expect(StatusCode::CREATED, "sign-up")?;
            session = attempt(credentials).await?;
        }
        let session = session.expect(StatusCode::OK, "sign-in")?;
        let token = session["access_token"]
            .as_str()
            .ok_or_else(|| anyhow!("sign-in gave no access token: {session}"))?
            .to_string();
        Ok(PublicApi {
            http,
            url: url.to_string(),
            token,
        })
    }

    /// A call as the signed-in customer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        call(
            &self.http,
            &self.url,
            method,
            path,
            Some(&self.token),
            key,
            body,
        )
        .await
    }

    /// The account as the balance read model shows it.
    pub async fn account(&self, account_id: &str) -> anyhow::Result<Balances> {
        let read = self
            .call(
                Method::GET,
                &format!("/v1/accounts/{account_id}"),
                None,
                None,
            )
            .await?
            .expect(StatusCode::OK, "the account")?;
        Balances::of(&read)
    }

    /// Follows the account's feed live, until the [`LiveFeed`] is dropped.
    pub async fn follow_feed(&self, account_id: &str) -> anyhow::Result<LiveFeed> {
        let path = format!("/v1/accounts/{account_id}/feed/stream");
        let request = || {
            self.http
                .get(format!("{}{path}", self.url))
                .bearer_auth(&self.token)
        };
        let response = send(request, &path).await?;
        if response.status() != StatusCode::OK {
            bail!("the feed stream answered {}", response.status());
        }
        let (sender, items) = tokio::sync::mpsc::unbounded_channel();
        let mut bytes = response.bytes_stream();
        let reader = tokio::spawn(async move {
            let mut text = String::new();
            while let Some(Ok(chunk)) = bytes.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = text.find("\n\n") {
                    let event: String = text.drain(..end + 2).collect();
                    if !event.contains("event: feed_item") {
                        continue;
                    }
                    let data = event.lines().find_map(|l| l.strip_prefix("data:"));
                    if let Some(item) = data.and_then(|d| serde_json::from_str(d.trim()).ok())
                        && sender.send(item).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(LiveFeed { items, reader })
    }
}

/// An account's feed followed live: the JSON of each `feed_item` event, in order. Dropping
/// it closes the stream.
pub struct LiveFeed {
    items: tokio::sync::mpsc::UnboundedReceiver<Value>,
    reader: tokio::task::JoinHandle<()>,
}

impl LiveFeed {
    /// The first item about `item_id` within `limit`.
    pub async fn item(&mut self, item_id: &str, limit: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let item = tokio::time::timeout_at(deadline, self.items.recv())
                .await
                .map_err(|_| anyhow!("no feed item {item_id} within {limit:?}"))?
                .ok_or_else(|| anyhow!("the feed stream closed"))?;
            if item["item_id"] == item_id {
                return Ok(item);
            }
        }
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// An account's balances in the read model, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balances {
    /// Sum of postings.
    pub balance: i64,
    /// Held by pending card payments.
    pub held: i64,
    /// What the customer may spend.
    pub available: i64,
}

impl Balances {
    fn of(read: &Value) -> anyhow::Result<Balances> {
        let minor = |field: &str| {
            read[field]["minor_units"]
                .as_i64()
                .ok_or_else(|| anyhow!("the account has no {field}: {read}"))
        };
        Ok(Balances {
            balance: minor("balance")?,
            held: minor("held")?,
            available: minor("available")?,
        })
    }
}

/// card-api, played as the card processor.
#[derive(Clone)]
pub struct Processor {
    http: reqwest::Client,
    /// card-api's base URL.
    pub url: String,
    secret: Vec<u8>,
}

/// What the processor heard back.
#[derive(Debug, Clone)]
pub struct Heard {
    /// HTTP status.
    pub status: StatusCode,
    /// The JSON answer.
    pub body: Value,
    /// The round trip.
    pub latency: Duration,
}

impl Heard {
    /// `result` and `reason` of an authorisation's answer.
    pub fn decision(&self) -> (&str, &str) {
        (
            self.body["result"].as_str().unwrap_or_default(),
            self.body["reason"].as_str().unwrap_or_default(),
        )
    }
}

impl Processor {
    /// The processor of card-api at `url`, signing with `secret`.
    pub fn new(http: reqwest::Client, url: &str, secret: &[u8]) -> Processor {
        Processor {
            http,
            url: url.to_string(),
            secret: secret.to_vec(),
        }
    }

    /// Signs `message` and POSTs it to `path` with `request_id`.
    pub async fn send(
        &self,
        path: &str,
        message: &Value,
        request_id: &str,
    ) -> anyhow::Result<Heard> {
        let body = serde_json::to_vec(message)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        let signature = sterling_signature::sign(&self.secret, now, &body);
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .header(sterling_signature::SIGNATURE_HEADER, signature)
            .header("x-request-id", request_id)
            .body(body)
            .send()
            .await
            .with_context(|| format!("card-api {path} unreachable"))?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok(Heard {
            status,
            body,
            latency: started.elapsed(),
        })
    }
}

/// The JSON of an authorisation of `minor` units of `currency` on `card` at the acceptance
/// merchant (its descriptor marks acceptance payments).
pub fn authorisation(id: &str, card: &str, minor: i64, currency: &str) -> Value {
    json!({
        "id": id,
        "card_token": card,
        "amount": minor,
        "currency": currency,
        "merchant": MERCHANT.clone(),
    })
}

/// The acceptance merchant: every acceptance payment is made here.
pub static MERCHANT: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || json!({ "descriptor": "STERLING ACCEPTANCE LONDON GB", "mcc": "5999", "country": "GB", "city": "London" }),
);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_refusal_for_too_many_requests_is_sent_again_after_its_wait() {
        let asked = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/stream",
            axum::routing::get({
                let asked = asked.clone();
                move || async move {
                    match asked.fetch_add(1, Ordering::SeqCst) {
                        0 => (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            "slow down",
                        ),
                        _ => (StatusCode::OK, [("retry-after", "0")], "data"),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/stream", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        let started = Instant::now();
        let response = send(|| http.get(&url), "/stream").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "waited as asked"
        );
    }
}
