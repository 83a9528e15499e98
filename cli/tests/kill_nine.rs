//! The bank as a child process, killed with SIGKILL mid-burst several times at random
//! moments and restarted; then every id is sent again and the reconciler checks the four
//! rules against everything the processor heard, before and after each crash.
//! On the embedded engines in `make test`; with `STERLING_TEST_ENGINES=real`, on
//! Cassandra + NATS.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::burst::{self, Request, assert_rules_hold};
use common::{SECRET, money, real_engines};
use rand::Rng;
use sterling::operate::Reach;
use sterling::tools::{self, Clients};
use sterling_template::discovery::Protocol;
use sterling_template::identity::Identity;
use sterling_template::platform::config::IDENTITY_KEY_FILE;
use sterling_template::platform::{DiscoverySpec, PlatformConfig, open_discovery};

struct ChildBank {
    child: Child,
    dir: std::path::PathBuf,
    namespace: String,
}

impl ChildBank {
    fn spawn(dir: &Path, namespace: &str) -> ChildBank {
        let _ = std::fs::remove_file(dir.join("endpoints.json"));
        let engines = if real_engines() { "real" } else { "embedded" };
        let child = Command::new(env!("CARGO_BIN_EXE_sterling"))
            .args(["--data", dir.to_str().unwrap(), "up", "--engines", engines])
            .args(["--grpc-base-port", "0", "--http-port", "0"])
            .env("STERLING_NAMESPACE", namespace)
            .env(
                "STERLING_CARD_API_SECRET",
                std::str::from_utf8(SECRET).unwrap(),
            )
            .env("STERLING_CARD_PROCESSING_SWEEP_INTERVAL_MS", "100")
            .env("STERLING_CARD_PROCESSING_SWEEP_GRACE_MS", "200")
            .env("STERLING_REGISTRATION_TTL_MS", "3000")
            .env("STERLING_LOG", "error")
            // A debug build on Cassandra needs more than the default 100 ms to approve at all.
            .env(
                "STERLING_CARD_API_BUDGET_MS",
                if real_engines() { "1000" } else { "100" },
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("the sterling binary starts");
        ChildBank {
            child,
            dir: dir.to_path_buf(),
            namespace: namespace.to_string(),
        }
    }

    /// The bank's discovery, and its identity authority (the key file in its data directory).
    async fn reach(&self) -> Reach {
        let mut config = PlatformConfig::from_env().unwrap();
        config.namespace = self.namespace.clone();
        let spec = if real_engines() {
            DiscoverySpec::Nats
        } else {
            DiscoverySpec::File(self.dir.join("endpoints.json"))
        };
        Reach {
            discovery: open_discovery(&spec, &config).await.unwrap(),
            identity: Identity::load_or_create(&self.dir.join(IDENTITY_KEY_FILE)).unwrap(),
        }
    }

    /// Waits until the bank answers on card-api; returns its URL.
    async fn ready(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < deadline, "the bank never came up");
            if self.dir.join("endpoints.json").exists() {
                let url = self.card_api_url().await;
                if let Some(url) = url
                    && reqwest::get(format!("{url}/healthz"))
                        .await
                        .is_ok_and(|r| r.status().is_success())
                {
                    return url;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn card_api_url(&self) -> Option<String> {
        let found = self
            .reach()
            .await
            .discovery
            .resolve("card-api")
            .await
            .ok()?;
        found
            .into_iter()
            .find(|r| r.protocol == Protocol::Http)
            .map(|r| format!("http://{}", r.address))
    }

    /// Runs `sterling reconcile` against this bank; whether it passed, and what it printed.
    fn reconcile_command(&self, answers: &Path) -> (bool, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sterling"));
        command
            .args(["--data", self.dir.to_str().unwrap(), "reconcile"])
            .args(["--answers", answers.to_str().unwrap(), "--complete"])
            .args(["--settle-secs", "0"])
            .env(
                "STERLING_CARD_API_SECRET",
                std::str::from_utf8(SECRET).unwrap(),
            )
            .env("STERLING_NAMESPACE", &self.namespace);
        if real_engines() {
            command.env("STERLING_DISCOVERY", "nats");
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for ChildBank {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_bank_mid_burst_keeps_every_rule() {
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut bank = ChildBank::spawn(dir.path(), &namespace);
    let url = bank.ready().await;
    let clients = Clients::connect(&bank.reach().await).await.unwrap();
    let customer = tools::seed(&clients, "kill-nine", money("60.00", "GBP"))
        .await
        .unwrap();
    drop(clients);
    let http = reqwest::Client::new();
    let mut url = url;
    let mut all: Vec<Request> = Vec::new();
    let mut heard = Vec::new();
    for round in 0..4 {
        let requests = burst::requests(&format!("k{round}"), &customer.card.token, 50, 500);
        // Ids of earlier rounds are sent again too: answers must survive the crashes.
        let mut sent = requests.clone();
        sent.extend(all.iter().take(10).cloned());
        all.extend(requests);
        let burst = {
            let (http, url, sent) = (http.clone(), url.clone(), sent.clone());
            tokio::spawn(
                async move { burst::send_limited(&http, &url, SECRET, &sent, 2, 12).await },
            )
        };
        let delay = rand::rng().random_range(20..400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        bank.kill();
        let answered = burst.await.unwrap();
        eprintln!(
            "kill -9 round {round}: killed after {delay} ms, {} answers heard",
            answered.len()
        );
        heard.extend(answered);
        bank = ChildBank::spawn(dir.path(), &namespace);
        url = bank.ready().await;
    }
    // Every id once more, after the last restart.
    heard.extend(burst::send_limited(&http, &url, SECRET, &all, 1, 12).await);
    eprintln!(
        "kill -9: {} answers heard: {:?}",
        heard.len(),
        burst::reasons(&heard)
    );
    let clients = Clients::connect(&bank.reach().await).await.unwrap();
    let reconciler = burst::reconciler(clients, &url, SECRET);
    let report = assert_rules_hold(
        &reconciler,
        &all,
        heard.clone(),
        Duration::from_secs(20),
        "killed mid-burst",
    )
    .await;
    eprintln!(
        "kill -9: {} approved, {} declined",
        report.approved, report.declined
    );
    assert!(report.approved > 0);
    // And once more: every id answered, the same way as before.
    let again = burst::send_limited(&http, &url, SECRET, &all, 1, 12).await;
    assert_eq!(again.len(), all.len());
    heard.extend(again);
    assert_rules_hold(
        &reconciler,
        &all,
        heard.clone(),
        Duration::ZERO,
        "after settling",
    )
    .await;

    // The same check from the command line, as an operator would run it.
    let answers = dir.path().join("answers.jsonl");
    let lines: Vec<String> = heard
        .iter()
        .map(|h| serde_json::to_string(h).unwrap())
        .collect();
    std::fs::write(&answers, lines.join("\n")).unwrap();
    let (ok, out) = bank.reconcile_command(&answers);
    assert!(ok, "sterling reconcile found violations:\n{out}");
    assert!(out.contains(" 0 violations"), "{out}");
    // And it fails, naming the id, when the processor heard two answers for one id.
    let mut forged = heard[0].clone();
    forged.result = if forged.result == "APPROVED" {
        "DECLINED"
    } else {
        "APPROVED"
    }
    .into();
    std::fs::write(
        &answers,
        format!(
            "{}\n{}",
            lines.join("\n"),
            serde_json::to_string(&forged).unwrap()
        ),
    )
    .unwrap();
    let (ok, out) = bank.reconcile_command(&answers);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("rule 1 [{}]", forged.id)), "{out}");
    if real_engines() {
        drop(bank);
        common::drop_keyspaces(&namespace).await;
        common::drop_nats(&namespace).await;
    }
}
