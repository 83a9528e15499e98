//! `sterling-acceptance`: acceptance card payments against a deployment, once (CI) or
//! continuously (a monitor).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sterling_acceptance::{Config, Runner, monitor, report};

/// Fake customers with real cards on the real system, paying as a processor and a customer
/// would, so a broken deploy is seen by a machine before a customer sees it.
#[derive(Parser)]
#[command(name = "sterling-acceptance", version)]
struct Args {
    /// The gateway's base URL (the public API).
    #[arg(
        long,
        env = "STERLING_ACCEPTANCE_GATEWAY",
        default_value = "http://127.0.0.1:8000"
    )]
    gateway: String,
    /// card-api's base URL.
    #[arg(
        long,
        env = "STERLING_ACCEPTANCE_CARD_API",
        default_value = "http://127.0.0.1:8080"
    )]
    card_api: String,
    /// The push sink's base URL (when the deployment's push service delivers to one): the
    /// approve journey then checks the phone got its push.
    #[arg(long, env = "STERLING_ACCEPTANCE_PUSH_SINK")]
    push_sink: Option<String>,
    /// A bank's `endpoints.json` (`<data dir>/endpoints.json` of `sterling up`): the push sink
    /// is found there when --push-sink is not given.
    #[arg(long, env = "STERLING_ACCEPTANCE_ENDPOINTS")]
    endpoints: Option<PathBuf>,
    /// The processor's webhook secret (card-api's); the development one by default.
    #[arg(
        long,
        env = "STERLING_ACCEPTANCE_PROCESSOR_SECRET",
        default_value = "sterling-development-secret",
        hide_env_values = true
    )]
    processor_secret: String,
    /// The acceptance customer's password.
    #[arg(
        long,
        env = "STERLING_ACCEPTANCE_PASSWORD",
        default_value = "acceptance customer password",
        hide_env_values = true
    )]
    password: String,
    /// What every acceptance customer, key and id starts with.
    #[arg(long, env = "STERLING_ACCEPTANCE_PREFIX", default_value = "acceptance")]
    prefix: String,
    /// Where the customer's webhook receiver listens.
    #[arg(
        long,
        env = "STERLING_ACCEPTANCE_RECEIVER_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    receiver_listen: SocketAddr,
    /// The receiver's URL as the bank reaches it (default: http://<listen address>/webhooks).
    #[arg(long, env = "STERLING_ACCEPTANCE_RECEIVER_URL")]
    receiver_url: Option<String>,
    /// The longest an authorisation's round trip may take, in milliseconds.
    #[arg(
        long,
        env = "STERLING_ACCEPTANCE_DECISION_BUDGET_MS",
        default_value_t = 1000
    )]
    decision_budget_ms: u64,
    /// The longest the asynchronous path (feed, push, webhook, balance) may take, in seconds.
    #[arg(
        long,
        env = "STERLING_ACCEPTANCE_ASYNC_TIMEOUT_S",
        default_value_t = 15
    )]
    async_timeout_s: u64,
    /// Run every journey once and exit: 0 if all passed, 1 if one failed.
    #[arg(long)]
    once: bool,
    /// With --once: write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Continuous mode: seconds from the start of one run to the next.
    #[arg(long, default_value_t = 60)]
    interval: u64,
    /// Continuous mode: where /metrics and /healthz listen.
    #[arg(
        long,
        env = "STERLING_ACCEPTANCE_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    listen: SocketAddr,
    /// Continuous mode: /healthz answers 503 after this many failed runs in a row.
    #[arg(long, default_value_t = 3)]
    unhealthy_after: u32,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sterling-acceptance: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let metrics = monitor::install_metrics()?;
    let config = Config {
        gateway: args.gateway.trim_end_matches('/').to_string(),
        card_api: args.card_api.trim_end_matches('/').to_string(),
        push_sink: match (args.push_sink, &args.endpoints) {
            (Some(url), _) => Some(url.trim_end_matches('/').to_string()),
            (None, Some(file)) => push_sink_in(file)?,
            (None, None) => None,
        },
        processor_secret: args.processor_secret.into_bytes(),
        password: args.password,
        prefix: args.prefix,
        receiver_listen: args.receiver_listen,
        receiver_url: args.receiver_url,
        decision_budget: Duration::from_millis(args.decision_budget_ms),
        async_timeout: Duration::from_secs(args.async_timeout_s),
    };
    let runner = Runner::start(config).await?;
    if args.once {
        let journeys = runner.run_once().await;
        if let Some(path) = &args.junit {
            report::write_junit(&journeys, path)?;
        }
        let failures: Vec<String> = journeys.iter().filter_map(|j| j.failure()).collect();
        for journey in &journeys {
            let verdict = if journey.failure().is_some() {
                "FAILED"
            } else {
                "ok"
            };
            println!(
                "{:<32} {verdict:>6} {:>7} ms",
                journey.name,
                journey.took.as_millis()
            );
        }
        for failure in &failures {
            println!("{failure}");
        }
        return Ok(if failures.is_empty() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        });
    }
    let health = monitor::Health::new(args.unhealthy_after);
    let address = monitor::serve(args.listen, metrics, health.clone()).await?;
    tracing::info!(%address, interval_s = args.interval, "acceptance runs continuously; /metrics and /healthz here");
    monitor::run_continuously(
        &runner,
        Duration::from_secs(args.interval.max(1)),
        None,
        &health,
    )
    .await;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The push sink's URL in a bank's `endpoints.json`, if it runs one.
fn push_sink_in(file: &std::path::Path) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let endpoints: Vec<serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a list of endpoints", file.display()))?;
    Ok(endpoints
        .iter()
        .find(|e| e["service"] == "push-sink")
        .and_then(|e| e["address"].as_str())
        .map(|address| format!("http://{address}")))
}
