//! Recorded answers: the first answer for an id stands, and a stand-in decline's event goes
//! out exactly when its answer stands, even when the write that recorded it is retried
//! because its outcome was never heard; a store going down between two copies of one request
//! never lets the second be answered otherwise than the first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use card_api::answers::{Answer, AnswerStore, StandInConfirm, stand_in_event};
use card_api::webhook::AuthorisationResponse;
use sterling_bus::embedded::SqliteBus;
use sterling_bus::{Bus, ConsumerConfig};
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardAuthorisationStoodIn;
use sterling_storage::embedded::SqliteStore;
use sterling_storage::schema::TableSchema;
use sterling_storage::{
    Applied, Mutation, Query, Result as StoreResult, Row, ScanPage, SharedStore, StorageError,
    Store,
};
use sterling_template::outbox::{Outbox, TEMPLATE_MIGRATIONS};

/// Writes go through.
const UP: u8 = 0;
/// Every write fails (the database has just gone down).
const DOWN: u8 = 1;
/// Writes that remove a row fail, the others go through (it goes down in between).
const DELETES_FAIL: u8 = 2;

/// A store whose writes fail when told to, reads always working.
struct Failing {
    inner: SqliteStore,
    mode: Arc<AtomicU8>,
}

#[async_trait::async_trait]
impl Store for Failing {
    async fn get(&self, table: &str, key: &Row) -> StoreResult<Option<Row>> {
        self.inner.get(table, key).await
    }
    async fn query(&self, query: Query) -> StoreResult<Vec<Row>> {
        self.inner.query(query).await
    }
    async fn apply(&self, mutations: Vec<Mutation>) -> StoreResult<Applied> {
        let deletes = mutations
            .iter()
            .any(|m| matches!(m, Mutation::Delete { .. }));
        match self.mode.load(Ordering::SeqCst) {
            DOWN => Err(StorageError::Unavailable("the store is down".into())),
            DELETES_FAIL if deletes => Err(StorageError::Unavailable("the store is down".into())),
            _ => self.inner.apply(mutations).await,
        }
    }
    async fn scan(&self, table: &str, page: Option<Vec<u8>>, size: usize) -> StoreResult<ScanPage> {
        self.inner.scan(table, page, size).await
    }
    async fn check(&self) -> StoreResult<()> {
        self.inner.check().await
    }
    fn tables(&self) -> &BTreeMap<String, TableSchema> {
        self.inner.tables()
    }
}

fn migrations() -> Vec<sterling_storage::Migration> {
    let mut migrations = card_api::MIGRATIONS.to_vec();
    migrations.extend(TEMPLATE_MIGRATIONS);
    migrations
}

/// Answers over a store whose writes fail as `mode` says.
fn failing_engines(mode: Arc<AtomicU8>) -> AnswerStore {
    let inner = SqliteStore::in_memory(&migrations()).unwrap();
    let store: SharedStore = Arc::new(Failing { inner, mode });
    let bus: Arc<dyn Bus> = Arc::new(SqliteBus::in_memory().unwrap());
    let confirm = Arc::new(StandInConfirm {
        store: store.clone(),
    });
    let outbox = Outbox::new(store.clone(), bus, confirm, Duration::ZERO);
    AnswerStore::new(store, outbox)
}

fn engines() -> (SharedStore, Arc<dyn Bus>, AnswerStore) {
    let store: SharedStore = Arc::new(SqliteStore::in_memory(&migrations()).unwrap());
    let bus: Arc<dyn Bus> = Arc::new(SqliteBus::in_memory().unwrap());
    let confirm = Arc::new(StandInConfirm {
        store: store.clone(),
    });
    let outbox = Outbox::new(store.clone(), bus.clone(), confirm, Duration::ZERO);
    (store.clone(), bus, AnswerStore::new(store, outbox))
}

fn stand_in(id: &str) -> (Answer, sterling_bus::Envelope) {
    let event = stand_in_event(&CardAuthorisationStoodIn {
        processor_authorisation_id: id.into(),
        reason: "timeout".into(),
        ..Default::default()
    });
    let answer = Answer {
        response: AuthorisationResponse {
            id: id.into(),
            result: "DECLINED".into(),
            reason: "timeout".into(),
            approved_amount: 0,
            currency: "GBP".into(),
            held_amount: 0,
            held_currency: String::new(),
            transaction_id: String::new(),
        },
        fingerprint: "f".into(),
        stand_in: true,
        event_id: event.event_id.clone(),
    };
    (answer, event)
}

async fn stood_in_events(bus: &Arc<dyn Bus>) -> Vec<String> {
    let mut config = ConsumerConfig::new("test", &[types::CARD_AUTHORISATION_STOOD_IN]);
    config.ack_wait = Duration::from_secs(60);
    let mut subscription = bus.subscribe(config).await.unwrap();
    let mut ids = Vec::new();
    while let Ok(Ok(delivery)) =
        tokio::time::timeout(Duration::from_millis(500), subscription.next()).await
    {
        ids.push(delivery.envelope.event_id.clone());
        delivery.ack().await.unwrap();
    }
    ids
}

#[tokio::test]
async fn a_retried_write_of_a_stand_in_still_hands_its_event_on() {
    let scenario = fail::FailScenario::setup();
    let (_, bus, answers) = engines();
    let (answer, event) = stand_in("a-1");
    // The first write lands but its outcome is lost; the retry finds its own row.
    fail::cfg("card_api::answer::after_write", "1*return(error)").unwrap();
    let lost = answers.record(answer.clone(), Some(event.clone())).await;
    assert_eq!(lost.unwrap_err().code(), "unavailable.fail_point");
    let again = answers
        .record(answer.clone(), Some(event.clone()))
        .await
        .unwrap();
    assert_eq!(again, answer);
    assert_eq!(stood_in_events(&bus).await, vec![event.event_id]);
    scenario.teardown();
}

#[tokio::test]
async fn a_losing_stand_in_is_never_handed_on() {
    let scenario = fail::FailScenario::setup(); // no fail point from another test fires here
    let (_, bus, answers) = engines();
    let (first, first_event) = stand_in("a-2");
    let (second, second_event) = stand_in("a-2");
    answers
        .record(first.clone(), Some(first_event.clone()))
        .await
        .unwrap();
    let standing = answers.record(second, Some(second_event)).await.unwrap();
    assert_eq!(standing, first, "the first answer recorded stands");
    assert_eq!(stood_in_events(&bus).await, vec![first_event.event_id]);
    scenario.teardown();
}

/// card-processing's approval of `id`, as card-api records it.
fn approval(id: &str) -> Answer {
    let (mut answer, _) = stand_in(id);
    answer.response.result = "APPROVED".into();
    answer.response.reason = "approved".into();
    answer.response.approved_amount = 50;
    answer.stand_in = false;
    answer.event_id = String::new();
    answer
}

#[tokio::test]
async fn a_stand_in_the_store_cannot_take_is_no_decision_not_a_contradiction() {
    let _scenario = fail::FailScenario::setup(); // no other test's fail point fires here
    let mode = Arc::new(AtomicU8::new(UP));
    let answers = failing_engines(mode.clone());
    // One copy of the request was approved and recorded; the database goes down before the
    // other copy, whose call to card-processing failed, records its stand-in decline.
    let approved = approval("a-3");
    let recorded = answers
        .record_or_keep(approved.clone(), None)
        .await
        .unwrap();
    assert_eq!(recorded, approved);
    mode.store(DOWN, Ordering::SeqCst);
    let (decline, event) = stand_in("a-3");
    let second = answers.record_or_keep(decline, Some(event)).await;
    assert!(
        second.is_err(),
        "a decline that may contradict the approval is not given: {second:?}"
    );
    // Once the store is back, a repeat is answered with the approval.
    mode.store(UP, Ordering::SeqCst);
    assert_eq!(answers.get("a-3").await.unwrap(), Some(approved));
}

#[tokio::test]
async fn a_losing_stand_in_whose_event_cannot_be_removed_gets_the_standing_answer() {
    let _scenario = fail::FailScenario::setup(); // no other test's fail point fires here
    let mode = Arc::new(AtomicU8::new(UP));
    let answers = failing_engines(mode.clone());
    let approved = approval("a-4");
    answers
        .record_or_keep(approved.clone(), None)
        .await
        .unwrap();
    // The stand-in's event is staged and its answer loses, but removing the event fails.
    mode.store(DELETES_FAIL, Ordering::SeqCst);
    let (decline, event) = stand_in("a-4");
    let second = answers.record_or_keep(decline, Some(event)).await.unwrap();
    assert_eq!(second, approved, "the answer that stands is given");
}

#[tokio::test]
async fn a_decision_the_store_cannot_take_is_kept_and_given_again() {
    let _scenario = fail::FailScenario::setup(); // no other test's fail point fires here
    let mode = Arc::new(AtomicU8::new(DOWN));
    let answers = failing_engines(mode.clone());
    // card-processing decided, the store is down: the decision is given and kept.
    let approved = approval("a-5");
    let given = answers
        .record_or_keep(approved.clone(), None)
        .await
        .unwrap();
    assert_eq!(given, approved);
    // A copy of the request that card-processing could not answer gets the same answer.
    let (decline, event) = stand_in("a-5");
    let again = answers.record_or_keep(decline, Some(event)).await.unwrap();
    assert_eq!(again, approved);
    // And it is recorded once the store is back.
    mode.store(UP, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answers.get("a-5").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answers.get("a-5").await.unwrap(), Some(approved));
}
