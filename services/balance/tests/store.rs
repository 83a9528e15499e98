//! The balance read model is right in any order and however often its events arrive: the
//! highest version wins, a payment counts once, a reversal takes it out before or after its
//! approval.

use std::sync::Arc;

use balance::store::BalanceStore;
use sterling_bus::Envelope;
use sterling_proto::common::v1::Money;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{AccountBalanceChanged, CardAuthorisationDecided};
use sterling_storage::embedded::SqliteStore;
use sterling_storage::now_millis;

fn envelope(event_type: &str, payload: Vec<u8>) -> Envelope {
    Envelope {
        event_id: uuid_like(&payload),
        r#type: event_type.into(),
        occurred_at_ms: now_millis(),
        request_id: String::new(),
        traceparent: String::new(),
        payload,
    }
}

fn uuid_like(payload: &[u8]) -> String {
    format!("event-{}", payload.len())
}

fn snapshot(version: i64, balance: i64, held: i64) -> Envelope {
    let event = AccountBalanceChanged {
        account_id: "acc-1".into(),
        currency: "GBP".into(),
        version,
        balance,
        held,
        cause: "posting".into(),
        entry: format!("t-{version}"),
        changed_at_ms: now_millis(),
    };
    envelope(
        types::LEDGER_BALANCE_CHANGED,
        prost::Message::encode_to_vec(&event),
    )
}

/// A decision as card-processing announces it: a reversal (a decline after an approval) with
/// no amount, as nothing is held any more.
fn decision(id: &str, approved: bool, reversed: bool, minor_units: i64) -> Envelope {
    let event = CardAuthorisationDecided {
        processor_authorisation_id: id.into(),
        account_id: "acc-1".into(),
        approved,
        reversed,
        amount: (!reversed).then(|| Money {
            minor_units,
            currency: "GBP".into(),
        }),
        decided_at_ms: now_millis(),
        ..Default::default()
    };
    let event_type = if approved {
        types::CARD_AUTHORISATION_APPROVED
    } else {
        types::CARD_AUTHORISATION_DECLINED
    };
    envelope(event_type, prost::Message::encode_to_vec(&event))
}

fn store() -> BalanceStore {
    BalanceStore::new(Arc::new(
        SqliteStore::in_memory(balance::MIGRATIONS).unwrap(),
    ))
}

#[tokio::test]
async fn the_highest_version_wins_in_any_order() {
    let balances = store();
    for (version, balance) in [(2, 700), (3, 650), (1, 1000), (3, 650), (2, 700)] {
        balances
            .apply_event(&snapshot(version, balance, 50))
            .await
            .unwrap();
    }
    let held = balances.snapshot("acc-1").await.unwrap().unwrap();
    assert_eq!((held.version, held.balance, held.held), (3, 650, 50));
}

#[tokio::test]
async fn a_payment_counts_once_and_a_reversal_takes_it_out_whenever_it_comes() {
    let balances = store();
    let now = now_millis();
    for event in [
        decision("a", true, false, 300),
        decision("a", true, false, 300),
        decision("b", false, true, 200),
        decision("b", true, false, 200),
        decision("c", false, false, 999),
        decision("d", true, false, 100),
        decision("d", false, true, 100),
    ] {
        balances.apply_event(&event).await.unwrap();
    }
    // a once; b and d reversed; c declined.
    assert_eq!(balances.spent_on("acc-1", now).await.unwrap(), 300);
}

#[tokio::test]
async fn snapshots_kept_in_the_legacy_table_are_moved_and_stay_the_highest() {
    use sterling_storage::{Mutation, Row, Store, Value};
    let mut migrations = balance::MIGRATIONS.to_vec();
    migrations.extend(sterling_template::outbox::TEMPLATE_MIGRATIONS);
    let store = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
    let legacy = |account: &str, version: i64, balance: i64| {
        Mutation::insert(
            "balances",
            Row::new()
                .with("account_id", account)
                .with("currency", "GBP")
                .with("balance", balance)
                .with("held", 0i64)
                .with("version", version)
                .with("changed_at", Value::Timestamp(now_millis())),
        )
    };
    store.apply(vec![legacy("acc-1", 5, 400)]).await.unwrap();
    // More than a page of them.
    let others: Vec<Mutation> = (2..=1201)
        .map(|n| legacy(&format!("acc-{n}"), 1, 90))
        .collect();
    store.apply(others).await.unwrap();
    let balances = BalanceStore::new(store.clone());
    assert_eq!(balances.move_legacy_snapshots().await.unwrap(), 1201);
    // Moved: read from the new table, and a second move (another start) copies nothing.
    let one = balances.snapshot("acc-1").await.unwrap().unwrap();
    assert_eq!((one.version, one.balance), (5, 400));
    for n in [2, 700, 1201] {
        let account = format!("acc-{n}");
        assert_eq!(
            balances.snapshot(&account).await.unwrap().unwrap().balance,
            90
        );
    }
    assert_eq!(balances.move_legacy_snapshots().await.unwrap(), 0);
    // A redelivered older snapshot leaves the moved one; a newer one replaces it.
    balances.apply_event(&snapshot(4, 999, 0)).await.unwrap();
    assert_eq!(
        balances.snapshot("acc-1").await.unwrap().unwrap().version,
        5
    );
    balances.apply_event(&snapshot(6, 350, 50)).await.unwrap();
    let six = balances.snapshot("acc-1").await.unwrap().unwrap();
    assert_eq!((six.version, six.balance, six.held), (6, 350, 50));
}

#[tokio::test]
async fn payments_kept_in_the_legacy_table_are_moved_at_their_rank() {
    use sterling_storage::{Mutation, Row, Store};
    let mut migrations = balance::MIGRATIONS.to_vec();
    migrations.extend(sterling_template::outbox::TEMPLATE_MIGRATIONS);
    let store = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
    let now = now_millis();
    let today = sterling_storage::utc_date(now);
    let legacy = |id: &str, amount: i64, version: Option<i64>| {
        let mut row = Row::new()
            .with("account_id", "acc-1")
            .with("day", today.as_str())
            .with("authorisation_id", id)
            .with("amount", amount)
            .with("currency", "GBP");
        if let Some(v) = version {
            row = row.with("payment_version", v);
        }
        Mutation::insert("spending", row)
    };
    store
        .apply(vec![
            legacy("a", 300, None),    // approved
            legacy("b", 0, None),      // reversed
            legacy("c", 250, Some(2)), // cleared for 250 (approved for more)
            legacy("refund:rf-1", -100, None),
        ])
        .await
        .unwrap();
    let balances = BalanceStore::new(store.clone());
    assert_eq!(balances.move_legacy_spending().await.unwrap(), 4);
    assert_eq!(balances.spent_on("acc-1", now).await.unwrap(), 450);
    assert_eq!(balances.move_legacy_spending().await.unwrap(), 0);

    // Late decisions rank below what the rows say: b's approval stays out, c's approval and
    // its reversal change nothing; a's reversal takes it out.
    for event in [
        decision("b", true, false, 200),
        decision("c", true, false, 400),
        decision("c", false, true, 400),
        decision("a", false, true, 300),
    ] {
        balances.apply_event(&event).await.unwrap();
    }
    assert_eq!(balances.spent_on("acc-1", now).await.unwrap(), 150);
}
