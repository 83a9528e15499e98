//! What the embedded backends (the store and the bus) share on SQLite: their WAL checkpoints.
//!
//! By default SQLite checkpoints a WAL file inside the commit that takes it past 1,000 pages:
//! that commit copies the pages into the database and fsyncs it before it returns, so every few
//! hundred commits one caller (and, behind a store's writer or the bus's connection, everyone
//! queued after it) waits tens of milliseconds. [`Checkpointer`] turns that off for a file's
//! connections ([`no_commit_checkpoints`]) and checkpoints from a thread and a connection of its
//! own instead, in `PASSIVE` mode: it never blocks a writer or a reader.
//!
//! A WAL starts again from its beginning only at a commit that finds every frame of it copied
//! and no reader in it. Under steady writes that moment never comes (each commit appends frames
//! a passive checkpoint has not copied yet), so the WAL grew without end: 2.2 GB for the bus
//! after two minutes at 150 authorisations/s, and every page lookup walks an index that grows
//! with it. So when a passive checkpoint leaves a WAL longer than [`RESTART_ABOVE_FRAMES`], the
//! checkpointer runs a `RESTART` checkpoint: it holds writers back while it copies the few
//! frames the passive one left and waits for the readers in the WAL (transactions of
//! microseconds), and the next commit starts the WAL again, cut to [`WAL_KEPT_BYTES`]
//! ([`limit_wal`]).
//!
//! A connection that finds a lock held by another connection of the same file waits for it
//! in steps of a millisecond at most ([`wait_when_busy`]), not in SQLite's own steps that grow
//! to 100 ms, and every such wait is counted ([`busy_waits`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// A commit or operation that holds its connection longer than this is counted slow
/// (`sterling_embedded_store_slow_commits_total`, `sterling_embedded_bus_slow_operations_total`):
/// a fifth of the authorisation budget, spent on one file.
pub const SLOW: Duration = Duration::from_millis(20);

/// How often a [`Checkpointer`] checkpoints by default.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// A WAL longer than this (in frames, a page each) after a passive checkpoint is restarted:
/// 16 MB of 4 KB pages, one segment of SQLite's WAL index.
pub const RESTART_ABOVE_FRAMES: i64 = 4096;

/// What a WAL is cut to when it starts again (`journal_size_limit`).
pub const WAL_KEPT_BYTES: i64 = 32 * 1024 * 1024;

/// Makes `connection`'s commits cut a WAL that starts again to [`WAL_KEPT_BYTES`].
pub fn limit_wal(connection: &Connection) -> rusqlite::Result<()> {
    connection
        .query_row(
            &format!("PRAGMA journal_size_limit = {WAL_KEPT_BYTES}"),
            [],
            |_| Ok(()),
        )
        .map(|_| ())
}

/// Stops a connection's commits from checkpointing (a [`Checkpointer`] does it instead).
pub fn no_commit_checkpoints(connection: &Connection) -> rusqlite::Result<()> {
    connection.pragma_update(None, "wal_autocheckpoint", 0)
}

/// Makes `connection` plan each statement once, whatever values are bound to it (SQLite's
/// query planner stability guarantee). Otherwise a statement whose plan looked at a bound value
/// (any `LIMIT ?`, for one) is compiled again every time it is run with new values: the bus's
/// take, run thousands of times a second, was prepared anew at each run.
pub fn plan_once(connection: &Connection) -> rusqlite::Result<()> {
    connection
        .set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map(|_| ())
}

/// How long a connection waits at most for another connection's lock before its statement
/// fails with `SQLITE_BUSY`.
pub const BUSY_LIMIT: Duration = Duration::from_secs(5);

/// The longest single sleep while waiting for a lock.
const BUSY_STEP_MAX: Duration = Duration::from_millis(1);

/// Waits for a lock, counted since the process started.
static BUSY_WAITS: AtomicU64 = AtomicU64::new(0);

/// Makes `connection` wait up to [`BUSY_LIMIT`] for a lock another connection of its file holds,
/// sleeping 50 µs, then twice as long each time up to 1 ms. SQLite's `busy_timeout` sleeps
/// 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and then 100 ms at a time, so a lock held for a
/// fraction of a millisecond can cost its waiter a hundred. Replaces any `busy_timeout`: call it
/// after the connection's pragmas.
pub fn wait_when_busy(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_handler(Some(on_busy))
}

/// Waits for a lock counted so far in this process (each wait once, however many steps).
pub fn busy_waits() -> u64 {
    BUSY_WAITS.load(Ordering::Relaxed)
}

/// SQLite's busy callback: `attempt` is how many times it was called for this wait.
fn on_busy(attempt: i32) -> bool {
    if attempt == 0 {
        BUSY_WAITS.fetch_add(1, Ordering::Relaxed);
    }
    let step = busy_step(attempt);
    if step.is_zero() {
        return false;
    }
    std::thread::sleep(step);
    true
}

/// The sleep before the next try of a wait at `attempt`; zero once [`BUSY_LIMIT`] is spent.
fn busy_step(attempt: i32) -> Duration {
    let attempt = u32::try_from(attempt).unwrap_or(0);
    let doubling = Duration::from_micros(50).saturating_mul(1 << attempt.min(5));
    let step = doubling.min(BUSY_STEP_MAX);
    // Time waited so far, near enough: every step after the first five (1.55 ms) is 1 ms.
    let spent = BUSY_STEP_MAX.saturating_mul(attempt.saturating_sub(4));
    if spent >= BUSY_LIMIT {
        Duration::ZERO
    } else {
        step
    }
}

/// Bytes SQLite has allocated in this process now, over every connection of every file: page
/// caches, prepared statements, schemas.
pub fn memory_used() -> u64 {
    // SAFETY: reads SQLite's own allocation counter, which it keeps under its own mutex.
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    u64::try_from(used).unwrap_or(0)
}

/// The next group for a writer thread that commits in groups: waits for one job on `jobs`,
/// then takes whatever else is queued already, `max` at most. `None` once every sender is gone.
pub fn next_group<T>(jobs: &std::sync::mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let mut group = vec![jobs.recv().ok()?];
    group.extend(jobs.try_iter().take(max.saturating_sub(1)));
    Some(group)
}

/// What the last checkpoint found and did, in WAL frames (pages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointProgress {
    /// Checkpoints run so far.
    pub runs: u64,
    /// Frames in the WAL at the last checkpoint.
    pub frames: i64,
    /// Of those, frames copied into the database (all of them: the WAL can start over).
    pub copied: i64,
    /// `RESTART` checkpoints run so far (a WAL left longer than [`RESTART_ABOVE_FRAMES`]).
    pub restarts: u64,
}

/// Shared between the handle and its thread.
#[derive(Default)]
struct State {
    stopping: Mutex<bool>,
    wake: Condvar,
    progress: Mutex<CheckpointProgress>,
}

/// Checkpoints one WAL-mode SQLite file from a thread of its own until dropped.
pub struct Checkpointer {
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` every `every`, on a connection of its own
    /// (which syncs the database at each checkpoint, `synchronous=NORMAL`).
    pub fn start(path: &Path, every: Duration) -> std::io::Result<Checkpointer> {
        let connection = Connection::open(path).map_err(std::io::Error::other)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(std::io::Error::other)?;
        no_commit_checkpoints(&connection).map_err(std::io::Error::other)?;
        // A checkpoint that meets a writer mid-commit waits a moment rather than failing: one
        // that fails every time leaves the WAL growing without bound.
        wait_when_busy(&connection).map_err(std::io::Error::other)?;
        // Reading the file once makes the connection see it is in WAL mode; until then a
        // checkpoint on it does nothing.
        connection
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(std::io::Error::other)?;
        let state = Arc::new(State::default());
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn({
                let state = state.clone();
                move || run(&connection, &state, every)
            })?;
        Ok(Checkpointer {
            state,
            thread: Some(thread),
        })
    }

    /// What the checkpoints have done so far.
    pub fn progress(&self) -> CheckpointProgress {
        *self
            .state
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self
            .state
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
        self.state.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The checkpointer's thread: a `PASSIVE` checkpoint every `every` until stopped.
fn run(connection: &Connection, state: &State, every: Duration) {
    loop {
        let stopping = state.stopping.lock().unwrap_or_else(|p| p.into_inner());
        let (stopping, _) = state
            .wake
            .wait_timeout_while(stopping, every, |stopping| !*stopping)
            .unwrap_or_else(|p| p.into_inner());
        if *stopping {
            return;
        }
        drop(stopping);
        let checkpoint = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match checkpoint {
            Ok((frames, copied)) => {
                let restart = frames > RESTART_ABOVE_FRAMES;
                if restart {
                    restart_wal(connection);
                }
                let mut progress = state.progress.lock().unwrap_or_else(|p| p.into_inner());
                progress.runs += 1;
                progress.frames = frames;
                progress.copied = copied;
                progress.restarts += u64::from(restart);
            }
            // A busy or failing checkpoint is tried again next time; the WAL keeps every write.
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// A `RESTART` checkpoint: everything copied, and the next commit starts the WAL again. It
/// waits for writers and readers in steps ([`wait_when_busy`]); one that still finds them busy
/// is tried again after the next passive checkpoint.
fn restart_wal(connection: &Connection) {
    match connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(0) => {}
        Ok(_) => tracing::debug!("WAL restart checkpoint found the file busy"),
        Err(e) => tracing::warn!(error = %e, "WAL restart checkpoint failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times the statement `SELECT ... LIMIT ?` was compiled again over five runs with new
    /// values, on a connection made by `configure`.
    fn recompiled(configure: impl Fn(&Connection)) -> i32 {
        let connection = Connection::open_in_memory().unwrap();
        configure(&connection);
        connection
            .execute_batch(
                "CREATE TABLE m (seq INTEGER PRIMARY KEY); INSERT INTO m VALUES (1), (2), (3);",
            )
            .unwrap();
        let sql = "SELECT seq FROM m WHERE seq > ?1 ORDER BY seq LIMIT ?2";
        for run in 0..5 {
            let mut statement = connection.prepare_cached(sql).unwrap();
            let rows: Vec<i64> = statement
                .query_map([run % 3, 1 + run % 2], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(!rows.is_empty());
        }
        let statement = connection.prepare_cached(sql).unwrap();
        statement.get_status(rusqlite::StatementStatus::RePrepare)
    }

    #[test]
    fn a_statement_planned_once_is_not_compiled_again_for_new_values() {
        assert!(recompiled(|_| {}) > 0, "SQLite's default compiles it again");
        assert_eq!(recompiled(|c| plan_once(c).unwrap()), 0);
    }

    #[test]
    fn a_wait_sleeps_briefly_and_gives_up_after_the_limit() {
        assert_eq!(busy_step(0), Duration::from_micros(50));
        assert_eq!(busy_step(1), Duration::from_micros(100));
        assert_eq!(busy_step(4), Duration::from_micros(800));
        assert_eq!(busy_step(5), BUSY_STEP_MAX);
        let total: Duration = (0..).map(busy_step).take_while(|s| !s.is_zero()).sum();
        assert!(
            total >= BUSY_LIMIT && total < BUSY_LIMIT + Duration::from_millis(2),
            "{total:?}"
        );
    }
}
