//! The public API through the gateway alone, as a customer's app uses it: sign up, sign in,
//! open an account, top it up, get a card, register a phone and a webhook, follow the feed
//! live, pay with the card at a terminal, see the feed item arrive on the stream, the push at
//! the sink, the signed webhook at the receiver, the transaction and the balance, freeze the
//! card; another customer's token on any of it gets 404; no
//! token, a forged one or a signed-out one gets 401; an API service reached without the
//! gateway believes no customer header; limits answer 429 with `Retry-After` and 413, as
//! problem+json; a new API service is routed as soon as it registers.

mod common;

use axum::Extension;
use axum::routing::{get, post};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sterling_template::identity::Customer;
use sterling_template::platform::{self, Api, PublicApi};

const PASSWORD: &str = "a long enough password";

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    /// A client of `bank`'s gateway.
    fn of(bank: &common::TestBank) -> Client {
        Client {
            http: reqwest::Client::new(),
            url: format!("http://{}", bank.bank.address("gateway").unwrap()),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        if status.is_client_error() || status.is_server_error() {
            assert!(
                headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/problem+json"),
                "{status} {path} is not a problem document"
            );
        }
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    async fn sign_up_and_in(&self, email: &str) -> String {
        let credentials = json!({"email": email, "password": PASSWORD});
        let key = format!("signup-{email}");
        let (status, _, _) = self
            .call(
                Method::POST,
                "/v1/sign-up",
                None,
                Some(&key),
                Some(credentials.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, session, _) = self
            .call(Method::POST, "/v1/sign-in", None, None, Some(credentials))
            .await;
        assert_eq!(status, StatusCode::OK, "{session}");
        session["access_token"].as_str().unwrap().to_string()
    }
}

/// An account's feed followed through the gateway: the JSON of each `feed_item` event.
struct LiveFeed(tokio::sync::mpsc::UnboundedReceiver<Value>);

impl Client {
    /// Follows the Server-Sent Events at `path`.
    async fn follow(&self, path: &str, token: &str) -> LiveFeed {
        use futures::StreamExt;
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let (sender, items) = tokio::sync::mpsc::unbounded_channel();
        let mut bytes = response.bytes_stream();
        tokio::spawn(async move {
            let mut text = String::new();
            while let Some(Ok(chunk)) = bytes.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = text.find("\n\n") {
                    let event: String = text.drain(..end + 2).collect();
                    let data = event.lines().find_map(|l| l.strip_prefix("data:"));
                    if event.contains("event: feed_item")
                        && let Some(data) = data
                    {
                        let _ = sender.send(serde_json::from_str(data.trim()).unwrap());
                    }
                }
            }
        });
        LiveFeed(items)
    }
}

impl Client {
    /// The account at `path` once its `field` reads `minor_units` (within 10 s).
    async fn balance_until(&self, path: &str, token: &str, field: &str, minor_units: i64) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (status, read, _) = self.call(Method::GET, path, Some(token), None, None).await;
            assert_eq!(status, StatusCode::OK, "{read}");
            if read[field]["minor_units"] == minor_units {
                return read;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{field} never reached {minor_units}: {read}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl LiveFeed {
    /// The first event about `item_id`, within 10 s.
    async fn item(&mut self, item_id: &str) -> Value {
        loop {
            let item = tokio::time::timeout(std::time::Duration::from_secs(10), self.0.recv())
                .await
                .expect("a feed item on the live stream within 10 s")
                .expect("the stream stays open");
            if item["item_id"] == item_id {
                return item;
            }
        }
    }
}

/// Whether `check` holds within 10 s, asked every 50 ms.
async fn until<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_uses_the_bank_through_the_gateway_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bank = common::start(
        dir.path(),
        &[
            ("STERLING_ACCOUNTS_DEVELOPMENT_TOP_UPS", "true"),
            ("STERLING_GATEWAY_SIGN_INS_PER_MINUTE", "3"),
            ("STERLING_GATEWAY_MAX_BODY_BYTES", "4096"),
            ("STERLING_GATEWAY_TIMEOUT_MS", "2000"),
        ],
    )
    .await;
    let client = Client::of(&bank);
    let ada = client.sign_up_and_in("ada@example.com").await;
    let bob = client.sign_up_and_in("bob@example.com").await;

    // Open an account; the same request again is the same account.
    let open = || json!({"currency": "GBP"});
    let (status, account, _) = client
        .call(
            Method::POST,
            "/v1/accounts",
            Some(&ada),
            Some("open-1"),
            Some(open()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    let account_id = account["account_id"].as_str().unwrap().to_string();
    let (_, again, _) = client
        .call(
            Method::POST,
            "/v1/accounts",
            Some(&ada),
            Some("open-1"),
            Some(open()),
        )
        .await;
    assert_eq!(again["account_id"], account_id);

    // Top up GBP 100.00 once, even if the request is repeated.
    let top_up = format!("/v1/accounts/{account_id}/top-ups");
    for _ in 0..2 {
        let (status, body, _) = client
            .call(
                Method::POST,
                &top_up,
                Some(&ada),
                Some("t-1"),
                Some(json!({"minor_units": 10000})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // The balance read model follows the ledger within moments: the top-up shows, once.
    let path = format!("/v1/accounts/{account_id}");
    let read = client.balance_until(&path, &ada, "balance", 10000).await;
    assert_eq!(
        read["balance"],
        json!({"minor_units": 10000, "currency": "GBP"})
    );
    assert_eq!(read["version"], 1, "one top-up, one change: {read}");
    let (_, listed, _) = client
        .call(Method::GET, "/v1/accounts", Some(&ada), None, None)
        .await;
    assert_eq!(listed["accounts"][0]["account_id"], account_id);

    // A card on the account, paid with at a terminal (the processor's side, through card-api):
    // the transaction is listed and the hold is off the available balance.
    let cards = format!("/v1/accounts/{account_id}/cards");
    let (status, card, _) = client
        .call(Method::POST, &cards, Some(&ada), Some("card-1"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{card}");
    let card_token = card["card_token"].as_str().unwrap().to_string();

    // A phone for push, a webhook receiver, and the feed followed live, all through the API.
    let phone = format!("journey-phone-{account_id}");
    let (status, device, _) = client
        .call(
            Method::POST,
            &format!("/v1/accounts/{account_id}/devices"),
            Some(&ada),
            None,
            Some(json!({"device_token": phone, "platform": "ios"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    let (receiver, receiver_url) = common::receiver::receiver().await;
    let webhooks = format!("/v1/accounts/{account_id}/webhooks");
    let (status, webhook, _) = client
        .call(
            Method::POST,
            &webhooks,
            Some(&ada),
            Some("hook-1"),
            Some(json!({"url": receiver_url})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{webhook}");
    let secret = webhook["secret"].as_str().unwrap().to_string();
    let webhook_id = webhook["webhook_id"].as_str().unwrap().to_string();
    let mut live = client
        .follow(&format!("/v1/accounts/{account_id}/feed/stream"), &ada)
        .await;
    // The stream outlives a request's timeout: it is relayed, not buffered.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    let paid = bank
        .pay("journey-1", &card_token, common::money("12.50", "GBP"))
        .await;
    assert_eq!(common::decision(&paid).0, "APPROVED");
    let transaction_id = paid.body["transaction_id"].as_str().unwrap().to_string();
    let item = live.item(&transaction_id).await;
    assert_eq!(
        item["amount"],
        json!({"minor_units": 1250, "currency": "GBP"})
    );
    let pushed = until(|| async {
        let sink = bank.bank.address("push-sink").unwrap();
        let deliveries: Vec<Value> = reqwest::get(format!("http://{sink}/deliveries"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        deliveries
            .iter()
            .any(|d| d["device_token"] == phone.as_str())
    })
    .await;
    assert!(pushed, "the phone got its push");
    let hooked = until(|| async { !receiver.events().0.is_empty() }).await;
    assert!(hooked, "the receiver got its webhook");
    for (headers, body) in receiver.received.lock().unwrap().iter() {
        let signature = headers["sterling-signature"].to_str().unwrap();
        assert!(common::receiver::python_verifies(&secret, signature, body));
    }
    let log = format!("{webhooks}/{webhook_id}/deliveries");
    let delivered = until(|| async {
        let (_, log, _) = client.call(Method::GET, &log, Some(&ada), None, None).await;
        log["deliveries"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["status"] == "delivered"))
    })
    .await;
    assert!(delivered, "the delivery log says delivered");
    let (status, feed, _) = client
        .call(
            Method::GET,
            &format!("/v1/accounts/{account_id}/feed?limit=5"),
            Some(&ada),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(feed["items"][0]["item_id"], transaction_id.as_str());
    // None of it is Bob's to see or change.
    for (method, path) in [
        (Method::GET, format!("/v1/accounts/{account_id}/feed")),
        (
            Method::GET,
            format!("/v1/accounts/{account_id}/feed/stream"),
        ),
        (Method::GET, format!("/v1/accounts/{account_id}/devices")),
        (Method::GET, webhooks.clone()),
        (Method::GET, log.clone()),
        (Method::DELETE, format!("{webhooks}/{webhook_id}")),
        (
            Method::DELETE,
            format!("/v1/accounts/{account_id}/devices/{phone}"),
        ),
    ] {
        let (status, _, _) = client
            .call(method.clone(), &path, Some(&bob), None, None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    let listing = format!("/v1/accounts/{account_id}/transactions?limit=10");
    let (status, page, _) = client
        .call(Method::GET, &listing, Some(&ada), None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        page["transactions"][0]["amount"],
        json!({"minor_units": 1250, "currency": "GBP"})
    );
    assert_eq!(page["transactions"][0]["status"], "pending");
    let read = client.balance_until(&path, &ada, "available", 8750).await;
    assert_eq!(read["held"]["minor_units"], 1250);
    assert_eq!(read["balance"]["minor_units"], 10000);
    assert_eq!(read["spent_today"]["minor_units"], 1250);
    // Frozen, the card is declined; Bob cannot touch it.
    let freeze = format!("{cards}/{card_token}/freeze");
    let (status, frozen, _) = client
        .call(Method::POST, &freeze, Some(&ada), None, None)
        .await;
    assert_eq!(
        (status, frozen["status"].as_str()),
        (StatusCode::OK, Some("frozen"))
    );
    let declined = bank
        .pay("journey-2", &card_token, common::money("1.00", "GBP"))
        .await;
    assert_eq!(common::decision(&declined).0, "DECLINED");
    let unfreeze = format!("{cards}/{card_token}/unfreeze");
    let (status, _, _) = client
        .call(Method::POST, &unfreeze, Some(&bob), None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = client
        .call(Method::GET, &listing, Some(&bob), None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bob sees nothing of Ada's: not found, never her data, never "forbidden".
    let (status, body, _) = client
        .call(Method::GET, &path, Some(&bob), None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found.account");
    let (status, _, _) = client
        .call(
            Method::POST,
            &top_up,
            Some(&bob),
            Some("t-bob"),
            Some(json!({"minor_units": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, bobs, _) = client
        .call(Method::GET, "/v1/accounts", Some(&bob), None, None)
        .await;
    assert_eq!(bobs["accounts"], json!([]));

    // No token, a made-up one: 401 with a challenge.
    for token in [None, Some("sat_0000"), Some("not a token")] {
        let (status, body, headers) = client.call(Method::GET, &path, token, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["code"], "unauthorized.token");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }

    // The accounts service itself, reached past the gateway with a customer header: refused.
    let accounts = bank.bank.address("accounts").unwrap();
    let direct = client
        .http
        .get(format!("http://{accounts}{path}"))
        .header("x-sterling-customer", "whoever")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::UNAUTHORIZED);

    // Unknown routes, bodies over the limit.
    let (status, body, _) = client
        .call(Method::GET, "/v1/nothing-here", Some(&ada), None, None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found.route"))
    );
    let big = json!({"currency": "x".repeat(8000)});
    let (status, _, _) = client
        .call(
            Method::POST,
            "/v1/accounts",
            Some(&ada),
            Some("big"),
            Some(big),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Guessing a password: refused alike, then limited with Retry-After.
    let guess = json!({"email": "ada@example.com", "password": "guess guess guess"});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, _, headers) = client
            .call(Method::POST, "/v1/sign-in", None, None, Some(guess.clone()))
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);

    // Signed out: the token stops working.
    let (status, _, _) = client
        .call(Method::POST, "/v1/sign-out", Some(&ada), None, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = client
        .call(Method::GET, &path, Some(&ada), None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    bank.bank.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_api_service_is_live_as_soon_as_it_registers() {
    let dir = tempfile::tempdir().unwrap();
    let bank = common::start_sync(dir.path(), &[]).await;
    let client = Client::of(&bank);
    let token = client.sign_up_and_in("cleo@example.com").await;
    let (status, _, _) = client
        .call(Method::GET, "/v1/echo", Some(&token), None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not routed before it exists");

    async fn whoami(Extension(customer): Extension<Customer>) -> axum::Json<Value> {
        axum::Json(json!({"customer_id": customer.id()}))
    }
    let echo = platform::start_with(
        "echo",
        &[],
        &[],
        &[],
        &bank.bank.platform,
        "127.0.0.1:0".parse().unwrap(),
        |_| {
            Box::pin(async {
                Ok(Api::Public(PublicApi {
                    router: axum::Router::new().route("/v1/echo/whoami", get(whoami)),
                    prefixes: vec!["/v1/echo".into()],
                }))
            })
        },
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let answer = loop {
        let (status, body, _) = client
            .call(Method::GET, "/v1/echo/whoami", Some(&token), None, None)
            .await;
        if status == StatusCode::OK || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        answer["customer_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("cus_")),
        "{answer}"
    );
    echo.stop().await;
    bank.bank.stop().await;
}

/// An API service listed in discovery but not listening yet (its container coming back, its
/// name not resolving for a moment): the gateway's request reached nobody, so it is made again
/// until the service listens, and the service gets it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_an_api_service_coming_back_is_sent_once_it_listens() {
    use sterling_template::discovery::{Protocol, Registration};
    static RECEIVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    let dir = tempfile::tempdir().unwrap();
    let bank = common::start_sync(dir.path(), &[]).await;
    let client = Client::of(&bank);
    let token = client.sign_up_and_in("dora@example.com").await;
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let listed = Registration {
        service: platform::PUBLIC_API.into(),
        instance: "late-listed".into(),
        address: address.to_string(),
        protocol: Protocol::Http,
        zone: String::new(),
        version: String::new(),
        routes: vec!["/v1/late".into()],
    };
    bank.bank
        .platform
        .discovery
        .register(&listed, std::time::Duration::from_secs(60))
        .await
        .unwrap();

    async fn count() -> axum::Json<Value> {
        let n = RECEIVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        axum::Json(json!({"received": n}))
    }
    let late_platform = bank.bank.platform.clone();
    let late = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        platform::start_with("late", &[], &[], &[], &late_platform, address, |_| {
            Box::pin(async {
                Ok(Api::Public(PublicApi {
                    router: axum::Router::new().route("/v1/late/count", post(count)),
                    prefixes: vec!["/v1/late".into()],
                }))
            })
        })
        .await
        .unwrap()
    });
    let (status, body, _) = client
        .call(
            Method::POST,
            "/v1/late/count",
            Some(&token),
            None,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["received"], 1);
    assert_eq!(RECEIVED.load(std::sync::atomic::Ordering::SeqCst), 1);
    late.await.unwrap().stop().await;
    bank.bank.stop().await;
}

/// The OpenAPI document is served to anyone, every operation it names exists, and every prefix
/// an API service registers is documented (a new API service without documentation fails
/// here; schemathesis checks the answers themselves in `make test-api`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let bank = common::start_sync(dir.path(), &[]).await;
    let client = Client::of(&bank);
    let (status, document, _) = client
        .call(Method::GET, "/v1/openapi.json", None, None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    let token = client.sign_up_and_in("doc@example.com").await;
    let paths = document["paths"].as_object().unwrap();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let concrete = path.replace("{account_id}", "acc_nobody");
            let (status, body, _) = client
                .call(
                    method.clone(),
                    &concrete,
                    Some(&token),
                    Some("doc"),
                    Some(json!({})),
                )
                .await;
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && body["code"] != "not_found.route",
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }
    let registered = bank
        .bank
        .platform
        .discovery
        .resolve(sterling_template::platform::PUBLIC_API)
        .await
        .unwrap();
    assert!(!registered.is_empty());
    for prefix in registered.iter().flat_map(|r| r.routes.iter()) {
        assert!(
            paths
                .keys()
                .any(|p| p == prefix || p.starts_with(&format!("{prefix}/"))),
            "{prefix} is served but not documented"
        );
    }
    bank.bank.stop().await;
}

/// Every secured operation of the OpenAPI document (the route table every registered prefix
/// is checked against above) with a real resource of Ada's in its path.
fn secured_operations(document: &Value, ids: &[(&str, &str)]) -> Vec<(Method, String, Value)> {
    let mut operations = Vec::new();
    for (path, methods) in document["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            if operation["security"]
                .as_array()
                .is_none_or(|s| s.is_empty())
            {
                continue;
            }
            let mut concrete = path.clone();
            for (name, id) in ids {
                concrete = concrete.replace(&format!("{{{name}}}"), id);
            }
            assert!(!concrete.contains('{'), "no id for a parameter of {path}");
            // A valid body for each write, so that only the caller can be wrong.
            let body = match operation["operationId"].as_str().unwrap() {
                "openAccount" => json!({"currency": "GBP"}),
                "topUp" => json!({"minor_units": 100}),
                "registerDevice" => json!({"device_token": "bobs-phone", "platform": "ios"}),
                "registerWebhook" => json!({"url": "https://example.com/hooks"}),
                "payAtTerminal" => json!({"minor_units": 100}),
                "putProfile" => json!({"legal_name": "Bob", "date_of_birth": "1990-01-01"}),
                _ => json!({}),
            };
            operations.push((method.to_uppercase().parse().unwrap(), concrete, body));
        }
    }
    operations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let bank = common::start(
        dir.path(),
        &[
            ("STERLING_ACCOUNTS_DEVELOPMENT_TOP_UPS", "true"),
            ("STERLING_ACCOUNTS_DEVELOPMENT_TERMINAL", "true"),
            // Limits are their own test; this one walks every route quickly.
            ("STERLING_GATEWAY_PER_ADDRESS_PER_S", "100000"),
            ("STERLING_GATEWAY_PER_TOKEN_PER_S", "100000"),
        ],
    )
    .await;
    let client = Client::of(&bank);
    let (_, document, _) = client
        .call(Method::GET, "/v1/openapi.json", None, None, None)
        .await;
    // The operations anyone may call are exactly these.
    let mut open: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|m| m.as_object().unwrap().values())
        .filter(|o| o["security"].as_array().is_none_or(|s| s.is_empty()))
        .map(|o| o["operationId"].as_str().unwrap())
        .collect();
    open.sort();
    assert_eq!(open, ["refresh", "signIn", "signUp"]);

    // Ada's account with one of everything on it.
    let ada = client.sign_up_and_in("ada-locks@example.com").await;
    let (_, account, _) = client
        .call(
            Method::POST,
            "/v1/accounts",
            Some(&ada),
            Some("a"),
            Some(json!({"currency": "GBP"})),
        )
        .await;
    let account_id = account["account_id"].as_str().unwrap().to_string();
    let on_account = |rest: &str| format!("/v1/accounts/{account_id}{rest}");
    let (_, card, _) = client
        .call(
            Method::POST,
            &on_account("/cards"),
            Some(&ada),
            Some("c"),
            None,
        )
        .await;
    let (status, device, _) = client
        .call(
            Method::POST,
            &on_account("/devices"),
            Some(&ada),
            None,
            Some(json!({"device_token": "adas-phone", "platform": "ios"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    let (_, receiver_url) = common::receiver::receiver().await;
    let (_, webhook, _) = client
        .call(
            Method::POST,
            &on_account("/webhooks"),
            Some(&ada),
            Some("w"),
            Some(json!({"url": receiver_url})),
        )
        .await;
    let profile = json!({"legal_name": "Ada Lovelace", "date_of_birth": "1815-12-10"});
    let (status, _, _) = client
        .call(
            Method::PUT,
            "/v1/customers/me",
            Some(&ada),
            None,
            Some(profile),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "born before 1900");
    let profile = json!({"legal_name": "Ada Lovelace", "date_of_birth": "1985-12-10"});
    let (status, stored, _) = client
        .call(
            Method::PUT,
            "/v1/customers/me",
            Some(&ada),
            None,
            Some(profile),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["version"], 1);
    let ids = [
        ("account_id", account_id.as_str()),
        ("card_token", card["card_token"].as_str().unwrap()),
        ("webhook_id", webhook["webhook_id"].as_str().unwrap()),
        ("device_token", "adas-phone"),
    ];
    let operations = secured_operations(&document, &ids);
    assert!(operations.len() >= 15, "{} operations", operations.len());

    // Bob, a customer with an account of his own, on each of Ada's: 404, never her data.
    let bob = client.sign_up_and_in("bob-locks@example.com").await;
    client
        .call(
            Method::POST,
            "/v1/accounts",
            Some(&bob),
            Some("b"),
            Some(json!({"currency": "GBP"})),
        )
        .await;
    // "me" is whoever the token is: Bob has no profile, and never sees Ada's.
    let (status, body, _) = client
        .call(Method::GET, "/v1/customers/me", Some(&bob), None, None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found.profile"))
    );
    for (method, path, body) in &operations {
        if !path.contains(&account_id) {
            continue; // his own accounts and profile, by construction
        }
        let (status, answer, _) = client
            .call(
                method.clone(),
                path,
                Some(&bob),
                Some("k"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "Bob: {method} {path}: {answer}"
        );
        assert!(answer["code"].as_str().unwrap().starts_with("not_found."));
        assert!(!answer.to_string().contains("adas-phone"), "{answer}");
    }

    // No token, garbage, a tampered and a revoked one: 401 on every operation.
    let mut tampered = ada.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let revoked = client.sign_up_and_in("carol-locks@example.com").await;
    let (status, _, _) = client
        .call(Method::POST, "/v1/sign-out", Some(&revoked), None, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for token in [
        None,
        Some("garbage"),
        Some(tampered.as_str()),
        Some(revoked.as_str()),
    ] {
        for (method, path, body) in &operations {
            let (status, answer, _) = client
                .call(method.clone(), path, token, Some("k"), Some(body.clone()))
                .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{token:?}: {method} {path}: {answer}"
            );
        }
    }
    // Ada's own token reaches every one of them (none is a 404 or a 401 for her); deletes
    // last, signing out not at all.
    let mut own = operations.clone();
    own.sort_by_key(|(method, _, _)| *method == Method::DELETE);
    for (method, path, body) in &own {
        if path.ends_with("/feed/stream") || path == "/v1/sign-out" {
            continue; // the 200 stream is read in the journey
        }
        let (status, answer, _) = client
            .call(
                method.clone(),
                path,
                Some(&ada),
                Some("ada-k"),
                Some(body.clone()),
            )
            .await;
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::UNAUTHORIZED,
            "Ada: {method} {path}: {status} {answer}"
        );
    }
    bank.bank.stop().await;

    // An expired token, on a bank whose tokens live a second.
    let dir = tempfile::tempdir().unwrap();
    let bank = common::start_sync(
        dir.path(),
        &[
            ("STERLING_AUTH_ACCESS_TTL_S", "1"),
            ("STERLING_GATEWAY_PER_ADDRESS_PER_S", "100000"),
        ],
    )
    .await;
    let client = Client::of(&bank);
    let expired = client.sign_up_and_in("dave-locks@example.com").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for (method, path, body) in &operations {
        let (status, _, _) = client
            .call(
                method.clone(),
                path,
                Some(&expired),
                Some("k"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "expired: {method} {path}");
    }
    bank.bank.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_named_origins_may_call_the_api_from_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let bank = common::start_sync(
        dir.path(),
        &[("STERLING_GATEWAY_WEB_ORIGINS", "https://app.example.com")],
    )
    .await;
    let client = Client::of(&bank);
    let preflight = |origin: &'static str| {
        client
            .http
            .request(Method::OPTIONS, format!("{}/v1/accounts", client.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, idempotency-key",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        allowed.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("idempotency-key")
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    // A simple request: readable by the named origin only.
    for (origin, readable) in [
        ("https://app.example.com", true),
        ("https://evil.example", false),
    ] {
        let answer = client
            .http
            .get(format!("{}/v1/openapi.json", client.url))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.headers().contains_key("access-control-allow-origin"),
            readable,
            "{origin}"
        );
    }
    bank.bank.stop().await;
}
