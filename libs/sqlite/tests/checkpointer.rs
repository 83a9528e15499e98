//! The checkpointer copies a WAL into its database while commits do not checkpoint.

use std::time::{Duration, Instant};

use rusqlite::Connection;
use sterling_sqlite::{Checkpointer, no_commit_checkpoints};

fn wal_size(path: &std::path::Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn commits_leave_the_checkpoints_to_the_checkpointer_and_the_wal_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let writer = Connection::open(&path).unwrap();
    writer
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    no_commit_checkpoints(&writer).unwrap();

    // Without a checkpointer, 3,000 commits of a page each grow the WAL past SQLite's own
    // 1,000-page threshold: nothing checkpoints inside a commit any more.
    for k in 0..3_000 {
        writer
            .execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))", [k])
            .unwrap();
    }
    let grown = wal_size(&path);
    assert!(
        grown > 3_000 * 4_096,
        "the WAL holds every commit: {grown} bytes"
    );

    // The checkpointer copies all of it into the database...
    let checkpointer = Checkpointer::start(&path, Duration::from_millis(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let copied = loop {
        let progress = checkpointer.progress();
        if progress.runs > 0 && progress.frames > 0 && progress.copied == progress.frames {
            break progress;
        }
        assert!(Instant::now() < deadline, "never copied: {progress:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(copied.frames >= 3_000, "{copied:?}");

    // ...so the next commits write the WAL from its beginning: it does not grow further.
    for k in 3_000..3_100 {
        writer
            .execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))", [k])
            .unwrap();
    }
    assert_eq!(wal_size(&path), grown, "the WAL was reused, not extended");
    let rows: i64 = writer
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3_100);

    // Dropping it stops its thread.
    drop(checkpointer);
}
