//! The body of `POST /api/orders`, parsed into lines that the core can trust.

use super::{FieldError, ProductId};
use serde_json::Value;

pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: u32 = 10_000;

/// Units of one product in one order: 1..=10,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u32);

impl Quantity {
    pub fn new(n: u32) -> Option<Quantity> {
        (1..=MAX_QUANTITY).contains(&n).then_some(Quantity(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrderLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
}

/// A validated order request: 1..=100 distinct products, in first-seen order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    lines: Vec<NewOrderLine>,
}

impl NewOrder {
    /// Accepts `{"items":[{"product_id":1,"quantity":2}, …]}`; unknown fields are ignored.
    /// The same product twice becomes one line with the quantities added.
    pub fn parse(body: &Value) -> Result<NewOrder, FieldError> {
        let obj = body
            .as_object()
            .ok_or_else(|| FieldError::new("body", "must be a JSON object"))?;
        let items = match obj.get("items") {
            None | Some(Value::Null) => return Err(FieldError::new("items", "is required")),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(FieldError::new("items", "must be an array")),
        };
        if items.is_empty() || items.len() > MAX_ITEMS {
            return Err(FieldError::new(
                "items",
                format!("must hold 1 to {MAX_ITEMS} items"),
            ));
        }
        let mut lines: Vec<NewOrderLine> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item = item
                .as_object()
                .ok_or_else(|| FieldError::new(format!("items[{i}]"), "must be an object"))?;
            let product_id = item
                .get("product_id")
                .and_then(Value::as_i64)
                .and_then(ProductId::new)
                .ok_or_else(|| {
                    FieldError::new(
                        format!("items[{i}].product_id"),
                        "must be an integer of at least 1",
                    )
                })?;
            let quantity = item
                .get("quantity")
                .and_then(Value::as_u64)
                .and_then(|q| u32::try_from(q).ok())
                .and_then(Quantity::new)
                .ok_or_else(|| quantity_error(format!("items[{i}].quantity")))?;
            match lines.iter_mut().find(|l| l.product_id == product_id) {
                Some(line) => {
                    line.quantity = Quantity::new(line.quantity.get() + quantity.get())
                        .ok_or_else(|| {
                            FieldError::new(
                                format!("items[{i}].quantity"),
                                format!(
                                    "makes product {product_id} add up to more than {MAX_QUANTITY}"
                                ),
                            )
                        })?;
                }
                None => lines.push(NewOrderLine {
                    product_id,
                    quantity,
                }),
            }
        }
        Ok(NewOrder { lines })
    }

    pub fn lines(&self) -> &[NewOrderLine] {
        &self.lines
    }

    /// The request in one canonical text, to tell a repeat from a different request.
    pub fn canonical(&self) -> String {
        let items: Vec<Value> = self
            .lines
            .iter()
            .map(|l| serde_json::json!({"product_id": l.product_id, "quantity": l.quantity.get()}))
            .collect();
        serde_json::json!({ "items": items }).to_string()
    }
}

fn quantity_error(field: String) -> FieldError {
    FieldError::new(
        field,
        format!("must be an integer from 1 to {MAX_QUANTITY}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NewOrder, FieldError> {
        NewOrder::parse(&v)
    }

    #[test]
    fn merges_the_same_product() {
        let o = parse(json!({"items":[
            {"product_id":2,"quantity":1},{"product_id":1,"quantity":3},{"product_id":2,"quantity":4}
        ]}))
        .unwrap();
        let got: Vec<(i64, u32)> = o
            .lines()
            .iter()
            .map(|l| (l.product_id.get(), l.quantity.get()))
            .collect();
        assert_eq!(got, vec![(2, 5), (1, 3)]);
    }

    #[test]
    fn names_the_bad_field() {
        let e =
            parse(json!({"items":[{"product_id":1,"quantity":1},{"product_id":1,"quantity":0}]}))
                .unwrap_err();
        assert_eq!(e.field, "items[1].quantity");
        let e = parse(json!({"items":[{"product_id":"1","quantity":1}]})).unwrap_err();
        assert_eq!(e.field, "items[0].product_id");
        let e = parse(json!({"items":[{"product_id":1,"quantity":1.5}]})).unwrap_err();
        assert_eq!(e.field, "items[0].quantity");
        assert_eq!(parse(json!({"items":[]})).unwrap_err().field, "items");
        assert_eq!(parse(json!({})).unwrap_err().field, "items");
        assert_eq!(parse(json!([1])).unwrap_err().field, "body");
    }

    #[test]
    fn bounds_quantities_and_items() {
        assert!(parse(json!({"items":[{"product_id":1,"quantity":10000}]})).is_ok());
        assert!(parse(json!({"items":[{"product_id":1,"quantity":10001}]})).is_err());
        assert!(parse(
            json!({"items":[{"product_id":1,"quantity":6000},{"product_id":1,"quantity":5000}]})
        )
        .is_err());
        let many: Vec<Value> = (1..=101)
            .map(|i| json!({"product_id":i,"quantity":1}))
            .collect();
        assert!(parse(json!({ "items": many })).is_err());
        let ok: Vec<Value> = (1..=100)
            .map(|i| json!({"product_id":i,"quantity":1}))
            .collect();
        assert!(parse(json!({ "items": ok })).is_ok());
    }

    #[test]
    fn ignores_unknown_fields() {
        assert!(
            parse(json!({"items":[{"product_id":1,"quantity":1,"note":"x"}],"coupon":"y"})).is_ok()
        );
    }
}
