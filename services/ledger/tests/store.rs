//! The ledger's rules on the embedded store: holds, transfers, idempotence, zero sum.

use std::sync::Arc;

use ledger::MIGRATIONS;
use ledger::store::{AccountKind, Book, HoldStatus, Transfer};
use sterling_money::{Currency, Money};
use sterling_storage::embedded::SqliteStore;

fn gbp(minor: i64) -> Money {
    Money::from_minor(minor, Currency::from_code("GBP").unwrap())
}

async fn funded_book(minor: i64) -> Book {
    let book = Book::new(Arc::new(SqliteStore::in_memory(MIGRATIONS).unwrap()));
    let cur = Currency::from_code("GBP").unwrap();
    book.create_account("funding", cur, AccountKind::Internal)
        .await
        .unwrap();
    book.create_account("alice", cur, AccountKind::Customer)
        .await
        .unwrap();
    book.transfer(&Transfer {
        transfer_id: "seed".into(),
        debit_account_id: "funding".into(),
        credit_account_id: "alice".into(),
        amount: gbp(minor),
        description: "seed".into(),
        force: false,
    })
    .await
    .unwrap();
    book
}

async fn sum_of_balances(book: &Book, ids: &[&str]) -> i64 {
    let mut sum = 0;
    for id in ids {
        let account = book.account(id).await.unwrap();
        sum += book.balance(&account).await.unwrap().balance.minor_units();
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_holds_never_overdraw() {
    let book = funded_book(1000).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let book = book.clone();
        tasks.push(tokio::spawn(async move {
            book.place_hold(&format!("auth-{i}"), "alice", gbp(100))
                .await
        }));
    }
    let mut approved = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => approved += 1,
            Err(e) => assert_eq!(e.code(), "precondition_failed.insufficient_funds"),
        }
    }
    assert_eq!(approved, 10);
    let alice = book.account("alice").await.unwrap();
    let b = book.balance(&alice).await.unwrap();
    assert_eq!(b.held, gbp(1000));
    assert_eq!(b.available, gbp(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_id_holds_once_even_concurrently() {
    let book = funded_book(1000).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let book = book.clone();
        tasks.push(tokio::spawn(async move {
            book.place_hold("same", "alice", gbp(300)).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().amount, gbp(300));
    }
    let alice = book.account("alice").await.unwrap();
    assert_eq!(book.balance(&alice).await.unwrap().held, gbp(300));
    let other_amount = book.place_hold("same", "alice", gbp(1)).await.unwrap_err();
    assert_eq!(other_amount.code(), "conflict.hold");
}

#[tokio::test]
async fn releasing_frees_funds_once() {
    let book = funded_book(500).await;
    book.place_hold("h1", "alice", gbp(400)).await.unwrap();
    let released = book.release_hold("h1", "alice").await.unwrap();
    assert_eq!(released.status, HoldStatus::Released);
    let again = book.release_hold("h1", "alice").await.unwrap();
    assert_eq!(again.status, HoldStatus::Released);
    // Placing it again, same amount and all, reports the release: never a success.
    let replaced = book.place_hold("h1", "alice", gbp(400)).await.unwrap_err();
    assert_eq!(replaced.code(), "precondition_failed.hold_released");
    let alice = book.account("alice").await.unwrap();
    let b = book.balance(&alice).await.unwrap();
    assert_eq!(b.held, gbp(0));
    assert_eq!(b.available, gbp(500));
}

#[tokio::test]
async fn a_release_before_the_hold_lands_wins() {
    let book = funded_book(500).await;
    let released = book.release_hold("late", "alice").await.unwrap();
    assert_eq!(released.status, HoldStatus::Released);
    assert_eq!(released.amount, gbp(0));
    // The placement arriving after its release reserves nothing.
    let late = book
        .place_hold("late", "alice", gbp(100))
        .await
        .unwrap_err();
    assert_eq!(late.code(), "precondition_failed.hold_released");
    let alice = book.account("alice").await.unwrap();
    assert_eq!(book.balance(&alice).await.unwrap().available, gbp(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_apply_once_and_balances_sum_to_zero() {
    let book = funded_book(1000).await;
    let cur = Currency::from_code("GBP").unwrap();
    book.create_account("bob", cur, AccountKind::Customer)
        .await
        .unwrap();
    let t = Transfer {
        transfer_id: "pay-bob".into(),
        debit_account_id: "alice".into(),
        credit_account_id: "bob".into(),
        amount: gbp(250),
        description: "rent".into(),
        force: false,
    };
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let book = book.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move { book.transfer(&t).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let bob = book.account("bob").await.unwrap();
    assert_eq!(book.balance(&bob).await.unwrap().balance, gbp(250));
    assert_eq!(
        sum_of_balances(&book, &["funding", "alice", "bob"]).await,
        0
    );
    let reused = Transfer {
        amount: gbp(1),
        ..t.clone()
    };
    assert_eq!(
        book.transfer(&reused).await.unwrap_err().code(),
        "conflict.transfer"
    );
    let too_much = Transfer {
        transfer_id: "too-much".into(),
        amount: gbp(10_000),
        ..t
    };
    assert_eq!(
        book.transfer(&too_much).await.unwrap_err().code(),
        "precondition_failed.insufficient_funds"
    );
    // The failed transfer stays failed: a retry gives the same answer and moves nothing.
    assert_eq!(
        book.transfer(&too_much).await.unwrap_err().code(),
        "precondition_failed.insufficient_funds"
    );
    assert_eq!(
        sum_of_balances(&book, &["funding", "alice", "bob"]).await,
        0
    );
}

#[tokio::test]
async fn currencies_and_accounts_are_checked() {
    let book = funded_book(100).await;
    let eur = Money::from_minor(1, Currency::from_code("EUR").unwrap());
    assert_eq!(
        book.place_hold("x", "alice", eur).await.unwrap_err().code(),
        "bad_request.currency"
    );
    assert_eq!(
        book.place_hold("x", "nobody", gbp(1))
            .await
            .unwrap_err()
            .code(),
        "not_found.account"
    );
    let usd = Currency::from_code("USD").unwrap();
    assert_eq!(
        book.create_account("alice", usd, AccountKind::Customer)
            .await
            .unwrap_err()
            .code(),
        "conflict.account"
    );
}

/// Two ledger processes on one store race by compare-and-set; each places its holds in
/// groups. Together they never reserve more than the account holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_ledger_processes_placing_groups_never_overdraw() {
    let store: sterling_storage::SharedStore =
        Arc::new(SqliteStore::in_memory(MIGRATIONS).unwrap());
    let first = Book::new(store.clone());
    let second = Book::new(store);
    let cur = Currency::from_code("GBP").unwrap();
    first
        .create_account("funding", cur, AccountKind::Internal)
        .await
        .unwrap();
    first
        .create_account("alice", cur, AccountKind::Customer)
        .await
        .unwrap();
    first
        .transfer(&Transfer {
            transfer_id: "seed".into(),
            debit_account_id: "funding".into(),
            credit_account_id: "alice".into(),
            amount: gbp(1000),
            description: "seed".into(),
            force: false,
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let book = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        // Some ids twice, from both processes.
        let id = format!("h{}", i % 45);
        tasks.push(tokio::spawn(async move {
            (id.clone(), book.place_hold(&id, "alice", gbp(50)).await)
        }));
    }
    let mut placed = std::collections::BTreeSet::new();
    for task in tasks {
        let (id, outcome) = task.await.unwrap();
        match outcome {
            Ok(hold) => {
                assert_eq!(hold.amount, gbp(50));
                placed.insert(id);
            }
            Err(e) => assert_eq!(e.code(), "precondition_failed.insufficient_funds", "{e}"),
        }
    }
    assert_eq!(placed.len(), 20, "exactly the funds for 20 distinct holds");
    let alice = first.account("alice").await.unwrap();
    let b = first.balance(&alice).await.unwrap();
    assert_eq!(b.held, gbp(1000));
    assert_eq!(b.available, gbp(0));
}

/// The entries an account's partition no longer needs (finished holds, hold changes, postings'
/// idempotency rows) expire after the book's TTL; the balance and active holds stay, and
/// repeats after the expiry move no money: a transfer is answered from its own record, a
/// capture is refused as forgotten.
#[tokio::test]
async fn finished_entries_leave_the_account_partition() {
    use ledger::changes::{ChangeKind, HoldChangeRequest};
    use sterling_storage::{Query, Row, Store};

    let store = Arc::new(SqliteStore::in_memory(MIGRATIONS).unwrap());
    let book =
        Book::new(store.clone()).keeping_finished_entries_for(std::time::Duration::from_secs(1));
    let cur = Currency::from_code("GBP").unwrap();
    book.create_account("funding", cur, AccountKind::Internal)
        .await
        .unwrap();
    book.create_account("scheme", cur, AccountKind::Internal)
        .await
        .unwrap();
    book.create_account("alice", cur, AccountKind::Customer)
        .await
        .unwrap();
    let seed = Transfer {
        transfer_id: "seed".into(),
        debit_account_id: "funding".into(),
        credit_account_id: "alice".into(),
        amount: gbp(1000),
        description: "seed".into(),
        force: false,
    };
    book.transfer(&seed).await.unwrap();
    book.place_hold("cleared", "alice", gbp(300)).await.unwrap();
    let capture = HoldChangeRequest {
        change_id: "clearing-1".into(),
        hold_id: "cleared".into(),
        account_id: "alice".into(),
        kind: ChangeKind::Capture { last: true },
        amount: Some(gbp(250)),
        counter_account_id: "scheme".into(),
        over_capture_percent: None,
    };
    book.change_hold(&capture).await.unwrap();
    book.place_hold("reversed", "alice", gbp(100))
        .await
        .unwrap();
    book.release_hold("reversed", "alice").await.unwrap();
    book.place_hold("open", "alice", gbp(50)).await.unwrap();

    let entries = || async {
        let rows = store
            .query(Query::partition(
                "account_entries",
                Row::new().with("account_id", "alice"),
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.text("entry").unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(entries().await.len() > 2);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(entries().await, vec!["balance", "hold:open"]);

    let alice = book.account("alice").await.unwrap();
    let before = book.balance(&alice).await.unwrap();
    assert_eq!(before.balance, gbp(750));
    assert_eq!(before.held, gbp(50));
    book.transfer(&seed).await.unwrap();
    let again = book.change_hold(&capture).await.unwrap_err();
    assert_eq!(again.code(), "precondition_failed.change_forgotten");
    assert_eq!(book.balance(&alice).await.unwrap(), before);
    assert_eq!(
        sum_of_balances(&book, &["funding", "scheme", "alice"]).await,
        0
    );
}
