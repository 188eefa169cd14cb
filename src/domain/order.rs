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
}

fn as_rfc3339<S: Serializer>(micros: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*micros))
}
