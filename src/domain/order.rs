//! An order as stored and as shown to clients.

use super::{Email, Money, OrderId, ProductId, Quantity, Status, UserId};
use crate::clock::rfc3339;
use serde::{Serialize, Serializer};

/// A line priced from the product service, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    pub product_id: ProductId,
    pub product_name: String,
    pub quantity: Quantity,
    pub price: Money,
}

impl PricedLine {
    pub fn subtotal(&self) -> Money {
        // Bounded by MAX_PRICE_CENTS × MAX_QUANTITY, far below i64::MAX.
        self.price
            .times(self.quantity.get())
            .expect("price and quantity are bounded")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderItem {
    pub product_id: ProductId,
    pub product_name: String,
    pub quantity: u32,
    pub price: Money,
    pub subtotal: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub user_email: Email,
    pub items: Vec<OrderItem>,
    pub total: Money,
    pub status: Status,
    #[serde(serialize_with = "as_rfc3339")]
    pub created_at: i64,
    #[serde(serialize_with = "as_rfc3339")]
    pub updated_at: i64,
    /// False when the product service was away and the order was priced from the catalog
    /// snapshot: its stock was checked against what the store knew, not the live figure.
    pub stock_verified: bool,
    /// When the prices were read: the live lookup, or the oldest snapshot row used.
    /// `None` for orders stored before this was recorded.
    #[serde(serialize_with = "as_optional_rfc3339")]
    pub priced_at: Option<i64>,
}

fn as_rfc3339<S: Serializer>(micros: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*micros))
}

fn as_optional_rfc3339<S: Serializer>(micros: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match micros {
        Some(m) => s.serialize_str(&rfc3339(*m)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
impl Order {
    /// A pending order of one line, two of product 7 at 19.99, for tests.
    pub fn example(id: i64, user: &str, product_name: &str) -> Order {
        let at = 1_700_000_000_000_000;
        Order {
            id: OrderId::from_trusted(id),
            user_id: UserId::from_trusted(user.into()),
            user_email: Email::from_trusted("a@example.com".into()),
            items: vec![OrderItem {
                product_id: ProductId::new(7).unwrap(),
                product_name: product_name.into(),
                quantity: 2,
                price: Money::from_cents(1999),
                subtotal: Money::from_cents(3998),
            }],
            total: Money::from_cents(3998),
            status: Status::Pending,
            created_at: at,
            updated_at: at,
            stock_verified: true,
            priced_at: Some(at),
        }
    }
}
