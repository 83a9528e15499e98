//! Group commit: the embedded store's one writer.
//!
//! Writers do not each take the connection and pay a commit (an fsync under `synchronous=FULL`)
//! of their own. They queue their batches to the store's writer thread, which takes everything
//! queued, applies each caller's batches in a savepoint of its own inside one transaction,
//! commits once and answers each caller. A caller is answered only after the commit that holds
//! its writes, so an answer still means "durable"; a caller whose batches fail (a bad row, a
//! SQL error) has its savepoint rolled back without touching the others; a failed commit fails
//! every caller of the group, none of whose writes happened. Conditional batches keep their
//! compare-and-set meaning: a group is the callers' batches one after the other, exactly as if
//! committed one by one in queue order.
//!
//! A caller may ask for a lazy write ([`Writer::apply_lazily`]): a group of lazy writes only is
//! committed without an fsync (`synchronous=NORMAL` for that commit) and reaches the disk with
//! the next fsynced commit or checkpoint. The WAL keeps commits in order, so a power cut can
//! lose the last lazy commits, never one before a commit that survived.
//!
//! Metrics, by store (counters: a sample kept per write would cost memory at thousands a
//! second): `sterling_embedded_store_writes_total` and `sterling_embedded_store_commits_total`
//! (their ratio is the callers per commit), `sterling_embedded_store_queued_microseconds_total`
//! (from each caller's queueing to its group's commit starting) and
//! `sterling_embedded_store_committing_microseconds_total` (how busy the writer was), and
//! `sterling_embedded_store_slow_commits_total` (groups that took longer than
//! [`sterling_sqlite::SLOW`], lock and fsync included), and
//! `sterling_embedded_store_unsynced_commits_total` (lazy groups committed without an fsync).

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use metrics::Counter;

use rusqlite::Connection;
use sterling_sqlite::{SLOW, next_group};
use tokio::sync::oneshot;

use super::{Durability, apply_in, sql_err};
use crate::schema::TableSchema;
use crate::{Applied, Mutation, Result, StorageError, validate_batch};

/// Most callers in one commit: a bound on how long the first of them waits.
const MAX_GROUP: usize = 256;

/// One caller's batches and where its answer goes.
struct Job {
    batches: Vec<Vec<Mutation>>,
    answer: oneshot::Sender<Result<Vec<Applied>>>,
    queued: Instant,
    /// Whether its commit must be fsynced before it is answered.
    sync: bool,
}

/// What the writer counts about its groups.
struct WriterMetrics {
    writes: Counter,
    commits: Counter,
    queued_us: Counter,
    committing_us: Counter,
    slow_commits: Counter,
    unsynced_commits: Counter,
}

impl WriterMetrics {
    fn new(store: &str) -> Self {
        let counter = |name: &'static str| metrics::counter!(name, "store" => store.to_string());
        WriterMetrics {
            writes: counter("sterling_embedded_store_writes_total"),
            commits: counter("sterling_embedded_store_commits_total"),
            queued_us: counter("sterling_embedded_store_queued_microseconds_total"),
            committing_us: counter("sterling_embedded_store_committing_microseconds_total"),
            slow_commits: counter("sterling_embedded_store_slow_commits_total"),
            unsynced_commits: counter("sterling_embedded_store_unsynced_commits_total"),
        }
    }
}

/// Whole microseconds of `d`.
fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The handle callers queue to; the thread stops when the last handle is dropped.
#[derive(Clone)]
pub(super) struct Writer {
    queue: Sender<Job>,
}

impl Writer {
    /// Starts the writer thread of the store named `name` on `connection`, configured for
    /// `durability`.
    pub(super) fn start(
        name: &str,
        connection: Arc<Mutex<Connection>>,
        tables: Arc<BTreeMap<String, TableSchema>>,
        durability: Durability,
    ) -> Result<Writer> {
        let (queue, jobs) = std::sync::mpsc::channel();
        let metrics = WriterMetrics::new(name);
        let fsyncs = durability == Durability::Full;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(jobs, &connection, &tables, &metrics, fsyncs))
            .map_err(|e| StorageError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Writer { queue })
    }

    /// Applies `batches` one after the other in the next group commit.
    pub(super) async fn apply(&self, batches: Vec<Vec<Mutation>>) -> Result<Vec<Applied>> {
        self.queue_job(batches, true).await
    }

    /// Applies `batches` as [`Writer::apply`] does, in a commit that need not be fsynced.
    pub(super) async fn apply_lazily(&self, batches: Vec<Vec<Mutation>>) -> Result<Vec<Applied>> {
        self.queue_job(batches, false).await
    }

    async fn queue_job(&self, batches: Vec<Vec<Mutation>>, sync: bool) -> Result<Vec<Applied>> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Job {
                batches,
                answer,
                queued: Instant::now(),
                sync,
            })
            .map_err(|_| StorageError::Unavailable("the store's writer has stopped".into()))?;
        answered
            .await
            .map_err(|_| StorageError::Unavailable("the store's writer has stopped".into()))?
    }
}

/// The writer thread: a group at a time, until every handle is gone. `fsyncs`: whether the
/// connection fsyncs its commits (`synchronous=FULL`), so lazy groups turn it off for theirs.
fn run(
    jobs: Receiver<Job>,
    connection: &Mutex<Connection>,
    tables: &BTreeMap<String, TableSchema>,
    metrics: &WriterMetrics,
    fsyncs: bool,
) {
    // What the connection does now: it was configured for the store's durability.
    let mut fsyncing = fsyncs;
    while let Some(group) = next_group(&jobs, MAX_GROUP) {
        let started = Instant::now();
        let queued: u64 = group.iter().map(|job| micros(started - job.queued)).sum();
        metrics.queued_us.increment(queued);
        metrics.writes.increment(group.len() as u64);
        metrics.commits.increment(1);
        let unsynced = fsyncs && !group.iter().any(|job| job.sync);
        if unsynced {
            metrics.unsynced_commits.increment(1);
        }
        let results = match connection.lock() {
            Ok(mut conn) => match synchronous_for(&conn, &mut fsyncing, fsyncs && !unsynced) {
                Ok(()) => commit_group(&mut conn, tables, &group),
                Err(e) => failed_all(group.len(), &e),
            },
            Err(_) => group
                .iter()
                .map(|_| Err(StorageError::Unavailable("store lock poisoned".into())))
                .collect(),
        };
        let committing = started.elapsed();
        metrics.committing_us.increment(micros(committing));
        if committing > SLOW {
            metrics.slow_commits.increment(1);
        }
        for (job, result) in group.into_iter().zip(results) {
            // A caller that gave up (its future dropped) is not waiting for the answer.
            let _ = job.answer.send(result);
        }
    }
}

/// Sets the connection's `synchronous` to what the next commit needs (`FULL` to fsync it,
/// `NORMAL` not to) if `current` says it is not that already; `current` follows.
fn synchronous_for(conn: &Connection, current: &mut bool, fsync: bool) -> rusqlite::Result<()> {
    if *current != fsync {
        let mode = if fsync { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", mode)?;
        *current = fsync;
    }
    Ok(())
}

/// Applies every job of `group` in its own savepoint of one transaction and commits once.
fn commit_group(
    conn: &mut Connection,
    tables: &BTreeMap<String, TableSchema>,
    group: &[Job],
) -> Vec<Result<Vec<Applied>>> {
    let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return failed_all(group.len(), &e),
    };
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        results.push(apply_job(&mut tx, tables, &job.batches));
    }
    match tx.commit() {
        Ok(()) => results,
        // Nothing of the group happened.
        Err(e) => results
            .into_iter()
            .map(|r| r.and_then(|_| Err(StorageError::Unavailable(e.to_string()))))
            .collect(),
    }
}

/// `n` answers of the same failure.
fn failed_all(n: usize, e: &rusqlite::Error) -> Vec<Result<Vec<Applied>>> {
    (0..n)
        .map(|_| Err(StorageError::Unavailable(e.to_string())))
        .collect()
}

/// One caller's batches in a savepoint: kept if they all apply, rolled back if one fails.
fn apply_job(
    tx: &mut rusqlite::Transaction<'_>,
    tables: &BTreeMap<String, TableSchema>,
    batches: &[Vec<Mutation>],
) -> Result<Vec<Applied>> {
    for mutations in batches {
        validate_batch(tables, mutations)?;
    }
    let savepoint = tx.savepoint().map_err(sql_err)?;
    let mut outcomes = Vec::with_capacity(batches.len());
    for mutations in batches {
        // On an error the savepoint is dropped, which rolls it back.
        outcomes.push(apply_in(&savepoint, tables, mutations)?);
    }
    savepoint.commit().map_err(sql_err)?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::MIGRATIONS;
    use crate::embedded::SqliteStore;
    use crate::{Row, Store};

    /// `PRAGMA synchronous` of `connection`: 1 is `NORMAL`, 2 is `FULL`.
    fn synchronous(connection: &Mutex<Connection>) -> i64 {
        let conn = connection.lock().unwrap();
        conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    fn insert(id: &str) -> Vec<Vec<Mutation>> {
        vec![vec![Mutation::insert("kv", Row::new().with("id", id))]]
    }

    /// A store at `path` with `durability`, and a writer of its file on a connection the
    /// test can look at.
    fn store_and_writer(
        path: &std::path::Path,
        durability: Durability,
    ) -> (SqliteStore, Arc<Mutex<Connection>>, Writer) {
        let store = SqliteStore::open(path, MIGRATIONS, durability).unwrap();
        let connection = Connection::open(path).unwrap();
        let mode = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        connection.pragma_update(None, "synchronous", mode).unwrap();
        let connection = Arc::new(Mutex::new(connection));
        let tables = Arc::new(store.tables.as_ref().clone());
        let writer = Writer::start("w", connection.clone(), tables, durability).unwrap();
        (store, connection, writer)
    }

    #[tokio::test]
    async fn a_lazy_commit_leaves_the_next_commit_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, connection, writer) =
            store_and_writer(&dir.path().join("w.sqlite"), Durability::Full);

        writer.apply_lazily(insert("lazy-1")).await.unwrap();
        assert_eq!(
            synchronous(&connection),
            1,
            "a lazy group is committed without fsync"
        );
        writer.apply(insert("synced")).await.unwrap();
        assert_eq!(
            synchronous(&connection),
            2,
            "the next write is fsynced again"
        );
        writer.apply_lazily(insert("lazy-2")).await.unwrap();
        for id in ["lazy-1", "synced", "lazy-2"] {
            let row = store.get("kv", &Row::new().with("id", id)).await.unwrap();
            assert!(row.is_some(), "{id} is committed and visible");
        }
    }

    #[tokio::test]
    async fn a_store_that_never_fsyncs_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, connection, writer) =
            store_and_writer(&dir.path().join("n.sqlite"), Durability::Normal);
        writer.apply(insert("a")).await.unwrap();
        writer.apply_lazily(insert("b")).await.unwrap();
        assert_eq!(synchronous(&connection), 1);
    }
}
