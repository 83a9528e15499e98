//! The durable event bus.
//!
//! Events travel in the [`Envelope`] of `proto/sterling/events/v1/envelope.proto`; the subject is
//! the event type (`card.authorisation.approved`). Publishing is idempotent on the event id.
//! Each subscriber is a durable consumer: at-least-once delivery with explicit ack, redelivery
//! after `ack_wait` or a nak (with a backoff schedule), and after `max_deliver` attempts the
//! event goes to the dead-letter subject `deadletter.<consumer>.<type>`, from where an operator
//! can list it and replay it to that consumer ([`dead_letters`]). Consumers make their handling
//! idempotent on the event id.
//!
//! Backends: [`embedded::SqliteBus`] (in-process, persisted in SQLite) and NATS JetStream, both
//! passing [`conformance`].

pub mod conformance;
pub mod dead_letters;
pub mod embedded;
pub mod nats;

use std::time::Duration;

use async_trait::async_trait;
pub use sterling_proto::events::v1::Envelope;

/// Errors from the bus.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached or failed; retry.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The request is invalid (e.g. an envelope without id or type).
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Result of a bus operation.
pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// What publishing answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    /// Position in the stream.
    pub sequence: u64,
    /// The event id was published before; nothing new was stored.
    pub duplicate: bool,
}

/// An event as the stream stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Position in the stream.
    pub sequence: u64,
    /// The event.
    pub envelope: Envelope,
}

/// Subject prefix of dead letters.
pub const DEAD_LETTER_PREFIX: &str = "deadletter";

/// A durable consumer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Durable name, shared by every instance of the subscribing service.
    pub durable: String,
    /// Subject filters, NATS style: `card.authorisation.*`, `transaction.>`.
    pub subjects: Vec<String>,
    /// An unacknowledged delivery is redelivered after this long.
    pub ack_wait: Duration,
    /// Deliveries before the event is dead-lettered.
    pub max_deliver: u32,
    /// Delay before the n-th redelivery after a nak; the last entry repeats.
    pub backoff: Vec<Duration>,
    /// Deliveries a consumer instance handles at once (1: one after another). More than one
    /// only for handlers that are right in any order.
    pub concurrency: usize,
    /// Whether the consumer records each handled event and skips one it has handled before
    /// (the default). A handler that is idempotent by construction may turn it off and save a
    /// read and a write per event.
    pub deduplicate: bool,
    /// How long a delivery whose handler failed for want of a dependency (a store or service
    /// unavailable, timing out or shedding load) is kept in hand and tried again before it is
    /// naked like any failure. An outage shorter than this spends no delivery, so it cannot
    /// dead-letter an event; a handler that fails otherwise (a bug, a panic) is naked at once.
    /// Zero: every failure is naked at once.
    pub held_through_outage: Duration,
}

impl ConsumerConfig {
    /// A consumer with default timings: ack wait 30 s, 8 deliveries, backoff 100 ms to 1 min,
    /// one delivery at a time, an outage of up to 5 min waited out in hand.
    pub fn new(durable: &str, subjects: &[&str]) -> Self {
        ConsumerConfig {
            durable: durable.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 8,
            backoff: [100, 500, 2_000, 10_000, 60_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            concurrency: 1,
            deduplicate: true,
            held_through_outage: Duration::from_secs(300),
        }
    }

    /// The delay before redelivering after the `attempt`-th delivery failed.
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        let index = (attempt.max(1) as usize - 1).min(self.backoff.len().saturating_sub(1));
        self.backoff
            .get(index)
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Every filter the consumer listens to: its subjects, and the replays of its dead
    /// letters.
    pub fn filters(&self) -> Vec<String> {
        let mut filters = self.subjects.clone();
        filters.push(dead_letters::replay_filter(&self.durable));
        filters
    }

    /// Whether the consumer wants `subject` (one of its [`ConsumerConfig::filters`]); the
    /// embedded bus asks for every message, so it allocates nothing.
    pub fn wants(&self, subject: &str) -> bool {
        self.subjects.iter().any(|f| subject_matches(f, subject))
            || dead_letters::is_replay_for(&self.durable, subject)
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// NATS subject matching: tokens split on `.`, `*` matches one token, `>` the rest.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Settles one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Handled: never deliver again.
    async fn ack(&self) -> Result<()>;
    /// Not handled: deliver again after `delay`.
    async fn nak(&self, delay: Duration) -> Result<()>;
    /// Cannot ever be handled: dead-letter it now.
    async fn term(&self, reason: &str) -> Result<()>;
    /// Still being handled: its ack wait starts again, so it is not delivered again meanwhile.
    async fn in_progress(&self) -> Result<()>;
}

/// One delivery of an event to a consumer.
pub struct Delivery {
    /// The event.
    pub envelope: Envelope,
    /// 1 for the first delivery, 2 for the first redelivery, ...
    pub attempt: u32,
    backoff: Duration,
    acker: Box<dyn Acker>,
}

impl Delivery {
    /// A delivery settled through `acker`; `backoff` is the delay a plain [`Delivery::nak`] uses.
    pub fn new(envelope: Envelope, attempt: u32, backoff: Duration, acker: Box<dyn Acker>) -> Self {
        Delivery {
            envelope,
            attempt,
            backoff,
            acker,
        }
    }

    /// Handled.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }

    /// Not handled this time: redeliver after the consumer's backoff for this attempt, with
    /// jitter (between half and one and a half times it) so that retries do not come in waves.
    pub async fn nak(self) -> Result<()> {
        let jitter = rand::random_range(0.5..1.5);
        self.acker.nak(self.backoff.mul_f64(jitter)).await
    }

    /// Not handled: redeliver after `delay`.
    pub async fn nak_after(self, delay: Duration) -> Result<()> {
        self.acker.nak(delay).await
    }

    /// Never handleable: dead-letter now.
    pub async fn term(self, reason: &str) -> Result<()> {
        self.acker.term(reason).await
    }

    /// Still being handled (a handler slower than the ack wait, such as one waiting out an
    /// engine's restart): not delivered again while this is said within every ack wait.
    pub async fn in_progress(&self) -> Result<()> {
        self.acker.in_progress().await
    }
}

/// A durable consumer's stream of deliveries.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery, waiting until there is one.
    async fn next(&mut self) -> Result<Delivery>;

    /// The next delivery, from a consumer with room for `room` deliveries at once: a bus may
    /// take up to that many in one step and hand the others out at the next calls (which are
    /// then made without looking in the stream). By default, [`Subscription::next`].
    async fn next_within(&mut self, room: usize) -> Result<Delivery> {
        let _ = room;
        self.next().await
    }
}

/// A bus backend.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes an event, once per event id.
    async fn publish(&self, envelope: &Envelope) -> Result<PublishAck>;
    /// Joins (or creates) a durable consumer.
    async fn subscribe(&self, config: ConsumerConfig) -> Result<Box<dyn Subscription>>;
    /// Proves the bus is reachable (for health checks).
    async fn check(&self) -> Result<()>;
    /// Up to `limit` stored events whose subject matches `filter`, after position `after`,
    /// oldest first (operator tools read dead letters this way).
    async fn browse(&self, filter: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>>;
    /// How far `config`'s consumer is behind: events for it not yet acknowledged (published
    /// past its position, or delivered and not acked); 0 for a consumer the bus does not know yet.
    async fn backlog(&self, config: &ConsumerConfig) -> Result<u64>;
}

/// Checks an envelope has what every event needs.
pub fn validate(envelope: &Envelope) -> Result<()> {
    if envelope.event_id.is_empty() || envelope.r#type.is_empty() {
        return Err(BusError::Invalid("an event needs an id and a type".into()));
    }
    if envelope.r#type.starts_with(DEAD_LETTER_PREFIX) && !envelope.r#type.contains('.') {
        return Err(BusError::Invalid("bad event type".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches(
            "card.authorisation.approved",
            "card.authorisation.approved"
        ));
        assert!(subject_matches(
            "card.authorisation.*",
            "card.authorisation.declined"
        ));
        assert!(subject_matches("card.>", "card.authorisation.declined"));
        assert!(!subject_matches("card.*", "card.authorisation.declined"));
        assert!(!subject_matches(
            "card.authorisation.approved",
            "card.authorisation"
        ));
        assert!(!subject_matches("transaction.>", "transaction"));
    }

    #[test]
    fn backoff_repeats_its_last_step() {
        let c = ConsumerConfig::new("x", &["a"]);
        assert_eq!(c.backoff_for(1), Duration::from_millis(100));
        assert_eq!(c.backoff_for(5), Duration::from_secs(60));
        assert_eq!(c.backoff_for(50), Duration::from_secs(60));
    }
}
