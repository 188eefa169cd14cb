//! `Idempotency-Key` on `POST /api/orders`: replays, reuse with another body, per-user keys,
//! retries after failures, and a repeat that races the first request.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[test]
fn a_replay_with_the_same_key_and_body_answers_the_same_without_a_second_order() {
    let app = spawn_app();
    let body = items(&[(LAPTOP, 1), (MOUSE, 2)]);

    let first = app.create_order_with_key(&ALICE, "key-1", &body);
    let second = app.create_order_with_key(&ALICE, "key-1", &body);

    first.assert_status(201);
    assert_eq!(second.status, first.status, "{second:?}");
    assert_eq!(second.body, first.body, "the stored body, byte for byte");
    assert_eq!(app.count_orders(), 1, "no second order");
    assert_eq!(app.count_outbox(), 1, "no second event");
}

#[test]
fn a_replay_after_the_order_changed_still_answers_the_stored_response() {
    let app = spawn_app();
    let body = items(&[(LAPTOP, 1)]);
    let first = app.create_order_with_key(&ALICE, "key-1", &body);
    first.assert_status(201);
    app.cancel(&ALICE, first.json()["id"].as_i64().unwrap())
        .assert_status(200);

    let replay = app.create_order_with_key(&ALICE, "key-1", &body);

    assert_eq!(
        (replay.status, &replay.body),
        (201, &first.body),
        "the first request's status and body"
    );
    assert_eq!(app.count_orders(), 1);
}

#[test]
fn a_replay_with_the_same_body_spelled_differently_is_the_same_request() {
    let app = spawn_app();
    let first = app.create_order_with_key(
        &ALICE,
        "key-1",
        &json!({"items": [{"product_id": 1, "quantity": 1}]}),
    );
    first.assert_status(201);

    let reordered = app.request(
        "POST",
        "/api/orders",
        &[
            ("X-User-Id", "alice"),
            ("X-User-Email", "alice@example.com"),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "key-1"),
        ],
        Some(b"{ \"items\" : [ { \"quantity\" : 1, \"product_id\" : 1 } ] }"),
    );

    assert_eq!(
        reordered.status, 201,
        "the same JSON, other whitespace and key order: {reordered:?}"
    );
    assert_eq!(reordered.body, first.body);
    assert_eq!(app.count_orders(), 1);
}

#[test]
fn the_same_key_with_another_body_answers_422() {
    let app = spawn_app();
    app.create_order_with_key(&ALICE, "key-1", &items(&[(LAPTOP, 1)]))
        .assert_status(201);
    let before = app.counts();

    let response = app.create_order_with_key(&ALICE, "key-1", &items(&[(LAPTOP, 2)]));

    response.assert_error(422, "idempotency_key_reused");
    assert_eq!(app.counts(), before, "a failed request changes nothing");
}

#[test]
fn keys_belong_to_one_user() {
    let app = spawn_app();
    let body = items(&[(LAPTOP, 1)]);

    let alices = app.create_order_with_key(&ALICE, "shared-key", &body);
    let bobs = app.create_order_with_key(&BOB, "shared-key", &body);

    alices.assert_status(201);
    bobs.assert_status(201);
    assert_ne!(
        alices.json()["id"],
        bobs.json()["id"],
        "two independent orders"
    );
    assert_eq!(bobs.json()["user_id"], "bob");
    assert_eq!(app.count_orders(), 2);
    assert_eq!(app.count_outbox(), 2);
}

#[test]
fn different_keys_make_different_orders() {
    let app = spawn_app();
    let body = items(&[(LAPTOP, 1)]);

    app.create_order_with_key(&ALICE, "key-1", &body)
        .assert_status(201);
    app.create_order_with_key(&ALICE, "key-2", &body)
        .assert_status(201);

    assert_eq!(app.count_orders(), 2);
}

#[test]
fn a_create_refused_for_stock_can_be_retried_with_the_same_key() {
    let app = spawn_app();
    app.products.set(20, product("Scarce", "5.00", 1));
    let body = items(&[(20, 2)]);

    let refused = app.create_order_with_key(&ALICE, "key-1", &body);
    refused.assert_error(409, "insufficient_stock");
    assert_eq!(app.count_orders(), 0);

    app.products.set(20, product("Scarce", "5.00", 10));
    let retried = app.create_order_with_key(&ALICE, "key-1", &body);
    retried.assert_status(201);

    let replay = app.create_order_with_key(&ALICE, "key-1", &body);
    assert_eq!(
        (replay.status, &replay.body),
        (201, &retried.body),
        "now the success is stored"
    );
    assert_eq!(app.count_orders(), 1);
    assert_eq!(app.count_outbox(), 1);
}

#[test]
fn a_create_that_met_an_unavailable_product_service_can_be_retried_with_the_same_key() {
    let app = spawn_app();
    app.products.set(21, Behaviour::Status(500));
    let body = items(&[(21, 1)]);

    app.create_order_with_key(&ALICE, "key-1", &body)
        .assert_error(503, "product_service_unavailable");

    app.products.set(21, product("Back", "3.00", 5));
    let retried = app.create_order_with_key(&ALICE, "key-1", &body);
    retried.assert_status(201);
    assert_eq!(app.count_orders(), 1);
}

#[test]
fn a_create_refused_for_an_unknown_product_can_be_retried_with_the_same_key() {
    let app = spawn_app();
    let body = items(&[(22, 1)]);

    app.create_order_with_key(&ALICE, "key-1", &body)
        .assert_error(422, "unknown_product");

    app.products.set(22, product("New", "1.00", 5));
    app.create_order_with_key(&ALICE, "key-1", &body)
        .assert_status(201);
}

#[test]
fn a_key_over_200_characters_answers_400_and_writes_nothing() {
    let app = spawn_app();
    let long = "k".repeat(201);

    let response = app.create_order_with_key(&ALICE, &long, &items(&[(LAPTOP, 1)]));

    response.assert_error(400, "validation_failed");
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn a_key_of_200_characters_is_accepted() {
    let app = spawn_app();
    let key = "k".repeat(200);
    let body = items(&[(LAPTOP, 1)]);

    let first = app.create_order_with_key(&ALICE, &key, &body);
    let again = app.create_order_with_key(&ALICE, &key, &body);

    first.assert_status(201);
    assert_eq!(again.body, first.body);
    assert_eq!(app.count_orders(), 1);
}

#[test]
fn a_repeat_while_the_first_is_in_flight_waits_or_answers_409() {
    let app = spawn_app();
    app.products.set(
        23,
        Behaviour::Slow(
            Duration::from_millis(800),
            Box::new(product("Slow", "2.00", 5)),
        ),
    );
    let body = items(&[(23, 1)]);

    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| app.create_order_with_key(&ALICE, "race", &body));
        // Let the first one reach the product service before the repeat arrives.
        assert!(
            wait_until(Duration::from_secs(5), || app.products.calls_for(23) >= 1),
            "the first request never asked the product service"
        );
        let second = s.spawn(|| app.create_order_with_key(&ALICE, "race", &body));
        (first.join().unwrap(), second.join().unwrap())
    });

    first.assert_status(201);
    match second.status {
        201 => assert_eq!(
            second.body, first.body,
            "a repeat that waited answers the stored response"
        ),
        409 => {
            second.assert_error(409, "idempotency_key_in_progress");
        }
        _ => panic!("expected the repeat to wait (201, same body) or answer 409: {second:?}"),
    }
    assert_eq!(app.count_orders(), 1, "one order, however the race went");
    assert_eq!(app.count_outbox(), 1);
}
