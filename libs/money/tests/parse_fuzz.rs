//! Amounts and currency codes from outside parse exactly or are refused, never panic.

use proptest::prelude::*;
use sterling_money::{Currency, Money};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_amount_text_parses_exactly_or_is_refused(text in ".{0,40}", code in "[A-Z]{3}") {
        if let Ok(currency) = Currency::from_code(&code)
            && let Ok(money) = Money::parse(&text, currency)
        {
            // What parsed prints back as the same amount.
            let again = Money::parse(&money.to_decimal().to_string(), currency).unwrap();
            prop_assert_eq!(again, money);
        }
    }

    #[test]
    fn arithmetic_never_overflows_silently(a in any::<i64>(), b in any::<i64>()) {
        let gbp = Currency::from_code("GBP").unwrap();
        let (x, y) = (Money::from_minor(a, gbp), Money::from_minor(b, gbp));
        match x.checked_add(y) {
            Ok(sum) => prop_assert_eq!(Some(sum.minor_units()), a.checked_add(b)),
            Err(_) => prop_assert!(a.checked_add(b).is_none()),
        }
    }
}
