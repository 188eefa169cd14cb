//! An order's lines as one JSON text on its row (`orders.lines`, V8): an array of
//! `[product_id, product_name, quantity, price_cents, subtotal_cents]`, in line order.
//! Arrays, not objects: the column holds them for every order, and the start-up fill of
//! older rows writes the same shape with each engine's JSON functions.

use crate::domain::{Money, OrderItem, ProductId};

type Line<'a> = (i64, &'a str, u32, i64, i64);

pub fn encode(items: &[OrderItem]) -> String {
    let lines: Vec<Line<'_>> = items
        .iter()
        .map(|i| {
            (
                i.product_id.get(),
                i.product_name.as_str(),
                i.quantity,
                i.price.cents(),
                i.subtotal.cents(),
            )
        })
        .collect();
    serde_json::to_string(&lines).expect("lines are plain numbers and strings")
}

/// The lines `encode` wrote, or what is wrong with the text.
pub fn decode(text: &str) -> Result<Vec<OrderItem>, String> {
    let lines: Vec<(i64, String, u32, i64, i64)> =
        serde_json::from_str(text).map_err(|e| format!("an order's lines do not parse: {e}"))?;
    lines
        .into_iter()
        .map(|(product_id, product_name, quantity, price, subtotal)| {
            Ok(OrderItem {
                product_id: ProductId::new(product_id)
                    .ok_or_else(|| format!("an order's line holds product id {product_id}"))?,
                product_name,
                quantity,
                price: Money::from_cents(price),
                subtotal: Money::from_cents(subtotal),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, name: &str, quantity: u32, price: i64) -> OrderItem {
        OrderItem {
            product_id: ProductId::new(id).unwrap(),
            product_name: name.to_string(),
            quantity,
            price: Money::from_cents(price),
            subtotal: Money::from_cents(price * i64::from(quantity)),
        }
    }

    #[test]
    fn lines_read_back_as_written_in_their_order() {
        let items = vec![
            item(7, "Tea \"green\", 100 g", 3, 450),
            item(2, "Café ☕ / Ñ\n", 1, 99_999_999),
            item(1, "", 1, 0),
        ];
        let text = encode(&items);
        assert_eq!(decode(&text).unwrap(), items);
        assert!(
            text.starts_with(r#"[[7,"Tea \"green\", 100 g",3,450,1350],"#),
            "{text}"
        );
    }

    #[test]
    fn postgresqls_spacing_of_the_same_arrays_reads_the_same() {
        let text = r#"[[7, "Tea", 3, 450, 1350], [2, "Mug", 1, 1200, 1200]]"#;
        let items = decode(text).unwrap();
        assert_eq!(items, vec![item(7, "Tea", 3, 450), item(2, "Mug", 1, 1200)]);
    }

    #[test]
    fn a_damaged_text_is_an_error_not_a_panic() {
        for bad in [
            "",
            "[",
            "{}",
            "[[0,\"x\",1,1,1]]",
            "[[1,\"x\",-1,1,1]]",
            "[[1,2,3]]",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} decoded");
        }
    }
}
