//! Transaction records: idempotent recording, paging newest first, releases that win races.

use std::sync::Arc;

use sterling_proto::events::v1::CardPaymentUpdated;
use sterling_storage::embedded::SqliteStore;
use sterling_storage::uuid_v7_at;
use sterling_storage::{Mutation, Row, SharedStore, Value};
use transactions::MIGRATIONS;
use transactions::store::{TransactionRecord, TransactionStore};

fn record(id: &str, authorisation: &str, amount: i64) -> TransactionRecord {
    TransactionRecord {
        transaction_id: id.into(),
        account_id: "acc-1".into(),
        authorisation_id: authorisation.into(),
        card_token: "card".into(),
        amount,
        currency: "GBP".into(),
        local_amount: amount,
        local_currency: "GBP".into(),
        merchant_descriptor: "SHOP".into(),
        mcc: "5812".into(),
        status: "pending".into(),
        created_at_ms: 1,
        merchant_name: String::new(),
        category: String::new(),
        logo_url: String::new(),
        kind: "card_payment".into(),
    }
}

fn store() -> TransactionStore {
    TransactionStore::new(Arc::new(SqliteStore::in_memory(MIGRATIONS).unwrap()))
}

#[tokio::test]
async fn recording_is_idempotent_and_refuses_a_reused_id() {
    let s = store();
    let t = record("01900000-0000-7000-8000-000000000001", "a1", 100);
    assert_eq!(s.record(&t).await.unwrap(), t);
    assert_eq!(s.record(&t).await.unwrap(), t);
    let clash = record("01900000-0000-7000-8000-000000000001", "a2", 100);
    assert_eq!(
        s.record(&clash).await.unwrap_err().code(),
        "conflict.transaction"
    );
    assert_eq!(s.get(&t.transaction_id).await.unwrap(), t);
    // The same id in another account is refused too, and the id still finds the first.
    let elsewhere = TransactionRecord {
        account_id: "acc-2".into(),
        ..t.clone()
    };
    assert_eq!(
        s.record(&elsewhere).await.unwrap_err().code(),
        "conflict.transaction"
    );
    assert_eq!(s.get(&t.transaction_id).await.unwrap(), t);
    assert!(s.list("acc-2", 10, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn enrichment_fills_a_recorded_transaction_and_leaves_an_unrecorded_one_absent() {
    let s = store();
    let t = record("01900000-0000-7000-8000-0000000000e1", "a-e1", 250);
    s.record(&t).await.unwrap();
    for _ in 0..2 {
        assert!(
            s.enrich(
                "acc-1",
                &t.transaction_id,
                "Pret",
                "eating_out",
                "https://logo"
            )
            .await
            .unwrap()
        );
    }
    let enriched = s.get(&t.transaction_id).await.unwrap();
    assert_eq!(
        (enriched.merchant_name.as_str(), enriched.category.as_str()),
        ("Pret", "eating_out")
    );
    assert_eq!(
        (enriched.status.as_str(), enriched.amount),
        ("pending", 250)
    );
    let declined = "01900000-0000-7000-8000-0000000000e2";
    assert!(
        !s.enrich("acc-1", declined, "Pret", "eating_out", "")
            .await
            .unwrap()
    );
    assert!(s.get(declined).await.is_err());
    assert_eq!(s.list("acc-1", 10, None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn pages_come_newest_first_with_a_cursor() {
    let s = store();
    for i in 1..=5 {
        s.record(&record(
            &format!("01900000-0000-7000-8000-00000000000{i}"),
            &format!("a{i}"),
            i,
        ))
        .await
        .unwrap();
    }
    let first = s.list("acc-1", 2, None).await.unwrap();
    let amounts: Vec<i64> = first.iter().map(|t| t.amount).collect();
    assert_eq!(amounts, vec![5, 4]);
    let next = s
        .list("acc-1", 2, Some(&first[1].transaction_id))
        .await
        .unwrap();
    let amounts: Vec<i64> = next.iter().map(|t| t.amount).collect();
    assert_eq!(amounts, vec![3, 2]);
}

#[tokio::test]
async fn a_release_before_the_record_wins() {
    let s = store();
    let id = "01900000-0000-7000-8000-00000000000a";
    let released = s.release(id, "acc-1", "a-late").await.unwrap();
    assert_eq!(released.status, "released");
    let late = s.record(&record(id, "a-late", 700)).await.unwrap_err();
    assert_eq!(late.code(), "precondition_failed.transaction_released");
    assert_eq!(s.get(id).await.unwrap().status, "released");
    // And releasing a recorded one flips it once.
    let id2 = "01900000-0000-7000-8000-00000000000b";
    s.record(&record(id2, "a-2", 300)).await.unwrap();
    assert_eq!(
        s.release(id2, "acc-1", "a-2").await.unwrap().status,
        "released"
    );
    assert_eq!(s.release(id2, "acc-1", "a-2").await.unwrap().amount, 300);
    // A repeat of the recording after the release reports the release.
    let repeat = s.record(&record(id2, "a-2", 300)).await.unwrap_err();
    assert_eq!(repeat.code(), "precondition_failed.transaction_released");
}

fn payment_event(version: i64, status: &str, held: i64, settled: i64) -> CardPaymentUpdated {
    let gbp = |minor_units| {
        Some(sterling_proto::common::v1::Money {
            minor_units,
            currency: "GBP".into(),
        })
    };
    CardPaymentUpdated {
        kind: "clearing".into(),
        account_id: "acc-1".into(),
        transaction_id: "01900000-0000-7000-8000-000000000009".into(),
        held: gbp(held),
        settled: gbp(settled),
        status: status.into(),
        payment_version: version,
        ..CardPaymentUpdated::default()
    }
}

#[tokio::test]
async fn the_newest_payment_version_wins_in_any_order() {
    let s = store();
    let t = record("01900000-0000-7000-8000-000000000009", "a9", 4000);
    s.record(&t).await.unwrap();
    // Version 2 (settled 35.00) arrives before version 1 (25.00 cleared, 15.00 held), and
    // twice.
    for e in [
        payment_event(2, "settled", 0, 3500),
        payment_event(1, "pending", 1500, 2500),
        payment_event(2, "settled", 0, 3500),
    ] {
        s.apply_payment(&e).await.unwrap();
    }
    let stored = s.get(&t.transaction_id).await.unwrap();
    assert_eq!((stored.status.as_str(), stored.amount), ("settled", 3500));
    // A refund is a transaction of its own, recorded once however often it comes.
    let refund = CardPaymentUpdated {
        kind: "refund".into(),
        transaction_id: "01900000-0000-7000-8000-00000000000a".into(),
        amount: Some(sterling_proto::common::v1::Money {
            minor_units: 1000,
            currency: "GBP".into(),
        }),
        occurred_at_ms: 5,
        ..payment_event(3, "settled", 0, 3500)
    };
    s.apply_payment(&refund).await.unwrap();
    s.apply_payment(&refund).await.unwrap();
    let listed = s.list("acc-1", 10, None).await.unwrap();
    let refunds: Vec<_> = listed.iter().filter(|t| t.kind == "refund").collect();
    assert_eq!(refunds.len(), 1);
    assert_eq!(
        (refunds[0].amount, refunds[0].status.as_str()),
        (1000, "settled")
    );
}

#[tokio::test]
async fn pages_walk_back_month_by_month_and_the_first_table_is_moved_once() {
    let mut migrations = MIGRATIONS.to_vec();
    migrations.extend(sterling_template::outbox::TEMPLATE_MIGRATIONS);
    let engine: SharedStore = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
    const DAY: u64 = 86_400_000;
    const JAN_2027: u64 = 1_800_000_000_000 - 20 * DAY;
    // Two rows of the first table, one partition per account, in January and April.
    let legacy = [uuid_v7_at(JAN_2027, 1), uuid_v7_at(JAN_2027 + 90 * DAY, 2)];
    for (n, id) in legacy.iter().enumerate() {
        let row = Row::new()
            .with("account_id", "acc-1")
            .with("transaction_id", id.as_str())
            .with("authorisation_id", format!("old-{n}"))
            .with("amount", 100i64)
            .with("currency", "GBP")
            .with("local_amount", 100i64)
            .with("local_currency", "GBP")
            .with("status", "settled")
            .with("created_at", Value::Timestamp(1));
        let write = Mutation::insert("transactions_by_account", row);
        engine.apply(vec![write]).await.unwrap();
        let index = Row::new()
            .with("transaction_id", id.as_str())
            .with("account_id", "acc-1");
        engine
            .apply(vec![Mutation::insert("transactions", index)])
            .await
            .unwrap();
    }
    let s = TransactionStore::new(engine.clone());
    assert_eq!(s.move_first_table().await.unwrap(), 2);
    assert_eq!(s.move_first_table().await.unwrap(), 0, "moved once");
    assert_eq!(s.get(&legacy[1]).await.unwrap().authorisation_id, "old-1");

    // New ones in February, March and now.
    let new = [
        uuid_v7_at(JAN_2027 + 30 * DAY, 3),
        uuid_v7_at(JAN_2027 + 60 * DAY, 4),
        uuid::Uuid::now_v7().to_string(),
    ];
    for (n, id) in new.iter().enumerate() {
        s.record(&record(id, &format!("new-{n}"), 5)).await.unwrap();
    }
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let page = s.list("acc-1", 2, cursor.as_deref()).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(last.transaction_id.clone());
        seen.extend(page.into_iter().map(|t| t.transaction_id));
    }
    let mut expected: Vec<String> = legacy.iter().chain(new.iter()).cloned().collect();
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        seen, expected,
        "every transaction once, newest first, across months"
    );
}
