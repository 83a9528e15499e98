//! The bus conformance suite on the embedded backend, plus persistence across reopen.

use std::time::Duration;

use sterling_bus::conformance::{self, event};
use sterling_bus::embedded::{BusOptions, SqliteBus};
use sterling_bus::{Bus, ConsumerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_bus_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(&dir.path().join("bus.sqlite")).unwrap();
    conformance::run_all(&bus, "t1.").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_events_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sqlite");
    let config = ConsumerConfig {
        ack_wait: Duration::from_millis(200),
        ..ConsumerConfig::new("feed", &["card.>"])
    };
    {
        let bus = SqliteBus::open(&path).unwrap();
        bus.publish(&event("e1", "card.authorisation.approved"))
            .await
            .unwrap();
        bus.publish(&event("e2", "card.authorisation.approved"))
            .await
            .unwrap();
        let mut sub = bus.subscribe(config.clone()).await.unwrap();
        let first = sub.next().await.unwrap();
        assert_eq!(first.envelope.event_id, "e1");
        first.ack().await.unwrap();
        // e2 is taken but the process "dies" before acking it.
        let _taken = sub.next().await.unwrap();
    }
    let bus = SqliteBus::open(&path).unwrap();
    let mut sub = bus.subscribe(config).await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.envelope.event_id, "e2");
    assert_eq!(again.attempt, 2);
    again.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_each_stored_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sqlite");
    let subject = "card.authorisation.approved";
    let mut acks = Vec::new();
    {
        let bus = SqliteBus::open(&path).unwrap();
        // 100 events, each published twice at once: publishes queued together share a commit.
        let mut publishing = tokio::task::JoinSet::new();
        for copy in 0..2 {
            for i in 0..100 {
                let bus = bus.clone();
                publishing.spawn(async move {
                    let ack = bus.publish(&event(&format!("g{i}"), subject)).await;
                    (i, copy, ack.unwrap())
                });
            }
        }
        while let Some(done) = publishing.join_next().await {
            acks.push(done.unwrap());
        }
    }
    for i in 0..100 {
        let copies: Vec<_> = acks.iter().filter(|(n, _, _)| *n == i).collect();
        assert_eq!(copies.len(), 2);
        assert_eq!(
            copies[0].2.sequence, copies[1].2.sequence,
            "one sequence per event"
        );
        assert_eq!(
            copies.iter().filter(|(_, _, a)| !a.duplicate).count(),
            1,
            "exactly one copy stored it: {copies:?}"
        );
    }
    let mut sequences: Vec<u64> = acks.iter().map(|(_, _, a)| a.sequence).collect();
    sequences.sort_unstable();
    sequences.dedup();
    assert_eq!(sequences.len(), 100);
    // Every answered publish is in the file after the bus is gone.
    let bus = SqliteBus::open(&path).unwrap();
    let stored = bus.browse(subject, 0, 1000).await.unwrap();
    assert_eq!(stored.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_ahead_log_is_checkpointed_into_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sqlite");
    let bus = SqliteBus::open(&path).unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    // One at a time: every publish its own commit, each appending pages to the WAL.
    for i in 0..2_000 {
        bus.publish(&event(&format!("w{i}"), "card.authorisation.approved"))
            .await
            .unwrap();
    }
    let wal = dir.path().join("bus.sqlite-wal");
    assert!(size(&wal) > 1_000_000, "the WAL holds the commits");
    // Only a checkpoint writes the database file itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while size(&path) < 200_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing checkpointed: database {} bytes, WAL {} bytes",
            size(&path),
            size(&wal)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cursor of durable `durable` in the bus file at `path`.
fn cursor_of(path: &std::path::Path, durable: &str) -> i64 {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .query_row(
            "SELECT cursor FROM consumers WHERE durable = ?1",
            [durable],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_a_quiet_subject_keeps_up_with_a_busy_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.sqlite");
    let bus = SqliteBus::open(&path).unwrap();
    let mut quiet = bus
        .subscribe(ConsumerConfig::new("quiet", &["card.payment.*"]))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { quiet.next().await.map(|d| d.envelope.event_id) });
    // Other subjects, published without a pause of the idle poll's length, past a page's worth.
    let mut published = 0;
    let started = tokio::time::Instant::now();
    while published < 600 || started.elapsed() < Duration::from_millis(900) {
        let id = format!("busy-{published}");
        bus.publish(&event(&id, "card.authorisation.approved"))
            .await
            .unwrap();
        published += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // It looked while they were being published (at least every idle poll), and read past
    // every page of them rather than one page a look.
    let cursor = cursor_of(&path, "quiet");
    assert!(
        cursor > 512,
        "the quiet consumer's cursor is at {cursor} of {published}"
    );
    bus.publish(&event("wanted", "card.payment.cleared"))
        .await
        .unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wanted event is delivered")
        .unwrap()
        .unwrap();
    assert_eq!(delivered, "wanted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_their_age_are_removed_with_their_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let options = BusOptions {
        max_age: Duration::from_millis(300),
        ..BusOptions::default()
    };
    let bus = SqliteBus::open_with(&dir.path().join("bus.sqlite"), options).unwrap();
    let config = ConsumerConfig::new("feed", &["card.>"]);
    for id in ["old-1", "old-2", "old-3"] {
        bus.publish(&event(id, "card.authorisation.approved"))
            .await
            .unwrap();
    }
    let mut sub = bus.subscribe(config.clone()).await.unwrap();
    // Taken and never settled: its pending delivery goes with its message.
    let taken = sub.next().await.unwrap();
    assert_eq!(taken.envelope.event_id, "old-1");
    assert_eq!(bus.backlog(&config).await.unwrap(), 3);

    tokio::time::sleep(Duration::from_millis(500)).await;
    // A write lets the writer take its next step of retention, right after it answers the
    // write (so the step may still be running when the publish returns).
    bus.publish(&event("new", "card.authorisation.approved"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let kept: Vec<String> = bus
            .browse("card.>", 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|stored| stored.envelope.event_id)
            .collect();
        if kept == ["new"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only the message younger than the age is kept: {kept:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bus.backlog(&config).await.unwrap(), 1);
    let next = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next.envelope.event_id, "new",
        "no removed message is delivered"
    );
    next.ack().await.unwrap();
    // Settling a delivery whose message was removed is harmless.
    taken.ack().await.unwrap();
    assert_eq!(bus.backlog(&config).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_within_their_age_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(&dir.path().join("bus.sqlite")).unwrap();
    for id in ["a", "b"] {
        bus.publish(&event(id, "card.authorisation.approved"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    bus.publish(&event("c", "card.authorisation.approved"))
        .await
        .unwrap();
    assert_eq!(bus.browse("card.>", 0, 100).await.unwrap().len(), 3);
}

/// A waiting consumer is told of what concerns it rather than polling for it: a nak'd delivery
/// comes back after its delay (well before the quiet poll of 5 s), and a publish wakes it at
/// once after a quiet wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_consumer_is_woken_by_a_nak_and_by_a_publish() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(&dir.path().join("bus.sqlite")).unwrap();
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(30),
        backoff: vec![Duration::from_millis(100)],
        ..ConsumerConfig::new("quiet", &["quiet.>"])
    };
    let mut sub = bus.subscribe(config).await.unwrap();
    bus.publish(&event("q1", "quiet.created")).await.unwrap();
    let first = sub.next().await.unwrap();
    first.nak().await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .expect("redelivered after the nak's delay, not the ack wait or the quiet poll")
        .unwrap();
    assert_eq!((again.envelope.event_id.as_str(), again.attempt), ("q1", 2));
    again.ack().await.unwrap();

    // Nothing for a while, then a publish.
    let publisher = bus.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        publisher
            .publish(&event("q2", "quiet.created"))
            .await
            .unwrap();
    });
    let woken = tokio::time::timeout(Duration::from_millis(3_000), sub.next())
        .await
        .expect("woken by the publish")
        .unwrap();
    assert_eq!(woken.envelope.event_id, "q2");
    woken.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_taken_together_are_handed_out_in_order_and_given_back_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let bus = SqliteBus::open(&dir.path().join("bus.sqlite")).unwrap();
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(60),
        ..ConsumerConfig::new("feed", &["card.>"])
    };
    for id in ["e1", "e2", "e3", "e4", "e5"] {
        bus.publish(&event(id, "card.authorisation.approved"))
            .await
            .unwrap();
    }
    let mut first = bus.subscribe(config.clone()).await.unwrap();
    // Room for three: e1, e2 and e3 are taken in one step, e1 handed out.
    let e1 = first.next_within(3).await.unwrap();
    let e2 = first.next_within(1).await.unwrap();
    assert_eq!(
        (e1.envelope.event_id.as_str(), e2.envelope.event_id.as_str()),
        ("e1", "e2")
    );
    e1.ack().await.unwrap();
    // e3 was taken and never handed out: dropped with the subscription, it is due again at
    // once (not after its 60 s ack wait) and not counted as a delivery.
    drop(first);
    let mut second = bus.subscribe(config).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), second.next())
            .await
            .expect("given back at once")
            .unwrap();
        seen.push((delivery.envelope.event_id.clone(), delivery.attempt));
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        seen,
        [
            ("e3".to_string(), 1),
            ("e4".to_string(), 1),
            ("e5".to_string(), 1)
        ]
    );
    // e2, handed out and not acked, stays leased to its ack wait.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.next())
            .await
            .is_err()
    );
    e2.ack().await.unwrap();
}
