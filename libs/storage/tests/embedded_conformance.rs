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
