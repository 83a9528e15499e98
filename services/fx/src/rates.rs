//! The rate table and the conversion rule.
//!
//! Rates are units of each currency per 1 EUR, read as exact decimals. Converting `amount` of A
//! into B computes `amount * per_eur(B) / per_eur(A)` exactly, then rounds once, half away from
//! zero, to B's exponent (EUR 3.50 at GBP 0.8571 is GBP 2.99985, which rounds to GBP 3.00).

use std::collections::HashMap;

use rust_decimal::{Decimal, RoundingStrategy};
use sterling_money::{Currency, Money};
use sterling_template::{Error, Result};

/// The rounding rule, as reported to callers.
pub const ROUNDING: &str = "half_away_from_zero";

/// The rate table shipped with the service.
pub const BUILTIN_RATES: &str = include_str!("../data/rates.csv");

/// Rates per 1 EUR by currency.
#[derive(Debug, Clone)]
pub struct RateTable {
    per_eur: HashMap<Currency, Decimal>,
}

/// A conversion's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// The converted, rounded amount.
    pub converted: Money,
    /// Units of the target per unit of the source.
    pub rate: Decimal,
}

impl RateTable {
    /// Parses `currency,per_eur` lines; `#` starts a comment line.
    pub fn parse(text: &str) -> Result<RateTable> {
        let mut per_eur = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("currency,") {
                continue;
            }
            let bad = |why: &str| Error::internal(format!("rates line {}: {why}", n + 1));
            let (code, rate) = line
                .split_once(',')
                .ok_or_else(|| bad("expected code,rate"))?;
            let currency = Currency::from_code(code.trim()).map_err(|e| bad(&e.to_string()))?;
            let rate: Decimal = rate
                .trim()
                .parse()
                .map_err(|_| bad("rate is not a decimal"))?;
            if rate <= Decimal::ZERO {
                return Err(bad("rate must be positive"));
            }
            per_eur.insert(currency, rate);
        }
        Ok(RateTable { per_eur })
    }

    fn rate_of(&self, currency: Currency) -> Result<Decimal> {
        self.per_eur.get(&currency).copied().ok_or_else(|| {
            Error::precondition_failed("currency_not_supported", format!("no rate for {currency}"))
                .with_param("currency", currency)
        })
    }

    /// Converts `amount` into `to`.
    pub fn convert(&self, amount: Money, to: Currency) -> Result<Conversion> {
        if amount.currency() == to {
            return Ok(Conversion {
                converted: amount,
                rate: Decimal::ONE,
            });
        }
        let from_rate = self.rate_of(amount.currency())?;
        let to_rate = self.rate_of(to)?;
        let overflow = || Error::bad_request("amount", "amount too large to convert");
        let exact = amount
            .to_decimal()
            .checked_mul(to_rate)
            .and_then(|v| v.checked_div(from_rate))
            .ok_or_else(overflow)?;
        let rounded = exact.round_dp_with_strategy(
            u32::from(to.exponent()),
            RoundingStrategy::MidpointAwayFromZero,
        );
        let converted = Money::from_decimal(rounded, to).map_err(|_| overflow())?;
        let rate = (to_rate / from_rate).round_dp(10).normalize();
        Ok(Conversion { converted, rate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(text: &str, code: &str) -> Money {
        Money::parse(text, Currency::from_code(code).unwrap()).unwrap()
    }

    fn cur(code: &str) -> Currency {
        Currency::from_code(code).unwrap()
    }

    #[test]
    fn converts_with_half_away_from_zero_rounding() {
        let table = RateTable::parse(BUILTIN_RATES).unwrap();
        // 3.50 * 0.8571 = 2.99985 -> 3.00 (the midpoint-free exact value rounds up).
        let c = table.convert(money("3.50", "EUR"), cur("GBP")).unwrap();
        assert_eq!(c.converted, money("3.00", "GBP"));
        // 10.00 EUR -> JPY: 1624.5 -> 1625 (a true midpoint, away from zero).
        let c = table.convert(money("10.00", "EUR"), cur("JPY")).unwrap();
        assert_eq!(c.converted, money("1625", "JPY"));
        // Negative amounts (refunds) round symmetrically.
        let c = table.convert(money("-10.00", "EUR"), cur("JPY")).unwrap();
        assert_eq!(c.converted, money("-1625", "JPY"));
        // Three-decimal currencies keep three decimals: 1.00 EUR -> 0.333 KWD (0.3331).
        let c = table.convert(money("1.00", "EUR"), cur("KWD")).unwrap();
        assert_eq!(c.converted, money("0.333", "KWD"));
    }

    #[test]
    fn cross_rates_go_through_eur_exactly() {
        let table = RateTable::parse(BUILTIN_RATES).unwrap();
        // 12.00 USD -> GBP = 12 * 0.8571 / 1.0832 = 9.4952...
        let c = table.convert(money("12.00", "USD"), cur("GBP")).unwrap();
        assert_eq!(c.converted, money("9.50", "GBP"));
        let same = table.convert(money("1.23", "GBP"), cur("GBP")).unwrap();
        assert_eq!(same.converted, money("1.23", "GBP"));
        assert_eq!(same.rate, Decimal::ONE);
    }

    #[test]
    fn unknown_rates_and_bad_tables_are_errors() {
        let table = RateTable::parse("EUR,1\nGBP,0.85").unwrap();
        let e = table.convert(money("1.00", "EUR"), cur("USD")).unwrap_err();
        assert_eq!(e.code(), "precondition_failed.currency_not_supported");
        assert!(RateTable::parse("EUR,abc").is_err());
        assert!(RateTable::parse("EUR,0").is_err());
        assert!(RateTable::parse("XYZ,1").is_err());
    }
}
