//! Transaction records: idempotent recording, paging newest first, releases that win races.

use std::sync::Arc;

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
