//! No secret reaches the logs: a customer's journey through the public API (sign-up, a wrong
//! password, sign-in, refresh, an account, a top-up, a payment, a webhook registered, sign-out)
//! with every service logging at debug level, then the log is searched for each password,
//! access and refresh token, service identity token, webhook signing secret and the
//! processor's signing secret.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{SECRET, money, start};
use serde_json::{Value, json};
use sterling_proto::webhooks::v1::RegisterWebhookRequest;
use sterling_proto::webhooks::v1::webhooks_client::WebhooksClient;
use sterling_template::telemetry::{self, LogFormat};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    key: &str,
    body: Value,
) -> Value {
    let mut request = http.post(url).header("idempotency-key", key).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    response.json().await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_token_or_secret_is_ever_logged() {
    let captured = Captured::default();
    let sink = captured.clone();
    telemetry::init_with(LogFormat::Json, "debug", move || sink.clone(), None);

    let dir = tempfile::tempdir().unwrap();
    let bank = start(
        dir.path(),
        &[
            ("STERLING_ACCOUNTS_DEVELOPMENT_TOP_UPS", "true"),
            common::RELAXED_BUDGET,
        ],
    )
    .await;
    let gateway = format!("http://{}", bank.bank.address("gateway").unwrap());
    let http = reqwest::Client::new();
    let password = "secret-password-4711";
    let wrong = "wrong-password-0815";
    let credentials = json!({"email": "zoe@example.com", "password": password});
    post(
        &http,
        &format!("{gateway}/v1/sign-up"),
        None,
        "s1",
        credentials.clone(),
    )
    .await;
    post(
        &http,
        &format!("{gateway}/v1/sign-in"),
        None,
        "-",
        json!({"email": "zoe@example.com", "password": wrong}),
    )
    .await;
    let first = post(
        &http,
        &format!("{gateway}/v1/sign-in"),
        None,
        "-",
        credentials,
    )
    .await;
    let refreshed = post(
        &http,
        &format!("{gateway}/v1/refresh"),
        None,
        "-",
        json!({"refresh_token": first["refresh_token"]}),
    )
    .await;
    let access = refreshed["access_token"].as_str().unwrap().to_string();
    let account = post(
        &http,
        &format!("{gateway}/v1/accounts"),
        Some(&access),
        "a1",
        json!({"currency": "GBP"}),
    )
    .await;
    let account_id = account["account_id"].as_str().unwrap();
    post(
        &http,
        &format!("{gateway}/v1/accounts/{account_id}/top-ups"),
        Some(&access),
        "t1",
        json!({"minor_units": 5000}),
    )
    .await;

    // The processor's side and a webhook, as the operator registers them.
    let customer = bank.seed("logs-secret", money("20.00", "GBP")).await;
    bank.pay("auth-secret-1", &customer.card.token, money("1.00", "GBP"))
        .await;
    let webhooks = sterling::operate::Reach::of(&bank.bank.platform)
        .channel(sterling_proto::webhooks::v1::WEBHOOKS_SERVICE)
        .await
        .unwrap();
    let webhook = WebhooksClient::new(webhooks)
        .register_webhook(RegisterWebhookRequest {
            idempotency_key: "w1".into(),
            account_id: customer.account_id.clone(),
            url: "http://127.0.0.1:9/hooks".into(),
        })
        .await
        .unwrap()
        .into_inner();
    http.post(format!("{gateway}/v1/sign-out"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    let identity = bank.bank.platform.identity.clone();
    bank.bank.stop().await;

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("signed in"), "the journey was logged");
    let mut secrets = vec![
        ("password", password.to_string()),
        ("wrong password", wrong.to_string()),
        (
            "access token",
            first["access_token"].as_str().unwrap().to_string(),
        ),
        (
            "refresh token",
            first["refresh_token"].as_str().unwrap().to_string(),
        ),
        ("refreshed access token", access.clone()),
        ("webhook secret", webhook.secret.clone()),
        (
            "processor secret",
            String::from_utf8(SECRET.to_vec()).unwrap(),
        ),
    ];
    for service in sterling::bank::SERVICES
        .iter()
        .map(|s| s.name)
        .chain(["operator"])
    {
        let header = identity.header_for(service).unwrap();
        let token = header
            .to_str()
            .unwrap()
            .trim_start_matches("Bearer ")
            .to_string();
        secrets.push(("service identity token", token));
    }
    for (what, secret) in secrets {
        assert!(!secret.is_empty(), "{what}");
        assert!(!log.contains(&secret), "the {what} is in the log");
    }
}
