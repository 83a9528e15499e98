//! The feed's read model: one item per payment, updated in place, a decline final.

use std::sync::Arc;

use feed::store::FeedStore;
use sterling_bus::Envelope;
use sterling_proto::common::v1::Money;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardAuthorisationDecided;
use sterling_storage::embedded::SqliteStore;
use sterling_storage::uuid_v7_at;
use sterling_storage::{Mutation, Row, SharedStore, Value};

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

fn approval_of(transaction_id: &str, event_id: &str) -> Envelope {
    let mut envelope = decision(event_id, true, false);
    let mut payload: CardAuthorisationDecided =
        prost::Message::decode(envelope.payload.as_slice()).unwrap();
    payload.transaction_id = transaction_id.into();
    envelope.payload = prost::Message::encode_to_vec(&payload);
    envelope
}

#[tokio::test]
async fn pages_walk_back_month_by_month_and_the_first_table_is_moved_once() {
    let mut migrations = feed::MIGRATIONS.to_vec();
    migrations.extend(sterling_template::outbox::TEMPLATE_MIGRATIONS);
    let store: SharedStore = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
    const JAN_2027: u64 = 1_800_000_000_000 - 20 * 86_400_000;
    const MAR_2027: u64 = 1_800_000_000_000 + 40 * 86_400_000;
    // Items of the first table, one partition per account: January and March.
    let legacy = [
        uuid_v7_at(JAN_2027, 1),
        uuid_v7_at(JAN_2027, 2),
        uuid_v7_at(MAR_2027, 3),
    ];
    for id in &legacy {
        let row = Row::new()
            .with("account_id", "acc-1")
            .with("item_id", id.as_str())
            .with("descriptor", "OLD SHOP")
            .with("amount", 100i64)
            .with("currency", "GBP")
            .with("status", "settled")
            .with("created_at", Value::Timestamp(1));
        store
            .apply(vec![Mutation::insert("feed_items", row)])
            .await
            .unwrap();
    }
    let feed = FeedStore::new(store.clone());
    assert_eq!(feed.move_first_table().await.unwrap(), 3);
    assert_eq!(feed.move_first_table().await.unwrap(), 0, "moved once");

    // New items through events: February (between the moved months) and now.
    let new = [
        uuid_v7_at(JAN_2027 + 20 * 86_400_000, 4),
        uuid::Uuid::now_v7().to_string(),
    ];
    for (n, id) in new.iter().enumerate() {
        feed.apply_event(&approval_of(id, &format!("e{n}")))
            .await
            .unwrap();
    }
    // Pages of two walk every month newest first, each item once.
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let page = feed.page("acc-1", 2, cursor.as_deref()).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        cursor = Some(last.item_id.clone());
        seen.extend(page.into_iter().map(|i| i.item_id));
    }
    let mut expected: Vec<String> = legacy.iter().chain(new.iter()).cloned().collect();
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, expected);
    let feb = feed.page("acc-1", 10, Some(&legacy[2])).await.unwrap();
    assert_eq!(
        feb[0].item_id, new[0],
        "after March's item comes February's"
    );
}
