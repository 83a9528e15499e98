//! Transaction records: idempotent recording, paging newest first, releases that win races.

use std::sync::Arc;

use sterling_proto::events::v1::CardPaymentUpdated;
use sterling_storage::embedded::SqliteStore;
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
