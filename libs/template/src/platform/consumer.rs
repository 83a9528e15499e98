//! The event consumer: runs a handler for every event of a durable consumer, in the request
//! context the event carries.
//!
//! Ack and retry policy, in order:
//! - an event this consumer already handled (its id is in `processed_events`) is acked without
//!   running the handler again (unless the consumer does not `deduplicate`: its handler is
//!   idempotent by construction);
//! - `Ok` acks, and records the id ([`processed_records`]): records are gathered for a moment
//!   and written together lazily ([`sterling_storage::Store::apply_lazily`]: on the embedded
//!   store, without an fsync of their own), after the handler's own writes were answered
//!   durable. A record never written (the process died first, the write failed) costs one more
//!   run of the idempotent handler, and only if the ack was lost too;
//! - an error of class `bad_request` can never succeed: the event is dead-lettered (`term`);
//! - an error of a dependency that is passing (`unavailable`, `timeout`, `rate_limited`: a
//!   store or service restarting or shedding load) keeps the delivery in hand and runs the
//!   handler again after a wait (200 ms, doubling to 5 s), for up to the consumer's
//!   `held_through_outage`: an outage shorter than that spends no delivery, so it cannot
//!   dead-letter an event however many deliveries are allowed. Past it, or on stopping, the
//!   delivery is naked as below;
//! - any other error, or a panic of the handler, naks it for redelivery with the consumer's
//!   backoff.
//!
//! Deliveries are handled up to `concurrency` at once. A consumer with an ordering key
//! ([`OrderKey`]) handles the events of one key (an account) one after another, in the order
//! they were delivered, and different keys at once.
//!
//! While a delivery is being handled the bus is told so every third of the ack wait, so a slow
//! handler is not delivered again beside itself (each copy would count towards `max_deliver`).
//!
//! The fail point `consumer::<durable>` runs before the handler (tests make a consumer refuse
//! or fail its events with it).
//!
//! Metrics per consumer: `sterling_consumer_events_total{outcome}` (`handled`, `duplicate`,
//! `rejected`, `failed`), `sterling_consumer_redelivered_total`,
//! `sterling_consumer_retried_in_hand_total` (handler runs again through an outage), and
//! `sterling_consumer_lag_seconds` (from the event's time to its handling), and
//! `sterling_consumer_backlog_events` (what it has not acked yet, sampled every second).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use metrics::{Counter, Gauge, Histogram};
use sterling_bus::{Bus, ConsumerConfig, Delivery, Subscription};
use sterling_storage::{Mutation, Row, SharedStore, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::background::AbortOnDrop;
use crate::context::{RequestContext, TraceContext};
use crate::error::{Error, ErrorClass, Result};
use crate::gathered::GatheredWrites;
use crate::outbox::PROCESSED_EVENTS_TTL;

/// What the consumer did with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler succeeded and the event was acked.
    Handled,
    /// Already handled before: acked without running the handler.
    Duplicate,
    /// Dead-lettered: the event can never be handled.
    Rejected,
    /// Naked for redelivery.
    Failed,
}

impl Outcome {
    /// Every outcome, for metrics present from start.
    pub const ALL: [Outcome; 4] = [
        Outcome::Handled,
        Outcome::Duplicate,
        Outcome::Rejected,
        Outcome::Failed,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// The metric handles of one consumer, registered at its start so every series exists at 0.
struct ConsumerMetrics {
    outcomes: [Counter; 4],
    redelivered: Counter,
    retried_in_hand: Counter,
    lag: Histogram,
    backlog: Gauge,
}

impl ConsumerMetrics {
    fn new(service: &'static str, durable: &str) -> Self {
        let label = |o: Outcome| metrics::counter!("sterling_consumer_events_total", "service" => service, "consumer" => durable.to_string(), "outcome" => o.label());
        ConsumerMetrics {
            outcomes: Outcome::ALL.map(label),
            redelivered: metrics::counter!("sterling_consumer_redelivered_total", "service" => service, "consumer" => durable.to_string()),
            retried_in_hand: metrics::counter!("sterling_consumer_retried_in_hand_total", "service" => service, "consumer" => durable.to_string()),
            lag: metrics::histogram!("sterling_consumer_lag_seconds", "service" => service, "consumer" => durable.to_string()),
            backlog: metrics::gauge!("sterling_consumer_backlog_events", "service" => service, "consumer" => durable.to_string()),
        }
    }

    fn record(&self, outcome: Outcome) {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[index].increment(1);
    }
}

/// What orders a consumer's events: the key an event belongs to (an account id), or `None`
/// for an event that may be handled beside any other. Events of one key are handled one after
/// another, in the order they were delivered.
pub type OrderKey = fn(&sterling_bus::Envelope) -> Option<String>;

/// Keys with a delivery in hand, above which the finished ones are forgotten.
const KEYS_REMEMBERED: usize = 1024;

/// The last delivery taken for each key, for the next one of that key to wait for.
#[derive(Default)]
struct KeyOrder {
    /// Closed (its sender dropped) when that key's last delivery is settled.
    last: std::collections::HashMap<String, oneshot::Receiver<()>>,
}

impl KeyOrder {
    /// Takes the next delivery of `key`: what it waits for (its key's delivery before it,
    /// if still in hand), and what it drops when settled.
    fn take(&mut self, key: String) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        if self.last.len() >= KEYS_REMEMBERED {
            self.last.retain(|_, settled| {
                matches!(settled.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            });
        }
        let (done, settled) = oneshot::channel();
        (self.last.insert(key, settled), done)
    }
}

/// The first wait before a handler that failed for want of a dependency runs again in hand.
const OUTAGE_WAIT_FIRST: Duration = Duration::from_millis(200);

/// The longest wait between two runs of a handler in hand (the waits double up to it).
const OUTAGE_WAIT_MAX: Duration = Duration::from_secs(5);

/// Whether errors of `class` are a dependency's passing failure (what an outage or a shedding
/// service gives), worth running the handler again for while its delivery stays in hand.
fn passing(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::Unavailable | ErrorClass::Timeout | ErrorClass::RateLimited
    )
}

/// The waits of one delivery kept in hand through a dependency's outage.
struct OutageWaits {
    /// Time still allowed in hand.
    left: Duration,
    /// The next wait.
    next: Duration,
}

impl OutageWaits {
    /// Waits adding up to `held` at most.
    fn new(held: Duration) -> Self {
        OutageWaits {
            left: held,
            next: OUTAGE_WAIT_FIRST,
        }
    }

    /// The wait before running the handler again after an error of `class`, or `None` when
    /// the delivery is to be naked: not a passing failure, or the time in hand is spent.
    fn after(&mut self, class: ErrorClass) -> Option<Duration> {
        if !passing(class) || self.next > self.left {
            return None;
        }
        let wait = self.next;
        self.left -= wait;
        self.next = wait.saturating_mul(2).min(OUTAGE_WAIT_MAX);
        Some(wait)
    }
}

/// How long the first of a consumer's handled-event records waits for others to share its
/// commit.
const RECORDS_GATHERED_FOR: Duration = Duration::from_millis(20);

/// Most records in one commit.
const RECORDS_PER_WRITE: usize = 256;

/// Where a consumer's records of the events it handled (`processed_events`) are written:
/// gathered for [`RECORDS_GATHERED_FOR`] and written together lazily, no delivery waiting for
/// its record. A record not written (the process died, the write failed) costs one more run of
/// an idempotent handler, and only if the delivery's ack was lost too.
pub(crate) fn processed_records(store: SharedStore) -> GatheredWrites {
    GatheredWrites::new(
        store,
        "records of handled events",
        RECORDS_GATHERED_FOR,
        RECORDS_PER_WRITE,
    )
}

/// One durable consumer of one service.
pub(crate) struct Consumer<F> {
    pub(crate) service: &'static str,
    pub(crate) config: ConsumerConfig,
    pub(crate) bus: std::sync::Arc<dyn Bus>,
    pub(crate) store: SharedStore,
    /// Where the ids of the events it handled are written from.
    pub(crate) records: GatheredWrites,
    pub(crate) handler: F,
    /// What orders its events, if anything.
    pub(crate) order: Option<OrderKey>,
    /// The fail point before its handler: `consumer::<durable>`.
    pub(crate) fail_point: String,
}

/// How often the backlog gauge is sampled.
const BACKLOG_SAMPLED_EVERY: Duration = Duration::from_secs(1);

/// Sets `gauge` to the consumer's backlog every [`BACKLOG_SAMPLED_EVERY`] until `stopping`
/// (a sample the bus cannot answer leaves the last value).
async fn sample_backlog(
    bus: Arc<dyn Bus>,
    config: ConsumerConfig,
    gauge: Gauge,
    stopping: CancellationToken,
) {
    let mut every = tokio::time::interval(BACKLOG_SAMPLED_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Ok(backlog) = bus.backlog(&config).await {
            gauge.set(backlog as f64);
        }
    }
}

/// Runs `work` on `delivery`, telling the bus every third of `ack_wait` that it is still in
/// hand: a handler slower than the ack wait (its store or a service it calls restarting under
/// it) is not delivered again beside itself, each copy counting towards `max_deliver`.
async fn in_hand<T>(delivery: &Delivery, ack_wait: Duration, work: impl Future<Output = T>) -> T {
    let every = (ack_wait / 3).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick() => {
                if let Err(e) = delivery.in_progress().await {
                    tracing::debug!(error = %e, "could not say a delivery is still in hand");
                }
            }
        }
    }
}

impl<F, Fut> Consumer<F>
where
    F: Fn(sterling_bus::Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    /// Subscribes (retrying until the bus answers) and handles deliveries until `stopping`,
    /// up to `config.concurrency` at once (one key's in order); on stopping, the deliveries in
    /// hand are finished.
    pub(crate) async fn run(self, stopping: CancellationToken) {
        let metrics = Arc::new(ConsumerMetrics::new(self.service, &self.config.durable));
        // Ends with this consumer, whatever ends it.
        let _sampler = AbortOnDrop(
            tokio::spawn(sample_backlog(
                self.bus.clone(),
                self.config.clone(),
                metrics.backlog.clone(),
                stopping.clone(),
            ))
            .abort_handle(),
        );
        let mut subscription = tokio::select! {
            _ = stopping.cancelled() => return,
            s = self.subscribe() => s,
        };
        let slots = self.config.concurrency.max(1);
        let free_slots = Arc::new(Semaphore::new(slots));
        let consumer = Arc::new(self);
        let mut order = KeyOrder::default();
        loop {
            let next = tokio::select! {
                _ = stopping.cancelled() => break,
                next = Self::next(&mut subscription, &free_slots) => next,
            };
            match next {
                Ok((delivery, slot)) => {
                    if delivery.attempt > 1 {
                        metrics.redelivered.increment(1);
                    }
                    let lag_ms = sterling_storage::now_millis() - delivery.envelope.occurred_at_ms;
                    metrics
                        .lag
                        .record(Duration::from_millis(lag_ms.max(0) as u64).as_secs_f64());
                    let key = consumer.order.and_then(|key| key(&delivery.envelope));
                    let (before, done) = match key.map(|key| order.take(key)) {
                        Some((before, done)) => (before, Some(done)),
                        None => (None, None),
                    };
                    let (consumer, metrics) = (consumer.clone(), metrics.clone());
                    let stopping = stopping.clone();
                    tokio::spawn(async move {
                        if let Some(before) = before {
                            // Closed, never sent: settled, or its task is gone. In hand
                            // meanwhile, so the bus does not deliver it again while it waits.
                            let ack_wait = consumer.config.ack_wait;
                            let _ = in_hand(&delivery, ack_wait, before).await;
                        }
                        let outcome = consumer.deliver(delivery, &metrics, &stopping).await;
                        metrics.record(outcome);
                        drop((done, slot));
                    });
                }
                Err(e) => {
                    tracing::warn!(service = consumer.service, error = %e, "bus error; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let _ = free_slots.acquire_many(slots as u32).await;
        consumer.records.write_queued().await;
    }

    /// A free slot, then the next delivery to use it.
    async fn next(
        subscription: &mut Box<dyn Subscription>,
        in_hand: &Arc<Semaphore>,
    ) -> std::result::Result<(Delivery, OwnedSemaphorePermit), sterling_bus::BusError> {
        let slot = in_hand
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // This slot and every one free now: the bus may take that many in one step.
        let room = 1 + in_hand.available_permits();
        Ok((subscription.next_within(room).await?, slot))
    }

    async fn subscribe(&self) -> Box<dyn Subscription> {
        loop {
            match self.bus.subscribe(self.config.clone()).await {
                Ok(s) => return s,
                Err(e) => {
                    tracing::warn!(service = self.service, error = %e, "cannot subscribe yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Counts an event this consumer gives up on (it goes to the dead-letter subject).
    fn dead_lettered(&self) {
        metrics::counter!(
            "sterling_consumer_dead_lettered_total",
            "service" => self.service,
            "consumer" => self.config.durable.clone(),
        )
        .increment(1);
    }

    /// Handles one delivery and settles it; returns what was done. A passing failure of a
    /// dependency runs the handler again in hand (see the module's policy) until `stopping`.
    async fn deliver(
        &self,
        delivery: Delivery,
        metrics: &ConsumerMetrics,
        stopping: &CancellationToken,
    ) -> Outcome {
        let (context, span) = event_context(self.service, &self.config.durable, &delivery);
        let working = async {
            let mut waits = OutageWaits::new(self.config.held_through_outage);
            loop {
                let tried = self.try_once(&delivery, context.clone(), &span).await;
                let Err(e) = &tried else { return tried };
                let Some(wait) = waits.after(e.class()) else {
                    return tried;
                };
                span.in_scope(|| tracing::warn!(code = e.code(), error = %e, wait_ms = wait.as_millis() as u64, "a dependency failed; kept in hand and tried again"));
                metrics.retried_in_hand.increment(1);
                tokio::select! {
                    _ = stopping.cancelled() => return tried,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        };
        let outcome = in_hand(&delivery, self.config.ack_wait, working).await;
        let (outcome, settled) = match outcome {
            Ok(true) => {
                span.in_scope(|| tracing::info!("already handled; acknowledging"));
                (Outcome::Duplicate, delivery.ack().await)
            }
            Ok(false) => {
                span.in_scope(|| tracing::info!("event handled"));
                (Outcome::Handled, delivery.ack().await)
            }
            Err(e) if e.class() == ErrorClass::BadRequest => {
                span.in_scope(|| tracing::warn!(code = e.code(), "event rejected"));
                self.dead_lettered();
                (Outcome::Rejected, delivery.term(e.code()).await)
            }
            Err(e) if delivery.attempt >= self.config.max_deliver => {
                span.in_scope(|| tracing::warn!(code = e.code(), error = %e, "event handling failed for the last time; dead-lettered"));
                self.dead_lettered();
                (Outcome::Failed, delivery.nak().await)
            }
            Err(e) => {
                span.in_scope(|| tracing::warn!(code = e.code(), error = %e, "event handling failed; will retry"));
                (Outcome::Failed, delivery.nak().await)
            }
        };
        if let Err(e) = settled {
            tracing::warn!(service = self.service, error = %e, "could not settle a delivery");
        }
        outcome
    }

    /// Runs the handler on `delivery` unless it was handled before; whether it was.
    async fn try_once(
        &self,
        delivery: &Delivery,
        context: RequestContext,
        span: &tracing::Span,
    ) -> Result<bool> {
        let envelope = delivery.envelope.clone();
        let processed_key = Row::new()
            .with("consumer", self.config.durable.as_str())
            .with("event_id", envelope.event_id.as_str());
        let seen = match self.config.deduplicate {
            true => self.store.get("processed_events", &processed_key).await,
            false => Ok(None),
        };
        match seen {
            Ok(Some(_)) => Ok(true),
            Ok(None) => self
                .handle(envelope, context, span, processed_key)
                .await
                .map(|()| false),
            Err(e) => Err(Error::from(e)),
        }
    }

    /// Runs the handler (a panic is a failure, not the end of the consumer) and records the
    /// event as processed.
    async fn handle(
        &self,
        envelope: sterling_bus::Envelope,
        context: RequestContext,
        span: &tracing::Span,
        processed_key: Row,
    ) -> Result<()> {
        crate::failpoint::step(&self.fail_point).await?;
        let handled = std::panic::AssertUnwindSafe(context.scope((self.handler)(envelope)));
        handled
            .catch_unwind()
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| Err(Error::internal("the event handler panicked")))?;
        if !self.config.deduplicate {
            return Ok(());
        }
        let record = Mutation::insert(
            "processed_events",
            processed_key.with(
                "processed_at",
                Value::Timestamp(sterling_storage::now_millis()),
            ),
        )
        .with_ttl(PROCESSED_EVENTS_TTL);
        self.records.queue(record);
        Ok(())
    }
}

/// The context (request id, trace) an event carries and the consumer span it is handled in,
/// a child of the span that published it.
fn event_context(
    service: &'static str,
    durable: &str,
    delivery: &Delivery,
) -> (RequestContext, tracing::Span) {
    let envelope = &delivery.envelope;
    let mut context = RequestContext::new_root(
        Some(envelope.request_id.clone()).filter(|r| !r.is_empty()),
        None,
    );
    let parent = TraceContext::parse(&envelope.traceparent);
    if let Some(parent) = &parent {
        context.trace = parent.child();
    }
    let span = tracing::info_span!(
        "event",
        otel.name = %format!("{durable} {}", envelope.r#type),
        otel.kind = "consumer",
        service,
        event_type = %envelope.r#type,
        event_id = %envelope.event_id,
        attempt = delivery.attempt,
        request_id = %context.request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::telemetry::join_trace(&span, parent.as_ref(), &mut context);
    span.record("trace_id", context.trace.trace_id.as_str());
    span.record("span_id", context.trace.span_id.as_str());
    (context, span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_waited_out_in_doubling_steps_up_to_the_time_allowed() {
        let mut waits = OutageWaits::new(Duration::from_secs(20));
        let mut seen = Vec::new();
        while let Some(wait) = waits.after(ErrorClass::Unavailable) {
            seen.push(wait.as_millis());
        }
        assert_eq!(seen, [200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
        assert!(seen.iter().sum::<u128>() <= 20_000);
    }

    #[test]
    fn only_a_passing_failure_is_waited_out() {
        for class in ErrorClass::ALL {
            let mut waits = OutageWaits::new(Duration::from_secs(60));
            assert_eq!(waits.after(class).is_some(), passing(class), "{class:?}");
        }
        assert!(passing(ErrorClass::Timeout) && passing(ErrorClass::RateLimited));
        assert!(!passing(ErrorClass::Internal) && !passing(ErrorClass::BadRequest));
        let mut none = OutageWaits::new(Duration::ZERO);
        assert_eq!(
            none.after(ErrorClass::Unavailable),
            None,
            "zero: naked at once"
        );
    }
}
