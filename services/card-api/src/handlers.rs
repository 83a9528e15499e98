//! HTTP handlers of card-api.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sterling_proto::cardprocessing::v1::card_processing_client::CardProcessingClient;
use sterling_proto::cardprocessing::v1::{AuthoriseRequest, Decision, Merchant};
use sterling_template::client::GrpcChannel;
use sterling_template::context::RequestContext;
use sterling_template::{Error, money};

use crate::webhook::{AuthorisationRequest, AuthorisationResponse};
use sterling_template::signature::{self, SIGNATURE_HEADER, SignatureError};

/// What the handlers share.
pub struct CardApiState {
    /// Shared secret for webhook signatures.
    pub secret: Vec<u8>,
    /// Budget given to card-processing for one decision.
    pub budget: Duration,
    /// card-processing client.
    pub card_processing: CardProcessingClient<GrpcChannel>,
}

/// An error answered as `application/problem+json`.
pub struct Problem(pub Error);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.0.problem_json(&RequestContext::current_request_id());
        let mut response = (self.0.http_status(), Json(body)).into_response();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        Problem(e)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// `POST /v1/authorisations`: verify the signature, validate, ask card-processing within the
/// budget, answer approve or decline.
pub async fn authorise(
    State(state): State<Arc<CardApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AuthorisationResponse>, Problem> {
    let started = Instant::now();
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    signature::verify(&state.secret, header, &body, unix_now()).map_err(|e| {
        let why = match e {
            SignatureError::Malformed => "missing or malformed signature",
            SignatureError::Stale => "signature timestamp outside the tolerance",
            SignatureError::Mismatch => "signature does not match",
        };
        Error::unauthorized("signature", why)
    })?;
    let (request, amount) = AuthorisationRequest::parse(&body)?;
    let mut context =
        RequestContext::current().unwrap_or_else(|| RequestContext::new_root(None, None));
    context.deadline = Some(Instant::now() + state.budget);
    let mut client = state.card_processing.clone();
    let call = client.authorise(AuthoriseRequest {
        processor_authorisation_id: request.id.clone(),
        card_token: request.card_token.clone(),
        amount: Some(money::to_proto(amount)),
        merchant: Some(Merchant {
            descriptor: request.merchant.descriptor.clone(),
            mcc: request.merchant.mcc.clone(),
            country: request.merchant.country.clone(),
            city: request.merchant.city.clone(),
        }),
    });
    let response = match context.scope(call).await {
        Ok(answer) => {
            let answer = answer.into_inner();
            let approved = answer.decision == Decision::Approved as i32;
            let held = answer.held_amount.unwrap_or_default();
            AuthorisationResponse {
                id: request.id,
                result: if approved { "APPROVED" } else { "DECLINED" }.into(),
                reason: answer.reason,
                approved_amount: if approved { amount.minor_units() } else { 0 },
                currency: amount.currency().code().into(),
                held_amount: held.minor_units,
                held_currency: held.currency,
                transaction_id: answer.transaction_id,
            }
        }
        Err(status) => {
            let error = Error::from(status);
            if matches!(error.class(), "bad_request" | "conflict") {
                return Err(error.into());
            }
            // The processor needs an answer in time: anything else is a decline.
            tracing::warn!(code = error.code(), "declining after card-processing error");
            AuthorisationResponse {
                id: request.id,
                result: "DECLINED".into(),
                reason: if error.class() == "timeout" {
                    "timeout"
                } else {
                    "system_error"
                }
                .into(),
                approved_amount: 0,
                currency: amount.currency().code().into(),
                held_amount: 0,
                held_currency: String::new(),
                transaction_id: String::new(),
            }
        }
    };
    tracing::info!(
        result = %response.result,
        reason = %response.reason,
        latency_us = started.elapsed().as_micros() as u64,
        "authorisation answered"
    );
    Ok(Json(response))
}

/// Any other path.
pub async fn not_found() -> Problem {
    Problem(Error::not_found("route", "no such endpoint"))
}

/// `GET /healthz`.
pub async fn healthz() -> StatusCode {
    StatusCode::OK
}
