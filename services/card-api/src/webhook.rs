//! The processor-facing authorisation request and response, in the shape of Lithic ASA /
//! Stripe Issuing / Marqeta JIT webhooks. Amounts are integer minor units.

use card_processing::authorisation::Authorisation;
use serde::{Deserialize, Serialize};
use sterling_money::{Currency, Money};
use sterling_template::{Error, Result};

/// Merchant details as the processor sends them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantDetails {
    /// The card-acceptor name line, e.g. "PRET A MANGER LONDON GB".
    #[serde(default)]
    pub descriptor: String,
    /// ISO 18245 merchant category code, four digits.
    #[serde(default)]
    pub mcc: String,
    /// ISO 3166 alpha-2.
    #[serde(default)]
    pub country: String,
    /// City.
    #[serde(default)]
    pub city: String,
}

/// An authorisation request from the processor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorisationRequest {
    /// The processor's authorisation id: retries carry the same one.
    pub id: String,
    /// Card token.
    pub card_token: String,
    /// Amount in minor units of `currency`, as the merchant charges it.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The merchant.
    #[serde(default)]
    pub merchant: MerchantDetails,
}

/// The answer to the processor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorisationResponse {
    /// The processor's authorisation id.
    pub id: String,
    /// "APPROVED" or "DECLINED".
    pub result: String,
    /// Stable reason code, e.g. "insufficient_funds".
    pub reason: String,
    /// Amount approved in the request's currency (0 when declined).
    pub approved_amount: i64,
    /// The request's currency.
    pub currency: String,
    /// Amount held in the account's currency, minor units.
    pub held_amount: i64,
    /// The account's currency (empty when declined before the card was found).
    pub held_currency: String,
    /// Sterling's transaction id.
    pub transaction_id: String,
}

fn field_text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(Error::bad_request(
            field,
            format!("{field} is required (at most {max} bytes)"),
        )
        .with_param("field", field));
    }
    Ok(())
}

impl AuthorisationRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<(AuthorisationRequest, Money)> {
        let request: AuthorisationRequest = serde_json::from_slice(body).map_err(|e| {
            Error::bad_request(
                "json",
                format!("the body is not a valid authorisation request: {e}"),
            )
        })?;
        field_text("id", &request.id, 128)?;
        field_text("card_token", &request.card_token, 128)?;
        if request.merchant.descriptor.len() > 256 || request.merchant.city.len() > 128 {
            return Err(Error::bad_request(
                "merchant",
                "merchant fields are too long",
            ));
        }
        if !request.merchant.mcc.is_empty()
            && (request.merchant.mcc.len() != 4
                || !request.merchant.mcc.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(Error::bad_request("mcc", "mcc must be four digits"));
        }
        let currency = Currency::from_code(&request.currency).map_err(|_| {
            Error::bad_request(
                "currency",
                format!("unknown currency {:?}", request.currency),
            )
            .with_param("field", "currency")
        })?;
        let amount = Money::from_minor(request.amount, currency);
        Authorisation::check_amount(amount)?;
        Ok((request, amount))
    }

    /// The request as card-processing takes it (every field, for the fingerprint).
    pub fn authorisation(&self, amount: Money) -> Authorisation {
        Authorisation {
            processor_authorisation_id: self.id.clone(),
            card_token: self.card_token.clone(),
            amount,
            merchant_descriptor: self.merchant.descriptor.clone(),
            mcc: self.merchant.mcc.clone(),
            merchant_country: self.merchant.country.clone(),
            merchant_city: self.merchant.city.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> String {
        AuthorisationRequest::parse(body.as_bytes())
            .unwrap_err()
            .code()
            .to_string()
    }

    #[test]
    fn valid_requests_parse() {
        let (r, amount) = AuthorisationRequest::parse(
            br#"{"id":"a1","card_token":"c","amount":350,"currency":"EUR","merchant":{"descriptor":"CAFE","mcc":"5812"}}"#,
        )
        .unwrap();
        assert_eq!(r.id, "a1");
        assert_eq!(amount.minor_units(), 350);
    }

    #[test]
    fn bad_requests_get_their_own_codes() {
        assert_eq!(code("{not json"), "bad_request.json");
        assert_eq!(
            code(r#"{"id":"a","card_token":"c","amount":3.5,"currency":"EUR"}"#),
            "bad_request.json"
        );
        assert_eq!(
            code(r#"{"id":"a","card_token":"c","amount":-5,"currency":"EUR"}"#),
            "bad_request.amount"
        );
        assert_eq!(
            code(r#"{"id":"a","card_token":"c","amount":0,"currency":"EUR"}"#),
            "bad_request.amount"
        );
        assert_eq!(
            code(r#"{"id":"a","card_token":"c","amount":9000000000000,"currency":"EUR"}"#),
            "bad_request.amount"
        );
        assert_eq!(
            code(r#"{"id":"a","card_token":"c","amount":5,"currency":"ZZZ"}"#),
            "bad_request.currency"
        );
        assert_eq!(
            code(r#"{"id":"","card_token":"c","amount":5,"currency":"EUR"}"#),
            "bad_request.id"
        );
        assert_eq!(
            code(
                r#"{"id":"a","card_token":"c","amount":5,"currency":"EUR","merchant":{"mcc":"58"}}"#
            ),
            "bad_request.mcc"
        );
    }
}
