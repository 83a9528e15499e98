//! The embedded bus: a persisted stream in SQLite with durable consumers, for running the bank
//! in one process. Same semantics as the JetStream backend: dedup on event id, at-least-once,
//! ack wait, nak with backoff, dead letters after `max_deliver`.
//!
//! Durability: a publish is answered once it is fsynced (`synchronous=FULL` for its commit);
//! publishes and acks queued at the same moment share one commit and one fsync (`writer`).
//! Everything else (deliveries taken, acks, naks, cursors) is committed without an fsync of its
//! own and reaches the disk with the next publish's fsync or checkpoint, as at-least-once
//! allows: a process crash loses nothing (the write-ahead log is in the file), and a power cut
//! can only forget acks and delivery counts made since the last fsync, so the events they
//! settled are delivered again (consumers are idempotent on the event id). A published event is
//! never lost. Commits do not checkpoint the write-ahead log; a thread of the bus's does, without
//! blocking them ([`sterling_sqlite::Checkpointer`]).
//!
//! Retention: a message is kept for [`MAX_AGE`] (the JetStream stream's `max_age`), then
//! removed with any delivery of it still pending ([`retention`]).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use sterling_sqlite::{
    CHECKPOINT_EVERY, Checkpointer, limit_wal, no_commit_checkpoints, plan_once, wait_when_busy,
};
use tokio::sync::watch;

mod retention;
mod writer;

pub use self::retention::MAX_AGE;
use self::retention::Retention;
use self::writer::Writer;
use crate::{
    Acker, Bus, BusError, ConsumerConfig, Delivery, Envelope, PublishAck, Result, StoredEvent,
    Subscription, dead_letters, now_ms, subject_matches, validate,
};

/// How soon a waiting consumer looks again after the bus stored messages of subjects it does
/// not want (its cursor then keeps up with them).
const IDLE_POLL: Duration = Duration::from_millis(200);

/// How long a waiting consumer sleeps at most when nothing at all was stored and nothing of its
/// own falls due: every change it must see is announced (a publish, a nak, a dead letter), so
/// this is only a safety net, and an idle bank's consumers cost next to nothing.
const QUIET_POLL: Duration = Duration::from_secs(5);

/// What an announcement is about: which waiting consumers should look in the stream.
#[derive(Debug, Clone)]
enum Concern {
    /// A message stored under this subject: the consumers that want it.
    Subject(String),
    /// A delivery of this consumer due again sooner (a nak): that consumer.
    Consumer(String),
    /// Something any consumer may want (a dead letter, a replay).
    Any,
}

fn err(e: rusqlite::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// Announcements kept for waiting consumers; one that falls this far behind looks anyway.
const ANNOUNCEMENTS_KEPT: usize = 4096;

struct Shared {
    connection: Arc<Mutex<Connection>>,
    /// Applies publishes and acks in groups, one commit each.
    writer: Writer,
    /// The number of the last announcement: waiting consumers wake when it changes.
    published: watch::Sender<u64>,
    /// What the recent announcements were about, so that a consumer wakes to look in the
    /// stream only for what concerns it.
    announced: Mutex<VecDeque<(u64, Concern)>>,
    /// Checkpoints a file's WAL (none in memory); stops with the bus.
    _checkpointer: Option<Checkpointer>,
}

impl Shared {
    /// Tells waiting consumers that something of `concern` changed in the stream.
    fn announce(&self, concern: Concern) {
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        let mut number = 0;
        self.published.send_modify(|n| {
            *n += 1;
            number = *n;
        });
        announced.push_back((number, concern));
        if announced.len() > ANNOUNCEMENTS_KEPT {
            announced.pop_front();
        }
    }

    /// Whether an announcement after number `seen` may concern `config`'s consumer.
    fn concerns(&self, config: &ConsumerConfig, seen: u64) -> bool {
        let announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        match announced.front() {
            // Some were forgotten: look.
            Some((first, _)) if *first > seen + 1 => true,
            _ => announced
                .iter()
                .rev()
                .take_while(|(n, _)| *n > seen)
                .any(|(_, concern)| match concern {
                    Concern::Subject(subject) => config.wants(subject),
                    Concern::Consumer(durable) => *durable == config.durable,
                    Concern::Any => true,
                }),
        }
    }

    /// Runs operation `op` on the bus's connection (see [`hold`]).
    fn with<T>(
        &self,
        op: &'static str,
        work: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        hold(&self.connection, op, work)
    }
}

/// Runs `work` on the bus's connection, counting operation `op`
/// (`sterling_embedded_bus_operations_total{op}`; for `publish` and `ack` one operation is a
/// group commit of the writer, however many publishes or acks it holds) and the microseconds it waited for the
/// connection (`sterling_embedded_bus_waited_microseconds_total{op}`) and held it
/// (`sterling_embedded_bus_held_microseconds_total{op}`: how busy the connection was), and the
/// operations that held it longer than [`sterling_sqlite::SLOW`]
/// (`sterling_embedded_bus_slow_operations_total{op}`). Counters,
/// not histograms: a sample kept per operation costs memory at thousands a second.
fn hold<T>(
    connection: &Mutex<Connection>,
    op: &'static str,
    work: impl FnOnce(&mut Connection) -> Result<T>,
) -> Result<T> {
    let asked = Instant::now();
    let mut guard = connection
        .lock()
        .map_err(|_| BusError::Unavailable("bus lock poisoned".into()))?;
    let taken = Instant::now();
    let result = work(&mut guard);
    drop(guard);
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    metrics::counter!("sterling_embedded_bus_operations_total", "op" => op).increment(1);
    metrics::counter!("sterling_embedded_bus_waited_microseconds_total", "op" => op)
        .increment(micros(taken - asked));
    let held = taken.elapsed();
    metrics::counter!("sterling_embedded_bus_held_microseconds_total", "op" => op)
        .increment(micros(held));
    if held > sterling_sqlite::SLOW {
        metrics::counter!("sterling_embedded_bus_slow_operations_total", "op" => op).increment(1);
    }
    result
}

/// How an embedded bus keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusOptions {
    /// Whether a publish is answered only once fsynced (otherwise it reaches the disk at the
    /// next checkpoint: it survives a process crash, not a power cut).
    pub fsync_publishes: bool,
    /// How long a message is kept after it was published ([`MAX_AGE`] by default).
    pub max_age: Duration,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            fsync_publishes: true,
            max_age: MAX_AGE,
        }
    }
}

/// The in-process bus.
#[derive(Clone)]
pub struct SqliteBus {
    shared: Arc<Shared>,
}

impl SqliteBus {
    /// Opens (or creates) the bus stored at `path`, fsyncing every publish and keeping
    /// messages for [`MAX_AGE`].
    pub fn open(path: &Path) -> Result<SqliteBus> {
        Self::open_with(path, BusOptions::default())
    }

    /// As [`SqliteBus::open`], with `options`.
    pub fn open_with(path: &Path, options: BusOptions) -> Result<SqliteBus> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BusError::Unavailable(e.to_string()))?;
        }
        let connection = Connection::open(path).map_err(err)?;
        no_commit_checkpoints(&connection).map_err(err)?;
        limit_wal(&connection).map_err(err)?;
        // In WAL mode before the checkpointer's connection opens it: a connection that found
        // the file in another mode never checkpoints it.
        connection
            .execute_batch("PRAGMA journal_mode=WAL;")
            .map_err(err)?;
        let checkpointer = Checkpointer::start(path, CHECKPOINT_EVERY)
            .map_err(|e| BusError::Unavailable(format!("{}: {e}", path.display())))?;
        Self::with_connection(connection, options, Some(checkpointer))
    }

    /// A bus that lives in memory only (tests).
    pub fn in_memory() -> Result<SqliteBus> {
        let options = BusOptions {
            fsync_publishes: false,
            ..BusOptions::default()
        };
        Self::with_connection(Connection::open_in_memory().map_err(err)?, options, None)
    }

    fn with_connection(
        connection: Connection,
        options: BusOptions,
        checkpointer: Option<Checkpointer>,
    ) -> Result<SqliteBus> {
        connection.set_prepared_statement_cache_capacity(64);
        plan_once(&connection).map_err(err)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
                 CREATE TABLE IF NOT EXISTS messages (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     event_id TEXT NOT NULL UNIQUE,
                     subject TEXT NOT NULL,
                     body BLOB NOT NULL,
                     published_at INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS consumers (
                     durable TEXT PRIMARY KEY,
                     cursor INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS pending (
                     durable TEXT NOT NULL,
                     seq INTEGER NOT NULL,
                     deliveries INTEGER NOT NULL,
                     next_at INTEGER NOT NULL,
                     PRIMARY KEY (durable, seq)) WITHOUT ROWID;",
            )
            .map_err(err)?;
        wait_when_busy(&connection).map_err(err)?;
        let connection = Arc::new(Mutex::new(connection));
        Ok(SqliteBus {
            shared: Arc::new(Shared {
                writer: Writer::start(
                    connection.clone(),
                    options.fsync_publishes,
                    Retention::new(options.max_age),
                )?,
                connection,
                published: watch::channel(0).0,
                announced: Mutex::new(VecDeque::new()),
                _checkpointer: checkpointer,
            }),
        })
    }

    /// Runs operation `op` on the bus's connection off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.with(op, work))
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?
    }
}

fn insert_message(tx: &Connection, id: &str, subject: &str, body: &[u8]) -> Result<PublishAck> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (event_id, subject, body, published_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(err)?
        .execute(
            params![id, subject, body, now_ms()],
        )
        .map_err(err)?;
    let sequence: i64 = tx
        .prepare_cached("SELECT seq FROM messages WHERE event_id = ?1")
        .map_err(err)?
        .query_row([id], |r| r.get(0))
        .map_err(err)?;
    Ok(PublishAck {
        sequence: sequence as u64,
        duplicate: inserted == 0,
    })
}

/// Gives up on the message at `seq` for `durable`: its dead letter is published and its
/// pending delivery removed, in the caller's transaction.
fn dead_letter(tx: &Connection, durable: &str, seq: i64, reason: &str) -> Result<()> {
    let body: Option<Vec<u8>> = tx
        .prepare_cached("SELECT body FROM messages WHERE seq = ?1")
        .map_err(err)?
        .query_row([seq], |r| r.get(0))
        .optional()
        .map_err(err)?;
    let deliveries: u32 = tx
        .prepare_cached("SELECT deliveries FROM pending WHERE durable = ?1 AND seq = ?2")
        .map_err(err)?
        .query_row(params![durable, seq], |r| r.get(0))
        .optional()
        .map_err(err)?
        .unwrap_or_default();
    if let Some(body) = body {
        let envelope =
            Envelope::decode(body.as_slice()).map_err(|e| BusError::Invalid(e.to_string()))?;
        let (event, replay) = dead_letters::unwrap_replay(envelope)?;
        let dead = dead_letters::dead_letter_envelope(durable, &event, replay, deliveries, reason);
        insert_message(tx, &dead.event_id, &dead.r#type, &dead.encode_to_vec())?;
        tracing::warn!(durable, event_id = %event.event_id, replay, reason, "event dead-lettered");
    }
    tx.prepare_cached("DELETE FROM pending WHERE durable = ?1 AND seq = ?2")
        .map_err(err)?
        .execute(params![durable, seq])
        .map_err(err)?;
    Ok(())
}

/// A delivery taken: its sequence number, attempt and stored body.
type Taken = (i64, u32, Vec<u8>);

/// Messages past a consumer's cursor read in one take.
const FRESH_PAGE: usize = 512;

/// Takes up to `max` due deliveries for `config` in one transaction, oldest first, leasing
/// each for `ack_wait`; and whether the stream may hold more past the cursor than this take
/// read (a full page of [`FRESH_PAGE`]).
fn take_due(
    conn: &mut Connection,
    config: &ConsumerConfig,
    max: usize,
) -> Result<(Vec<Taken>, bool)> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let durable = config.durable.as_str();
    tx.prepare_cached("INSERT OR IGNORE INTO consumers (durable, cursor) VALUES (?1, 0)")
        .map_err(err)?
        .execute([durable])
        .map_err(err)?;
    let cursor: i64 = tx
        .prepare_cached("SELECT cursor FROM consumers WHERE durable = ?1")
        .map_err(err)?
        .query_row([durable], |r| r.get(0))
        .map_err(err)?;
    let fresh: Vec<(i64, String)> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT seq, subject FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(err)?;
        stmt.query_map(params![cursor, FRESH_PAGE as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(err)?
        .collect::<std::result::Result<_, _>>()
        .map_err(err)?
    };
    if let Some((last, _)) = fresh.last() {
        for (seq, subject) in &fresh {
            if config.wants(subject) {
                tx.prepare_cached(
            "INSERT OR IGNORE INTO pending (durable, seq, deliveries, next_at) VALUES (?1, ?2, 0, 0)",
        )
        .map_err(err)?
        .execute(
                    params![durable, seq],
                )
                .map_err(err)?;
            }
        }
        tx.prepare_cached("UPDATE consumers SET cursor = ?2 WHERE durable = ?1")
            .map_err(err)?
            .execute(params![durable, last])
            .map_err(err)?;
    }
    let now = now_ms();
    let mut taken = Vec::new();
    while taken.len() < max {
        let due: Option<(i64, u32)> = tx
            .prepare_cached(
            "SELECT seq, deliveries FROM pending WHERE durable = ?1 AND next_at <= ?2 ORDER BY seq LIMIT 1",
        )
        .map_err(err)?
        .query_row(
                params![durable, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(err)?;
        let Some((seq, deliveries)) = due else {
            break;
        };
        if deliveries >= config.max_deliver {
            dead_letter(&tx, durable, seq, "max deliveries reached")?;
            continue;
        }
        tx.prepare_cached(
            "UPDATE pending SET deliveries = deliveries + 1, next_at = ?3 WHERE durable = ?1 AND seq = ?2",
        )
        .map_err(err)?
        .execute(
            params![durable, seq, now + config.ack_wait.as_millis() as i64],
        )
        .map_err(err)?;
        let body: Vec<u8> = tx
            .prepare_cached("SELECT body FROM messages WHERE seq = ?1")
            .map_err(err)?
            .query_row([seq], |r| r.get(0))
            .map_err(err)?;
        taken.push((seq, deliveries + 1, body));
    }
    tx.commit().map_err(err)?;
    Ok((taken, fresh.len() == FRESH_PAGE))
}

/// Gives back deliveries taken and never handed out: due at once, and not counted as
/// delivered.
fn give_back(conn: &mut Connection, durable: &str, seqs: &[i64]) -> Result<()> {
    let tx = conn.transaction().map_err(err)?;
    for seq in seqs {
        tx.prepare_cached(
            "UPDATE pending SET deliveries = max(deliveries - 1, 0), next_at = 0 WHERE durable = ?1 AND seq = ?2",
        )
        .map_err(err)?
        .execute(params![durable, seq])
        .map_err(err)?;
    }
    tx.commit().map_err(err)
}

/// Events for `config`'s consumer not yet acked: its pending deliveries and the messages past
/// its cursor it wants.
fn backlog(conn: &mut Connection, config: &ConsumerConfig) -> Result<u64> {
    let tx = conn.transaction().map_err(err)?;
    let durable = config.durable.as_str();
    let cursor: Option<i64> = tx
        .prepare_cached("SELECT cursor FROM consumers WHERE durable = ?1")
        .map_err(err)?
        .query_row([durable], |r| r.get(0))
        .optional()
        .map_err(err)?;
    let Some(cursor) = cursor else {
        return Ok(0);
    };
    let in_hand: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM pending WHERE durable = ?1")
        .map_err(err)?
        .query_row([durable], |r| r.get(0))
        .map_err(err)?;
    let mut wanted = 0u64;
    let mut stmt = tx
        .prepare_cached("SELECT subject FROM messages WHERE seq > ?1")
        .map_err(err)?;
    let mut rows = stmt.query([cursor]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let subject: String = row.get(0).map_err(err)?;
        if config.wants(&subject) {
            wanted += 1;
        }
    }
    Ok(in_hand.max(0) as u64 + wanted)
}

/// Up to `limit` messages under `filter` after `after`: those whose subject starts with the
/// filter's literal part, matched in full here.
fn browse(
    conn: &mut Connection,
    filter: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let tokens: Vec<&str> = filter.split('.').collect();
    let literal = match tokens.iter().position(|t| *t == "*" || *t == ">") {
        None => filter.to_string(),
        Some(0) => String::new(),
        Some(wild) => format!("{}.", tokens[..wild].join(".")),
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, subject, body FROM messages WHERE seq > ?1 AND substr(subject, 1, ?2) = ?3 ORDER BY seq",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map(params![after as i64, literal.len() as i64, literal], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .map_err(err)?;
    let mut found = Vec::new();
    for row in rows {
        let (seq, subject, body) = row.map_err(err)?;
        if !subject_matches(filter, &subject) {
            continue;
        }
        let envelope =
            Envelope::decode(body.as_slice()).map_err(|e| BusError::Invalid(e.to_string()))?;
        found.push(StoredEvent {
            sequence: seq as u64,
            envelope,
        });
        if found.len() >= limit {
            break;
        }
    }
    Ok(found)
}

/// When the next pending delivery of `durable` falls due, if any.
fn next_due(conn: &mut Connection, durable: &str) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT MIN(next_at) FROM pending WHERE durable = ?1")
        .map_err(err)?
        .query_row([durable], |r| r.get(0))
        .map_err(err)
}

struct SqliteAcker {
    bus: SqliteBus,
    durable: String,
    seq: i64,
    max_deliver: u32,
    ack_wait: Duration,
}

#[async_trait]
impl Acker for SqliteAcker {
    async fn ack(&self) -> Result<()> {
        self.bus
            .shared
            .writer
            .ack(self.durable.clone(), self.seq)
            .await
    }

    async fn nak(&self, delay: Duration) -> Result<()> {
        let (durable, seq, max) = (self.durable.clone(), self.seq, self.max_deliver);
        let at = now_ms() + delay.as_millis() as i64;
        let dead = self
            .bus
            .blocking("nak", move |c| {
                let tx = c.transaction().map_err(err)?;
                let deliveries: Option<u32> = tx
                    .prepare_cached(
                        "SELECT deliveries FROM pending WHERE durable = ?1 AND seq = ?2",
                    )
                    .map_err(err)?
                    .query_row(params![durable, seq], |r| r.get(0))
                    .optional()
                    .map_err(err)?;
                let dead = deliveries.is_some_and(|d| d >= max);
                if dead {
                    dead_letter(&tx, &durable, seq, "max deliveries reached")?;
                } else {
                    tx.prepare_cached(
                        "UPDATE pending SET next_at = ?3 WHERE durable = ?1 AND seq = ?2",
                    )
                    .map_err(err)?
                    .execute(params![durable, seq, at])
                    .map_err(err)?;
                }
                tx.commit().map_err(err)?;
                Ok(dead)
            })
            .await?;
        // A dead letter may concern anyone; a delivery due again concerns its consumer, whose
        // wait was set for the delivery's ack wait.
        self.bus.shared.announce(if dead {
            Concern::Any
        } else {
            Concern::Consumer(self.durable.clone())
        });
        Ok(())
    }

    async fn in_progress(&self) -> Result<()> {
        let (durable, seq) = (self.durable.clone(), self.seq);
        let at = now_ms() + self.ack_wait.as_millis() as i64;
        self.bus
            .blocking("in_progress", move |c| {
                c.prepare_cached(
                    "UPDATE pending SET next_at = max(next_at, ?3) WHERE durable = ?1 AND seq = ?2",
                )
                .map_err(err)?
                .execute(params![durable, seq, at])
                .map_err(err)?;
                Ok(())
            })
            .await
    }

    async fn term(&self, reason: &str) -> Result<()> {
        let (durable, seq, reason) = (self.durable.clone(), self.seq, reason.to_string());
        self.bus
            .blocking("term", move |c| {
                let tx = c.transaction().map_err(err)?;
                dead_letter(&tx, &durable, seq, &reason)?;
                tx.commit().map_err(err)
            })
            .await?;
        self.bus.shared.announce(Concern::Any);
        Ok(())
    }
}

struct SqliteSubscription {
    bus: SqliteBus,
    config: ConsumerConfig,
    published: watch::Receiver<u64>,
    /// The last announcement this subscription has looked past.
    seen: u64,
    /// When its next pending delivery falls due, as last read.
    due: Option<i64>,
    /// When it last looked in the stream: it looks at least every [`IDLE_POLL`] while the bus
    /// stores subjects it does not want (its cursor then keeps up with them), and every
    /// [`QUIET_POLL`] otherwise.
    looked_at: tokio::time::Instant,
    /// Whether announcements that did not concern it came since it last looked.
    passed_over: bool,
    /// Whether the next call looks in the stream before waiting: the last look left a
    /// delivery due or a page unread. A take that leaves nothing due is not followed by a take
    /// that finds nothing (about half the takes under load); an announcement since the last
    /// look still wakes the wait at once.
    look_first: bool,
    /// Deliveries taken together with an earlier one, handed out before the stream is looked
    /// at again; never more than the consumer had room for when it asked.
    taken: VecDeque<Taken>,
}

impl Drop for SqliteSubscription {
    /// Deliveries taken and not handed out are given back at once, not left to their ack wait.
    fn drop(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        let seqs: Vec<i64> = self.taken.drain(..).map(|(seq, _, _)| seq).collect();
        let (shared, durable) = (self.bus.shared.clone(), self.config.durable.clone());
        let give = move || {
            if let Err(e) = shared.with("give_back", |c| give_back(c, &durable, &seqs)) {
                tracing::debug!(error = %e, "deliveries given back at their ack wait instead");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(give)),
            Err(_) => give(),
        }
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn next(&mut self) -> Result<Delivery> {
        self.next_within(1).await
    }

    async fn next_within(&mut self, room: usize) -> Result<Delivery> {
        let mut look = self.look_first;
        loop {
            if let Some((seq, attempt, body)) = self.taken.pop_front() {
                match self.delivery(seq, attempt, body).await? {
                    Some(delivery) => return Ok(delivery),
                    // Dropped: look again at once, as after any take.
                    None => {
                        look = true;
                        continue;
                    }
                }
            }
            if !look {
                look = self.wait().await;
                continue;
            }
            let config = self.config.clone();
            self.seen = *self.published.borrow_and_update();
            self.looked_at = tokio::time::Instant::now();
            self.passed_over = false;
            let max = room.max(1);
            let (taken, behind, due) = self
                .bus
                .blocking("take", move |c| {
                    let (taken, behind) = take_due(c, &config, max)?;
                    Ok((taken, behind, next_due(c, &config.durable)?))
                })
                .await?;
            self.due = due;
            self.look_first = behind || due.is_some_and(|at| at <= now_ms());
            // A full page read with nothing taken: the rest of the stream is looked at now.
            look = behind && taken.is_empty();
            self.taken.extend(taken);
        }
    }
}

impl SqliteSubscription {
    /// The delivery of a message taken; `None` for a message that is not an event (acked and
    /// dropped).
    async fn delivery(&self, seq: i64, attempt: u32, body: Vec<u8>) -> Result<Option<Delivery>> {
        let acker = SqliteAcker {
            bus: self.bus.clone(),
            durable: self.config.durable.clone(),
            seq,
            max_deliver: self.config.max_deliver,
            ack_wait: self.config.ack_wait,
        };
        let decoded = Envelope::decode(body.as_slice())
            .map_err(|e| BusError::Invalid(e.to_string()))
            .and_then(dead_letters::unwrap_replay);
        match decoded {
            Ok((envelope, _replay)) => {
                let backoff = self.config.backoff_for(attempt);
                Ok(Some(Delivery::new(
                    envelope,
                    attempt,
                    backoff,
                    Box::new(acker),
                )))
            }
            Err(e) => {
                tracing::error!(error = %e, seq, "a message that is not an event; dropped");
                acker.ack().await?;
                Ok(None)
            }
        }
    }

    /// Waits for a reason to look in the stream again: a delivery falling due, the idle or the
    /// quiet poll, or an announcement that concerns this consumer (others are looked past
    /// without touching the stream). Whether to look.
    async fn wait(&mut self) -> bool {
        let poll = self.looked_at
            + if self.passed_over {
                IDLE_POLL
            } else {
                QUIET_POLL
            };
        let deadline = match self.due {
            Some(at) => {
                let due = Duration::from_millis((at - now_ms()).max(1) as u64);
                poll.min(tokio::time::Instant::now() + due)
            }
            None => poll,
        };
        if deadline <= tokio::time::Instant::now() {
            return true;
        }
        match tokio::time::timeout_at(deadline, self.published.changed()).await {
            Ok(_) => {
                let latest = *self.published.borrow_and_update();
                let look = self.bus.shared.concerns(&self.config, self.seen);
                if !look {
                    self.seen = latest;
                    self.passed_over = true;
                }
                look
            }
            Err(_) => true,
        }
    }
}

#[async_trait]
impl Bus for SqliteBus {
    async fn publish(&self, envelope: &Envelope) -> Result<PublishAck> {
        validate(envelope)?;
        let (id, subject, body) = (
            envelope.event_id.clone(),
            envelope.r#type.clone(),
            envelope.encode_to_vec(),
        );
        let ack = self.shared.writer.publish(id, subject, body).await?;
        if !ack.duplicate {
            self.shared
                .announce(Concern::Subject(envelope.r#type.clone()));
        }
        Ok(ack)
    }

    async fn subscribe(&self, config: ConsumerConfig) -> Result<Box<dyn Subscription>> {
        if config.durable.is_empty() || config.subjects.is_empty() || config.max_deliver == 0 {
            return Err(BusError::Invalid(
                "a consumer needs a name, subjects and max_deliver >= 1".into(),
            ));
        }
        Ok(Box::new(SqliteSubscription {
            looked_at: tokio::time::Instant::now(),
            passed_over: false,
            bus: self.clone(),
            published: self.shared.published.subscribe(),
            config,
            seen: 0,
            due: None,
            look_first: true,
            taken: VecDeque::new(),
        }))
    }

    async fn browse(&self, filter: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let filter = filter.to_string();
        self.blocking("browse", move |c| browse(c, &filter, after, limit))
            .await
    }

    async fn backlog(&self, config: &ConsumerConfig) -> Result<u64> {
        let config = config.clone();
        self.blocking("backlog", move |c| backlog(c, &config)).await
    }

    async fn check(&self) -> Result<()> {
        self.blocking("check", |c| {
            c.prepare_cached("SELECT COUNT(*) FROM consumers")
                .map_err(err)?
                .query_row([], |r| r.get::<_, i64>(0))
                .map_err(err)?;
            Ok(())
        })
        .await
    }
}
