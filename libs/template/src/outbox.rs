//! The transactional outbox: an event is staged in the service's own store before the state
//! change it announces, published right after it, and published by the relay if the process
//! died in between, so a crash loses nothing.
//!
//! 1. [`Outbox::stage`] writes the event to the `outbox` table.
//! 2. The service applies its state change, recording the event id with it.
//! 3. [`Outbox::publish_soon`] publishes it in the background and removes it from the outbox
//!    ([`Outbox::discard`] if the state change did not happen).
//! 4. The relay looks at events staged longer than the grace period and asks the service's
//!    [`Confirm`] whether the state change happened: publish, discard or wait.
//!
//! Publishing is idempotent on the event id, so the relay and the fast path may both publish.
//!
//! Staged events live in `staged_events`, a partition per minute of the event's making
//! (`occurred_at_ms`) and shard. The relay reads the minutes from a watermark
//! (`outbox_progress`) up to now and moves the watermark past a minute once it is empty and
//! more than [`LATE_WRITES`] old, so the tombstones of published events are read a few times
//! at most, never again once behind.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use sterling_bus::{Bus, Envelope};
use sterling_storage::{Migration, Mutation, Query, Row, SharedStore, Value, now_millis};

use crate::context::RequestContext;
use crate::error::{Error, Result};
use crate::gathered::GatheredWrites;

/// The first outbox table (8 partitions forever), added to every service's store by the
/// template; the relay moves its rows to `staged_events` once.
pub const OUTBOX_MIGRATION: Migration = Migration {
    version: 1_000_001,
    name: "template_0001_outbox.cql",
    cql: "CREATE TABLE IF NOT EXISTS outbox (
              shard bigint,
              event_id text,
              type text,
              envelope blob,
              staged_at timestamp,
              PRIMARY KEY ((shard), event_id));",
};

/// The outbox by minute, added to every service's store by the template: staged events in
/// partitions by the minute of their id and a shard, and how far the relay found them empty.
pub const STAGED_EVENTS_MIGRATION: Migration = Migration {
    version: 1_000_003,
    name: "template_0003_staged_events.cql",
    cql: "CREATE TABLE IF NOT EXISTS staged_events (
              minute bigint,
              shard bigint,
              event_id text,
              type text,
              envelope blob,
              staged_at timestamp,
              PRIMARY KEY ((minute, shard), event_id));
          CREATE TABLE IF NOT EXISTS outbox_progress (
              name text PRIMARY KEY,
              minute bigint);",
};

/// The record of events a consumer has handled, added to every service's store by the
/// template: a redelivered event already handled is acknowledged without running the handler.
pub const PROCESSED_EVENTS_MIGRATION: Migration = Migration {
    version: 1_000_002,
    name: "template_0002_processed_events.cql",
    cql: "CREATE TABLE IF NOT EXISTS processed_events (
              consumer text,
              event_id text,
              processed_at timestamp,
              PRIMARY KEY ((consumer, event_id)));",
};

/// Every table of the outbox and the consumers' record, in order: what the template adds to
/// every service's store.
pub const TEMPLATE_MIGRATIONS: [Migration; 4] = [
    OUTBOX_MIGRATION,
    PROCESSED_EVENTS_MIGRATION,
    STAGED_EVENTS_MIGRATION,
    crate::by_month::DATA_MOVES_MIGRATION,
];

/// How long a handled event's id is remembered (longer than any redelivery schedule).
pub const PROCESSED_EVENTS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the relay leaves a staged event to the fast path before it asks [`Confirm`].
pub const OUTBOX_GRACE: Duration = Duration::from_secs(2);

/// A staged event still unconfirmed after this long is dropped: the state change it announces
/// did not happen (the writer died before it) and no longer can.
pub const OUTBOX_WAIT_LIMIT: Duration = Duration::from_secs(600);

/// Partitions of each minute of the outbox.
pub const SHARDS: i64 = 8;

/// Width of a `staged_events` partition.
const MINUTE_MS: i64 = 60_000;

/// How long after its end a minute may still receive a staged event (a slow write, a clock a
/// little behind); the watermark passes a minute only once it is empty and this old.
pub const LATE_WRITES: Duration = Duration::from_secs(60);

/// Most rows the relay reads from one partition in a pass.
const PAGE: usize = 500;

/// What the relay should do with an event staged long ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The state change happened: publish.
    Publish,
    /// It did not and never will: drop the event.
    Discard,
    /// Not known yet (the change may still be in progress): look again later.
    Wait,
}

/// The service's answer to "did the state change behind this event happen?".
#[async_trait]
pub trait Confirm: Send + Sync + 'static {
    /// Looks at the service's own state for the event.
    async fn confirm(&self, envelope: &Envelope) -> Result<Verdict>;
}

/// How long the first removal of a published event waits for others to join its batch.
const DISCARD_GATHER: Duration = Duration::from_millis(5);

/// Most removals written in one batch.
const MAX_DISCARDS: usize = 100;

/// A service's outbox.
#[derive(Clone)]
pub struct Outbox {
    store: SharedStore,
    bus: Arc<dyn Bus>,
    confirm: Arc<dyn Confirm>,
    grace: Duration,
    /// The removals of published events, written together with others.
    discards: GatheredWrites,
}

fn shard_of(event_id: &str) -> i64 {
    let hash = event_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    (hash % SHARDS as u64) as i64
}

/// The minute an event was made in: that of `occurred_at_ms`, or of its UUIDv7 id for an
/// envelope without one. An event whose id is derived ([`derived_event`]) is staged in the
/// minute it was made, not in that of its id, so the relay finds it however late it is made.
fn minute_of(envelope: &Envelope) -> Result<i64> {
    if envelope.occurred_at_ms > 0 {
        return Ok(envelope.occurred_at_ms.div_euclid(MINUTE_MS));
    }
    let id = &envelope.event_id;
    let millis = sterling_storage::uuid_v7_millis(id)
        .ok_or_else(|| Error::internal(format!("event id {id:?} is not a UUIDv7")))?;
    Ok(millis.div_euclid(MINUTE_MS))
}

fn key(envelope: &Envelope) -> Result<Row> {
    Ok(Row::new()
        .with("minute", minute_of(envelope)?)
        .with("shard", shard_of(&envelope.event_id))
        .with("event_id", envelope.event_id.as_str()))
}

fn removal(envelope: &Envelope) -> Result<Mutation> {
    removal_at(key(envelope)?)
}

/// The removal of the staged row at `row`'s key (the relay removes a row where it found it).
fn removal_at(row: Row) -> Result<Mutation> {
    let key = Row::new()
        .with("minute", row.i64("minute")?)
        .with("shard", row.i64("shard")?)
        .with("event_id", row.text("event_id")?);
    Ok(Mutation::Delete {
        table: "staged_events".into(),
        key,
        if_exists: false,
    })
}

fn progress_key() -> Row {
    Row::new().with("name", "relay")
}

/// A new event of `event_type` carrying `payload`, stamped with the current request's id and
/// trace context; a producer span marks the publish in the trace, and its consumers' spans
/// hang under it.
pub fn event(event_type: &str, payload: &impl Message) -> Envelope {
    // The id's time is the event's, so the id's minute is the one it is staged in.
    let id = uuid::Uuid::now_v7().to_string();
    let now = sterling_storage::uuid_v7_millis(&id).unwrap_or_else(now_millis);
    envelope(event_type, payload, id, now)
}

/// An event whose id is fixed by `cause` (the same event type and cause always give the same
/// id, a UUIDv7 of `cause_ms` whose random part is a hash of both): what two deliveries of one
/// cause announce is one event, published twice at most, which the bus and every consumer
/// take once. Its `occurred_at_ms` is when it is made.
pub fn derived_event(
    event_type: &str,
    payload: &impl Message,
    cause: &str,
    cause_ms: i64,
) -> Envelope {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(event_type.as_bytes())
        .chain_update([0u8])
        .chain_update(cause.as_bytes())
        .finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let id = uuid::Builder::from_unix_timestamp_millis(cause_ms.max(0) as u64, &random).into_uuid();
    envelope(event_type, payload, id.to_string(), now_millis())
}

/// An envelope of `payload` with this id and time, stamped with the current request's id and
/// trace context.
fn envelope(event_type: &str, payload: &impl Message, event_id: String, now: i64) -> Envelope {
    let context = RequestContext::current();
    let span = tracing::info_span!("publish", otel.name = %format!("publish {event_type}"), otel.kind = "producer", event_type);
    Envelope {
        event_id,
        r#type: event_type.to_string(),
        occurred_at_ms: now,
        request_id: context
            .as_ref()
            .map(|c| c.request_id.clone())
            .unwrap_or_default(),
        traceparent: context
            .as_ref()
            .map(|c| {
                crate::telemetry::span_trace(&span, &c.trace)
                    .unwrap_or_else(|| c.trace.clone())
                    .header()
            })
            .unwrap_or_default(),
        payload: payload.encode_to_vec(),
    }
}

impl Outbox {
    /// An outbox over the service's store; `grace` is how long the relay leaves a staged event
    /// to the fast path.
    pub fn new(
        store: SharedStore,
        bus: Arc<dyn Bus>,
        confirm: Arc<dyn Confirm>,
        grace: Duration,
    ) -> Self {
        Outbox {
            discards: GatheredWrites::new(
                store.clone(),
                "removals of published events",
                DISCARD_GATHER,
                MAX_DISCARDS,
            ),
            store,
            bus,
            confirm,
            grace,
        }
    }

    /// Stages an event before the state change it announces.
    pub async fn stage(&self, envelope: &Envelope) -> Result<()> {
        self.store.apply(vec![self.staging(envelope)?]).await?;
        Ok(())
    }

    /// The write that stages an event, for a caller to apply as the batch before its state
    /// change's in one [`sterling_storage::Store::apply_in_order`] (one commit on the
    /// embedded store; one after the other on Cassandra, as [`Outbox::stage`] then the
    /// change). The event is staged whether or not the change applies.
    pub fn staging(&self, envelope: &Envelope) -> Result<Mutation> {
        let row = key(envelope)?
            .with("type", envelope.r#type.as_str())
            .with("envelope", envelope.encode_to_vec())
            .with("staged_at", Value::Timestamp(now_millis()));
        Ok(Mutation::insert("staged_events", row))
    }

    /// Publishes a staged event in the background, then removes it; on failure the relay
    /// publishes it later.
    pub fn publish_soon(&self, envelope: Envelope) {
        let outbox = self.clone();
        tokio::spawn(async move {
            if let Err(e) = outbox.publish(&envelope).await {
                tracing::warn!(event_id = %envelope.event_id, error = %e, "publish failed; the relay will retry");
            }
        });
    }

    /// Publishes a staged event now, then removes it from the outbox (with others published
    /// at about the same time: one write for many under load). A removal that fails leaves its
    /// event staged: the relay publishes it again, which is harmless (publishing is idempotent
    /// on the id); so does a removal a power cut forgets.
    pub async fn publish(&self, envelope: &Envelope) -> Result<()> {
        self.bus
            .publish(envelope)
            .await
            .map_err(|e| Error::unavailable("bus", e.to_string()))?;
        self.discards.write(removal(envelope)?).await
    }

    /// Removes a staged event whose state change did not happen.
    pub async fn discard(&self, envelope: &Envelope) -> Result<()> {
        // Lazily: a removal a power cut forgets has the relay ask again, and discard it again.
        self.store.apply_lazily(vec![removal(envelope)?]).await?;
        Ok(())
    }

    /// One pass of the relay over events staged longer than the grace period, minute by
    /// minute from the watermark; returns how many it published.
    pub async fn relay_once(&self) -> Result<usize> {
        let now = now_millis();
        let cutoff = now - self.grace.as_millis() as i64;
        let settled = (now - LATE_WRITES.as_millis() as i64).div_euclid(MINUTE_MS);
        let watermark = self.watermark(now).await?;
        let (mut published, mut next) = (0, watermark);
        for minute in watermark..=cutoff.div_euclid(MINUTE_MS) {
            let mut empty = true;
            for shard in 0..SHARDS {
                let partition = Row::new().with("minute", minute).with("shard", shard);
                let rows = self
                    .store
                    .query(Query::partition("staged_events", partition).limit(PAGE))
                    .await?;
                empty &= rows.is_empty();
                for row in rows {
                    published += usize::from(self.settle(&row, cutoff).await?);
                }
            }
            if empty && next == minute && minute < settled {
                next = minute + 1;
            }
        }
        if next != watermark {
            self.save_watermark(next).await?;
        }
        Ok(published)
    }

    /// Publishes, discards or leaves one staged row; true when it published.
    async fn settle(&self, row: &Row, cutoff: i64) -> Result<bool> {
        let staged_at = row.timestamp("staged_at")?;
        if staged_at > cutoff {
            return Ok(false);
        }
        let envelope = Envelope::decode(row.blob("envelope")?)
            .map_err(|e| Error::internal(format!("outbox row is not an envelope: {e}")))?;
        // Removed where it was found: a row staged under another minute than its envelope
        // gives now (an older build's) must not stay to be published at every pass.
        let removal = removal_at(row.clone())?;
        match self.confirm.confirm(&envelope).await? {
            Verdict::Publish => {
                self.bus
                    .publish(&envelope)
                    .await
                    .map_err(|e| Error::unavailable("bus", e.to_string()))?;
                self.discards.write(removal).await?;
                tracing::info!(event_id = %envelope.event_id, "relay published a staged event");
                return Ok(true);
            }
            Verdict::Discard => {
                self.store.apply_lazily(vec![removal]).await?;
            }
            Verdict::Wait if now_millis() - staged_at > OUTBOX_WAIT_LIMIT.as_millis() as i64 => {
                tracing::warn!(event_id = %envelope.event_id, "staged event never confirmed; dropping it");
                self.store.apply_lazily(vec![removal]).await?;
            }
            Verdict::Wait => {}
        }
        Ok(false)
    }

    /// The first minute that may hold staged events; the first time, the rows of the outbox
    /// this one replaced are moved in.
    async fn watermark(&self, now: i64) -> Result<i64> {
        if let Some(row) = self.store.get("outbox_progress", &progress_key()).await? {
            return Ok(row.i64("minute")?);
        }
        let oldest = self.move_first_outbox().await?;
        let limit = (now - OUTBOX_WAIT_LIMIT.as_millis() as i64).div_euclid(MINUTE_MS);
        let start = oldest.map_or(limit, |o| o.min(limit));
        self.save_watermark(start).await?;
        Ok(start)
    }

    async fn save_watermark(&self, minute: i64) -> Result<()> {
        let row = progress_key().with("minute", minute);
        self.store
            .apply(vec![Mutation::insert("outbox_progress", row)])
            .await?;
        Ok(())
    }

    /// Moves every row of the first outbox table to `staged_events`; returns the earliest
    /// minute moved.
    async fn move_first_outbox(&self) -> Result<Option<i64>> {
        let mut oldest: Option<i64> = None;
        for shard in 0..SHARDS {
            let old = Row::new().with("shard", shard);
            for row in self
                .store
                .query(Query::partition("outbox", old.clone()))
                .await?
            {
                let event_id = row.text("event_id")?;
                let envelope = Envelope::decode(row.blob("envelope")?)
                    .map_err(|e| Error::internal(format!("outbox row is not an envelope: {e}")))?;
                let moved = key(&envelope)?
                    .with("type", row.text("type")?)
                    .with("envelope", row.blob("envelope")?.to_vec())
                    .with("staged_at", Value::Timestamp(row.timestamp("staged_at")?));
                let minute = moved.i64("minute")?;
                self.store
                    .apply(vec![Mutation::insert("staged_events", moved)])
                    .await?;
                let gone = Mutation::Delete {
                    table: "outbox".into(),
                    key: old.clone().with("event_id", event_id),
                    if_exists: false,
                };
                self.store.apply(vec![gone]).await?;
                oldest = Some(oldest.map_or(minute, |o| o.min(minute)));
            }
        }
        Ok(oldest)
    }

    /// Runs the relay every `interval` until the task is aborted.
    pub fn spawn_relay(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let outbox = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if let Err(e) = outbox.relay_once().await {
                    tracing::warn!(error = %e, "outbox relay pass failed");
                }
            }
        })
    }
}
