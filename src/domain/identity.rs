//! Identifiers and the caller's identity, validated once.

use super::FieldError;
use serde::Serialize;
use std::fmt;

/// The gateway's `X-User-Id`: 1..=100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: &str) -> Option<UserId> {
        let n = raw.chars().count();
        ((1..=100).contains(&n) && !raw.chars().any(char::is_control))
            .then(|| UserId(raw.to_string()))
    }

    /// A value read back from the database, which only ever holds parsed ones.
    pub fn from_trusted(raw: String) -> UserId {
        UserId(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The gateway's `X-User-Email`: 1..=200 characters with an `@` between two non-empty parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Option<Email> {
        let n = raw.chars().count();
        let shaped = match raw.split_once('@') {
            Some((local, domain)) => !local.is_empty() && !domain.is_empty(),
            None => false,
        };
        ((1..=200).contains(&n)
            && shaped
            && !raw.chars().any(|c| c.is_control() || c.is_whitespace()))
        .then(|| Email(raw.to_string()))
    }

    pub fn from_trusted(raw: String) -> Email {
        Email(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `Idempotency-Key`: 1..=200 printable ASCII characters (spaces among them), scoped to
/// one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<IdempotencyKey, FieldError> {
        if (1..=200).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            Ok(IdempotencyKey(raw.to_string()))
        } else {
            Err(FieldError::new(
                "Idempotency-Key",
                "must be 1 to 200 printable ASCII characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct OrderId(i64);

impl OrderId {
    /// An id from a URL path: a positive integer, or nothing (which answers 404).
    pub fn parse(raw: &str) -> Option<OrderId> {
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        raw.parse::<i64>().ok().filter(|&n| n >= 1).map(OrderId)
    }

    pub fn from_trusted(id: i64) -> OrderId {
        OrderId(id)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A product id: an integer ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ProductId(i64);

impl ProductId {
    pub fn new(id: i64) -> Option<ProductId> {
        (id >= 1).then_some(ProductId(id))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_have_bounded_length() {
        assert!(UserId::parse("u1").is_some());
        assert!(UserId::parse("").is_none());
        assert!(UserId::parse(&"x".repeat(100)).is_some());
        assert!(UserId::parse(&"x".repeat(101)).is_none());
        assert!(UserId::parse("a\nb").is_none());
    }

    #[test]
    fn emails_need_an_at_between_parts() {
        assert!(Email::parse("a@b.c").is_some());
        assert!(Email::parse("ab.c").is_none());
        assert!(Email::parse("@b.c").is_none());
        assert!(Email::parse("a@").is_none());
        assert!(Email::parse(&format!("a@{}", "b".repeat(198))).is_some());
        assert!(Email::parse(&format!("a@{}", "b".repeat(199))).is_none());
    }

    #[test]
    fn order_ids_are_positive_integers() {
        assert_eq!(OrderId::parse("42"), Some(OrderId(42)));
        assert_eq!(OrderId::parse("0"), None);
        assert_eq!(OrderId::parse("-1"), None);
        assert_eq!(OrderId::parse("abc"), None);
        assert_eq!(OrderId::parse("99999999999999999999"), None);
    }
}
