//! `POST /api/orders`: the order it answers, how money is spelled, validation, identity,
//! and the `order_created` event written with it.

use serde_json::{json, Value};

use crate::support::*;

#[test]
fn create_order_answers_201_with_the_order_and_its_location() {
    let app = spawn_app();

    let response = app.create_order(&ALICE, &items(&[(LAPTOP, 2)]));

    response.assert_status(201);
    let order = response.json();
    assert_order_shape(&order);
    let id = order["id"].as_i64().unwrap();
    assert_eq!(
        response.header("location"),
        Some(format!("/api/orders/{id}").as_str()),
        "{response:?}"
    );
    assert_eq!(order["user_id"], "alice");
    assert_eq!(order["user_email"], "alice@example.com");
    assert_eq!(order["status"], "pending");
    assert_eq!(order["items"].as_array().unwrap().len(), 1);
    let line = line_for(&order, LAPTOP);
    assert_eq!(line["product_name"], "Laptop");
    assert_eq!(line["quantity"], 2);
    assert_eq!(line["price"].as_f64(), Some(1299.99));
    assert_eq!(line["subtotal"].as_f64(), Some(2599.98));
    assert_eq!(order["total"].as_f64(), Some(2599.98));
    assert_eq!(
        order["created_at"], order["updated_at"],
        "a new order was never updated"
    );
    assert!(response
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("application/json")));
}

#[test]
fn create_order_stores_the_order_and_its_lines() {
    let app = spawn_app();

    let order = app.place_order(&ALICE, &[(LAPTOP, 1), (MOUSE, 3)]);

    assert_eq!(app.count_orders(), 1);
    assert_eq!(app.count_items(), 2);
    let (total_cents, status): (i64, String) = app.query_one(
        "SELECT total_cents, status FROM orders WHERE id = ?1",
        &[order["id"].clone()],
    );
    assert_eq!(
        total_cents,
        129999 + 3 * 1999,
        "money is integer cents inside"
    );
    assert_eq!(status, "pending");
}

#[test]
fn money_is_exact_and_written_with_two_decimals() {
    let app = spawn_app();
    app.products.set(10, product("Round", "1299.90", 10));

    let three_mice = app.create_order(&ALICE, &items(&[(MOUSE, 3)]));
    three_mice.assert_status(201);
    assert_eq!(
        raw_numbers(&three_mice.body, "price"),
        ["19.99"],
        "{}",
        three_mice.body
    );
    assert_eq!(
        raw_numbers(&three_mice.body, "subtotal"),
        ["59.97"],
        "{}",
        three_mice.body
    );
    assert_eq!(
        raw_numbers(&three_mice.body, "total"),
        ["59.97"],
        "{}",
        three_mice.body
    );

    // 0.1 + 0.2 is 0.30000000000000004 in floating point: cents must not drift.
    let cents = app.create_order(&ALICE, &items(&[(CABLE, 1), (ADAPTER, 1)]));
    cents.assert_status(201);
    assert_eq!(
        raw_numbers(&cents.body, "total"),
        ["0.30"],
        "{}",
        cents.body
    );

    let round = app.create_order(&ALICE, &items(&[(10, 1)]));
    round.assert_status(201);
    assert_eq!(
        raw_numbers(&round.body, "price"),
        ["1299.90"],
        "{}",
        round.body
    );
    assert_eq!(
        raw_numbers(&round.body, "total"),
        ["1299.90"],
        "{}",
        round.body
    );
}

#[test]
fn large_quantities_and_totals_stay_exact() {
    let app = spawn_app();
    app.products.set(11, product("Bulk", "9999.99", 100_000));

    let response = app.create_order(&ALICE, &items(&[(11, 10_000)]));

    response.assert_status(201);
    assert_eq!(
        raw_numbers(&response.body, "subtotal"),
        ["99999900.00"],
        "{}",
        response.body
    );
    assert_eq!(
        raw_numbers(&response.body, "total"),
        ["99999900.00"],
        "{}",
        response.body
    );
}

#[test]
fn the_same_product_twice_is_merged_into_one_line() {
    let app = spawn_app();

    let response = app.create_order(&ALICE, &items(&[(LAPTOP, 2), (MOUSE, 1), (LAPTOP, 3)]));

    response.assert_status(201);
    let order = response.json();
    let lines = order["items"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{order}");
    assert_eq!(line_for(&order, LAPTOP)["quantity"], 5);
    assert_eq!(
        raw_numbers(&response.body, "total"),
        ["6519.94"],
        "{}",
        response.body
    );
    assert_eq!(app.count_items(), 2);
}

#[test]
fn merged_lines_are_checked_against_stock_as_one_quantity() {
    let app = spawn_app();

    // Monitor has stock 3: 2 + 2 is 4.
    let response = app.create_order(&ALICE, &items(&[(MONITOR, 2), (MONITOR, 2)]));

    let body = response.assert_error(409, "insufficient_stock");
    assert_eq!(
        body["details"],
        json!([{"product_id": MONITOR, "requested": 4, "available": 3}])
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let app = spawn_app();
    let body = json!({
        "items": [{"product_id": MOUSE, "quantity": 1, "colour": "red", "price": 0.01}],
        "note": "leave at the door",
        "user_id": "mallory",
        "total": 0
    });

    let response = app.create_order(&ALICE, &body);

    response.assert_status(201);
    let order = response.json();
    assert_eq!(
        order["user_id"], "alice",
        "the identity comes from the gateway, not the body"
    );
    assert_eq!(
        line_for(&order, MOUSE)["price"].as_f64(),
        Some(19.99),
        "the price comes from the product service"
    );
    assert_eq!(order["total"].as_f64(), Some(19.99));
}

#[test]
fn a_hundred_lines_are_accepted() {
    let app = spawn_app();
    for id in 100..200 {
        app.products
            .set(id, product(&format!("Item {id}"), "1.00", 10));
    }
    let lines: Vec<(i64, i64)> = (100..200).map(|id| (id, 1)).collect();

    let response = app.create_order(&ALICE, &items(&lines));

    response.assert_status(201);
    assert_eq!(response.json()["items"].as_array().unwrap().len(), 100);
    assert_eq!(raw_numbers(&response.body, "total"), ["100.00"]);
}

#[test]
fn quantity_10000_is_accepted() {
    let app = spawn_app();
    app.products.set(12, product("Screw", "0.01", 20_000));

    let response = app.create_order(&ALICE, &items(&[(12, 10_000)]));

    response.assert_status(201);
    assert_eq!(raw_numbers(&response.body, "total"), ["100.00"]);
}

#[test]
fn invalid_bodies_answer_400_naming_the_field_and_write_nothing() {
    let app = spawn_app();
    let many: Vec<(i64, i64)> = (1..=101).map(|id| (id, 1)).collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no items", json!({}), "items"),
        ("empty items", json!({"items": []}), "items"),
        ("101 items", items(&many), "items"),
        ("items not an array", json!({"items": "laptop"}), "items"),
        ("items null", json!({"items": null}), "items"),
        ("quantity 0", items(&[(LAPTOP, 0)]), "items[0].quantity"),
        ("quantity -1", items(&[(LAPTOP, -1)]), "items[0].quantity"),
        (
            "quantity 10001",
            items(&[(LAPTOP, 10_001)]),
            "items[0].quantity",
        ),
        (
            "second line's quantity 0",
            items(&[(LAPTOP, 1), (MOUSE, 0)]),
            "items[1].quantity",
        ),
        (
            "quantity a string",
            json!({"items": [{"product_id": LAPTOP, "quantity": "2"}]}),
            "items[0].quantity",
        ),
        (
            "quantity a fraction",
            json!({"items": [{"product_id": LAPTOP, "quantity": 1.5}]}),
            "items[0].quantity",
        ),
        (
            "quantity missing",
            json!({"items": [{"product_id": LAPTOP}]}),
            "items[0].quantity",
        ),
        ("product_id 0", items(&[(0, 1)]), "items[0].product_id"),
        ("product_id -5", items(&[(-5, 1)]), "items[0].product_id"),
        (
            "product_id missing",
            json!({"items": [{"quantity": 1}]}),
            "items[0].product_id",
        ),
        (
            "product_id a string",
            json!({"items": [{"product_id": "1", "quantity": 1}]}),
            "items[0].product_id",
        ),
        (
            "third line's product_id 0",
            json!({"items": [{"product_id": 1, "quantity": 1}, {"product_id": 2, "quantity": 1}, {"product_id": 0, "quantity": 1}]}),
            "items[2].product_id",
        ),
    ];
    let mut failures = Vec::new();
    for (name, body, field) in cases {
        let response = app.create_order(&ALICE, &body);
        let ok = response.status == 400
            && serde_json::from_str::<Value>(&response.body).is_ok_and(|b| {
                b["code"] == "validation_failed"
                    && b["details"]["field"] == field
                    && b["error"].is_string()
            });
        if !ok {
            failures.push(format!(
                "{name}: expected 400 validation_failed naming {field:?}, got {response:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(app.counts().orders, 0, "a failed create writes nothing");
    assert_eq!(app.counts().outbox, 0, "a failed create writes nothing");
}

#[test]
fn a_body_that_is_not_an_object_answers_400() {
    let app = spawn_app();
    for body in [json!([]), json!(42), json!("items"), json!(null)] {
        let response = app.create_order(&ALICE, &body);
        assert_eq!(response.status, 400, "body {body}: {response:?}");
        let code = response.json()["code"].clone();
        assert!(
            code == "validation_failed" || code == "invalid_json",
            "body {body}: {response:?}"
        );
    }
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn validation_happens_before_asking_the_product_service() {
    let app = spawn_app();

    app.create_order(&ALICE, &items(&[(LAPTOP, 1), (MOUSE, 0)]))
        .assert_status(400);

    assert_eq!(
        app.products.calls(),
        0,
        "an invalid order needs no product lookups"
    );
}

#[test]
fn missing_user_id_answers_401() {
    let app = spawn_app();
    let body = serde_json::to_vec(&items(&[(LAPTOP, 1)])).unwrap();

    let response = app.request(
        "POST",
        "/api/orders",
        &[
            ("X-User-Email", "alice@example.com"),
            ("Content-Type", "application/json"),
        ],
        Some(&body),
    );

    response.assert_error(401, "unauthorized");
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn invalid_user_ids_answer_401() {
    let app = spawn_app();
    let body = serde_json::to_vec(&items(&[(LAPTOP, 1)])).unwrap();
    let too_long = "u".repeat(101);
    for user_id in ["", "   ", too_long.as_str()] {
        let response = app.request(
            "POST",
            "/api/orders",
            &[
                ("X-User-Id", user_id),
                ("X-User-Email", "a@example.com"),
                ("Content-Type", "application/json"),
            ],
            Some(&body),
        );
        assert_eq!(response.status, 401, "X-User-Id {user_id:?}: {response:?}");
        response.assert_error(401, "unauthorized");
    }
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn a_user_id_of_100_characters_is_accepted() {
    let app = spawn_app();
    let user_id = "u".repeat(100);
    let body = serde_json::to_vec(&items(&[(LAPTOP, 1)])).unwrap();

    let response = app.request(
        "POST",
        "/api/orders",
        &[
            ("X-User-Id", &user_id),
            ("X-User-Email", "a@example.com"),
            ("Content-Type", "application/json"),
        ],
        Some(&body),
    );

    response.assert_status(201);
    assert_eq!(response.json()["user_id"], user_id.as_str());
}

#[test]
fn missing_user_email_on_create_answers_401() {
    let app = spawn_app();
    let body = serde_json::to_vec(&items(&[(LAPTOP, 1)])).unwrap();

    let response = app.request(
        "POST",
        "/api/orders",
        &[("X-User-Id", "alice"), ("Content-Type", "application/json")],
        Some(&body),
    );

    response.assert_error(401, "unauthorized");
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn a_malformed_user_email_on_create_answers_400() {
    let app = spawn_app();
    let body = serde_json::to_vec(&items(&[(LAPTOP, 1)])).unwrap();
    let too_long = format!("{}@example.com", "a".repeat(200));
    for email in ["alice", "alice.example.com", too_long.as_str()] {
        let response = app.request(
            "POST",
            "/api/orders",
            &[
                ("X-User-Id", "alice"),
                ("X-User-Email", email),
                ("Content-Type", "application/json"),
            ],
            Some(&body),
        );
        assert_eq!(response.status, 400, "X-User-Email {email:?}: {response:?}");
        response.assert_error(400, "validation_failed");
    }
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn the_email_is_only_needed_to_create() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    let response = app.request(
        "GET",
        &format!("/api/orders/{id}"),
        &[("X-User-Id", "alice")],
        None,
    );

    response.assert_status(200);
}

#[test]
fn a_created_order_writes_one_order_created_event() {
    let app = spawn_app();

    let order = app.place_order(&ALICE, &[(LAPTOP, 1), (MOUSE, 2)]);

    let rows = app.outbox_rows();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    let id = order["id"].as_i64().unwrap();
    assert_eq!(row.order_id, id);
    assert_eq!(row.event_type, "order_created");
    let event = &row.payload;
    assert_eq!(
        event["event_id"],
        format!("test-store:{}", row.id).as_str(),
        "{event}"
    );
    assert_eq!(event["event_type"], "order_created");
    assert_utc_rfc3339(&event["occurred_at"]);
    assert_eq!(event["source"], "test-store");
    assert_eq!(event["order_id"], id);
    assert_eq!(event["user_id"], "alice");
    assert_eq!(event["user_email"], "alice@example.com");
    assert_eq!(event["status"], "pending");
    assert!(
        event.get("previous_status").is_some_and(Value::is_null),
        "previous_status is null: {event}"
    );
    assert_eq!(event["total"].as_f64(), Some(1339.97));
    assert_eq!(
        event["items"], order["items"],
        "the event carries the order's lines"
    );
    let marked: i64 = app.query_one(
        "SELECT COUNT(*) FROM outbox_marks WHERE upto >= ?1",
        &[row.id.into()],
    );
    assert_eq!(
        marked, 0,
        "no broker is reachable, so nothing is published yet"
    );
}

/// A write that fails late in a create (its ledger row, here refused by a rule added to
/// the database) leaves nothing of the order: no order, line or event. PostgreSQL sends
/// a create's writes together with its commit, so the failure shows there.
#[test]
fn a_create_whose_last_writes_fail_keeps_nothing_and_the_next_ones_work() {
    let app = spawn_app();
    app.place_order(&ALICE, &[(MOUSE, 1)]);
    app.database().execute(match app.database().backend() {
        Backend::Sqlite => {
            "CREATE TRIGGER refuse_seven BEFORE INSERT ON stock_ledger
             WHEN NEW.quantity = 7 BEGIN SELECT RAISE(ABORT, 'seven refused'); END"
        }
        Backend::Postgres => {
            "ALTER TABLE stock_ledger ADD CONSTRAINT refuse_seven CHECK (quantity <> 7)"
        }
    });
    let before = app.counts();

    let refused = app.create_order(&ALICE, &items(&[(MOUSE, 2), (CABLE, 7)]));
    refused.assert_error(503, "service_unavailable");
    assert_eq!(
        app.counts(),
        before,
        "nothing of the refused order was kept"
    );

    // Every write session is in a clean state again.
    for _ in 0..20 {
        app.place_order(&BOB, &[(MOUSE, 1)]);
    }
    assert_eq!(app.count_orders(), before.orders + 20);
    assert_eq!(app.count_outbox(), before.outbox + 20);
}
