//! What the command line does against a running bank: seed a customer, play the card processor,
//! freeze cards, read balances and transactions.

use std::time::{Duration, Instant};
use sterling_proto::cardprocessing::v1::card_processing_client::CardProcessingClient;

use sterling_money::{Currency, Money};
use sterling_proto::cards::v1::cards_client::CardsClient;
use sterling_proto::cards::v1::{Card, FreezeCardRequest, IssueCardRequest, UnfreezeCardRequest};
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::ledger::v1::{
    AccountKind, Balance, CreateAccountRequest, GetBalanceRequest, TransferRequest,
};
use sterling_proto::transactions::v1::transactions_client::TransactionsClient;
use sterling_proto::transactions::v1::{ListTransactionsRequest, Transaction};
use sterling_template::client::GrpcChannel;

use crate::operate::Reach;
use sterling_template::{Error, money};

/// Typed clients for the services the tools use.
#[derive(Clone)]
pub struct Clients {
    /// ledger.
    pub ledger: LedgerClient<GrpcChannel>,
    /// cards.
    pub cards: CardsClient<GrpcChannel>,
    /// transactions.
    pub transactions: TransactionsClient<GrpcChannel>,
    /// card-processing.
    pub card_processing: CardProcessingClient<GrpcChannel>,
}

impl Clients {
    /// Connects to the bank `bank` reaches, calling as the operator.
    pub async fn connect(bank: &Reach) -> anyhow::Result<Clients> {
        let timeout = Duration::from_secs(5);
        let channel = |service| bank.channel_with(service, timeout);
        Ok(Clients {
            ledger: LedgerClient::new(channel(sterling_proto::ledger::v1::LEDGER_SERVICE).await?),
            cards: CardsClient::new(channel(sterling_proto::cards::v1::CARDS_SERVICE).await?),
            transactions: TransactionsClient::new(
                channel(sterling_proto::transactions::v1::TRANSACTIONS_SERVICE).await?,
            ),
            card_processing: CardProcessingClient::new(
                channel(sterling_proto::cardprocessing::v1::CARD_PROCESSING_SERVICE).await?,
            ),
        })
    }
}

/// A seeded customer.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// The customer's ledger account.
    pub account_id: String,
    /// A card on it.
    pub card: Card,
    /// Money put in.
    pub funded: Money,
}

/// The bank's internal account that funds test customers in `currency`.
pub fn funding_account(currency: Currency) -> String {
    format!("internal-funding-{}", currency.code().to_ascii_lowercase())
}

/// Opens a customer account, funds it from the bank's funding account and issues a card.
/// `key` makes it idempotent: the same key gives the same account and card.
pub async fn seed(clients: &Clients, key: &str, funded: Money) -> Result<Seeded, Error> {
    let currency = funded.currency();
    let mut ledger = clients.ledger.clone();
    ledger
        .create_account(CreateAccountRequest {
            account_id: funding_account(currency),
            currency: currency.code().into(),
            kind: AccountKind::Internal as i32,
        })
        .await?;
    let account_id = format!("acc-{key}");
    ledger
        .create_account(CreateAccountRequest {
            account_id: account_id.clone(),
            currency: currency.code().into(),
            kind: AccountKind::Customer as i32,
        })
        .await?;
    if funded.minor_units() > 0 {
        ledger
            .transfer(TransferRequest {
                transfer_id: format!("seed-{key}"),
                debit_account_id: funding_account(currency),
                credit_account_id: account_id.clone(),
                amount: Some(money::to_proto(funded)),
                description: "test customer funding".into(),
                force: false,
            })
            .await?;
    }
    let card = clients
        .cards
        .clone()
        .issue_card(IssueCardRequest {
            idempotency_key: format!("seed-{key}"),
            account_id: account_id.clone(),
            currency: currency.code().into(),
        })
        .await?
        .into_inner();
    Ok(Seeded {
        account_id,
        card,
        funded,
    })
}

/// Freezes or unfreezes a card.
pub async fn set_frozen(clients: &Clients, token: &str, frozen: bool) -> Result<Card, Error> {
    let mut cards = clients.cards.clone();
    let card = if frozen {
        cards
            .freeze_card(FreezeCardRequest {
                token: token.into(),
            })
            .await?
    } else {
        cards
            .unfreeze_card(UnfreezeCardRequest {
                token: token.into(),
            })
            .await?
    };
    Ok(card.into_inner())
}

/// An account's balance.
pub async fn balance(clients: &Clients, account_id: &str) -> Result<Balance, Error> {
    Ok(clients
        .ledger
        .clone()
        .get_balance(GetBalanceRequest {
            account_id: account_id.into(),
        })
        .await?
        .into_inner())
}

/// An account's latest transactions.
pub async fn transactions(
    clients: &Clients,
    account_id: &str,
    limit: u32,
) -> Result<Vec<Transaction>, Error> {
    Ok(clients
        .transactions
        .clone()
        .list_transactions(ListTransactionsRequest {
            account_id: account_id.into(),
            limit,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .transactions)
}

/// What the processor got back.
#[derive(Debug, Clone)]
pub struct PayOutcome {
    /// HTTP status.
    pub status: u16,
    /// The JSON body (a decision or a problem document).
    pub body: serde_json::Value,
    /// Wall time of the round trip.
    pub latency: Duration,
}

/// Plays the card processor: signs the authorisation and POSTs it to card-api.
pub async fn pay(
    http: &reqwest::Client,
    card_api_url: &str,
    secret: &[u8],
    request: &serde_json::Value,
    request_id: Option<&str>,
) -> anyhow::Result<PayOutcome> {
    let body = serde_json::to_vec(request)?;
    pay_raw(http, card_api_url, secret, body, request_id).await
}

/// As [`pay`], with the body as raw bytes (to send malformed JSON on purpose).
pub async fn pay_raw(
    http: &reqwest::Client,
    card_api_url: &str,
    secret: &[u8],
    body: Vec<u8>,
    request_id: Option<&str>,
) -> anyhow::Result<PayOutcome> {
    post_signed(
        http,
        card_api_url,
        "/v1/authorisations",
        secret,
        body,
        request_id,
    )
    .await
}

/// Plays the card processor for a later message (`path`: `/v1/clearings`, `/v1/reversals`,
/// `/v1/refunds`, `/v1/force_posts`, `/v1/incremental_authorisations`).
pub async fn send_message(
    http: &reqwest::Client,
    card_api_url: &str,
    path: &str,
    secret: &[u8],
    message: &serde_json::Value,
) -> anyhow::Result<PayOutcome> {
    let body = serde_json::to_vec(message)?;
    post_signed(http, card_api_url, path, secret, body, None).await
}

/// A signed GET of card-api's records (`/v1/authorisations/{id}`, `/v1/payments/{id}`): the
/// path is the signed payload.
pub async fn get_signed(
    http: &reqwest::Client,
    card_api_url: &str,
    path: &str,
    secret: &[u8],
) -> anyhow::Result<PayOutcome> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let started = Instant::now();
    let response = http
        .get(format!("{card_api_url}{path}"))
        .header(
            card_api::signature::SIGNATURE_HEADER,
            card_api::signature::sign(secret, now, path.as_bytes()),
        )
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.json::<serde_json::Value>().await?;
    Ok(PayOutcome {
        status,
        body,
        latency: started.elapsed(),
    })
}

/// Signs `body` as the processor does and POSTs it to card-api at `path`.
pub async fn post_signed(
    http: &reqwest::Client,
    card_api_url: &str,
    path: &str,
    secret: &[u8],
    body: Vec<u8>,
    request_id: Option<&str>,
) -> anyhow::Result<PayOutcome> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let signature = card_api::signature::sign(secret, now, &body);
    let mut post = http
        .post(format!("{card_api_url}{path}"))
        .header("content-type", "application/json")
        .header(card_api::signature::SIGNATURE_HEADER, signature)
        .body(body);
    if let Some(id) = request_id {
        post = post.header("x-request-id", id);
    }
    let started = Instant::now();
    let response = post.send().await?;
    let status = response.status().as_u16();
    let body = response.json::<serde_json::Value>().await?;
    Ok(PayOutcome {
        status,
        body,
        latency: started.elapsed(),
    })
}

/// The JSON body of an authorisation request.
pub fn authorisation_json(
    id: &str,
    card_token: &str,
    amount: Money,
    merchant: &str,
    mcc: &str,
) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "card_token": card_token,
        "amount": amount.minor_units(),
        "currency": amount.currency().code(),
        "merchant": { "descriptor": merchant, "mcc": mcc, "country": "GB", "city": "London" },
    })
}
