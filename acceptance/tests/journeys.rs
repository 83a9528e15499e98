//! The acceptance runner against a whole bank in this process (embedded engines): every
//! journey passes, the set-up is idempotent (a second runner finds the same customer, account
//! and card), the account's money is where it started (less nothing), a broken cards service
//! fails the run naming the journey, the step and the request id, and the continuous mode's
//! metrics and health are scraped (with the bank's business metric, which counts acceptance
//! payments apart).

use std::time::Duration;

use sterling::bank::{Bank, BankOptions};
use sterling_acceptance::journeys::JOURNEYS;
use sterling_acceptance::{Config, Runner, monitor, report};

/// A bank on ephemeral ports, in development mode (top-ups, loopback webhook receivers).
async fn bank(dir: &std::path::Path) -> Bank {
    let mut options = BankOptions::ephemeral(dir);
    for (k, v) in [
        ("STERLING_ACCOUNTS_DEVELOPMENT_TOP_UPS", "true"),
        ("STERLING_WEBHOOKS_ALLOW_LOCAL_RECEIVERS", "true"),
        // Fail points and debug builds on a loaded machine: the round trip, not the bank's
        // own budget, is what this test may not hold to.
        ("STERLING_CARD_API_BUDGET_MS", "2000"),
    ] {
        options.config.settings.insert(k.into(), v.into());
    }
    Bank::start(options).await.expect("the bank starts")
}

fn config(bank: &Bank, prefix: &str) -> Config {
    let url = |service: &str| format!("http://{}", bank.address(service).unwrap());
    Config {
        gateway: url("gateway"),
        card_api: url("card-api"),
        push_sink: Some(url("push-sink")),
        processor_secret: sterling_signature::DEVELOPMENT_SECRET.as_bytes().to_vec(),
        password: "an acceptance test password".into(),
        prefix: prefix.into(),
        receiver_listen: "127.0.0.1:0".parse().unwrap(),
        receiver_url: None,
        decision_budget: Duration::from_secs(5),
        async_timeout: Duration::from_secs(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_journey_passes_and_the_money_comes_back() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let bank = bank(dir.path()).await;
    let runner = Runner::start(config(&bank, "acceptance-a")).await.unwrap();
    let before = runner
        .fixture
        .api
        .account(&runner.fixture.account_id)
        .await
        .unwrap();
    assert!(
        before.available >= sterling_acceptance::fixture::FLOOR,
        "topped up: {before:?}"
    );

    let journeys = runner.run_once().await;
    let failures: Vec<String> = journeys.iter().filter_map(|j| j.failure()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let names: Vec<&str> = journeys.iter().map(|j| j.name).collect();
    assert_eq!(names, JOURNEYS);
    let after = runner
        .fixture
        .api
        .account(&runner.fixture.account_id)
        .await
        .unwrap();
    assert_eq!(after, before, "every journey undid its money movement");

    let xml = report::junit(&journeys).to_string().unwrap();
    assert!(
        xml.contains(r#"tests="8""#) && xml.contains(r#"failures="0""#),
        "{xml}"
    );

    // The same prefix again: the same customer, account and card; the earlier run's webhook
    // (another receiver) is replaced.
    let again = Runner::start(config(&bank, "acceptance-a")).await.unwrap();
    assert_eq!(again.fixture.account_id, runner.fixture.account_id);
    assert_eq!(again.fixture.card_token, runner.fixture.card_token);
    assert_ne!(again.fixture.webhook_id, runner.fixture.webhook_id);
    let journeys = again.run_once().await;
    let failures: Vec<String> = journeys.iter().filter_map(|j| j.failure()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
    bank.stop().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_cards_service_fails_naming_journey_step_and_request_id() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let bank = bank(dir.path()).await;
    let runner = Runner::start(config(&bank, "acceptance-b")).await.unwrap();
    fail::cfg("cards::get_card", "return(error)").unwrap();
    let journeys = runner.run_once().await;
    fail::cfg("cards::get_card", "off").unwrap();

    let approve = &journeys[0];
    let failure = approve.failure().expect("the approve journey fails");
    assert_eq!(approve.failed_step().unwrap().name, "approved");
    let request_id = &approve
        .ids
        .iter()
        .find(|(k, _)| *k == "request id")
        .unwrap()
        .1;
    assert!(
        failure.starts_with("journey approve failed at step \"approved\""),
        "{failure}"
    );
    assert!(failure.contains(request_id.as_str()), "{failure}");
    assert!(failure.contains("DECLINED"), "{failure}");
    let xml = report::junit(&journeys).to_string().unwrap();
    assert!(
        xml.contains(request_id.as_str()),
        "the report names the request id"
    );

    // Continuous mode: a failed run is counted, /healthz turns 503 after one, and a run that
    // passes makes it healthy again; every journey's outcome and step latency are scraped.
    let metrics = monitor::install_metrics().unwrap();
    let health = monitor::Health::new(1);
    let address = monitor::serve("127.0.0.1:0".parse().unwrap(), metrics, health.clone())
        .await
        .unwrap();
    let healthz = || async {
        reqwest::get(format!("http://{address}/healthz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(healthz().await, 200);
    fail::cfg("cards::get_card", "return(error)").unwrap();
    monitor::run_continuously(&runner, Duration::from_millis(10), Some(1), &health).await;
    fail::cfg("cards::get_card", "off").unwrap();
    assert_eq!(healthz().await, 503);
    monitor::run_continuously(&runner, Duration::from_millis(10), Some(1), &health).await;
    let body = reqwest::get(format!("http://{address}/healthz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(healthz().await, 200, "{body}");
    let scraped = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"sterling_acceptance_journeys_total{journey="approve",outcome="failed"} 1"#,
        r#"sterling_acceptance_journeys_total{journey="approve",outcome="passed"} 1"#,
        r#"sterling_acceptance_step_seconds_bucket{journey="approve",step="authorise",le="0.005"}"#,
    ] {
        assert!(scraped.contains(expected), "{expected} not in\n{scraped}");
    }
    // The bank in this process counts into the same registry: its business metric tells the
    // acceptance payments apart.
    let decided: Vec<&str> = scraped
        .lines()
        .filter(|l| l.starts_with("sterling_card_authorisations_total{"))
        .collect();
    assert!(
        decided
            .iter()
            .any(|l| l.contains(r#"decision="approved""#) && l.contains(r#"acceptance="true""#)),
        "{decided:#?}"
    );
    assert!(
        !decided.iter().any(|l| l.contains(r#"acceptance="false""#)),
        "{decided:#?}"
    );
    bank.stop().await;
    scenario.teardown();
}
