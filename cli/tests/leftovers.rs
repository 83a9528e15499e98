//! Run last in `make test-engines`: every test removed what it made on the engines. A test
//! bank's namespace is `t` and hex digits; its keyspaces (`<namespace>_<service>`), its event
//! stream (`<NAMESPACE>_EVENTS`) and its discovery bucket (`<namespace>_discovery`) must all be
//! gone.

mod common;

use futures::StreamExt;

/// Whether `name` starts with a test namespace (`t` and at least 12 hex digits), or is one
/// of the storage conformance suite's keyspaces made per run.
fn of_a_test(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let name = name.strip_prefix("kv_").unwrap_or(&name);
    if name.starts_with("sterling_test_race_") {
        return true;
    }
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let digits = rest.chars().take_while(|c| c.is_ascii_hexdigit()).count();
    digits >= 12 && rest[digits..].starts_with('_')
}

#[tokio::test]
#[ignore = "needs Cassandra and NATS: make test-engines, after every other test"]
async fn tests_leave_no_keyspace_stream_or_bucket_behind() {
    let keyspaces: Vec<String> = common::keyspaces()
        .await
        .into_iter()
        .filter(|name| of_a_test(name))
        .collect();

    let url = std::env::var("STERLING_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let jetstream = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut names = jetstream.stream_names();
    let mut streams = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.unwrap();
        if of_a_test(&name) {
            streams.push(name);
        }
    }
    assert!(
        keyspaces.is_empty() && streams.is_empty(),
        "left behind: keyspaces {keyspaces:?}, streams and buckets {streams:?}"
    );
}

#[test]
fn test_namespaces_are_told_apart() {
    assert!(of_a_test("t8f0750d22db2_ledger"));
    assert!(of_a_test("T8DB45F2B6333_EVENTS"));
    assert!(of_a_test("KV_t8f0750d22db2_discovery"));
    assert!(!of_a_test("acceptance_ledger"));
    assert!(!of_a_test("sterling_ledger"));
    assert!(!of_a_test("tables_x"));
    assert!(of_a_test("sterling_test_race_a1b2c3"));
    assert!(!of_a_test("sterling_test_conformance"));
}
