//! Property-based state machine of a card payment's life through card-api: random sequences of
//! authorisations, clearings (partial, over, several, final), reversals, incremental
//! authorisations, refunds and force posts on a few authorisations of one customer, every
//! message sent twice at once, with authorisations expiring on their own (after 400 ms) in the
//! middle of it. Whatever the sequence and timing:
//! - duplicates get identical answers;
//! - every GBP account of the bank sums to zero;
//! - the customer's balance is the opening balance less what answers said was posted plus what
//!   they said was refunded (each message counted once);
//! - every hold is resolved at most once: what it still holds is between zero and what was
//!   authorised, and the ledger's held amount is the sum of them;
//! - available is below zero only when the account is flagged overdrawn;
//! - once events settle, the balance read model and the transactions service agree with the
//!   ledger and with the payments.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{SECRET, TestBank, money, real_engines, start};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use sterling::tools::{self, PayOutcome};
use sterling_proto::balance::v1::GetBalanceRequest as ReadModelRequest;
use sterling_proto::balance::v1::balance_client::BalanceClient;
use sterling_proto::ledger::v1::{GetHoldRequest, HoldStatus};
use sterling_proto::transactions::v1::TransactionStatus;

const SLOTS: usize = 3;
const OPENING: i64 = 5_000;

#[derive(Debug, Clone)]
enum Op {
    Authorise {
        slot: usize,
        amount: i64,
    },
    Clear {
        slot: usize,
        msg: usize,
        amount: i64,
        last: bool,
    },
    Reverse {
        slot: usize,
        msg: usize,
        amount: Option<i64>,
    },
    Increment {
        slot: usize,
        msg: usize,
        amount: i64,
    },
    Refund {
        slot: Option<usize>,
        msg: usize,
        amount: i64,
    },
    ForcePost {
        msg: usize,
        amount: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let msg = 0..6usize;
    let amount = 1..2_500i64;
    prop_oneof![
        3 => (slot.clone(), amount.clone()).prop_map(|(slot, amount)| Op::Authorise { slot, amount }),
        3 => (slot.clone(), msg.clone(), amount.clone(), any::<bool>())
            .prop_map(|(slot, msg, amount, last)| Op::Clear { slot, msg, amount, last }),
        2 => (slot.clone(), msg.clone(), proptest::option::of(amount.clone()))
            .prop_map(|(slot, msg, amount)| Op::Reverse { slot, msg, amount }),
        1 => (slot.clone(), msg.clone(), amount.clone())
            .prop_map(|(slot, msg, amount)| Op::Increment { slot, msg, amount }),
        1 => (proptest::option::of(slot), msg.clone(), amount.clone())
            .prop_map(|(slot, msg, amount)| Op::Refund { slot, msg, amount }),
        1 => (msg, amount).prop_map(|(msg, amount)| Op::ForcePost { msg, amount }),
    ]
}

/// One case's customer and names.
struct Case {
    tag: String,
    account_id: String,
    card: String,
}

impl Case {
    fn auth(&self, slot: usize) -> String {
        format!("{}-auth-{slot}", self.tag)
    }
    /// The path and body of a message op.
    fn message(&self, op: &Op) -> (&'static str, Value) {
        let gbp = |amount: i64| (amount, "GBP");
        let (path, id, auth, _card, amount, last) = match *op {
            Op::Clear {
                slot,
                msg,
                amount,
                last,
            } => (
                "/v1/clearings",
                format!("clr-{slot}-{msg}"),
                Some(slot),
                false,
                Some(gbp(amount)),
                last,
            ),
            Op::Reverse { slot, msg, amount } => (
                "/v1/reversals",
                format!("rev-{slot}-{msg}"),
                Some(slot),
                false,
                amount.map(gbp),
                false,
            ),
            Op::Increment { slot, msg, amount } => (
                "/v1/incremental_authorisations",
                format!("inc-{slot}-{msg}"),
                Some(slot),
                false,
                Some(gbp(amount)),
                false,
            ),
            Op::Refund { slot, msg, amount } => (
                "/v1/refunds",
                format!("rfd-{msg}"),
                slot,
                true,
                Some(gbp(amount)),
                false,
            ),
            Op::ForcePost { msg, amount } => (
                "/v1/force_posts",
                format!("frc-{msg}"),
                None,
                true,
                Some(gbp(amount)),
                false,
            ),
            Op::Authorise { .. } => unreachable!(),
        };
        let mut body = json!({
            "id": format!("{}-{id}", self.tag),
            "authorisation_id": auth.map(|s| self.auth(s)).unwrap_or_default(),
            // Processors send the card with every message; refunds and force posts need it.
            "card_token": self.card.clone(),
            "final": last,
        });
        if let Some((minor, currency)) = amount {
            body["amount"] = minor.into();
            body["currency"] = currency.into();
        }
        (path, body)
    }
}

/// Sends an op twice at once; both answers must be the same. Returns it.
async fn twice(
    bank: &TestBank,
    case: &Case,
    op: &Op,
) -> Result<(String, PayOutcome), TestCaseError> {
    let (id, a, b) = match *op {
        Op::Authorise { slot, amount } => {
            let id = case.auth(slot);
            let amount = sterling_money::Money::from_minor(amount, money("1", "GBP").currency());
            let (a, b) = tokio::join!(
                bank.pay(&id, &case.card, amount),
                bank.pay(&id, &case.card, amount)
            );
            (id, a, b)
        }
        _ => {
            let (path, body) = case.message(op);
            let send = || tools::send_message(&bank.http, &bank.url, path, SECRET, &body);
            let (a, b) = tokio::join!(send(), send());
            (
                body["id"].as_str().unwrap().to_string(),
                a.unwrap(),
                b.unwrap(),
            )
        }
    };
    let strip = |o: &PayOutcome| {
        let mut body = o.body.clone();
        if let Some(map) = body.as_object_mut() {
            map.remove("request_id");
        }
        (o.status, body)
    };
    prop_assert_eq!(
        strip(&a),
        strip(&b),
        "duplicates of {:?} answered differently",
        op
    );
    prop_assert!(
        a.status == 200 || a.status == 409 || a.status == 422 || a.status == 404,
        "{:?}: {}",
        op,
        a.body
    );
    Ok((id, a))
}

async fn eventually<F, Fut>(what: &str, check: F) -> Result<(), TestCaseError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if common::holds_within(Duration::from_secs(30), check).await {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!("never: {what}")))
    }
}

async fn run_case(
    bank: &TestBank,
    customers: &mut Vec<String>,
    n: usize,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let tag = format!("m{n}-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let seeded = bank.seed(&tag, money("50.00", "GBP")).await;
    customers.push(seeded.account_id.clone());
    let case = Case {
        tag,
        account_id: seeded.account_id,
        card: seeded.card.token,
    };
    // Each message id's answer, counted once.
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();
    let mut approved: HashMap<usize, i64> = HashMap::new();
    for op in ops {
        let (id, outcome) = twice(bank, &case, op).await?;
        if outcome.status != 200 {
            continue;
        }
        if let Op::Authorise { slot, .. } = op {
            if outcome.body["result"] == "APPROVED" {
                approved.insert(*slot, outcome.body["held_amount"].as_i64().unwrap());
            }
            continue;
        }
        if let Some(before) = answers.get(&id) {
            prop_assert_eq!(
                before,
                &outcome.body,
                "a repeat of {} answered differently",
                id
            );
        }
        answers.insert(id, outcome.body);
    }
    check_books(bank, customers, &case, &answers, &approved).await?;
    check_followers(bank, &case).await
}

async fn check_books(
    bank: &TestBank,
    customers: &[String],
    case: &Case,
    answers: &BTreeMap<String, Value>,
    approved: &HashMap<usize, i64>,
) -> Result<(), TestCaseError> {
    let gbp = money("1", "GBP").currency();
    let mut accounts = customers.to_vec();
    accounts.push(tools::funding_account(gbp));
    accounts.push(card_processing::payments::settlement_account(gbp));
    let mut sum = 0;
    for account in &accounts {
        match tools::balance(&bank.clients, account).await {
            Ok(b) => sum += b.balance.unwrap().minor_units,
            // The settlement account opens with the first clearing, refund or force post.
            Err(e) if e.code() == "not_found.account" => {}
            Err(e) => panic!("{e}"),
        }
    }
    prop_assert_eq!(sum, 0, "GBP balances sum to zero");
    let posted: i64 = answers
        .values()
        .map(|a| a["posted"].as_i64().unwrap_or(0))
        .sum();
    let refunded: i64 = answers
        .values()
        .map(|a| a["refunded"].as_i64().unwrap_or(0))
        .sum();
    let b = tools::balance(&bank.clients, &case.account_id)
        .await
        .unwrap();
    let (balance, available) = (
        b.balance.unwrap().minor_units,
        b.available.unwrap().minor_units,
    );
    prop_assert_eq!(
        balance,
        OPENING - posted + refunded,
        "the balance is what the answers said"
    );
    prop_assert!(
        available >= 0 || b.overdrawn,
        "below zero only when flagged: {}",
        available
    );
    // Authorisations expire by themselves meanwhile: the holds are compared with a held
    // amount read before and after them, unchanged.
    for _ in 0..50 {
        let before = held_now(bank, case).await;
        let still_held = active_holds(bank, case, answers, approved).await?;
        if before == held_now(bank, case).await {
            prop_assert_eq!(
                before,
                still_held,
                "held is what active holds still reserve"
            );
            return Ok(());
        }
    }
    Err(TestCaseError::fail("the held amount never stood still"))
}

async fn held_now(bank: &TestBank, case: &Case) -> i64 {
    let b = tools::balance(&bank.clients, &case.account_id)
        .await
        .unwrap();
    b.held.unwrap().minor_units
}

/// What the active holds of the case still reserve, each checked to be within what was
/// authorised.
async fn active_holds(
    bank: &TestBank,
    case: &Case,
    answers: &BTreeMap<String, Value>,
    approved: &HashMap<usize, i64>,
) -> Result<i64, TestCaseError> {
    let mut still_held = 0;
    for slot in 0..SLOTS {
        let hold = bank
            .clients
            .ledger
            .clone()
            .get_hold(GetHoldRequest {
                hold_id: case.auth(slot),
                account_id: case.account_id.clone(),
            })
            .await;
        let Ok(hold) = hold else { continue };
        let hold = hold.into_inner();
        let remaining = hold.remaining.map_or(0, |m| m.minor_units);
        if hold.status == HoldStatus::Active as i32 {
            still_held += remaining;
        }
        let increased: i64 = answers
            .iter()
            .filter(|(id, _)| id.contains(&format!("-inc-{slot}-")))
            .map(|(_, a)| a["increased"].as_i64().unwrap_or(0))
            .sum();
        let authorised = approved.get(&slot).copied().unwrap_or(0) + increased;
        prop_assert!(
            (0..=authorised).contains(&remaining),
            "hold {} holds {} of {}",
            slot,
            remaining,
            authorised
        );
    }
    Ok(still_held)
}

async fn check_followers(bank: &TestBank, case: &Case) -> Result<(), TestCaseError> {
    let read_model = BalanceClient::new(bank.operator_channel("balance").await);
    // Read both each time: authorisations expire by themselves meanwhile.
    eventually("the balance read model agrees with the ledger", || {
        let mut read_model = read_model.clone();
        let account_id = case.account_id.clone();
        async move {
            let Ok(ledger) = tools::balance(&bank.clients, &account_id).await else {
                return false;
            };
            match read_model
                .get_balance(ReadModelRequest { account_id })
                .await
            {
                Ok(b) => {
                    let b = b.into_inner();
                    b.balance == ledger.balance && b.pending == ledger.held
                }
                Err(_) => false,
            }
        }
    })
    .await?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let Some(last) = transactions_disagree(bank, case).await else {
            return Ok(());
        };
        if Instant::now() > until {
            return Err(TestCaseError::fail(format!(
                "transactions never agreed: {last}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the transactions service disagrees with the payments, if it does.
async fn transactions_disagree(bank: &TestBank, case: &Case) -> Option<String> {
    let list = tools::transactions(&bank.clients, &case.account_id, 100)
        .await
        .unwrap();
    for slot in 0..SLOTS {
        let path = format!("/v1/payments/{}", case.auth(slot));
        let payment = tools::get_signed(&bank.http, &bank.url, &path, SECRET)
            .await
            .unwrap();
        if payment.status != 200 {
            continue;
        }
        let p = &payment.body;
        let Some(t) = list
            .iter()
            .find(|t| t.authorisation_id == case.auth(slot) && t.kind == "card_payment")
        else {
            // A declined authorisation has no transaction.
            continue;
        };
        let expected = match p["status"].as_str().unwrap() {
            "pending" => TransactionStatus::Pending,
            "settled" | "refunded" => TransactionStatus::Settled,
            _ => TransactionStatus::Released,
        } as i32;
        let amount = t.amount.as_ref().map(|m| m.minor_units);
        if t.status != expected
            || (expected == TransactionStatus::Settled as i32 && amount != p["settled"].as_i64())
        {
            return Some(format!(
                "slot {slot}: payment {p}, transaction status {} amount {amount:?}",
                t.status
            ));
        }
    }
    None
}

#[test]
fn any_life_of_any_payment_keeps_the_books() {
    let _serial = fail::FailScenario::setup();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bank = runtime.block_on(start(
        dir.path(),
        &[
            common::RELAXED_BUDGET,
            ("STERLING_CARD_PROCESSING_AUTHORISATION_EXPIRY_MS", "400"),
            ("STERLING_CARD_PROCESSING_EXPIRY_INTERVAL_MS", "100"),
        ],
    ));
    let cases = if real_engines() { 4 } else { 32 };
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // A failing case re-runs the bank's settling waits: shrink for a minute at most.
        max_shrink_time: 60_000,
        max_shrink_iters: 200,
        ..Config::default()
    });
    let customers = std::sync::Mutex::new(Vec::new());
    let outcome = runner.run(&proptest::collection::vec(op(), 1..24), |ops| {
        let mut customers = customers.lock().unwrap_or_else(|p| p.into_inner());
        let n = customers.len();
        runtime.block_on(run_case(&bank, &mut customers, n, &ops))
    });
    runtime.block_on(bank.finish());
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
