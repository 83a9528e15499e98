//! Recording what a payment message did, and announcing it: `card.payment.*` events
//! (`CardPaymentUpdated`), staged in the outbox before the payment's compare-and-set and
//! published once it applied. The relay asks [`PaymentConfirm`] about an event staged by a
//! process that died: published only if the message's recorded result names it.

use async_trait::async_trait;
use prost::Message;
use sterling_bus::Envelope;
use sterling_money::Money;
use sterling_proto::cardprocessing::v1::{MessageKind, PaymentMessageResult};
use sterling_proto::event_types as types;
use sterling_proto::events::v1::CardPaymentUpdated;
use sterling_storage::now_millis;
use sterling_template::outbox::{self, Confirm, Verdict};
use sterling_template::{Error, Result, failpoint, money};

use crate::payment_store::{PaymentState, PaymentStore};
use crate::payments::{Effect, PaymentMessage, Payments, Target, payment_message};

/// How many compare-and-set rounds recording a message may take.
const MAX_ROUNDS: usize = 100;

/// The name of a message kind, as events and fingerprints carry it.
pub fn kind_name(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Clearing => "clearing",
        MessageKind::Reversal => "reversal",
        MessageKind::Refund => "refund",
        MessageKind::ForcePost => "force_post",
        MessageKind::Increment => "increment",
        MessageKind::Expiry => "expiry",
        MessageKind::Unspecified => "unspecified",
    }
}

fn event_type(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Clearing => types::CARD_PAYMENT_CLEARED,
        MessageKind::Reversal => types::CARD_PAYMENT_REVERSED,
        MessageKind::Refund => types::CARD_PAYMENT_REFUNDED,
        MessageKind::ForcePost => types::CARD_PAYMENT_FORCE_POSTED,
        MessageKind::Increment => types::CARD_PAYMENT_INCREMENTED,
        MessageKind::Expiry | MessageKind::Unspecified => types::CARD_PAYMENT_EXPIRED,
    }
}

/// Where a payment stands after a message: still holding, settled (and maybe refunded), a
/// refund of its own, or closed without money moving (reversed, expired, declined).
fn status_after(before: &str, kind: MessageKind, approved: bool, s: &PaymentState) -> String {
    let status = if s.held > 0 {
        "pending"
    } else if s.settled > 0 {
        if s.refunded >= s.settled {
            "refunded"
        } else {
            "settled"
        }
    } else if kind == MessageKind::Expiry || before == "expired" {
        "expired"
    } else if kind == MessageKind::Refund && !before.is_empty() {
        // Money back on a payment that settled nothing (reversed, declined) changes
        // nothing of it: the refund is a transaction of its own.
        before
    } else if s.refunded > 0 {
        "refunded"
    } else if !approved {
        "declined"
    } else {
        "reversed"
    };
    status.to_string()
}

impl Payments {
    /// Moves the payment by `effect` and records the result with its event, retrying while
    /// other messages of the same payment move it first.
    pub(crate) async fn record(
        &self,
        m: &PaymentMessage,
        payment_id: &str,
        target: &Target,
        effect: Effect,
        local: Option<Money>,
        transaction_id: String,
    ) -> Result<PaymentMessageResult> {
        for _ in 0..MAX_ROUNDS {
            let before = self.store.payment(payment_id).await?;
            let held = self.held_now(payment_id, target).await?;
            let mut after = before.clone().unwrap_or(PaymentState {
                payment_id: payment_id.to_string(),
                account_id: target.account_id.clone(),
                currency: target.currency,
                transaction_id: if target.authorisation_transaction_id.is_empty() {
                    transaction_id.clone()
                } else {
                    target.authorisation_transaction_id.clone()
                },
                held: 0,
                settled: 0,
                refunded: 0,
                authorised: target.authorised,
                status: String::new(),
                version: 0,
            });
            let overflow = || Error::bad_request("amount", "amount out of range");
            after.held = held;
            after.settled = after
                .settled
                .checked_add(effect.posted)
                .ok_or_else(overflow)?;
            after.refunded = after
                .refunded
                .checked_add(effect.refunded)
                .ok_or_else(overflow)?;
            after.authorised = after
                .authorised
                .checked_add(effect.increased)
                .ok_or_else(overflow)?;
            after.status = status_after(&after.status, m.kind, target.approved, &after);
            after.version += 1;
            let result = result(m, &after, &effect, local, &transaction_id);
            let event = event(m, target, &after, &effect, &result);
            self.outbox.stage(&event).await?;
            failpoint::step("card_processing::payment::before_record").await?;
            if self
                .store
                .record(&after, &m.message_id, &result, &event.event_id)
                .await?
            {
                self.outbox.publish_soon(event);
                tracing::info!(message_id = %m.message_id, kind = kind_name(m.kind), status = %after.status, "payment message applied");
                return Ok(result);
            }
            self.outbox.discard(&event).await?;
            // Lost the compare-and-set: another message moved the payment, or this one was
            // recorded by a racing repeat.
            if let Some(recorded) = self.store.result(payment_id, &m.message_id).await? {
                return Ok(recorded);
            }
        }
        Err(Error::unavailable(
            "contention",
            "too many messages at once for this payment; retry",
        ))
    }
}

fn result(
    m: &PaymentMessage,
    after: &PaymentState,
    effect: &Effect,
    local: Option<Money>,
    transaction_id: &str,
) -> PaymentMessageResult {
    let money = |minor: i64| Some(money::to_proto(after.money(minor)));
    PaymentMessageResult {
        message_id: m.message_id.clone(),
        kind: m.kind as i32,
        accepted: effect.accepted,
        reason: effect.reason.to_string(),
        posted: money(effect.posted),
        released: money(effect.released),
        increased: money(effect.increased),
        refunded: money(effect.refunded),
        local_amount: local.map(money::to_proto),
        payment: Some(payment_message(after)),
        overdrawn: effect.overdrawn,
        transaction_id: transaction_id_of(m, after, transaction_id),
    }
}

/// A refund or force post shows as a transaction of its own; the rest as the authorisation's.
fn transaction_id_of(m: &PaymentMessage, after: &PaymentState, own: &str) -> String {
    match m.kind {
        MessageKind::Refund | MessageKind::ForcePost => own.to_string(),
        _ => after.transaction_id.clone(),
    }
}

fn event(
    m: &PaymentMessage,
    target: &Target,
    after: &PaymentState,
    effect: &Effect,
    result: &PaymentMessageResult,
) -> Envelope {
    let money = |minor: i64| Some(money::to_proto(after.money(minor)));
    let amount = match m.kind {
        MessageKind::Clearing | MessageKind::ForcePost => effect.posted,
        MessageKind::Reversal | MessageKind::Expiry => effect.released,
        MessageKind::Increment => effect.increased,
        MessageKind::Refund => effect.refunded,
        MessageKind::Unspecified => 0,
    };
    let payload = CardPaymentUpdated {
        message_id: m.message_id.clone(),
        kind: kind_name(m.kind).to_string(),
        payment_id: after.payment_id.clone(),
        processor_authorisation_id: m.authorisation_id.clone(),
        account_id: after.account_id.clone(),
        card_token: target.card_token.clone(),
        transaction_id: result.transaction_id.clone(),
        authorisation_transaction_id: target.authorisation_transaction_id.clone(),
        amount: money(amount),
        local_amount: result.local_amount.clone(),
        held: money(after.held),
        settled: money(after.settled),
        refunded: money(after.refunded),
        status: after.status.clone(),
        payment_version: after.version,
        overdrawn: effect.overdrawn,
        merchant_descriptor: target.merchant_descriptor.clone(),
        mcc: target.mcc.clone(),
        occurred_at_ms: now_millis(),
        accepted: effect.accepted,
    };
    outbox::event(event_type(m.kind), &payload)
}

/// Tells the outbox relay whether a staged payment event stands: only if its message's
/// recorded result names it.
pub struct PaymentConfirm {
    /// card-processing's payments.
    pub store: PaymentStore,
}

#[async_trait]
impl Confirm for PaymentConfirm {
    async fn confirm(&self, envelope: &Envelope) -> Result<Verdict> {
        let event = CardPaymentUpdated::decode(envelope.payload.as_slice())
            .map_err(|e| Error::internal(format!("staged event is not a payment update: {e}")))?;
        match self
            .store
            .event_id(&event.payment_id, &event.message_id)
            .await?
        {
            Some(id) if id == envelope.event_id => Ok(Verdict::Publish),
            Some(_) => Ok(Verdict::Discard),
            // Not recorded: the process died before its compare-and-set, or lost it to a
            // racing message and will retry with a new event. The processor's retry records
            // the message with an event of its own, so this one never goes out.
            None => Ok(Verdict::Discard),
        }
    }
}
