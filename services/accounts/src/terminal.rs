//! A card terminal for development: the customer pays with their own card, and the payment
//! goes the processor's way, a signed authorisation to card-api, so the whole path runs
//! (decision, hold, feed, push, webhooks). Off unless `development_terminal` is set; the
//! processor's secret is `processor_secret`, card-api's own `secret`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use sterling_proto::cards::v1::GetCardRequest;
use sterling_template::Error;
use sterling_template::discovery::Protocol;
use sterling_template::server::Problem;

use crate::handlers::{
    AccountsState, Caller, customer, idempotency_key, key_digest, parse, whole_units,
};

type Shared = State<Arc<AccountsState>>;

/// What the terminal takes: an amount in the account's currency, and optionally a merchant.
#[derive(Deserialize)]
struct Sale {
    minor_units: serde_json::Number,
    #[serde(default, deserialize_with = "present")]
    merchant: Option<String>,
}

/// A field that may be left out but, if given, is a string (`null` is refused).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// Largest terminal sale, in minor units.
const MAX_SALE: i64 = 1_000_000;

/// `POST /v1/accounts/{id}/cards/{token}/terminal` with an `Idempotency-Key`: card-api's
/// answer (`decision`, `reason`, `transaction_id`); a repeat is the same authorisation.
pub async fn pay(
    State(state): Shared,
    caller: Caller,
    Path((account_id, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let Some(secret) = state.terminal.as_ref() else {
        let why = "the card terminal is a development feature, off here";
        return Err(Error::forbidden("terminal", why).into());
    };
    let customer_id = customer(&caller)?;
    let key = idempotency_key(&headers)?;
    let account = state.accounts.owned(customer_id, &account_id).await?;
    let not_found = || Problem(Error::not_found("card", "no such card on this account"));
    let card = state
        .cards
        .clone()
        .get_card(GetCardRequest {
            token: token.clone(),
        })
        .await
        .map_err(|_| not_found())?
        .into_inner();
    if card.account_id != account.account_id {
        return Err(not_found());
    }
    let sale: Sale = parse(&body)?;
    let minor_units = whole_units(&sale.minor_units)
        .filter(|m| (1..=MAX_SALE).contains(m))
        .ok_or_else(|| {
            let why = format!("minor_units is a whole number from 1 to {MAX_SALE}");
            Problem(Error::bad_request("amount", why))
        })?;
    if let Some(merchant) = &sale.merchant
        && (merchant.is_empty()
            || merchant.len() > 64
            || !merchant.chars().all(|c| c.is_ascii_graphic() || c == ' '))
    {
        let why = "merchant is 1 to 64 printable ASCII characters";
        return Err(Error::bad_request("merchant", why).into());
    }
    let authorisation = json!({
        "id": format!("terminal-{}", &key_digest(&format!("{customer_id}:{key}"))[..32]),
        "card_token": card.token,
        "amount": minor_units,
        "currency": account.currency,
        "merchant": {
            "descriptor": sale.merchant.as_deref().unwrap_or("PRET A MANGER LONDON GB"),
            "mcc": "5814",
            "country": "GB",
            "city": "London",
        },
    });
    let answer = send(&state, secret, &authorisation).await?;
    Ok(Json(json!({
        "decision": answer["result"],
        "reason": answer["reason"],
        "transaction_id": answer["transaction_id"],
    })))
}

/// Posts a signed authorisation to a card-api instance found in discovery.
async fn send(state: &AccountsState, secret: &[u8], authorisation: &Value) -> Result<Value, Error> {
    let instances = state.discovery.resolve("card-api").await?;
    let card_api = instances
        .iter()
        .find(|r| r.protocol == Protocol::Http)
        .ok_or_else(|| Error::unavailable("no_instances", "card-api is not running"))?;
    let body = serde_json::to_vec(authorisation).map_err(|e| Error::internal(e.to_string()))?;
    let now = sterling_storage::now_millis() / 1000;
    let signature = sterling_signature::sign(secret, now, &body);
    let answer = state
        .http
        .post(format!("http://{}/v1/authorisations", card_api.address))
        .header("content-type", "application/json")
        .header(sterling_signature::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map_err(|_| Error::unavailable("card_api", "card-api cannot be reached"))?;
    let status = answer.status();
    let answer: Value = answer
        .json()
        .await
        .map_err(|_| Error::unavailable("card_api", "card-api's answer broke off"))?;
    let detail = answer["detail"]
        .as_str()
        .unwrap_or("card-api refused the authorisation");
    match status.as_u16() {
        200 => Ok(answer),
        400 => Err(Error::bad_request("authorisation", detail)),
        // The same key with another sale: card-api's id is taken by a different one.
        409 => Err(Error::conflict("authorisation", detail)),
        _ => Err(Error::unavailable("card_api", "card-api did not decide")),
    }
}
