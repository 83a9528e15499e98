//! The authorisation's four rules under a fail point at every step boundary of card-api,
//! card-processing, ledger and transactions, of every kind (an error, a sleep past the
//! deadline, the task aborted where it stands): a burst of concurrent authorisations with
//! random amounts, repeated ids and concurrent duplicates against a small balance, then every
//! id again once the point is off, then the reconciler over everything the processor heard.
//! Also: a budget so tight that much of a burst times out.

mod common;

use std::time::Duration;

use common::burst::{self, assert_rules_hold};
use common::{SECRET, TestBank, money, start_sync};
use sterling::tools::Clients;

/// Every step boundary of the money path.
const POINTS: &[&str] = &[
    "card_api::before_decision",
    "card_api::answer::after_write",
    "card_processing::saga::start",
    "card_processing::saga::before_hold",
    "card_processing::saga::after_hold",
    "card_processing::saga::after_transaction",
    "card_processing::settle::before_write",
    "card_processing::settle::after_write",
    "ledger::place_hold::before_write",
    "ledger::place_hold::after_write",
    "ledger::change::after_write",
    "transactions::record::before_write",
    "transactions::record::after_write",
];

/// A fast sweeper, so that the bank settles within seconds.
const SETTINGS: &[(&str, &str)] = &[
    ("STERLING_CARD_PROCESSING_SWEEP_INTERVAL_MS", "100"),
    ("STERLING_CARD_PROCESSING_SWEEP_GRACE_MS", "200"),
];

async fn reconciler(bank: &TestBank) -> std::sync::Arc<sterling::reconcile::Reconciler> {
    let clients = Clients::connect(&sterling::operate::Reach::of(&bank.bank.platform))
        .await
        .unwrap();
    burst::reconciler(clients, &bank.url, SECRET)
}

/// For each point: a fresh account with GBP 40.00, 16 authorisations of up to GBP 8.00 sent
/// with duplicates while the point fires half the time, every id again after, reconciled.
async fn every_point(action: &str) {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let bank = start_sync(dir.path(), SETTINGS).await;
    let reconciler = reconciler(&bank).await;
    for (n, point) in POINTS.iter().enumerate() {
        let tag = format!("{}-{n}", action.replace(['(', ')', '%', ':'], ""));
        let customer = bank.seed(&tag, money("40.00", "GBP")).await;
        let requests = burst::requests(&tag, &customer.card.token, 16, 800);
        fail::cfg(*point, &format!("50%return({action})")).unwrap();
        let mut heard = burst::send(&bank.http, &bank.url, SECRET, &requests, 3).await;
        fail::remove(*point);
        heard.extend(burst::send(&bank.http, &bank.url, SECRET, &requests, 1).await);
        let context = format!("fail point {point} = {action}");
        let report = assert_rules_hold(
            &reconciler,
            &requests,
            heard.clone(),
            Duration::from_secs(15),
            &context,
        )
        .await;
        // Settled: every id is answered once more, the same way.
        let again = burst::send(&bank.http, &bank.url, SECRET, &requests, 1).await;
        assert_eq!(
            again.len(),
            requests.len(),
            "{context}: every repeat is answered"
        );
        heard.extend(again);
        assert_rules_hold(&reconciler, &requests, heard, Duration::ZERO, &context).await;
        eprintln!(
            "{context}: {} approved, {} declined",
            report.approved, report.declined
        );
    }
    bank.finish().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_failing_with_an_error_keeps_the_rules() {
    every_point("error").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_sleeping_past_the_deadline_keeps_the_rules() {
    every_point("sleep:150").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_aborted_half_way_keeps_the_rules() {
    every_point("abort").await;
}

/// A budget so small that a large share of 64 concurrent authorisations times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_budget_under_load_keeps_the_rules() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = SETTINGS.to_vec();
    settings.push(("STERLING_CARD_API_BUDGET_MS", "15"));
    let bank = start_sync(dir.path(), &settings).await;
    let reconciler = reconciler(&bank).await;
    let customer = bank.seed("tight", money("100.00", "GBP")).await;
    let requests = burst::requests("tight", &customer.card.token, 64, 500);
    let mut heard = burst::send(&bank.http, &bank.url, SECRET, &requests, 2).await;
    let timeouts = heard.iter().filter(|h| h.reason == "timeout").count();
    heard.extend(burst::send(&bank.http, &bank.url, SECRET, &requests, 1).await);
    let report = assert_rules_hold(
        &reconciler,
        &requests,
        heard,
        Duration::from_secs(15),
        "tight budget",
    )
    .await;
    eprintln!(
        "tight budget: {timeouts} timeouts heard; {} approved, {} declined",
        report.approved, report.declined
    );
    assert!(timeouts > 0, "the budget is tight enough to time out");
    bank.finish().await;
    scenario.teardown();
}

/// A budget longer than the platform's cap on a call's timeout (2 s) is card-processing's
/// whole: a decision that takes 2.5 s within a 5 s budget is approved, not declined at 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_longer_than_the_call_timeout_is_given_whole() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = SETTINGS.to_vec();
    settings.push(("STERLING_CARD_API_BUDGET_MS", "5000"));
    settings.push(("STERLING_CALL_TIMEOUT_MS", "2000"));
    let bank = start_sync(dir.path(), &settings).await;
    let customer = bank.seed("long-budget", money("10.00", "GBP")).await;
    fail::cfg("card_processing::saga::start", "return(sleep:2500)").unwrap();
    let outcome = bank
        .pay(
            "auth-long-budget",
            &customer.card.token,
            money("4.00", "GBP"),
        )
        .await;
    fail::remove("card_processing::saga::start");
    assert_eq!(
        common::decision(&outcome),
        ("APPROVED".into(), "approved".into())
    );
    assert_eq!(bank.balance(&customer.account_id).await, (1000, 400, 600));
    bank.finish().await;
    scenario.teardown();
}

/// The oracle itself: each broken rule is reported, with the ids involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_reports_each_broken_rule() {
    use sterling::reconcile::{Heard, Violation};
    use sterling_proto::ledger::v1::ReleaseHoldRequest;

    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = SETTINGS.to_vec();
    settings.push(common::RELAXED_BUDGET);
    let bank = start_sync(dir.path(), &settings).await;
    let reconciler = reconciler(&bank).await;
    let customer = bank.seed("oracle", money("10.00", "GBP")).await;
    let token = customer.card.token.clone();
    let requests = burst::requests("oracle", &token, 3, 300);
    let heard = burst::send(&bank.http, &bank.url, SECRET, &requests, 1).await;
    assert_rules_hold(
        &reconciler,
        &requests,
        heard.clone(),
        Duration::ZERO,
        "clean",
    )
    .await;
    let rules = |violations: &[Violation], id: &str| -> Vec<u8> {
        violations
            .iter()
            .filter(|v| v.ids.iter().any(|i| i.contains(id)))
            .map(|v| v.rule)
            .collect()
    };
    let grouped = |heard: Vec<Heard>| sterling::reconcile::by_id(heard);

    // Rule 1: the processor says it heard something else.
    let mut misheard = heard.clone();
    let mut other = misheard[0].clone();
    other.result = "DECLINED".into();
    other.reason = "timeout".into();
    misheard.push(other);
    let report = reconciler
        .reconcile(&grouped(misheard), true)
        .await
        .unwrap();
    assert!(
        rules(&report.violations, "oracle-0").contains(&1),
        "{report}"
    );

    // Rules 2 and 3: a hold released behind card-processing's back (only a caller with its
    // identity may release one).
    let as_card_processing = sterling_template::client::GrpcChannel::connect(
        bank.bank.platform.discovery.clone(),
        sterling_proto::ledger::v1::LEDGER_SERVICE,
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .calling_as(
        &bank.bank.platform.identity,
        sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE,
    );
    sterling_proto::ledger::v1::ledger_client::LedgerClient::new(as_card_processing)
        .release_hold(ReleaseHoldRequest {
            hold_id: "oracle-1".into(),
            account_id: customer.account_id.clone(),
        })
        .await
        .unwrap();
    let report = reconciler
        .reconcile(&grouped(heard.clone()), true)
        .await
        .unwrap();
    assert!(
        rules(&report.violations, "oracle-1").contains(&2),
        "{report}"
    );
    assert!(
        rules(&report.violations, &customer.account_id).contains(&3),
        "{report}"
    );

    // Rule 4: a decision still being made.
    fail::cfg("card_processing::saga::start", "return(sleep:3000)").unwrap();
    let slow = burst::requests("oracle-slow", &token, 1, 100);
    let pending = {
        let (http, url, slow) = (bank.http.clone(), bank.url.clone(), slow.clone());
        tokio::spawn(async move { burst::send(&http, &url, SECRET, &slow, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = reconciler
        .reconcile(&[(slow[0].id.clone(), Vec::new())], false)
        .await
        .unwrap();
    assert!(
        rules(&report.violations, "oracle-slow-0").contains(&4),
        "{report}"
    );
    fail::remove("card_processing::saga::start");
    pending.await.unwrap();
    bank.finish().await;
    scenario.teardown();
}
