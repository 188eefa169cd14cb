//! Who calls and what they send: the gateway's users and order bodies. The products are
//! the stand-in's default catalog (`stand_in.rs`).

use serde_json::{json, Value};

/// A user as the gateway introduces them.
#[derive(Debug, Clone, Copy)]
pub struct User {
    pub id: &'static str,
    pub email: &'static str,
}

pub const ALICE: User = User {
    id: "alice",
    email: "alice@example.com",
};
pub const BOB: User = User {
    id: "bob",
    email: "bob@example.com",
};
pub const CAROL: User = User {
    id: "carol",
    email: "carol@example.com",
};

/// The user id the admin helpers send along with `X-User-Role: admin`.
pub const ADMIN_USER_ID: &str = "ops-admin";

/// `{"items":[{"product_id":p,"quantity":q},…]}`
pub fn items(lines: &[(i64, i64)]) -> Value {
    json!({
        "items": lines
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect::<Vec<_>>()
    })
}
