//! The deliveries still to attempt, by when they are due (`due_deliveries`): a partition per
//! minute of the attempt's time, rows in due order.
//!
//! Dispatchers read from a watermark (persisted in `dispatch_progress`) up to now, earliest
//! first, so a backlog never starves what is due. A row is deleted when its delivery finishes
//! or moves to a later attempt; the watermark passes a minute once it is empty and a full
//! minute old (so a row written late, by a slow instance or a clock a little behind, is still
//! found), and a minute behind it is never read again: its tombstones stay out of every read.

use sterling_storage::{Mutation, Query, Row, SharedStore, Value};
use sterling_template::Result;

/// Width of a `due_deliveries` partition.
pub const MINUTE_MS: i64 = 60_000;

/// Most rows read from one minute in one pass.
const PAGE: usize = 1_000;

/// A delivery due at some time: (webhook id, event id, due at in ms).
pub type Due = (String, String, i64);

/// The queue of due deliveries.
#[derive(Clone)]
pub struct DueQueue {
    store: SharedStore,
}

fn key(webhook_id: &str, event_id: &str, due_at: i64) -> Row {
    Row::new()
        .with("minute", due_at.div_euclid(MINUTE_MS))
        .with("due_at", Value::Timestamp(due_at))
        .with("webhook_id", webhook_id)
        .with("event_id", event_id)
}

fn progress_key() -> Row {
    Row::new().with("name", "due_deliveries")
}

impl DueQueue {
    /// The queue over the webhooks store.
    pub fn new(store: SharedStore) -> Self {
        DueQueue { store }
    }

    /// The write that queues a delivery at `due_at`.
    pub fn add(webhook_id: &str, event_id: &str, due_at: i64) -> Mutation {
        Mutation::insert("due_deliveries", key(webhook_id, event_id, due_at))
    }

    /// The write that takes a delivery queued at `due_at` off the queue.
    pub fn remove(webhook_id: &str, event_id: &str, due_at: i64) -> Mutation {
        Mutation::Delete {
            table: "due_deliveries".into(),
            key: key(webhook_id, event_id, due_at),
            if_exists: false,
        }
    }

    /// Where the dispatchers have got to; the first time, rows of the queue this one replaced
    /// are moved in.
    async fn watermark(&self, now: i64) -> Result<i64> {
        if let Some(row) = self.store.get("dispatch_progress", &progress_key()).await? {
            return Ok(row.i64("minute")?);
        }
        let oldest = self.move_pending_deliveries().await?;
        let start = oldest.unwrap_or(now).div_euclid(MINUTE_MS) - 1;
        self.save(start).await?;
        Ok(start)
    }

    async fn save(&self, minute: i64) -> Result<()> {
        self.store
            .apply(vec![Mutation::insert(
                "dispatch_progress",
                progress_key().with("minute", minute),
            )])
            .await?;
        Ok(())
    }

    /// Moves every row of `pending_deliveries` (the queue before this one) here; returns
    /// when the earliest was due.
    async fn move_pending_deliveries(&self) -> Result<Option<i64>> {
        let mut oldest: Option<i64> = None;
        for shard in 0..crate::dispatch::SHARDS {
            let rows = self
                .store
                .query(Query::partition(
                    "pending_deliveries",
                    Row::new().with("shard", shard),
                ))
                .await?;
            for row in rows {
                let (webhook_id, event_id) = (row.text("webhook_id")?, row.text("event_id")?);
                let due_at = row.timestamp("next_attempt_at").unwrap_or_default();
                self.store
                    .apply(vec![Self::add(webhook_id, event_id, due_at)])
                    .await?;
                self.store
                    .apply(vec![Mutation::Delete {
                        table: "pending_deliveries".into(),
                        key: Row::new()
                            .with("shard", shard)
                            .with("webhook_id", webhook_id)
                            .with("event_id", event_id),
                        if_exists: false,
                    }])
                    .await?;
                oldest = Some(oldest.map_or(due_at, |o| o.min(due_at)));
            }
        }
        Ok(oldest)
    }

    /// What is due at `now`, earliest first, at most a page per minute; moves the watermark
    /// past the minutes found empty.
    pub async fn due(&self, now: i64) -> Result<Vec<Due>> {
        let watermark = self.watermark(now).await?;
        let current = now.div_euclid(MINUTE_MS);
        let mut due = Vec::new();
        let mut next = watermark;
        let mut contiguous = true;
        for minute in watermark..=current {
            let rows = self
                .store
                .query(
                    Query::partition("due_deliveries", Row::new().with("minute", minute))
                        .limit(PAGE),
                )
                .await?;
            if contiguous && rows.is_empty() && minute < current - 1 {
                next = minute + 1;
            } else {
                contiguous = false;
            }
            for row in rows {
                let due_at = row.timestamp("due_at")?;
                if due_at > now {
                    break;
                }
                let webhook_id = row.text("webhook_id")?.to_string();
                due.push((webhook_id, row.text("event_id")?.to_string(), due_at));
            }
        }
        if next != watermark {
            self.save(next).await?;
        }
        Ok(due)
    }
}
