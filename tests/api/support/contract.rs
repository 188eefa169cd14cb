//! What the API promises, checked the same way everywhere: the order object's shape,
//! UTC times, and money spelled as exact decimal text.

use serde_json::Value;

/// Every status an order can have.
pub const STATUSES: [&str; 5] = ["pending", "confirmed", "shipped", "delivered", "cancelled"];

/// The raw text of every number written as `"key": <number>` in a JSON text, so a test
/// can check how money is spelled, not just its value.
pub fn raw_numbers(body: &str, key: &str) -> Vec<String> {
    let needle = format!("\"{key}\"");
    let mut found = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find(&needle) {
        rest = &rest[at + needle.len()..];
        let after = rest.trim_start();
        if let Some(value) = after.strip_prefix(':') {
            let value = value.trim_start();
            let number: String = value
                .chars()
                .take_while(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
                .collect();
            if !number.is_empty() {
                found.push(number);
            }
        }
    }
    found
}

/// RFC 3339 in UTC: `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)`.
#[track_caller]
pub fn assert_utc_rfc3339(value: &Value) {
    let s = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time string: {value}"));
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        r.into_iter()
            .all(|i| b.get(i).is_some_and(u8::is_ascii_digit))
    };
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let zone = s.ends_with('Z') || s.ends_with("+00:00");
    let middle = &s[19..s.len()
        - if s.ends_with('Z') {
            1
        } else {
            6.min(s.len() - 19)
        }];
    let fraction_ok = middle.is_empty()
        || (middle.starts_with('.')
            && middle.len() > 1
            && middle[1..].bytes().all(|c| c.is_ascii_digit()));
    assert!(shape && zone && fraction_ok, "not UTC RFC 3339: {s}");
}

/// Checks the order object's fields and types, as the contract shows them.
#[track_caller]
pub fn assert_order_shape(order: &Value) {
    assert!(
        order["id"].as_i64().is_some_and(|id| id >= 1),
        "id: {order}"
    );
    assert!(order["user_id"].is_string(), "user_id: {order}");
    assert!(order["user_email"].is_string(), "user_email: {order}");
    assert!(order["total"].is_number(), "total: {order}");
    assert!(
        STATUSES.contains(&order["status"].as_str().unwrap_or("")),
        "status: {order}"
    );
    assert_utc_rfc3339(&order["created_at"]);
    assert_utc_rfc3339(&order["updated_at"]);
    let lines = order["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items: {order}"));
    assert!(!lines.is_empty(), "items: {order}");
    for line in lines {
        assert!(line["product_id"].as_i64().is_some(), "product_id: {line}");
        assert!(line["product_name"].is_string(), "product_name: {line}");
        assert!(line["quantity"].as_i64().is_some(), "quantity: {line}");
        assert!(line["price"].is_number(), "price: {line}");
        assert!(line["subtotal"].is_number(), "subtotal: {line}");
    }
}

/// The line for `product_id` in an order.
#[track_caller]
pub fn line_for(order: &Value, product_id: i64) -> Value {
    order["items"]
        .as_array()
        .and_then(|lines| lines.iter().find(|l| l["product_id"] == product_id))
        .cloned()
        .unwrap_or_else(|| panic!("no line for product {product_id} in {order}"))
}
