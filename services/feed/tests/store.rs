//! The feed's read model: one item per payment, updated in place, a decline final.

use std::sync::Arc;

use feed::store::FeedStore;
use sterling_bus::Envelope;
use sterling_proto::common::v1::Money;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardAuthorisationDecided;
use sterling_storage::embedded::SqliteStore;

fn decision(event_id: &str, approved: bool, reversed: bool) -> Envelope {
    let payload = CardAuthorisationDecided {
        processor_authorisation_id: "auth-1".into(),
        account_id: "acc-1".into(),
        transaction_id: "01900000-0000-7000-8000-000000000001".into(),
        approved,
        reversed,
        reason: if approved { "approved" } else { "timeout" }.into(),
        amount: Some(Money {
            minor_units: 350,
            currency: "GBP".into(),
        }),
        merchant_descriptor: "PRET A MANGER LONDON GB".into(),
        decided_at_ms: 1_800_000_000_000,
        ..Default::default()
    };
    Envelope {
        event_id: event_id.into(),
        r#type: if approved {
            types::CARD_AUTHORISATION_APPROVED
        } else {
            types::CARD_AUTHORISATION_DECLINED
        }
        .into(),
        occurred_at_ms: 1_800_000_000_000,
        request_id: String::new(),
        traceparent: String::new(),
        payload: prost::Message::encode_to_vec(&payload),
    }
}

fn store() -> FeedStore {
    FeedStore::new(Arc::new(SqliteStore::in_memory(feed::MIGRATIONS).unwrap()))
}

async fn status(feed: &FeedStore) -> (String, String) {
    let page = feed.page("acc-1", 10, None).await.unwrap();
    assert_eq!(page.len(), 1, "one item per payment");
    (page[0].status.clone(), page[0].declined_reason.clone())
}

#[tokio::test]
async fn a_reversal_declines_the_item_in_place() {
    let feed = store();
    feed.apply_event(&decision("e1", true, false))
        .await
        .unwrap();
    assert_eq!(status(&feed).await.0, "pending");
    feed.apply_event(&decision("e2", false, true))
        .await
        .unwrap();
    assert_eq!(status(&feed).await, ("declined".into(), "timeout".into()));
}

#[tokio::test]
async fn an_approval_delivered_after_its_reversal_changes_nothing() {
    let feed = store();
    feed.apply_event(&decision("e2", false, true))
        .await
        .unwrap();
    feed.apply_event(&decision("e1", true, false))
        .await
        .unwrap();
    assert_eq!(status(&feed).await, ("declined".into(), "timeout".into()));
}
