//! `sterling bench`: authorisation latency and throughput through card-api, measured by the
//! same client a processor would be, against a bank started in this process; and
//! `sterling bench-hop`: the template's cost per hop against bare tonic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sterling_money::{Currency, Money};
use sterling_storage::embedded::Durability;

use sterling_proto::balance::v1::balance_client::BalanceClient;
use sterling_proto::testing::v1::probe_client::ProbeClient;
use sterling_proto::testing::v1::probe_server::{Probe, ProbeServer};
use sterling_proto::testing::v1::{ProbeReply, ProbeRequest};
use sterling_template::OPERATOR;
use sterling_template::client::GrpcChannel;
use sterling_template::client::policy::ClientPolicy;
use sterling_template::platform::{Platform, PlatformConfig};
use sterling_template::testing::{Behaviour, start_probe};

use crate::bank::{Bank, BankOptions, Engines};
use crate::operate::Reach;
use crate::tools::{self, Clients};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Number of authorisations.
    pub payments: usize,
    /// How many in flight at once.
    pub concurrency: usize,
    /// Embedded store durability.
    pub durability: Durability,
    /// Engines to run on.
    pub engines: Engines,
    /// The data directory; the bank runs in a directory of its own inside it.
    pub data: PathBuf,
    /// Advanced once per authorisation (hidden when not on a terminal).
    pub progress: indicatif::ProgressBar,
}

/// Latency summary.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Authorisations sent.
    pub payments: usize,
    /// Approved among them.
    pub approved: usize,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
    /// Authorisations per second over the run.
    pub throughput: f64,
    /// The balance read model's lag behind the ledger (ledger write to read model write):
    /// median and 99th percentile, when the bench could record it.
    pub balance_lag: Option<(Duration, Duration)>,
    /// From the last answer until the read model showed every account as the ledger does.
    pub balance_caught_up: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A bank started for a benchmark in a directory of its own under the data directory (so a
/// benchmark measures the disk `--data` is on), with the processor's secret.
pub(crate) struct BenchBank {
    /// Its directory, removed after.
    pub(crate) dir: PathBuf,
    /// The bank.
    pub(crate) bank: Bank,
    /// Clients of its services, as the operator.
    pub(crate) clients: Clients,
    /// card-api's URL.
    pub(crate) url: String,
    /// The processor's signing secret.
    pub(crate) secret: Vec<u8>,
}

impl BenchBank {
    async fn start(
        data: &Path,
        name: &str,
        durability: Durability,
        engines: Engines,
    ) -> anyhow::Result<Self> {
        Self::start_with(data, name, durability, engines, &[]).await
    }

    /// As [`BenchBank::start`], with extra `STERLING_*` settings.
    pub(crate) async fn start_with(
        data: &Path,
        name: &str,
        durability: Durability,
        engines: Engines,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = bench_dir(data, name);
        let mut options = BankOptions::ephemeral(&dir);
        options.config.durability = durability;
        options.engines = engines;
        if engines != Engines::Embedded {
            // A namespace of its own: fresh keyspaces, stream and discovery bucket.
            options.config.namespace =
                format!("bench{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        }
        let secret = b"bench-secret".to_vec();
        options.config.settings.insert(
            "STERLING_CARD_API_SECRET".into(),
            String::from_utf8(secret.clone())?,
        );
        for (name, value) in settings {
            options
                .config
                .settings
                .insert(name.to_string(), value.to_string());
        }
        let bank = Bank::start(options).await?;
        let clients = Clients::connect(&Reach::of(&bank.platform)).await?;
        let url = bank
            .card_api_url()
            .ok_or_else(|| anyhow::anyhow!("card-api not started"))?;
        Ok(BenchBank {
            dir,
            bank,
            clients,
            url,
            secret,
        })
    }
}

/// A fresh directory for one benchmark's bank under `data`.
fn bench_dir(data: &Path, name: &str) -> PathBuf {
    data.join(format!("bench-{name}-{}", uuid::Uuid::now_v7()))
}

/// One funded customer per worker: (account, card).
async fn seed_workers(clients: &Clients, workers: usize) -> anyhow::Result<Vec<(String, String)>> {
    let gbp = Currency::from_code("GBP")?;
    let mut seeded = Vec::new();
    for worker in 0..workers {
        let customer = tools::seed(
            clients,
            &format!("bench-{worker}"),
            Money::from_minor(1_000_000_000, gbp),
        )
        .await?;
        seeded.push((customer.account_id, customer.card.token));
    }
    Ok(seeded)
}

/// Waits until the balance read model shows each account as the ledger does; how long it took.
async fn balance_caught_up(
    clients: &Clients,
    reach: &Reach,
    accounts: &[String],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut balances = BalanceClient::new(reach.channel("balance").await?);
    for account_id in accounts {
        let truth = clients
            .ledger
            .clone()
            .get_balance(sterling_proto::ledger::v1::GetBalanceRequest {
                account_id: account_id.clone(),
            })
            .await?
            .into_inner();
        loop {
            let read = balances
                .get_balance(sterling_proto::balance::v1::GetBalanceRequest {
                    account_id: account_id.clone(),
                })
                .await?
                .into_inner();
            if read.balance == truth.balance && read.pending == truth.held {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "the balance read model did not catch up with {account_id}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(started.elapsed())
}

/// The median and 99th percentile of `sterling_balance_lag_seconds` in a Prometheus text.
fn balance_lag(rendered: &str) -> Option<(Duration, Duration)> {
    let quantile = |q: &str| {
        rendered
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "sterling_balance_lag_seconds{{quantile=\"{q}\"}} "
                ))
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(Duration::from_secs_f64)
    };
    Some((quantile("0.5")?, quantile("0.99")?))
}

/// One payment per card, so every connection is warm before measuring.
async fn warm(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    cards: &[String],
) -> anyhow::Result<()> {
    let gbp = Currency::from_code("GBP")?;
    for (i, card) in cards.iter().enumerate() {
        let body = tools::authorisation_json(
            &format!("warm-{i}"),
            card,
            Money::from_minor(1, gbp),
            "WARM UP",
            "5812",
        );
        tools::pay(http, url, secret, &body, None).await?;
    }
    Ok(())
}

/// Starts a bank in a temporary directory, seeds one customer per worker and measures.
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let BenchBank {
        dir,
        bank,
        clients,
        url,
        secret,
    } = BenchBank::start(&options.data, "bench", options.durability, options.engines).await?;
    // The bank runs in this process: its metrics land here (a summary per histogram).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let gbp = Currency::from_code("GBP")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()?;
    let seeded = seed_workers(&clients, options.concurrency).await?;
    let (accounts, cards): (Vec<String>, Vec<String>) = seeded.into_iter().unzip();
    warm(&http, &url, &secret, &cards).await?;
    let per_worker = options.payments.div_ceil(options.concurrency);
    let secret = Arc::new(secret);
    let started = Instant::now();
    let mut workers = Vec::new();
    options
        .progress
        .set_length((per_worker * options.concurrency) as u64);
    for (worker, card) in cards.into_iter().enumerate() {
        let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
        let progress = options.progress.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            let mut approved = 0;
            for i in 0..per_worker {
                let body = tools::authorisation_json(
                    &format!("bench-{worker}-{i}"),
                    &card,
                    Money::from_minor(350, gbp),
                    "PRET A MANGER LONDON GB",
                    "5812",
                );
                let outcome = tools::pay(&http, &url, &secret, &body, None).await?;
                if outcome.body["result"] == "APPROVED" {
                    approved += 1;
                }
                latencies.push(outcome.latency);
                progress.inc(1);
            }
            anyhow::Ok((latencies, approved))
        }));
    }
    let mut latencies = Vec::new();
    let mut approved = 0;
    for worker in workers {
        let (l, a) = worker.await??;
        latencies.extend(l);
        approved += a;
    }
    let elapsed = started.elapsed();
    options.progress.finish_and_clear();
    let caught_up = balance_caught_up(&clients, &Reach::of(&bank.platform), &accounts).await?;
    let lag = recorder.and_then(|r| balance_lag(&r.render()));
    bank.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    latencies.sort();
    Ok(BenchReport {
        payments: latencies.len(),
        approved,
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
        throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
        balance_lag: lag,
        balance_caught_up: caught_up,
    })
}

/// Latency of one unary call, bare tonic against the template's full client and server stack.
#[derive(Debug, Clone)]
pub struct HopReport {
    /// Bare tonic: median.
    pub bare_p50: Duration,
    /// Bare tonic: 99th percentile.
    pub bare_p99: Duration,
    /// Full stack: median.
    pub full_p50: Duration,
    /// Full stack: 99th percentile.
    pub full_p99: Duration,
    /// The grpc-go peer, when one was given: median and 99th percentile.
    pub grpc_go: Option<(Duration, Duration)>,
}

struct BareProbe;

#[tonic::async_trait]
impl Probe for BareProbe {
    async fn read(
        &self,
        request: tonic::Request<ProbeRequest>,
    ) -> Result<tonic::Response<ProbeReply>, tonic::Status> {
        Ok(tonic::Response::new(ProbeReply {
            instance: "bare".into(),
            payload: request.into_inner().payload,
            deadline_us: 0,
        }))
    }

    async fn write(
        &self,
        request: tonic::Request<ProbeRequest>,
    ) -> Result<tonic::Response<ProbeReply>, tonic::Status> {
        self.read(request).await
    }
}

/// A plain tonic client of the probe at `address`.
async fn plain_probe(
    address: std::net::SocketAddr,
) -> anyhow::Result<ProbeClient<tonic::transport::Channel>> {
    Ok(ProbeClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .tcp_nodelay(true)
            .connect()
            .await?,
    ))
}

/// Measures `calls` sequential unary calls each way (bare tonic, the full stack, and the
/// grpc-go peer at `grpc_go` when given, all called by a tonic client), in alternating blocks
/// so that all see the same machine, with metrics being recorded.
pub async fn hop_overhead(
    calls: usize,
    grpc_go: Option<std::net::SocketAddr>,
    data: &Path,
) -> anyhow::Result<HopReport> {
    // Metrics recorded as in production (the recorder, without its listener).
    let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
    // Bare tonic: a server with no layers, a client on a plain channel.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_address = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let bare_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProbeServer::new(BareProbe))
            .serve_with_incoming(incoming),
    );
    let mut bare = plain_probe(bare_address).await?;
    let mut go = match grpc_go {
        Some(address) => Some(plain_probe(address).await?),
        None => None,
    };
    // The full stack: a probe behind the template's server layer, reached through discovery,
    // the balancer, hedging, retries and deadline propagation.
    let dir = bench_dir(data, "hop");
    let mut config = PlatformConfig::from_env()?;
    config.data_dir = dir.clone();
    let platform = Platform::embedded(config)?;
    let probe = start_probe(&platform, "probe", "probe-0", Behaviour::default(), None).await?;
    let mut full = ProbeClient::new(
        GrpcChannel::connect_with(platform.discovery.clone(), "probe", ClientPolicy::default())
            .await?
            .calling_as(&platform.identity, OPERATOR),
    );
    let request = || ProbeRequest {
        payload: "payload".into(),
        downstream: String::new(),
    };
    for _ in 0..200 {
        bare.read(request()).await?;
        full.read(request()).await?;
        if let Some(go) = go.as_mut() {
            go.read(request()).await?;
        }
    }
    let (mut bare_samples, mut full_samples, mut go_samples) = (Vec::new(), Vec::new(), Vec::new());
    let block = 250;
    for _ in 0..calls.div_ceil(block) {
        for _ in 0..block {
            let started = Instant::now();
            bare.read(request()).await?;
            bare_samples.push(started.elapsed());
        }
        for _ in 0..block {
            let started = Instant::now();
            full.read(request()).await?;
            full_samples.push(started.elapsed());
        }
        if let Some(go) = go.as_mut() {
            for _ in 0..block {
                let started = Instant::now();
                let reply = go.read(request()).await?.into_inner();
                anyhow::ensure!(reply.instance == "grpc-go", "not the grpc-go peer");
                go_samples.push(started.elapsed());
            }
        }
    }
    probe.running.stop().await;
    bare_server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    bare_samples.sort();
    full_samples.sort();
    go_samples.sort();
    Ok(HopReport {
        grpc_go: go.map(|_| (percentile(&go_samples, 50.0), percentile(&go_samples, 99.0))),
        bare_p50: percentile(&bare_samples, 50.0),
        bare_p99: percentile(&bare_samples, 99.0),
        full_p50: percentile(&full_samples, 50.0),
        full_p99: percentile(&full_samples, 99.0),
    })
}

/// Swipe-to-push latency: from the processor sending an authorisation to the push gateway
/// (the local sink) receiving the notification.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// Swipes measured.
    pub swipes: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

/// When the push sink received notification number `n` (microseconds since the epoch),
/// polling until it has.
async fn wait_for_push(http: &reqwest::Client, sink: &str, n: usize) -> anyhow::Result<i64> {
    loop {
        let delivered: Vec<serde_json::Value> = http
            .get(format!("http://{sink}/deliveries?from={n}"))
            .send()
            .await?
            .json()
            .await?;
        if let Some(d) = delivered.first() {
            return Ok(d["received_at_us"].as_i64().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Swipes `swipes` times, one at a time, and times each until its push reaches the sink.
pub async fn swipe_to_push(
    swipes: usize,
    durability: Durability,
    data: &Path,
) -> anyhow::Result<PushReport> {
    let BenchBank {
        dir,
        bank,
        clients,
        url,
        secret,
    } = BenchBank::start(data, "push", durability, Engines::Embedded).await?;
    let sink = bank
        .address("push-sink")
        .ok_or_else(|| anyhow::anyhow!("no push sink"))?;
    let gbp = Currency::from_code("GBP")?;
    let seeded = tools::seed(
        &clients,
        "push-bench",
        Money::from_minor(1_000_000_000, gbp),
    )
    .await?;
    let mut push = sterling_proto::push::v1::push_client::PushClient::new(
        Reach::of(&bank.platform)
            .channel(sterling_proto::push::v1::PUSH_SERVICE)
            .await?,
    );
    push.register_device(sterling_proto::push::v1::RegisterDeviceRequest {
        account_id: seeded.account_id.clone(),
        device_token: "bench-phone".into(),
        platform: "ios".into(),
    })
    .await?;
    let http = reqwest::Client::new();
    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default()
    };
    let mut latencies = Vec::with_capacity(swipes);
    for i in 0..swipes + 20 {
        let body = tools::authorisation_json(
            &format!("push-{i}"),
            &seeded.card.token,
            Money::from_minor(350, gbp),
            "PRET A MANGER LONDON GB",
            "5812",
        );
        let started = now_us();
        tools::pay(&http, &url, &secret, &body, None).await?;
        let received = wait_for_push(&http, &sink.to_string(), i).await?;
        // The first 20 warm connections and caches up.
        if i >= 20 {
            latencies.push(Duration::from_micros((received - started).max(0) as u64));
        }
    }
    bank.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    latencies.sort();
    Ok(PushReport {
        swipes: latencies.len(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
    })
}

/// What `sterling bench-settlement` measured in one mode.
#[derive(Debug, Clone)]
pub struct SettlementReport {
    /// Internal accounts on shards (`false`: on one compare-and-set).
    pub sharded: bool,
    /// Clearings sent (one per customer).
    pub clearings: usize,
    /// Clearings answered 200.
    pub posted: usize,
    /// Median clearing latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Clearings per second over the run.
    pub throughput: f64,
    /// The settlement account's balance afterwards equals the clearings' sum.
    pub settled_matches: bool,
}

/// Runs `work(i)` for `0..n` with `concurrency` in flight; the latency of each.
async fn in_flight<F, Fut>(n: usize, concurrency: usize, work: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<bool>> + Send,
{
    use futures::StreamExt;
    let work = Arc::new(work);
    let results: Vec<anyhow::Result<(Duration, bool)>> = futures::stream::iter(0..n)
        .map(|i| {
            let work = work.clone();
            async move {
                let started = Instant::now();
                let ok = work(i).await?;
                Ok((started.elapsed(), ok))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut latencies = Vec::new();
    for r in results {
        let (latency, ok) = r?;
        if ok {
            latencies.push(latency);
        }
    }
    Ok(latencies)
}

/// Card payments from `customers` customers, all settling into the one settlement account:
/// each customer authorises one payment, then every payment is cleared at once with
/// `concurrency` in flight. Measures the clearings.
pub async fn settlement(
    customers: usize,
    concurrency: usize,
    engines: Engines,
    sharded: bool,
    data: &Path,
) -> anyhow::Result<SettlementReport> {
    let BenchBank {
        dir,
        bank,
        clients,
        url,
        secret,
    } = BenchBank::start_with(
        data,
        "settlement",
        Durability::Full,
        engines,
        &[
            (
                "STERLING_LEDGER_SHARD_INTERNAL_ACCOUNTS",
                if sharded { "true" } else { "false" },
            ),
            // The clearings are measured: the authorisations before them must all approve.
            ("STERLING_CARD_API_BUDGET_MS", "10000"),
        ],
    )
    .await?;
    let gbp = Currency::from_code("GBP")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    authorise_each(&clients, &http, &url, &secret, customers, concurrency).await?;
    let started = Instant::now();
    let (clear_http, clear_url, clear_secret) = (http.clone(), url.clone(), secret.clone());
    let mut latencies = in_flight(customers, concurrency, move |i| {
        let (http, url, secret) = (clear_http.clone(), clear_url.clone(), clear_secret.clone());
        async move {
            let message = serde_json::json!({
                "id": format!("settle-clr-{i}"),
                "authorisation_id": format!("settle-auth-{i}"),
                "amount": 500,
                "currency": "GBP",
                "final": true,
            });
            let outcome =
                tools::send_message(&http, &url, "/v1/clearings", &secret, &message).await?;
            Ok(outcome.status == 200)
        }
    })
    .await?;
    let elapsed = started.elapsed();
    let settlement_account = card_processing::payments::settlement_account(gbp);
    let settled = tools::balance(&clients, &settlement_account)
        .await?
        .balance
        .map_or(0, |m| m.minor_units);
    bank.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    latencies.sort();
    Ok(SettlementReport {
        sharded,
        clearings: customers,
        posted: latencies.len(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
        settled_matches: settled == 500 * latencies.len() as i64,
    })
}

/// Seeds `customers` customers and approves one payment of 5.00 for each
/// (`settle-auth-<i>`), `concurrency` at a time.
async fn authorise_each(
    clients: &Clients,
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    customers: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let gbp = Currency::from_code("GBP")?;
    let seeding = clients.clone();
    let cards = Arc::new(tokio::sync::Mutex::new(vec![String::new(); customers]));
    let into = cards.clone();
    in_flight(customers, concurrency, move |i| {
        let (clients, cards) = (seeding.clone(), into.clone());
        async move {
            let customer = tools::seed(
                &clients,
                &format!("settle-{i}"),
                Money::from_minor(10_000, gbp),
            )
            .await?;
            cards.lock().await[i] = customer.card.token;
            Ok(true)
        }
    })
    .await?;
    let cards = Arc::new(cards.lock().await.clone());
    let (pay_http, pay_url, pay_secret, pay_cards) = (
        http.clone(),
        url.to_string(),
        secret.to_vec(),
        cards.clone(),
    );
    in_flight(customers, concurrency, move |i| {
        let (http, url, secret, cards) = (
            pay_http.clone(),
            pay_url.clone(),
            pay_secret.clone(),
            pay_cards.clone(),
        );
        async move {
            let body = tools::authorisation_json(
                &format!("settle-auth-{i}"),
                &cards[i],
                Money::from_minor(500, gbp),
                "PRET A MANGER LONDON GB",
                "5812",
            );
            let outcome = tools::pay(&http, &url, &secret, &body, None).await?;
            anyhow::ensure!(outcome.body["result"] == "APPROVED", "{}", outcome.body);
            Ok(true)
        }
    })
    .await?;
    Ok(())
}
