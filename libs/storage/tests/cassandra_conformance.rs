//! The conformance suite on Apache Cassandra (or ScyllaDB). Needs a node: started by
//! `deploy/local/cassandra.sh up` (what `make test-engines` does); the address comes from
//! `STERLING_CASSANDRA_NODES` (default 127.0.0.1:9042). Run with `--ignored`.

use sterling_storage::cassandra::{CassandraConfig, CassandraStore};
use sterling_storage::conformance::{self, MIGRATIONS};
use sterling_storage::{Mutation, Row, Store};

async fn store(keyspace: &str) -> CassandraStore {
    CassandraStore::open(&CassandraConfig::from_env(), keyspace, MIGRATIONS)
        .await
        .expect("Cassandra is up (deploy/local/cassandra.sh up)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra: make test-engines"]
async fn cassandra_store_passes_the_conformance_suite() {
    let store = store("sterling_test_conformance").await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    conformance::run_all(&store, &format!("{run}-")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra: make test-engines"]
async fn two_instances_starting_together_apply_migrations_once() {
    let service = format!(
        "sterling_test_race_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let (a, b) = tokio::join!(store(&service), store(&service));
    let id = Row::new().with("id", "shared");
    a.apply(vec![Mutation::insert(
        "kv",
        id.clone().with("body", "from a"),
    )])
    .await
    .unwrap();
    let read = b.get("kv", &id).await.unwrap().unwrap();
    assert_eq!(read.text("body").unwrap(), "from a");
    a.drop_keyspace().await.unwrap();
}
