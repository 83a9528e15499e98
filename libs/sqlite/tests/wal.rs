//! The checkpointer keeps a WAL from growing without end under writes that never pause.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use sterling_sqlite::{
    Checkpointer, RESTART_ABOVE_FRAMES, limit_wal, no_commit_checkpoints, wait_when_busy,
};

fn open(path: &std::path::Path) -> Connection {
    let connection = Connection::open(path).unwrap();
    connection
        .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        .unwrap();
    no_commit_checkpoints(&connection).unwrap();
    limit_wal(&connection).unwrap();
    wait_when_busy(&connection).unwrap();
    connection
}

#[test]
fn a_wal_under_writes_that_never_pause_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let writes = open(&path);
    writes
        .execute_batch("CREATE TABLE rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        .unwrap();
    let checkpointer = Checkpointer::start(&path, Duration::from_millis(20)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // A reader in and out of the WAL all the time, as a store's read connection is.
    let reader = std::thread::spawn({
        let (path, stop) = (path.clone(), stop.clone());
        move || {
            let reads = open(&path);
            while !stop.load(Ordering::Relaxed) {
                let _: i64 = reads
                    .query_row("SELECT count(*) FROM rows WHERE id > -1", [], |r| r.get(0))
                    .unwrap_or_default();
            }
        }
    });
    let body = vec![7u8; 6_000];
    let started = Instant::now();
    let mut commits = 0;
    while started.elapsed() < Duration::from_secs(3) {
        writes
            .execute("INSERT INTO rows (body) VALUES (?1)", [&body])
            .unwrap();
        writes
            .execute(
                "DELETE FROM rows WHERE id < (SELECT max(id) FROM rows) - 100",
                [],
            )
            .unwrap();
        commits += 2;
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let progress = checkpointer.progress();
    assert!(
        progress.restarts > 0,
        "{commits} commits, never restarted: {progress:?}"
    );
    assert!(
        progress.frames < 3 * RESTART_ABOVE_FRAMES,
        "the WAL keeps growing: {progress:?} after {commits} commits"
    );
}
