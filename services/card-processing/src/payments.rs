//! The life of a card payment after its authorisation: clearings, reversals, refunds, force
//! posts, incremental authorisations and expiries, each applied at most once per message id.
//!
//! A message goes: claim its id (a repeat finds the claim, a different message under the id
//! is a conflict) -> find the payment it belongs to -> make the change in the ledger, keyed by
//! the message id (so a retry never moves money twice) -> move the payment's state and record
//! the result in one compare-and-set, with its event staged in the outbox first. A crash
//! anywhere leaves the message claimed and unrecorded; the processor's retry finds the ledger
//! change already made and finishes it. A repeat of an applied message returns the recorded
//! result.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use sterling_money::{Currency, Money};
use sterling_proto::cardprocessing::v1::{MessageKind, Payment, PaymentMessageResult};
use sterling_proto::cards::v1::GetCardRequest;
use sterling_proto::fx::v1::ConvertRequest;
use sterling_proto::ledger::v1::{
    AccountKind, CaptureHoldRequest, CreateAccountRequest, GetBalanceRequest, GetHoldRequest,
    HoldStatus, IncreaseHoldRequest, ReduceHoldRequest, TransferRequest,
};
use sterling_template::outbox::Outbox;
use sterling_template::{Error, Result, failpoint, money};

use crate::decide::Decider;
use crate::payment_store::{PaymentState, PaymentStore};
use crate::store::State;

pub use crate::payment_events::{PaymentConfirm, kind_name};

/// A message about a payment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentMessage {
    /// The processor's id: the idempotency key.
    pub message_id: String,
    /// What it is.
    pub kind: MessageKind,
    /// The authorisation it belongs to, if any.
    pub authorisation_id: String,
    /// The card, when given.
    pub card_token: String,
    /// In the merchant's currency; `None` only for a reversal or expiry of everything held.
    pub amount: Option<Money>,
    /// The last clearing.
    pub last: bool,
    /// Merchant descriptor (refunds, force posts).
    pub merchant_descriptor: String,
    /// Merchant category code.
    pub mcc: String,
}

impl PaymentMessage {
    /// The payment it belongs to: the authorisation, or itself.
    pub fn payment_id(&self) -> &str {
        if self.authorisation_id.is_empty() {
            &self.message_id
        } else {
            &self.authorisation_id
        }
    }

    /// SHA-256 over every field, each length-prefixed.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        let amount = self
            .amount
            .map(|m| format!("{} {}", m.minor_units(), m.currency()))
            .unwrap_or_default();
        for field in [
            self.message_id.as_str(),
            kind_name(self.kind),
            self.authorisation_id.as_str(),
            self.card_token.as_str(),
            amount.as_str(),
            if self.last { "final" } else { "" },
            self.merchant_descriptor.as_str(),
            self.mcc.as_str(),
        ] {
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field.as_bytes());
        }
        hex::encode(hash.finalize())
    }

    /// Checks what each kind needs.
    pub fn validate(&self) -> Result<()> {
        let needs_authorisation = matches!(
            self.kind,
            MessageKind::Clearing
                | MessageKind::Reversal
                | MessageKind::Increment
                | MessageKind::Expiry
        );
        if needs_authorisation && self.authorisation_id.is_empty() {
            return Err(Error::bad_request(
                "authorisation_id",
                format!("a {} names its authorisation", kind_name(self.kind)),
            ));
        }
        let needs_card = matches!(self.kind, MessageKind::Refund | MessageKind::ForcePost);
        if needs_card && self.card_token.is_empty() {
            return Err(Error::bad_request(
                "card_token",
                format!("a {} names its card", kind_name(self.kind)),
            ));
        }
        if self.kind == MessageKind::ForcePost && !self.authorisation_id.is_empty() {
            return Err(Error::bad_request(
                "authorisation_id",
                "a force post has no authorisation (send a clearing)",
            ));
        }
        let amount_optional = matches!(self.kind, MessageKind::Reversal | MessageKind::Expiry);
        match self.amount {
            None if !amount_optional => Err(Error::bad_request(
                "amount",
                format!("a {} needs an amount", kind_name(self.kind)),
            )),
            Some(amount) => crate::authorisation::Authorisation::check_amount(amount),
            None => Ok(()),
        }
    }
}

/// Rules of a payment's life.
#[derive(Debug, Clone, Copy)]
pub struct PaymentRules {
    /// How far clearings may exceed what was authorised, in percent (tips, fuel).
    pub over_capture_percent: u32,
}

/// Applies payment messages.
#[derive(Clone)]
pub struct Payments {
    /// The authorisation side: records and the clients of cards, fx and ledger.
    pub decider: Decider,
    /// Payments' data.
    pub store: PaymentStore,
    /// Stages and publishes payment events.
    pub outbox: Outbox,
    /// The rules.
    pub rules: PaymentRules,
    /// Currencies whose settlement account this process knows is open.
    settlement_open: Arc<Mutex<HashSet<Currency>>>,
}

/// The card scheme's settlement account of a currency, where clearings go and refunds come
/// from.
pub fn settlement_account(currency: Currency) -> String {
    format!("scheme-settlement-{}", currency.code().to_ascii_lowercase())
}

/// What a payment message is applied to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) account_id: String,
    pub(crate) currency: Currency,
    pub(crate) card_token: String,
    /// The authorisation was approved: it has a hold to work on.
    pub(crate) approved: bool,
    /// The authorisation's transaction.
    pub(crate) authorisation_transaction_id: String,
    /// What the authorisation held when approved.
    pub(crate) authorised: i64,
    pub(crate) merchant_descriptor: String,
    pub(crate) mcc: String,
}

/// What the ledger did for a message, in the account's currency.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Effect {
    pub(crate) accepted: bool,
    pub(crate) reason: &'static str,
    pub(crate) posted: i64,
    pub(crate) released: i64,
    pub(crate) increased: i64,
    pub(crate) refunded: i64,
    pub(crate) overdrawn: bool,
}

fn ignore_missing_hold(status: tonic::Status) -> Result<()> {
    match status.code() {
        tonic::Code::NotFound => Ok(()),
        _ => Err(status.into()),
    }
}

impl Payments {
    /// Payments over `store`, with the decider's clients, announcing through `outbox`.
    pub fn new(decider: Decider, store: PaymentStore, outbox: Outbox, rules: PaymentRules) -> Self {
        Payments {
            decider,
            store,
            outbox,
            rules,
            settlement_open: Arc::default(),
        }
    }

    /// Applies `m` at most once; a repeat returns what was done.
    pub async fn apply(&self, m: &PaymentMessage) -> Result<PaymentMessageResult> {
        m.validate()?;
        let claim = self
            .store
            .claim_message(&m.message_id, &m.fingerprint(), m.payment_id())
            .await?;
        if let Some(result) = self.store.result(&claim.payment_id, &m.message_id).await? {
            return Ok(result);
        }
        let target = self.target(m).await?;
        let local = m.amount;
        let amount = match m.amount {
            Some(amount) => Some(self.in_account_currency(amount, target.currency).await?),
            None => None,
        };
        let effect = self.ledger_effect(m, &target, amount).await?;
        failpoint::step("card_processing::payment::after_ledger").await?;
        let transaction_id = match m.kind {
            MessageKind::Refund | MessageKind::ForcePost => claim.transaction_id,
            _ => target.authorisation_transaction_id.clone(),
        };
        self.record(m, &claim.payment_id, &target, effect, local, transaction_id)
            .await
    }

    /// Where a payment stands.
    pub async fn payment(&self, payment_id: &str) -> Result<Payment> {
        let state = self.store.payment(payment_id).await?.ok_or_else(|| {
            Error::not_found("payment", "no message was applied to that payment")
                .with_param("payment_id", payment_id)
        })?;
        Ok(payment_message(&state))
    }

    /// The account and hold a message works on.
    async fn target(&self, m: &PaymentMessage) -> Result<Target> {
        if m.authorisation_id.is_empty() {
            return self.card_target(&m.card_token, m).await;
        }
        let record = match self.decider.store.record(&m.authorisation_id).await? {
            Some(record) => record,
            None => self.first_of_its_authorisation(m).await?,
        };
        if !m.card_token.is_empty()
            && !record.authorisation.card_token.is_empty()
            && m.card_token != record.authorisation.card_token
        {
            return Err(Error::bad_request(
                "card_token",
                "the message's card is not the authorisation's",
            ));
        }
        let decision = match &record.state {
            State::Decided(decision) => decision.clone(),
            State::Processing { .. } => {
                return Err(Error::unavailable(
                    "authorisation_in_progress",
                    "the authorisation is still being decided; retry",
                ));
            }
        };
        let mut target = if decision.approved {
            Target {
                account_id: decision.account_id.clone(),
                currency: money::currency("held currency", &decision.held_currency)?,
                card_token: record.authorisation.card_token.clone(),
                approved: true,
                authorisation_transaction_id: decision.transaction_id.clone(),
                authorised: decision.held_amount,
                merchant_descriptor: record.authorisation.merchant_descriptor.clone(),
                mcc: record.authorisation.mcc.clone(),
            }
        } else {
            // Declined (or closed unseen): nothing is held; a clearing still posts.
            let card = if m.card_token.is_empty() {
                record.authorisation.card_token.clone()
            } else {
                m.card_token.clone()
            };
            let mut target = self.card_target(&card, m).await?;
            target.authorisation_transaction_id = decision.transaction_id.clone();
            target
        };
        if target.merchant_descriptor.is_empty() {
            target.merchant_descriptor = m.merchant_descriptor.clone();
            target.mcc = m.mcc.clone();
        }
        Ok(target)
    }

    /// A message for an authorisation never seen: the authorisation is closed declined first,
    /// so that a request arriving after its reversal or clearing can never hold funds.
    async fn first_of_its_authorisation(&self, m: &PaymentMessage) -> Result<crate::store::Record> {
        if m.kind == MessageKind::Increment {
            return Err(Error::not_found("authorisation", "no such authorisation")
                .with_param("processor_authorisation_id", &m.authorisation_id));
        }
        let amount = match m.amount {
            Some(amount) => amount,
            // A full reversal names no amount: nothing of it is known but the card's currency.
            None if !m.card_token.is_empty() => {
                let card = self.card_target(&m.card_token, m).await?;
                Money::from_minor(0, card.currency)
            }
            None => {
                return Err(Error::bad_request(
                    "amount",
                    "a message for an authorisation not seen needs its amount or its card",
                ));
            }
        };
        let reason = match m.kind {
            MessageKind::Reversal | MessageKind::Expiry => "reversed_before_authorisation",
            _ => "cleared_without_authorisation",
        };
        tracing::warn!(processor_authorisation_id = %m.authorisation_id, reason, "message before its authorisation");
        self.decider
            .store
            .close_unseen(&m.authorisation_id, &m.card_token, amount, reason)
            .await
    }

    /// The account of a card, for a message with no approved authorisation.
    async fn card_target(&self, card_token: &str, m: &PaymentMessage) -> Result<Target> {
        if card_token.is_empty() {
            return Err(Error::bad_request(
                "card_token",
                "no approved authorisation: the message must name its card",
            ));
        }
        let card = self
            .decider
            .cards
            .clone()
            .get_card(GetCardRequest {
                token: card_token.to_string(),
            })
            .await?
            .into_inner();
        Ok(Target {
            account_id: card.account_id,
            currency: money::currency("card currency", &card.currency)?,
            card_token: card_token.to_string(),
            approved: false,
            authorisation_transaction_id: String::new(),
            authorised: 0,
            merchant_descriptor: m.merchant_descriptor.clone(),
            mcc: m.mcc.clone(),
        })
    }

    /// `amount` in the account's currency, at today's rate.
    async fn in_account_currency(&self, amount: Money, currency: Currency) -> Result<Money> {
        if amount.currency() == currency {
            return Ok(amount);
        }
        let converted = self
            .decider
            .fx
            .clone()
            .convert(ConvertRequest {
                amount: Some(money::to_proto(amount)),
                to_currency: currency.code().to_string(),
            })
            .await?
            .into_inner();
        let converted = money::from_proto("converted", converted.converted.as_ref())?;
        Ok(Money::from_minor(converted.minor_units().max(1), currency))
    }

    /// Opens the settlement account of `currency` once per process (idempotent in the ledger).
    async fn settlement(&self, currency: Currency) -> Result<String> {
        let id = settlement_account(currency);
        let known = self
            .settlement_open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&currency);
        if !known {
            self.decider
                .ledger
                .clone()
                .create_account(CreateAccountRequest {
                    account_id: id.clone(),
                    currency: currency.code().to_string(),
                    kind: AccountKind::Internal as i32,
                })
                .await?;
            self.settlement_open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(currency);
        }
        Ok(id)
    }

    /// The ledger change of a message, keyed by its id.
    async fn ledger_effect(
        &self,
        m: &PaymentMessage,
        target: &Target,
        amount: Option<Money>,
    ) -> Result<Effect> {
        let mut ledger = self.decider.ledger.clone();
        let hold_id = m.payment_id().to_string();
        let account_id = target.account_id.clone();
        let amount_proto = amount.map(money::to_proto);
        let accepted = Effect {
            accepted: true,
            reason: "approved",
            ..Effect::default()
        };
        let minor = |m: Option<sterling_proto::common::v1::Money>| m.map_or(0, |m| m.minor_units);
        match m.kind {
            MessageKind::Clearing => {
                let counter_account_id = self.settlement(target.currency).await?;
                let change = ledger
                    .capture_hold(CaptureHoldRequest {
                        change_id: m.message_id.clone(),
                        hold_id,
                        account_id,
                        amount: amount_proto,
                        counter_account_id,
                        r#final: m.last,
                        // The ledger holds the clearings of an approval to the tolerance,
                        // atomically with the capture (racing clearings included).
                        over_capture_percent: target
                            .approved
                            .then_some(self.rules.over_capture_percent),
                    })
                    .await?
                    .into_inner();
                Ok(Effect {
                    posted: minor(change.posted),
                    released: minor(change.released),
                    overdrawn: change.overdrawn,
                    ..accepted
                })
            }
            MessageKind::Reversal | MessageKind::Expiry if target.approved => {
                let change = ledger
                    .reduce_hold(ReduceHoldRequest {
                        change_id: m.message_id.clone(),
                        hold_id,
                        account_id,
                        amount: amount_proto,
                    })
                    .await?
                    .into_inner();
                Ok(Effect {
                    released: minor(change.released),
                    ..accepted
                })
            }
            MessageKind::Reversal | MessageKind::Expiry => Ok(accepted),
            MessageKind::Increment => self.increment(m, target, amount).await,
            MessageKind::Refund | MessageKind::ForcePost => {
                self.move_money(m, target, amount_proto).await
            }
            MessageKind::Unspecified => Err(Error::bad_request("kind", "unknown message kind")),
        }
    }

    /// A refund (settlement account to customer) or a force post (customer to settlement
    /// account, even below zero), as a ledger transfer keyed by the message id.
    async fn move_money(
        &self,
        m: &PaymentMessage,
        target: &Target,
        amount: Option<sterling_proto::common::v1::Money>,
    ) -> Result<Effect> {
        let mut ledger = self.decider.ledger.clone();
        let settlement = self.settlement(target.currency).await?;
        let refund = m.kind == MessageKind::Refund;
        let (debit, credit) = if refund {
            (settlement, target.account_id.clone())
        } else {
            (target.account_id.clone(), settlement)
        };
        let minor = amount.as_ref().map_or(0, |m| m.minor_units);
        ledger
            .transfer(TransferRequest {
                transfer_id: format!("{}:{}", kind_name(m.kind), m.message_id),
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                description: format!("card {} {}", kind_name(m.kind), m.merchant_descriptor),
                force: !refund,
            })
            .await?;
        let accepted = Effect {
            accepted: true,
            reason: "approved",
            ..Effect::default()
        };
        if refund {
            return Ok(Effect {
                refunded: minor,
                ..accepted
            });
        }
        let balance = ledger
            .get_balance(GetBalanceRequest {
                account_id: target.account_id.clone(),
            })
            .await?
            .into_inner();
        Ok(Effect {
            posted: minor,
            overdrawn: balance.available.map_or(0, |m| m.minor_units) < 0,
            ..accepted
        })
    }

    /// An incremental authorisation: more held if funds allow, a decline otherwise.
    async fn increment(
        &self,
        m: &PaymentMessage,
        target: &Target,
        amount: Option<Money>,
    ) -> Result<Effect> {
        if !target.approved {
            return Ok(Effect {
                accepted: false,
                reason: "authorisation_declined",
                ..Effect::default()
            });
        }
        let outcome = self
            .decider
            .ledger
            .clone()
            .increase_hold(IncreaseHoldRequest {
                change_id: m.message_id.clone(),
                hold_id: m.payment_id().to_string(),
                account_id: target.account_id.clone(),
                amount: amount.map(money::to_proto),
            })
            .await;
        match outcome {
            Ok(change) => Ok(Effect {
                accepted: true,
                reason: "approved",
                increased: change.into_inner().increased.map_or(0, |m| m.minor_units),
                ..Effect::default()
            }),
            Err(status) => {
                let error = Error::from(status);
                let reason = match error.code() {
                    "precondition_failed.insufficient_funds" => "insufficient_funds",
                    "precondition_failed.hold_released" => "authorisation_closed",
                    _ => return Err(error),
                };
                Ok(Effect {
                    accepted: false,
                    reason,
                    ..Effect::default()
                })
            }
        }
    }

    /// What the hold of an approved authorisation still reserves.
    pub(crate) async fn held_now(&self, payment_id: &str, target: &Target) -> Result<i64> {
        if !target.approved {
            return Ok(0);
        }
        let outcome = self
            .decider
            .ledger
            .clone()
            .get_hold(GetHoldRequest {
                hold_id: payment_id.to_string(),
                account_id: target.account_id.clone(),
            })
            .await;
        match outcome {
            Ok(hold) => {
                let hold = hold.into_inner();
                Ok(if hold.status == HoldStatus::Active as i32 {
                    hold.remaining.map_or(0, |m| m.minor_units)
                } else {
                    0
                })
            }
            Err(status) => ignore_missing_hold(status).map(|()| 0),
        }
    }
}

/// A payment as the contract shows it.
pub fn payment_message(state: &PaymentState) -> Payment {
    Payment {
        payment_id: state.payment_id.clone(),
        account_id: state.account_id.clone(),
        transaction_id: state.transaction_id.clone(),
        held: Some(money::to_proto(state.money(state.held))),
        settled: Some(money::to_proto(state.money(state.settled))),
        refunded: Some(money::to_proto(state.money(state.refunded))),
        status: state.status.clone(),
        version: state.version,
    }
}
