//! `sterling dead-letters`: the events consumers gave up on, across the bank. Every service
//! that consumes events answers for its own consumers (`sterling.operator.v1.DeadLetters`);
//! these commands ask each running one.

use sterling_proto::operator::v1::dead_letters_client::DeadLettersClient;
use sterling_proto::operator::v1::{
    DeadLetteredEvent, GetDeadLetterRequest, ListDeadLettersRequest, ReplayDeadLetterRequest,
};
use sterling_template::Error;
use sterling_template::discovery::Protocol;

use crate::bank::SERVICES;
use crate::operate::{Reach, paint};

/// A channel to every running gRPC service of the bank, by name.
async fn services(
    bank: &Reach,
) -> anyhow::Result<
    Vec<(
        &'static str,
        DeadLettersClient<sterling_template::client::GrpcChannel>,
    )>,
> {
    let mut found = Vec::new();
    for definition in SERVICES {
        let registered = bank
            .discovery
            .resolve(definition.name)
            .await
            .unwrap_or_default();
        if !registered.iter().any(|r| r.protocol == Protocol::Grpc) {
            continue;
        }
        let channel = bank.channel(definition.name).await?;
        found.push((definition.name, DeadLettersClient::new(channel)));
    }
    Ok(found)
}

/// What a service answered: `Ok(None)` when it has no such consumer (ask the next one).
fn answered<T>(answer: Result<tonic::Response<T>, tonic::Status>) -> Result<Option<T>, Error> {
    match answer {
        Ok(r) => Ok(Some(r.into_inner())),
        // A service that consumes nothing does not serve dead letters.
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Err(s) => match Error::from(s) {
            e if e.code() == "not_found.consumer" => Ok(None),
            e => Err(e),
        },
    }
}

/// `YYYY-MM-DD hh:mm:ssZ` of a Unix time in milliseconds.
fn when(ms: i64) -> String {
    let second = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02}Z",
        sterling_storage::utc_date(ms),
        second / 3600,
        second / 60 % 60,
        second % 60
    )
}

/// The dead-lettered events of every running service's consumers (of `consumer` alone if
/// given), outstanding ones only unless `all`; each with the service that answered.
pub async fn collect(
    bank: &Reach,
    consumer: Option<&str>,
    all: bool,
) -> anyhow::Result<Vec<(&'static str, DeadLetteredEvent)>> {
    let mut events = Vec::new();
    for (service, mut client) in services(bank).await? {
        let answer = client
            .list_dead_letters(ListDeadLettersRequest {
                consumer: consumer.unwrap_or_default().to_string(),
                include_replayed: all,
            })
            .await;
        let listed = match answered(answer) {
            Ok(Some(listed)) => listed,
            Ok(None) => continue,
            Err(e) => anyhow::bail!("{service} could not list its dead letters: {e}"),
        };
        events.extend(listed.events.into_iter().map(|e| (service, e)));
    }
    Ok(events)
}

/// Prints the dead-lettered events, a line each: consumer, event id, type, status, deliveries
/// and why it was last given up on.
pub async fn list(bank: &Reach, consumer: Option<&str>, all: bool) -> anyhow::Result<()> {
    let events = collect(bank, consumer, all).await?;
    for (service, event) in &events {
        let last = event.dead_letters.last().cloned().unwrap_or_default();
        let status = paint(
            &format!("{:<11}", event.status),
            event.status != "outstanding",
        );
        println!(
            "{service}/{}  {}  {:<28} {status} {} deliveries  {}",
            event.consumer, event.event_id, event.event_type, last.deliveries, last.reason
        );
    }
    if events.is_empty() {
        println!("no {}dead letters", if all { "" } else { "outstanding " });
    }
    Ok(())
}

/// The one service that has `consumer`, and what it says of `event_id`.
async fn find(
    bank: &Reach,
    consumer: &str,
    event_id: &str,
) -> anyhow::Result<(&'static str, DeadLetteredEvent)> {
    for (service, mut client) in services(bank).await? {
        let answer = client
            .get_dead_letter(GetDeadLetterRequest {
                consumer: consumer.into(),
                event_id: event_id.into(),
            })
            .await;
        match answered(answer) {
            Ok(Some(found)) => return Ok((service, found)),
            Ok(None) => continue,
            Err(e) => anyhow::bail!("{service}: {e}"),
        }
    }
    anyhow::bail!("no running service has a consumer named {consumer}")
}

/// Prints one dead-lettered event: the event, every time it was given up on, every replay.
pub async fn show(bank: &Reach, consumer: &str, event_id: &str) -> anyhow::Result<()> {
    let (service, event) = find(bank, consumer, event_id).await?;
    println!("event       {} ({})", event.event_id, event.event_type);
    println!("consumer    {service}/{}", event.consumer);
    println!("request id  {}", event.request_id);
    println!("status      {}", event.status);
    for d in &event.dead_letters {
        println!(
            "given up    {}  round {}  after {} deliveries: {}",
            when(d.dead_lettered_at_ms),
            d.replay,
            d.deliveries,
            d.reason
        );
    }
    for r in &event.replays {
        println!(
            "replayed    {}  round {}  by {}",
            when(r.requested_at_ms),
            r.replay,
            r.requested_by
        );
    }
    Ok(())
}

/// Hands a dead-lettered event to its consumer again (asked of the service that has it).
pub async fn replay(bank: &Reach, consumer: &str, event_id: &str) -> anyhow::Result<()> {
    let mut answer = None;
    for (service, mut client) in services(bank).await? {
        let asked = client
            .replay_dead_letter(ReplayDeadLetterRequest {
                consumer: consumer.into(),
                event_id: event_id.into(),
            })
            .await;
        match answered(asked) {
            Ok(Some(replayed)) => {
                answer = Some((service, replayed));
                break;
            }
            Ok(None) => continue,
            Err(e) => anyhow::bail!("{service}: {e}"),
        }
    }
    let Some((service, replayed)) = answer else {
        anyhow::bail!("no running service has a consumer named {consumer}")
    };
    match replayed.already_replayed {
        true => println!(
            "{event_id} was already handed to {service}/{consumer} again (round {}); nothing new",
            replayed.replay
        ),
        false => println!(
            "{event_id} handed to {service}/{consumer} again (round {}); `sterling dead-letters show {consumer} {event_id}` tells whether it was given up on again",
            replayed.replay
        ),
    }
    Ok(())
}
