//! What the embedded backends (the store and the bus) share on SQLite: their WAL checkpoints.
//!
//! By default SQLite checkpoints a WAL file inside the commit that takes it past 1,000 pages:
//! that commit copies the pages into the database and fsyncs it before it returns, so every few
//! hundred commits one caller (and, behind a store's writer or the bus's connection, everyone
//! queued after it) waits tens of milliseconds. [`Checkpointer`] turns that off for a file's
//! connections ([`no_commit_checkpoints`]) and checkpoints from a thread and a connection of its
//! own instead, in `PASSIVE` mode: it never blocks a writer or a reader, and once a checkpoint
//! has copied everything, the next commit starts the WAL from its beginning again.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often a [`Checkpointer`] checkpoints by default.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Stops a connection's commits from checkpointing (a [`Checkpointer`] does it instead).
pub fn no_commit_checkpoints(connection: &Connection) -> rusqlite::Result<()> {
    connection.pragma_update(None, "wal_autocheckpoint", 0)
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
                let mut progress = state.progress.lock().unwrap_or_else(|p| p.into_inner());
                progress.runs += 1;
                progress.frames = frames;
                progress.copied = copied;
            }
            // A busy or failing checkpoint is tried again next time; the WAL keeps every write.
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}
