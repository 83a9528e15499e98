//! The delivery log by webhook and month: the rows of the first log (one partition per webhook)
//! are moved once, and the log reads back newest first across months.

use std::sync::Arc;
use std::time::Duration;

use sterling_storage::embedded::SqliteStore;
use sterling_storage::uuid_v7_at;
use sterling_storage::{Mutation, Row, SharedStore, Value};
use webhooks::address::UrlPolicy;
use webhooks::dispatch::Dispatcher;
use webhooks::store::Registry;

#[tokio::test]
async fn the_first_log_is_moved_once_and_read_newest_first_across_months() {
    let mut migrations = webhooks::MIGRATIONS.to_vec();
    migrations.extend(sterling_template::outbox::TEMPLATE_MIGRATIONS);
    let store: SharedStore = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
    const DAY: u64 = 86_400_000;
    let events = [
        uuid_v7_at(1_780_000_000_000, 1),
        uuid_v7_at(1_780_000_000_000 + 45 * DAY, 2),
        uuid_v7_at(1_780_000_000_000 + 100 * DAY, 3),
    ];
    for event_id in &events {
        let row = Row::new()
            .with("webhook_id", "wh-1")
            .with("event_id", event_id.as_str())
            .with("event_type", "card.authorisation.approved")
            .with("account_id", "acc-1")
            .with("status", "delivered")
            .with("attempts", 1i64)
            .with("created_at", Value::Timestamp(1));
        store
            .apply(vec![Mutation::insert("deliveries", row)])
            .await
            .unwrap();
    }
    let policy = UrlPolicy::default();
    let dispatcher = Dispatcher::new(
        store.clone(),
        Registry::new(store.clone(), policy),
        vec![Duration::from_secs(1)],
        Duration::from_secs(1),
        policy,
    )
    .unwrap();
    assert_eq!(dispatcher.move_first_table().await.unwrap(), 3);
    assert_eq!(
        dispatcher.move_first_table().await.unwrap(),
        0,
        "moved once"
    );

    let log = dispatcher.log("wh-1", 10).await.unwrap();
    let read: Vec<&str> = log.iter().map(|d| d.event_id.as_str()).collect();
    let newest_first: Vec<&str> = events.iter().rev().map(String::as_str).collect();
    assert_eq!(read, newest_first);
    assert!(
        log.iter()
            .all(|d| d.status == "delivered" && d.attempts == 1)
    );
    assert_eq!(
        dispatcher.log("wh-1", 2).await.unwrap().len(),
        2,
        "the limit holds"
    );
}
