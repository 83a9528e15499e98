//! One-time moves of data run once however many instances start at once: the mover renews its
//! lease while it works, so a slow move is not run twice, and a lease whose owner died lapses
//! and is taken over.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sterling_storage::embedded::SqliteStore;
use sterling_storage::{Mutation, Row, SharedStore};
use sterling_template::by_month::move_data_once_leased;
use sterling_template::outbox::TEMPLATE_MIGRATIONS;

fn store() -> SharedStore {
    Arc::new(SqliteStore::in_memory(&TEMPLATE_MIGRATIONS).unwrap())
}

/// A move that takes `time` and counts its runs; it moved 7 rows.
async fn slow_copy(runs: Arc<AtomicUsize>, time: Duration) -> sterling_template::Result<u64> {
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(time).await;
    Ok(7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_longer_than_its_lease_runs_once_for_two_starts() {
    let store = store();
    let runs = Arc::new(AtomicUsize::new(0));
    let lease = Duration::from_millis(300);
    let start = |store: SharedStore, runs: Arc<AtomicUsize>| async move {
        move_data_once_leased(&store, "a->b", lease, || {
            slow_copy(runs, Duration::from_millis(1_500))
        })
        .await
        .unwrap()
    };
    let first = tokio::spawn(start(store.clone(), runs.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(start(store.clone(), runs.clone()));
    let mut moved = [first.await.unwrap(), second.await.unwrap()];
    moved.sort();
    assert_eq!(moved, [0, 7], "one start moved, the other found it done");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the lease was renewed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_owner_died_lapses_and_is_taken_over() {
    let store = store();
    let lease = Duration::from_millis(400);
    let dead = Row::new()
        .with("name", "a->b")
        .with("state", "moving")
        .with("owner", "an instance that was killed");
    store
        .apply(vec![
            Mutation::insert_if_not_exists("data_moves", dead).with_ttl(lease),
        ])
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let moved = tokio::time::timeout(
        Duration::from_secs(10),
        move_data_once_leased(&store, "a->b", lease, || {
            slow_copy(runs.clone(), Duration::ZERO)
        }),
    )
    .await
    .expect("taken over once the lease lapsed")
    .unwrap();
    assert_eq!((moved, runs.load(Ordering::SeqCst)), (7, 1));
}
