//! The answers card-api gave the processor, recorded before they are given.
//!
//! The first answer recorded for an id is the answer, forever: a second request racing the
//! first answers what the first recorded. An answer card-api gives on its own (card-processing
//! did not decide in time, or failed) is a stand-in decline; it is recorded with an event that
//! tells card-processing to make its own record match (decline if undecided, otherwise
//! reverse). The event is staged in the outbox before the answer is recorded, so a crash
//! between the two loses nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use sterling_bus::Envelope;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardAuthorisationStoodIn;
use sterling_storage::{Applied, Mutation, Row, SharedStore, Value, now_millis};
use sterling_template::outbox::{self, Confirm, Outbox, Verdict};
use sterling_template::{Error, Result, failpoint};

use crate::webhook::AuthorisationResponse;

/// A recorded answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What the processor was told.
    pub response: AuthorisationResponse,
    /// The request's fingerprint.
    pub fingerprint: String,
    /// Declined by card-api on its own.
    pub stand_in: bool,
    /// The stand-in event, if any.
    pub event_id: String,
}

/// Data access of card-api.
#[derive(Clone)]
pub struct AnswerStore {
    store: SharedStore,
    outbox: Outbox,
    /// Answers given while the store could not record them, until it can: repeats are
    /// answered from here meanwhile, so an outage never makes card-api answer twice.
    unrecorded: Arc<Mutex<Unrecorded>>,
    /// One answer at a time per id in this process: a decline that cannot be recorded is kept
    /// before another answer for its id may be recorded, so the first answer given stands.
    recording: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Answers given but not recorded yet, by id, with their stand-in events.
type Unrecorded = HashMap<String, (Answer, Option<Envelope>)>;

fn key(id: &str) -> Row {
    Row::new().with("processor_authorisation_id", id)
}

fn answer_from_row(id: &str, row: &Row) -> Result<Answer> {
    let text = |c: &str| row.text(c).unwrap_or_default().to_string();
    Ok(Answer {
        response: AuthorisationResponse {
            id: id.to_string(),
            result: row.text("result")?.to_string(),
            reason: row.text("reason")?.to_string(),
            approved_amount: row.i64("approved_amount").unwrap_or_default(),
            currency: text("currency"),
            held_amount: row.i64("held_amount").unwrap_or_default(),
            held_currency: text("held_currency"),
            transaction_id: text("transaction_id"),
        },
        fingerprint: text("fingerprint"),
        stand_in: row.bool("stand_in").unwrap_or(false),
        event_id: text("event_id"),
    })
}

impl AnswerStore {
    /// Answers over the service's store, stand-in events through its outbox.
    pub fn new(store: SharedStore, outbox: Outbox) -> Self {
        AnswerStore {
            store,
            outbox,
            unrecorded: Arc::default(),
            recording: Arc::default(),
        }
    }

    fn unrecorded(&self) -> std::sync::MutexGuard<'_, Unrecorded> {
        self.unrecorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer recorded (or given and not yet recorded) for `id`, if any.
    pub async fn get(&self, id: &str) -> Result<Option<Answer>> {
        if let Some((answer, _)) = self.unrecorded().get(id) {
            return Ok(Some(answer.clone()));
        }
        match self.store.get("answers", &key(id)).await? {
            Some(row) => Ok(Some(answer_from_row(id, &row)?)),
            None => Ok(None),
        }
    }

    /// Records `answer` unless one is recorded already; returns the one that stands. If the
    /// store cannot take card-processing's decision, it stands all the same (it is about to be
    /// given) and is recorded in the background as soon as the store is back; a stand-in
    /// decline the store cannot take is an error (no decision), as another answer may stand.
    pub async fn record_or_keep(
        &self,
        answer: Answer,
        stand_in: Option<Envelope>,
    ) -> Result<Answer> {
        let id = answer.response.id.clone();
        let turn = self.turn(&id);
        let held = turn.lock().await;
        let standing = self.record_or_keep_in_turn(answer, stand_in).await;
        drop(held);
        self.end_turn(&id, turn);
        standing
    }

    /// The lock that gives answers for `id` their turn.
    fn turn(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut recording = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        recording.entry(id.to_string()).or_default().clone()
    }

    /// Forgets `id`'s lock once nobody else waits on it.
    fn end_turn(&self, id: &str, turn: Arc<tokio::sync::Mutex<()>>) {
        let mut recording = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else holds or waits for it.
        if Arc::strong_count(&turn) <= 2 {
            recording.remove(id);
        }
    }

    async fn record_or_keep_in_turn(
        &self,
        answer: Answer,
        stand_in: Option<Envelope>,
    ) -> Result<Answer> {
        let id = answer.response.id.clone();
        if let Some((given, _)) = self.unrecorded().get(&id) {
            return Ok(given.clone());
        }
        match self.record(answer.clone(), stand_in.clone()).await {
            Ok(recorded) => Ok(recorded),
            // A stand-in decline is card-api's own answer: if it cannot be recorded, another
            // answer may stand (a copy of the request approved a moment ago, whose write
            // landed), and giving it could contradict that. No decision; the processor retries.
            Err(e) if answer.stand_in => {
                tracing::warn!(error = %e, "cannot record a stand-in decline; no decision");
                Err(e)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the answer; keeping it until the store is back");
                let mut unrecorded = self.unrecorded();
                if let Some((given, _)) = unrecorded.get(&id) {
                    return Ok(given.clone());
                }
                unrecorded.insert(id.clone(), (answer.clone(), stand_in));
                drop(unrecorded);
                self.record_later(id);
                Ok(answer)
            }
        }
    }

    /// Keeps trying to record an answer already given while the store was down.
    fn record_later(&self, id: String) {
        let answers = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::time::sleep(pause).await;
                let Some((answer, stand_in)) = answers.unrecorded().get(&id).cloned() else {
                    return;
                };
                match answers.record(answer, stand_in).await {
                    Ok(_) => {
                        answers.unrecorded().remove(&id);
                        tracing::info!(processor_authorisation_id = %id, "answer recorded after the outage");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "still cannot record the answer"),
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Records `answer` unless one is recorded already; returns the one that stands. A
    /// stand-in's event is staged first and published only if this answer stands.
    pub async fn record(&self, answer: Answer, stand_in: Option<Envelope>) -> Result<Answer> {
        let id = answer.response.id.clone();
        if let Some(event) = &stand_in {
            self.outbox.stage(event).await?;
        }
        let r = &answer.response;
        let row = key(&id)
            .with("fingerprint", answer.fingerprint.as_str())
            .with("result", r.result.as_str())
            .with("reason", r.reason.as_str())
            .with("approved_amount", r.approved_amount)
            .with("currency", r.currency.as_str())
            .with("held_amount", r.held_amount)
            .with("held_currency", r.held_currency.as_str())
            .with("transaction_id", r.transaction_id.as_str())
            .with("stand_in", answer.stand_in)
            .with("event_id", answer.event_id.as_str())
            .with("answered_at", Value::Timestamp(now_millis()));
        let outcome = self
            .store
            .apply(vec![Mutation::insert_if_not_exists("answers", row)])
            .await?;
        failpoint::step("card_api::answer::after_write").await?;
        match outcome {
            Applied::Yes => {
                if let Some(event) = stand_in {
                    self.outbox.publish_soon(event);
                }
                Ok(answer)
            }
            Applied::No(current) => {
                let row = current
                    .into_iter()
                    .flatten()
                    .next()
                    .ok_or_else(|| Error::internal("answer insert failed without a row"))?;
                let standing = answer_from_row(&id, &row)?;
                if let Some(event) = stand_in {
                    // Our own earlier write (a retry after a write whose outcome was not
                    // heard) stands: its event must go out, not be thrown away.
                    if standing.event_id == event.event_id {
                        self.outbox.publish_soon(event);
                    } else if let Err(e) = self.outbox.discard(&event).await {
                        // The answer that stands is known: it is what is given. The staged
                        // event stays for the relay, which discards it (another answer stands).
                        tracing::warn!(error = %e, "cannot discard a losing stand-in's event yet");
                    }
                }
                Ok(standing)
            }
        }
    }
}

/// The stand-in event for a decline card-api answers on its own.
pub fn stand_in_event(event: &CardAuthorisationStoodIn) -> Envelope {
    outbox::event(types::CARD_AUTHORISATION_STOOD_IN, event)
}

/// Tells the outbox relay whether a staged stand-in event stands: only if its answer was
/// recorded with it.
pub struct StandInConfirm {
    /// card-api's store.
    pub store: SharedStore,
}

#[async_trait::async_trait]
impl Confirm for StandInConfirm {
    async fn confirm(&self, envelope: &Envelope) -> Result<Verdict> {
        let event = CardAuthorisationStoodIn::decode(envelope.payload.as_slice())
            .map_err(|e| Error::internal(format!("staged event is not a stand-in: {e}")))?;
        let id = &event.processor_authorisation_id;
        match self.store.get("answers", &key(id)).await? {
            Some(row) if answer_from_row(id, &row)?.event_id == envelope.event_id => {
                Ok(Verdict::Publish)
            }
            // Another answer stands, or none was recorded: the processor never heard this one.
            _ => Ok(Verdict::Discard),
        }
    }
}
