//! Faults on the real engines: NATS restarted mid-run, Cassandra stopped and started, a
//! service killed with SIGKILL. They stop and start the engines of `deploy/local`, so they run
//! one at a time in `make test-engines`: `cargo test --test engine_faults -- --ignored
//! --test-threads=1`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{decision, money, start_sync as start};
use sterling_bus::ConsumerConfig;
use sterling_template::discovery::Discovery;
use sterling_template::discovery::nats::NatsDiscovery;
use sterling_template::platform;
use sterling_template::{Api, ServiceDefinition};

fn engine(script: &str, action: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/local")
        .join(script);
    let status = Command::new("bash")
        .arg(path)
        .arg(action)
        .status()
        .expect("run engine script");
    assert!(status.success(), "{script} {action} failed");
}

/// How many times the audit consumer's handler ran per event id.
fn handled() -> &'static Mutex<HashMap<String, u32>> {
    static HANDLED: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    HANDLED.get_or_init(Default::default)
}

/// A service with one consumer of card decisions, counting what it handles.
const AUDIT: ServiceDefinition = ServiceDefinition {
    name: "audit",
    migrations: &[],
    settings: &[],
    depends_on: &[],
    access: &[],
    build: |ctx| {
        Box::pin(async move {
            let config = ConsumerConfig {
                ack_wait: Duration::from_secs(2),
                ..ConsumerConfig::new("audit", &["card.authorisation.*"])
            };
            ctx.consume(config, |envelope| async move {
                *handled()
                    .lock()
                    .unwrap()
                    .entry(envelope.event_id)
                    .or_insert(0) += 1;
                Ok(())
            });
            Ok(Api::Grpc(Default::default()))
        })
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra and NATS: make test-engines"]
async fn restarting_nats_mid_run_loses_no_event_and_handles_none_twice() {
    assert!(common::real_engines(), "set STERLING_TEST_ENGINES=real");
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), &[common::RELAXED_BUDGET]).await;
    let audit = platform::start(&AUDIT, &bank.bank.platform, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let customer = bank.seed("nats-restart", money("1000.00", "GBP")).await;
    let mut transactions = Vec::new();
    for i in 0..30 {
        if i == 10 {
            engine("nats.sh", "restart");
        }
        let outcome = bank
            .pay(
                &format!("auth-nr-{i}"),
                &customer.card.token,
                money("1.00", "GBP"),
            )
            .await;
        assert_eq!(
            decision(&outcome).0,
            "APPROVED",
            "payments do not need the bus: {:?}",
            outcome.body
        );
        transactions.push(outcome.body["transaction_id"].as_str().unwrap().to_string());
    }
    // Every decision's event arrives (the outbox relay publishes what failed during the
    // restart) and the consumer handled each exactly once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = handled().lock().unwrap().len();
        if count >= 30 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let handled = handled().lock().unwrap().clone();
    assert_eq!(handled.len(), 30, "every decision was delivered");
    assert!(
        handled.values().all(|n| *n == 1),
        "handled twice: {handled:?}"
    );
    audit.stop().await;
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra and NATS: make test-engines"]
async fn a_cassandra_outage_turns_readiness_off_answers_fast_and_recovers() {
    assert!(common::real_engines(), "set STERLING_TEST_ENGINES=real");
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), &[("STERLING_CARD_API_BUDGET_MS", "2000")]).await;
    let customer = bank.seed("outage", money("100.00", "GBP")).await;
    let ok = bank
        .pay("auth-outage-0", &customer.card.token, money("1.00", "GBP"))
        .await;
    assert_eq!(decision(&ok).0, "APPROVED");

    engine("cassandra.sh", "stop");
    let card_processing = bank
        .bank
        .services
        .iter()
        .find(|s| s.name == "card-processing")
        .unwrap();
    // Answers at once instead of hanging: no decision (neither card-api's records nor
    // card-processing can say whether the id was answered before), so the processor retries.
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        bank.pay("auth-outage-1", &customer.card.token, money("1.00", "GBP")),
    )
    .await
    .expect("card-api answers while Cassandra is down");
    assert_eq!(outcome.status, 503, "{}", outcome.body);
    assert_eq!(
        outcome.body["code"], "unavailable.records",
        "{}",
        outcome.body
    );
    // Readiness turns off with the storage check's reason.
    let deadline = Instant::now() + Duration::from_secs(30);
    while card_processing.ready() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!card_processing.ready());
    let reasons = card_processing.not_ready_reasons();
    assert!(
        reasons.iter().any(|r| r.starts_with("storage")),
        "{reasons:?}"
    );

    engine("cassandra.sh", "up");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !card_processing.ready() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        card_processing.ready(),
        "{:?}",
        card_processing.not_ready_reasons()
    );
    // Recovered without a restart.
    pay_until_approved(
        &bank,
        &customer.card.token,
        "auth-outage-after",
        money("1.00", "GBP"),
        Duration::from_secs(30),
    )
    .await;
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: make test-engines"]
async fn a_killed_service_vanishes_from_discovery_within_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let ttl = Duration::from_secs(3);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sterling"))
        .args([
            "--data",
            dir.path().to_str().unwrap(),
            "up",
            "--engines",
            "nats",
        ])
        .args(["--grpc-base-port", "0", "--http-port", "0"])
        .env("STERLING_NAMESPACE", &namespace)
        .env("STERLING_REGISTRATION_TTL_MS", ttl.as_millis().to_string())
        .env("STERLING_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = std::env::var("STERLING_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let discovery = NatsDiscovery::connect(&url, &namespace, ttl).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while discovery.resolve("cards").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "cards never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap(); // SIGKILL: no deregistration
    let killed = Instant::now();
    child.wait().unwrap();
    while !discovery.resolve("cards").await.unwrap().is_empty() {
        assert!(
            killed.elapsed() < ttl * 3,
            "still registered long after its TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = killed.elapsed();
    assert!(
        gone_after <= ttl + Duration::from_millis(1500),
        "vanished after {gone_after:?}, TTL {ttl:?}"
    );
    common::drop_nats(&namespace).await;
}

/// Pays with fresh ids `{prefix}-{n}` every half second until one is approved, within `within`;
/// panics naming every answer heard if none is. Returns what it sent and the answers heard, to
/// reconcile with the rest. An engine just started (cold JIT, Paxos state rebuilt) can hold
/// every authorisation past its budget for a while on a slow machine, which declines them
/// (timeouts, stand-ins) without breaking any rule.
async fn pay_until_approved(
    bank: &common::TestBank,
    card: &str,
    prefix: &str,
    amount: sterling_money::Money,
    within: Duration,
) -> (Vec<common::burst::Request>, Vec<sterling::reconcile::Heard>) {
    let deadline = Instant::now() + within;
    let (mut sent, mut heard, mut answers) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0.. {
        let id = format!("{prefix}-{n}");
        let body = sterling::tools::authorisation_json(
            &id,
            card,
            amount,
            "PRET A MANGER LONDON GB",
            "5812",
        );
        let outcome = sterling::tools::pay(&bank.http, &bank.url, common::SECRET, &body, None)
            .await
            .expect("card-api answers");
        sent.push(common::burst::Request { id, body });
        answers.push(format!("{} {}", outcome.status, outcome.body));
        if outcome.status == 200 {
            heard.push(sterling::reconcile::Heard::from_json(&outcome.body).expect("an answer"));
            if outcome.body["result"] == "APPROVED" {
                return (sent, heard);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no authorisation approved within {within:?}; answers: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    unreachable!("the loop returns or panics")
}

/// Events left staged in a keyspace's outbox (never published or discarded).
async fn outbox_rows(namespace: &str, service: &str) -> i64 {
    let session = sterling_storage::cassandra::connect(
        &sterling_storage::cassandra::CassandraConfig::from_env(),
    )
    .await
    .expect("Cassandra is up");
    let keyspace = format!("{namespace}_{}", service.replace('-', "_"));
    let rows = session
        .query_unpaged(
            format!("SELECT count(*) FROM {keyspace}.staged_events"),
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    rows.first_row::<(i64,)>().unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra and NATS: make test-engines"]
async fn a_steady_stream_through_a_cassandra_outage_and_a_nats_restart_keeps_every_rule() {
    use common::SECRET;
    use common::burst::{self, Request};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    assert!(common::real_engines(), "set STERLING_TEST_ENGINES=real");
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        ("STERLING_CARD_PROCESSING_SWEEP_INTERVAL_MS", "200"),
        ("STERLING_CARD_PROCESSING_SWEEP_GRACE_MS", "500"),
    ];
    let bank = start(dir.path(), &settings).await;
    let customer = bank.seed("stream", money("60.00", "GBP")).await;
    // The bank approves before the stream starts (Cassandra may have just been restarted).
    let (before, heard_before) = pay_until_approved(
        &bank,
        &customer.card.token,
        "stream-before",
        money("0.50", "GBP"),
        Duration::from_secs(60),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..2 {
        let (http, url, token, stop) = (
            bank.http.clone(),
            bank.url.clone(),
            customer.card.token.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut sent: Vec<Request> = Vec::new();
            let mut heard = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("stream-{worker}-{n}");
                let body = sterling::tools::authorisation_json(
                    &id,
                    &token,
                    money("0.50", "GBP"),
                    "PRET A MANGER LONDON GB",
                    "5812",
                );
                let request = Request { id, body };
                // Every fourth payment is sent twice at once, as a retrying processor might.
                let copies = if n % 4 == 0 { 2 } else { 1 };
                let batch = vec![request.clone(); copies];
                heard.extend(burst::send(&http, &url, SECRET, &batch, 1).await);
                sent.push(request);
                n += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            (sent, heard)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    engine("cassandra.sh", "stop");
    tokio::time::sleep(Duration::from_secs(10)).await;
    engine("cassandra.sh", "up");
    tokio::time::sleep(Duration::from_secs(5)).await;
    engine("nats.sh", "stop");
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine("nats.sh", "up");
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut requests = Vec::new();
    let mut heard = Vec::new();
    for worker in workers {
        let (sent, answers) = worker.await.unwrap();
        requests.extend(sent);
        heard.extend(answers);
    }
    eprintln!(
        "outage stream: {} answers heard: {:?}",
        heard.len(),
        burst::reasons(&heard)
    );
    // The bank approves again once both engines are back, without a restart.
    let (after, heard_after) = pay_until_approved(
        &bank,
        &customer.card.token,
        "stream-after",
        money("0.50", "GBP"),
        Duration::from_secs(90),
    )
    .await;
    // Every id once more, now that the engines are back.
    heard.extend(burst::send_limited(&bank.http, &bank.url, SECRET, &requests, 1, 8).await);
    let clients =
        sterling::tools::Clients::connect(&sterling::operate::Reach::of(&bank.bank.platform))
            .await
            .unwrap();
    let reconciler = burst::reconciler(clients, &bank.url, SECRET);
    requests.extend(before.into_iter().chain(after));
    heard.extend(heard_before.into_iter().chain(heard_after));
    let report = burst::assert_rules_hold(
        &reconciler,
        &requests,
        heard,
        Duration::from_secs(60),
        "Cassandra outage and NATS restart",
    )
    .await;
    eprintln!("outage stream: {report}");
    // No decision event (nor stand-in) stays in an outbox.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = outbox_rows(&bank.namespace, "card-processing").await
            + outbox_rows(&bank.namespace, "card-api").await;
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} events stuck in outboxes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bank.finish().await;
}
