//! Spent today follows the whole life of a payment: an approval counts its amount, clearings
//! replace it with what settled, a reversal or expiry takes off what never settled, a refund
//! takes its amount off and a force post adds it; redelivered or reordered messages change
//! nothing (the highest payment version wins).

use std::sync::Arc;

use balance::store::BalanceStore;
use sterling_bus::Envelope;
use sterling_proto::common::v1::Money;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{CardAuthorisationDecided, CardPaymentUpdated};
use sterling_storage::embedded::SqliteStore;
use sterling_storage::now_millis;

fn gbp(minor_units: i64) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: "GBP".into(),
    })
}

fn envelope(kind: &str, payload: Vec<u8>) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        r#type: kind.into(),
        occurred_at_ms: now_millis(),
        payload,
        ..Default::default()
    }
}

fn approval(authorisation: &str, transaction_id: &str, amount: i64) -> Envelope {
    let d = CardAuthorisationDecided {
        processor_authorisation_id: authorisation.into(),
        account_id: "acc-1".into(),
        transaction_id: transaction_id.into(),
        approved: true,
        amount: gbp(amount),
        decided_at_ms: now_millis(),
        ..Default::default()
    };
    envelope(
        types::CARD_AUTHORISATION_APPROVED,
        prost::Message::encode_to_vec(&d),
    )
}

/// A later message of `authorisation`'s payment, leaving it `status` with `held`/`settled`.
fn update(
    (authorisation, transaction_id): (&str, &str),
    kind: &str,
    version: i64,
    status: &str,
    (held, settled): (i64, i64),
) -> Envelope {
    let e = CardPaymentUpdated {
        message_id: format!("{kind}-{authorisation}-{version}"),
        kind: kind.into(),
        payment_id: authorisation.into(),
        processor_authorisation_id: authorisation.into(),
        account_id: "acc-1".into(),
        transaction_id: transaction_id.into(),
        authorisation_transaction_id: transaction_id.into(),
        amount: gbp(0),
        held: gbp(held),
        settled: gbp(settled),
        status: status.into(),
        payment_version: version,
        occurred_at_ms: now_millis(),
        accepted: true,
        ..Default::default()
    };
    envelope("card.payment.updated", prost::Message::encode_to_vec(&e))
}

/// A refund or force post of its own.
fn own(kind: &str, message_id: &str, amount: i64) -> Envelope {
    let e = CardPaymentUpdated {
        message_id: message_id.into(),
        kind: kind.into(),
        payment_id: message_id.into(),
        account_id: "acc-1".into(),
        transaction_id: uuid::Uuid::now_v7().to_string(),
        amount: gbp(amount),
        status: "settled".into(),
        payment_version: 1,
        occurred_at_ms: now_millis(),
        accepted: true,
        ..Default::default()
    };
    envelope("card.payment.updated", prost::Message::encode_to_vec(&e))
}

#[tokio::test]
async fn spent_today_follows_clearings_reversals_refunds_and_force_posts() {
    let store = BalanceStore::new(Arc::new(
        SqliteStore::in_memory(balance::MIGRATIONS).unwrap(),
    ));
    let spent = || store.spent_on("acc-1", now_millis());
    let (a, ta) = ("auth-a", uuid::Uuid::now_v7().to_string());
    let (b, tb) = ("auth-b", uuid::Uuid::now_v7().to_string());
    store.apply_event(&approval(a, &ta, 4000)).await.unwrap();
    store.apply_event(&approval(b, &tb, 1000)).await.unwrap();
    assert_eq!(spent().await.unwrap(), 5000);

    // a: a partial clearing, then a final one settling 3500 in all.
    let partial = update((a, &ta), "clearing", 2, "pending", (1500, 2500));
    let last = update((a, &ta), "clearing", 3, "settled", (0, 3500));
    store.apply_event(&last).await.unwrap();
    store.apply_event(&partial).await.unwrap(); // late: an older version
    store.apply_event(&last).await.unwrap(); // again
    assert_eq!(spent().await.unwrap(), 3500 + 1000);

    // b: reversed before it cleared.
    let reversal = update((b, &tb), "reversal", 2, "reversed", (0, 0));
    store.apply_event(&reversal).await.unwrap();
    assert_eq!(spent().await.unwrap(), 3500);

    // A refund takes 1000 off, a force post adds 700, each once.
    for _ in 0..2 {
        store
            .apply_event(&own("refund", "rf-1", 1000))
            .await
            .unwrap();
        store
            .apply_event(&own("force_post", "fp-1", 700))
            .await
            .unwrap();
    }
    assert_eq!(spent().await.unwrap(), 3500 - 1000 + 700);

    // An approval delivered again after its payment moved on changes nothing.
    store.apply_event(&approval(a, &ta, 4000)).await.unwrap();
    assert_eq!(spent().await.unwrap(), 3200);
}
