//! Who calls and what they send: the gateway's users and order bodies. The products are
//! the stand-in's default catalog (`stand_in.rs`).

use super::stand_in::{CABLE, MOUSE};
use super::{write_file, TempDir};
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

/// Product id of the catalog-file widget (see `catalog_file`).
pub const WIDGET: i64 = 42;

/// `PRODUCT_SERVICE_URL` for a catalog file in `dir` (Mouse, Cable and a Widget, all with
/// plenty of stock). The high-volume tests use it instead of the HTTP stand-in: product
/// lookups are not what they are about, and a file answers a burst of creates without a
/// socket or a thread per lookup.
pub fn catalog_file(dir: &TempDir) -> String {
    let path = write_file(
        dir,
        "catalog.json",
        &json!([
            {"id": MOUSE, "name": "Mouse", "price": 19.99, "stock": 1_000_000},
            {"id": CABLE, "name": "Cable", "price": 0.10, "stock": 1_000_000},
            {"id": WIDGET, "name": "Widget", "price": 1.25, "stock": 1_000_000},
        ])
        .to_string(),
    );
    format!("file:{}", path.display())
}
