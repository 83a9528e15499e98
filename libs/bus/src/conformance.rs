//! The bus conformance suite: the semantics every [`Bus`] backend must share. Each check uses
//! its own subjects (under `prefix`) so the checks can run against one shared bus.

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message;

use crate::dead_letters::{self, DeadLetter, ReplayOutcome};
use crate::{Bus, ConsumerConfig, Envelope};

/// Runs every check.
pub async fn run_all(bus: &dyn Bus, prefix: &str) {
    publishing_is_idempotent_on_the_event_id(bus, prefix).await;
    acked_events_are_not_redelivered(bus, prefix).await;
    a_nak_redelivers_after_the_delay(bus, prefix).await;
    an_unacked_delivery_comes_back_after_ack_wait(bus, prefix).await;
    a_delivery_in_progress_is_not_delivered_again(bus, prefix).await;
    too_many_deliveries_go_to_the_dead_letter_subject(bus, prefix).await;
    a_dead_letter_is_listed_and_replayed_to_its_consumer_alone(bus, prefix).await;
    every_durable_consumer_gets_every_event_once_shared_among_its_instances(bus, prefix).await;
    the_backlog_counts_what_a_consumer_has_not_acked(bus, prefix).await;
    bus.check().await.expect("bus health check");
}

/// A test event.
pub fn event(id: &str, subject: &str) -> Envelope {
    Envelope {
        event_id: id.to_string(),
        r#type: subject.to_string(),
        occurred_at_ms: 1,
        request_id: format!("req-{id}"),
        traceparent: String::new(),
        payload: id.as_bytes().to_vec(),
    }
}

fn fast(durable: &str, subjects: &[&str]) -> ConsumerConfig {
    ConsumerConfig {
        ack_wait: Duration::from_millis(400),
        max_deliver: 3,
        backoff: vec![Duration::from_millis(50)],
        ..ConsumerConfig::new(durable, subjects)
    }
}

async fn next(sub: &mut Box<dyn crate::Subscription>) -> crate::Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery within 10 s")
        .expect("delivery")
}

async fn nothing_within(sub: &mut Box<dyn crate::Subscription>, wait: Duration) {
    if let Ok(Ok(d)) = tokio::time::timeout(wait, sub.next()).await {
        panic!("unexpected delivery of {}", d.envelope.event_id);
    }
}

/// The same event id published twice is stored and delivered once.
pub async fn publishing_is_idempotent_on_the_event_id(bus: &dyn Bus, p: &str) {
    let subject = format!("{p}dedup.created");
    let first = bus
        .publish(&event(&format!("{p}dedup-1"), &subject))
        .await
        .unwrap();
    let again = bus
        .publish(&event(&format!("{p}dedup-1"), &subject))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.sequence, again.sequence);
    let mut sub = bus
        .subscribe(fast(&format!("{p}dedup"), &[&subject]))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.envelope.event_id, format!("{p}dedup-1"));
    assert_eq!(d.envelope.request_id, format!("req-{p}dedup-1"));
    d.ack().await.unwrap();
    nothing_within(&mut sub, Duration::from_millis(600)).await;
}

/// Acked events stay acked; a filter sees only its subjects.
pub async fn acked_events_are_not_redelivered(bus: &dyn Bus, p: &str) {
    let wanted = format!("{p}ack.wanted");
    bus.publish(&event(&format!("{p}ack-1"), &format!("{p}ack.other")))
        .await
        .unwrap();
    bus.publish(&event(&format!("{p}ack-2"), &wanted))
        .await
        .unwrap();
    let mut sub = bus
        .subscribe(fast(&format!("{p}ack"), &[&wanted]))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.envelope.event_id, format!("{p}ack-2"));
    assert_eq!(d.attempt, 1);
    d.ack().await.unwrap();
    nothing_within(&mut sub, Duration::from_millis(700)).await;
}

/// Waits until `config`'s backlog is `expected` (NATS counts acks a moment after they land).
async fn backlog_becomes(bus: &dyn Bus, config: &ConsumerConfig, expected: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let backlog = bus.backlog(config).await.expect("backlog");
        if backlog == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog {backlog}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The backlog counts the events a consumer wants and has not acked, in hand or not yet
/// taken, and nothing under other subjects.
pub async fn the_backlog_counts_what_a_consumer_has_not_acked(bus: &dyn Bus, p: &str) {
    let wanted = format!("{p}backlog.wanted");
    let config = fast(&format!("{p}backlog"), &[&wanted]);
    assert_eq!(bus.backlog(&config).await.unwrap(), 0, "unknown consumer");
    bus.publish(&event(
        &format!("{p}backlog-other"),
        &format!("{p}backlog.other"),
    ))
    .await
    .unwrap();
    for i in 0..3 {
        bus.publish(&event(&format!("{p}backlog-{i}"), &wanted))
            .await
            .unwrap();
    }
    let mut sub = bus.subscribe(config.clone()).await.unwrap();
    let first = next(&mut sub).await;
    backlog_becomes(bus, &config, 3).await;
    first.ack().await.unwrap();
    backlog_becomes(bus, &config, 2).await;
    for _ in 0..2 {
        next(&mut sub).await.ack().await.unwrap();
    }
    backlog_becomes(bus, &config, 0).await;
}

/// A nak brings the event back, counted as the next attempt.
pub async fn a_nak_redelivers_after_the_delay(bus: &dyn Bus, p: &str) {
    let subject = format!("{p}nak.created");
    bus.publish(&event(&format!("{p}nak-1"), &subject))
        .await
        .unwrap();
    let mut sub = bus
        .subscribe(fast(&format!("{p}nak"), &[&subject]))
        .await
        .unwrap();
    let first = next(&mut sub).await;
    assert_eq!(first.attempt, 1);
    first.nak().await.unwrap();
    let second = next(&mut sub).await;
    assert_eq!(second.envelope.event_id, format!("{p}nak-1"));
    assert_eq!(second.attempt, 2);
    second.ack().await.unwrap();
}

/// A delivery neither acked nor nakked (a crashed consumer) is redelivered after ack wait.
pub async fn an_unacked_delivery_comes_back_after_ack_wait(bus: &dyn Bus, p: &str) {
    let subject = format!("{p}lost.created");
    bus.publish(&event(&format!("{p}lost-1"), &subject))
        .await
        .unwrap();
    let mut sub = bus
        .subscribe(fast(&format!("{p}lost"), &[&subject]))
        .await
        .unwrap();
    let first = next(&mut sub).await;
    drop(first);
    let again = next(&mut sub).await;
    assert_eq!(again.envelope.event_id, format!("{p}lost-1"));
    assert_eq!(again.attempt, 2);
    again.ack().await.unwrap();
}

/// A delivery whose handler keeps saying it is still working is not delivered again past the
/// ack wait, and comes back one ack wait after it stops saying so.
pub async fn a_delivery_in_progress_is_not_delivered_again(bus: &dyn Bus, p: &str) {
    let subject = format!("{p}slow.created");
    bus.publish(&event(&format!("{p}slow-1"), &subject))
        .await
        .unwrap();
    let mut sub = bus
        .subscribe(fast(&format!("{p}slow"), &[&subject]))
        .await
        .unwrap();
    let first = next(&mut sub).await;
    assert_eq!(first.attempt, 1);
    // Five ack waits (400 ms) of work, said every 100 ms: no second delivery meanwhile.
    let working = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            first.in_progress().await.unwrap();
        }
    };
    let (_, redelivered) = tokio::join!(
        working,
        tokio::time::timeout(Duration::from_millis(2_000), sub.next())
    );
    if let Ok(Ok(d)) = redelivered {
        panic!("delivered again while in progress: attempt {}", d.attempt);
    }
    // The handler dies without settling it: it comes back (on NATS the pull the timeout
    // abandoned may have taken a delivery of its own, so not necessarily as the second).
    drop(first);
    let again = next(&mut sub).await;
    assert_eq!(again.envelope.event_id, format!("{p}slow-1"));
    assert!(again.attempt >= 2, "attempt {}", again.attempt);
    again.ack().await.unwrap();
}

/// After `max_deliver` failed deliveries the event goes to `deadletter.<durable>.<subject>`.
pub async fn too_many_deliveries_go_to_the_dead_letter_subject(bus: &dyn Bus, p: &str) {
    let subject = format!("{p}poison.created");
    let durable = format!("{p}poison");
    bus.publish(&event(&format!("{p}poison-1"), &subject))
        .await
        .unwrap();
    let mut dead = bus
        .subscribe(fast(
            &format!("{p}poison-dlq"),
            &[&format!("deadletter.{durable}.>")],
        ))
        .await
        .unwrap();
    let mut sub = bus.subscribe(fast(&durable, &[&subject])).await.unwrap();
    for attempt in 1..=3 {
        let d = next(&mut sub).await;
        assert_eq!(d.attempt, attempt);
        d.nak().await.unwrap();
    }
    let d = next(&mut dead).await;
    assert_eq!(d.envelope.r#type, format!("deadletter.{durable}.{subject}"));
    assert_eq!(d.envelope.request_id, format!("req-{p}poison-1"));
    let letter = DeadLetter::decode(d.envelope.payload.as_slice()).expect("a dead letter");
    assert_eq!(letter.consumer, durable);
    assert_eq!(letter.deliveries, 3);
    assert_eq!(letter.replay, 0);
    assert_eq!(letter.reason, "max deliveries reached");
    assert_eq!(letter.event, Some(event(&format!("{p}poison-1"), &subject)));
    d.ack().await.unwrap();
    nothing_within(&mut sub, Duration::from_millis(600)).await;
}

/// A dead letter is listed with its reason; a replay reaches its consumer alone, as the event
/// itself; asking twice replays once; a replay given up on again is listed again, and a
/// handled one is no longer outstanding.
pub async fn a_dead_letter_is_listed_and_replayed_to_its_consumer_alone(bus: &dyn Bus, p: &str) {
    let subject = format!("{p}replayed.created");
    let (durable, other) = (format!("{p}replayed"), format!("{p}replayed-other"));
    let id = format!("{p}replayed-1");
    let mut sub = bus.subscribe(fast(&durable, &[&subject])).await.unwrap();
    let mut bystander = bus.subscribe(fast(&other, &[&subject])).await.unwrap();
    bus.publish(&event(&id, &subject)).await.unwrap();
    next(&mut bystander).await.ack().await.unwrap();
    next(&mut sub)
        .await
        .term("bad_request.unknown_account")
        .await
        .unwrap();
    let listed = dead_letters::list(bus, &durable).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].event, event(&id, &subject));
    assert_eq!(
        listed[0].dead_letters[0].reason,
        "bad_request.unknown_account"
    );
    assert_eq!(listed[0].dead_letters[0].deliveries, 1);
    assert!(listed[0].outstanding());
    assert!(dead_letters::list(bus, &other).await.unwrap().is_empty());
    assert_eq!(
        dead_letters::replay(bus, &durable, "no-such-event", "operator")
            .await
            .unwrap(),
        None
    );

    let replayed = dead_letters::replay(bus, &durable, &id, "operator")
        .await
        .unwrap();
    assert_eq!(replayed, Some(ReplayOutcome::Published(1)));
    let again = dead_letters::replay(bus, &durable, &id, "operator")
        .await
        .unwrap();
    assert_eq!(again, Some(ReplayOutcome::AlreadyReplayed(1)));
    let d = next(&mut sub).await;
    assert_eq!(
        d.envelope,
        event(&id, &subject),
        "the replay is the event itself"
    );
    assert_eq!(d.attempt, 1);
    nothing_within(&mut bystander, Duration::from_millis(300)).await;
    assert_eq!(
        dead_letters::find(bus, &durable, &id)
            .await
            .unwrap()
            .unwrap()
            .status(),
        "replayed"
    );

    // Given up on again: listed again, under the replay's number.
    d.term("bad_request.unknown_account").await.unwrap();
    let found = dead_letters::find(bus, &durable, &id)
        .await
        .unwrap()
        .unwrap();
    assert!(found.outstanding());
    let rounds: Vec<u32> = found.dead_letters.iter().map(|d| d.replay).collect();
    assert_eq!(rounds, [0, 1]);
    let second = dead_letters::replay(bus, &durable, &id, "operator")
        .await
        .unwrap();
    assert_eq!(second, Some(ReplayOutcome::Published(2)));
    next(&mut sub).await.ack().await.unwrap();
    nothing_within(&mut sub, Duration::from_millis(300)).await;
    let done = dead_letters::find(bus, &durable, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((done.replays.len(), done.status()), (2, "replayed"));
}

/// Two durable consumers each get every event; two instances of one consumer share them.
pub async fn every_durable_consumer_gets_every_event_once_shared_among_its_instances(
    bus: &dyn Bus,
    p: &str,
) {
    let subject = format!("{p}fan.created");
    let ids: BTreeSet<String> = (0..10).map(|i| format!("{p}fan-{i}")).collect();
    for id in &ids {
        bus.publish(&event(id, &subject)).await.unwrap();
    }
    let mut feed = bus
        .subscribe(fast(&format!("{p}fan-feed"), &[&subject]))
        .await
        .unwrap();
    let mut push_a = bus
        .subscribe(fast(&format!("{p}fan-push"), &[&subject]))
        .await
        .unwrap();
    let mut push_b = bus
        .subscribe(fast(&format!("{p}fan-push"), &[&subject]))
        .await
        .unwrap();
    let mut fed = BTreeSet::new();
    for _ in 0..10 {
        let d = next(&mut feed).await;
        fed.insert(d.envelope.event_id.clone());
        d.ack().await.unwrap();
    }
    assert_eq!(fed, ids);
    let mut pushed = Vec::new();
    for i in 0..10 {
        let sub = if i % 2 == 0 { &mut push_a } else { &mut push_b };
        let d = next(sub).await;
        pushed.push(d.envelope.event_id.clone());
        d.ack().await.unwrap();
    }
    assert_eq!(pushed.iter().cloned().collect::<BTreeSet<_>>(), ids);
    assert_eq!(pushed.len(), 10, "each event went to one instance only");
    nothing_within(&mut push_a, Duration::from_millis(300)).await;
}
