//! `sterling load`: an open-loop load generator. Authorisations arrive at a fixed rate whatever
//! the bank does, so a slow bank cannot slow its own measurement, and each is timed from when
//! it was due to be sent, not from when it went out (coordinated omission corrected, as wrk2
//! does), into HdrHistograms. For every approval it also times the rest of the payment's
//! promise: the feed item reaching a customer following the feed, the push reaching the phone's
//! gateway and the webhook reaching the customer's server. A rate counts as sustained only if
//! the asynchronous path keeps up: every one of those has happened within `settle` of the last
//! authorisation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use sterling_money::{Currency, Money};
use sterling_proto::feed::v1::FollowFeedRequest;
use sterling_proto::feed::v1::feed_client::FeedClient;
use sterling_proto::push::v1::RegisterDeviceRequest;
use sterling_proto::push::v1::push_client::PushClient;
use sterling_proto::webhooks::v1::RegisterWebhookRequest;
use sterling_proto::webhooks::v1::webhooks_client::WebhooksClient;
use sterling_storage::embedded::Durability;
use tokio::task::JoinHandle;

use crate::bank::Engines;
use crate::bench::BenchBank;
use crate::operate::Reach;
use crate::tools;

mod readings;

pub use readings::Contention;
use readings::Reading;

/// What to offer the bank.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Arrival rates, authorisations per second, measured in this order; the run stops after
    /// the first rate the bank does not sustain.
    pub rates: Vec<u32>,
    /// How long each rate is offered.
    pub duration: Duration,
    /// Customers the payments are spread over, each with a card, a phone and a webhook.
    pub customers: usize,
    /// How soon after the last authorisation of a rate every feed item, push and webhook must
    /// have happened for the rate to count as sustained.
    pub settle: Duration,
    /// Embedded store durability.
    pub durability: Durability,
    /// Engines to run on.
    pub engines: Engines,
    /// The data directory; the bank runs in a directory of its own inside it.
    pub data: PathBuf,
    /// Where to write the bank's metrics (Prometheus text) after each rate, if anywhere.
    pub metrics: Option<PathBuf>,
}

/// Percentiles of one latency histogram.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest.
    pub max: Duration,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        let at = |q: f64| Duration::from_micros(histogram.value_at_quantile(q));
        Percentiles {
            count: histogram.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_micros(histogram.max()),
        }
    }
}

/// What one arrival rate gave.
#[derive(Debug, Clone, Default)]
pub struct RateReport {
    /// Offered authorisations per second.
    pub rate: u32,
    /// Which of the run's rates this is (0: the first); a rate offered twice in a run sends
    /// different ids each time, so the second is not answered from the first's records.
    pub step: usize,
    /// Authorisations sent.
    pub sent: u64,
    /// Approved among them.
    pub approved: u64,
    /// Declined among them (a decline at the time budget included).
    pub declined: u64,
    /// Declined by card-api on card-processing's behalf: no decision within the budget
    /// (`timeout`) or a failure (`system_error`).
    pub stood_in: u64,
    /// Not answered with a decision (transport error or a problem document).
    pub failed: u64,
    /// The generator's own worst lateness behind its schedule (its latencies count from the
    /// schedule, so lateness is measured, not hidden).
    pub generator_late: Duration,
    /// Authorisation latency, from when it was due to its answer.
    pub authorisation: Percentiles,
    /// From due to the feed item reaching a follower (approvals).
    pub feed: Percentiles,
    /// From due to the push reaching the push gateway (approvals).
    pub push: Percentiles,
    /// From due to the webhook reaching the customer's server (approvals).
    pub webhook: Percentiles,
    /// From due until all three had happened (approvals).
    pub all_effects: Percentiles,
    /// Events every consumer had still to handle, summed, as the last authorisation was sent.
    pub backlog_at_end: u64,
    /// The largest such sum sampled during the rate (every second).
    pub backlog_peak: u64,
    /// The consumer furthest behind as the last authorisation was sent.
    pub worst_consumer: Option<(String, u64)>,
    /// From the last authorisation's due time until every approval's effects had happened.
    pub caught_up_after: Option<Duration>,
    /// Approvals with an effect still missing when the wait gave up.
    pub missing: u64,
    /// Resident size of this process (the whole bank and the generator) a tenth of the way in.
    pub resident_kb_early: u64,
    /// Resident size at the end of the rate.
    pub resident_kb_end: u64,
    /// Of that, what SQLite had allocated (its page caches, statements and schemas).
    pub sqlite_kb_end: u64,
    /// CPU time this process (the whole bank and the generator) used from the rate's start
    /// until its effects were done.
    pub cpu: Duration,
    /// Context switches of this process (every thread's) over the same time: each is a thread
    /// that went to sleep or was put off its CPU, the hand-overs between threads.
    pub context_switches: u64,
    /// Where the bank waited during the rate, by its own metrics.
    pub contention: Contention,
}

impl RateReport {
    /// Whether the bank sustained the rate: every authorisation answered with a decision, at
    /// most one in a thousand declined by card-api for want of a decision in time, and every
    /// approval's feed item, push and webhook done within `settle` of the last one.
    pub fn sustained(&self, settle: Duration) -> bool {
        self.failed == 0
            && self.stood_in * 1000 <= self.sent
            && self.missing == 0
            && self.caught_up_after.is_some_and(|d| d <= settle)
    }
}

/// Microseconds since the epoch.
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Resident set size of this process, in kB (0 where /proc is not there).
fn resident_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or_default()
}

/// Ticks per second of the CPU times in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// User and system CPU time this process has used, every thread's (zero where /proc is not
/// there).
fn cpu_used() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces): utime and stime are the
            // 12th and 13th of them.
            let fields: Vec<u64> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            Some(fields.iter().sum::<u64>())
        })
        .unwrap_or_default();
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

/// Context switches of this process so far, voluntary and not, of every thread including
/// those that have ended (`getrusage`; zero if it fails).
fn context_switches() -> u64 {
    // SAFETY: a plain-data struct, all zeros valid, which `getrusage` only writes into.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` for the length of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let count = |n: libc::c_long| u64::try_from(n).unwrap_or(0);
    count(usage.ru_nvcsw) + count(usage.ru_nivcsw)
}

/// A histogram of microseconds, one hour at most, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The asynchronous effects of a payment the generator watches for.
#[derive(Debug, Clone, Copy)]
enum Effect {
    Feed = 0,
    Push = 1,
    Webhook = 2,
}

/// One payment being watched: when it was due (0 until approved) and when each effect was
/// first seen (microseconds since the epoch, 0: not yet).
#[derive(Default)]
struct Track {
    due_us: i64,
    at: [i64; 3],
    first_us: i64,
}

/// Payments still being watched, and the end-to-end times of those done.
struct Tracker {
    tracks: HashMap<String, Track>,
    /// Feed, push, webhook, all three.
    histograms: [Histogram<u64>; 4],
    latest_us: i64,
    records: u64,
}

/// What the generator has seen of its payments' effects. A payment is forgotten once all
/// its effects are timed, so memory follows the payments in flight, not the run's length;
/// effects of payments never approved (declines) are forgotten after a minute.
struct Seen(Mutex<Tracker>);

/// Effects of a payment not approved are kept this long, in case its approval is late.
const UNCLAIMED_KEPT_US: i64 = 60_000_000;

impl Seen {
    fn new() -> Seen {
        Seen(Mutex::new(Tracker {
            tracks: HashMap::new(),
            histograms: [histogram(), histogram(), histogram(), histogram()],
            latest_us: 0,
            records: 0,
        }))
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `effect` of `transaction` happened at `at_us`.
    fn record(&self, transaction: &str, effect: Effect, at_us: i64) {
        if transaction.is_empty() {
            return;
        }
        let mut tracker = self.tracker();
        let track = tracker
            .tracks
            .entry(transaction.to_string())
            .or_insert_with(|| Track {
                first_us: at_us,
                ..Track::default()
            });
        let slot = &mut track.at[effect as usize];
        if *slot == 0 {
            *slot = at_us;
        }
        tracker.finish(transaction);
        tracker.records += 1;
        if tracker.records.is_multiple_of(4096) {
            let oldest = at_us - UNCLAIMED_KEPT_US;
            tracker
                .tracks
                .retain(|_, t| t.due_us != 0 || t.first_us > oldest);
        }
    }

    /// `transaction` was approved; it was due at `due_us`.
    fn approved(&self, transaction: &str, due_us: i64) {
        let mut tracker = self.tracker();
        let track = tracker.tracks.entry(transaction.to_string()).or_default();
        track.due_us = due_us;
        track.first_us = track.first_us.max(due_us);
        tracker.finish(transaction);
    }

    /// Approvals with an effect not seen yet.
    fn outstanding(&self) -> usize {
        self.tracker()
            .tracks
            .values()
            .filter(|t| t.due_us != 0)
            .count()
    }

    /// The end-to-end histograms since the last call, the latest effect among them and the
    /// approvals still missing an effect (forgotten now).
    fn take(&self) -> ([Histogram<u64>; 4], i64, u64) {
        let mut tracker = self.tracker();
        let missing = tracker.tracks.values().filter(|t| t.due_us != 0).count();
        tracker.tracks.retain(|_, t| t.due_us == 0);
        let histograms = std::mem::replace(
            &mut tracker.histograms,
            [histogram(), histogram(), histogram(), histogram()],
        );
        (
            histograms,
            std::mem::take(&mut tracker.latest_us),
            missing as u64,
        )
    }
}

impl Tracker {
    /// Times `transaction` and forgets it if it is approved and every effect has happened.
    fn finish(&mut self, transaction: &str) {
        let Some(track) = self.tracks.get(transaction) else {
            return;
        };
        if track.due_us == 0 || track.at.contains(&0) {
            return;
        }
        let (due, at) = (track.due_us, track.at);
        self.tracks.remove(transaction);
        let since_due = |t: i64| (t - due).max(1) as u64;
        for (effect, t) in at.iter().enumerate() {
            self.histograms[effect].saturating_record(since_due(*t));
        }
        let last = at.iter().copied().max().unwrap_or(due);
        self.histograms[3].saturating_record(since_due(last));
        self.latest_us = self.latest_us.max(last);
    }
}

/// The customer's server: records when each webhook about a transaction arrived.
async fn start_webhook_receiver(seen: Arc<Seen>) -> anyhow::Result<(String, JoinHandle<()>)> {
    async fn receive(
        axum::extract::State(seen): axum::extract::State<Arc<Seen>>,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let at = now_us();
        if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body)
            && let Some(transaction) = event["data"]["transaction_id"].as_str()
        {
            seen.record(transaction, Effect::Webhook, at);
        }
        axum::http::StatusCode::OK
    }
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

/// Reads the push gateway's deliveries as they come, recording when each arrived there.
fn watch_pushes(sink: String, seen: Arc<Seen>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut from = 0;
        loop {
            let read = async {
                let deliveries: Vec<serde_json::Value> = http
                    .get(format!("http://{sink}/deliveries?from={from}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                anyhow::Ok(deliveries)
            };
            if let Ok(deliveries) = read.await {
                // Numbered by the sink: the next read starts after the last one seen.
                if let Some(last) = deliveries.last().and_then(|d| d["index"].as_u64()) {
                    from = last + 1;
                }
                for d in deliveries {
                    let transaction = d["payload"]["transaction_id"].as_str().unwrap_or_default();
                    let at = d["received_at_us"].as_i64().unwrap_or_default();
                    seen.record(transaction, Effect::Push, at);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Follows one account's feed as the app does, recording when each item first arrived.
fn follow_feed(reach: Reach, account_id: String, seen: Arc<Seen>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let followed = async {
                let channel = reach
                    .channel_with(
                        sterling_proto::feed::v1::FEED_SERVICE,
                        Duration::from_secs(24 * 3600),
                    )
                    .await?;
                let mut items = FeedClient::new(channel)
                    .follow_feed(FollowFeedRequest {
                        account_id: account_id.clone(),
                    })
                    .await?
                    .into_inner();
                while let Some(item) = items.message().await? {
                    seen.record(&item.item_id, Effect::Feed, now_us());
                }
                anyhow::Ok(())
            };
            // A follow that ends (the feed restarting, a deadline) is followed again.
            let _ = followed.await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The customers payments are spread over, and what watches their payments' effects.
struct Customers {
    cards: Vec<String>,
    watchers: Vec<JoinHandle<()>>,
}

impl Drop for Customers {
    fn drop(&mut self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
    }
}

/// Seeds `count` funded customers, each with a phone and a webhook, and starts watching for
/// their payments' feed items, pushes and webhooks.
async fn prepare_customers(
    bench: &BenchBank,
    count: usize,
    seen: &Arc<Seen>,
) -> anyhow::Result<Customers> {
    let reach = Reach::of(&bench.bank.platform);
    let sink = bench
        .bank
        .address("push-sink")
        .ok_or_else(|| anyhow::anyhow!("no push sink"))?;
    let (hook_url, receiver) = start_webhook_receiver(seen.clone()).await?;
    let mut customers = Customers {
        cards: Vec::new(),
        watchers: vec![receiver, watch_pushes(sink.to_string(), seen.clone())],
    };
    let mut push = PushClient::new(
        reach
            .channel(sterling_proto::push::v1::PUSH_SERVICE)
            .await?,
    );
    let mut webhooks = WebhooksClient::new(
        reach
            .channel(sterling_proto::webhooks::v1::WEBHOOKS_SERVICE)
            .await?,
    );
    let gbp = Currency::from_code("GBP")?;
    for i in 0..count {
        let customer = tools::seed(
            &bench.clients,
            &format!("load-{i}"),
            Money::from_minor(1_000_000_000_000, gbp),
        )
        .await?;
        push.register_device(RegisterDeviceRequest {
            account_id: customer.account_id.clone(),
            device_token: format!("load-phone-{i}"),
            platform: "ios".into(),
        })
        .await?;
        webhooks
            .register_webhook(RegisterWebhookRequest {
                idempotency_key: format!("load-hook-{i}"),
                account_id: customer.account_id.clone(),
                url: hook_url.clone(),
            })
            .await?;
        customers.watchers.push(follow_feed(
            reach.clone(),
            customer.account_id,
            seen.clone(),
        ));
        customers.cards.push(customer.card.token);
    }
    Ok(customers)
}

/// What the authorisations of one rate were answered.
struct Answers {
    latency: Histogram<u64>,
    approved: u64,
    declined: u64,
    stood_in: u64,
    failed: u64,
}

impl Answers {
    fn new() -> Answers {
        Answers {
            latency: histogram(),
            approved: 0,
            declined: 0,
            stood_in: 0,
            failed: 0,
        }
    }
}

/// Where the processor sends authorisations, and how it signs them.
#[derive(Clone)]
struct Processor {
    http: reqwest::Client,
    url: Arc<str>,
    secret: Arc<[u8]>,
    /// The currency every payment is in.
    currency: Currency,
}

impl Processor {
    /// Sends authorisation `id` due at `due` (`due_us` on the wall clock) and records its
    /// answer; an approval is watched for its effects.
    async fn authorise(
        &self,
        id: String,
        card: &str,
        due: (Instant, i64),
        answers: &Mutex<Answers>,
        seen: &Seen,
    ) {
        let (due, due_us) = due;
        let body = tools::authorisation_json(
            &id,
            card,
            Money::from_minor(350, self.currency),
            "PRET A MANGER LONDON GB",
            "5812",
        );
        let outcome = tools::pay(&self.http, &self.url, &self.secret, &body, None).await;
        let latency = due.elapsed();
        let mut answers = answers.lock().unwrap_or_else(|p| p.into_inner());
        answers
            .latency
            .saturating_record(latency.as_micros().max(1) as u64);
        let Ok(outcome) = outcome else {
            answers.failed += 1;
            return;
        };
        match outcome.body["result"].as_str() {
            Some("APPROVED") => {
                answers.approved += 1;
                drop(answers);
                let transaction = outcome.body["transaction_id"].as_str().unwrap_or_default();
                seen.approved(transaction, due_us);
            }
            Some("DECLINED") => {
                answers.declined += 1;
                if matches!(
                    outcome.body["reason"].as_str(),
                    Some("timeout" | "system_error")
                ) {
                    answers.stood_in += 1;
                }
            }
            _ => answers.failed += 1,
        }
    }
}

/// Reads the bank's metrics on a blocking thread: rendering every series takes milliseconds,
/// which on the generator's own threads would make it late.
async fn read_off_thread(recorder: Option<PrometheusHandle>) -> Reading {
    tokio::task::spawn_blocking(move || Reading::now(recorder.as_ref()))
        .await
        .unwrap_or_else(|_| Reading::now(None))
}

/// Raises `peak` to the consumers' summed backlog every second, until aborted.
async fn sample_backlog(recorder: Option<PrometheusHandle>, peak: Arc<AtomicU64>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let backlog = read_off_thread(recorder.clone()).await.backlogs();
        peak.fetch_max(backlog.iter().map(|(_, b)| b).sum(), Ordering::Relaxed);
    }
}

/// Offers `rate` authorisations a second for `duration`, spread over `cards`, each sent when
/// due whatever the answers before it; fills in what was answered and what the consumers had
/// left as the last one was sent. Returns when the last one was due (microseconds since the
/// epoch).
async fn offer(
    processor: &Processor,
    cards: &Arc<Vec<String>>,
    seen: &Arc<Seen>,
    recorder: Option<&PrometheusHandle>,
    report: &mut RateReport,
    duration: Duration,
) -> i64 {
    let (rate, step) = (report.rate.max(1), report.step);
    let total = (u64::from(rate) * duration.as_secs()).max(1);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let answers = Arc::new(Mutex::new(Answers::new()));
    let (start, start_us) = (Instant::now(), now_us());
    let mut in_flight = tokio::task::JoinSet::new();
    let backlog_peak = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_backlog(recorder.cloned(), backlog_peak.clone()));
    for i in 0..total {
        let offset = interval.mul_f64(i as f64);
        let due = start + offset;
        tokio::time::sleep_until(due.into()).await;
        report.generator_late = report.generator_late.max(due.elapsed());
        if i == total / 10 {
            report.resident_kb_early = resident_kb();
        }
        let due_us = start_us + offset.as_micros() as i64;
        let (processor, cards, answers, seen) = (
            processor.clone(),
            cards.clone(),
            answers.clone(),
            seen.clone(),
        );
        in_flight.spawn(async move {
            let card = &cards[i as usize % cards.len()];
            let id = format!("load-{step}-{rate}-{i}");
            processor
                .authorise(id, card, (due, due_us), &answers, &seen)
                .await;
        });
        while in_flight.try_join_next().is_some() {}
    }
    sampler.abort();
    let at_end = read_off_thread(recorder.cloned()).await.backlogs();
    report.backlog_at_end = at_end.iter().map(|(_, b)| b).sum();
    report.backlog_peak = backlog_peak
        .load(Ordering::Relaxed)
        .max(report.backlog_at_end);
    report.worst_consumer = at_end.into_iter().max_by_key(|(_, b)| *b);
    while in_flight.join_next().await.is_some() {}
    let answers = answers.lock().unwrap_or_else(|p| p.into_inner());
    report.sent = total;
    report.approved = answers.approved;
    report.declined = answers.declined;
    report.stood_in = answers.stood_in;
    report.failed = answers.failed;
    report.authorisation = Percentiles::of(&answers.latency);
    start_us + interval.mul_f64((total - 1) as f64).as_micros() as i64
}

/// Waits until every approval's effects have happened or `limit` passes; fills in the
/// end-to-end figures. `last_due_us`: when the last authorisation was due.
async fn await_effects(seen: &Seen, last_due_us: i64, limit: Duration, report: &mut RateReport) {
    let started = Instant::now();
    while seen.outstanding() > 0 && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ([feed, push, webhook, all], latest_us, missing) = seen.take();
    report.feed = Percentiles::of(&feed);
    report.push = Percentiles::of(&push);
    report.webhook = Percentiles::of(&webhook);
    report.all_effects = Percentiles::of(&all);
    report.missing = missing;
    report.caught_up_after =
        (missing == 0).then(|| Duration::from_micros((latest_us - last_due_us).max(0) as u64));
}

/// Offers one rate and waits for its effects.
async fn measure_rate(
    processor: &Processor,
    cards: &Arc<Vec<String>>,
    seen: &Arc<Seen>,
    recorder: Option<&PrometheusHandle>,
    (step, rate): (usize, u32),
    duration: Duration,
) -> RateReport {
    let mut report = RateReport {
        rate,
        step,
        ..RateReport::default()
    };
    let (before, lock_waits, started, cpu_before, switches_before) = (
        read_off_thread(recorder.cloned()).await,
        sterling_storage::embedded::busy_waits(),
        Instant::now(),
        cpu_used(),
        context_switches(),
    );
    let last_due_us = offer(processor, cards, seen, recorder, &mut report, duration).await;
    await_effects(seen, last_due_us, duration.max(WAIT_AT_LEAST), &mut report).await;
    report.cpu = cpu_used().saturating_sub(cpu_before);
    report.context_switches = context_switches().saturating_sub(switches_before);
    report.resident_kb_end = resident_kb();
    report.sqlite_kb_end = sterling_storage::embedded::memory_used() / 1024;
    report.contention = Contention::between(
        &before,
        &read_off_thread(recorder.cloned()).await,
        started.elapsed(),
        sterling_storage::embedded::busy_waits() - lock_waits,
    );
    report
}

/// How long the generator waits at least for a rate's effects before calling them missing.
const WAIT_AT_LEAST: Duration = Duration::from_secs(30);

/// One payment per card, sent one at a time, to open connections and fill caches (a bank just
/// started may decline a few on its budget); every approval's feed item, push and webhook must
/// arrive, or the bank's asynchronous path is not wired as the measurement needs.
async fn warm_up(processor: &Processor, cards: &[String], seen: &Seen) -> anyhow::Result<()> {
    let answers = Mutex::new(Answers::new());
    for (i, card) in cards.iter().enumerate() {
        let due = (Instant::now(), now_us());
        processor
            .authorise(format!("load-warm-{i}"), card, due, &answers, seen)
            .await;
    }
    let approved = answers.lock().unwrap_or_else(|p| p.into_inner()).approved;
    anyhow::ensure!(
        approved > 0,
        "warming up: none of {} payments approved",
        cards.len()
    );
    let mut report = RateReport::default();
    await_effects(seen, now_us(), WAIT_AT_LEAST, &mut report).await;
    anyhow::ensure!(
        report.missing == 0,
        "warming up: {} of {approved} approvals never showed all of feed item, push and webhook",
        report.missing
    );
    Ok(())
}

/// Starts a bank under the data directory, prepares its customers and offers each rate in
/// turn, handing each rate's report to `each` as it is measured; stops after the first rate
/// not sustained.
pub async fn run(
    options: LoadOptions,
    mut each: impl FnMut(&RateReport),
) -> anyhow::Result<Vec<RateReport>> {
    // The bank runs in this process: its consumers' backlog gauges are read from here (the
    // recorder first, so the gauges the consumers register at start are real).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let bench = BenchBank::start_with(
        &options.data,
        "load",
        options.durability,
        options.engines,
        &[("STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS", "true")],
    )
    .await?;
    let seen = Arc::new(Seen::new());
    let customers = prepare_customers(&bench, options.customers.max(1), &seen).await?;
    let processor = Processor {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?,
        url: bench.url.as_str().into(),
        secret: bench.secret.as_slice().into(),
        currency: Currency::from_code("GBP")?,
    };
    let cards = Arc::new(customers.cards.clone());
    warm_up(&processor, &cards, &seen).await?;
    let mut reports = Vec::new();
    for (step, rate) in options.rates.into_iter().enumerate() {
        let report = measure_rate(
            &processor,
            &cards,
            &seen,
            recorder.as_ref(),
            (step, rate),
            options.duration,
        )
        .await;
        if let (Some(path), Some(recorder)) = (&options.metrics, &recorder) {
            let rendered = format!("# after {}/s\n{}", rate, recorder.render());
            std::fs::write(path, rendered)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        each(&report);
        let sustained = report.sustained(options.settle);
        reports.push(report);
        if !sustained {
            break;
        }
    }
    drop(customers);
    bench.bank.stop().await;
    let _ = std::fs::remove_dir_all(&bench.dir);
    Ok(reports)
}

impl std::fmt::Display for RateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let line = |f: &mut std::fmt::Formatter<'_>, what: &str, p: &Percentiles| {
            writeln!(
                f,
                "  {what:<13} p50 {:>8.2} ms  p90 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2}  ({})",
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.p999),
                ms(p.max),
                p.count
            )
        };
        writeln!(
            f,
            "rate {}/s: sent {}, approved {}, declined {} ({} by card-api: no decision in budget or a failure), failed {}; generator late by {:.2} ms at worst",
            self.rate,
            self.sent,
            self.approved,
            self.declined,
            self.stood_in,
            self.failed,
            ms(self.generator_late)
        )?;
        line(f, "authorisation", &self.authorisation)?;
        line(f, "feed item", &self.feed)?;
        line(f, "push", &self.push)?;
        line(f, "webhook", &self.webhook)?;
        line(f, "all three", &self.all_effects)?;
        let worst = self
            .worst_consumer
            .as_ref()
            .map_or(String::from("none"), |(c, b)| format!("{c} {b}"));
        writeln!(
            f,
            "  consumers' backlog at the last authorisation {} events (furthest behind: {worst}), peak {}",
            self.backlog_at_end, self.backlog_peak
        )?;
        let caught_up = self.caught_up_after.map_or(
            format!(
                "not caught up: {} approvals missing an effect",
                self.missing
            ),
            |d| {
                format!(
                    "every effect done {:.0} ms after the last authorisation",
                    ms(d)
                )
            },
        );
        writeln!(
            f,
            "  {caught_up}; resident {} MB early, {} MB at the end (bank and generator; SQLite's \
             caches and statements {} MB of it)",
            self.resident_kb_early / 1024,
            self.resident_kb_end / 1024,
            self.sqlite_kb_end / 1024
        )?;
        writeln!(
            f,
            "  CPU {:.2} ms and {:.0} context switches per authorisation offered (bank and \
             generator, until every effect was done)",
            ms(self.cpu) / self.sent.max(1) as f64,
            self.context_switches as f64 / self.sent.max(1) as f64
        )?;
        write!(f, "{}", self.contention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_a_busy_thread_uses_is_counted() {
        let before = cpu_used();
        let started = Instant::now();
        let mut spins = 0u64;
        while cpu_used().saturating_sub(before) < Duration::from_millis(100)
            && started.elapsed() < Duration::from_secs(30)
        {
            spins = std::hint::black_box(spins + 1);
        }
        let used = cpu_used().saturating_sub(before);
        assert!(
            used >= Duration::from_millis(100),
            "{used:?} after {spins} spins"
        );
    }

    #[test]
    fn a_thread_that_sleeps_and_ends_is_counted_in_the_context_switches() {
        let before = context_switches();
        std::thread::spawn(|| {
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .join()
        .unwrap();
        let switched = context_switches() - before;
        assert!(switched >= 20, "{switched} switches for 20 sleeps");
    }
}
