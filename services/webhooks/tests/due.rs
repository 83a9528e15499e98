//! The queue of due deliveries on the embedded store: what is due comes earliest first, across
//! minutes and whatever the backlog; what is not due yet waits; the watermark passes empty
//! minutes; rows of the queue it replaced are moved in on first use.

use std::sync::Arc;

use sterling_storage::embedded::SqliteStore;
use sterling_storage::{Mutation, Row, SharedStore, Value};
use webhooks::MIGRATIONS;
use webhooks::due::{DueQueue, MINUTE_MS};

fn store() -> SharedStore {
    Arc::new(SqliteStore::in_memory(MIGRATIONS).unwrap())
}

async fn add(store: &SharedStore, webhook: &str, event: &str, at: i64) {
    store
        .apply(vec![DueQueue::add(webhook, event, at)])
        .await
        .unwrap();
}

const NOW: i64 = 1_800_000_000_000;

#[tokio::test]
async fn due_rows_come_earliest_first_and_a_backlog_starves_nothing() {
    let store = store();
    let queue = DueQueue::new(store.clone());
    // Start the watermark a few minutes back.
    assert!(queue.due(NOW - 3 * MINUTE_MS).await.unwrap().is_empty());
    // A backlog of 1,500 rows due in this minute, one due in an earlier minute and one not due.
    for i in 0..1500 {
        add(&store, "w", &format!("e{i:05}"), NOW - 30_000 + i).await;
    }
    add(&store, "w", "early", NOW - 2 * MINUTE_MS).await;
    add(&store, "w", "later", NOW + 10_000).await;
    let first = queue.due(NOW).await.unwrap();
    assert_eq!(first[0].1, "early", "the earliest due comes first");
    assert!(first.windows(2).all(|w| w[0].2 <= w[1].2), "in due order");
    assert!(
        first.iter().all(|d| d.1 != "later"),
        "nothing before it is due"
    );
    // Take what was handed out off the queue: the rest of the backlog follows, in order.
    for (webhook, event, at) in &first {
        store
            .apply(vec![DueQueue::remove(webhook, event, *at)])
            .await
            .unwrap();
    }
    let rest = queue.due(NOW).await.unwrap();
    assert_eq!(first.len() - 1 + rest.len(), 1500);
    assert!(rest.windows(2).all(|w| w[0].2 <= w[1].2));
    // Once due, the later one comes too.
    let after = queue.due(NOW + 10_000).await.unwrap();
    assert!(after.iter().any(|d| d.1 == "later"));
}

#[tokio::test]
async fn the_watermark_passes_empty_minutes_only() {
    let store = store();
    let queue = DueQueue::new(store.clone());
    assert!(queue.due(NOW).await.unwrap().is_empty());
    add(&store, "w", "waiting", NOW + 5 * MINUTE_MS).await;
    // Ten minutes on, the row is due and found, though minutes have passed in between.
    let later = queue.due(NOW + 10 * MINUTE_MS).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].1, "waiting");
}

#[tokio::test]
async fn rows_of_the_old_queue_are_moved_in() {
    let store = store();
    let old = Row::new()
        .with("shard", 3i64)
        .with("webhook_id", "w")
        .with("event_id", "old")
        .with("next_attempt_at", Value::Timestamp(NOW - 90 * MINUTE_MS));
    store
        .apply(vec![Mutation::insert("pending_deliveries", old)])
        .await
        .unwrap();
    let queue = DueQueue::new(store.clone());
    let due = queue.due(NOW).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].1.as_str(), due[0].2), ("old", NOW - 90 * MINUTE_MS));
}
