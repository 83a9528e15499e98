//! `sterling bench`: authorisation latency and throughput through card-api, measured by the
//! same client a processor would be, against a bank started in this process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sterling_money::{Currency, Money};
use sterling_storage::embedded::Durability;

use crate::bank::{Bank, BankOptions, Engines};
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
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Starts a bank in a temporary directory, seeds one customer per worker and measures.
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let dir = std::env::temp_dir().join(format!("sterling-bench-{}", uuid::Uuid::now_v7()));
    let mut bank_options = BankOptions::ephemeral(&dir);
    bank_options.config.durability = options.durability;
    bank_options.engines = options.engines;
    if options.engines != Engines::Embedded {
        // A namespace of its own: fresh keyspaces, stream and discovery bucket.
        bank_options.config.namespace =
            format!("bench{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    }
    let secret = b"bench-secret".to_vec();
    bank_options.config.settings.insert(
        "STERLING_CARD_API_SECRET".into(),
        String::from_utf8(secret.clone())?,
    );
    let bank = Bank::start(bank_options).await?;
    let clients = Clients::connect(bank.platform.discovery.clone()).await?;
    let url = bank
        .card_api_url()
        .ok_or_else(|| anyhow::anyhow!("card-api not started"))?;
    let gbp = Currency::from_code("GBP")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()?;
    let mut cards = Vec::new();
    for worker in 0..options.concurrency {
        let seeded = tools::seed(
            &clients,
            &format!("bench-{worker}"),
            Money::from_minor(1_000_000_000, gbp),
        )
        .await?;
        cards.push(seeded.card.token);
    }
    // Warm every connection before measuring.
    for (i, card) in cards.iter().enumerate() {
        let body = tools::authorisation_json(
            &format!("warm-{i}"),
            card,
            Money::from_minor(1, gbp),
            "WARM UP",
            "5812",
        );
        tools::pay(&http, &url, &secret, &body, None).await?;
    }
    let per_worker = options.payments.div_ceil(options.concurrency);
    let secret = Arc::new(secret);
    let started = Instant::now();
    let mut workers = Vec::new();
    for (worker, card) in cards.into_iter().enumerate() {
        let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
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
    })
}
