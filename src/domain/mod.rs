//! The order domain: values parsed once at the edge and trusted after.

mod identity;
mod money;
mod new_order;
mod order;
mod page;
mod status;

pub use identity::{Email, IdempotencyKey, OrderId, ProductId, UserId};
pub use money::Money;
pub use new_order::{NewOrder, NewOrderLine, Quantity, MAX_ITEMS, MAX_QUANTITY};
pub use order::{Order, OrderItem, PricedLine};
pub use page::{Cursor, Page};
pub use status::Status;

/// A field that failed validation, named the way the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}
