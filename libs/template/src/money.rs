//! Money at the contract boundary: `sterling.common.v1.Money` to and from [`Money`], with
//! validation errors that name the field.

use sterling_money::{Currency, Money};
use sterling_proto::common::v1 as pb;

use crate::error::{Error, Result};

/// Reads a currency code, answering `bad_request.currency` for an unknown one.
pub fn currency(field: &str, code: &str) -> Result<Currency> {
    Currency::from_code(code).map_err(|_| {
        Error::bad_request("currency", format!("{field}: unknown currency {code:?}"))
            .with_param("field", field)
    })
}

/// Reads a required money field.
pub fn from_proto(field: &str, money: Option<&pb::Money>) -> Result<Money> {
    let money = money.ok_or_else(|| {
        Error::bad_request("amount", format!("{field} is required")).with_param("field", field)
    })?;
    Ok(Money::from_minor(
        money.minor_units,
        currency(field, &money.currency)?,
    ))
}

/// Reads a required money field that must be strictly positive.
pub fn positive_from_proto(field: &str, money: Option<&pb::Money>) -> Result<Money> {
    let money = from_proto(field, money)?;
    if money.minor_units() <= 0 {
        return Err(
            Error::bad_request("amount", format!("{field} must be positive"))
                .with_param("field", field),
        );
    }
    Ok(money)
}

/// Writes money into the contract type.
pub fn to_proto(money: Money) -> pb::Money {
    pb::Money {
        minor_units: money.minor_units(),
        currency: money.currency().code().to_string(),
    }
}
