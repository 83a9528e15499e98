//! Retention of the embedded bus: a message is kept for [`MAX_AGE`] after it was published (the
//! JetStream stream's `max_age`), then removed with any delivery of it still pending, as
//! JetStream's limits retention does. Without it the bus's file grows with every event for
//! good.
//!
//! The bus's writer thread removes them: after a group commit, at most once per
//! [`Retention::every`], it removes up to [`CHUNK`] of the oldest messages that are past the
//! age, and goes on after the next group while it finds a full chunk, so a step holds the
//! connection for a bounded time. A bus with nothing to write removes nothing until it writes
//! again.

use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::err;
use crate::Result;

/// How long a message is kept by default: the JetStream stream's `max_age`.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most messages one step removes.
pub(super) const CHUNK: usize = 1000;

/// When the next step is due, for a bus that keeps messages for `max_age`.
pub(super) struct Retention {
    max_age: Duration,
    next: Instant,
}

impl Retention {
    /// Retention of `max_age`; its first step is due at once.
    pub(super) fn new(max_age: Duration) -> Self {
        Retention {
            max_age,
            next: Instant::now(),
        }
    }

    /// How long between steps that found less than a chunk: a minute, or the age if shorter.
    fn every(&self) -> Duration {
        self.max_age.min(Duration::from_secs(60))
    }

    /// Whether a step is due.
    pub(super) fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Runs a step on `conn`; returns the messages it removed.
    pub(super) fn step(&mut self, conn: &mut Connection) -> Result<usize> {
        let now = Instant::now();
        let age = i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        let removed = expire(conn, crate::now_ms().saturating_sub(age), CHUNK);
        self.next = match removed {
            Ok(n) if n == CHUNK => now,
            _ => now + self.every(),
        };
        removed
    }
}

/// Removes up to `chunk` of the oldest messages published before `cutoff_ms` (Unix
/// milliseconds), and their pending deliveries, in one transaction; returns how many.
/// Messages are looked at in the order they were stored, and the step stops at the first
/// that is not old enough.
pub(super) fn expire(conn: &mut Connection, cutoff_ms: i64, chunk: usize) -> Result<usize> {
    let tx = conn.transaction().map_err(err)?;
    let oldest: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT seq, published_at FROM messages ORDER BY seq LIMIT ?1")
        .map_err(err)?
        .query_map([chunk as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(err)?
        .collect::<std::result::Result<_, _>>()
        .map_err(err)?;
    let expired = oldest
        .iter()
        .take_while(|(_, published_at)| *published_at < cutoff_ms)
        .count();
    let Some(&(last, _)) = expired.checked_sub(1).and_then(|i| oldest.get(i)) else {
        return Ok(0);
    };
    tx.prepare_cached("DELETE FROM pending WHERE seq <= ?1")
        .map_err(err)?
        .execute(params![last])
        .map_err(err)?;
    tx.prepare_cached("DELETE FROM messages WHERE seq <= ?1")
        .map_err(err)?
        .execute(params![last])
        .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(published_at: &[i64]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, published_at INTEGER);
             CREATE TABLE pending (durable TEXT, seq INTEGER, PRIMARY KEY (durable, seq));",
        )
        .unwrap();
        for (i, at) in published_at.iter().enumerate() {
            conn.execute("INSERT INTO messages (published_at) VALUES (?1)", [at])
                .unwrap();
            conn.execute("INSERT INTO pending VALUES ('c', ?1)", [i as i64 + 1])
                .unwrap();
        }
        conn
    }

    fn seqs(conn: &Connection, table: &str) -> Vec<i64> {
        let mut stmt = conn
            .prepare(&format!("SELECT seq FROM {table} ORDER BY seq"))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn a_step_removes_a_chunk_of_the_oldest_and_stops_at_the_first_young_message() {
        let mut conn = stream(&[1, 2, 3, 10, 4]);
        assert_eq!(expire(&mut conn, 5, 2).unwrap(), 2);
        assert_eq!(seqs(&conn, "messages"), [3, 4, 5]);
        assert_eq!(expire(&mut conn, 5, 2).unwrap(), 1);
        // The message at 4 is older than the cutoff but stored after a younger one: it waits.
        assert_eq!(seqs(&conn, "messages"), [4, 5]);
        assert_eq!(seqs(&conn, "pending"), [4, 5]);
        assert_eq!(expire(&mut conn, 5, 2).unwrap(), 0);
    }
}
