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
//! Metrics, by store (counters: a sample kept per write would cost memory at thousands a
//! second): `sterling_embedded_store_writes_total` and `sterling_embedded_store_commits_total`
//! (their ratio is the callers per commit), `sterling_embedded_store_queued_microseconds_total`
//! (from each caller's queueing to its group's commit starting) and
//! `sterling_embedded_store_committing_microseconds_total` (how busy the writer was), and
//! `sterling_embedded_store_slow_commits_total` (groups that took longer than
//! [`sterling_sqlite::SLOW`], lock and fsync included).

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use metrics::Counter;

use rusqlite::Connection;
use sterling_sqlite::{SLOW, next_group};
use tokio::sync::oneshot;

use super::{apply_in, sql_err};
use crate::schema::TableSchema;
use crate::{Applied, Mutation, Result, StorageError, validate_batch};

/// Most callers in one commit: a bound on how long the first of them waits.
const MAX_GROUP: usize = 256;

/// One caller's batches and where its answer goes.
struct Job {
    batches: Vec<Vec<Mutation>>,
    answer: oneshot::Sender<Result<Vec<Applied>>>,
    queued: Instant,
}

/// What the writer counts about its groups.
struct WriterMetrics {
    writes: Counter,
    commits: Counter,
    queued_us: Counter,
    committing_us: Counter,
    slow_commits: Counter,
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
    /// Starts the writer thread of the store named `name` on `connection`.
    pub(super) fn start(
        name: &str,
        connection: Arc<Mutex<Connection>>,
        tables: Arc<BTreeMap<String, TableSchema>>,
    ) -> Result<Writer> {
        let (queue, jobs) = std::sync::mpsc::channel();
        let metrics = WriterMetrics::new(name);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(jobs, &connection, &tables, &metrics))
            .map_err(|e| StorageError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Writer { queue })
    }

    /// Applies `batches` one after the other in the next group commit.
    pub(super) async fn apply(&self, batches: Vec<Vec<Mutation>>) -> Result<Vec<Applied>> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Job {
                batches,
                answer,
                queued: Instant::now(),
            })
            .map_err(|_| StorageError::Unavailable("the store's writer has stopped".into()))?;
        answered
            .await
            .map_err(|_| StorageError::Unavailable("the store's writer has stopped".into()))?
    }
}

/// The writer thread: a group at a time, until every handle is gone.
fn run(
    jobs: Receiver<Job>,
    connection: &Mutex<Connection>,
    tables: &BTreeMap<String, TableSchema>,
    metrics: &WriterMetrics,
) {
    while let Some(group) = next_group(&jobs, MAX_GROUP) {
        let started = Instant::now();
        let queued: u64 = group.iter().map(|job| micros(started - job.queued)).sum();
        metrics.queued_us.increment(queued);
        metrics.writes.increment(group.len() as u64);
        metrics.commits.increment(1);
        let results = match connection.lock() {
            Ok(mut conn) => commit_group(&mut conn, tables, &group),
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
