//! HTTP handlers of accounts, each for the customer the gateway authenticated: open an account
//! in a currency, list them, read one with its balance, and (in development) top one up from
//! the bank's funding account.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use sterling_proto::balance::v1::balance_client::BalanceClient;
use sterling_proto::cards::v1::cards_client::CardsClient;
use sterling_proto::common::v1::Money;
use sterling_proto::feed::v1::feed_client::FeedClient;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::ledger::v1::{AccountKind, CreateAccountRequest, TransferRequest};
use sterling_proto::push::v1::push_client::PushClient;
use sterling_proto::transactions::v1::transactions_client::TransactionsClient;
use sterling_proto::webhooks::v1::webhooks_client::WebhooksClient;
use sterling_template::client::{GrpcChannel, IDEMPOTENCY_KEY_HEADER};
use sterling_template::error::printable_key;
use sterling_template::identity::Customer;
use sterling_template::server::Problem;
use sterling_template::{Error, money};

use crate::store::{AccountStore, OwnedAccount};

/// What the handlers share.
pub struct AccountsState {
    /// Ownership of accounts.
    pub accounts: AccountStore,
    /// The ledger.
    pub ledger: LedgerClient<GrpcChannel>,
    /// The balance read model, for what customers see.
    pub balances: BalanceClient<GrpcChannel>,
    /// Transactions, for an account's list.
    pub transactions: TransactionsClient<GrpcChannel>,
    /// Cards, issued on and frozen for an account.
    pub cards: CardsClient<GrpcChannel>,
    /// The feed, listed and followed.
    pub feed: FeedClient<GrpcChannel>,
    /// Phones registered for push.
    pub push: PushClient<GrpcChannel>,
    /// Webhooks and their delivery logs.
    pub webhooks: WebhooksClient<GrpcChannel>,
    /// Whether development top-ups are allowed.
    pub top_ups: bool,
    /// The processor secret the development terminal signs with, when it is on.
    pub terminal: Option<Vec<u8>>,
    /// Discovery, where the terminal finds card-api.
    pub discovery: sterling_template::discovery::SharedDiscovery,
    /// HTTP client of the terminal.
    pub http: reqwest::Client,
}

type Shared = State<Arc<AccountsState>>;
/// The customer the gateway authenticated, if any.
pub type Caller = Option<Extension<Customer>>;

/// The currencies the bank holds accounts in.
pub const CURRENCIES: &[&str] = &["GBP", "EUR", "USD"];

/// Largest top-up, in minor units.
const MAX_TOP_UP: i64 = 100_000_000;

/// The authenticated customer's id, or 401.
pub fn customer(caller: &Caller) -> Result<&str, Problem> {
    caller
        .as_ref()
        .map(|Extension(c)| c.id())
        .ok_or_else(|| Problem(Error::unauthorized("customer", "no authenticated customer")))
}

/// The request's `Idempotency-Key`, or 400.
pub fn idempotency_key(headers: &HeaderMap) -> Result<&str, Problem> {
    let key = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    Ok(printable_key("idempotency_key", key)?)
}

/// The JSON body as `T`, or 400.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem(Error::bad_request("json", format!("bad JSON: {e}"))))
}

/// Money as the public API writes it.
pub fn money_json(m: Option<Money>) -> Value {
    let m = m.unwrap_or_default();
    json!({"minor_units": m.minor_units, "currency": m.currency})
}

fn account_json(a: &OwnedAccount) -> Value {
    json!({"account_id": a.account_id, "currency": a.currency})
}

/// The hex SHA-256 of a caller's key: any key fits another service's ids this way.
pub fn key_digest(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// The bank's internal account that funds development top-ups in `currency`.
pub fn funding_account(currency: &str) -> String {
    format!("internal-funding-{}", currency.to_ascii_lowercase())
}

/// What opening an account takes.
#[derive(Deserialize)]
struct Open {
    currency: String,
}

/// `POST /v1/accounts` with an `Idempotency-Key`: 201 and the account.
pub async fn open(
    State(state): Shared,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let customer_id = customer(&caller)?;
    let key = idempotency_key(&headers)?;
    let request: Open = parse(&body)?;
    let currency = money::currency("currency", &request.currency)?;
    if !CURRENCIES.contains(&currency.code()) {
        let why = format!("accounts are held in {}", CURRENCIES.join(", "));
        return Err(Error::bad_request("currency", why).into());
    }
    let account_id = state
        .accounts
        .claim(customer_id, key, currency.code())
        .await?;
    state
        .ledger
        .clone()
        .create_account(CreateAccountRequest {
            account_id: account_id.clone(),
            currency: currency.code().to_string(),
            kind: AccountKind::Customer as i32,
        })
        .await
        .map_err(Error::from)?;
    let account = OwnedAccount {
        account_id,
        customer_id: customer_id.to_string(),
        currency: currency.code().to_string(),
    };
    state.accounts.record(&account).await?;
    tracing::info!(account_id = %account.account_id, "account opened");
    Ok((StatusCode::CREATED, Json(account_json(&account))))
}

/// `GET /v1/accounts`: the customer's accounts.
pub async fn list(State(state): Shared, caller: Caller) -> Result<Json<Value>, Problem> {
    let accounts = state.accounts.list(customer(&caller)?, 100).await?;
    let accounts: Vec<Value> = accounts.iter().map(account_json).collect();
    Ok(Json(json!({ "accounts": accounts })))
}

/// `GET /v1/accounts/{id}`: the account and its balance as the balance read model holds it:
/// settled, pending (`held`), available and spent today, as of the ledger version `version`.
/// An account whose first change has not arrived yet reads as zero at version 0.
pub async fn get(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let account = state
        .accounts
        .owned(customer(&caller)?, &account_id)
        .await?;
    let read = state
        .balances
        .clone()
        .get_balance(sterling_proto::balance::v1::GetBalanceRequest {
            account_id: account.account_id.clone(),
        })
        .await
        .map_err(Error::from);
    let read = match read {
        Ok(read) => read.into_inner(),
        Err(e) if e.code() == "not_found.balance" => {
            let zero = Some(Money {
                minor_units: 0,
                currency: account.currency.clone(),
            });
            sterling_proto::balance::v1::AccountBalance {
                account_id: account.account_id.clone(),
                balance: zero.clone(),
                available: zero.clone(),
                pending: zero.clone(),
                spent_today: zero,
                ..Default::default()
            }
        }
        Err(e) => return Err(e.into()),
    };
    let mut body = account_json(&account);
    body["balance"] = money_json(read.balance);
    body["held"] = money_json(read.pending);
    body["available"] = money_json(read.available);
    body["spent_today"] = money_json(read.spent_today);
    body["version"] = json!(read.version);
    Ok(Json(body))
}

/// What a top-up takes.
#[derive(Deserialize)]
struct TopUp {
    minor_units: serde_json::Number,
}

/// A JSON number as whole minor units: an integer, or a number with no fraction that an
/// `f64` holds exactly (`2500.0` is 2500, as JSON Schema counts it).
pub fn whole_units(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0)
            .map(|f| f as i64)
    })
}

/// `POST /v1/accounts/{id}/top-ups` with an `Idempotency-Key`, in development only: money
/// from the bank's funding account, moved by the ledger once per key.
pub async fn top_up(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    if !state.top_ups {
        return Err(
            Error::forbidden("top_ups", "top-ups are a development feature, off here").into(),
        );
    }
    let customer_id = customer(&caller)?;
    let key = idempotency_key(&headers)?;
    // Whose the account is comes first: another's gets 404 whatever the body says.
    let account = state.accounts.owned(customer_id, &account_id).await?;
    let request: TopUp = parse(&body)?;
    let minor_units = whole_units(&request.minor_units)
        .filter(|m| (1..=MAX_TOP_UP).contains(m))
        .ok_or_else(|| {
            Error::bad_request(
                "amount",
                format!("minor_units is a whole number from 1 to {MAX_TOP_UP}"),
            )
        })?;
    let funding = funding_account(&account.currency);
    let mut ledger = state.ledger.clone();
    ledger
        .create_account(CreateAccountRequest {
            account_id: funding.clone(),
            currency: account.currency.clone(),
            kind: AccountKind::Internal as i32,
        })
        .await
        .map_err(Error::from)?;
    let amount = Money {
        minor_units,
        currency: account.currency.clone(),
    };
    let transfer = ledger
        .transfer(TransferRequest {
            // Scoped by customer (one customer's key never names another's transfer) and
            // hashed, so that any key fits the ledger's ids.
            transfer_id: format!("top-up:{customer_id}:{}", &key_digest(key)[..40]),
            debit_account_id: funding,
            credit_account_id: account.account_id.clone(),
            amount: Some(amount.clone()),
            description: "development top-up".into(),
            force: false,
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    let body = json!({
        "transfer_id": transfer.transfer_id,
        "account_id": account.account_id,
        "amount": money_json(Some(amount)),
    });
    Ok((StatusCode::CREATED, Json(body)))
}
