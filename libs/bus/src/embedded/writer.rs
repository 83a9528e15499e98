//! Group commit of the embedded bus's publishes and acks.
//!
//! Publishers and consumers acking do not each take the bus's connection and pay a commit of
//! their own. They queue their writes to the bus's writer thread, which takes everything
//! queued, applies it in one transaction, commits once and answers each. A caller is answered
//! only after the commit that holds its write, so a published event is stored (and, with
//! `fsync`, on disk: a group holding a publish is fsynced) when its publisher hears so. A group
//! that fails (a full disk, an I/O error) is rolled back whole and every caller in it gets the
//! error; writing again is safe (the bus deduplicates on the event id, and an ack of a delivery
//! already acked removes nothing).

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use sterling_sqlite::next_group;
use tokio::sync::oneshot;

use super::retention::Retention;
use super::{err, hold, insert_message};
use crate::{BusError, PublishAck, Result};

/// Most writes in one commit: a bound on how long the first of them waits.
const MAX_GROUP: usize = 256;

/// One write.
enum Write {
    /// Store an event (unless its id is stored already).
    Publish {
        event_id: String,
        subject: String,
        body: Vec<u8>,
    },
    /// Settle a consumer's delivery of the message at `seq`.
    Ack { durable: String, seq: i64 },
}

/// One write and where its answer goes (a publish's ack; nothing for an ack).
struct Job {
    write: Write,
    answer: oneshot::Sender<Result<Option<PublishAck>>>,
}

/// The handle callers queue to; the thread stops when the last handle is dropped.
pub(super) struct Writer {
    queue: Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `connection`; with `fsync`, a group's commit that holds a
    /// publish is fsynced. Between groups it removes the messages `retention` no longer keeps.
    pub(super) fn start(
        connection: Arc<Mutex<Connection>>,
        fsync: bool,
        retention: Retention,
    ) -> Result<Self> {
        let (queue, jobs) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("bus-writer".into())
            .spawn(move || run(&jobs, &connection, fsync, retention))
            .map_err(|e| BusError::Unavailable(format!("cannot start the bus's writer: {e}")))?;
        Ok(Writer { queue })
    }

    /// Stores the event in the next group commit; answers once that commit is done.
    pub(super) async fn publish(
        &self,
        event_id: String,
        subject: String,
        body: Vec<u8>,
    ) -> Result<PublishAck> {
        let write = Write::Publish {
            event_id,
            subject,
            body,
        };
        self.write(write)
            .await?
            .ok_or_else(|| BusError::Unavailable("a publish was not answered".into()))
    }

    /// Settles `durable`'s delivery of `seq` in the next group commit.
    pub(super) async fn ack(&self, durable: String, seq: i64) -> Result<()> {
        self.write(Write::Ack { durable, seq }).await.map(|_| ())
    }

    async fn write(&self, write: Write) -> Result<Option<PublishAck>> {
        let stopped = || BusError::Unavailable("the bus's writer has stopped".into());
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Job { write, answer })
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The writer thread: a group at a time, each followed by a step of `retention` when one is
/// due, until every handle is gone.
fn run(
    jobs: &Receiver<Job>,
    connection: &Mutex<Connection>,
    fsync: bool,
    mut retention: Retention,
) {
    while let Some(group) = next_group(jobs, MAX_GROUP) {
        let publishes = group
            .iter()
            .any(|job| matches!(job.write, Write::Publish { .. }));
        let op = if publishes { "publish" } else { "ack" };
        let applied = hold(connection, op, |c| {
            apply_group(c, &group, fsync && publishes)
        });
        match applied {
            Ok(answers) => {
                for (job, answer) in group.into_iter().zip(answers) {
                    // A caller that gave up (its future dropped) is not waiting.
                    let _ = job.answer.send(Ok(answer));
                }
            }
            Err(e) => {
                for job in group {
                    let _ = job.answer.send(Err(e.clone()));
                }
            }
        }
        if retention.due()
            && let Err(e) = hold(connection, "expire", |c| retention.step(c))
        {
            // Tried again at the next step; the messages are kept meanwhile.
            tracing::warn!(error = %e, "could not remove expired messages");
        }
    }
}

/// Applies every write of `group` in one transaction, fsynced if `fsync`; all or none.
fn apply_group(
    conn: &mut Connection,
    group: &[Job],
    fsync: bool,
) -> Result<Vec<Option<PublishAck>>> {
    if fsync {
        // This commit and every unsynced one before it reach the disk.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
    }
    let applied = (|| {
        let tx = conn.transaction().map_err(err)?;
        let answers = group
            .iter()
            .map(|job| apply(&tx, &job.write))
            .collect::<Result<Vec<_>>>()?;
        tx.commit().map_err(err)?;
        Ok(answers)
    })();
    if fsync {
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
    }
    applied
}

/// Applies one write in the group's transaction.
fn apply(tx: &Connection, write: &Write) -> Result<Option<PublishAck>> {
    match write {
        Write::Publish {
            event_id,
            subject,
            body,
        } => insert_message(tx, event_id, subject, body).map(Some),
        Write::Ack { durable, seq } => {
            tx.prepare_cached("DELETE FROM pending WHERE durable = ?1 AND seq = ?2")
                .map_err(err)?
                .execute(params![durable, seq])
                .map_err(err)?;
            Ok(None)
        }
    }
}
