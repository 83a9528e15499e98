//! A notification goes once per event and device: an attempt that failed is made again by
//! the event's next delivery, one that was sent never is, and two deliveries at once send it
//! once. Each attempt's outcome is a row of its own; a claim made before attempts were
//! numbered is honoured as it stands.

use std::sync::Arc;

use push::gateway::Gateway;
use push::notify::Notifier;
use sterling_bus::Envelope;
use sterling_proto::common::v1::Money;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardAuthorisationDecided;
use sterling_storage::embedded::SqliteStore;
use sterling_storage::{Mutation, Query, Row, SharedStore, Value, now_millis};
use sterling_template::discovery::EmbeddedDiscovery;

/// The local push sink on an ephemeral port; its URL.
async fn sink() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, push::sink::router()).await });
    url
}

async fn fail_with(http: &reqwest::Client, url: &str, status: u16) {
    let control = serde_json::json!({ "fail_status": status });
    let answer = http
        .post(format!("{url}/control"))
        .json(&control)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
}

/// How many notifications the sink accepted.
async fn accepted(http: &reqwest::Client, url: &str) -> usize {
    let list: Vec<serde_json::Value> = http
        .get(format!("{url}/deliveries"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.len()
}

fn approval(event_id: &str) -> Envelope {
    let decided = CardAuthorisationDecided {
        processor_authorisation_id: format!("auth-{event_id}"),
        account_id: "acc-1".into(),
        approved: true,
        amount: Some(Money {
            minor_units: 450,
            currency: "GBP".into(),
        }),
        local_amount: Some(Money {
            minor_units: 450,
            currency: "GBP".into(),
        }),
        merchant_descriptor: "PRET A MANGER".into(),
        transaction_id: format!("tx-{event_id}"),
        ..Default::default()
    };
    Envelope {
        event_id: event_id.into(),
        r#type: types::CARD_AUTHORISATION_APPROVED.into(),
        occurred_at_ms: now_millis(),
        request_id: String::new(),
        traceparent: String::new(),
        payload: prost::Message::encode_to_vec(&decided),
    }
}

async fn notifier(url: &str) -> (Notifier, SharedStore) {
    let store: SharedStore = Arc::new(SqliteStore::in_memory(push::MIGRATIONS).unwrap());
    let gateway = Gateway::new(url, Arc::new(EmbeddedDiscovery::new())).unwrap();
    let notifier = Notifier::new(store.clone(), gateway);
    notifier.register("acc-1", "phone-1", "ios").await.unwrap();
    (notifier, store)
}

/// The statuses of the event's attempts for phone-1, in attempt order.
async fn outcomes(store: &SharedStore, event_id: &str) -> Vec<(i64, String)> {
    let partition = Row::new().with("event_id", event_id);
    let rows = store
        .query(Query::partition("notification_outcomes", partition))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.i64("attempt").unwrap(),
                r.text("status").unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_made_again_and_a_sent_one_never() {
    let url = sink().await;
    let http = reqwest::Client::new();
    let (notifier, store) = notifier(&url).await;

    fail_with(&http, &url, 500).await;
    let event = approval("event-1");
    assert!(notifier.handle(event.clone()).await.is_err());
    assert!(notifier.handle(event.clone()).await.is_err());
    fail_with(&http, &url, 0).await;
    notifier.handle(event.clone()).await.unwrap();
    notifier.handle(event.clone()).await.unwrap();
    assert_eq!(accepted(&http, &url).await, 1);
    assert_eq!(
        outcomes(&store, "event-1").await,
        [
            (1, "failed".into()),
            (2, "failed".into()),
            (3, "sent".into())
        ]
    );

    // Two deliveries of one event at once: one notification, one attempt.
    let event = approval("event-2");
    let (a, b) = tokio::join!(
        notifier.handle(event.clone()),
        notifier.handle(event.clone())
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(accepted(&http, &url).await, 2);
    assert_eq!(outcomes(&store, "event-2").await, [(1, "sent".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_from_before_numbered_attempts_is_honoured() {
    let url = sink().await;
    let http = reqwest::Client::new();
    let (notifier, store) = notifier(&url).await;
    let legacy = |event_id: &str, status: &str| {
        Mutation::insert_if_not_exists(
            "notifications",
            Row::new()
                .with("event_id", event_id)
                .with("device_token", "phone-1")
                .with("status", status)
                .with("apns_id", "legacy")
                .with("claimed_at", Value::Timestamp(now_millis())),
        )
    };
    store
        .apply(vec![legacy("sent-before", "sent")])
        .await
        .unwrap();
    store
        .apply(vec![legacy("failed-before", "failed")])
        .await
        .unwrap();

    notifier.handle(approval("sent-before")).await.unwrap();
    assert_eq!(accepted(&http, &url).await, 0);
    for _ in 0..2 {
        notifier.handle(approval("failed-before")).await.unwrap();
    }
    assert_eq!(accepted(&http, &url).await, 1);
    assert_eq!(
        outcomes(&store, "failed-before").await,
        [(1, "sent".into())]
    );
}
