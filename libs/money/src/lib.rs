//! Money without floats: integer minor units of an ISO 4217 currency.
//!
//! [`Currency`] knows its exponent (GBP 2, JPY 0, KWD 3); [`Money`] is a count of minor units
//! of one currency. Conversions to and from decimal text go through `rust_decimal` and refuse
//! amounts that do not fit the currency's exponent.

use std::fmt;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// Errors from parsing or combining money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The code is not an active ISO 4217 currency.
    #[error("unknown currency {0:?}")]
    UnknownCurrency(String),
    /// The decimal amount has more decimal places than the currency allows.
    #[error("{amount} has more decimal places than {currency} allows ({exponent})")]
    TooPrecise {
        /// The amount as given.
        amount: String,
        /// The currency code.
        currency: &'static str,
        /// The currency's exponent.
        exponent: u8,
    },
    /// The text is not a decimal number.
    #[error("{0:?} is not a decimal amount")]
    NotADecimal(String),
    /// The amount does not fit in 64-bit minor units.
    #[error("amount out of range")]
    OutOfRange,
    /// Two amounts of different currencies were combined.
    #[error("currency mismatch: {0} and {1}")]
    CurrencyMismatch(&'static str, &'static str),
}

/// An ISO 4217 currency: its alphabetic code and exponent (number of minor-unit digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

/// Active ISO 4217 currencies and their exponents, sorted by code.
#[rustfmt::skip]
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2), ("AFN", 2), ("ALL", 2), ("AMD", 2), ("ANG", 2), ("AOA", 2), ("ARS", 2),
    ("AUD", 2), ("AWG", 2), ("AZN", 2), ("BAM", 2), ("BBD", 2), ("BDT", 2), ("BGN", 2),
    ("BHD", 3), ("BIF", 0), ("BMD", 2), ("BND", 2), ("BOB", 2), ("BRL", 2), ("BSD", 2),
    ("BTN", 2), ("BWP", 2), ("BYN", 2), ("BZD", 2), ("CAD", 2), ("CDF", 2), ("CHF", 2),
    ("CLP", 0), ("CNY", 2), ("COP", 2), ("CRC", 2), ("CUP", 2), ("CVE", 2), ("CZK", 2),
    ("DJF", 0), ("DKK", 2), ("DOP", 2), ("DZD", 2), ("EGP", 2), ("ERN", 2), ("ETB", 2),
    ("EUR", 2), ("FJD", 2), ("FKP", 2), ("GBP", 2), ("GEL", 2), ("GHS", 2), ("GIP", 2),
    ("GMD", 2), ("GNF", 0), ("GTQ", 2), ("GYD", 2), ("HKD", 2), ("HNL", 2), ("HTG", 2),
    ("HUF", 2), ("IDR", 2), ("ILS", 2), ("INR", 2), ("IQD", 3), ("IRR", 2), ("ISK", 0),
    ("JMD", 2), ("JOD", 3), ("JPY", 0), ("KES", 2), ("KGS", 2), ("KHR", 2), ("KMF", 0),
    ("KPW", 2), ("KRW", 0), ("KWD", 3), ("KYD", 2), ("KZT", 2), ("LAK", 2), ("LBP", 2),
    ("LKR", 2), ("LRD", 2), ("LSL", 2), ("LYD", 3), ("MAD", 2), ("MDL", 2), ("MGA", 2),
    ("MKD", 2), ("MMK", 2), ("MNT", 2), ("MOP", 2), ("MRU", 2), ("MUR", 2), ("MVR", 2),
    ("MWK", 2), ("MXN", 2), ("MYR", 2), ("MZN", 2), ("NAD", 2), ("NGN", 2), ("NIO", 2),
    ("NOK", 2), ("NPR", 2), ("NZD", 2), ("OMR", 3), ("PAB", 2), ("PEN", 2), ("PGK", 2),
    ("PHP", 2), ("PKR", 2), ("PLN", 2), ("PYG", 0), ("QAR", 2), ("RON", 2), ("RSD", 2),
    ("RUB", 2), ("RWF", 0), ("SAR", 2), ("SBD", 2), ("SCR", 2), ("SDG", 2), ("SEK", 2),
    ("SGD", 2), ("SHP", 2), ("SLE", 2), ("SOS", 2), ("SRD", 2), ("SSP", 2), ("STN", 2),
    ("SVC", 2), ("SYP", 2), ("SZL", 2), ("THB", 2), ("TJS", 2), ("TMT", 2), ("TND", 3),
    ("TOP", 2), ("TRY", 2), ("TTD", 2), ("TWD", 2), ("TZS", 2), ("UAH", 2), ("UGX", 0),
    ("USD", 2), ("UYU", 2), ("UZS", 2), ("VES", 2), ("VND", 0), ("VUV", 0), ("WST", 2),
    ("XAF", 0), ("XCD", 2), ("XOF", 0), ("XPF", 0), ("YER", 2), ("ZAR", 2), ("ZMW", 2),
    ("ZWG", 2),
];

impl Currency {
    /// Looks up an ISO 4217 code (upper case, e.g. "GBP").
    pub fn from_code(code: &str) -> Result<Self, MoneyError> {
        CURRENCIES
            .binary_search_by(|(c, _)| (*c).cmp(code))
            .map(|i| Currency {
                code: CURRENCIES[i].0,
                exponent: CURRENCIES[i].1,
            })
            .map_err(|_| MoneyError::UnknownCurrency(code.to_string()))
    }

    /// The alphabetic code, e.g. "GBP".
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Number of minor-unit digits: 2 for GBP, 0 for JPY, 3 for KWD.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// An amount of money: signed integer minor units of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor_units: i64,
    currency: Currency,
}

impl Money {
    /// Money from minor units, e.g. `Money::from_minor(350, eur)` is EUR 3.50.
    pub fn from_minor(minor_units: i64, currency: Currency) -> Self {
        Money {
            minor_units,
            currency,
        }
    }

    /// Money from a decimal in major units; refuses more decimal places than the exponent.
    pub fn from_decimal(amount: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        let scaled = amount
            .checked_mul(Decimal::from(10i64.pow(u32::from(currency.exponent))))
            .ok_or(MoneyError::OutOfRange)?;
        if scaled.fract() != Decimal::ZERO {
            return Err(MoneyError::TooPrecise {
                amount: amount.to_string(),
                currency: currency.code,
                exponent: currency.exponent,
            });
        }
        let minor_units = scaled.to_i64().ok_or(MoneyError::OutOfRange)?;
        Ok(Money::from_minor(minor_units, currency))
    }

    /// Parses text such as "3.50" in major units of `currency`.
    pub fn parse(text: &str, currency: Currency) -> Result<Self, MoneyError> {
        let amount: Decimal = text
            .trim()
            .parse()
            .map_err(|_| MoneyError::NotADecimal(text.to_string()))?;
        Money::from_decimal(amount, currency)
    }

    /// The amount in minor units.
    pub fn minor_units(&self) -> i64 {
        self.minor_units
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The amount in major units as an exact decimal (EUR 3.50 for 350 minor units).
    pub fn to_decimal(&self) -> Decimal {
        Decimal::new(self.minor_units, u32::from(self.currency.exponent))
    }

    /// Adds two amounts of the same currency, refusing overflow.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.minor_units
            .checked_add(other.minor_units)
            .map(|m| Money::from_minor(m, self.currency))
            .ok_or(MoneyError::OutOfRange)
    }

    /// Subtracts an amount of the same currency, refusing overflow.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.minor_units
            .checked_sub(other.minor_units)
            .map(|m| Money::from_minor(m, self.currency))
            .ok_or(MoneyError::OutOfRange)
    }

    fn same_currency(&self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(
                self.currency.code,
                other.currency.code,
            ))
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.currency.code, self.to_decimal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_table_is_sorted_for_binary_search() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(Currency::from_code("GBP").unwrap().exponent(), 2);
        assert_eq!(Currency::from_code("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::from_code("KWD").unwrap().exponent(), 3);
        assert!(matches!(
            Currency::from_code("XXX"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(Currency::from_code("gbp").is_err());
    }

    #[test]
    fn parses_major_units_exactly() {
        let eur = Currency::from_code("EUR").unwrap();
        assert_eq!(Money::parse("3.50", eur).unwrap().minor_units(), 350);
        assert_eq!(Money::parse("0.1", eur).unwrap().minor_units(), 10);
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(Money::parse("500", jpy).unwrap().minor_units(), 500);
        assert!(matches!(
            Money::parse("1.5", jpy),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            Money::parse("3.505", eur),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            Money::parse("abc", eur),
            Err(MoneyError::NotADecimal(_))
        ));
        assert_eq!(
            Money::parse("99999999999999999999", eur),
            Err(MoneyError::OutOfRange)
        );
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies_and_overflow() {
        let gbp = Currency::from_code("GBP").unwrap();
        let usd = Currency::from_code("USD").unwrap();
        let a = Money::from_minor(100, gbp);
        assert_eq!(a.checked_add(a).unwrap().minor_units(), 200);
        assert!(a.checked_add(Money::from_minor(1, usd)).is_err());
        assert_eq!(
            Money::from_minor(i64::MAX, gbp).checked_add(a),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(a.to_string(), "GBP 1.00");
    }
}
