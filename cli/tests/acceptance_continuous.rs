//! The acceptance runner in continuous mode against a bank in another process (`sterling up`,
//! embedded engines) for `STERLING_ACCEPTANCE_MINUTES` (default 10): every run passes, the
//! runner's resident memory after the last run is within a bound of what it was after the
//! first minute, the acceptance account holds what it held after set-up (every journey undid
//! its money), and the metrics endpoint is scraped with every journey counted.
//! `make acceptance-continuous`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sterling_acceptance::{Config, Runner, monitor};

/// Resident memory of this process, in kB (Linux).
fn resident_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes ten minutes: make acceptance-continuous"]
async fn continuous_acceptance_keeps_memory_and_money_flat() {
    let minutes: u64 = std::env::var("STERLING_ACCEPTANCE_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let (gateway, card_api) = (common::free_port(), common::free_port());
    let mut bank = Command::new(env!("CARGO_BIN_EXE_sterling"))
        .args(["--data", dir.path().to_str().unwrap(), "up"])
        .args([
            "--grpc-base-port",
            "0",
            "--http-port",
            &card_api.to_string(),
        ])
        .args(["--gateway-port", &gateway.to_string()])
        .env("STERLING_ACCOUNTS_DEVELOPMENT_TOP_UPS", "true")
        .env("STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS", "true")
        .env("STERLING_CARD_API_BUDGET_MS", "1000")
        .env("STERLING_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let endpoints = dir.path().join("endpoints.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !endpoints.exists() {
        assert!(Instant::now() < deadline, "the bank never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    let sink = listed
        .iter()
        .find(|e| e["service"] == "push-sink")
        .and_then(|e| e["address"].as_str())
        .map(|a| format!("http://{a}"));
    let config = Config {
        gateway: format!("http://127.0.0.1:{gateway}"),
        card_api: format!("http://127.0.0.1:{card_api}"),
        push_sink: sink,
        processor_secret: card_api::DEVELOPMENT_SECRET.as_bytes().to_vec(),
        password: "a continuous acceptance password".into(),
        prefix: "acceptance-continuous".into(),
        receiver_listen: "127.0.0.1:0".parse().unwrap(),
        receiver_url: None,
        decision_budget: Duration::from_secs(2),
        async_timeout: Duration::from_secs(20),
    };
    let runner = Runner::start(config).await.unwrap();
    let metrics = monitor::install_metrics().unwrap();
    let health = monitor::Health::new(1);
    let address = monitor::serve("127.0.0.1:0".parse().unwrap(), metrics, health.clone())
        .await
        .unwrap();
    let start = runner
        .fixture
        .api
        .account(&runner.fixture.account_id)
        .await
        .unwrap();

    let interval = Duration::from_secs(5);
    let started = Instant::now();
    let mut runs = 0u64;
    let mut first_minute_kb = None;
    while started.elapsed() < Duration::from_secs(60 * minutes) {
        monitor::run_continuously(&runner, interval, Some(1), &health).await;
        runs += 1;
        assert!(health.healthy(), "run {runs} failed");
        if first_minute_kb.is_none() && started.elapsed() > Duration::from_secs(60) {
            first_minute_kb = Some(resident_kb());
        }
        tokio::time::sleep(interval).await;
    }
    let end_kb = resident_kb();
    let first_kb = first_minute_kb.unwrap_or(end_kb);
    let end = runner
        .fixture
        .api
        .account(&runner.fixture.account_id)
        .await
        .unwrap();
    let scraped = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    eprintln!(
        "continuous acceptance: {runs} runs in {:?}; resident {first_kb} kB after the first minute, {end_kb} kB at the end; account {start:?} -> {end:?}",
        started.elapsed()
    );
    let _ = bank.kill();
    let _ = bank.wait();
    assert_eq!(end, start, "the account holds what it did after set-up");
    assert!(
        end_kb <= first_kb + first_kb / 5 + 4096,
        "resident memory grew from {first_kb} kB to {end_kb} kB"
    );
    let passed = format!(
        r#"sterling_acceptance_journeys_total{{journey="approve",outcome="passed"}} {runs}"#
    );
    assert!(scraped.contains(&passed), "{passed} not in\n{scraped}");
}
