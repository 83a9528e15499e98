//! Lazy writes gathered into one commit: the first write queued waits a moment, then every
//! write queued by then is applied together with [`sterling_storage::Store::apply_lazily`]
//! (no fsync of its own). Under load that is one commit, and two thread hand-overs, for many
//! writes instead of one each.
//!
//! Only for writes whose loss is harmless by design: a consumer's record of an event it
//! handled (lost, it costs one more run of an idempotent handler) and the removal of a
//! published event from the outbox (lost, the relay publishes it again, idempotently).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sterling_storage::{Mutation, SharedStore};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// One queued write, and who waits for its commit (nobody for [`GatheredWrites::queue`]).
type Queued = (Mutation, Option<oneshot::Sender<Result<()>>>);

/// Lazy writes to one store, gathered for a moment and applied together.
#[derive(Clone)]
pub(crate) struct GatheredWrites {
    store: SharedStore,
    /// What the writes are, for the log line of one that failed.
    what: &'static str,
    /// How long the first write of a gathering waits for others.
    gather: Duration,
    /// Most writes in one commit.
    per_commit: usize,
    queued: Arc<Mutex<Vec<Queued>>>,
}

impl GatheredWrites {
    /// Writes of `what` to `store`, gathered for `gather`, at most `per_commit` in a commit.
    pub(crate) fn new(
        store: SharedStore,
        what: &'static str,
        gather: Duration,
        per_commit: usize,
    ) -> Self {
        GatheredWrites {
            store,
            what,
            gather,
            per_commit: per_commit.max(1),
            queued: Arc::default(),
        }
    }

    /// Queues `write` and returns at once; a failed commit is logged.
    pub(crate) fn queue(&self, write: Mutation) {
        self.push((write, None));
    }

    /// Queues `write` and waits for the commit it is gathered into.
    pub(crate) async fn write(&self, write: Mutation) -> Result<()> {
        let (done, committed) = oneshot::channel();
        self.push((write, Some(done)));
        committed
            .await
            .map_err(|_| Error::internal("a gathered write was dropped unwritten"))?
    }

    /// Queues one write; the first of a gathering starts the task that writes them all (a
    /// task of its own, so that a caller that goes away strands nobody).
    fn push(&self, queued: Queued) {
        let first = {
            let mut all = self.queued.lock().unwrap_or_else(|p| p.into_inner());
            all.push(queued);
            all.len() == 1
        };
        if first {
            let writes = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(writes.gather).await;
                writes.write_queued().await;
            });
        }
    }

    /// Applies every write queued so far, `per_commit` at a time, and tells their waiters.
    pub(crate) async fn write_queued(&self) {
        let mut queued =
            std::mem::take(&mut *self.queued.lock().unwrap_or_else(|p| p.into_inner()));
        while !queued.is_empty() {
            let rest = queued.split_off(queued.len().min(self.per_commit));
            let (writes, waiters): (Vec<_>, Vec<_>) = queued.into_iter().unzip();
            let count = writes.len();
            let outcome = self.store.apply_lazily(writes).await.map_err(Error::from);
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, count, what = self.what, "a gathered write failed");
            }
            for waiter in waiters.into_iter().flatten() {
                let _ = waiter.send(outcome.clone().map(|_| ()));
            }
            queued = rest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sterling_storage::{Row, Value};

    fn store() -> SharedStore {
        Arc::new(
            sterling_storage::embedded::SqliteStore::in_memory(&crate::outbox::TEMPLATE_MIGRATIONS)
                .unwrap(),
        )
    }

    fn key(id: &str) -> Row {
        Row::new().with("consumer", "c").with("event_id", id)
    }

    fn record(id: &str) -> Mutation {
        Mutation::insert(
            "processed_events",
            key(id).with("processed_at", Value::Timestamp(1)),
        )
    }

    async fn written(store: &SharedStore, id: &str) -> bool {
        store
            .get("processed_events", &key(id))
            .await
            .unwrap()
            .is_some()
    }

    #[tokio::test]
    async fn queued_writes_are_applied_together_a_moment_later() {
        let store = store();
        let gather = Duration::from_millis(20);
        let writes = GatheredWrites::new(store.clone(), "records", gather, 2);
        for id in ["e1", "e2", "e3"] {
            writes.queue(record(id));
        }
        assert!(
            !written(&store, "e1").await,
            "gathered, not written at once"
        );
        tokio::time::sleep(gather * 5).await;
        for id in ["e1", "e2", "e3"] {
            assert!(written(&store, id).await, "{id} written");
        }
        // What is still queued when asked (at a stop) is written then.
        writes.queue(record("e4"));
        writes.write_queued().await;
        assert!(written(&store, "e4").await);
    }

    #[tokio::test]
    async fn a_waiting_write_returns_once_its_commit_is_done() {
        let store = store();
        let writes = GatheredWrites::new(store.clone(), "records", Duration::from_millis(5), 8);
        let (a, b) = tokio::join!(writes.write(record("a")), writes.write(record("b")));
        a.unwrap();
        b.unwrap();
        assert!(written(&store, "a").await && written(&store, "b").await);
    }

    #[tokio::test]
    async fn a_failed_commit_is_reported_to_its_waiters() {
        let writes = GatheredWrites::new(store(), "records", Duration::from_millis(5), 8);
        let unknown_table = Mutation::insert("no_such_table", Row::new().with("id", "x"));
        assert!(writes.write(unknown_table).await.is_err());
    }
}
