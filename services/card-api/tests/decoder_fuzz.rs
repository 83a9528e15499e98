//! The processor-facing decoders take any bytes and answer with an error, never a panic.

use card_api::webhook::AuthorisationRequest;
use proptest::prelude::*;
use sterling_signature as signature;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_parse_to_a_request_or_a_bad_request(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = AuthorisationRequest::parse(&body) {
            prop_assert_eq!(e.class().as_str(), "bad_request");
        }
    }

    #[test]
    fn json_shaped_requests_are_validated_not_trusted(
        id in ".{0,200}",
        token in ".{0,200}",
        amount in any::<i64>(),
        currency in "[A-Z]{0,4}",
        mcc in ".{0,6}",
        descriptor in ".{0,300}",
    ) {
        let body = serde_json::json!({
            "id": id, "card_token": token, "amount": amount, "currency": currency,
            "merchant": {"descriptor": descriptor, "mcc": mcc},
        });
        match AuthorisationRequest::parse(body.to_string().as_bytes()) {
            Ok((request, money)) => {
                prop_assert!(money.minor_units() > 0);
                prop_assert!(!request.id.is_empty() && request.id.len() <= 128);
            }
            Err(e) => prop_assert_eq!(e.class().as_str(), "bad_request"),
        }
    }

    #[test]
    fn any_signature_header_is_checked_without_panicking(header in ".{0,300}", body in proptest::collection::vec(any::<u8>(), 0..64), now in any::<i64>()) {
        let _ = signature::verify(b"secret", &header, &body, now);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Extreme timestamps (`i64::MIN`, `i64::MAX`) against any clock are refused, never panic.
    #[test]
    fn extreme_signature_timestamps_are_refused_without_panicking(
        t in prop_oneof![Just(i64::MIN), Just(i64::MAX), any::<i64>()],
        now in prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0i64), any::<i64>()],
    ) {
        let header = format!("t={},v1=00", t);
        let verdict = signature::verify(b"secret", &header, b"body", now);
        prop_assert!(verdict.is_err());
    }
}

#[test]
fn the_most_negative_timestamp_is_stale_not_a_panic() {
    let header = "t=-9223372036854775808,v1=00";
    assert_eq!(
        signature::verify(b"secret", header, b"{}", 1_800_000_000),
        Err(signature::SignatureError::Stale)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any change to any merchant field makes another request: a reused id with it is a
    /// conflict, never a repeat.
    #[test]
    fn every_merchant_field_is_in_the_fingerprint(
        descriptor in ".{0,40}",
        city in ".{0,20}",
        country in "[A-Z]{2}",
        other in ".{1,20}",
    ) {
        let body = serde_json::json!({
            "id": "a1", "card_token": "card", "amount": 350, "currency": "GBP",
            "merchant": {"descriptor": descriptor, "mcc": "5812", "country": country, "city": city},
        });
        let (request, amount) = AuthorisationRequest::parse(body.to_string().as_bytes()).unwrap();
        let base = request.authorisation(amount).fingerprint();
        for field in ["descriptor", "city", "country"] {
            let mut changed = body.clone();
            let current = changed["merchant"][field].as_str().unwrap().to_string();
            changed["merchant"][field] = format!("{}{}", current, other).into();
            if let Ok((r, a)) = AuthorisationRequest::parse(changed.to_string().as_bytes()) {
                prop_assert_ne!(r.authorisation(a).fingerprint(), base.clone());
            }
        }
    }
}
