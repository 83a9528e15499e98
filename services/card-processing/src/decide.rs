//! The authorisation decision: card, currency, hold, pending transaction, approve or decline.

use std::time::Duration;

use prost::Message;
use rust_decimal::Decimal;
use sterling_money::Money;
use sterling_proto::cards::v1::cards_client::CardsClient;
use sterling_proto::cards::v1::{CardStatus, GetCardRequest};
use sterling_proto::events::types;
use sterling_proto::events::v1::CardAuthorisationDecided;
use sterling_proto::fx::v1::ConvertRequest;
use sterling_proto::fx::v1::fx_client::FxClient;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::ledger::v1::{PlaceHoldRequest, ReleaseHoldRequest};
use sterling_proto::transactions::v1::transactions_client::TransactionsClient;
use sterling_proto::transactions::v1::{
    RecordPendingRequest, ReleaseTransactionRequest, Transaction, TransactionStatus,
};
use sterling_template::client::GrpcChannel;
use sterling_template::context::RequestContext;
use sterling_template::outbox::{self, Confirm, Outbox, Verdict};
use sterling_template::{Error, Result, money};

use crate::storage::{AuthorisationStore, Claim, Decision};

/// Largest authorisation accepted, in major units of any currency.
pub const MAX_MAJOR_UNITS: i64 = 1_000_000;

/// Budget for deciding when the caller set no deadline.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(100);

/// Time kept back from the caller's deadline to answer with a decline rather than be late.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(5);

/// Stable decline and approval reasons.
pub mod reason {
    /// Approved.
    pub const APPROVED: &str = "approved";
    /// No card with that token.
    pub const CARD_NOT_FOUND: &str = "card_not_found";
    /// The card is frozen.
    pub const CARD_FROZEN: &str = "card_frozen";
    /// Available funds are below the amount.
    pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";
    /// No rate for the merchant's currency.
    pub const CURRENCY_NOT_SUPPORTED: &str = "currency_not_supported";
    /// The decision could not be made in time.
    pub const TIMEOUT: &str = "timeout";
    /// A dependency failed.
    pub const SYSTEM_ERROR: &str = "system_error";
}

/// A request to authorise, validated.
#[derive(Debug, Clone)]
pub struct Authorisation {
    /// The processor's id: the idempotency key.
    pub processor_authorisation_id: String,
    /// Card token.
    pub card_token: String,
    /// Amount as the merchant charges it.
    pub amount: Money,
    /// Merchant descriptor.
    pub merchant_descriptor: String,
    /// Merchant category code.
    pub mcc: String,
    /// Merchant country (ISO 3166 alpha-2).
    pub merchant_country: String,
    /// Merchant city.
    pub merchant_city: String,
}

impl Authorisation {
    fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.card_token,
            self.amount.minor_units(),
            self.amount.currency(),
            self.merchant_descriptor,
            self.mcc
        )
    }

    /// Checks the amount is positive and not absurd.
    pub fn check_amount(amount: Money) -> Result<()> {
        if amount.minor_units() <= 0 {
            return Err(Error::bad_request("amount", "amount must be positive"));
        }
        if amount.to_decimal() > Decimal::from(MAX_MAJOR_UNITS) {
            return Err(Error::bad_request(
                "amount",
                format!(
                    "amount above the limit of {MAX_MAJOR_UNITS} {}",
                    amount.currency()
                ),
            ));
        }
        Ok(())
    }
}

/// Makes authorisation decisions.
#[derive(Clone)]
pub struct Decider {
    /// Authorisation records.
    pub store: AuthorisationStore,
    /// cards client.
    pub cards: CardsClient<GrpcChannel>,
    /// fx client.
    pub fx: FxClient<GrpcChannel>,
    /// ledger client.
    pub ledger: LedgerClient<GrpcChannel>,
    /// transactions client.
    pub transactions: TransactionsClient<GrpcChannel>,
    /// Where decision events are staged and published from.
    pub outbox: Outbox,
}

fn declined(a: &Authorisation, reason: &str, account_id: &str, transaction_id: &str) -> Decision {
    Decision {
        processor_authorisation_id: a.processor_authorisation_id.clone(),
        approved: false,
        reason: reason.to_string(),
        account_id: account_id.to_string(),
        held_amount: 0,
        held_currency: String::new(),
        transaction_id: transaction_id.to_string(),
        event_id: String::new(),
    }
}

fn reason_for(error: &Error) -> &'static str {
    match error.code() {
        "not_found.card" => reason::CARD_NOT_FOUND,
        "precondition_failed.insufficient_funds" => reason::INSUFFICIENT_FUNDS,
        "precondition_failed.currency_not_supported" => reason::CURRENCY_NOT_SUPPORTED,
        "precondition_failed.card_frozen" => reason::CARD_FROZEN,
        "timeout" => reason::TIMEOUT,
        _ => reason::SYSTEM_ERROR,
    }
}

/// The event announcing a decision.
fn decision_event(a: &Authorisation, d: &Decision) -> sterling_bus::Envelope {
    let payload = CardAuthorisationDecided {
        processor_authorisation_id: a.processor_authorisation_id.clone(),
        card_token: a.card_token.clone(),
        account_id: d.account_id.clone(),
        approved: d.approved,
        reason: d.reason.clone(),
        amount: (!d.held_currency.is_empty()).then_some(sterling_proto::common::v1::Money {
            minor_units: d.held_amount,
            currency: d.held_currency.clone(),
        }),
        local_amount: Some(money::to_proto(a.amount)),
        merchant_descriptor: a.merchant_descriptor.clone(),
        mcc: a.mcc.clone(),
        transaction_id: d.transaction_id.clone(),
        merchant_country: a.merchant_country.clone(),
        merchant_city: a.merchant_city.clone(),
        decided_at_ms: sterling_storage::now_millis(),
    };
    let event_type = if d.approved {
        types::CARD_AUTHORISATION_APPROVED
    } else {
        types::CARD_AUTHORISATION_DECLINED
    };
    outbox::event(event_type, &payload)
}

/// Tells the outbox relay whether a staged decision event stands.
pub struct DecisionConfirm {
    /// Authorisation records.
    pub store: AuthorisationStore,
}

#[async_trait::async_trait]
impl Confirm for DecisionConfirm {
    async fn confirm(&self, envelope: &sterling_bus::Envelope) -> Result<Verdict> {
        let event = CardAuthorisationDecided::decode(envelope.payload.as_slice())
            .map_err(|e| Error::internal(format!("staged event is not a decision: {e}")))?;
        match self.store.decision(&event.processor_authorisation_id).await {
            Ok(Some(d)) if d.event_id == envelope.event_id => Ok(Verdict::Publish),
            Ok(Some(_)) => Ok(Verdict::Discard),
            Ok(None) => Ok(Verdict::Wait),
            Err(e) if e.class() == "not_found" => Ok(Verdict::Discard),
            Err(e) => Err(e),
        }
    }
}

impl Decider {
    /// Decides, once per processor authorisation id: repeats get the stored decision.
    pub async fn authorise(&self, a: &Authorisation) -> Result<Decision> {
        let context = RequestContext::current();
        let budget = context
            .as_ref()
            .and_then(RequestContext::remaining)
            .unwrap_or(DEFAULT_BUDGET)
            .saturating_sub(ANSWER_MARGIN);
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            let claim = self
                .store
                .claim(
                    &a.processor_authorisation_id,
                    &a.fingerprint(),
                    &a.card_token,
                    a.amount.minor_units(),
                    a.amount.currency().code(),
                )
                .await?;
            match claim {
                Claim::Decided(decision) => return Ok(decision),
                Claim::Won {
                    claim,
                    transaction_id,
                } => {
                    let mut decision = self.decide(a, &transaction_id, deadline).await;
                    // Stage the announcement before recording the decision it announces.
                    let event = decision_event(a, &decision);
                    decision.event_id = event.event_id.clone();
                    self.outbox.stage(&event).await?;
                    let stored = self.store.decide(&claim, decision).await?;
                    if stored.event_id == event.event_id {
                        self.outbox.publish_soon(event);
                    } else {
                        self.outbox.discard(&event).await?;
                    }
                    tracing::info!(
                        approved = stored.approved,
                        reason = %stored.reason,
                        "authorisation decided"
                    );
                    return Ok(stored);
                }
                Claim::InProgress => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::timeout("the authorisation is still being decided"));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }

    async fn decide(
        &self,
        a: &Authorisation,
        transaction_id: &str,
        deadline: tokio::time::Instant,
    ) -> Decision {
        let mut account_id = String::new();
        let steps = self.steps(a, transaction_id, &mut account_id);
        match tokio::time::timeout_at(deadline, steps).await {
            Ok(Ok(decision)) => decision,
            Ok(Err((error, hold_maybe_placed))) => {
                tracing::info!(code = error.code(), "declining");
                if hold_maybe_placed {
                    self.release_in_background(a, &account_id, transaction_id);
                }
                declined(a, reason_for(&error), &account_id, transaction_id)
            }
            Err(_) => {
                tracing::warn!("deadline reached; declining and releasing");
                if !account_id.is_empty() {
                    self.release_in_background(a, &account_id, transaction_id);
                }
                declined(a, reason::TIMEOUT, &account_id, transaction_id)
            }
        }
    }

    /// The synchronous path. On error, says whether a hold may have been placed.
    async fn steps(
        &self,
        a: &Authorisation,
        transaction_id: &str,
        account_id_out: &mut String,
    ) -> std::result::Result<Decision, (Error, bool)> {
        let card = self
            .cards
            .clone()
            .get_card(GetCardRequest {
                token: a.card_token.clone(),
            })
            .await
            .map_err(|s| (Error::from(s), false))?
            .into_inner();
        *account_id_out = card.account_id.clone();
        if card.status != CardStatus::Active as i32 {
            return Err((
                Error::precondition_failed("card_frozen", "card is frozen"),
                false,
            ));
        }
        let account_currency =
            money::currency("card currency", &card.currency).map_err(|e| (e, false))?;
        let held = if account_currency == a.amount.currency() {
            a.amount
        } else {
            let converted = self
                .fx
                .clone()
                .convert(ConvertRequest {
                    amount: Some(money::to_proto(a.amount)),
                    to_currency: account_currency.code().to_string(),
                })
                .await
                .map_err(|s| (Error::from(s), false))?
                .into_inner();
            money::positive_from_proto("converted", converted.converted.as_ref())
                .map_err(|e| (e, false))?
        };
        self.ledger
            .clone()
            .place_hold(PlaceHoldRequest {
                hold_id: a.processor_authorisation_id.clone(),
                account_id: card.account_id.clone(),
                amount: Some(money::to_proto(held)),
            })
            .await
            .map_err(|s| {
                let e = Error::from(s);
                // A definite refusal placed nothing; anything else might have.
                let placed = !matches!(
                    e.class(),
                    "precondition_failed" | "bad_request" | "not_found" | "conflict"
                );
                (e, placed)
            })?;
        self.transactions
            .clone()
            .record_pending(RecordPendingRequest {
                transaction: Some(Transaction {
                    transaction_id: transaction_id.to_string(),
                    account_id: card.account_id.clone(),
                    authorisation_id: a.processor_authorisation_id.clone(),
                    amount: Some(money::to_proto(held)),
                    local_amount: Some(money::to_proto(a.amount)),
                    merchant_descriptor: a.merchant_descriptor.clone(),
                    mcc: a.mcc.clone(),
                    status: TransactionStatus::Pending as i32,
                    created_at_ms: 0,
                    card_token: a.card_token.clone(),
                    ..Transaction::default()
                }),
            })
            .await
            .map_err(|s| (Error::from(s), true))?;
        Ok(Decision {
            processor_authorisation_id: a.processor_authorisation_id.clone(),
            approved: true,
            reason: reason::APPROVED.to_string(),
            account_id: card.account_id,
            held_amount: held.minor_units(),
            held_currency: held.currency().code().to_string(),
            transaction_id: transaction_id.to_string(),
            event_id: String::new(),
        })
    }

    /// Undoes whatever a declined authorisation may have done, outside the request's deadline:
    /// releases the hold and the pending transaction, retrying until both services confirm.
    /// A release that arrives before its placement leaves a tombstone, so a placement still in
    /// flight can never land afterwards.
    fn release_in_background(&self, a: &Authorisation, account_id: &str, transaction_id: &str) {
        let mut ledger = self.ledger.clone();
        let mut transactions = self.transactions.clone();
        let hold = ReleaseHoldRequest {
            hold_id: a.processor_authorisation_id.clone(),
            account_id: account_id.to_string(),
        };
        let transaction = ReleaseTransactionRequest {
            transaction_id: transaction_id.to_string(),
            account_id: account_id.to_string(),
            authorisation_id: a.processor_authorisation_id.clone(),
        };
        let mut context =
            RequestContext::current().unwrap_or_else(|| RequestContext::new_root(None, None));
        context.deadline = None;
        tokio::spawn(context.scope(async move {
            let mut backoff = Duration::from_millis(20);
            let (mut hold_done, mut transaction_done) = (false, false);
            for _ in 0..12 {
                if !hold_done {
                    hold_done = ledger.release_hold(hold.clone()).await.is_ok();
                }
                if !transaction_done {
                    transaction_done = transactions
                        .release_transaction(transaction.clone())
                        .await
                        .is_ok();
                }
                if hold_done && transaction_done {
                    tracing::info!(hold_id = %hold.hold_id, "released after decline");
                    return;
                }
                tracing::warn!(hold_done, transaction_done, "release incomplete; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            tracing::error!(hold_id = %hold.hold_id, "could not release after decline");
        }));
    }
}
