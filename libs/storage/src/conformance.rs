//! The storage conformance suite: the semantics every [`Store`] backend must share.
//!
//! Each backend's tests open a store with [`MIGRATIONS`] and call [`run_all`]; the assertions
//! are the same for SQLite and Cassandra.

use std::time::Duration;

use crate::{Applied, Condition, Migration, Mutation, Query, Row, Store, Value};

/// The schema the suite runs against.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "0001_conformance.cql",
    cql: "CREATE TABLE IF NOT EXISTS kv (id text PRIMARY KEY, body text, n bigint, flag boolean, at timestamp, raw blob, ref uuid);
          CREATE TABLE IF NOT EXISTS journal (owner text, seq bigint, label text, PRIMARY KEY ((owner), seq)) WITH CLUSTERING ORDER BY (seq DESC);
          CREATE TABLE IF NOT EXISTS pairs (owner text, a text, b bigint, v text, PRIMARY KEY ((owner), a, b));",
}, Migration {
    version: 2,
    name: "0002_versioned.cql",
    cql: "CREATE TABLE IF NOT EXISTS versioned (id text PRIMARY KEY, version bigint, body text);",
}];

/// Runs every check in order, each on its own keys so they do not interfere.
pub async fn run_all(store: &dyn Store, prefix: &str) {
    round_trips_every_type(store, prefix).await;
    insert_is_an_upsert_of_given_columns(store, prefix).await;
    insert_if_not_exists_is_compare_and_set(store, prefix).await;
    conditional_update_compares_then_sets(store, prefix).await;
    conditional_batch_is_all_or_nothing(store, prefix).await;
    conditional_batch_must_stay_in_one_partition(store, prefix).await;
    partitions_read_in_clustering_order_with_cursor(store, prefix).await;
    composite_clustering_cursor(store, prefix).await;
    ttl_expires_rows(store, prefix).await;
    rewriting_a_row_with_a_ttl_expires_it_whole(store, prefix).await;
    delete_if_exists(store, prefix).await;
    batches_in_order_see_each_other(store, prefix).await;
    scan_reads_every_row_once_in_pages(store, prefix).await;
    lazy_writes_apply_as_writes_do(store, prefix).await;
    insert_newest_keeps_the_highest_version(store, prefix).await;
    store.check().await.expect("health check");
}

fn key(id: &str) -> Row {
    Row::new().with("id", id)
}

/// Every column type survives a write and a read.
pub async fn round_trips_every_type(store: &dyn Store, p: &str) {
    let id = format!("{p}types");
    let reference = uuid::Uuid::now_v7();
    let row = key(&id)
        .with("body", "héllo")
        .with("n", -42i64)
        .with("flag", true)
        .with("at", Value::Timestamp(1_700_000_000_123))
        .with("raw", vec![0u8, 1, 255])
        .with("ref", reference);
    assert!(
        store
            .apply(vec![Mutation::insert("kv", row.clone())])
            .await
            .unwrap()
            .applied()
    );
    let read = store.get("kv", &key(&id)).await.unwrap().expect("row");
    assert_eq!(read, row);
    assert_eq!(read.text("body").unwrap(), "héllo");
    assert_eq!(read.i64("n").unwrap(), -42);
    assert!(read.bool("flag").unwrap());
    assert_eq!(read.timestamp("at").unwrap(), 1_700_000_000_123);
    assert_eq!(read.blob("raw").unwrap(), &[0u8, 1, 255]);
    assert_eq!(read.uuid("ref").unwrap(), reference);
    assert!(store.get("kv", &key("absent")).await.unwrap().is_none());
}

/// An insert writes only the columns it names and leaves the others.
pub async fn insert_is_an_upsert_of_given_columns(store: &dyn Store, p: &str) {
    let id = format!("{p}upsert");
    store
        .apply(vec![Mutation::insert(
            "kv",
            key(&id).with("body", "a").with("n", 1i64),
        )])
        .await
        .unwrap();
    store
        .apply(vec![Mutation::insert("kv", key(&id).with("n", 2i64))])
        .await
        .unwrap();
    let row = store.get("kv", &key(&id)).await.unwrap().unwrap();
    assert_eq!(row.text("body").unwrap(), "a");
    assert_eq!(row.i64("n").unwrap(), 2);
}

/// `IF NOT EXISTS` applies once and then reports the current row.
pub async fn insert_if_not_exists_is_compare_and_set(store: &dyn Store, p: &str) {
    let id = format!("{p}cas");
    let first = store
        .apply(vec![Mutation::insert_if_not_exists(
            "kv",
            key(&id).with("body", "first"),
        )])
        .await
        .unwrap();
    assert_eq!(first, Applied::Yes);
    let second = store
        .apply(vec![Mutation::insert_if_not_exists(
            "kv",
            key(&id).with("body", "second"),
        )])
        .await
        .unwrap();
    match second {
        Applied::No(current) => {
            assert_eq!(current.len(), 1);
            assert_eq!(current[0].as_ref().unwrap().text("body").unwrap(), "first");
        }
        Applied::Yes => panic!("second IF NOT EXISTS must not apply"),
    }
}

/// `IF col = v` applies only when the row exists with that value.
pub async fn conditional_update_compares_then_sets(store: &dyn Store, p: &str) {
    let id = format!("{p}version");
    let update = |expected: i64, next: i64| {
        Mutation::update(
            "kv",
            key(&id),
            Row::new().with("n", next),
            vec![Condition::Equals("n".into(), Value::BigInt(expected))],
        )
    };
    // No row yet: a conditional update does not create one.
    assert!(!store.apply(vec![update(0, 1)]).await.unwrap().applied());
    assert!(store.get("kv", &key(&id)).await.unwrap().is_none());
    store
        .apply(vec![Mutation::insert("kv", key(&id).with("n", 0i64))])
        .await
        .unwrap();
    assert!(store.apply(vec![update(0, 1)]).await.unwrap().applied());
    assert!(!store.apply(vec![update(0, 2)]).await.unwrap().applied());
    assert_eq!(
        store
            .get("kv", &key(&id))
            .await
            .unwrap()
            .unwrap()
            .i64("n")
            .unwrap(),
        1
    );
}

/// Conditional mutations on several rows of one partition apply together or not at all.
pub async fn conditional_batch_is_all_or_nothing(store: &dyn Store, p: &str) {
    let owner = format!("{p}batch");
    let entry = |seq: i64, label: &str| {
        Row::new()
            .with("owner", owner.as_str())
            .with("seq", seq)
            .with("label", label)
    };
    store
        .apply(vec![Mutation::insert("journal", entry(0, "summary"))])
        .await
        .unwrap();
    let batch = |label: &str| {
        vec![
            Mutation::insert_if_not_exists("journal", entry(1, label)),
            Mutation::update(
                "journal",
                Row::new().with("owner", owner.as_str()).with("seq", 0i64),
                Row::new().with("label", label),
                vec![Condition::Equals("label".into(), "summary".into())],
            ),
        ]
    };
    assert!(store.apply(batch("one")).await.unwrap().applied());
    // Both conditions now fail; nothing of the second batch may be written.
    let again = store.apply(batch("two")).await.unwrap();
    assert!(!again.applied());
    let rows = store
        .query(Query::partition(
            "journal",
            Row::new().with("owner", owner.as_str()),
        ))
        .await
        .unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r.text("label").unwrap()).collect();
    assert_eq!(labels, vec!["one", "one"]);
}

/// A conditional batch across partitions is refused, not half applied.
pub async fn conditional_batch_must_stay_in_one_partition(store: &dyn Store, p: &str) {
    let a = format!("{p}part-a");
    let b = format!("{p}part-b");
    let result = store
        .apply(vec![
            Mutation::insert_if_not_exists("kv", key(&a)),
            Mutation::insert_if_not_exists("kv", key(&b)),
        ])
        .await;
    assert!(result.is_err());
    assert!(store.get("kv", &key(&a)).await.unwrap().is_none());
}

/// Rows come back in clustering order (here descending), with limits, ranges and cursors.
pub async fn partitions_read_in_clustering_order_with_cursor(store: &dyn Store, p: &str) {
    let owner = format!("{p}order");
    let mut batch = Vec::new();
    for seq in [3i64, 1, 5, 2, 4] {
        batch.push(Mutation::insert(
            "journal",
            Row::new()
                .with("owner", owner.as_str())
                .with("seq", seq)
                .with("label", format!("e{seq}")),
        ));
    }
    store.apply(batch).await.unwrap();
    let partition = Row::new().with("owner", owner.as_str());
    let page = store
        .query(Query::partition("journal", partition.clone()).limit(2))
        .await
        .unwrap();
    let seqs: Vec<i64> = page.iter().map(|r| r.i64("seq").unwrap()).collect();
    assert_eq!(seqs, vec![5, 4]);
    let next = store
        .query(Query {
            after: Some(page[1].clone()),
            ..Query::partition("journal", partition.clone()).limit(2)
        })
        .await
        .unwrap();
    let seqs: Vec<i64> = next.iter().map(|r| r.i64("seq").unwrap()).collect();
    assert_eq!(seqs, vec![3, 2]);
    let ranged = store
        .query(Query {
            from: Some(Value::BigInt(2)),
            to: Some(Value::BigInt(4)),
            ..Query::partition("journal", partition)
        })
        .await
        .unwrap();
    let seqs: Vec<i64> = ranged.iter().map(|r| r.i64("seq").unwrap()).collect();
    assert_eq!(seqs, vec![3, 2]);
}

/// A cursor over two clustering columns resumes exactly after the last row.
pub async fn composite_clustering_cursor(store: &dyn Store, p: &str) {
    let owner = format!("{p}pairs");
    let mut batch = Vec::new();
    for (a, b) in [("x", 2i64), ("x", 1), ("y", 1), ("w", 9)] {
        batch.push(Mutation::insert(
            "pairs",
            Row::new()
                .with("owner", owner.as_str())
                .with("a", a)
                .with("b", b)
                .with("v", format!("{a}{b}")),
        ));
    }
    store.apply(batch).await.unwrap();
    let partition = Row::new().with("owner", owner.as_str());
    let all = store
        .query(Query::partition("pairs", partition.clone()))
        .await
        .unwrap();
    let values: Vec<&str> = all.iter().map(|r| r.text("v").unwrap()).collect();
    assert_eq!(values, vec!["w9", "x1", "x2", "y1"]);
    let rest = store
        .query(Query {
            after: Some(all[1].clone()),
            ..Query::partition("pairs", partition)
        })
        .await
        .unwrap();
    let values: Vec<&str> = rest.iter().map(|r| r.text("v").unwrap()).collect();
    assert_eq!(values, vec!["x2", "y1"]);
}

/// A row written with a TTL disappears after it, and its key can be claimed again.
pub async fn ttl_expires_rows(store: &dyn Store, p: &str) {
    let id = format!("{p}ttl");
    let claim = || {
        Mutation::insert_if_not_exists("kv", key(&id).with("body", "claimed"))
            .with_ttl(Duration::from_secs(1))
    };
    assert!(store.apply(vec![claim()]).await.unwrap().applied());
    assert!(store.get("kv", &key(&id)).await.unwrap().is_some());
    assert!(!store.apply(vec![claim()]).await.unwrap().applied());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(store.get("kv", &key(&id)).await.unwrap().is_none());
    assert!(store.apply(vec![claim()]).await.unwrap().applied());
}

/// A row written without a TTL and rewritten, every column, with one (in a conditional batch
/// on a neighbour row of its partition) disappears after it; the neighbour stays.
pub async fn rewriting_a_row_with_a_ttl_expires_it_whole(store: &dyn Store, p: &str) {
    let owner = format!("{p}rewrite");
    let row = |seq: i64, label: &str| {
        Row::new()
            .with("owner", owner.as_str())
            .with("seq", seq)
            .with("label", label)
    };
    store
        .apply(vec![
            Mutation::insert("journal", row(1, "balance")),
            Mutation::insert("journal", row(2, "open")),
        ])
        .await
        .unwrap();
    let key = |seq: i64| Row::new().with("owner", owner.as_str()).with("seq", seq);
    let batch = vec![
        Mutation::update(
            "journal",
            key(1),
            Row::new().with("label", "balance 2"),
            vec![Condition::Equals("label".into(), "balance".into())],
        ),
        Mutation::insert("journal", row(2, "finished")).with_ttl(Duration::from_secs(1)),
    ];
    assert!(store.apply(batch).await.unwrap().applied());
    let finished = store.get("journal", &key(2)).await.unwrap().unwrap();
    assert_eq!(finished.text("label").unwrap(), "finished");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(store.get("journal", &key(2)).await.unwrap().is_none());
    let rows = store
        .query(Query::partition(
            "journal",
            Row::new().with("owner", owner.as_str()),
        ))
        .await
        .unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r.text("label").unwrap()).collect();
    assert_eq!(labels, vec!["balance 2"]);
}

/// `DELETE ... IF EXISTS` reports whether there was a row.
pub async fn delete_if_exists(store: &dyn Store, p: &str) {
    let id = format!("{p}delete");
    let delete = || Mutation::Delete {
        table: "kv".into(),
        key: key(&id),
        if_exists: true,
    };
    assert!(!store.apply(vec![delete()]).await.unwrap().applied());
    store
        .apply(vec![Mutation::insert("kv", key(&id).with("n", 1i64))])
        .await
        .unwrap();
    assert!(store.apply(vec![delete()]).await.unwrap().applied());
    assert!(store.get("kv", &key(&id)).await.unwrap().is_none());
}

/// Batches applied in order behave as one `apply` after another: each keeps its own
/// conditions and sees what the earlier ones wrote, whatever the other tables involved.
pub async fn batches_in_order_see_each_other(store: &dyn Store, p: &str) {
    let id = format!("{p}ordered");
    let journal = Row::new()
        .with("owner", id.as_str())
        .with("seq", 1i64)
        .with("label", "opened");
    let outcomes = store
        .apply_in_order(vec![
            vec![Mutation::insert("journal", journal)],
            vec![Mutation::insert_if_not_exists(
                "kv",
                key(&id).with("body", "first"),
            )],
            vec![Mutation::insert_if_not_exists(
                "kv",
                key(&id).with("body", "second"),
            )],
        ])
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].applied() && outcomes[1].applied());
    match &outcomes[2] {
        Applied::No(current) => {
            let row = current[0].as_ref().expect("the row the second batch wrote");
            assert_eq!(row.text("body").unwrap(), "first");
        }
        Applied::Yes => panic!("a later batch must see the earlier one's write"),
    }
    let stored = store.get("kv", &key(&id)).await.unwrap().unwrap();
    assert_eq!(stored.text("body").unwrap(), "first");
    let rows = store
        .query(Query::partition(
            "journal",
            Row::new().with("owner", id.as_str()),
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

/// A scan in small pages reads every row of the table exactly once.
pub async fn scan_reads_every_row_once_in_pages(store: &dyn Store, p: &str) {
    let owner = format!("{p}scan");
    let writes = (0..7i64)
        .map(|seq| {
            let row = Row::new()
                .with("owner", owner.as_str())
                .with("seq", seq)
                .with("label", format!("row {seq}"));
            Mutation::insert("journal", row)
        })
        .collect();
    store.apply(writes).await.unwrap();
    let (mut seen, mut page, mut pages) = (Vec::new(), None, 0);
    loop {
        let (rows, next) = store.scan("journal", page, 3).await.unwrap();
        pages += 1;
        assert!(rows.len() <= 3, "a page holds at most its size");
        seen.extend(
            rows.iter()
                .filter(|r| r.text("owner").unwrap() == owner)
                .map(|r| r.i64("seq").unwrap()),
        );
        match next {
            Some(token) => page = Some(token),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, (0..7).collect::<Vec<_>>(), "every row once");
    assert!(pages >= 3, "read in pages");
}

/// A lazy write is a write: applied atomically, visible at once, with the same conditions.
pub async fn lazy_writes_apply_as_writes_do(store: &dyn Store, p: &str) {
    let id = format!("{p}lazy");
    let claim = |body: &str| {
        vec![Mutation::insert_if_not_exists(
            "kv",
            key(&id).with("body", body),
        )]
    };
    assert_eq!(
        store.apply_lazily(claim("first")).await.unwrap(),
        Applied::Yes
    );
    let read = store.get("kv", &key(&id)).await.unwrap().expect("row");
    assert_eq!(read.text("body").unwrap(), "first");
    match store.apply_lazily(claim("second")).await.unwrap() {
        Applied::No(current) => {
            assert_eq!(current[0].as_ref().unwrap().text("body").unwrap(), "first");
        }
        Applied::Yes => panic!("a lazy IF NOT EXISTS must not apply twice"),
    }
    assert!(!store.apply(claim("third")).await.unwrap().applied());
}

/// An insert of the newest version replaces a lower version only, in whatever order the
/// versions arrive, repeats included; it has its version and is never part of a conditional
/// batch.
pub async fn insert_newest_keeps_the_highest_version(store: &dyn Store, p: &str) {
    let id = format!("{p}newest");
    let version = |v: i64, body: &str| {
        Mutation::insert_newest(
            "versioned",
            key(&id).with("version", v).with("body", body),
            "version",
        )
    };
    let body = || async {
        let row = store
            .get("versioned", &key(&id))
            .await
            .unwrap()
            .expect("row");
        (
            row.i64("version").unwrap(),
            row.text("body").unwrap().to_string(),
        )
    };
    for (v, text) in [
        (2, "two"),
        (1, "one"),
        (3, "three"),
        (3, "three"),
        (2, "two"),
    ] {
        assert!(store.apply(vec![version(v, text)]).await.unwrap().applied());
    }
    assert_eq!(body().await, (3, "three".to_string()));
    // In a batch of plain writes, and lazily, the same.
    store
        .apply_in_order(vec![vec![version(5, "five")], vec![version(4, "four")]])
        .await
        .unwrap();
    assert_eq!(body().await, (5, "five".to_string()));
    store.apply_lazily(vec![version(4, "four")]).await.unwrap();
    assert_eq!(body().await, (5, "five".to_string()));

    let conditional = vec![
        version(6, "six"),
        Mutation::update(
            "versioned",
            key(&id),
            Row::new().with("body", "x"),
            vec![Condition::Exists],
        ),
    ];
    assert!(store.apply(conditional).await.is_err());
    let unversioned = Mutation::insert_newest("versioned", key(&id).with("body", "x"), "version");
    assert!(store.apply(vec![unversioned]).await.is_err());
    let negative = version(-1, "minus one");
    assert!(store.apply(vec![negative]).await.is_err());
    assert_eq!(body().await, (5, "five".to_string()));
}
