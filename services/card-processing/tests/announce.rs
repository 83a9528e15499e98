//! A decision is announced exactly when it is recorded, even if the process dies between
//! recording it and publishing: the announcement is written with the decision and the
//! sweeper publishes it if this process cannot vouch that it went out.

use std::sync::Arc;
use std::time::Duration;

use card_processing::announce::Announcer;
use card_processing::authorisation::Authorisation;
use card_processing::store::{AuthorisationStore, Claim, Decision, From};
use prost::Message;
use sterling_bus::embedded::SqliteBus;
use sterling_bus::nats::{NatsBus, NatsConfig};
use sterling_bus::{Bus, ConsumerConfig};
use sterling_money::{Currency, Money};
use sterling_proto::events::v1::CardAuthorisationDecided;
use sterling_storage::SharedStore;
use sterling_storage::cassandra::{CassandraConfig, CassandraStore};
use sterling_storage::embedded::SqliteStore;
use sterling_storage::now_millis;
use sterling_template::outbox::{self, TEMPLATE_MIGRATIONS};

fn migrations() -> Vec<sterling_storage::Migration> {
    let mut m = card_processing::MIGRATIONS.to_vec();
    m.extend(TEMPLATE_MIGRATIONS);
    m
}

/// The engines a test runs on, and on Cassandra + NATS what to remove afterwards.
struct Engines {
    store: SharedStore,
    bus: Arc<dyn Bus>,
    real: Option<(Arc<CassandraStore>, Arc<NatsBus>)>,
}

impl Engines {
    /// Removes the test's keyspace and stream, on Cassandra + NATS.
    async fn finish(self) {
        if let Some((store, bus)) = self.real {
            store.drop_keyspace().await.unwrap();
            bus.delete_stream().await.unwrap();
        }
    }
}

/// The embedded engines, or Cassandra + NATS with `STERLING_TEST_ENGINES=real` (each test in
/// a namespace of its own).
async fn engines() -> Engines {
    if std::env::var("STERLING_TEST_ENGINES").as_deref() == Ok("real") {
        let namespace = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let store = Arc::new(
            CassandraStore::open(
                &CassandraConfig::from_env(),
                &format!("{namespace}_card_processing"),
                &migrations(),
            )
            .await
            .unwrap(),
        );
        let url =
            std::env::var("STERLING_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let bus = Arc::new(
            NatsBus::connect(NatsConfig::for_namespace(&url, &namespace))
                .await
                .unwrap(),
        );
        Engines {
            store: store.clone(),
            bus: bus.clone(),
            real: Some((store, bus)),
        }
    } else {
        Engines {
            store: Arc::new(SqliteStore::in_memory(&migrations()).unwrap()),
            bus: Arc::new(SqliteBus::in_memory().unwrap()),
            real: None,
        }
    }
}

fn decided(id: &str, event_id: &str, transaction_id: &str) -> Decision {
    Decision {
        processor_authorisation_id: id.into(),
        approved: true,
        reason: "approved".into(),
        account_id: "acc".into(),
        held_amount: 100,
        held_currency: "GBP".into(),
        transaction_id: transaction_id.into(),
        event_id: event_id.into(),
        reversed: false,
    }
}

fn announcement(id: &str) -> sterling_bus::Envelope {
    outbox::event(
        "card.authorisation.approved",
        &CardAuthorisationDecided {
            processor_authorisation_id: id.into(),
            approved: true,
            ..Default::default()
        },
    )
}

fn request(id: &str) -> Authorisation {
    Authorisation {
        processor_authorisation_id: id.into(),
        card_token: "card".into(),
        amount: Money::from_minor(100, Currency::from_code("GBP").unwrap()),
        merchant_descriptor: "CAFE".into(),
        mcc: "5812".into(),
        merchant_country: "GB".into(),
        merchant_city: "London".into(),
    }
}

async fn claim(store: &AuthorisationStore, id: &str) -> (String, String) {
    match store.claim(&request(id), now_millis() + 100).await.unwrap() {
        Claim::Won {
            claim,
            transaction_id,
        } => (claim, transaction_id),
        other => panic!("expected to win the claim, got {other:?}"),
    }
}

async fn decide(store: &AuthorisationStore, id: &str) -> sterling_bus::Envelope {
    let (c, transaction_id) = claim(store, id).await;
    let event = announcement(id);
    assert!(
        store
            .settle(
                &From::Claim(c),
                &decided(id, &event.event_id, &transaction_id),
                event.encode_to_vec(),
            )
            .await
            .unwrap()
    );
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_recorded_but_never_published_is_published_by_the_sweeper() {
    let engines = engines().await;
    let (store, bus) = (engines.store.clone(), engines.bus.clone());
    let authorisations = AuthorisationStore::new(store.clone());
    // Decided, then the process "dies" before publishing.
    let event = decide(&authorisations, "auth-crash").await;
    // Claimed but never decided: nothing to announce.
    let _ = claim(&authorisations, "auth-undecided").await;

    let announcer = Announcer::new(bus.clone());
    for id in ["auth-crash", "auth-undecided"] {
        let record = authorisations.record(id).await.unwrap().unwrap();
        announcer.ensure_published(&record).await.unwrap();
        // A second look publishes nothing new.
        announcer.ensure_published(&record).await.unwrap();
    }
    // A restarted process cannot vouch for it and publishes again: the bus deduplicates.
    let restarted = Announcer::new(bus.clone());
    let record = authorisations.record("auth-crash").await.unwrap().unwrap();
    restarted.ensure_published(&record).await.unwrap();

    let mut sub = bus
        .subscribe(ConsumerConfig::new("test", &["card.authorisation.*"]))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.envelope.event_id, event.event_id);
    let payload = CardAuthorisationDecided::decode(delivery.envelope.payload.as_slice()).unwrap();
    assert_eq!(payload.processor_authorisation_id, "auth-crash");
    delivery.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "only the recorded decision is announced, once"
    );
    engines.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_that_lost_its_compare_and_set_is_never_announced() {
    let engines = engines().await;
    let (store, bus) = (engines.store.clone(), engines.bus.clone());
    let authorisations = AuthorisationStore::new(store.clone());
    let (c, transaction_id) = claim(&authorisations, "auth-other").await;
    let winning = announcement("auth-other");
    let losing = announcement("auth-other");
    let from = From::Claim(c);
    assert!(
        authorisations
            .settle(
                &from,
                &decided("auth-other", &winning.event_id, &transaction_id),
                winning.encode_to_vec(),
            )
            .await
            .unwrap()
    );
    assert!(
        !authorisations
            .settle(
                &From::AnyClaim,
                &decided("auth-other", &losing.event_id, &transaction_id),
                losing.encode_to_vec(),
            )
            .await
            .unwrap()
    );
    let record = authorisations.record("auth-other").await.unwrap().unwrap();
    Announcer::new(bus.clone())
        .ensure_published(&record)
        .await
        .unwrap();
    let mut sub = bus
        .subscribe(ConsumerConfig::new("test", &["card.>"]))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.envelope.event_id, winning.event_id);
    delivery.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err()
    );
    engines.finish().await;
}
