//! The balance read model against the ledger it follows: after a burst of card payments on
//! several accounts, with half the ledger's announcements left to its outbox relay (the
//! process "dies" between the ledger's write and its publish), every account's balance,
//! pending and available amounts in the read model equal the ledger's, and spent today equals
//! what the processor heard approved; an account whose last change was never published by
//! the ledger's request path gets there through the relay.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::burst;
use common::{SECRET, money, start};
use sterling_proto::balance::v1::GetBalanceRequest;
use sterling_proto::balance::v1::balance_client::BalanceClient;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balance_read_model_converges_to_the_ledger() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), &[common::RELAXED_BUDGET]).await;
    let mut accounts = Vec::new();
    let mut requests = Vec::new();
    for i in 0..4 {
        let customer = bank.seed(&format!("rm-{i}"), money("30.00", "GBP")).await;
        let mine = burst::requests(&format!("rm-{i}"), &customer.card.token, 12, 600);
        accounts.push((customer.account_id.clone(), mine.clone()));
        requests.extend(mine);
    }
    fail::cfg("ledger::change::after_write", "50%return(error)").unwrap();
    let mut heard = burst::send_limited(&bank.http, &bank.url, SECRET, &requests, 2, 8).await;
    fail::remove("ledger::change::after_write");
    heard.extend(burst::send(&bank.http, &bank.url, SECRET, &requests, 1).await);
    let approved: HashMap<String, i64> = heard
        .iter()
        .filter(|h| h.result == "APPROVED")
        .map(|h| (h.id.clone(), h.held_amount))
        .collect();
    assert!(!approved.is_empty(), "some payments were approved");

    let mut ledger = LedgerClient::new(bank.operator_channel("ledger").await);
    let mut balances = BalanceClient::new(bank.operator_channel("balance").await);
    // The last change of one account has its publish lost every time: only the relay can
    // bring the read model there.
    fail::cfg("ledger::change::after_write", "return(error)").unwrap();
    let top_up = ledger
        .transfer(sterling_proto::ledger::v1::TransferRequest {
            transfer_id: "rm-last-top-up".into(),
            debit_account_id: sterling::tools::funding_account(
                sterling_money::Currency::from_code("GBP").unwrap(),
            ),
            credit_account_id: accounts[0].0.clone(),
            amount: Some(sterling_proto::common::v1::Money {
                minor_units: 777,
                currency: "GBP".into(),
            }),
            description: "after the burst".into(),
            force: false,
        })
        .await;
    // (The client's retry of the idempotent transfer finds it done: either answer is fine.)
    let _ = top_up;
    // The point stays on, so no fast path publishes: reaching the top-up is the relay's work.
    let truth = ledger
        .get_balance(sterling_proto::ledger::v1::GetBalanceRequest {
            account_id: accounts[0].0.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let relayed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = balances
            .get_balance(GetBalanceRequest {
                account_id: accounts[0].0.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if read.balance == truth.balance {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay never published the last change: {read:?} vs {truth:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the relay published the last change in {:?}",
        relayed.elapsed()
    );
    fail::remove("ledger::change::after_write");
    let started = Instant::now();
    for (account_id, mine) in &accounts {
        let truth = ledger
            .get_balance(sterling_proto::ledger::v1::GetBalanceRequest {
                account_id: account_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let spent: i64 = mine.iter().filter_map(|r| approved.get(&r.id)).sum();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let read = balances
                .get_balance(GetBalanceRequest {
                    account_id: account_id.clone(),
                })
                .await
                .map(|r| r.into_inner());
            let seen = read.as_ref().ok().map(|r| {
                (
                    r.balance.as_ref().unwrap().minor_units,
                    r.pending.as_ref().unwrap().minor_units,
                    r.available.as_ref().unwrap().minor_units,
                    r.spent_today.as_ref().unwrap().minor_units,
                )
            });
            let wanted = (
                truth.balance.as_ref().unwrap().minor_units,
                truth.held.as_ref().unwrap().minor_units,
                truth.available.as_ref().unwrap().minor_units,
                spent,
            );
            if seen == Some(wanted) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{account_id}: the read model shows {seen:?}, the ledger {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "{} payments on {} accounts, {} approved; converged {:?} after the burst",
        requests.len(),
        accounts.len(),
        approved.len(),
        started.elapsed()
    );
    bank.finish().await;
    scenario.teardown();
}
