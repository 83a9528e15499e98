//! An authorisation request as the processor sent it, validated, and its fingerprint: the
//! whole request, so that an id reused for any different request is a conflict, never a
//! repeat.

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sterling_money::Money;
use sterling_template::{Error, Result};

/// Largest authorisation accepted, in major units of any currency.
pub const MAX_MAJOR_UNITS: i64 = 1_000_000;

/// A request to authorise, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// SHA-256 (hex) over every field the processor sent, each length-prefixed so that no two
    /// different requests share an encoding.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        let amount = self.amount.minor_units().to_string();
        for field in [
            self.processor_authorisation_id.as_str(),
            self.card_token.as_str(),
            amount.as_str(),
            self.amount.currency().code(),
            self.merchant_descriptor.as_str(),
            self.mcc.as_str(),
            self.merchant_country.as_str(),
            self.merchant_city.as_str(),
        ] {
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field.as_bytes());
        }
        hex::encode(hash.finalize())
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

    /// The conflict answered when `id` was first used for another request.
    pub fn conflict(id: &str) -> Error {
        Error::conflict(
            "authorisation",
            "authorisation id already used for a different request",
        )
        .with_param("processor_authorisation_id", id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sterling_money::Currency;

    fn request() -> Authorisation {
        Authorisation {
            processor_authorisation_id: "a1".into(),
            card_token: "card".into(),
            amount: Money::from_minor(350, Currency::from_code("EUR").unwrap()),
            merchant_descriptor: "PRET".into(),
            mcc: "5812".into(),
            merchant_country: "GB".into(),
            merchant_city: "London".into(),
        }
    }

    #[test]
    fn every_field_is_in_the_fingerprint() {
        let base = request().fingerprint();
        type Change = Box<dyn Fn(&mut Authorisation)>;
        let variants: Vec<Change> = vec![
            Box::new(|a| a.card_token.push('x')),
            Box::new(|a| a.amount = Money::from_minor(351, a.amount.currency())),
            Box::new(|a| a.amount = Money::from_minor(350, Currency::from_code("GBP").unwrap())),
            Box::new(|a| a.merchant_descriptor.push('x')),
            Box::new(|a| a.mcc = "5813".into()),
            Box::new(|a| a.merchant_country = "FR".into()),
            Box::new(|a| a.merchant_city = "Paris".into()),
        ];
        for change in variants {
            let mut other = request();
            change(&mut other);
            assert_ne!(other.fingerprint(), base, "{other:?}");
        }
        assert_eq!(request().fingerprint(), base);
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let mut a = request();
        a.merchant_country = "GBL".into();
        a.merchant_city = "ondon".into();
        assert_ne!(a.fingerprint(), request().fingerprint());
    }
}
