//! What hangs off a customer's account in the public API: its transactions (newest first, a
//! page at a time) and its cards (issue, freeze, unfreeze). Each handler first checks the
//! account is the authenticated customer's; a card is reached only through its account.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sterling_proto::cards::v1::{
    Card, CardStatus, FreezeCardRequest, GetCardRequest, IssueCardRequest, UnfreezeCardRequest,
};
use sterling_proto::transactions::v1::{ListTransactionsRequest, Transaction, TransactionStatus};
use sterling_template::Error;
use sterling_template::server::Problem;

use crate::handlers::{AccountsState, Caller, customer, idempotency_key, key_digest, money_json};

type Shared = State<Arc<AccountsState>>;

/// Largest page of transactions.
pub const MAX_PAGE: u32 = 100;

/// Whether `text` has the shape of the cursors this API gives: a lower-case hyphenated UUID.
fn is_cursor(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// `TRANSACTION_STATUS_PENDING` -> `pending`.
fn status_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

fn transaction_json(t: Transaction) -> Value {
    let status = TransactionStatus::try_from(t.status)
        .map(|s| status_name(s.as_str_name(), "TRANSACTION_STATUS_"))
        .unwrap_or_default();
    json!({
        "transaction_id": t.transaction_id,
        "amount": money_json(t.amount),
        "local_amount": money_json(t.local_amount),
        "merchant": {
            "descriptor": t.merchant_descriptor,
            "name": t.merchant_name,
            "category": t.category,
            "mcc": t.mcc,
        },
        "status": status,
        "kind": if t.kind.is_empty() { "card_payment".to_string() } else { t.kind },
        "created_at_ms": t.created_at_ms,
    })
}

fn card_json(c: Card) -> Value {
    let status = CardStatus::try_from(c.status)
        .map(|s| status_name(s.as_str_name(), "CARD_STATUS_"))
        .unwrap_or_default();
    json!({
        "card_token": c.token,
        "account_id": c.account_id,
        "currency": c.currency,
        "last_four": c.last_four,
        "status": status,
    })
}

/// A page request.
#[derive(Deserialize)]
pub struct Page {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A page's size (20 unless asked, at most [`MAX_PAGE`]) and cursor (empty for the first), or
/// 400.
pub fn page_of(page: Page) -> Result<(u32, String), Problem> {
    let limit = page.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        let why = format!("limit is from 1 to {MAX_PAGE}");
        return Err(Error::bad_request("limit", why).into());
    }
    let cursor = match page.cursor {
        None => String::new(),
        Some(cursor) if is_cursor(&cursor) => cursor,
        Some(_) => return Err(Error::bad_request("cursor", "not a cursor this API gave").into()),
    };
    Ok((limit, cursor))
}

/// `GET /v1/accounts/{id}/transactions?limit=&cursor=`: newest first; `next_cursor` is empty
/// on the last page.
pub async fn transactions(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, Problem> {
    let account = state
        .accounts
        .owned(customer(&caller)?, &account_id)
        .await?;
    let (limit, cursor) = page_of(page)?;
    let listed = state
        .transactions
        .clone()
        .list_transactions(ListTransactionsRequest {
            account_id: account.account_id,
            limit,
            page_token: cursor,
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    let transactions: Vec<Value> = listed
        .transactions
        .into_iter()
        .map(transaction_json)
        .collect();
    Ok(Json(json!({
        "transactions": transactions,
        "next_cursor": listed.next_page_token,
    })))
}

/// `POST /v1/accounts/{id}/cards` with an `Idempotency-Key`: 201 and a new card on the
/// account (the same card for a repeat).
pub async fn issue_card(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    _body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let customer_id = customer(&caller)?;
    let key = idempotency_key(&headers)?;
    let account = state.accounts.owned(customer_id, &account_id).await?;
    let card = state
        .cards
        .clone()
        .issue_card(IssueCardRequest {
            // Scoped by customer and hashed, like top-ups.
            idempotency_key: format!(
                "card:{}",
                &key_digest(&format!("{customer_id}:{key}"))[..40]
            ),
            account_id: account.account_id,
            currency: account.currency,
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    Ok((StatusCode::CREATED, Json(card_json(card))))
}

/// `POST /v1/accounts/{id}/cards/{token}/freeze`: declined until unfrozen; idempotent.
pub async fn freeze_card(
    state: Shared,
    caller: Caller,
    Path((account_id, token)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    set_frozen(state, caller, account_id, token, true).await
}

/// `POST /v1/accounts/{id}/cards/{token}/unfreeze`: usable again; idempotent.
pub async fn unfreeze_card(
    state: Shared,
    caller: Caller,
    Path((account_id, token)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    set_frozen(state, caller, account_id, token, false).await
}

async fn set_frozen(
    State(state): Shared,
    caller: Caller,
    account_id: String,
    token: String,
    frozen: bool,
) -> Result<Json<Value>, Problem> {
    let account = state
        .accounts
        .owned(customer(&caller)?, &account_id)
        .await?;
    let mut cards = state.cards.clone();
    let not_found = || Problem(Error::not_found("card", "no such card on this account"));
    let card = cards
        .get_card(GetCardRequest {
            token: token.clone(),
        })
        .await
        .map_err(|s| match Error::from(s) {
            e if e.class() == sterling_template::ErrorClass::NotFound => not_found(),
            e if e.class() == sterling_template::ErrorClass::BadRequest => not_found(),
            e => Problem(e),
        })?
        .into_inner();
    if card.account_id != account.account_id {
        return Err(not_found());
    }
    let card = if frozen {
        cards.freeze_card(FreezeCardRequest { token }).await
    } else {
        cards.unfreeze_card(UnfreezeCardRequest { token }).await
    }
    .map_err(Error::from)?
    .into_inner();
    Ok(Json(card_json(card)))
}
