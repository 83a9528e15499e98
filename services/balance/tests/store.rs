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

fn decision(id: &str, approved: bool, reversed: bool, minor_units: i64) -> Envelope {
    let event = CardAuthorisationDecided {
        processor_authorisation_id: id.into(),
        account_id: "acc-1".into(),
        approved,
        reversed,
        amount: Some(Money {
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
