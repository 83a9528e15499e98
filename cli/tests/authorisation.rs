//! Card authorisations end to end: the processor's signed webhook into card-api, through
//! card-processing, cards, fx, ledger and transactions, each a real gRPC server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{SECRET, decision, money, start_sync as start};
use prost::Message;
use sterling::tools;
use sterling_bus::ConsumerConfig;
use sterling_proto::cardprocessing::v1::GetAuthorisationRequest;
use sterling_proto::cardprocessing::v1::card_processing_client::CardProcessingClient;
use sterling_proto::events::v1::CardAuthorisationDecided;
use sterling_proto::transactions::v1::TransactionStatus;
use sterling_template::Error;
use sterling_template::client::GrpcChannel;

/// A client of the bank's card-processing.
async fn card_processing(bank: &common::TestBank) -> CardProcessingClient<GrpcChannel> {
    CardProcessingClient::new(bank.channel_as("card-processing", "card-api").await)
}

/// A generous budget for tests about correctness under load, not latency.
const RELAXED: &[(&str, &str)] = &[common::RELAXED_BUDGET, common::RELAXED_CALLS];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_holds_funds_and_records_a_pending_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), RELAXED).await;
    let customer = bank.seed("approve", money("20.00", "GBP")).await;
    let outcome = bank
        .pay("auth-approve-1", &customer.card.token, money("3.50", "GBP"))
        .await;
    assert_eq!(decision(&outcome), ("APPROVED".into(), "approved".into()));
    assert_eq!(outcome.body["approved_amount"], 350);
    assert_eq!(outcome.body["held_amount"], 350);
    assert_eq!(outcome.body["held_currency"], "GBP");
    assert_eq!(bank.balance(&customer.account_id).await, (2000, 350, 1650));
    let listed = tools::transactions(&bank.clients, &customer.account_id, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let t = &listed[0];
    assert_eq!(t.authorisation_id, "auth-approve-1");
    assert_eq!(
        t.transaction_id,
        outcome.body["transaction_id"].as_str().unwrap()
    );
    assert_eq!(t.amount.as_ref().unwrap().minor_units, 350);
    assert_eq!(
        t.status,
        sterling_proto::transactions::v1::TransactionStatus::Pending as i32
    );
    assert_eq!(t.merchant_descriptor, "PRET A MANGER LONDON GB");
    // The decision is recorded under the processor's id.
    let recorded = card_processing(&bank)
        .await
        .get_authorisation(GetAuthorisationRequest {
            processor_authorisation_id: "auth-approve-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recorded.reason, "approved");
    // Newest first: a second payment lists before the first.
    let second = bank
        .pay("auth-approve-2", &customer.card.token, money("1.00", "GBP"))
        .await;
    assert_eq!(decision(&second).0, "APPROVED");
    let listed = tools::transactions(&bank.clients, &customer.account_id, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = listed.iter().map(|t| t.authorisation_id.as_str()).collect();
    assert_eq!(ids, vec!["auth-approve-2", "auth-approve-1"]);
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declines_carry_stable_reason_codes() {
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), RELAXED).await;
    let customer = bank.seed("declines", money("5.00", "GBP")).await;
    let token = customer.card.token.clone();

    let unknown = bank
        .pay("auth-unknown", "card_does_not_exist", money("1.00", "GBP"))
        .await;
    assert_eq!(
        decision(&unknown),
        ("DECLINED".into(), "card_not_found".into())
    );

    let too_much = bank
        .pay("auth-too-much", &token, money("5.01", "GBP"))
        .await;
    assert_eq!(
        decision(&too_much),
        ("DECLINED".into(), "insufficient_funds".into())
    );

    tools::set_frozen(&bank.clients, &token, true)
        .await
        .unwrap();
    let frozen = bank.pay("auth-frozen", &token, money("1.00", "GBP")).await;
    assert_eq!(decision(&frozen), ("DECLINED".into(), "card_frozen".into()));

    // Nothing was held by any decline; unfreezing makes the card work again.
    assert_eq!(bank.balance(&customer.account_id).await, (500, 0, 500));
    assert!(
        tools::transactions(&bank.clients, &customer.account_id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    tools::set_frozen(&bank.clients, &token, false)
        .await
        .unwrap();
    let ok = bank
        .pay("auth-after-unfreeze", &token, money("1.00", "GBP"))
        .await;
    assert_eq!(decision(&ok).0, "APPROVED");
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_authorisations_against_funds_for_ten_approve_exactly_ten() {
    let dir = tempfile::tempdir().unwrap();
    let bank = Arc::new(start(dir.path(), RELAXED).await);
    let customer = bank.seed("race", money("10.00", "GBP")).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let bank = bank.clone();
        let token = customer.card.token.clone();
        tasks.push(tokio::spawn(async move {
            decision(
                &bank
                    .pay(&format!("auth-race-{i}"), &token, money("1.00", "GBP"))
                    .await,
            )
        }));
    }
    let mut approved = 0;
    for task in tasks {
        match task.await.unwrap() {
            (result, _) if result == "APPROVED" => approved += 1,
            (_, reason) => assert_eq!(reason, "insufficient_funds"),
        }
    }
    assert_eq!(approved, 10);
    assert_eq!(bank.balance(&customer.account_id).await, (1000, 1000, 0));
    assert_eq!(
        tools::transactions(&bank.clients, &customer.account_id, 100)
            .await
            .unwrap()
            .len(),
        10
    );
    if let Ok(bank) = Arc::try_unwrap(bank) {
        bank.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_authorisation_id_holds_once_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let bank = Arc::new(start(dir.path(), RELAXED).await);
    let customer = bank.seed("repeat", money("10.00", "GBP")).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let bank = bank.clone();
        let token = customer.card.token.clone();
        tasks.push(tokio::spawn(async move {
            bank.pay("auth-repeat", &token, money("4.00", "GBP"))
                .await
                .body
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "answers differ: {answers:?}"
    );
    assert_eq!(answers[0]["result"], "APPROVED", "{}", answers[0]);
    // Later repeats too.
    let again = bank
        .pay("auth-repeat", &customer.card.token, money("4.00", "GBP"))
        .await;
    assert_eq!(again.body, answers[0]);
    assert_eq!(bank.balance(&customer.account_id).await, (1000, 400, 600));
    assert_eq!(
        tools::transactions(&bank.clients, &customer.account_id, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // The same id for a different payment is refused, not decided again.
    let clash = bank
        .pay("auth-repeat", &customer.card.token, money("5.00", "GBP"))
        .await;
    assert_eq!(clash.status, 409);
    assert_eq!(clash.body["code"], "conflict.authorisation");
    // Every field counts: the same payment from another city, or another country, is
    // another request.
    for (country, city) in [("GB", "Leeds"), ("FR", "London")] {
        let mut moved = tools::authorisation_json(
            "auth-repeat",
            &customer.card.token,
            money("4.00", "GBP"),
            "PRET A MANGER LONDON GB",
            "5812",
        );
        moved["merchant"]["country"] = country.into();
        moved["merchant"]["city"] = city.into();
        let clash = tools::pay(&bank.http, &bank.url, common::SECRET, &moved, None)
            .await
            .unwrap();
        assert_eq!(clash.status, 409, "{country} {city}: {}", clash.body);
        assert_eq!(clash.body["code"], "conflict.authorisation");
    }
    assert_eq!(bank.balance(&customer.account_id).await, (1000, 400, 600));
    if let Ok(bank) = Arc::try_unwrap(bank) {
        bank.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_purchase_is_converted_with_the_documented_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), RELAXED).await;
    let customer = bank.seed("fx", money("50.00", "GBP")).await;
    // EUR 3.50 at 0.8571 GBP/EUR = GBP 2.99985, rounded half away from zero to GBP 3.00.
    let outcome = bank
        .pay("auth-fx", &customer.card.token, money("3.50", "EUR"))
        .await;
    assert_eq!(decision(&outcome).0, "APPROVED");
    assert_eq!(outcome.body["approved_amount"], 350);
    assert_eq!(outcome.body["currency"], "EUR");
    assert_eq!(outcome.body["held_amount"], 300);
    assert_eq!(outcome.body["held_currency"], "GBP");
    // JPY has no minor units: JPY 1000 = GBP 1000 * 0.8571 / 162.45 = 5.2761... -> GBP 5.28.
    let yen = bank
        .pay("auth-fx-jpy", &customer.card.token, money("1000", "JPY"))
        .await;
    assert_eq!(yen.body["held_amount"], 528);
    // KRW 1 = GBP 0.00058: less than a penny still holds one, never nothing.
    let won = bank
        .pay("auth-fx-krw", &customer.card.token, money("1", "KRW"))
        .await;
    assert_eq!(decision(&won), ("APPROVED".into(), "approved".into()));
    assert_eq!(won.body["held_amount"], 1);
    let t = tools::transactions(&bank.clients, &customer.account_id, 10)
        .await
        .unwrap();
    let eur = t.iter().find(|t| t.authorisation_id == "auth-fx").unwrap();
    assert_eq!(eur.local_amount.as_ref().unwrap().minor_units, 350);
    assert_eq!(eur.local_amount.as_ref().unwrap().currency, "EUR");
    assert_eq!(eur.amount.as_ref().unwrap().minor_units, 300);
    assert_eq!(bank.balance(&customer.account_id).await, (5000, 829, 4171));
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), RELAXED).await;
    let customer = bank.seed("bad", money("10.00", "GBP")).await;
    let token = customer.card.token.clone();
    let raw = |body: &str| body.as_bytes().to_vec();
    // (what, body, signing secret, HTTP status, error code)
    type Case<'a> = (&'a str, Vec<u8>, &'a [u8], u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed json",
            raw("{\"id\": \"bad-1\", "),
            SECRET,
            400,
            "bad_request.json",
        ),
        (
            "bad signature",
            raw(&format!(
                r#"{{"id":"bad-2","card_token":"{token}","amount":100,"currency":"GBP"}}"#
            )),
            b"wrong-secret",
            401,
            "unauthorized.signature",
        ),
        (
            "negative amount",
            raw(&format!(
                r#"{{"id":"bad-3","card_token":"{token}","amount":-100,"currency":"GBP"}}"#
            )),
            SECRET,
            400,
            "bad_request.amount",
        ),
        (
            "absurd amount",
            raw(&format!(
                r#"{{"id":"bad-4","card_token":"{token}","amount":900000000000000,"currency":"GBP"}}"#
            )),
            SECRET,
            400,
            "bad_request.amount",
        ),
        (
            "unknown currency",
            raw(&format!(
                r#"{{"id":"bad-5","card_token":"{token}","amount":100,"currency":"XYZ"}}"#
            )),
            SECRET,
            400,
            "bad_request.currency",
        ),
        (
            "fractional minor units",
            raw(&format!(
                r#"{{"id":"bad-6","card_token":"{token}","amount":1.5,"currency":"GBP"}}"#
            )),
            SECRET,
            400,
            "bad_request.json",
        ),
    ];
    for (what, body, secret, status, code) in cases {
        let outcome = tools::pay_raw(&bank.http, &bank.url, secret, body, None)
            .await
            .unwrap();
        assert_eq!(outcome.status, status, "{what}: {}", outcome.body);
        assert_eq!(outcome.body["code"], code, "{what}");
        assert_eq!(outcome.body["status"], status, "{what}");
        assert!(
            outcome.body["request_id"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{what}"
        );
    }
    // An unsigned request.
    let unsigned = bank
        .http
        .post(format!("{}/v1/authorisations", bank.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    assert_eq!(
        unsigned.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    // Nothing stored anywhere.
    assert_eq!(bank.balance(&customer.account_id).await, (1000, 0, 1000));
    assert!(
        tools::transactions(&bank.clients, &customer.account_id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let mut card_processing = card_processing(&bank).await;
    for id in ["bad-1", "bad-2", "bad-3", "bad-4", "bad-5", "bad-6"] {
        let status = card_processing
            .get_authorisation(GetAuthorisationRequest {
                processor_authorisation_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(Error::from(status).code(), "not_found.authorisation");
    }
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_deadline_declines_and_leaves_no_hold() {
    let dir = tempfile::tempdir().unwrap();
    // A budget no decision can meet.
    let bank = start(dir.path(), &[("STERLING_CARD_API_BUDGET_MS", "1")]).await;
    let customer = bank.seed("deadline", money("10.00", "GBP")).await;
    let outcome = bank
        .pay("auth-late", &customer.card.token, money("2.00", "GBP"))
        .await;
    assert_eq!(decision(&outcome), ("DECLINED".into(), "timeout".into()));
    // Whatever was placed is released in the background.
    let mut held = -1;
    for _ in 0..100 {
        held = bank.balance(&customer.account_id).await.1;
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held, 0);
    // A pending transaction recorded before the deadline passed is released too.
    let mut pending = usize::MAX;
    for _ in 0..100 {
        let listed = tools::transactions(&bank.clients, &customer.account_id, 10)
            .await
            .unwrap();
        pending = listed
            .iter()
            .filter(|t| t.status == TransactionStatus::Pending as i32)
            .count();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pending, 0);
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_announced_once_on_the_bus_with_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let bank = start(dir.path(), RELAXED).await;
    let customer = bank.seed("events", money("5.00", "GBP")).await;
    let mut events = bank
        .bank
        .platform
        .bus
        .subscribe(ConsumerConfig::new(
            "test-observer",
            &["card.authorisation.*"],
        ))
        .await
        .unwrap();
    let approved = bank
        .pay_with_request_id(
            "auth-ev-1",
            &customer.card.token,
            money("3.50", "EUR"),
            Some("req-ev-1"),
        )
        .await;
    assert_eq!(decision(&approved).0, "APPROVED");
    let declined = bank
        .pay("auth-ev-2", &customer.card.token, money("9.00", "GBP"))
        .await;
    assert_eq!(decision(&declined).1, "insufficient_funds");
    // A repeat of a decided authorisation announces nothing new.
    bank.pay("auth-ev-1", &customer.card.token, money("3.50", "EUR"))
        .await;

    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event")
            .unwrap();
        let payload = CardAuthorisationDecided::decode(d.envelope.payload.as_slice()).unwrap();
        seen.push((d.envelope.clone(), payload));
        d.ack().await.unwrap();
    }
    seen.sort_by(|a, b| {
        a.1.processor_authorisation_id
            .cmp(&b.1.processor_authorisation_id)
    });
    let (envelope, payload) = &seen[0];
    assert_eq!(envelope.r#type, "card.authorisation.approved");
    assert_eq!(envelope.request_id, "req-ev-1");
    assert!(envelope.traceparent.starts_with("00-"));
    assert!(payload.approved);
    assert_eq!(payload.account_id, customer.account_id);
    assert_eq!(payload.amount.as_ref().unwrap().minor_units, 300);
    assert_eq!(payload.local_amount.as_ref().unwrap().currency, "EUR");
    assert_eq!(
        payload.transaction_id,
        approved.body["transaction_id"].as_str().unwrap()
    );
    assert_eq!(payload.merchant_descriptor, "PRET A MANGER LONDON GB");
    let (envelope, payload) = &seen[1];
    assert_eq!(envelope.r#type, "card.authorisation.declined");
    assert_eq!(payload.reason, "insufficient_funds");
    assert!(
        tokio::time::timeout(Duration::from_millis(700), events.next())
            .await
            .is_err(),
        "each decision is announced exactly once"
    );
    bank.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_keeps_everything_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (account_id, token, first_answer) = {
        let bank = start(dir.path(), RELAXED).await;
        let customer = bank.seed("restart", money("10.00", "GBP")).await;
        let outcome = bank
            .pay(
                "auth-before-restart",
                &customer.card.token,
                money("2.50", "GBP"),
            )
            .await;
        assert_eq!(decision(&outcome).0, "APPROVED");
        tools::set_frozen(&bank.clients, &customer.card.token, true)
            .await
            .unwrap();
        bank.bank.stop().await;
        (customer.account_id, customer.card.token, outcome.body)
    };
    let bank = start(dir.path(), RELAXED).await;
    // Account, hold, transaction, card state and the decision all survived.
    assert_eq!(bank.balance(&account_id).await, (1000, 250, 750));
    let listed = tools::transactions(&bank.clients, &account_id, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].authorisation_id, "auth-before-restart");
    let replay = bank
        .pay("auth-before-restart", &token, money("2.50", "GBP"))
        .await;
    assert_eq!(replay.body, first_answer);
    let frozen = bank
        .pay("auth-after-restart", &token, money("1.00", "GBP"))
        .await;
    assert_eq!(decision(&frozen).1, "card_frozen");
    // Seeding again with the same key is idempotent: no second funding.
    let again = bank.seed("restart", money("10.00", "GBP")).await;
    assert_eq!(again.card.token, token);
    assert_eq!(bank.balance(&account_id).await, (1000, 250, 750));
    bank.finish().await;
}
