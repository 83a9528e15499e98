//! Dead letters an operator can act on.
//!
//! A consumer that gives up on an event (its handler refused it, or `max_deliver` deliveries
//! failed) publishes a [`DeadLetter`] holding the event as `deadletter.<consumer>.<type>`, with
//! the id `<event id>/<consumer>/dead/<replay>`. An operator can [`replay`] it: a [`Replay`]
//! holding the event is published as `replay.<consumer>.<type>`, which that consumer alone
//! receives (every subscription also listens to [`replay_filter`]) and handles as the event
//! itself, deduplicated on the event's id as always. A replay given up on again is
//! dead-lettered under its replay number, so each round has an id of its own.
//!
//! Nothing is deleted: what became of an event is read back from the stream ([`list`]). Dead
//! letters are kept as long as the stream keeps events (seven days on NATS).

use std::collections::HashMap;

use prost::Message;
pub use sterling_proto::events::v1::{DeadLetter, Replay};

use crate::{Bus, BusError, DEAD_LETTER_PREFIX, Envelope, Result, now_ms};

/// Subject prefix of replays.
pub const REPLAY_PREFIX: &str = "replay";

/// How many stored events [`list`] reads per page.
const PAGE: usize = 500;

/// The filter of the replays addressed to `durable`, which its subscriptions also receive.
pub fn replay_filter(durable: &str) -> String {
    format!("{REPLAY_PREFIX}.{durable}.>")
}

/// Whether `subject` is a replay addressed to `durable` (matches [`replay_filter`]).
pub(crate) fn is_replay_for(durable: &str, subject: &str) -> bool {
    subject
        .strip_prefix(REPLAY_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_prefix(durable))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|event_type| !event_type.is_empty())
}

/// The event a stored message carries and which replay of it it is (0: as published).
pub(crate) fn unwrap_replay(envelope: Envelope) -> Result<(Envelope, u32)> {
    if !envelope
        .r#type
        .strip_prefix(REPLAY_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
    {
        return Ok((envelope, 0));
    }
    let replay = Replay::decode(envelope.payload.as_slice())
        .map_err(|e| BusError::Invalid(format!("a replay that does not decode: {e}")))?;
    let event = replay
        .event
        .ok_or_else(|| BusError::Invalid("a replay without its event".into()))?;
    Ok((event, replay.replay))
}

/// The dead letter of `event` (its `replay`-th replay, 0 for the event as published) given up
/// on by `durable` after `deliveries` deliveries.
pub(crate) fn dead_letter_envelope(
    durable: &str,
    event: &Envelope,
    replay: u32,
    deliveries: u32,
    reason: &str,
) -> Envelope {
    let at = now_ms();
    let dead = DeadLetter {
        event: Some(event.clone()),
        consumer: durable.to_string(),
        reason: reason.to_string(),
        deliveries,
        replay,
        dead_lettered_at_ms: at,
    };
    Envelope {
        event_id: format!("{}/{durable}/dead/{replay}", event.event_id),
        r#type: format!("{DEAD_LETTER_PREFIX}.{durable}.{}", event.r#type),
        occurred_at_ms: at,
        request_id: event.request_id.clone(),
        traceparent: event.traceparent.clone(),
        payload: dead.encode_to_vec(),
    }
}

/// One event one consumer gave up on, and what became of it since.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetteredEvent {
    /// The durable consumer.
    pub consumer: String,
    /// The event as it was published.
    pub event: Envelope,
    /// Every time the consumer gave up on it, oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// Every replay asked for, oldest first.
    pub replays: Vec<Replay>,
}

impl DeadLetteredEvent {
    /// The replay number of the last time it was given up on.
    fn last_given_up(&self) -> u32 {
        self.dead_letters
            .iter()
            .map(|d| d.replay)
            .max()
            .unwrap_or_default()
    }

    /// Given up on and not replayed since.
    pub fn outstanding(&self) -> bool {
        let last = self.last_given_up();
        !self.replays.iter().any(|r| r.replay > last)
    }

    /// `outstanding` or `replayed`.
    pub fn status(&self) -> &'static str {
        match self.outstanding() {
            true => "outstanding",
            false => "replayed",
        }
    }
}

/// Every event `consumer` gave up on, oldest first, whatever became of it since.
pub async fn list(bus: &dyn Bus, consumer: &str) -> Result<Vec<DeadLetteredEvent>> {
    let dead = format!("{DEAD_LETTER_PREFIX}.{consumer}.>");
    collect(bus, &dead, &replay_filter(consumer)).await
}

/// Every event any consumer gave up on, oldest first, whatever became of it since.
pub async fn list_all(bus: &dyn Bus) -> Result<Vec<DeadLetteredEvent>> {
    let (dead, replays) = (
        format!("{DEAD_LETTER_PREFIX}.>"),
        format!("{REPLAY_PREFIX}.>"),
    );
    collect(bus, &dead, &replays).await
}

/// The dead letters under `dead` and the replays under `replays`, by consumer and event.
async fn collect(bus: &dyn Bus, dead: &str, replays: &str) -> Result<Vec<DeadLetteredEvent>> {
    let mut events: Vec<DeadLetteredEvent> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for envelope in read_all(bus, dead).await? {
        let Ok(letter) = DeadLetter::decode(envelope.payload.as_slice()) else {
            tracing::warn!(event_id = %envelope.event_id, "a dead letter that does not decode");
            continue;
        };
        let Some(event) = letter.event.clone() else {
            continue;
        };
        let key = (letter.consumer.clone(), event.event_id.clone());
        let at = *index.entry(key).or_insert_with(|| {
            events.push(DeadLetteredEvent {
                consumer: letter.consumer.clone(),
                event,
                dead_letters: Vec::new(),
                replays: Vec::new(),
            });
            events.len() - 1
        });
        events[at].dead_letters.push(letter);
    }
    for envelope in read_all(bus, replays).await? {
        let Ok(replay) = Replay::decode(envelope.payload.as_slice()) else {
            continue;
        };
        let id = replay.event.as_ref().map(|e| e.event_id.clone());
        let key = id.map(|id| (replay.consumer.clone(), id));
        if let Some(&at) = key.and_then(|key| index.get(&key)) {
            events[at].replays.push(replay);
        }
    }
    Ok(events)
}

/// One event `consumer` gave up on.
pub async fn find(
    bus: &dyn Bus,
    consumer: &str,
    event_id: &str,
) -> Result<Option<DeadLetteredEvent>> {
    Ok(list(bus, consumer)
        .await?
        .into_iter()
        .find(|e| e.event.event_id == event_id))
}

/// What [`replay`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// The event was handed to the consumer again as this replay.
    Published(u32),
    /// It had been handed again as this replay, not given up on since: nothing new.
    AlreadyReplayed(u32),
}

/// Hands an event `consumer` gave up on to that consumer again (`None`: it gave up on no
/// such event). Repeating it before the replay is given up on again publishes nothing new.
pub async fn replay(
    bus: &dyn Bus,
    consumer: &str,
    event_id: &str,
    requested_by: &str,
) -> Result<Option<ReplayOutcome>> {
    let Some(found) = find(bus, consumer, event_id).await? else {
        return Ok(None);
    };
    let next = found.last_given_up() + 1;
    if !found.outstanding() {
        return Ok(Some(ReplayOutcome::AlreadyReplayed(next)));
    }
    let event = found.event;
    let at = now_ms();
    let envelope = Envelope {
        event_id: format!("{}/{consumer}/replay/{next}", event.event_id),
        r#type: format!("{REPLAY_PREFIX}.{consumer}.{}", event.r#type),
        occurred_at_ms: at,
        request_id: event.request_id.clone(),
        traceparent: event.traceparent.clone(),
        payload: Replay {
            event: Some(event),
            consumer: consumer.to_string(),
            replay: next,
            requested_by: requested_by.to_string(),
            requested_at_ms: at,
        }
        .encode_to_vec(),
    };
    let ack = bus.publish(&envelope).await?;
    tracing::info!(
        consumer,
        event_id,
        replay = next,
        requested_by,
        "dead letter replayed"
    );
    Ok(Some(match ack.duplicate {
        true => ReplayOutcome::AlreadyReplayed(next),
        false => ReplayOutcome::Published(next),
    }))
}

/// Every stored event under `filter`, oldest first.
async fn read_all(bus: &dyn Bus, filter: &str) -> Result<Vec<Envelope>> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = bus.browse(filter, after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(all);
        };
        after = last.sequence;
        all.extend(page.into_iter().map(|s| s.envelope));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_recognised_as_its_filter_matches_it() {
        for (durable, subject) in [
            ("feed", "replay.feed.card.authorisation.approved"),
            ("feed", "replay.feed-payments.card.payment.cleared"),
            ("feed", "replay.feed"),
            ("feed", "deadletter.feed.card.authorisation.approved"),
            ("t1.poison", "replay.t1.poison.t1.poison.created"),
            ("feed", "card.authorisation.approved"),
        ] {
            assert_eq!(
                is_replay_for(durable, subject),
                crate::subject_matches(&replay_filter(durable), subject),
                "{durable} {subject}"
            );
        }
    }
}
