//! The processor's messages after an authorisation, in the same webhook shape: clearings,
//! reversals, refunds, force posts and incremental authorisations. Each is signed like an
//! authorisation, applied by card-processing at most once per message `id`, and answered from
//! card-processing's record: a repeat gets what was done.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sterling_money::{Currency, Money};
use sterling_proto::cardprocessing::v1::{
    GetPaymentRequest, Merchant, MessageKind, Payment, PaymentMessage, PaymentMessageResult,
};
use sterling_template::context::RequestContext;
use sterling_template::{Error, Result, money};

use crate::handlers::{CardApiState, Problem, check_signature};
use crate::webhook::MerchantDetails;

/// A message about a payment, as the processor sends it. Amounts are integer minor units.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// The processor's id of this message: retries carry the same one.
    pub id: String,
    /// The authorisation it belongs to (required for clearings, reversals and increments).
    #[serde(default)]
    pub authorisation_id: String,
    /// The card (required for refunds and force posts).
    #[serde(default)]
    pub card_token: String,
    /// Minor units of `currency`; a reversal without it releases everything held.
    #[serde(default)]
    pub amount: Option<i64>,
    /// ISO 4217 code, with `amount`.
    #[serde(default)]
    pub currency: Option<String>,
    /// The last clearing of the authorisation: release whatever is still held.
    #[serde(default)]
    pub r#final: bool,
    /// The merchant (refunds, force posts).
    #[serde(default)]
    pub merchant: MerchantDetails,
}

/// A payment as the processor sees it, in the account's currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    /// The authorisation id, or the message id of a refund or force post without one.
    pub id: String,
    /// pending | settled | reversed | expired | refunded | declined
    pub status: String,
    /// Still held.
    pub held: i64,
    /// Posted.
    pub settled: i64,
    /// Given back.
    pub refunded: i64,
    /// The account's currency.
    pub currency: String,
    /// One more with every message applied.
    pub version: i64,
}

/// The answer to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageResponse {
    /// The message id.
    pub id: String,
    /// clearing | reversal | refund | force_post | increment
    pub r#type: String,
    /// `false` only for a declined incremental authorisation.
    pub accepted: bool,
    /// Stable reason code ("approved", "insufficient_funds", ...).
    pub reason: String,
    /// The transaction it shows as.
    pub transaction_id: String,
    /// The account's currency, of the amounts below.
    pub currency: String,
    /// Debited from the account.
    pub posted: i64,
    /// No longer held.
    pub released: i64,
    /// Held in addition.
    pub increased: i64,
    /// Given back.
    pub refunded: i64,
    /// The account is below zero after it.
    pub overdrawn: bool,
    /// The payment afterwards.
    pub payment: PaymentView,
}

fn minor(m: &Option<sterling_proto::common::v1::Money>) -> i64 {
    m.as_ref().map_or(0, |m| m.minor_units)
}

fn payment_view(p: &Payment) -> PaymentView {
    PaymentView {
        id: p.payment_id.clone(),
        status: p.status.clone(),
        held: minor(&p.held),
        settled: minor(&p.settled),
        refunded: minor(&p.refunded),
        currency: p
            .held
            .as_ref()
            .map(|m| m.currency.clone())
            .unwrap_or_default(),
        version: p.version,
    }
}

fn response(r: &PaymentMessageResult, kind: &str) -> MessageResponse {
    let payment = r.payment.clone().unwrap_or_default();
    MessageResponse {
        id: r.message_id.clone(),
        r#type: kind.to_string(),
        accepted: r.accepted,
        reason: r.reason.clone(),
        transaction_id: r.transaction_id.clone(),
        currency: r
            .posted
            .as_ref()
            .map(|m| m.currency.clone())
            .unwrap_or_default(),
        posted: minor(&r.posted),
        released: minor(&r.released),
        increased: minor(&r.increased),
        refunded: minor(&r.refunded),
        overdrawn: r.overdrawn,
        payment: payment_view(&payment),
    }
}

impl MessageRequest {
    /// Parses and validates a body into card-processing's message.
    pub fn parse(body: &[u8], kind: MessageKind) -> Result<PaymentMessage> {
        let r: MessageRequest = serde_json::from_slice(body).map_err(|e| {
            Error::bad_request("json", format!("the body is not a valid message: {e}"))
        })?;
        if r.id.is_empty() || r.id.len() > 128 {
            return Err(Error::bad_request(
                "id",
                "id is required (at most 128 bytes)",
            ));
        }
        let amount = match (r.amount, r.currency.as_deref()) {
            (None, None) => None,
            (Some(amount), Some(code)) => {
                let currency = Currency::from_code(code).map_err(|_| {
                    Error::bad_request("currency", format!("unknown currency {code:?}"))
                })?;
                let amount = Money::from_minor(amount, currency);
                card_processing::authorisation::Authorisation::check_amount(amount)?;
                Some(money::to_proto(amount))
            }
            _ => {
                return Err(Error::bad_request(
                    "amount",
                    "amount and currency go together",
                ));
            }
        };
        Ok(PaymentMessage {
            message_id: r.id,
            kind: kind as i32,
            processor_authorisation_id: r.authorisation_id,
            card_token: r.card_token,
            amount,
            r#final: r.r#final,
            merchant: Some(Merchant {
                descriptor: r.merchant.descriptor,
                mcc: r.merchant.mcc,
                country: r.merchant.country,
                city: r.merchant.city,
            }),
        })
    }
}

/// Sends a message to card-processing within the message budget and answers its record.
async fn apply(
    state: &CardApiState,
    headers: &HeaderMap,
    body: &[u8],
    kind: MessageKind,
    name: &str,
) -> Result<Json<MessageResponse>, Problem> {
    check_signature(state, headers, body)?;
    let message = MessageRequest::parse(body, kind)?;
    let mut context =
        RequestContext::current().unwrap_or_else(|| RequestContext::new_root(None, None));
    context.deadline = Some(Instant::now() + state.message_budget);
    let mut client = state.card_processing.clone();
    let result = context
        .scope(client.apply_payment_message(message))
        .await
        .map_err(Error::from)?
        .into_inner();
    tracing::info!(message_id = %result.message_id, kind = name, accepted = result.accepted, "payment message answered");
    Ok(Json(response(&result, name)))
}

macro_rules! message_route {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $label:literal) => {
        $(#[$doc])*
        pub async fn $name(
            State(state): State<Arc<CardApiState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Result<Json<MessageResponse>, Problem> {
            apply(&state, &headers, &body, $kind, $label).await
        }
    };
}

message_route!(
    /// `POST /v1/clearings`: posts a clearing against its authorisation.
    clearing, MessageKind::Clearing, "clearing"
);
message_route!(
    /// `POST /v1/reversals`: releases an authorisation's hold, or part of it.
    reversal, MessageKind::Reversal, "reversal"
);
message_route!(
    /// `POST /v1/refunds`: money back to the customer.
    refund, MessageKind::Refund, "refund"
);
message_route!(
    /// `POST /v1/force_posts`: a clearing the network approved offline.
    force_post, MessageKind::ForcePost, "force_post"
);
message_route!(
    /// `POST /v1/incremental_authorisations`: more held for an authorisation.
    increment, MessageKind::Increment, "increment"
);

/// `GET /v1/payments/{id}`: where a payment stands, signed like a webhook with the path as the
/// payload.
pub async fn payment(
    State(state): State<Arc<CardApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<PaymentView>, Problem> {
    check_signature(&state, &headers, format!("/v1/payments/{id}").as_bytes())?;
    let mut client = state.card_processing.clone();
    let payment = client
        .get_payment(GetPaymentRequest { payment_id: id })
        .await
        .map_err(Error::from)?
        .into_inner();
    Ok(Json(payment_view(&payment)))
}
