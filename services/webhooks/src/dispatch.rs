//! Deliveries: queued from events, attempted by the dispatcher, logged.
//!
//! Each event becomes one delivery per webhook of the account (idempotent on event and
//! webhook), attempted at once by the instance that queued it. Later attempts come from the
//! queue of due deliveries, which every instance reads and each attempts only for the webhooks
//! it owns ([`sterling_template::ownership`]), concurrently with a timeout; a failure is
//! retried on a schedule that spans hours, and a circuit breaker per URL stops attempts to a
//! receiver that keeps failing so it costs the others nothing. Every attempt is a row of its
//! own in the delivery log ([`crate::attempts`]); nothing is a compare-and-set. Receivers
//! should ignore a repeated `Sterling-Event-Id` (an instance that dies after a receiver
//! answered but before the log was written sends again).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::json;
use sterling_bus::Envelope;
use sterling_proto::events::v1::{CardAuthorisationDecided, CardPaymentUpdated};
use sterling_signature as signature;
use sterling_storage::{Mutation, Row, SharedStore, Value, now_millis};
use sterling_template::by_month::ByMonth;
use sterling_template::ownership::Owners;
use sterling_template::{Error, Result};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::address::{PublicResolver, UrlPolicy};
use crate::attempts::{
    Answer, Outcome, attempt_row, attempts_of, finished_row, postponement, standing,
};
use crate::due::DueQueue;
use crate::store::Registry;

/// Shards of `pending_deliveries`, the queue before [`crate::due`] (read once, to move its rows).
pub const SHARDS: i64 = 8;

/// Delays before the 2nd, 3rd, ... attempt: from a second to eight hours, about 16 hours in all.
pub const DEFAULT_SCHEDULE: [u64; 10] = [
    1_000, 5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000, 7_200_000, 14_400_000, 28_800_000,
];

/// Consecutive failures that open a URL's circuit.
pub const BREAKER_THRESHOLD: u32 = 5;

/// How long one attempt may take, by default.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A delivery's first attempt is made at once by the instance that queued it; its place in the
/// queue is at least this much later (ms), and two attempt timeouts more with a long timeout,
/// for the instance that owns it to attempt it if the first died before it recorded its
/// attempt.
pub const FIRST_ATTEMPT_BACKSTOP_MS: i64 = 30_000;

/// The delivery log by webhook and month.
pub const DELIVERIES: ByMonth = ByMonth {
    table: "webhook_deliveries",
    months: "webhook_delivery_months",
    owner: "webhook_id",
    id: "event_id",
};

fn delivery_key(webhook_id: &str, event_id: &str) -> Row {
    DELIVERIES.key(webhook_id, event_id)
}

fn money(m: &Option<sterling_proto::common::v1::Money>) -> serde_json::Value {
    m.as_ref()
        .map(|m| json!({ "minor_units": m.minor_units, "currency": m.currency }))
        .unwrap_or(serde_json::Value::Null)
}

/// The JSON a receiver gets for what happened to a payment after its authorisation
/// (`card.payment.*`).
pub fn payment_body_for(envelope: &Envelope, p: &CardPaymentUpdated) -> serde_json::Value {
    json!({
        "id": envelope.event_id,
        "type": envelope.r#type,
        "created_at_ms": envelope.occurred_at_ms,
        "data": {
            "message_id": p.message_id,
            "kind": p.kind,
            "processor_authorisation_id": p.processor_authorisation_id,
            "transaction_id": p.transaction_id,
            "account_id": p.account_id,
            "accepted": p.accepted,
            "amount": money(&p.amount),
            "local_amount": money(&p.local_amount),
            "payment": {
                "id": p.payment_id,
                "status": p.status,
                "held": money(&p.held),
                "settled": money(&p.settled),
                "refunded": money(&p.refunded),
                "version": p.payment_version,
            },
            "overdrawn": p.overdrawn,
            "merchant": { "descriptor": p.merchant_descriptor, "mcc": p.mcc },
        },
    })
}

/// The JSON a receiver gets for a card decision.
pub fn body_for(envelope: &Envelope, d: &CardAuthorisationDecided) -> serde_json::Value {
    json!({
        "id": envelope.event_id,
        "type": envelope.r#type,
        "created_at_ms": envelope.occurred_at_ms,
        "data": {
            "processor_authorisation_id": d.processor_authorisation_id,
            "transaction_id": d.transaction_id,
            "account_id": d.account_id,
            "approved": d.approved,
            "reason": d.reason,
            "reversed": d.reversed,
            "amount": money(&d.amount),
            "local_amount": money(&d.local_amount),
            "merchant": {
                "descriptor": d.merchant_descriptor,
                "mcc": d.mcc,
                "country": d.merchant_country,
                "city": d.merchant_city,
            },
        },
    })
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    openings: u32,
}

/// A delivery's log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Webhook.
    pub webhook_id: String,
    /// Event.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// pending | delivered | failed.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// HTTP status of the last attempt (0: none).
    pub last_status_code: u32,
    /// Latency of the last attempt.
    pub last_latency_ms: u32,
    /// Why the last attempt failed.
    pub last_error: String,
    /// When the next attempt is due (pending only).
    pub next_attempt_at_ms: i64,
    /// When delivered.
    pub delivered_at_ms: i64,
}

/// An attempt in flight: its delivery leaves the in-flight set, and its slot frees, when it
/// is dropped.
struct InFlight {
    dispatcher: Dispatcher,
    pair: (String, String),
    _slot: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.dispatcher.in_flight().remove(&self.pair);
    }
}

/// Queues and sends deliveries.
#[derive(Clone)]
pub struct Dispatcher {
    store: SharedStore,
    registry: Registry,
    http: reqwest::Client,
    schedule: Arc<Vec<Duration>>,
    breakers: Arc<Mutex<HashMap<String, Breaker>>>,
    in_flight: Arc<Mutex<HashSet<(String, String)>>>,
    slots: Arc<Semaphore>,
    wake: Arc<Notify>,
    policy: UrlPolicy,
    due: DueQueue,
    owners: Owners,
    /// How much later than a first attempt made at once its place in the queue is (ms).
    backstop_ms: i64,
}

impl Dispatcher {
    /// A dispatcher retrying on `schedule`, each attempt bounded by `timeout`, delivering only
    /// where `policy` allows.
    pub fn new(
        store: SharedStore,
        registry: Registry,
        schedule: Vec<Duration>,
        timeout: Duration,
        policy: UrlPolicy,
    ) -> anyhow::Result<Self> {
        Ok(Dispatcher {
            due: DueQueue::new(store.clone()),
            store,
            registry,
            // Only public addresses, checked when connecting; no redirects (they could lead
            // anywhere) and no proxy from the environment.
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(2))
                .user_agent("sterling-webhooks/1")
                .dns_resolver(Arc::new(PublicResolver {
                    allow_local: policy.allow_local,
                }))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()?,
            policy,
            schedule: Arc::new(schedule),
            breakers: Arc::default(),
            in_flight: Arc::default(),
            slots: Arc::new(Semaphore::new(32)),
            wake: Arc::new(Notify::new()),
            owners: Owners::alone("webhooks"),
            backstop_ms: FIRST_ATTEMPT_BACKSTOP_MS
                .max(2 * timeout.as_millis().min(i64::MAX as u128 / 4) as i64 + 5_000),
        })
    }

    /// The same dispatcher, attempting from the queue only the deliveries to webhooks it owns
    /// among the service's instances (so no two attempt one delivery at once); alone, it owns
    /// every one.
    pub fn with_owners(mut self, owners: Owners) -> Self {
        self.owners = owners;
        self
    }

    /// Queues a delivery of a card event (a decision, or what happened to the payment after
    /// it) to every webhook of its account.
    pub async fn enqueue(&self, envelope: Envelope) -> Result<()> {
        let (account_id, body) = if envelope.r#type.starts_with("card.payment.") {
            let p = CardPaymentUpdated::decode(envelope.payload.as_slice())
                .map_err(|e| Error::bad_request("event", format!("not a payment update: {e}")))?;
            (p.account_id.clone(), payment_body_for(&envelope, &p))
        } else {
            let d = CardAuthorisationDecided::decode(envelope.payload.as_slice())
                .map_err(|e| Error::bad_request("event", format!("not a card decision: {e}")))?;
            (d.account_id.clone(), body_for(&envelope, &d))
        };
        if account_id.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&body).map_err(|e| Error::internal(e.to_string()))?;
        let mut queued_now = false;
        for webhook in self.registry.list(&account_id).await? {
            let now = now_millis();
            let pair = (webhook.webhook_id.clone(), envelope.event_id.clone());
            let key = delivery_key(&pair.0, &pair.1);
            if self.store.get(DELIVERIES.table, &key).await?.is_some() {
                // A repeat of the event queues its delivery again (it may never have been
                // queued, before a crash); an attempt finds it finished and drops it.
                self.store
                    .apply(vec![DueQueue::add(&pair.0, &pair.1, now)])
                    .await?;
                queued_now = true;
                continue;
            }
            // Attempted here at once if a slot is free (the queue's row is then the backstop),
            // from the queue otherwise.
            let slot = self.slots.clone().try_acquire_owned().ok();
            let due_at = match slot {
                Some(_) => now + self.backstop_ms,
                None => now,
            };
            let delivery = key
                .with("event_type", envelope.r#type.as_str())
                .with("account_id", account_id.as_str())
                .with("url", webhook.url.as_str())
                .with("body", body.clone())
                .with("next_attempt_at", Value::Timestamp(now))
                .with("created_at", Value::Timestamp(now));
            // The month's entry, the delivery, then its place in the queue (one commit on the
            // embedded store). A plain write: two deliveries of the event at once write the
            // same row.
            self.store
                .apply_in_order(vec![
                    vec![DELIVERIES.month_entry(&webhook.webhook_id, &envelope.event_id)],
                    vec![Mutation::insert(DELIVERIES.table, delivery)],
                    vec![DueQueue::add(&pair.0, &pair.1, due_at)],
                ])
                .await?;
            match slot {
                Some(slot) => self.start(pair, due_at, slot),
                None => queued_now = true,
            }
        }
        if queued_now {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Attempts due deliveries every 250 ms, or at once when woken, until `stopping` fires;
    /// then waits for the attempts in flight.
    pub async fn run(self, stopping: tokio_util::sync::CancellationToken) {
        while !stopping.is_cancelled() {
            if let Err(e) = self.dispatch_due().await {
                tracing::warn!(error = %e, "webhook dispatch pass failed");
            }
            tokio::select! {
                _ = stopping.cancelled() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        let _ = self.slots.acquire_many(32).await;
    }

    /// Attempts the due deliveries to the webhooks this instance owns.
    async fn dispatch_due(&self) -> Result<()> {
        let now = now_millis();
        for (webhook_id, event_id, due_at) in self.due.due(now).await? {
            if !self.owners.owns(&webhook_id) {
                continue;
            }
            let pair = (webhook_id, event_id);
            if self.in_flight().contains(&pair) {
                continue;
            }
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return Ok(());
            };
            self.start(pair, due_at, slot);
        }
        Ok(())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an attempt of the delivery `pair` queued at `due_at` in `slot`, unless one of it
    /// is in flight here.
    fn start(&self, pair: (String, String), due_at: i64, slot: OwnedSemaphorePermit) {
        if !self.in_flight().insert(pair.clone()) {
            return;
        }
        let dispatcher = self.clone();
        tokio::spawn(async move {
            // Out of the set however the attempt ends (a panic included).
            let held = InFlight {
                dispatcher: dispatcher.clone(),
                pair,
                _slot: slot,
            };
            let (webhook_id, event_id) = (&held.pair.0, &held.pair.1);
            if let Err(e) = dispatcher.attempt(webhook_id, event_id, due_at).await {
                tracing::warn!(%webhook_id, %event_id, error = %e, "delivery attempt failed to record");
            }
        });
    }

    fn breaker_open_until(&self, url: &str) -> Option<Instant> {
        let breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers
            .get(url)
            .and_then(|b| b.open_until)
            .filter(|until| *until > Instant::now())
    }

    fn record_outcome(&self, url: &str, ok: bool) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let b = breakers.entry(url.to_string()).or_default();
        if ok {
            *b = Breaker::default();
            return;
        }
        b.consecutive_failures += 1;
        if b.consecutive_failures >= BREAKER_THRESHOLD {
            let time =
                (Duration::from_secs(30) * (1 << b.openings.min(5))).min(Duration::from_secs(600));
            b.open_until = Some(Instant::now() + time);
            b.openings += 1;
            b.consecutive_failures = BREAKER_THRESHOLD - 1;
            tracing::warn!(url, ?time, "circuit open: receiver keeps failing");
        }
    }

    /// Moves a delivery due at `due_at` to a later attempt at `at`, recording what moved it:
    /// the attempt that failed, or the postponement past an open circuit (which makes none),
    /// so the log says when the next attempt really is.
    async fn reschedule(
        &self,
        (webhook_id, event_id): (&str, &str),
        due_at: i64,
        at: i64,
        cause: Mutation,
    ) -> Result<()> {
        // The new queue row before the old one goes: where they are not one commit
        // (Cassandra), a crash in between leaves an extra attempt, never none.
        self.store
            .apply_in_order(vec![
                vec![cause],
                vec![DueQueue::add(webhook_id, event_id, at)],
                vec![DueQueue::remove(webhook_id, event_id, due_at)],
            ])
            .await?;
        Ok(())
    }

    /// Takes a delivery due at `due_at` off the queue, recording the attempt that finished it
    /// if one did (and dropping its body, no longer needed).
    async fn finish(
        &self,
        (webhook_id, event_id): (&str, &str),
        due_at: i64,
        last: Option<(i64, Outcome, &Answer)>,
    ) -> Result<()> {
        let mut batches = Vec::with_capacity(3);
        if let Some((attempt, outcome, answer)) = last {
            batches.push(vec![attempt_row(
                (webhook_id, event_id),
                attempt,
                outcome,
                answer,
            )]);
            batches.push(vec![Mutation::update(
                DELIVERIES.table,
                delivery_key(webhook_id, event_id),
                finished_row(attempt, outcome, answer),
                vec![],
            )]);
        }
        // The outcome first: where these are not one commit, a crash in between leaves the
        // delivery queued, and its next attempt finds it finished and drops it.
        batches.push(vec![DueQueue::remove(webhook_id, event_id, due_at)]);
        self.store.apply_in_order(batches).await?;
        Ok(())
    }

    /// POSTs a delivery's body, signed with the webhook's secret; returns what the receiver
    /// answered (status 0 for no answer; no error when delivered).
    async fn post(
        &self,
        url: &str,
        secret: &str,
        event_id: &str,
        delivery: &Row,
    ) -> Result<Answer> {
        let body = delivery.blob("body")?.to_vec();
        let timestamp = now_millis() / 1000;
        let started = Instant::now();
        let outcome = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header(
                signature::SIGNATURE_HEADER,
                signature::sign(secret.as_bytes(), timestamp, &body),
            )
            .header("sterling-event-id", event_id)
            .header(
                "sterling-event-type",
                delivery.text("event_type").unwrap_or_default(),
            )
            .body(body)
            .send()
            .await;
        let latency_ms = started.elapsed().as_millis() as i64;
        let (code, error) = match &outcome {
            Ok(r) if r.status().is_success() => (i64::from(r.status().as_u16()), String::new()),
            Ok(r) => (
                i64::from(r.status().as_u16()),
                format!("receiver answered {}", r.status()),
            ),
            Err(e) if e.is_timeout() => (0, "timed out".to_string()),
            Err(e) => (0, e.to_string()),
        };
        Ok(Answer {
            status_code: code,
            latency_ms,
            error,
        })
    }

    /// One attempt of one delivery, queued at `due_at`.
    async fn attempt(&self, webhook_id: &str, event_id: &str, due_at: i64) -> Result<()> {
        let pair = (webhook_id, event_id);
        let Some(delivery) = self
            .store
            .get(DELIVERIES.table, &delivery_key(webhook_id, event_id))
            .await?
        else {
            return self.finish(pair, due_at, None).await;
        };
        let made = attempts_of(&self.store, webhook_id, event_id).await?;
        let standing = standing(webhook_id, &delivery, &made)?;
        if standing.status != "pending" {
            return self.finish(pair, due_at, None).await;
        }
        if due_at < standing.next_attempt_at_ms {
            // A place in the queue older than the attempt the log plans (two instances made
            // the last attempt at once and each queued its retry, or one died between
            // recording an attempt and queueing its retry): moved to the planned time, where
            // it is one with any place already there.
            let at = standing.next_attempt_at_ms;
            self.store
                .apply_in_order(vec![
                    vec![DueQueue::add(webhook_id, event_id, at)],
                    vec![DueQueue::remove(webhook_id, event_id, due_at)],
                ])
                .await?;
            return Ok(());
        }
        if delivery.blob("body").is_err() {
            // Finished by an attempt whose outcome a concurrent retry's row overwrote (before
            // finished deliveries said so on their own row): nothing left to send.
            return self.finish(pair, due_at, None).await;
        }
        let attempt = i64::from(standing.attempts) + 1;
        let url = delivery.text("url")?.to_string();
        if let Err(refused) = self.policy.check(&url) {
            // Checked again at every attempt: the policy may have tightened since.
            let answer = Answer {
                error: refused.message().to_string(),
                ..Answer::default()
            };
            return self
                .finish(pair, due_at, Some((attempt, Outcome::Failed, &answer)))
                .await;
        }
        if let Some(until) = self.breaker_open_until(&url) {
            let at =
                now_millis() + until.saturating_duration_since(Instant::now()).as_millis() as i64;
            let own = delivery.i64("attempts").unwrap_or_default() as u32;
            let key = delivery_key(webhook_id, event_id);
            let postponed = postponement(pair, key, (standing.attempts, own), at);
            return self.reschedule(pair, due_at, at, postponed).await;
        }
        let account_id = delivery.text("account_id")?.to_string();
        let Some(webhook) = self.registry.get(&account_id, webhook_id).await? else {
            let answer = Answer {
                error: "webhook deleted".to_string(),
                ..Answer::default()
            };
            return self
                .finish(pair, due_at, Some((attempt, Outcome::Failed, &answer)))
                .await;
        };
        let answer = self
            .post(&url, &webhook.secret, event_id, &delivery)
            .await?;
        let delivered = answer.error.is_empty();
        self.record_outcome(&url, delivered);
        if delivered {
            tracing::info!(
                webhook_id,
                event_id,
                attempt,
                latency_ms = answer.latency_ms,
                "webhook delivered"
            );
            return self
                .finish(pair, due_at, Some((attempt, Outcome::Delivered, &answer)))
                .await;
        }
        let error = &answer.error;
        match self.schedule.get(attempt as usize - 1) {
            Some(delay) => {
                let jitter = rand::random_range(0.8..1.2);
                let at = now_millis() + delay.mul_f64(jitter).as_millis() as i64;
                tracing::warn!(webhook_id, event_id, attempt, %error, "webhook failed; will retry");
                let failed = attempt_row(pair, attempt, Outcome::Retrying(at), &answer);
                self.reschedule(pair, due_at, at, failed).await
            }
            None => {
                tracing::warn!(webhook_id, event_id, attempt, %error, "webhook failed for good");
                self.finish(pair, due_at, Some((attempt, Outcome::Failed, &answer)))
                    .await
            }
        }
    }

    /// Moves the rows of `deliveries` (a partition per webhook forever) to the monthly
    /// partitions, once; returns how many this call moved.
    pub async fn move_first_table(&self) -> Result<u64> {
        DELIVERIES.move_once(&self.store, "deliveries").await
    }

    /// A webhook's deliveries, newest first.
    pub async fn log(&self, webhook_id: &str, limit: usize) -> Result<Vec<DeliveryRecord>> {
        let rows = DELIVERIES
            .page(&self.store, webhook_id, None, limit)
            .await?;
        let mut log = Vec::with_capacity(rows.len());
        for row in &rows {
            let event_id = row.text("event_id")?;
            let made = attempts_of(&self.store, webhook_id, event_id).await?;
            log.push(standing(webhook_id, row, &made)?);
        }
        Ok(log)
    }
}
