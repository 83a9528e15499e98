//! Transfers cut half way are finished by the outbox's relay: a transfer whose caller died
//! between its two postings, and a clearing's capture cut before the settlement account's
//! posting. Afterwards the books sum to zero and each transfer is announced once.

use std::sync::Arc;
use std::time::Duration;

use ledger::MIGRATIONS;
use ledger::announce::{Announcer, LedgerConfirm, VersionConfirm};
use ledger::changes::{ChangeKind, HoldChangeRequest};
use ledger::finish::TransferConfirm;
use ledger::store::{AccountKind, Book, Transfer};
use prost::Message;
use sterling_bus::embedded::SqliteBus;
use sterling_bus::{Bus, ConsumerConfig};
use sterling_money::{Currency, Money};
use sterling_proto::event_types as types;
use sterling_proto::events::v1::TransferCompleted;
use sterling_storage::SharedStore;
use sterling_storage::embedded::SqliteStore;
use sterling_template::outbox::{Outbox, TEMPLATE_MIGRATIONS};

fn gbp(minor: i64) -> Money {
    Money::from_minor(minor, Currency::from_code("GBP").unwrap())
}

/// An announcing book on embedded engines, its outbox (no grace: the relay looks at once) and
/// its bus.
async fn book() -> (Book, Outbox, Arc<dyn Bus>) {
    let mut migrations = MIGRATIONS.to_vec();
    migrations.extend(TEMPLATE_MIGRATIONS);
    let store: SharedStore = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
    let bus: Arc<dyn Bus> = Arc::new(SqliteBus::in_memory().unwrap());
    let transfers = TransferConfirm::default();
    let confirm = Arc::new(LedgerConfirm {
        versions: VersionConfirm {
            store: store.clone(),
        },
        transfers: transfers.clone(),
    });
    let outbox = Outbox::new(store.clone(), bus.clone(), confirm, Duration::ZERO);
    let book = Book::new(store).announcing(Announcer::new(outbox.clone()));
    transfers.finishing_with(book.clone());
    let cur = Currency::from_code("GBP").unwrap();
    for (id, kind) in [
        ("funding", AccountKind::Internal),
        ("scheme", AccountKind::Internal),
        ("alice", AccountKind::Customer),
    ] {
        book.create_account(id, cur, kind).await.unwrap();
    }
    (book, outbox, bus)
}

async fn balance(book: &Book, id: &str) -> i64 {
    let account = book.account(id).await.unwrap();
    book.balance(&account).await.unwrap().balance.minor_units()
}

/// The transfer ids announced as completed, each time one was.
async fn announced(bus: &Arc<dyn Bus>) -> Vec<String> {
    let mut config = ConsumerConfig::new("test", &[types::LEDGER_TRANSFER_COMPLETED]);
    config.ack_wait = Duration::from_secs(60);
    let mut subscription = bus.subscribe(config).await.unwrap();
    let mut ids = Vec::new();
    while let Ok(Ok(delivery)) =
        tokio::time::timeout(Duration::from_millis(500), subscription.next()).await
    {
        let event = TransferCompleted::decode(delivery.envelope.payload.as_slice()).unwrap();
        ids.push(event.transfer_id);
        delivery.ack().await.unwrap();
    }
    ids.sort();
    ids
}

#[tokio::test]
async fn the_relay_finishes_transfers_cut_half_way() {
    let scenario = fail::FailScenario::setup();
    let (book, outbox, bus) = book().await;

    // Funding -> alice, cut after the debit: the money is nowhere until the relay comes.
    fail::cfg("ledger::transfer::between_postings", "1*return(error)").unwrap();
    let seed = Transfer {
        transfer_id: "seed".into(),
        debit_account_id: "funding".into(),
        credit_account_id: "alice".into(),
        amount: gbp(1000),
        description: "seed".into(),
        force: false,
    };
    let cut = book.transfer(&seed).await.unwrap_err();
    assert_eq!(cut.code(), "unavailable.fail_point");
    assert_eq!(balance(&book, "funding").await, -1000);
    assert_eq!(balance(&book, "alice").await, 0);

    // A clearing of alice's hold, cut after her side: the scheme's posting is missing.
    book.place_hold("auth-1", "alice", gbp(300))
        .await
        .unwrap_err();
    outbox.relay_once().await.unwrap();
    assert_eq!(
        balance(&book, "alice").await,
        1000,
        "the relay made the credit"
    );
    book.place_hold("auth-1", "alice", gbp(300)).await.unwrap();
    fail::cfg("ledger::capture::before_counter_posting", "1*return(error)").unwrap();
    let clearing = HoldChangeRequest {
        change_id: "clearing-1".into(),
        hold_id: "auth-1".into(),
        account_id: "alice".into(),
        kind: ChangeKind::Capture { last: true },
        amount: Some(gbp(250)),
        counter_account_id: "scheme".into(),
        over_capture_percent: None,
    };
    let cut = book.change_hold(&clearing).await.unwrap_err();
    assert_eq!(cut.code(), "unavailable.fail_point");
    assert_eq!(balance(&book, "alice").await, 750);
    assert_eq!(balance(&book, "scheme").await, 0);
    outbox.relay_once().await.unwrap();
    assert_eq!(
        balance(&book, "scheme").await,
        250,
        "the relay made the credit"
    );

    // Retries now find them complete and move nothing; every transfer announced once.
    book.transfer(&seed).await.unwrap();
    let repeat = book.change_hold(&clearing).await.unwrap();
    assert_eq!(repeat.posted, gbp(250));
    outbox.relay_once().await.unwrap();
    let total = balance(&book, "funding").await
        + balance(&book, "scheme").await
        + balance(&book, "alice").await;
    assert_eq!(total, 0);
    assert_eq!(balance(&book, "alice").await, 750);
    assert_eq!(announced(&bus).await, vec!["clearing-1", "seed"]);
    scenario.teardown();
}
