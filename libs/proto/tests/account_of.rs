//! `account_of`: the account an event is about, for consumers that order by account.

use prost::Message;
use sterling_proto::account_of;
use sterling_proto::event_types as types;
use sterling_proto::events::v1::{
    CardAuthorisationDecided, CardPaymentUpdated, Envelope, TransactionEnriched,
};

fn envelope(event_type: &str, payload: Vec<u8>) -> Envelope {
    Envelope {
        r#type: event_type.into(),
        payload,
        ..Default::default()
    }
}

#[test]
fn the_account_is_read_from_each_kind_of_event_that_has_one() {
    let decided = CardAuthorisationDecided {
        account_id: "acc-1".into(),
        ..Default::default()
    };
    let updated = CardPaymentUpdated {
        account_id: "acc-2".into(),
        ..Default::default()
    };
    let enriched = TransactionEnriched {
        account_id: "acc-3".into(),
        ..Default::default()
    };
    let cases = [
        (
            types::CARD_AUTHORISATION_APPROVED,
            decided.encode_to_vec(),
            "acc-1",
        ),
        (
            types::CARD_AUTHORISATION_DECLINED,
            decided.encode_to_vec(),
            "acc-1",
        ),
        (
            types::CARD_PAYMENT_CLEARED,
            updated.encode_to_vec(),
            "acc-2",
        ),
        (
            types::CARD_PAYMENT_REFUNDED,
            updated.encode_to_vec(),
            "acc-2",
        ),
        (
            types::TRANSACTION_ENRICHED,
            enriched.encode_to_vec(),
            "acc-3",
        ),
    ];
    for (event_type, payload, account) in cases {
        assert_eq!(
            account_of(&envelope(event_type, payload)).as_deref(),
            Some(account),
            "{event_type}"
        );
    }
}

#[test]
fn other_events_and_unreadable_ones_have_none() {
    let no_account = CardAuthorisationDecided::default().encode_to_vec();
    assert_eq!(
        account_of(&envelope(types::CARD_AUTHORISATION_APPROVED, no_account)),
        None
    );
    let garbage = vec![0xff, 0xff, 0xff];
    assert_eq!(
        account_of(&envelope(types::CARD_PAYMENT_CLEARED, garbage)),
        None
    );
    let transfer = envelope(types::LEDGER_TRANSFER_COMPLETED, Vec::new());
    assert_eq!(account_of(&transfer), None);
}
