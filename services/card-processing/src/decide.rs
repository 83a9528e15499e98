//! The authorisation decision: card, currency, hold, pending transaction, approve or decline.
//!
//! The rules it keeps, whatever is slow, cancelled, repeated or killed:
//! 1. one decision per processor authorisation id, and every caller gets it;
//! 2. approved means a hold and a pending transaction exist; declined means whatever was
//!    placed gets released (here, or by the sweeper in [`crate::recovery`]);
//! 3. the ledger alone decides whether funds suffice, atomically;
//! 4. the saga runs detached from the caller's future, so a dropped caller never cuts it
//!    half-way; at the deadline the caller declines through the same compare-and-set the saga
//!    approves through, and exactly one of them wins.

use std::time::{Duration, Instant};

use prost::Message;
use sterling_money::Money;
use sterling_proto::cards::v1::cards_client::CardsClient;
use sterling_proto::cards::v1::{CardStatus, GetCardRequest};
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardAuthorisationDecided;
use sterling_proto::fx::v1::ConvertRequest;
use sterling_proto::fx::v1::fx_client::FxClient;
use sterling_proto::ledger::v1::PlaceHoldRequest;
use sterling_proto::ledger::v1::ledger_client::LedgerClient;
use sterling_proto::transactions::v1::transactions_client::TransactionsClient;
use sterling_proto::transactions::v1::{RecordPendingRequest, Transaction, TransactionStatus};
use sterling_storage::now_millis;
use sterling_template::client::GrpcChannel;
use sterling_template::context::RequestContext;
use sterling_template::outbox;
use sterling_template::{Error, Result, failpoint, money};
use tracing::Instrument;

use crate::announce::Announcer;
pub use crate::authorisation::{Authorisation, MAX_MAJOR_UNITS};
use crate::store::{AuthorisationStore, Claim, Decision, From, Record, State};

/// Budget for deciding when the caller set no deadline.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(100);

/// Least time kept back from the caller's deadline to answer with a decline rather than be
/// late; a tenth of the budget when that is more.
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
    /// Publishes decision events.
    pub announcer: Announcer,
}

/// A decline of `a` for `reason`.
pub fn declined(
    a: &Authorisation,
    reason: &str,
    account_id: &str,
    transaction_id: &str,
) -> Decision {
    Decision {
        processor_authorisation_id: a.processor_authorisation_id.clone(),
        approved: false,
        reason: reason.to_string(),
        account_id: account_id.to_string(),
        held_amount: 0,
        held_currency: String::new(),
        transaction_id: transaction_id.to_string(),
        event_id: String::new(),
        reversed: false,
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
        decided_at_ms: now_millis(),
        reversed: d.reversed,
    };
    let event_type = if d.approved {
        types::CARD_AUTHORISATION_APPROVED
    } else {
        types::CARD_AUTHORISATION_DECLINED
    };
    outbox::event(event_type, &payload)
}

/// The caller's budget: its remaining deadline (or the default), less the answer margin.
fn budget() -> Duration {
    let remaining = RequestContext::current()
        .as_ref()
        .and_then(RequestContext::remaining)
        .unwrap_or(DEFAULT_BUDGET);
    remaining.saturating_sub(ANSWER_MARGIN.max(remaining / 10))
}

impl Decider {
    /// Decides, once per processor authorisation id: every caller gets the decision that
    /// stands, a timeout decline included.
    pub async fn authorise(&self, a: &Authorisation) -> Result<Decision> {
        let budget = budget();
        let deadline = Instant::now() + budget;
        let deadline_at = now_millis() + budget.as_millis() as i64;
        // The claim's compare-and-set reports the record that stands (a conflict under
        // another fingerprint), so a first request needs no read before it.
        let record = match self.store.claim(a, deadline_at).await? {
            Claim::Won {
                claim,
                transaction_id,
            } => return self.decide(a, claim, transaction_id, deadline).await,
            Claim::Taken(record) => *record,
        };
        match record.state {
            State::Decided(decision) => Ok(decision),
            State::Processing { .. } => self.await_decision(a, &record, deadline).await,
        }
    }

    /// Runs the saga detached and waits for it until the deadline; then declines through
    /// the compare-and-set the saga approves through.
    async fn decide(
        &self,
        a: &Authorisation,
        claim: String,
        transaction_id: String,
        deadline: Instant,
    ) -> Result<Decision> {
        let (answer, decided) = tokio::sync::oneshot::channel();
        let saga = self.clone();
        let request = a.clone();
        let transaction = transaction_id.clone();
        let context =
            RequestContext::current().unwrap_or_else(|| RequestContext::new_root(None, None));
        tokio::spawn(
            context
                .scope(async move {
                    let outcome = saga.saga(&request, claim, &transaction, deadline).await;
                    let _ = answer.send(outcome);
                })
                .in_current_span(),
        );
        match tokio::time::timeout_at(deadline.into(), decided).await {
            Ok(Ok(outcome)) => outcome,
            // The deadline passed, or the saga died (a panic): decline unless it decided.
            _ => {
                self.decline_undecided(a, &transaction_id, reason::TIMEOUT)
                    .await
            }
        }
    }

    /// A second caller of an id being decided: waits for the decision until its own
    /// deadline, then declines it unless it was decided meanwhile.
    async fn await_decision(
        &self,
        a: &Authorisation,
        record: &Record,
        deadline: Instant,
    ) -> Result<Decision> {
        // Polls the store: the saga may run in another process.
        let mut pause = Duration::from_millis(2);
        while Instant::now() + pause < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
            if let Some(decision) = self.store.decision(&a.processor_authorisation_id).await? {
                return Ok(decision);
            }
        }
        self.decline_undecided(a, &record.transaction_id, reason::TIMEOUT)
            .await
    }

    /// Declines `a` if it is still being decided; returns the decision that stands.
    pub async fn decline_undecided(
        &self,
        a: &Authorisation,
        transaction_id: &str,
        reason: &str,
    ) -> Result<Decision> {
        let decision = declined(a, reason, "", transaction_id);
        let stored = self.settle(a, &From::AnyClaim, decision).await?;
        tracing::warn!(approved = stored.approved, reason = %stored.reason, "deadline reached; this decision stands");
        Ok(stored)
    }

    /// Moves `a` to `decision` if its record is still in the state `from` expects, the
    /// announcement written in the same compare-and-set, then published. Returns the decision
    /// that stands, whoever won. A decline that stands is compensated.
    pub async fn settle(
        &self,
        a: &Authorisation,
        from: &From,
        decision: Decision,
    ) -> Result<Decision> {
        let mut decision = decision;
        let event = decision_event(a, &decision);
        decision.event_id = event.event_id.clone();
        failpoint::step("card_processing::settle::before_write").await?;
        let won = self
            .store
            .settle(from, &decision, event.encode_to_vec())
            .await?;
        failpoint::step("card_processing::settle::after_write").await?;
        if won {
            metrics::counter!(
                "sterling_card_authorisations_total",
                "decision" => if decision.approved { "approved" } else { "declined" },
                "reason" => decision.reason.clone(),
                "acceptance" => if is_acceptance(a) { "true" } else { "false" },
            )
            .increment(1);
            self.announcer.publish_soon(event);
            if decision.approved {
                tracing::info!(approved = true, "authorisation decided");
                return Ok(decision);
            }
        }
        // A decline, or someone else's decision: read what stands (and the request as stored,
        // which compensation goes by).
        let record = self
            .store
            .record(&a.processor_authorisation_id)
            .await?
            .ok_or_else(|| Error::internal("settled authorisation has no record"))?;
        let Some(stored) = record.decision().cloned() else {
            return Err(Error::unavailable(
                "authorisation_in_progress",
                "authorisation is being decided",
            ));
        };
        if !stored.approved {
            self.compensate_soon(record);
        }
        tracing::info!(approved = stored.approved, reason = %stored.reason, won, "authorisation decided");
        Ok(stored)
    }

    /// The saga: every step within the deadline, then the decision through the claim's
    /// compare-and-set.
    async fn saga(
        &self,
        a: &Authorisation,
        claim: String,
        transaction_id: &str,
        deadline: Instant,
    ) -> Result<Decision> {
        let mut account_id = String::new();
        let steps = self.steps(a, transaction_id, &mut account_id);
        let decision = match tokio::time::timeout_at(deadline.into(), steps).await {
            Ok(Ok(decision)) => decision,
            Ok(Err(error)) => {
                tracing::info!(code = error.code(), "declining");
                declined(a, reason_for(&error), &account_id, transaction_id)
            }
            Err(_) => declined(a, reason::TIMEOUT, &account_id, transaction_id),
        };
        self.settle(a, &From::Claim(claim), decision).await
    }

    /// The synchronous path.
    async fn steps(
        &self,
        a: &Authorisation,
        transaction_id: &str,
        account_id_out: &mut String,
    ) -> Result<Decision> {
        failpoint::step("card_processing::saga::start").await?;
        let card = self
            .cards
            .clone()
            .get_card(GetCardRequest {
                token: a.card_token.clone(),
            })
            .await?
            .into_inner();
        account_id_out.clone_from(&card.account_id);
        if card.status != CardStatus::Active as i32 {
            return Err(Error::precondition_failed("card_frozen", "card is frozen"));
        }
        let held = self.held_amount(a, &card.currency).await?;
        failpoint::step("card_processing::saga::before_hold").await?;
        self.ledger
            .clone()
            .place_hold(PlaceHoldRequest {
                hold_id: a.processor_authorisation_id.clone(),
                account_id: card.account_id.clone(),
                amount: Some(money::to_proto(held)),
            })
            .await?;
        failpoint::step("card_processing::saga::after_hold").await?;
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
            .await?;
        failpoint::step("card_processing::saga::after_transaction").await?;
        Ok(Decision {
            processor_authorisation_id: a.processor_authorisation_id.clone(),
            approved: true,
            reason: reason::APPROVED.to_string(),
            account_id: card.account_id,
            held_amount: held.minor_units(),
            held_currency: held.currency().code().to_string(),
            transaction_id: transaction_id.to_string(),
            event_id: String::new(),
            reversed: false,
        })
    }

    /// The amount to hold in the account's currency. A positive amount that converts to
    /// less than one minor unit holds one: a hold never reserves nothing.
    async fn held_amount(&self, a: &Authorisation, account_currency: &str) -> Result<Money> {
        let account_currency = money::currency("card currency", account_currency)?;
        if account_currency == a.amount.currency() {
            return Ok(a.amount);
        }
        let converted = self
            .fx
            .clone()
            .convert(ConvertRequest {
                amount: Some(money::to_proto(a.amount)),
                to_currency: account_currency.code().to_string(),
            })
            .await?
            .into_inner();
        let converted = money::from_proto("converted", converted.converted.as_ref())?;
        if converted.currency() != account_currency || converted.minor_units() < 0 {
            return Err(Error::internal("fx answered an unusable conversion"));
        }
        Ok(Money::from_minor(
            converted.minor_units().max(1),
            account_currency,
        ))
    }
}

/// The merchant descriptor of acceptance payments (`sterling-acceptance` pays as this
/// merchant), which business metrics leave out with `acceptance="false"`.
pub const ACCEPTANCE_MERCHANT: &str = "STERLING ACCEPTANCE";

/// Whether `a` is an acceptance payment: made by the acceptance runner against the real bank,
/// to be counted apart from customers' payments.
fn is_acceptance(a: &Authorisation) -> bool {
    a.merchant_descriptor.starts_with(ACCEPTANCE_MERCHANT)
}
