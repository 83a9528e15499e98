//! What the webhooks tests share: an approval event to deliver, and a wait on the queue.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use sterling_bus::Envelope;
use sterling_proto::common::v1::Money;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardAuthorisationDecided;
use sterling_storage::now_millis;
use webhooks::due::DueQueue;

/// An approval of £4.50 on `acc-1`, with ids of its own.
pub fn approval() -> Envelope {
    let decided = CardAuthorisationDecided {
        processor_authorisation_id: uuid::Uuid::now_v7().to_string(),
        account_id: "acc-1".into(),
        approved: true,
        amount: Some(Money {
            minor_units: 450,
            currency: "GBP".into(),
        }),
        transaction_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    Envelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        r#type: types::CARD_AUTHORISATION_APPROVED.into(),
        occurred_at_ms: now_millis(),
        payload: prost::Message::encode_to_vec(&decided),
        ..Default::default()
    }
}

/// Waits (ten seconds at most, else fails with `why`) until no place of `event_id`'s
/// delivery due now matches `place` (its due time).
pub async fn until_no_place(
    due: &DueQueue,
    event_id: &str,
    place: impl Fn(i64) -> bool,
    why: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while due
        .due(now_millis())
        .await
        .unwrap()
        .iter()
        .any(|(_, e, at)| e == event_id && place(*at))
    {
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
