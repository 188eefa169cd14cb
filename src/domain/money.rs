//! Money as integer cents; written out as a JSON number with two decimals.

use serde::{Serialize, Serializer};
use std::fmt;

/// An amount in cents. Never a float inside the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

/// The largest unit price accepted from the product service: 10 million.
/// With at most 100 lines of 10,000 units, a total stays far below 2^53 cents.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_cents(cents: i64) -> Money {
        Money(cents)
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    /// Parses a decimal such as `1299.99`, `5`, `0.5` exactly, without going through a float.
    /// More than two decimals, a sign, an exponent or a value above [`MAX_PRICE_CENTS`] is refused.
    pub fn parse_price(text: &str) -> Option<Money> {
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        if whole.is_empty() || whole.len() > 12 || frac.len() > 2 {
            return None;
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let whole: i64 = whole.parse().ok()?;
        let mut frac_cents: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        if frac.len() == 1 {
            frac_cents *= 10;
        }
        let cents = whole.checked_mul(100)?.checked_add(frac_cents)?;
        (cents <= MAX_PRICE_CENTS).then_some(Money(cents))
    }

    pub fn times(self, quantity: u32) -> Option<Money> {
        self.0.checked_mul(i64::from(quantity)).map(Money)
    }

    pub fn plus(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{}{}.{:02}", sign, abs / 100, abs % 100)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Written as its exact decimal text (1299.90), never as a float.
        let raw = serde_json::value::RawValue::from_string(self.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prices_exactly() {
        assert_eq!(Money::parse_price("1299.99"), Some(Money(129_999)));
        assert_eq!(Money::parse_price("0.1"), Some(Money(10)));
        assert_eq!(Money::parse_price("5"), Some(Money(500)));
        assert_eq!(Money::parse_price("0.07"), Some(Money(7)));
        assert_eq!(Money::parse_price("1.999"), None);
        assert_eq!(Money::parse_price("-1.00"), None);
        assert_eq!(Money::parse_price(".5"), None);
        assert_eq!(Money::parse_price("1e3"), None);
        assert_eq!(Money::parse_price("10000000.01"), None);
    }

    #[test]
    fn writes_two_decimals() {
        assert_eq!(serde_json::to_string(&Money(129_990)).unwrap(), "1299.90");
        assert_eq!(serde_json::to_string(&Money(5)).unwrap(), "0.05");
        assert_eq!(serde_json::to_string(&Money(0)).unwrap(), "0.00");
    }
}
