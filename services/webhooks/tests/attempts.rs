//! Every attempt of a delivery is a row of its own, written without a compare-and-set: a
//! receiver that fails twice is sent the event three times and the log says so; a repeat of
//! the event sends nothing more; a delivery logged before attempts had rows is numbered on
//! from its own count, and one finished then is never sent again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::approval;
use sterling_proto::event_types as types;
use sterling_storage::embedded::SqliteStore;
use sterling_storage::{Mutation, Query, Row, SharedStore, Value, now_millis};
use tokio_util::sync::CancellationToken;
use webhooks::address::UrlPolicy;
use webhooks::attempts::{Answer, Outcome, attempt_row};
use webhooks::dispatch::{DELIVERIES, DeliveryRecord, Dispatcher};
use webhooks::due::DueQueue;
use webhooks::store::Registry;

/// A receiver that answers 500 to its first `failures` requests and 200 after; it counts them.
async fn receiver(failures: usize) -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < failures {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

struct Setup {
    store: SharedStore,
    dispatcher: Dispatcher,
    webhook_id: String,
    stopping: CancellationToken,
}

async fn setup(url: &str) -> Setup {
    setup_with(url, vec![Duration::from_millis(50); 5]).await
}

async fn setup_with(url: &str, schedule: Vec<Duration>) -> Setup {
    let mut migrations = webhooks::MIGRATIONS.to_vec();
    migrations.extend(sterling_template::outbox::TEMPLATE_MIGRATIONS);
    let store: SharedStore = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
    let policy = UrlPolicy { allow_local: true };
    let registry = Registry::new(store.clone(), policy);
    let webhook = registry.register("key-1", "acc-1", url).await.unwrap();
    let dispatcher = Dispatcher::new(
        store.clone(),
        registry,
        schedule,
        Duration::from_secs(2),
        policy,
    )
    .unwrap();
    let stopping = CancellationToken::new();
    tokio::spawn(dispatcher.clone().run(stopping.clone()));
    Setup {
        store,
        dispatcher,
        webhook_id: webhook.webhook_id,
        stopping,
    }
}

/// The log's entry for `event_id` once it is no longer pending (ten seconds at most).
async fn finished(s: &Setup, event_id: &str) -> DeliveryRecord {
    entry_when(s, event_id, |d| d.status != "pending").await
}

/// The attempts recorded for `event_id`: (number, status).
async fn attempt_rows(s: &Setup, event_id: &str) -> Vec<(i64, String)> {
    let partition = Row::new()
        .with("webhook_id", s.webhook_id.as_str())
        .with("event_id", event_id);
    let rows = s
        .store
        .query(Query::partition(webhooks::attempts::ATTEMPTS, partition))
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.i64("attempt").unwrap(), r.text("status").unwrap().into()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_is_a_row_and_a_repeated_event_sends_nothing_more() {
    let (url, seen) = receiver(2).await;
    let s = setup(&url).await;
    let event = approval();
    s.dispatcher.enqueue(event.clone()).await.unwrap();
    s.dispatcher.enqueue(event.clone()).await.unwrap();
    let d = finished(&s, &event.event_id).await;
    assert_eq!((d.status.as_str(), d.attempts), ("delivered", 3));
    assert_eq!(d.last_status_code, 200);
    assert!(d.delivered_at_ms > 0);
    assert_eq!(
        attempt_rows(&s, &event.event_id).await,
        [
            (1, "retrying".into()),
            (2, "retrying".into()),
            (3, "delivered".into())
        ]
    );
    let row = s
        .store
        .get(
            DELIVERIES.table,
            &DELIVERIES.key(&s.webhook_id, &event.event_id),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.blob("body").is_err(),
        "the body is dropped once delivered"
    );

    // Delivered again by the bus: queued again, found finished, dropped.
    s.dispatcher.enqueue(event.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(attempt_rows(&s, &event.event_id).await.len(), 3);
    s.stopping.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_logged_before_attempts_had_rows_is_numbered_on_from_its_count() {
    let (url, seen) = receiver(0).await;
    let s = setup(&url).await;
    let legacy = |event_id: &str, status: &str| {
        DELIVERIES
            .key(&s.webhook_id, event_id)
            .with("event_type", types::CARD_AUTHORISATION_APPROVED)
            .with("account_id", "acc-1")
            .with("url", url.as_str())
            .with("body", b"{}".to_vec())
            .with("status", status)
            .with("attempts", 2i64)
            .with("last_error", "receiver answered 500")
            .with("created_at", Value::Timestamp(now_millis()))
    };
    let (pending, delivered) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    let now = now_millis();
    for (event_id, status) in [(&pending, "pending"), (&delivered, "delivered")] {
        s.store
            .apply_in_order(vec![
                vec![DELIVERIES.month_entry(&s.webhook_id, event_id)],
                vec![Mutation::insert_if_not_exists(
                    DELIVERIES.table,
                    legacy(event_id, status),
                )],
                vec![DueQueue::add(&s.webhook_id, event_id, now)],
            ])
            .await
            .unwrap();
    }
    let d = finished(&s, &pending).await;
    assert_eq!((d.status.as_str(), d.attempts), ("delivered", 3));
    assert_eq!(attempt_rows(&s, &pending).await, [(3, "delivered".into())]);
    let d = finished(&s, &delivered).await;
    assert_eq!((d.status.as_str(), d.attempts), ("delivered", 2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the finished one is not sent"
    );
    assert!(attempt_rows(&s, &delivered).await.is_empty());
    s.stopping.cancel();
}

/// The log's entry for `event_id` once `ready` holds for it (ten seconds at most).
async fn entry_when(
    s: &Setup,
    event_id: &str,
    ready: impl Fn(&DeliveryRecord) -> bool,
) -> DeliveryRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = s.dispatcher.log(&s.webhook_id, 10).await.unwrap();
        if let Some(d) = log.iter().find(|d| d.event_id == event_id)
            && ready(d)
        {
            return d.clone();
        }
        assert!(Instant::now() < deadline, "not yet: {log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_open_postpones_deliveries_and_the_log_says_until_when() {
    let (url, seen) = receiver(usize::MAX).await;
    let s = setup(&url).await;
    let first = approval();
    s.dispatcher.enqueue(first.clone()).await.unwrap();
    // Five failures 50 ms apart open the circuit for 30 s; the sixth attempt, due 50 ms after
    // the fifth, is postponed past it without being made.
    let far = |d: &DeliveryRecord| d.next_attempt_at_ms > now_millis() + 20_000;
    let d = entry_when(&s, &first.event_id, far).await;
    assert_eq!((d.status.as_str(), d.attempts), ("pending", 5));
    assert_eq!(d.last_status_code, 500);
    assert_eq!(seen.load(Ordering::SeqCst), 5);
    assert_eq!(attempt_rows(&s, &first.event_id).await.len(), 5);

    // A delivery queued while the circuit is open is postponed before its first attempt.
    let second = approval();
    s.dispatcher.enqueue(second.clone()).await.unwrap();
    let d = entry_when(&s, &second.event_id, far).await;
    assert_eq!((d.status.as_str(), d.attempts), ("pending", 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 5, "nothing sent while open");
    assert!(attempt_rows(&s, &second.event_id).await.is_empty());
    s.stopping.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_stays_delivered_when_another_instance_fails_the_same_attempt() {
    let (url, seen) = receiver(0).await;
    let s = setup(&url).await;
    let event = approval();
    s.dispatcher.enqueue(event.clone()).await.unwrap();
    let d = finished(&s, &event.event_id).await;
    assert_eq!((d.status.as_str(), d.attempts), ("delivered", 1));

    // Another instance made attempt 1 at the same time, timed out, and recorded it as failed
    // with a retry due now (its attempt row overwrites this one's).
    let timed_out = Answer {
        error: "timed out".into(),
        ..Answer::default()
    };
    let pair = (s.webhook_id.as_str(), event.event_id.as_str());
    let now = now_millis();
    s.store
        .apply_in_order(vec![
            vec![attempt_row(pair, 1, Outcome::Retrying(now), &timed_out)],
            vec![DueQueue::add(pair.0, pair.1, now)],
        ])
        .await
        .unwrap();

    // The retry finds the delivery finished, sends nothing and leaves the queue.
    let due = DueQueue::new(s.store.clone());
    common::until_no_place(&due, &event.event_id, |_| true, "the retry stays queued").await;
    let d = finished(&s, &event.event_id).await;
    assert_eq!((d.status.as_str(), d.attempts), ("delivered", 1));
    assert!(d.delivered_at_ms > 0);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    s.stopping.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_in_the_queue_older_than_the_planned_retry_joins_it_unsent() {
    let (url, seen) = receiver(usize::MAX).await;
    let s = setup_with(&url, vec![Duration::from_secs(60); 3]).await;
    let event = approval();
    s.dispatcher.enqueue(event.clone()).await.unwrap();
    let d = entry_when(&s, &event.event_id, |d| d.attempts == 1).await;
    assert!(d.next_attempt_at_ms > now_millis() + 30_000);

    // Another instance made the same first attempt and queued its retry sooner.
    let pair = (s.webhook_id.as_str(), event.event_id.as_str());
    let stale = now_millis();
    s.store
        .apply(vec![DueQueue::add(pair.0, pair.1, stale)])
        .await
        .unwrap();
    let due = DueQueue::new(s.store.clone());
    let why = "the stale place stays queued";
    common::until_no_place(&due, &event.event_id, |at| at == stale, why).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1, "nothing sent for it");
    let d = entry_when(&s, &event.event_id, |_| true).await;
    assert_eq!((d.status.as_str(), d.attempts), ("pending", 1));
    // One place left, at the planned retry.
    let places: Vec<i64> = due
        .due(d.next_attempt_at_ms)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, e, _)| e == &event.event_id)
        .map(|(_, _, at)| at)
        .collect();
    assert_eq!(places, [d.next_attempt_at_ms]);
    s.stopping.cancel();
}
