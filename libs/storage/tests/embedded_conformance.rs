//! The conformance suite on the embedded SQLite backend, plus persistence across reopen.

use sterling_storage::conformance::{self, MIGRATIONS};
use sterling_storage::embedded::{Durability, SqliteStore};
use sterling_storage::{Mutation, Row, Store};

#[tokio::test]
async fn embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open(&dir.path().join("c.sqlite"), MIGRATIONS, Durability::Normal).unwrap();
    conformance::run_all(&store, "t1-").await;
}

#[tokio::test]
async fn data_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sqlite");
    {
        let store = SqliteStore::open(&path, MIGRATIONS, Durability::Full).unwrap();
        store
            .apply(vec![Mutation::insert(
                "kv",
                Row::new().with("id", "kept").with("body", "still here"),
            )])
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path, MIGRATIONS, Durability::Full).unwrap();
    let row = store
        .get("kv", &Row::new().with("id", "kept"))
        .await
        .unwrap()
        .expect("row survives reopen");
    assert_eq!(row.text("body").unwrap(), "still here");
}

#[tokio::test]
async fn writes_that_do_not_fit_the_schema_are_refused() {
    let store = SqliteStore::in_memory(MIGRATIONS).unwrap();
    let wrong_type = Row::new().with("id", "x").with("n", "not a number");
    assert!(
        store
            .apply(vec![Mutation::insert("kv", wrong_type)])
            .await
            .is_err()
    );
    let unknown_column = Row::new().with("id", "x").with("nope", 1i64);
    assert!(
        store
            .apply(vec![Mutation::insert("kv", unknown_column)])
            .await
            .is_err()
    );
    let no_key = Row::new().with("body", "x");
    assert!(
        store
            .apply(vec![Mutation::insert("kv", no_key)])
            .await
            .is_err()
    );
    assert!(
        store
            .get("kv", &Row::new().with("id", "x"))
            .await
            .unwrap()
            .is_none()
    );
}

/// Group commit: many writers at once, on a file with fsync on every commit. Each contended
/// compare-and-set has exactly one winner whose row is stored; a writer whose batch is refused
/// gets its own error and takes nobody's write with it; every answer is a write that is
/// there when read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits_without_sharing_outcomes() {
    use std::sync::Arc;
    use sterling_storage::Applied;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("g.sqlite"), MIGRATIONS, Durability::Full).unwrap(),
    );
    let mut writers = tokio::task::JoinSet::new();
    for key in 0..8 {
        for contender in 0..8 {
            let store = store.clone();
            writers.spawn(async move {
                let row = Row::new()
                    .with("id", format!("key-{key}"))
                    .with("body", format!("contender-{contender}"));
                let applied = store
                    .apply(vec![Mutation::insert_if_not_exists("kv", row)])
                    .await;
                (key, contender, applied)
            });
        }
        let store = store.clone();
        writers.spawn(async move {
            let bad = Row::new()
                .with("id", format!("bad-{key}"))
                .with("n", "not a number");
            let refused = store.apply(vec![Mutation::insert("kv", bad)]).await;
            (key, usize::MAX, refused)
        });
    }
    let mut winners = std::collections::BTreeMap::new();
    while let Some(joined) = writers.join_next().await {
        let (key, contender, applied) = joined.unwrap();
        match (contender, applied) {
            (usize::MAX, refused) => assert!(refused.is_err(), "a bad row is refused"),
            (_, Ok(Applied::Yes)) => {
                assert!(
                    winners.insert(key, contender).is_none(),
                    "two winners for {key}"
                )
            }
            (_, Ok(Applied::No(_))) => {}
            (_, Err(e)) => panic!("a good write failed: {e}"),
        }
    }
    assert_eq!(winners.len(), 8, "one winner per key: {winners:?}");
    for (key, contender) in winners {
        let row = store
            .get("kv", &Row::new().with("id", format!("key-{key}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.text("body").unwrap(), format!("contender-{contender}"));
        let bad = Row::new().with("id", format!("bad-{key}"));
        assert!(store.get("kv", &bad).await.unwrap().is_none());
    }
}
