//! A decision is enriched once: every delivery of it, one after the other or at once, writes
//! the same enrichment and announces the same event (its id derived from the transaction id),
//! and an enrichment made before ids were derived stands with its own event.

use std::sync::Arc;
use std::time::Duration;

use merchant::directory::{BUILTIN, Directory};
use merchant::enrich::{Enricher, EnrichmentConfirm};
use sterling_bus::embedded::SqliteBus;
use sterling_bus::{Bus, ConsumerConfig, Envelope};
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{CardAuthorisationDecided, TransactionEnriched};
use sterling_storage::embedded::SqliteStore;
use sterling_storage::{Mutation, Row, SharedStore, Value, now_millis};
use sterling_template::outbox::{Outbox, TEMPLATE_MIGRATIONS};

fn decision(event_id: &str, transaction_id: &str) -> Envelope {
    let decided = CardAuthorisationDecided {
        processor_authorisation_id: format!("auth-{transaction_id}"),
        account_id: "acc-1".into(),
        approved: true,
        merchant_descriptor: "PRET A MANGER".into(),
        mcc: "5812".into(),
        transaction_id: transaction_id.into(),
        decided_at_ms: now_millis(),
        ..Default::default()
    };
    Envelope {
        event_id: event_id.into(),
        r#type: types::CARD_AUTHORISATION_APPROVED.into(),
        occurred_at_ms: now_millis(),
        payload: prost::Message::encode_to_vec(&decided),
        ..Default::default()
    }
}

fn enricher() -> (Enricher, SharedStore, Arc<dyn Bus>) {
    let migrations: Vec<_> = merchant::MIGRATIONS
        .iter()
        .chain(TEMPLATE_MIGRATIONS.iter())
        .cloned()
        .collect();
    let store: SharedStore = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
    let bus: Arc<dyn Bus> = Arc::new(SqliteBus::in_memory().unwrap());
    let confirm = Arc::new(EnrichmentConfirm {
        store: store.clone(),
    });
    let outbox = Outbox::new(store.clone(), bus.clone(), confirm, Duration::ZERO);
    let enricher = Enricher {
        directory: Arc::new(Directory::parse(BUILTIN).unwrap()),
        store: store.clone(),
        outbox,
    };
    (enricher, store, bus)
}

/// Every `transaction.enriched` on the bus, as (event id, transaction id), in order.
async fn announced(bus: &Arc<dyn Bus>) -> Vec<(String, String)> {
    let mut config = ConsumerConfig::new("test", &[types::TRANSACTION_ENRICHED]);
    config.ack_wait = Duration::from_secs(60);
    let mut subscription = bus.subscribe(config).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Ok(delivery)) =
        tokio::time::timeout(Duration::from_millis(500), subscription.next()).await
    {
        let e: TransactionEnriched =
            prost::Message::decode(delivery.envelope.payload.as_slice()).expect("an enrichment");
        seen.push((delivery.envelope.event_id.clone(), e.transaction_id));
        delivery.ack().await.unwrap();
    }
    seen
}

async fn enrichment_event_id(store: &SharedStore, transaction_id: &str) -> String {
    let key = Row::new().with("transaction_id", transaction_id);
    let row = store.get("enrichments", &key).await.unwrap().unwrap();
    row.text("event_id").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_of_a_decision_announces_one_and_the_same_event() {
    let (enricher, store, bus) = enricher();
    let tx = uuid::Uuid::now_v7().to_string();
    enricher.handle(decision("decided-1", &tx)).await.unwrap();
    let first = enrichment_event_id(&store, &tx).await;
    // Redelivered later, and twice at once.
    enricher.handle(decision("decided-1", &tx)).await.unwrap();
    let (a, b) = tokio::join!(
        enricher.handle(decision("decided-1", &tx)),
        enricher.handle(decision("decided-1", &tx))
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(enrichment_event_id(&store, &tx).await, first);
    assert_eq!(
        sterling_storage::uuid_v7_millis(&first),
        sterling_storage::uuid_v7_millis(&tx),
        "the event's id carries the transaction's time"
    );

    // Two deliveries at once of a decision not yet enriched: both may write, both announce
    // the same event.
    let other = uuid::Uuid::now_v7().to_string();
    let (a, b) = tokio::join!(
        enricher.handle(decision("decided-2", &other)),
        enricher.handle(decision("decided-2", &other))
    );
    a.unwrap();
    b.unwrap();
    let second = enrichment_event_id(&store, &other).await;
    assert_ne!(first, second);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ids: Vec<(String, String)> = announced(&bus).await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids, {
        let mut want = vec![(first, tx), (second, other)];
        want.sort();
        want
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrichment_made_before_ids_were_derived_keeps_its_event() {
    let (enricher, store, bus) = enricher();
    let tx = uuid::Uuid::now_v7().to_string();
    let earlier = uuid::Uuid::now_v7().to_string();
    let row = Row::new()
        .with("transaction_id", tx.as_str())
        .with("account_id", "acc-1")
        .with("event_id", earlier.as_str())
        .with("name", "Pret A Manger")
        .with("category", "eating_out")
        .with("logo_url", "")
        .with("created_at", Value::Timestamp(now_millis()));
    store
        .apply(vec![Mutation::insert_if_not_exists("enrichments", row)])
        .await
        .unwrap();
    enricher.handle(decision("decided-3", &tx)).await.unwrap();
    assert_eq!(enrichment_event_id(&store, &tx).await, earlier);
    assert!(
        announced(&bus).await.is_empty(),
        "no second event for an enriched transaction"
    );
}
