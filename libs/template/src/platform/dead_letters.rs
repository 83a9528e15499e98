//! The operator's gRPC for a service's dead letters (`sterling.operator.v1.DeadLetters`),
//! served by every gRPC service that consumes events, for its own consumers only, and callable
//! by the operator alone ([`RULES`]).

use std::sync::Arc;

use sterling_bus::dead_letters::{self, DeadLetteredEvent as Found, ReplayOutcome};
use sterling_bus::{Bus, BusError};
use sterling_proto::operator::v1::dead_letters_server::{DeadLetters, DeadLettersServer};
use sterling_proto::operator::v1::{
    DeadLetteredEvent, GetDeadLetterRequest, ListDeadLettersRequest, ListDeadLettersResponse,
    ReplayDeadLetterRequest, ReplayDeadLetterResponse,
};
use tonic::{Request, Response, Status};

use crate::error::{Error, required};
use crate::identity::{Caller, OPERATOR};
use crate::server::access::Rule;

/// Who may call the dead-letter methods: the operator.
pub const RULES: &[Rule] = &[
    Rule::new("ListDeadLetters", &[OPERATOR]),
    Rule::new("GetDeadLetter", &[OPERATOR]),
    Rule::new("ReplayDeadLetter", &[OPERATOR]),
];

/// The dead-letter service of one service's `consumers`.
pub fn server(bus: Arc<dyn Bus>, consumers: Vec<String>) -> DeadLettersServer<DeadLetterHandlers> {
    DeadLettersServer::new(DeadLetterHandlers { bus, consumers })
}

/// See the module documentation.
pub struct DeadLetterHandlers {
    bus: Arc<dyn Bus>,
    consumers: Vec<String>,
}

impl DeadLetterHandlers {
    /// `consumer`, if it is one of this service's; `not_found.consumer` otherwise.
    fn own<'a>(&self, consumer: &'a str) -> Result<&'a str, Error> {
        let consumer = required("consumer", consumer)?;
        match self.consumers.iter().any(|c| c == consumer) {
            true => Ok(consumer),
            false => Err(Error::not_found(
                "consumer",
                format!("{consumer} is not a consumer of this service"),
            )),
        }
    }

    async fn find(&self, consumer: &str, event_id: &str) -> Result<Found, Error> {
        let consumer = self.own(consumer)?;
        let event_id = required("event_id", event_id)?;
        dead_letters::find(self.bus.as_ref(), consumer, event_id)
            .await
            .map_err(bus_error)?
            .ok_or_else(|| no_such_event(consumer, event_id))
    }
}

#[tonic::async_trait]
impl DeadLetters for DeadLetterHandlers {
    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let r = request.into_inner();
        let wanted: Vec<&str> = match r.consumer.is_empty() {
            true => self.consumers.iter().map(String::as_str).collect(),
            false => vec![self.own(&r.consumer)?],
        };
        let mut events = Vec::new();
        for consumer in wanted {
            let found = dead_letters::list(self.bus.as_ref(), consumer)
                .await
                .map_err(bus_error)?;
            events.extend(
                found
                    .into_iter()
                    .filter(|e| r.include_replayed || e.outstanding())
                    .map(to_proto),
            );
        }
        Ok(Response::new(ListDeadLettersResponse {
            consumers: self.consumers.clone(),
            events,
        }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<GetDeadLetterRequest>,
    ) -> Result<Response<DeadLetteredEvent>, Status> {
        let r = request.into_inner();
        Ok(Response::new(to_proto(
            self.find(&r.consumer, &r.event_id).await?,
        )))
    }

    async fn replay_dead_letter(
        &self,
        request: Request<ReplayDeadLetterRequest>,
    ) -> Result<Response<ReplayDeadLetterResponse>, Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .map(|c| c.name().to_string())
            .unwrap_or_else(|| OPERATOR.to_string());
        let r = request.into_inner();
        let consumer = self.own(&r.consumer)?;
        let event_id = required("event_id", &r.event_id)?;
        let outcome = dead_letters::replay(self.bus.as_ref(), consumer, event_id, &caller)
            .await
            .map_err(bus_error)?;
        let (replay, already_replayed) = match outcome {
            Some(ReplayOutcome::Published(n)) => (n, false),
            Some(ReplayOutcome::AlreadyReplayed(n)) => (n, true),
            None => return Err(no_such_event(consumer, event_id).into()),
        };
        Ok(Response::new(ReplayDeadLetterResponse {
            replay,
            already_replayed,
        }))
    }
}

fn to_proto(found: Found) -> DeadLetteredEvent {
    DeadLetteredEvent {
        status: found.status().to_string(),
        consumer: found.consumer,
        event_id: found.event.event_id,
        event_type: found.event.r#type,
        request_id: found.event.request_id,
        dead_letters: found.dead_letters,
        replays: found.replays,
    }
}

fn no_such_event(consumer: &str, event_id: &str) -> Error {
    Error::not_found(
        "dead_letter",
        format!("{consumer} gave up on no event {event_id}"),
    )
}

fn bus_error(e: BusError) -> Error {
    match e {
        BusError::Unavailable(m) => Error::unavailable("bus", m),
        BusError::Invalid(m) => Error::internal(format!("the bus holds what it cannot read: {m}")),
    }
}
