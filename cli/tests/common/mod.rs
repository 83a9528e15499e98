//! Shared set-up for end-to-end tests: a whole bank in this process on ephemeral ports.

#![allow(dead_code)]

pub mod burst;
pub mod receiver;

use std::path::Path;
use std::time::{Duration, Instant};

use sterling::bank::{Bank, BankOptions, Engines};
use sterling::tools::{self, Clients, PayOutcome, Seeded};
use sterling_money::{Currency, Money};
use sterling_storage::cassandra::CassandraConfig;
use sterling_storage::embedded::Durability;
use sterling_template::client::GrpcChannel;
use sterling_template::platform::StorageBackend;

/// The webhook secret the test bank uses.
pub const SECRET: &[u8] = b"test-secret";

/// A budget for tests about correctness, not latency: generous enough that a slow engine
/// (Cassandra busy creating another test's keyspaces on two cores) still decides every
/// authorisation by its rules rather than at the deadline. The budget itself is tested with
/// tight values of its own.
pub const RELAXED_BUDGET: (&str, &str) = ("STERLING_CARD_API_BUDGET_MS", "30000");

/// For the same tests with many authorisations at once: each call between services may take
/// as long (the platform's cap, 2 s by default, would otherwise cut a slow hold short).
pub const RELAXED_CALLS: (&str, &str) = ("STERLING_CALL_TIMEOUT_MS", "30000");

/// A running bank with clients.
pub struct TestBank {
    pub bank: Bank,
    /// The namespace of its keyspaces, stream and discovery bucket.
    pub namespace: String,
    pub clients: Clients,
    pub http: reqwest::Client,
    pub url: String,
}

/// Whether the tests run on Cassandra + NATS (`STERLING_TEST_ENGINES=real`, what
/// `make test-engines` sets) rather than the embedded engines.
pub fn real_engines() -> bool {
    std::env::var("STERLING_TEST_ENGINES").as_deref() == Ok("real")
}

/// A namespace of its own per test directory (kept in the directory, so a restarted bank finds
/// its keyspaces, stream and discovery bucket again).
fn namespace_for(dir: &Path) -> String {
    let file = dir.join("namespace");
    if let Ok(ns) = std::fs::read_to_string(&file) {
        return ns;
    }
    let ns = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&file, &ns).unwrap();
    ns
}

/// Starts the bank with data under `dir`; `settings` are extra `STERLING_*` settings.
pub async fn start(dir: &Path, settings: &[(&str, &str)]) -> TestBank {
    start_wrapped(dir, settings, |platform| platform).await
}

/// The services after the decision; tests of the synchronous path leave them out (fewer
/// keyspaces to create on Cassandra).
pub const ASYNC_SERVICES: &[&str] = &[
    "merchant",
    "feed",
    "push-sink",
    "push",
    "webhooks",
    "balance",
];

/// As [`start`], without the asynchronous path's services.
pub async fn start_sync(dir: &Path, settings: &[(&str, &str)]) -> TestBank {
    let except: Vec<String> = ASYNC_SERVICES.iter().map(|s| s.to_string()).collect();
    start_with(dir, settings, except, |platform| platform).await
}

/// As [`start`], with the platform changed by `wrap` first (e.g. its bus wrapped).
pub async fn start_wrapped(
    dir: &Path,
    settings: &[(&str, &str)],
    wrap: impl FnOnce(sterling_template::platform::Platform) -> sterling_template::platform::Platform,
) -> TestBank {
    start_with(dir, settings, Vec::new(), wrap).await
}

async fn start_with(
    dir: &Path,
    settings: &[(&str, &str)],
    except: Vec<String>,
    wrap: impl FnOnce(sterling_template::platform::Platform) -> sterling_template::platform::Platform,
) -> TestBank {
    let mut options = BankOptions::ephemeral(dir);
    options.except = except;
    options.config.durability = Durability::Normal;
    if real_engines() {
        options.engines = Engines::Real;
        options.config.namespace = namespace_for(dir);
        options.config.storage = StorageBackend::Cassandra(CassandraConfig::from_env());
    }
    for processor_secret in [
        "STERLING_CARD_API_SECRET",
        "STERLING_ACCOUNTS_PROCESSOR_SECRET",
    ] {
        options.config.settings.insert(
            processor_secret.into(),
            String::from_utf8(SECRET.to_vec()).unwrap(),
        );
    }
    // The tests' webhook receivers listen on loopback.
    options.config.settings.insert(
        "STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS".into(),
        "true".into(),
    );
    for (k, v) in settings {
        options.config.settings.insert(k.to_string(), v.to_string());
    }
    let platform = wrap(Bank::platform(&options).await.expect("platform"));
    let bank = Bank::start_on(options, platform)
        .await
        .expect("bank starts");
    let clients = Clients::connect(&sterling::operate::Reach::of(&bank.platform))
        .await
        .unwrap();
    let url = bank.card_api_url().unwrap();
    TestBank {
        namespace: bank.platform.config.namespace.clone(),
        bank,
        clients,
        http: reqwest::Client::new(),
        url,
    }
}

pub fn money(text: &str, code: &str) -> Money {
    Money::parse(text, Currency::from_code(code).unwrap()).unwrap()
}

impl TestBank {
    /// Stops the bank and, on Cassandra, drops its keyspaces (a node keeps every table it
    /// ever had in memory; hundreds of test keyspaces would exhaust its heap).
    pub async fn finish(self) {
        self.bank.stop().await;
        if real_engines() {
            drop_keyspaces(&self.namespace).await;
            drop_nats(&self.namespace).await;
        }
    }

    pub async fn seed(&self, key: &str, funds: Money) -> Seeded {
        tools::seed(&self.clients, key, funds).await.expect("seed")
    }

    pub async fn pay(&self, id: &str, card: &str, amount: Money) -> PayOutcome {
        self.pay_with_request_id(id, card, amount, None).await
    }

    pub async fn pay_with_request_id(
        &self,
        id: &str,
        card: &str,
        amount: Money,
        request_id: Option<&str>,
    ) -> PayOutcome {
        let body = tools::authorisation_json(id, card, amount, "PRET A MANGER LONDON GB", "5812");
        tools::pay(&self.http, &self.url, SECRET, &body, request_id)
            .await
            .expect("card-api answers")
    }

    /// A channel to `service` that calls as the operator.
    pub async fn operator_channel(&self, service: &str) -> GrpcChannel {
        self.channel_as(service, sterling_template::OPERATOR).await
    }

    /// A channel to `service` that calls as `caller` (a service's name, or the operator).
    pub async fn channel_as(&self, service: &str, caller: &str) -> GrpcChannel {
        GrpcChannel::connect(
            self.bank.platform.discovery.clone(),
            service,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .calling_as(&self.bank.platform.identity, caller)
    }

    /// (balance, held, available) in minor units.
    pub async fn balance(&self, account_id: &str) -> (i64, i64, i64) {
        let b = tools::balance(&self.clients, account_id).await.unwrap();
        (
            b.balance.unwrap().minor_units,
            b.held.unwrap().minor_units,
            b.available.unwrap().minor_units,
        )
    }
}

/// Runs `sterling --data <data> args...` as a person would, without the caller's STERLING_*
/// settings; returns whether it succeeded, and its standard output and error together.
pub fn sterling_cli(data: &Path, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sterling"));
    for (name, _) in std::env::vars() {
        if name.starts_with("STERLING_") {
            command.env_remove(name);
        }
    }
    let output = command.arg("--data").arg(data).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Polls `check` every 50 ms until it holds (`true`) or `limit` passes (`false`).
pub async fn holds_within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Waits until `check` holds, for up to `limit`; fails the test naming `what` if it never does.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        holds_within(limit, check).await,
        "timed out waiting for {what}"
    );
}

/// "APPROVED" or "DECLINED", and the reason.
pub fn decision(outcome: &PayOutcome) -> (String, String) {
    assert_eq!(outcome.status, 200, "unexpected answer: {}", outcome.body);
    (
        outcome.body["result"].as_str().unwrap().to_string(),
        outcome.body["reason"].as_str().unwrap().to_string(),
    )
}

/// Deletes a namespace's event stream and discovery bucket from NATS.
pub async fn drop_nats(namespace: &str) {
    let url = std::env::var("STERLING_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await.expect("NATS is up");
    let jetstream = async_nats::jetstream::new(client);
    let stream = sterling_bus::nats::NatsConfig::for_namespace(&url, namespace).stream;
    let _ = jetstream.delete_stream(&stream).await;
    let bucket = sterling_template::discovery::nats::bucket_of(namespace);
    let _ = jetstream.delete_key_value(&bucket).await;
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every keyspace on the Cassandra node.
pub async fn keyspaces() -> Vec<String> {
    let session = sterling_storage::cassandra::connect(&CassandraConfig::from_env())
        .await
        .expect("Cassandra is up");
    let rows = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    rows.rows::<(String,)>()
        .unwrap()
        .filter_map(|r| r.ok().map(|(name,)| name))
        .collect()
}

/// Drops every keyspace of a test namespace.
pub async fn drop_keyspaces(namespace: &str) {
    let session = sterling_storage::cassandra::connect(&CassandraConfig::from_env())
        .await
        .expect("Cassandra is up");
    let prefix = format!("{namespace}_");
    let names: Vec<String> = keyspaces()
        .await
        .into_iter()
        .filter(|name| name.starts_with(&prefix))
        .collect();
    for name in names {
        let mut drop = scylla::statement::unprepared::Statement::new(format!(
            "DROP KEYSPACE IF EXISTS {name}"
        ));
        drop.set_request_timeout(Some(std::time::Duration::from_secs(60)));
        let _ = session.query_unpaged(drop, &[]).await;
    }
}
