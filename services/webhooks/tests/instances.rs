//! Two instances of webhooks over one store: each delivery's first attempt is made by the
//! instance that queued it, and each retry by the instance that owns the webhook, so no
//! attempt is made twice although both read the whole queue.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use common::approval;
use sterling_bus::Envelope;
use sterling_storage::SharedStore;
use sterling_storage::embedded::SqliteStore;
use sterling_template::ownership::Owners;
use tokio_util::sync::CancellationToken;
use webhooks::address::UrlPolicy;
use webhooks::dispatch::Dispatcher;
use webhooks::store::Registry;

/// Requests seen, by (path, event id).
type Seen = Arc<Mutex<HashMap<(String, String), usize>>>;

/// A receiver that answers 500 to the first request of each event at each path, then 200,
/// after a pause long enough for the other instance's pass to find the attempt due (so few
/// failures per path that no circuit opens).
async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let counts = seen.clone();
    let app = axum::Router::new().route(
        "/hook/{n}",
        axum::routing::post(move |Path(n): Path<String>, headers: HeaderMap| {
            let counts = counts.clone();
            async move {
                let event = headers
                    .get("sterling-event-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let count = {
                    let mut counts = counts.lock().unwrap();
                    let count = counts.entry((n, event)).or_default();
                    *count += 1;
                    *count
                };
                tokio::time::sleep(Duration::from_millis(300)).await;
                if count == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_attempt_each_delivery_once() {
    let (base, seen) = receiver().await;
    let mut migrations = webhooks::MIGRATIONS.to_vec();
    migrations.extend(sterling_template::outbox::TEMPLATE_MIGRATIONS);
    let store: SharedStore = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
    let policy = UrlPolicy { allow_local: true };
    let registry = Registry::new(store.clone(), policy);
    let live = vec!["webhooks-a".to_string(), "webhooks-b".to_string()];
    let (a, b) = (
        Owners::fixed("webhooks-a", live.clone()),
        Owners::fixed("webhooks-b", live),
    );
    // Webhooks until each instance owns at least one.
    let mut webhook_ids = Vec::new();
    for n in 0..64 {
        let url = format!("{base}/{n}");
        let w = registry
            .register(&format!("key-{n}"), "acc-1", &url)
            .await
            .unwrap();
        webhook_ids.push(w.webhook_id);
        if webhook_ids.iter().any(|w| a.owns(w)) && webhook_ids.iter().any(|w| b.owns(w)) {
            break;
        }
    }
    assert!(webhook_ids.iter().any(|w| b.owns(w)), "no webhook for b");
    let stopping = CancellationToken::new();
    let instance = |owners: Owners| {
        let dispatcher = Dispatcher::new(
            store.clone(),
            registry.clone(),
            vec![Duration::from_millis(50); 5],
            Duration::from_secs(2),
            policy,
        )
        .unwrap()
        .with_owners(owners);
        tokio::spawn(dispatcher.clone().run(stopping.clone()));
        dispatcher
    };
    let (first, _second) = (instance(a), instance(b));

    let events: Vec<Envelope> = (0..4).map(|_| approval()).collect();
    for event in &events {
        first.enqueue(event.clone()).await.unwrap();
    }
    let expected = events.len() * webhook_ids.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut delivered = 0;
        for w in &webhook_ids {
            let log = first.log(w, 100).await.unwrap();
            delivered += log.iter().filter(|d| d.status == "delivered").count();
        }
        if delivered == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {expected} delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in &webhook_ids {
        for d in first.log(w, 100).await.unwrap() {
            assert_eq!(d.attempts, 2, "{d:?}");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), expected);
    assert!(
        seen.values().all(|n| *n == 2),
        "an attempt was made twice: {seen:?}"
    );
    stopping.cancel();
}
