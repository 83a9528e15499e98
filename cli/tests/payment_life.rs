//! The life of a card payment after its approval, end to end through card-api as a processor
//! sends it: clearings (partial, several, final, over within the tolerance and beyond it),
//! reversals (partial, full, before their authorisation), incremental authorisations, refunds
//! (with and without a payment), force posts below zero, expiry and a clearing after it; every
//! message repeated and sent twice at once, one cut between the ledger and the record. Then
//! the books are reconciled: balances sum to zero, the transactions service, the feed and the
//! balance read model agree with the ledger.
//!
//! Each test holds a fail scenario, so the tests of this file run one at a time.

mod common;

use std::time::Duration;

use common::{SECRET, TestBank, decision, eventually, money, start};
use serde_json::{Value, json};
use sterling::tools::{self, PayOutcome};
use sterling_proto::balance::v1::GetBalanceRequest as ReadModelBalanceRequest;
use sterling_proto::balance::v1::balance_client::BalanceClient;
use sterling_proto::feed::v1::ListFeedRequest;
use sterling_proto::feed::v1::feed_client::FeedClient;
use sterling_proto::ledger::v1::GetBalanceRequest;

/// Sends a message as the processor does.
async fn send(bank: &TestBank, path: &str, message: Value) -> PayOutcome {
    tools::send_message(&bank.http, &bank.url, path, SECRET, &message)
        .await
        .expect("card-api answers")
}

/// Sends a message and expects it applied; returns the answer.
async fn applied(bank: &TestBank, path: &str, message: Value) -> Value {
    let outcome = send(bank, path, message.clone()).await;
    assert_eq!(outcome.status, 200, "{path} {message}: {}", outcome.body);
    outcome.body
}

fn clearing(id: &str, authorisation: &str, minor: i64, last: bool) -> Value {
    json!({ "id": id, "authorisation_id": authorisation, "amount": minor, "currency": "GBP", "final": last })
}

async fn approve(bank: &TestBank, id: &str, card: &str, amount: &str) -> i64 {
    let outcome = bank.pay(id, card, money(amount, "GBP")).await;
    assert_eq!(decision(&outcome).0, "APPROVED", "{}", outcome.body);
    outcome.body["held_amount"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearings_reversals_increments_refunds_and_force_posts() {
    let _serial = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), &[common::RELAXED_BUDGET]).await;
    let alice = bank.seed("life-alice", money("100.00", "GBP")).await;
    let card = alice.card.token.clone();

    // Two partial clearings, the second final: 25 + 10 of 40 held, the last 5 released.
    approve(&bank, "life-a1", &card, "40.00").await;
    let first = applied(
        &bank,
        "/v1/clearings",
        clearing("clr-a1-1", "life-a1", 2500, false),
    )
    .await;
    assert_eq!(
        (first["posted"].as_i64(), first["released"].as_i64()),
        (Some(2500), Some(2500))
    );
    assert_eq!(first["payment"]["status"], "pending");
    assert_eq!(first["payment"]["held"], 1500);
    let last = applied(
        &bank,
        "/v1/clearings",
        clearing("clr-a1-2", "life-a1", 1000, true),
    )
    .await;
    assert_eq!(
        last["released"], 1500,
        "the final clearing releases what is left"
    );
    assert_eq!(last["payment"]["status"], "settled");
    assert_eq!(last["payment"]["settled"], 3500);
    assert_eq!(bank.balance(&alice.account_id).await, (6500, 0, 6500));
    // A repeat is answered from the record; the same id for another message is a conflict.
    let again = applied(
        &bank,
        "/v1/clearings",
        clearing("clr-a1-2", "life-a1", 1000, true),
    )
    .await;
    assert_eq!(again, last);
    let clash = send(
        &bank,
        "/v1/clearings",
        clearing("clr-a1-2", "life-a1", 999, true),
    )
    .await;
    assert_eq!(
        (clash.status, clash.body["code"].as_str()),
        (409, Some("conflict.message"))
    );

    // Over-capture: within the 20% tolerance it posts, beyond it is refused and moves nothing.
    approve(&bank, "life-a2", &card, "10.00").await;
    let tip = applied(
        &bank,
        "/v1/clearings",
        clearing("clr-a2", "life-a2", 1150, true),
    )
    .await;
    assert_eq!(
        (tip["posted"].as_i64(), tip["released"].as_i64()),
        (Some(1150), Some(1000))
    );
    approve(&bank, "life-a3", &card, "10.00").await;
    let greedy = send(
        &bank,
        "/v1/clearings",
        clearing("clr-a3", "life-a3", 1300, true),
    )
    .await;
    assert_eq!(
        greedy.body["code"], "precondition_failed.over_capture",
        "{}",
        greedy.body
    );
    assert_eq!(bank.balance(&alice.account_id).await, (5350, 1000, 4350));

    // Reversals: part, then the rest.
    let part = applied(&bank, "/v1/reversals", json!({ "id": "rev-a3-1", "authorisation_id": "life-a3", "amount": 400, "currency": "GBP" })).await;
    assert_eq!(
        (part["released"].as_i64(), part["payment"]["held"].as_i64()),
        (Some(400), Some(600))
    );
    let rest = applied(
        &bank,
        "/v1/reversals",
        json!({ "id": "rev-a3-2", "authorisation_id": "life-a3" }),
    )
    .await;
    assert_eq!(rest["released"], 600);
    assert_eq!(rest["payment"]["status"], "reversed");
    assert_eq!(bank.balance(&alice.account_id).await, (5350, 0, 5350));

    // A reversal before its authorisation: the authorisation, when it comes, is declined.
    let early = applied(&bank, "/v1/reversals", json!({ "id": "rev-early", "authorisation_id": "life-early", "card_token": card, "amount": 500, "currency": "GBP" })).await;
    assert_eq!(early["released"], 0);
    let late = bank.pay("life-early", &card, money("5.00", "GBP")).await;
    assert_eq!(
        decision(&late),
        ("DECLINED".into(), "reversed_before_authorisation".into())
    );

    // Incremental authorisation: raised while funds allow, declined after.
    approve(&bank, "life-hotel", &card, "20.00").await;
    let more = applied(&bank, "/v1/incremental_authorisations", json!({ "id": "inc-1", "authorisation_id": "life-hotel", "amount": 3000, "currency": "GBP" })).await;
    assert_eq!(
        (more["accepted"].as_bool(), more["payment"]["held"].as_i64()),
        (Some(true), Some(5000))
    );
    let too_much = applied(&bank, "/v1/incremental_authorisations", json!({ "id": "inc-2", "authorisation_id": "life-hotel", "amount": 9000, "currency": "GBP" })).await;
    assert_eq!(
        (too_much["accepted"].as_bool(), too_much["reason"].as_str()),
        (Some(false), Some("insufficient_funds"))
    );
    let checkout = applied(
        &bank,
        "/v1/clearings",
        clearing("clr-hotel", "life-hotel", 4800, true),
    )
    .await;
    assert_eq!(
        (checkout["posted"].as_i64(), checkout["released"].as_i64()),
        (Some(4800), Some(5000))
    );
    assert_eq!(bank.balance(&alice.account_id).await, (550, 0, 550));

    // Refunds: of a payment, and of nothing this bank knows.
    let refund = applied(&bank, "/v1/refunds", json!({ "id": "rfd-a1", "authorisation_id": "life-a1", "card_token": card, "amount": 1000, "currency": "GBP", "merchant": { "descriptor": "PRET A MANGER LONDON GB" } })).await;
    assert_eq!(refund["refunded"], 1000);
    assert_eq!(refund["payment"]["refunded"], 1000);
    assert_ne!(
        refund["transaction_id"], last["transaction_id"],
        "a refund is its own transaction"
    );
    applied(
        &bank,
        "/v1/refunds",
        json!({ "id": "rfd-loose", "card_token": card, "amount": 250, "currency": "GBP" }),
    )
    .await;
    assert_eq!(bank.balance(&alice.account_id).await, (1800, 0, 1800));

    // A force post below zero posts and flags the account.
    let forced = applied(&bank, "/v1/force_posts", json!({ "id": "frc-1", "card_token": card, "amount": 3000, "currency": "GBP", "merchant": { "descriptor": "TRAIN TICKET ONBOARD" } })).await;
    assert_eq!(
        (forced["posted"].as_i64(), forced["overdrawn"].as_bool()),
        (Some(3000), Some(true))
    );
    let ledger_balance = tools::balance(&bank.clients, &alice.account_id)
        .await
        .unwrap();
    assert_eq!(ledger_balance.available.unwrap().minor_units, -1200);
    assert!(ledger_balance.overdrawn, "the account is flagged");

    // Bad messages: clear errors, nothing stored.
    for (path, body, code) in [
        (
            "/v1/clearings",
            json!({ "id": "bad-1", "amount": 100, "currency": "GBP" }),
            "bad_request.authorisation_id",
        ),
        (
            "/v1/refunds",
            json!({ "id": "bad-2", "amount": 100, "currency": "GBP" }),
            "bad_request.card_token",
        ),
        (
            "/v1/clearings",
            json!({ "id": "bad-3", "authorisation_id": "life-a1", "amount": -5, "currency": "GBP" }),
            "bad_request.amount",
        ),
        (
            "/v1/clearings",
            json!({ "id": "bad-4", "authorisation_id": "life-a1", "amount": 5 }),
            "bad_request.amount",
        ),
        (
            "/v1/force_posts",
            json!({ "id": "bad-5", "card_token": "nope", "amount": 5, "currency": "GBP" }),
            "not_found.card",
        ),
        (
            "/v1/incremental_authorisations",
            json!({ "id": "bad-6", "authorisation_id": "never-seen", "amount": 5, "currency": "GBP" }),
            "not_found.authorisation",
        ),
    ] {
        let outcome = send(&bank, path, body.clone()).await;
        assert_eq!(
            outcome.body["code"], code,
            "{path} {body}: {}",
            outcome.body
        );
    }
    let unsigned = bank
        .http
        .post(format!("{}/v1/clearings", bank.url))
        .body(clearing("unsigned", "life-a1", 1, false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);

    settlement_reconciles(&bank).await;
    books_balance(&bank, &[&alice.account_id]).await;
    followers_agree(&bank, &alice.account_id).await;
    let authorisations = ["life-a1", "life-a2", "life-a3", "life-early", "life-hotel"];
    authorisations_reconcile(&bank, &authorisations).await;
    bank.finish().await;
}

/// The reconciler's rules hold for payments that moved on: a hold used up by clearings, cut
/// by a reversal or raised by an increment is what the payment still holds, and a settled
/// payment's transaction is no longer pending.
async fn authorisations_reconcile(bank: &TestBank, ids: &[&str]) {
    let reach = sterling::operate::Reach::of(&bank.bank.platform);
    let clients = tools::Clients::connect(&reach).await.unwrap();
    let reconciler = common::burst::reconciler(clients, &bank.url, SECRET);
    let heard: Vec<_> = ids.iter().map(|id| (id.to_string(), Vec::new())).collect();
    let report = reconciler.reconcile(&heard, true).await.unwrap();
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.approved >= 4, "{report}");
}

/// The day's settlement file, as the processor would send it for the messages above, matches
/// the ledger; a planted mismatch of each kind is found, and nothing else.
async fn settlement_reconciles(bank: &TestBank) {
    let day = sterling_storage::utc_date(sterling_storage::now_millis());
    let clean = "message_id,type,amount,currency\n\
        clr-a1-1,clearing,2500,GBP\n\
        clr-a1-2,clearing,1000,GBP\n\
        clr-a2,clearing,1150,GBP\n\
        clr-hotel,clearing,4800,GBP\n\
        rfd-a1,refund,1000,GBP\n\
        rfd-loose,refund,250,GBP\n\
        frc-1,force_post,3000,GBP\n";
    let (lines, mismatches) = sterling::settlement::reconcile(&bank.clients, clean, &day, &[])
        .await
        .unwrap();
    assert_eq!(lines, 7);
    assert!(mismatches.is_empty(), "a clean day: {mismatches:?}");
    let planted = clean
        .replace("clr-a2,clearing,1150", "clr-a2,clearing,1149")
        .replace("rfd-loose,refund,250,GBP\n", "")
        + "clr-ghost,clearing,700,GBP\n";
    let (_, mismatches) = sterling::settlement::reconcile(&bank.clients, &planted, &day, &[])
        .await
        .unwrap();
    use sterling::settlement::Mismatch;
    assert_eq!(mismatches.len(), 3, "{mismatches:?}");
    assert!(mismatches.iter().any(|m| matches!(m, Mismatch::AmountDiffers { line, ledger: 1150 } if line.message_id == "clr-a2")));
    assert!(mismatches.iter().any(
        |m| matches!(m, Mismatch::MissingInLedger { line } if line.message_id == "clr-ghost")
    ));
    assert!(mismatches.iter().any(|m| matches!(m, Mismatch::MissingInFile { transfer_id, amount: -250, .. } if transfer_id == "refund:rfd-loose")));
}

/// Every GBP account of the test sums to zero.
async fn books_balance(bank: &TestBank, customers: &[&str]) {
    let gbp = sterling_money::Currency::from_code("GBP").unwrap();
    let mut accounts: Vec<String> = customers.iter().map(|c| c.to_string()).collect();
    accounts.push(tools::funding_account(gbp));
    accounts.push(card_processing::payments::settlement_account(gbp));
    let mut sum = 0;
    for account in &accounts {
        sum += tools::balance(&bank.clients, account)
            .await
            .unwrap()
            .balance
            .unwrap()
            .minor_units;
    }
    assert_eq!(sum, 0, "balances sum to zero over {accounts:?}");
}

/// Transactions, the feed and the balance read model come to what the ledger says.
async fn followers_agree(bank: &TestBank, account_id: &str) {
    let ledger = tools::balance(&bank.clients, account_id).await.unwrap();
    let mut read_model = BalanceClient::new(bank.operator_channel("balance").await);
    eventually(
        Duration::from_secs(20),
        "the balance read model matches the ledger",
        || {
            let mut read_model = read_model.clone();
            let ledger = ledger.clone();
            async move {
                let Ok(b) = read_model
                    .get_balance(ReadModelBalanceRequest {
                        account_id: account_id.into(),
                    })
                    .await
                else {
                    return false;
                };
                let b = b.into_inner();
                b.balance == ledger.balance && b.pending == ledger.held
            }
        },
    )
    .await;
    let _ = &mut read_model;
    eventually(
        Duration::from_secs(20),
        "transactions show every payment settled or released",
        || async {
            let list = tools::transactions(&bank.clients, account_id, 50)
                .await
                .unwrap();
            let status = |kind: &str, status: i32| {
                list.iter()
                    .filter(|t| t.kind == kind && t.status == status)
                    .map(|t| t.amount.clone().unwrap().minor_units)
                    .collect::<Vec<_>>()
            };
            let settled = sterling_proto::transactions::v1::TransactionStatus::Settled as i32;
            let pending = sterling_proto::transactions::v1::TransactionStatus::Pending as i32;
            let mut payments = status("card_payment", settled);
            payments.sort();
            let mut refunds = status("refund", settled);
            refunds.sort();
            payments == vec![1150, 3500, 4800]
                && refunds == vec![250, 1000]
                && status("force_post", settled) == vec![3000]
                && status("card_payment", pending).is_empty()
        },
    )
    .await;
    let mut feed = FeedClient::new(bank.operator_channel("feed").await);
    eventually(
        Duration::from_secs(20),
        "the feed shows settled amounts, the reversal and the refunds",
        || {
            let mut feed = feed.clone();
            async move {
                let items = feed
                    .list_feed(ListFeedRequest {
                        account_id: account_id.into(),
                        limit: 50,
                        page_token: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .items;
                let count = |kind: &str, status: &str| {
                    items
                        .iter()
                        .filter(|i| i.kind == kind && i.status == status)
                        .count()
                };
                count("card_payment", "settled") == 3
                    && count("card_payment", "reversed") == 1
                    && count("refund", "settled") == 2
                    && count("force_post", "settled") == 1
                    && items.iter().any(|i| {
                        i.status == "settled"
                            && i.amount.as_ref().is_some_and(|a| a.minor_units == 3500)
                    })
            }
        },
    )
    .await;
    let _ = &mut feed;
    // The ledger's own view, for the record.
    let mut ledger_client = bank.clients.ledger.clone();
    let b = ledger_client
        .get_balance(GetBalanceRequest {
            account_id: account_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.held.unwrap().minor_units, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_at_once_and_a_cut_after_the_ledger_move_money_once() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), &[common::RELAXED_BUDGET]).await;
    let bob = bank.seed("life-bob", money("50.00", "GBP")).await;
    let card = bob.card.token.clone();
    approve(&bank, "dup-1", &card, "30.00").await;

    // The same clearing eight times at once: one posting, eight identical answers.
    let message = clearing("clr-dup-1", "dup-1", 2000, false);
    let answers =
        futures::future::join_all((0..8).map(|_| send(&bank, "/v1/clearings", message.clone())))
            .await;
    let first = answers[0].body.clone();
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body, first, "every duplicate gets the same answer");
    }
    assert_eq!(bank.balance(&bob.account_id).await, (3000, 1000, 2000));

    // Two different clearings of one authorisation at once: both post.
    let (a, b) = tokio::join!(
        send(
            &bank,
            "/v1/clearings",
            clearing("clr-dup-2", "dup-1", 300, false)
        ),
        send(
            &bank,
            "/v1/clearings",
            clearing("clr-dup-3", "dup-1", 200, false)
        ),
    );
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    assert_eq!(bank.balance(&bob.account_id).await, (2500, 500, 2000));

    // Two clearings racing past the tolerance together (7 + 7 of 10, 20 % allowed): the
    // ledger lets exactly one through.
    approve(&bank, "dup-2", &card, "10.00").await;
    let (a, b) = tokio::join!(
        send(
            &bank,
            "/v1/clearings",
            clearing("clr-race-1", "dup-2", 700, false)
        ),
        send(
            &bank,
            "/v1/clearings",
            clearing("clr-race-2", "dup-2", 700, false)
        ),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 422], "{} {}", a.body, b.body);
    let refused = if a.status == 422 { &a } else { &b };
    assert_eq!(refused.body["code"], "precondition_failed.over_capture");
    assert_eq!(bank.balance(&bob.account_id).await, (1800, 800, 1000));
    let (id, _) = if a.status == 422 {
        ("clr-race-1", 0)
    } else {
        ("clr-race-2", 0)
    };
    let again = send(&bank, "/v1/clearings", clearing(id, "dup-2", 700, false)).await;
    assert_eq!(
        again.body["code"], "precondition_failed.over_capture",
        "refused for good"
    );
    applied(
        &bank,
        "/v1/reversals",
        json!({ "id": "rev-dup-2", "authorisation_id": "dup-2" }),
    )
    .await;

    // Cut between the ledger and the record: the processor hears an error, retries, and the
    // money moves once.
    // (Every attempt is cut, card-api's own retries of the idempotent call included.)
    fail::cfg("card_processing::payment::after_ledger", "return(error)").unwrap();
    let cut = send(
        &bank,
        "/v1/reversals",
        json!({ "id": "rev-dup", "authorisation_id": "dup-1" }),
    )
    .await;
    assert_ne!(
        cut.status, 200,
        "the first attempt fails after the ledger moved: {}",
        cut.body
    );
    fail::remove("card_processing::payment::after_ledger");
    let retried = applied(
        &bank,
        "/v1/reversals",
        json!({ "id": "rev-dup", "authorisation_id": "dup-1" }),
    )
    .await;
    assert_eq!(retried["released"], 500);
    assert_eq!(retried["payment"]["status"], "settled");
    assert_eq!(retried["payment"]["settled"], 2500);
    assert_eq!(bank.balance(&bob.account_id).await, (1800, 0, 1800));
    books_balance(&bank, &[&bob.account_id]).await;
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncleared_authorisation_expires_and_a_late_clearing_still_posts() {
    let _serial = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let bank = start(
        dir.path(),
        &[
            common::RELAXED_BUDGET,
            ("STERLING_CARD_PROCESSING_AUTHORISATION_EXPIRY_MS", "1500"),
            ("STERLING_CARD_PROCESSING_EXPIRY_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let carol = bank.seed("life-carol", money("20.00", "GBP")).await;
    approve(&bank, "exp-1", &carol.card.token, "12.00").await;
    assert_eq!(bank.balance(&carol.account_id).await, (2000, 1200, 800));
    eventually(Duration::from_secs(20), "the payment expires", || async {
        let payment = tools::get_signed(&bank.http, &bank.url, "/v1/payments/exp-1", SECRET)
            .await
            .unwrap();
        payment.body["status"] == "expired"
    })
    .await;
    assert_eq!(bank.balance(&carol.account_id).await, (2000, 0, 2000));
    // The merchant clears after all: the money is owed, so it posts.
    let late = applied(
        &bank,
        "/v1/clearings",
        clearing("clr-exp-1", "exp-1", 1200, true),
    )
    .await;
    assert_eq!(
        (late["posted"].as_i64(), late["released"].as_i64()),
        (Some(1200), Some(0))
    );
    assert_eq!(late["payment"]["status"], "settled");
    assert_eq!(bank.balance(&carol.account_id).await, (800, 0, 800));
    books_balance(&bank, &[&carol.account_id]).await;
    bank.finish().await;
}
