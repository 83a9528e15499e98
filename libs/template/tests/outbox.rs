//! The outbox by minute: a staged event the fast path never published is published by the
//! relay (or dropped when its change did not happen), rows of the first outbox table are moved
//! once, and the watermark passes only minutes that are empty and settled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sterling_bus::embedded::SqliteBus;
use sterling_bus::{Bus, ConsumerConfig, Envelope};
use sterling_storage::embedded::SqliteStore;
use sterling_storage::{Mutation, Query, Row, SharedStore, Value, now_millis};
use sterling_template::Result;
use sterling_template::outbox::{self, Confirm, Outbox, TEMPLATE_MIGRATIONS, Verdict};

/// Answers what the test says for every event.
struct Told(Mutex<Verdict>);

#[async_trait]
impl Confirm for Told {
    async fn confirm(&self, _: &Envelope) -> Result<Verdict> {
        Ok(*self.0.lock().unwrap())
    }
}

/// An event whose id says it was created `ago` before now.
fn event_from(ago: Duration) -> Envelope {
    let millis = (now_millis() - ago.as_millis() as i64) as u64;
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        millis / 1000,
        (millis % 1000) as u32 * 1_000_000,
    );
    Envelope {
        event_id: uuid::Uuid::new_v7(ts).to_string(),
        r#type: "test.outbox.staged".into(),
        occurred_at_ms: millis as i64,
        payload: vec![1, 2, 3],
        ..Default::default()
    }
}

fn engines(verdict: Verdict) -> (SharedStore, Arc<dyn Bus>, Outbox, Arc<Told>) {
    let store: SharedStore = Arc::new(SqliteStore::in_memory(&TEMPLATE_MIGRATIONS).unwrap());
    let bus: Arc<dyn Bus> = Arc::new(SqliteBus::in_memory().unwrap());
    let told = Arc::new(Told(Mutex::new(verdict)));
    let outbox = Outbox::new(store.clone(), bus.clone(), told.clone(), Duration::ZERO);
    (store, bus, outbox, told)
}

async fn published(bus: &Arc<dyn Bus>) -> Vec<String> {
    let mut config = ConsumerConfig::new("test", &["test.outbox.>"]);
    config.ack_wait = Duration::from_secs(60);
    let mut subscription = bus.subscribe(config).await.unwrap();
    let mut ids = Vec::new();
    while let Ok(Ok(delivery)) =
        tokio::time::timeout(Duration::from_millis(300), subscription.next()).await
    {
        ids.push(delivery.envelope.event_id.clone());
        delivery.ack().await.unwrap();
    }
    ids
}

async fn staged_rows(store: &SharedStore, table_partitions: Vec<Row>, table: &str) -> usize {
    let mut n = 0;
    for partition in table_partitions {
        n += store
            .query(Query::partition(table, partition))
            .await
            .unwrap()
            .len();
    }
    n
}

async fn watermark(store: &SharedStore) -> i64 {
    let key = Row::new().with("name", "relay");
    let row = store.get("outbox_progress", &key).await.unwrap().unwrap();
    row.i64("minute").unwrap()
}

fn minute_partitions(minute: i64) -> Vec<Row> {
    (0..8)
        .map(|shard| Row::new().with("minute", minute).with("shard", shard))
        .collect()
}

#[tokio::test]
async fn an_event_staged_and_never_published_is_published_by_the_relay_once() {
    let (store, bus, outbox, _) = engines(Verdict::Publish);
    let event = event_from(Duration::ZERO);
    outbox.stage(&event).await.unwrap();
    assert_eq!(outbox.relay_once().await.unwrap(), 1);
    assert_eq!(outbox.relay_once().await.unwrap(), 0, "published once");
    assert_eq!(published(&bus).await, vec![event.event_id.clone()]);
    let minute = now_millis().div_euclid(60_000);
    let left = staged_rows(
        &store,
        [minute - 1, minute]
            .into_iter()
            .flat_map(minute_partitions)
            .collect(),
        "staged_events",
    )
    .await;
    assert_eq!(left, 0, "the published event is no longer staged");
}

#[tokio::test]
async fn an_event_whose_change_did_not_happen_is_dropped_unpublished() {
    let (_, bus, outbox, _) = engines(Verdict::Discard);
    outbox.stage(&event_from(Duration::ZERO)).await.unwrap();
    assert_eq!(outbox.relay_once().await.unwrap(), 0);
    assert!(published(&bus).await.is_empty());
}

#[tokio::test]
async fn rows_of_the_first_outbox_are_moved_once_and_published() {
    let (store, bus, outbox, _) = engines(Verdict::Publish);
    let old = event_from(Duration::from_secs(300));
    let row = Row::new()
        .with("shard", 3i64)
        .with("event_id", old.event_id.as_str())
        .with("type", old.r#type.as_str())
        .with("envelope", prost::Message::encode_to_vec(&old))
        .with("staged_at", Value::Timestamp(old.occurred_at_ms));
    store
        .apply(vec![Mutation::insert("outbox", row)])
        .await
        .unwrap();

    assert_eq!(outbox.relay_once().await.unwrap(), 1);
    assert_eq!(published(&bus).await, vec![old.event_id.clone()]);
    let first = (0..8)
        .map(|shard| Row::new().with("shard", shard as i64))
        .collect();
    assert_eq!(
        staged_rows(&store, first, "outbox").await,
        0,
        "the first outbox is emptied"
    );
    assert_eq!(outbox.relay_once().await.unwrap(), 0);
}

#[tokio::test]
async fn the_watermark_waits_at_an_unconfirmed_event_and_passes_settled_empty_minutes() {
    let (store, bus, outbox, told) = engines(Verdict::Wait);
    let waiting = event_from(Duration::from_secs(240));
    let waiting_minute = (waiting.occurred_at_ms).div_euclid(60_000);
    outbox.stage(&waiting).await.unwrap();

    outbox.relay_once().await.unwrap();
    assert_eq!(
        watermark(&store).await,
        waiting_minute,
        "stops at the minute still holding a row"
    );
    assert!(published(&bus).await.is_empty());

    *told.0.lock().unwrap() = Verdict::Publish;
    assert_eq!(outbox.relay_once().await.unwrap(), 1);
    outbox.relay_once().await.unwrap();
    let settled = (now_millis() - 60_000).div_euclid(60_000);
    let mark = watermark(&store).await;
    assert!(mark > waiting_minute, "passes the minute once it is empty");
    assert!(
        mark <= settled,
        "never passes a minute that may still receive a late write"
    );
    assert_eq!(published(&bus).await, vec![waiting.event_id]);
}

#[tokio::test]
async fn a_derived_event_is_the_same_each_time_and_found_by_the_relay_however_late() {
    let (store, bus, outbox, _) = engines(Verdict::Publish);
    let hour_ago = now_millis() - 3_600_000;
    let make = |cause: &str| outbox::derived_event("test.outbox.derived", &(), cause, hour_ago);
    let event = make("tx-1");
    assert_eq!(
        make("tx-1").event_id,
        event.event_id,
        "the same cause, the same id"
    );
    assert_ne!(make("tx-2").event_id, event.event_id);
    assert_eq!(
        sterling_storage::uuid_v7_millis(&event.event_id),
        Some(hour_ago),
        "a UUIDv7 of the cause's time"
    );

    // The relay has passed the id's minute long ago; the event is staged in its own minute.
    outbox.relay_once().await.unwrap();
    assert!(watermark(&store).await > hour_ago.div_euclid(60_000));
    outbox.stage(&event).await.unwrap();
    outbox.stage(&make("tx-1")).await.unwrap();
    assert!(outbox.relay_once().await.unwrap() >= 1);
    let mut config = ConsumerConfig::new("derived", &["test.outbox.derived"]);
    config.ack_wait = Duration::from_secs(60);
    let mut subscription = bus.subscribe(config).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(2), subscription.next())
        .await
        .expect("published")
        .unwrap();
    assert_eq!(delivery.envelope.event_id, event.event_id);
}

#[tokio::test]
async fn a_row_staged_under_another_minute_is_removed_where_it_was_found() {
    let (store, bus, outbox, _) = engines(Verdict::Publish);
    let event = event_from(Duration::ZERO);
    // Staged by a build that took the minute from elsewhere: a minute before the event's.
    let minute = event.occurred_at_ms.div_euclid(60_000) - 1;
    let row = Row::new()
        .with("minute", minute)
        .with("shard", 5i64)
        .with("event_id", event.event_id.as_str())
        .with("type", event.r#type.as_str())
        .with("envelope", prost::Message::encode_to_vec(&event))
        .with("staged_at", Value::Timestamp(event.occurred_at_ms));
    store
        .apply(vec![Mutation::insert("staged_events", row)])
        .await
        .unwrap();
    assert_eq!(outbox.relay_once().await.unwrap(), 1);
    assert_eq!(outbox.relay_once().await.unwrap(), 0, "published once");
    assert_eq!(
        staged_rows(&store, minute_partitions(minute), "staged_events").await,
        0
    );
    assert_eq!(published(&bus).await, vec![event.event_id]);
}
