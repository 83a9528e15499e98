//! Recorded answers: the first answer for an id stands, and a stand-in decline's event goes
//! out exactly when its answer stands, even when the write that recorded it is retried
//! because its outcome was never heard.

use std::sync::Arc;
use std::time::Duration;

use card_api::answers::{Answer, AnswerStore, StandInConfirm, stand_in_event};
use card_api::webhook::AuthorisationResponse;
use sterling_bus::embedded::SqliteBus;
use sterling_bus::{Bus, ConsumerConfig};
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardAuthorisationStoodIn;
use sterling_storage::SharedStore;
use sterling_storage::embedded::SqliteStore;
use sterling_template::outbox::{Outbox, TEMPLATE_MIGRATIONS};

fn engines() -> (SharedStore, Arc<dyn Bus>, AnswerStore) {
    let mut migrations = card_api::MIGRATIONS.to_vec();
    migrations.extend(TEMPLATE_MIGRATIONS);
    let store: SharedStore = Arc::new(SqliteStore::in_memory(&migrations).unwrap());
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
