//! Generated code for Sterling's contracts in `proto/`: one module per package.
#![allow(missing_docs, clippy::all)]

/// The encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sterling_descriptor.bin"));

// One module per package, `sterling::<name>::<version>` (`cards::v1`), generated from the
// contracts found under proto/.
include!(concat!(env!("OUT_DIR"), "/packages.rs"));

/// The account an event is about, read from its payload: a card decision's, a card
/// payment update's or an enrichment's; `None` for any other event, one without an account,
/// or one that does not decode. Consumers handle one account's events in order by it.
pub fn account_of(envelope: &events::v1::Envelope) -> Option<String> {
    use events::v1::{CardAuthorisationDecided, CardPaymentUpdated, TransactionEnriched};
    use prost::Message;
    let payload = envelope.payload.as_slice();
    let account_id = match envelope.r#type.as_str() {
        event_types::CARD_AUTHORISATION_APPROVED | event_types::CARD_AUTHORISATION_DECLINED => {
            CardAuthorisationDecided::decode(payload).ok()?.account_id
        }
        t if t.starts_with("card.payment.") => CardPaymentUpdated::decode(payload).ok()?.account_id,
        event_types::TRANSACTION_ENRICHED => TransactionEnriched::decode(payload).ok()?.account_id,
        _ => return None,
    };
    Some(account_id).filter(|a| !a.is_empty())
}

/// Event types, which are also the bus subjects.
pub mod event_types {
    /// A card authorisation was approved (`CardAuthorisationDecided`).
    pub const CARD_AUTHORISATION_APPROVED: &str = "card.authorisation.approved";
    /// A card authorisation was declined (`CardAuthorisationDecided`).
    pub const CARD_AUTHORISATION_DECLINED: &str = "card.authorisation.declined";
    /// Every card decision, as a subject filter.
    pub const CARD_AUTHORISATION_ALL: &str = "card.authorisation.*";
    /// card-api declined on its own, without card-processing's decision
    /// (`CardAuthorisationStoodIn`); card-processing makes its record match. Outside
    /// `card.authorisation.*` on purpose: it is a command to card-processing, not news.
    pub const CARD_AUTHORISATION_STOOD_IN: &str = "card.stand_in.declined";
    /// A transaction's merchant was made readable (`TransactionEnriched`).
    pub const TRANSACTION_ENRICHED: &str = "transaction.enriched";
    /// A clearing posted against a card payment (`CardPaymentUpdated`).
    pub const CARD_PAYMENT_CLEARED: &str = "card.payment.cleared";
    /// A card payment's hold was reversed, fully or in part (`CardPaymentUpdated`).
    pub const CARD_PAYMENT_REVERSED: &str = "card.payment.reversed";
    /// Money went back to the customer (`CardPaymentUpdated`).
    pub const CARD_PAYMENT_REFUNDED: &str = "card.payment.refunded";
    /// A clearing without authorisation was posted (`CardPaymentUpdated`).
    pub const CARD_PAYMENT_FORCE_POSTED: &str = "card.payment.force_posted";
    /// An incremental authorisation was decided (`CardPaymentUpdated`).
    pub const CARD_PAYMENT_INCREMENTED: &str = "card.payment.incremented";
    /// An authorisation expired uncleared and its hold was released (`CardPaymentUpdated`).
    pub const CARD_PAYMENT_EXPIRED: &str = "card.payment.expired";
    /// Everything after a card payment's authorisation, as a subject filter.
    pub const CARD_PAYMENT_ALL: &str = "card.payment.*";
    /// An account's balance changed in the ledger (`AccountBalanceChanged`).
    pub const LEDGER_BALANCE_CHANGED: &str = "ledger.balance.changed";
    /// A transfer's two postings are made (`TransferCompleted`).
    pub const LEDGER_TRANSFER_COMPLETED: &str = "ledger.transfer.completed";
}
