//! A killed process restarted on the same file: orders, events and idempotency records
//! survive, and new ids continue after the old ones.

use crate::support::*;
use std::time::Duration;

#[test]
fn a_restart_on_the_same_file_keeps_orders_and_outbox() {
    let mut app = spawn_app();
    let first = app.place_order(&ALICE, &[(LAPTOP, 1), (MOUSE, 2)]);
    let second_id = app.place_order_id(&BOB, MOUSE, 1);
    app.cancel(&BOB, second_id).assert_status(200);
    let outbox_before = app.outbox_rows();
    let alice_list_before = app.list_orders(&ALICE, "").json();
    let second_before = app.get_order(&BOB, second_id).json();

    app.restart();

    let id = first["id"].as_i64().unwrap();
    assert_eq!(app.get_order(&ALICE, id).json(), first);
    assert_eq!(app.get_order(&BOB, second_id).json(), second_before);
    assert_eq!(app.list_orders(&ALICE, "").json(), alice_list_before);
    assert_eq!(app.outbox_rows(), outbox_before);
}

#[test]
fn ids_continue_after_a_restart() {
    let mut app = spawn_app();
    let before = app.place_order_id(&ALICE, MOUSE, 1);
    let last_event_before = app.outbox_rows().last().unwrap().id;

    app.restart();
    let after = app.place_order_id(&ALICE, MOUSE, 1);

    assert!(
        after > before,
        "a new order id ({after}) must not reuse or precede an old one ({before})"
    );
    let rows = app.outbox_rows();
    assert_eq!(rows.len(), 2);
    assert!(
        rows[1].id > last_event_before,
        "outbox ids continue: {rows:?}"
    );
    assert_eq!(
        rows[1].payload["event_id"],
        format!("test-store:{}", rows[1].id).as_str()
    );
    assert_eq!(
        app.list_orders(&ALICE, "").json()["orders"][0]["id"],
        after,
        "newest first across restarts"
    );
}

#[test]
fn an_idempotent_replay_survives_a_restart() {
    let mut app = spawn_app();
    let body = items(&[(LAPTOP, 1)]);
    let first = app.create_order_with_key(&ALICE, "before-restart", &body);
    first.assert_status(201);

    app.restart();
    let replay = app.create_order_with_key(&ALICE, "before-restart", &body);

    assert_eq!((replay.status, &replay.body), (201, &first.body));
    assert_eq!(app.count_orders(), 1);
}

#[test]
fn transitions_continue_after_a_restart() {
    let mut app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    app.bring_to(id, "shipped");

    app.restart();

    app.cancel(&ALICE, id)
        .assert_error(409, "invalid_transition");
    app.set_status_as_admin(id, "delivered").assert_status(200);
    let events: Vec<String> = app
        .outbox_rows_for(id)
        .into_iter()
        .map(|r| r.event_type)
        .collect();
    assert_eq!(
        events,
        [
            "order_created",
            "order_status_updated",
            "order_status_updated",
            "order_status_updated"
        ]
    );
}

#[test]
fn orders_without_their_lines_on_their_row_read_the_same_and_get_them_after_the_next_start() {
    let mut app = TestApp::builder().env("RUST_LOG", "info").spawn();
    let old = app.place_order(&ALICE, &[(LAPTOP, 1), (MOUSE, 2)]);
    let id = old["id"].as_i64().unwrap();
    app.place_order_id(&ALICE, MOUSE, 1);
    let list = app.list_orders(&ALICE, "").json();
    let lines_of = |app: &TestApp| -> Option<String> {
        app.database()
            .query_one("SELECT lines FROM orders WHERE id = ?1", &[id.into()])
    };
    let written = lines_of(&app).expect("a create writes the order's lines on its row");
    // As the schema before V8, or an older instance beside this one, leaves an order.
    app.database()
        .execute(&format!("UPDATE orders SET lines = NULL WHERE id = {id}"));

    assert_eq!(app.get_order(&ALICE, id).json(), old);
    assert_eq!(
        app.list_orders(&ALICE, "").json(),
        list,
        "one order of the page without its lines"
    );
    let cancelled = app.cancel(&ALICE, id);
    cancelled.assert_status(200);
    let cancelled = cancelled.json();
    assert_eq!(
        cancelled["items"], old["items"],
        "a change reads the order as a get does"
    );
    let list = app.list_orders(&ALICE, "").json();

    app.restart();

    app.wait_for_log(
        "orders given their lines on their row (written before V8, or by an older instance): 1",
        Duration::from_secs(5),
        "the service did not say it filled the order's lines",
    );
    let filled = lines_of(&app).expect("the fill writes an order's missing lines");
    let as_json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    assert_eq!(
        as_json(&filled),
        as_json(&written),
        "filled from order_items: {filled}"
    );
    let missing: i64 = app
        .database()
        .query_one("SELECT COUNT(*) FROM orders WHERE lines IS NULL", &[]);
    assert_eq!(missing, 0);
    assert_eq!(app.get_order(&ALICE, id).json(), cancelled);
    assert_eq!(app.list_orders(&ALICE, "").json(), list);
}
