//! Bursts of authorisations as a processor under stress sends them: random amounts, ids
//! repeated, concurrent duplicates; and the reconciler over what was heard.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sterling::reconcile::{self, Heard, Reconciler, Report};
use sterling::tools::{self, Clients};
use sterling_money::{Currency, Money};

/// One authorisation request: its id and JSON body.
#[derive(Clone)]
pub struct Request {
    pub id: String,
    pub body: serde_json::Value,
}

/// `count` requests on `card` with amounts from 0.01 to `max_minor` minor units of GBP.
pub fn requests(tag: &str, card: &str, count: usize, max_minor: i64) -> Vec<Request> {
    let mut rng = rand::rng();
    let gbp = Currency::from_code("GBP").unwrap();
    (0..count)
        .map(|i| {
            let id = format!("{tag}-{i}");
            let amount = Money::from_minor(rng.random_range(1..=max_minor), gbp);
            let body =
                tools::authorisation_json(&id, card, amount, "PRET A MANGER LONDON GB", "5812");
            Request { id, body }
        })
        .collect()
}

/// Sends every request `1 + i % copies` times at once (concurrent duplicates), all requests
/// concurrently; returns the answers heard (HTTP 200 only: a dropped connection or a 5xx is
/// no answer). Any 4xx is a failure: the requests are well-formed and never conflict.
pub async fn send(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    requests: &[Request],
    copies: usize,
) -> Vec<Heard> {
    send_limited(http, url, secret, requests, copies, usize::MAX).await
}

/// As [`send`], with at most `in_flight` requests outstanding at once.
pub async fn send_limited(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    requests: &[Request],
    copies: usize,
    in_flight: usize,
) -> Vec<Heard> {
    let permits = Arc::new(tokio::sync::Semaphore::new(
        in_flight.min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let mut tasks = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        for _ in 0..(1 + i % copies.max(1)) {
            let (http, url, secret, body) = (
                http.clone(),
                url.to_string(),
                secret.to_vec(),
                request.body.clone(),
            );
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                tools::pay(&http, &url, &secret, &body, None).await
            }));
        }
    }
    let mut heard = Vec::new();
    for task in tasks {
        if let Ok(Ok(outcome)) = task.await {
            assert!(
                outcome.status == 200 || outcome.status >= 500,
                "a well-formed authorisation got {}: {}",
                outcome.status,
                outcome.body
            );
            if outcome.status == 200 {
                heard.push(Heard::from_json(&outcome.body).expect("an answer"));
            }
        }
    }
    heard
}

/// Reconciles what was heard (ids with no answer heard included) and fails the test with
/// every violation if a rule is broken once the bank has had `settle` to settle.
pub async fn assert_rules_hold(
    reconciler: &Reconciler,
    requests: &[Request],
    heard: Vec<Heard>,
    settle: Duration,
    context: &str,
) -> Report {
    let mut grouped = reconcile::by_id(heard);
    for r in requests {
        if !grouped.iter().any(|(id, _)| *id == r.id) {
            grouped.push((r.id.clone(), Vec::new()));
        }
    }
    let report = reconciler
        .reconcile_settled(&grouped, true, settle)
        .await
        .expect("the reconciler reaches the bank");
    assert!(report.violations.is_empty(), "{context}: {report}");
    assert_eq!(report.checked, requests.len());
    report
}

/// A reconciler for a bank reached through `clients` and card-api at `url`.
pub fn reconciler(clients: Clients, url: &str, secret: &[u8]) -> Arc<Reconciler> {
    Arc::new(Reconciler {
        clients,
        http: reqwest::Client::new(),
        card_api_url: url.to_string(),
        secret: secret.to_vec(),
    })
}

/// How many answers gave each reason, for the test's log.
pub fn reasons(heard: &[Heard]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for h in heard {
        *counts.entry(h.reason.clone()).or_insert(0) += 1;
    }
    counts
}
