//! The bus on NATS JetStream.
//!
//! One stream per namespace (`STERLING_EVENTS`, file storage, configurable replicas) holds every
//! subject under `sterling.events.>`; publishing sets `Nats-Msg-Id` to the event id so JetStream drops
//! duplicates, and carries the request id and trace context as headers too. Each subscriber is
//! a durable pull consumer with explicit acks, ack wait, a backoff schedule and max deliveries;
//! a delivery past `max_deliver` (or terminated) is published to
//! `deadletter.<consumer>.<type>`, and a consumer's filters include the replays addressed to it
//! ([`crate::dead_letters`]). The server itself must run with `sync_interval: always`
//! (see `deploy/local/nats.sh`) or acknowledged writes can be lost.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use futures::StreamExt;
use prost::Message;

use crate::{
    Acker, Bus, BusError, ConsumerConfig, Delivery, Envelope, PublishAck, Result, StoredEvent,
    Subscription, dead_letters, validate,
};

/// How to reach and use JetStream.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma separated.
    pub url: String,
    /// Stream name.
    pub stream: String,
    /// Subject prefix of every event: `<namespace>.events`.
    pub subject_prefix: String,
    /// Stream replicas (3 in production).
    pub replicas: usize,
    /// JetStream's de-duplication window.
    pub duplicate_window: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "STERLING_EVENTS".into(),
            subject_prefix: "sterling.events".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl NatsConfig {
    /// The stream and subjects of a namespace (`sterling` by default): stream
    /// `<NAMESPACE>_EVENTS`, subjects `<namespace>.events.>`.
    pub fn for_namespace(url: &str, namespace: &str) -> Self {
        NatsConfig {
            url: url.to_string(),
            stream: format!("{}_EVENTS", namespace.to_ascii_uppercase()),
            subject_prefix: format!("{namespace}.events"),
            ..NatsConfig::default()
        }
    }

    /// From `STERLING_NATS_URL`, `STERLING_NATS_STREAM`, `STERLING_NATS_REPLICAS`.
    pub fn from_env() -> Self {
        let mut c = NatsConfig::default();
        if let Ok(url) = std::env::var("STERLING_NATS_URL") {
            c.url = url;
        }
        if let Ok(stream) = std::env::var("STERLING_NATS_STREAM") {
            c.stream = stream;
        }
        if let Some(r) = std::env::var("STERLING_NATS_REPLICAS")
            .ok()
            .and_then(|r| r.parse().ok())
        {
            c.replicas = r;
        }
        c
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// Connects to NATS with reconnection on, so a restarted server is picked up again.
pub async fn connect(url: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(url)
        .await
        .map_err(unavailable)
}

/// The JetStream bus.
#[derive(Clone)]
pub struct NatsBus {
    jetstream: jetstream::Context,
    config: NatsConfig,
}

fn consumer_name(durable: &str) -> String {
    durable
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl NatsBus {
    /// Connects and makes sure the stream exists.
    pub async fn connect(config: NatsConfig) -> Result<NatsBus> {
        let client = connect(&config.url).await?;
        let jetstream = jetstream::new(client);
        let bus = NatsBus { jetstream, config };
        bus.ensure_stream().await?;
        Ok(bus)
    }

    /// Deletes the namespace's stream and every event in it: for tearing a namespace down
    /// (tests remove what they made).
    pub async fn delete_stream(&self) -> Result<()> {
        self.jetstream
            .delete_stream(&self.config.stream)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn subject_of(&self, event_type: &str) -> String {
        format!("{}.{event_type}", self.config.subject_prefix)
    }

    async fn ensure_stream(&self) -> Result<stream::Stream> {
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: self.config.stream.clone(),
                subjects: vec![format!("{}.>", self.config.subject_prefix)],
                storage: stream::StorageType::File,
                num_replicas: self.config.replicas,
                duplicate_window: self.config.duplicate_window,
                retention: stream::RetentionPolicy::Limits,
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            })
            .await
            .map_err(unavailable)
    }

    async fn publish_raw(&self, envelope: &Envelope, id: &str) -> Result<PublishAck> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        if !envelope.request_id.is_empty() {
            headers.insert("x-request-id", envelope.request_id.as_str());
        }
        if !envelope.traceparent.is_empty() {
            headers.insert("traceparent", envelope.traceparent.as_str());
        }
        let ack = self
            .jetstream
            .publish_with_headers(
                self.subject_of(&envelope.r#type),
                headers,
                envelope.encode_to_vec().into(),
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(PublishAck {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn dead_letter(
        &self,
        durable: &str,
        event: &Envelope,
        replay: u32,
        deliveries: u32,
        reason: &str,
    ) -> Result<()> {
        let dead = dead_letters::dead_letter_envelope(durable, event, replay, deliveries, reason);
        self.publish_raw(&dead, &dead.event_id).await?;
        tracing::warn!(durable, event_id = %event.event_id, replay, reason, "event dead-lettered");
        Ok(())
    }

    /// Up to `limit` events under `filter` after `after`, read by a short-lived consumer that
    /// acknowledges nothing.
    async fn read_range(&self, filter: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let stream = self.ensure_stream().await?;
        let reader = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ack_policy: consumer::AckPolicy::None,
                filter_subject: self.subject_of(filter),
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let name = reader.cached_info().name.clone();
        let mut found = Vec::new();
        let wanted = limit.min(reader.cached_info().num_pending as usize);
        if wanted > 0 {
            let mut batch = reader
                .batch()
                .max_messages(wanted)
                .expires(Duration::from_secs(5))
                .messages()
                .await
                .map_err(unavailable)?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(unavailable)?;
                let (sequence, pending) = message
                    .info()
                    .map(|i| (i.stream_sequence, i.pending))
                    .map_err(unavailable)?;
                let envelope = Envelope::decode(message.payload.as_ref())
                    .map_err(|e| BusError::Invalid(e.to_string()))?;
                found.push(StoredEvent { sequence, envelope });
                if found.len() >= wanted || pending == 0 {
                    break;
                }
            }
        }
        let _ = stream.delete_consumer(&name).await;
        Ok(found)
    }
}

struct NatsAcker {
    bus: NatsBus,
    durable: String,
    message: jetstream::Message,
    envelope: Envelope,
    replay: u32,
    attempt: u32,
    max_deliver: u32,
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<()> {
        self.message.double_ack().await.map_err(unavailable)
    }

    async fn nak(&self, delay: Duration) -> Result<()> {
        if self.attempt >= self.max_deliver {
            return self.term("max deliveries reached").await;
        }
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(unavailable)
    }

    async fn in_progress(&self) -> Result<()> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(unavailable)
    }

    async fn term(&self, reason: &str) -> Result<()> {
        self.bus
            .dead_letter(
                &self.durable,
                &self.envelope,
                self.replay,
                self.attempt,
                reason,
            )
            .await?;
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(unavailable)
    }
}

struct NatsSubscription {
    bus: NatsBus,
    consumer: consumer::Consumer<consumer::pull::Config>,
    config: ConsumerConfig,
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Result<Delivery> {
        loop {
            // One message per pull: nothing sits prefetched in an idle instance.
            let mut batch = match self
                .consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages()
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "pull failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "pull failed; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        break;
                    }
                };
                let attempt = message.info().map(|i| i.delivered as u32).unwrap_or(1);
                let decoded = Envelope::decode(message.payload.as_ref())
                    .map_err(|e| BusError::Invalid(e.to_string()))
                    .and_then(dead_letters::unwrap_replay);
                let (envelope, replay) = match decoded {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %e, "message is not an event; terminating it");
                        let _ = message.ack_with(AckKind::Term).await;
                        continue;
                    }
                };
                let acker = NatsAcker {
                    bus: self.bus.clone(),
                    durable: self.config.durable.clone(),
                    message,
                    envelope: envelope.clone(),
                    replay,
                    attempt,
                    max_deliver: self.config.max_deliver,
                };
                if attempt > self.config.max_deliver {
                    // The last allowed delivery was never settled (its consumer died).
                    acker.term("max deliveries reached").await?;
                    continue;
                }
                let backoff = self.config.backoff_for(attempt);
                return Ok(Delivery::new(envelope, attempt, backoff, Box::new(acker)));
            }
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, envelope: &Envelope) -> Result<PublishAck> {
        validate(envelope)?;
        self.publish_raw(envelope, &envelope.event_id).await
    }

    async fn subscribe(&self, config: ConsumerConfig) -> Result<Box<dyn Subscription>> {
        if config.durable.is_empty() || config.subjects.is_empty() || config.max_deliver == 0 {
            return Err(BusError::Invalid(
                "a consumer needs a name, subjects and max_deliver >= 1".into(),
            ));
        }
        let stream = self.ensure_stream().await?;
        let name = consumer_name(&config.durable);
        // Created or updated: a consumer made before replays existed gains their filter.
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                // One extra delivery lets us dead-letter a delivery whose consumer died.
                max_deliver: i64::from(config.max_deliver) + 1,
                filter_subjects: config
                    .filters()
                    .iter()
                    .map(|s| self.subject_of(s))
                    .collect(),
                deliver_policy: consumer::DeliverPolicy::All,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(Box::new(NatsSubscription {
            bus: self.clone(),
            consumer,
            config,
        }))
    }

    async fn browse(&self, filter: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        self.read_range(filter, after, limit).await
    }

    async fn backlog(&self, config: &ConsumerConfig) -> Result<u64> {
        // One request (the consumer's info), not two: the stream is not looked up first.
        let stream = self
            .jetstream
            .get_stream_no_info(&self.config.stream)
            .await
            .map_err(unavailable)?;
        let name = consumer_name(&config.durable);
        let info = match stream.consumer_info(&name).await {
            Ok(info) => info,
            // Not made yet (nor perhaps its stream): nothing has been delivered to it.
            Err(e)
                if matches!(
                    e.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                return Ok(0);
            }
            Err(e) => return Err(unavailable(e)),
        };
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    async fn check(&self) -> Result<()> {
        self.jetstream
            .get_stream(&self.config.stream)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
