//! HTTP handlers of card-api.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use card_processing::authorisation::Authorisation;
use sterling_bus::Envelope;
use sterling_proto::cardprocessing::v1::card_processing_client::CardProcessingClient;
use sterling_proto::cardprocessing::v1::{AuthoriseRequest, AuthoriseResponse, Decision, Merchant};
use sterling_proto::events::v1::CardAuthorisationStoodIn;
use sterling_template::client::GrpcChannel;
use sterling_template::context::RequestContext;
use sterling_template::{Error, ErrorClass, failpoint, money};

use crate::answers::{Answer, AnswerStore, stand_in_event};
use crate::webhook::{AuthorisationRequest, AuthorisationResponse};
use sterling_signature::{self as signature, SIGNATURE_HEADER, SignatureError};

/// What the handlers share.
pub struct CardApiState {
    /// Shared secret for webhook signatures.
    pub secret: Vec<u8>,
    /// Budget given to card-processing for one decision.
    pub budget: Duration,
    /// Budget given to card-processing for one later message (clearing, refund, ...).
    pub message_budget: Duration,
    /// card-processing client.
    pub card_processing: CardProcessingClient<GrpcChannel>,
    /// The answers given.
    pub answers: AnswerStore,
}

pub use sterling_template::server::Problem;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// `POST /v1/authorisations`: verify the signature, validate, answer a repeat from the record,
/// otherwise ask card-processing within the budget; record the answer, then give it.
pub async fn authorise(
    State(state): State<Arc<CardApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AuthorisationResponse>, Problem> {
    let started = Instant::now();
    check_signature(&state, &headers, &body)?;
    let (request, amount) = AuthorisationRequest::parse(&body)?;
    let authorisation = request.authorisation(amount);
    let fingerprint = authorisation.fingerprint();
    let unreadable = match state.answers.get(&request.id).await {
        Ok(Some(answer)) => return repeat(answer, &fingerprint),
        Ok(None) => false,
        // Recording will fail too; card-processing's record of the id may still answer.
        Err(e) => {
            tracing::warn!(error = %e, "cannot read recorded answers");
            true
        }
    };
    failpoint::step("card_api::before_decision").await?;
    let (answer, stand_in) = ask(&state, &authorisation, fingerprint.clone()).await?;
    if unreadable && stand_in.is_some() {
        // Neither the records nor card-processing can say whether this id was answered
        // before: a stand-in decline could contradict an approval given earlier. No decision;
        // the processor retries (or stands in on its side).
        return Err(Problem(Error::unavailable(
            "records",
            "cannot tell whether this authorisation was answered before; retry",
        )));
    }
    let recorded = state
        .answers
        .record_or_keep(answer, stand_in)
        .await
        // (Why the store failed is logged, not told to the processor.)
        .map_err(|_| {
            Problem(Error::unavailable(
                "records",
                "cannot record a decline given in card-processing's stead; retry",
            ))
        })?;
    let response = repeat(recorded, &fingerprint)?.0;
    tracing::info!(
        result = %response.result,
        reason = %response.reason,
        latency_us = started.elapsed().as_micros() as u64,
        "authorisation answered"
    );
    Ok(Json(response))
}

/// Checks the processor's signature over `payload`.
pub(crate) fn check_signature(
    state: &CardApiState,
    headers: &HeaderMap,
    payload: &[u8],
) -> Result<(), Problem> {
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    signature::verify(&state.secret, header, payload, unix_now()).map_err(|e| {
        let why = match e {
            SignatureError::Malformed => "missing or malformed signature",
            SignatureError::Stale => "signature timestamp outside the tolerance",
            SignatureError::Mismatch => "signature does not match",
        };
        Problem(Error::unauthorized("signature", why))
    })
}

/// A recorded answer given again, if the request is the one it answered.
fn repeat(answer: Answer, fingerprint: &str) -> Result<Json<AuthorisationResponse>, Problem> {
    if answer.fingerprint != fingerprint {
        return Err(Authorisation::conflict(&answer.response.id).into());
    }
    Ok(Json(answer.response))
}

/// card-processing's decision within the budget, or a stand-in decline with the event that
/// makes card-processing's record match it.
async fn ask(
    state: &CardApiState,
    a: &Authorisation,
    fingerprint: String,
) -> Result<(Answer, Option<Envelope>), Problem> {
    let mut context =
        RequestContext::current().unwrap_or_else(|| RequestContext::new_root(None, None));
    context.deadline = Some(Instant::now() + state.budget);
    let mut client = state.card_processing.clone();
    let call = client.authorise(AuthoriseRequest {
        processor_authorisation_id: a.processor_authorisation_id.clone(),
        card_token: a.card_token.clone(),
        amount: Some(money::to_proto(a.amount)),
        merchant: Some(Merchant {
            descriptor: a.merchant_descriptor.clone(),
            mcc: a.mcc.clone(),
            country: a.merchant_country.clone(),
            city: a.merchant_city.clone(),
        }),
    });
    let outcome = tokio::time::timeout(state.budget, context.scope(call)).await;
    let error = match outcome {
        Ok(Ok(answer)) => return Ok((decided(a, answer.into_inner(), fingerprint), None)),
        Ok(Err(status)) => Error::from(status),
        Err(_) => Error::timeout("card-processing did not answer within the budget"),
    };
    if matches!(error.class(), ErrorClass::BadRequest | ErrorClass::Conflict) {
        return Err(error.into());
    }
    // The processor needs an answer in time: anything else is a decline, handed on to
    // card-processing so that its record ends the same way.
    let reason = if error.class() == ErrorClass::Timeout {
        "timeout"
    } else {
        "system_error"
    };
    tracing::warn!(
        code = error.code(),
        reason,
        "declining on card-processing's behalf"
    );
    Ok(stand_in(a, reason, fingerprint))
}

/// The answer card-processing decided.
fn decided(a: &Authorisation, answer: AuthoriseResponse, fingerprint: String) -> Answer {
    let approved = answer.decision == Decision::Approved as i32;
    let held = answer.held_amount.unwrap_or_default();
    let response = AuthorisationResponse {
        id: a.processor_authorisation_id.clone(),
        result: if approved { "APPROVED" } else { "DECLINED" }.into(),
        reason: answer.reason,
        approved_amount: if approved { a.amount.minor_units() } else { 0 },
        currency: a.amount.currency().code().into(),
        held_amount: held.minor_units,
        held_currency: held.currency,
        transaction_id: answer.transaction_id,
    };
    Answer {
        response,
        fingerprint,
        stand_in: false,
        event_id: String::new(),
    }
}

/// A decline card-api gives on its own, and the event that hands it to card-processing.
fn stand_in(a: &Authorisation, reason: &str, fingerprint: String) -> (Answer, Option<Envelope>) {
    let event = stand_in_event(&CardAuthorisationStoodIn {
        processor_authorisation_id: a.processor_authorisation_id.clone(),
        card_token: a.card_token.clone(),
        local_amount: Some(money::to_proto(a.amount)),
        merchant_descriptor: a.merchant_descriptor.clone(),
        mcc: a.mcc.clone(),
        merchant_country: a.merchant_country.clone(),
        merchant_city: a.merchant_city.clone(),
        reason: reason.into(),
        answered_at_ms: sterling_storage::now_millis(),
    });
    let answer = Answer {
        response: AuthorisationResponse {
            id: a.processor_authorisation_id.clone(),
            result: "DECLINED".into(),
            reason: reason.into(),
            approved_amount: 0,
            currency: a.amount.currency().code().into(),
            held_amount: 0,
            held_currency: String::new(),
            transaction_id: String::new(),
        },
        fingerprint,
        stand_in: true,
        event_id: event.event_id.clone(),
    };
    (answer, Some(event))
}

/// `GET /v1/authorisations/{id}`: the answer recorded for `id`, signed like a webhook
/// with the path as the payload (`"<t>./v1/authorisations/<id>"`).
pub async fn recorded_answer(
    State(state): State<Arc<CardApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AuthorisationResponse>, Problem> {
    check_signature(
        &state,
        &headers,
        format!("/v1/authorisations/{id}").as_bytes(),
    )?;
    match state.answers.get(&id).await? {
        Some(answer) => Ok(Json(answer.response)),
        None => Err(
            Error::not_found("authorisation", "no answer recorded for that id")
                .with_param("processor_authorisation_id", &id)
                .into(),
        ),
    }
}

/// Any other path.
pub async fn not_found() -> Problem {
    Problem(Error::not_found("route", "no such endpoint"))
}
