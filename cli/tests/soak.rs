//! The soak: every service as its own process on Cassandra + NATS, payments from many
//! customers while a chaos driver SIGKILLs a random service every few seconds and restarts
//! it, restarts NATS twice and stops and starts Cassandra once. Afterwards every id is sent
//! again (as a processor retries), then the authorisation path is reconciled (one answer per
//! id, every approval exactly one hold, every decline none, every currency summing to zero)
//! and the asynchronous path checked: a feed item for every approved payment, at most one push
//! per event and device (the number of approvals never pushed stated: push is at most once), at least one
//! verified webhook per approved payment, and no dead letter.
//!
//! `make soak` runs 10,000 payments; `make test-engines` a short one
//! (`STERLING_SOAK_PAYMENTS`, default 400), at `STERLING_SOAK_RATE` a second (default 10).
//! Loopback only; bounded in time.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::SECRET;
use common::burst::{self, Request};
use rand::Rng;
use sterling::bank::{DEVELOPMENT_FAKES, SERVICES};
use sterling::operate::Reach;
use sterling::tools::{self, Clients};
use sterling_bus::nats::{NatsBus, NatsConfig};
use sterling_money::{Currency, Money};
use sterling_proto::feed::v1::ListFeedRequest;
use sterling_proto::feed::v1::feed_client::FeedClient;
use sterling_proto::push::v1::RegisterDeviceRequest;
use sterling_proto::push::v1::push_client::PushClient;
use sterling_proto::webhooks::v1::RegisterWebhookRequest;
use sterling_proto::webhooks::v1::webhooks_client::WebhooksClient;
use sterling_template::discovery::Discovery;
use sterling_template::discovery::nats::NatsDiscovery;
use sterling_template::identity::Identity;

const STERLING: &str = env!("CARGO_BIN_EXE_sterling");

fn nats_url() -> String {
    std::env::var("STERLING_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn engine(script: &str, action: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/local")
        .join(script);
    let status = Command::new("bash").arg(path).arg(action).status().unwrap();
    assert!(status.success(), "{script} {action} failed");
}

/// Every service of the bank as a process of its own (`sterling serve <name>`), each on a port
/// it keeps across restarts.
struct Fleet {
    dir: PathBuf,
    namespace: String,
    ports: BTreeMap<&'static str, u16>,
    processes: HashMap<&'static str, Child>,
}

impl Fleet {
    fn new(dir: &Path, namespace: &str) -> Fleet {
        let ports = SERVICES
            .iter()
            .chain(DEVELOPMENT_FAKES)
            .map(|d| (d.name, common::free_port()))
            .collect();
        Fleet {
            dir: dir.to_path_buf(),
            namespace: namespace.to_string(),
            ports,
            processes: HashMap::new(),
        }
    }

    fn spawn(&mut self, service: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{service}.log")))
            .unwrap();
        let child = Command::new(STERLING)
            .args(["serve", service])
            .env("STERLING_DATA_DIR", &self.dir)
            .env("STERLING_NAMESPACE", &self.namespace)
            .env("STERLING_STORAGE", "cassandra")
            .env("STERLING_BUS", "nats")
            .env("STERLING_DISCOVERY", "nats")
            .env(
                "STERLING_LISTEN",
                format!("127.0.0.1:{}", self.ports[service]),
            )
            .env("STERLING_REGISTRATION_TTL_MS", "3000")
            .env("STERLING_SHUTDOWN_GRACE_MS", "0")
            .env("STERLING_LOG", "warn")
            .env(
                "STERLING_CARD_API_SECRET",
                String::from_utf8_lossy(SECRET).as_ref(),
            )
            .env("STERLING_CARD_API_BUDGET_MS", "1000")
            .env("STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS", "true")
            .env("STERLING_WEBHOOKS_RETRY_SCHEDULE_MS", "200,500,1000,2000")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.processes.insert(service, child);
    }

    /// SIGKILL: no deregistration, nothing flushed.
    fn kill(&mut self, service: &'static str) {
        if let Some(mut child) = self.processes.remove(service) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again every service whose process ended by itself (as a container's restart
    /// policy does), printing the end of its log; returns how many.
    fn revive(&mut self) -> usize {
        let ended: Vec<&'static str> = self
            .processes
            .iter_mut()
            .filter_map(|(name, child)| child.try_wait().ok().flatten().map(|_| *name))
            .collect();
        for service in &ended {
            let log = std::fs::read_to_string(self.dir.join(format!("{service}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            eprintln!("soak: {service} ended by itself; its log ends {tail:?}");
            self.processes.remove(service);
            self.spawn(service);
        }
        ended.len()
    }

    fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, mut child) in self.processes.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until every service is registered in discovery, starting again any that ended by
/// itself meanwhile (one that found Cassandra not yet accepting connections, just after an
/// earlier test restarted it, exits, as it would under a container's restart policy).
async fn registered(
    fleet: &mut Fleet,
    discovery: &NatsDiscovery,
    services: &[&str],
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    for service in services {
        while discovery
            .resolve(service)
            .await
            .map_or(true, |r| r.is_empty())
        {
            assert!(Instant::now() < deadline, "{service} never registered");
            fleet.revive();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What the chaos driver did.
#[derive(Debug, Default)]
struct Chaos {
    kills: BTreeMap<&'static str, usize>,
    /// Processes that ended by themselves and were started again.
    revived: usize,
    nats_restarts: usize,
    cassandra_restarts: usize,
}

/// Until `stop`: a random service SIGKILLed every 3 s and started again a second later (and
/// any that ended by itself started again); meanwhile NATS restarted when a third and two
/// thirds of the payments are sent, Cassandra stopped for 10 s at half.
async fn chaos(
    mut fleet: Fleet,
    sent: Arc<AtomicUsize>,
    payments: usize,
    stop: Arc<AtomicBool>,
) -> (Fleet, Chaos) {
    let engines = tokio::spawn(engine_chaos(sent, payments));
    // Kills on a thread of their own: a loaded runtime must not slow them down.
    let killer = std::thread::spawn(move || {
        let mut done = Chaos::default();
        // Not the push sink: it stands in for the phone and keeps what it received in memory,
        // so killing it would erase the evidence the push check counts.
        let killable: Vec<&'static str> = fleet
            .ports
            .keys()
            .copied()
            .filter(|service| *service != "push-sink")
            .collect();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(3));
            done.revived += fleet.revive();
            let victim = killable[rand::rng().random_range(0..killable.len())];
            fleet.kill(victim);
            *done.kills.entry(victim).or_default() += 1;
            std::thread::sleep(Duration::from_secs(1));
            fleet.spawn(victim);
        }
        (fleet, done)
    });
    let (nats, cassandra) = engines.await.unwrap();
    let (fleet, mut done) = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();
    (done.nats_restarts, done.cassandra_restarts) = (nats, cassandra);
    (fleet, done)
}

/// The engines' faults, each once the payments sent pass its mark; returns how many NATS and
/// Cassandra restarts it made.
async fn engine_chaos(sent: Arc<AtomicUsize>, payments: usize) -> (usize, usize) {
    let (mut nats, mut cassandra) = (0, 0);
    for (mark, restart_cassandra) in [
        (payments / 3, false),
        (payments / 2, true),
        (2 * payments / 3, false),
    ] {
        while sent.load(Ordering::Relaxed) < mark {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if restart_cassandra {
            tokio::task::spawn_blocking(|| engine("cassandra.sh", "stop"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            tokio::task::spawn_blocking(|| engine("cassandra.sh", "up"))
                .await
                .unwrap();
            cassandra += 1;
        } else {
            tokio::task::spawn_blocking(|| engine("nats.sh", "restart"))
                .await
                .unwrap();
            nats += 1;
        }
    }
    (nats, cassandra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Cassandra and NATS: make test-engines (short), make soak (long)"]
async fn a_soak_with_services_killed_and_engines_restarted_keeps_every_rule() {
    assert!(common::real_engines(), "set STERLING_TEST_ENGINES=real");
    let payments = setting("STERLING_SOAK_PAYMENTS", 400);
    let customers = setting("STERLING_SOAK_CUSTOMERS", 20);
    let rate = setting("STERLING_SOAK_RATE", 10).max(1);
    let started = Instant::now();
    // Kept on failure: every service's log is there.
    let dir = tempfile::tempdir().unwrap();
    eprintln!("soak: services' logs in {}", dir.path().display());
    let namespace = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let identity = Identity::load_or_create(&dir.path().join("identity.key")).unwrap();
    let discovery = Arc::new(
        NatsDiscovery::connect(&nats_url(), &namespace, Duration::from_secs(3))
            .await
            .unwrap(),
    );
    // One at a time: fifteen services creating their keyspaces at once strain one node.
    let mut fleet = Fleet::new(dir.path(), &namespace);
    let names: Vec<&'static str> = fleet.ports.keys().copied().collect();
    for service in &names {
        fleet.spawn(service);
        registered(&mut fleet, &discovery, &[service], Duration::from_secs(120)).await;
    }
    let reach = Reach {
        discovery: discovery.clone(),
        identity,
    };
    let clients = Clients::connect(&reach).await.unwrap();

    // Customers, each with a phone and a webhook to this test's receiver.
    let (receiver, receiver_url) = common::receiver::receiver().await;
    let gbp = Currency::from_code("GBP").unwrap();
    // One channel per service: each follows discovery with a watch of its own.
    let push = PushClient::new(reach.channel("push").await.unwrap());
    let webhooks = WebhooksClient::new(reach.channel("webhooks").await.unwrap());
    let feed = FeedClient::new(reach.channel("feed").await.unwrap());
    let mut cards = Vec::new();
    let mut secrets = Vec::new();
    for c in 0..customers {
        let seeded = tools::seed(
            &clients,
            &format!("soak-{c}"),
            Money::from_minor(1_000_000, gbp),
        )
        .await
        .unwrap();
        push.clone()
            .register_device(RegisterDeviceRequest {
                account_id: seeded.account_id.clone(),
                device_token: format!("phone-{}", seeded.account_id),
                platform: "ios".into(),
            })
            .await
            .unwrap();
        let webhook = webhooks
            .clone()
            .register_webhook(RegisterWebhookRequest {
                idempotency_key: format!("soak-{c}"),
                account_id: seeded.account_id.clone(),
                url: receiver_url.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        secrets.push(webhook.secret);
        cards.push(seeded);
    }

    // Payments, a few in flight, every fifth sent twice at once; chaos meanwhile.
    let card_api = fleet.url("card-api");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let requests: Vec<Request> = (0..payments)
        .flat_map(|i| {
            let card = &cards[i % cards.len()].card.token;
            burst::requests(&format!("soak-{i}"), card, 1, 100)
        })
        .collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = tokio::spawn(chaos(fleet, sent.clone(), payments, stop.clone()));
    let mut heard = Vec::new();
    let paced = Instant::now();
    for (n, batch) in requests.chunks(10).enumerate() {
        // At `rate` a second, so the faults land among the payments (slower if the bank is).
        let due = paced + Duration::from_secs_f64((n * 10) as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let copies = 2;
        heard.extend(burst::send_limited(&http, &card_api, SECRET, batch, copies, 4).await);
        sent.fetch_add(batch.len(), Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    let (mut fleet, mut chaos) = chaos.await.unwrap();
    // Whatever the last kill left down is up again, and the engines are back.
    for service in &names {
        if !fleet.processes.contains_key(service) {
            fleet.spawn(service);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        chaos.revived += fleet.revive();
        let mut missing = Vec::new();
        for service in &names {
            if discovery
                .resolve(service)
                .await
                .map_or(true, |r| r.is_empty())
            {
                missing.push(*service);
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never registered again: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "soak: {payments} payments sent in {:?}; {} answers heard first time: {:?}; chaos {chaos:?}",
        started.elapsed(),
        heard.len(),
        burst::reasons(&heard)
    );

    // Every id once more, as the processor retries what it never heard; then reconcile. (On
    // failure the logs are kept.)
    let dir = dir.keep();
    for _ in 0..10 {
        let answered: std::collections::BTreeSet<String> =
            heard.iter().map(|h| h.id.clone()).collect();
        let unanswered: Vec<Request> = requests
            .iter()
            .filter(|r| !answered.contains(&r.id))
            .cloned()
            .collect();
        if unanswered.is_empty() {
            break;
        }
        heard.extend(burst::send_limited(&http, &card_api, SECRET, &unanswered, 1, 8).await);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // And every id once more: a repeat must get the answer heard before.
    heard.extend(burst::send_limited(&http, &card_api, SECRET, &requests, 1, 8).await);
    let reconciler = burst::reconciler(clients.clone(), &card_api, SECRET);
    let report = burst::assert_rules_hold(
        &reconciler,
        &requests,
        heard.clone(),
        Duration::from_secs(120),
        "soak",
    )
    .await;
    eprintln!("soak: {report}");

    // The asynchronous path, once it has settled.
    let approved_ids: std::collections::BTreeSet<&str> = heard
        .iter()
        .filter(|h| h.result == "APPROVED")
        .map(|h| h.id.as_str())
        .collect();
    // Each approval's transaction, from card-api's record of the answer.
    let mut approved: BTreeMap<String, String> = BTreeMap::new();
    for id in approved_ids {
        let answer = tools::get_signed(
            &http,
            &card_api,
            &format!("/v1/authorisations/{id}"),
            SECRET,
        )
        .await
        .unwrap();
        let transaction = answer.body["transaction_id"].as_str().unwrap_or_default();
        assert!(
            !transaction.is_empty(),
            "approval {id} has no transaction: {}",
            answer.body
        );
        approved.insert(transaction.to_string(), id.to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut missing_feed;
    loop {
        let mut items = std::collections::BTreeSet::new();
        for seeded in &cards {
            let mut token = String::new();
            loop {
                let page = feed
                    .clone()
                    .list_feed(ListFeedRequest {
                        account_id: seeded.account_id.clone(),
                        limit: 100,
                        page_token: token.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                items.extend(page.items.into_iter().map(|i| i.item_id));
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        missing_feed = approved.keys().filter(|t| !items.contains(*t)).count();
        let hooked: std::collections::BTreeSet<String> = receiver.transactions();
        let missing_hooks = approved.keys().filter(|t| !hooked.contains(*t)).count();
        if (missing_feed == 0 && missing_hooks == 0) || Instant::now() > deadline {
            assert_eq!(missing_feed, 0, "approved payments without a feed item");
            assert_eq!(missing_hooks, 0, "approved payments without a webhook");
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        receiver.all_verify(&secrets),
        "every webhook verifies with its secret"
    );
    // Pushes are at most once (one whose send failed is not sent again), so the wait for them
    // is bounded and what never came is reported as lost, not failed on.
    let push_deadline = Instant::now() + Duration::from_secs(30);
    let deliveries = loop {
        let deliveries: Vec<serde_json::Value> =
            reqwest::get(format!("{}/deliveries", fleet.url("push-sink")))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let pushed: std::collections::BTreeSet<&str> = deliveries
            .iter()
            .filter_map(|d| d["payload"]["transaction_id"].as_str())
            .collect();
        if approved.keys().all(|t| pushed.contains(t.as_str())) || Instant::now() > push_deadline {
            break deliveries;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // The rule is one notification per event and device: a payment approved and then
    // reversed by a stand-in (card-api killed mid-request) has two events, and two pushes.
    let mut pushes: HashMap<(String, String), usize> = HashMap::new();
    let mut pushed_transactions = std::collections::BTreeSet::new();
    for d in &deliveries {
        let key = (
            d["device_token"].as_str().unwrap_or_default().to_string(),
            d["payload"]["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        *pushes.entry(key).or_default() += 1;
        if let Some(t) = d["payload"]["transaction_id"].as_str() {
            pushed_transactions.insert(t.to_string());
        }
    }
    let twice: Vec<_> = pushes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "pushed more than once for one event: {twice:?}"
    );
    let pushed = approved
        .keys()
        .filter(|t| pushed_transactions.contains(*t))
        .count();

    // Dead letters: listed as `sterling dead-letters list --all` would, and none allowed.
    let bus = NatsBus::connect(NatsConfig::for_namespace(&nats_url(), &namespace))
        .await
        .unwrap();
    let letters = sterling_bus::dead_letters::list_all(&bus).await.unwrap();
    for letter in &letters {
        let last = letter.dead_letters.last().map(|d| d.reason.as_str());
        eprintln!(
            "soak dead letter: {} {} {} ({}): {}",
            letter.consumer,
            letter.event.r#type,
            letter.event.event_id,
            letter.status(),
            last.unwrap_or_default()
        );
    }
    assert!(
        letters.is_empty(),
        "{} dead letters (listed above)",
        letters.len()
    );

    eprintln!(
        "soak result: {payments} payments ({} ids sent twice at once) from {customers} customers in {:?}; \
         {} approved, {} declined, {} never reached card-processing; kills {:?} ({} in all, {} ended by themselves), NATS restarted \
         {} times, Cassandra {} time(s); violations 0; feed items missing {missing_feed}; pushes {pushed} of {} \
         ({} lost, at most once each); webhooks verified for every approval; dead letters 0 (listed: none)",
        payments / 2,
        started.elapsed(),
        report.approved,
        report.declined,
        report.unknown,
        chaos.kills,
        chaos.kills.values().sum::<usize>(),
        chaos.revived,
        chaos.nats_restarts,
        chaos.cassandra_restarts,
        approved.len(),
        approved.len() - pushed,
    );
    drop(fleet);
    let _ = std::fs::remove_dir_all(&dir);
    common::drop_keyspaces(&namespace).await;
    bus.delete_stream().await.unwrap();
    common::drop_nats(&namespace).await;
}
