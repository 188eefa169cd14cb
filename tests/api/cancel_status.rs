//! `PATCH /api/orders/:id/cancel` and `PATCH /api/orders/:id/status`: the transition table,
//! who may do what, and the one event each real change writes.

use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::support::*;

/// The contract's transitions: pending → confirmed | cancelled; confirmed → shipped |
/// cancelled; shipped → delivered; delivered and cancelled are final.
fn is_legal(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("pending", "confirmed")
            | ("pending", "cancelled")
            | ("confirmed", "shipped")
            | ("confirmed", "cancelled")
            | ("shipped", "delivered")
    )
}

#[test]
fn cancel_a_pending_order_answers_200_and_writes_order_cancelled() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    let response = app.cancel(&ALICE, id);

    response.assert_status(200);
    let order = response.json();
    assert_order_shape(&order);
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["id"], id);
    assert_eq!(app.get_order(&ALICE, id).json()["status"], "cancelled");
    let rows = app.outbox_rows_for(id);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1].event_type, "order_cancelled");
    assert_eq!(rows[1].payload["event_type"], "order_cancelled");
    assert_eq!(rows[1].payload["status"], "cancelled");
    assert_eq!(rows[1].payload["previous_status"], "pending");
    assert_eq!(
        rows[1].payload["event_id"],
        format!("test-store:{}", rows[1].id).as_str()
    );
}

#[test]
fn cancel_a_confirmed_order_answers_200() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    app.bring_to(id, "confirmed");

    let response = app.cancel(&ALICE, id);

    response.assert_status(200);
    assert_eq!(response.json()["status"], "cancelled");
    let last = app.outbox_rows_for(id).pop().unwrap();
    assert_eq!(last.event_type, "order_cancelled");
    assert_eq!(last.payload["previous_status"], "confirmed");
}

#[test]
fn cancelling_a_cancelled_order_answers_200_without_a_new_event() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    let first = app.cancel(&ALICE, id);
    first.assert_status(200);
    let before = app.outbox_rows();

    let again = app.cancel(&ALICE, id);

    again.assert_status(200);
    assert_eq!(again.json()["status"], "cancelled");
    assert_eq!(
        again.json()["updated_at"],
        first.json()["updated_at"],
        "nothing changed"
    );
    assert_eq!(app.outbox_rows(), before, "no new event");
}

#[test]
fn cancelling_a_shipped_or_delivered_order_answers_409() {
    let app = spawn_app();
    for status in ["shipped", "delivered"] {
        let id = app.place_order_id(&ALICE, LAPTOP, 1);
        app.bring_to(id, status);
        let before = app.outbox_rows();
        let order_before = app.get_order(&ALICE, id).json();

        let response = app.cancel(&ALICE, id);

        assert_eq!(response.status, 409, "cancel from {status}: {response:?}");
        response.assert_error(409, "invalid_transition");
        assert_eq!(
            app.get_order(&ALICE, id).json(),
            order_before,
            "a failed request changes nothing"
        );
        assert_eq!(app.outbox_rows(), before, "no event for a refused cancel");
    }
}

#[test]
fn cancelling_another_users_order_answers_404_and_changes_nothing() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    app.cancel(&BOB, id).assert_error(404, "not_found");
    app.cancel(&BOB, id + 1000).assert_error(404, "not_found");

    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
    assert_eq!(app.count_outbox(), 1);
}

#[test]
fn cancel_without_user_id_answers_401() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    app.request("PATCH", &format!("/api/orders/{id}/cancel"), &[], None)
        .assert_error(401, "unauthorized");

    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
}

#[test]
fn every_transition_is_legal_or_409_as_the_contract_says() {
    let app = spawn_app();
    let mut failures = Vec::new();
    for from in STATUSES {
        for to in STATUSES {
            let id = app.place_order_id(&ALICE, MOUSE, 1);
            app.bring_to(id, from);
            let before = app.outbox_rows_for(id);

            let response = app.set_status_as_admin(id, to);

            let after = app.outbox_rows_for(id);
            let new_rows = &after[before.len().min(after.len())..];
            let status_now = app.get_order(&ALICE, id).json()["status"].clone();
            let expectation = if from == to {
                "200, unchanged, no new event"
            } else if is_legal(from, to) {
                "200, changed, one new event"
            } else {
                "409 invalid_transition, unchanged, no new event"
            };
            let body: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
            let ok = if from == to {
                response.status == 200
                    && body["status"] == to
                    && status_now == to
                    && after == before
            } else if is_legal(from, to) {
                response.status == 200
                    && body["status"] == to
                    && status_now == to
                    && after.len() == before.len() + 1
                    && new_rows[0].payload["status"] == to
                    && new_rows[0].payload["previous_status"] == from
                    && new_rows[0].payload["order_id"] == id
            } else {
                response.status == 409
                    && body["code"] == "invalid_transition"
                    && status_now == from
                    && after == before
            };
            if !ok {
                failures.push(format!(
                    "{from} -> {to}: expected {expectation}; got {response:?}, status now {status_now}, new events {:?}",
                    new_rows.iter().map(|r| (&r.event_type, &r.payload["status"])).collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn setting_the_same_status_answers_200_without_a_new_event() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    app.bring_to(id, "confirmed");
    let before = app.outbox_rows();
    let order_before = app.get_order(&ALICE, id).json();

    let response = app.set_status_as_admin(id, "confirmed");

    response.assert_status(200);
    assert_eq!(
        response.json(),
        order_before,
        "nothing changed, not even updated_at"
    );
    assert_eq!(app.outbox_rows(), before);
}

#[test]
fn status_updates_write_order_status_updated_events() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    app.set_status_as_admin(id, "confirmed").assert_status(200);

    let last = app.outbox_rows_for(id).pop().unwrap();
    assert_eq!(last.event_type, "order_status_updated");
    assert_eq!(last.payload["event_type"], "order_status_updated");
    assert_eq!(last.payload["status"], "confirmed");
    assert_eq!(last.payload["previous_status"], "pending");
}

#[test]
fn an_admin_cancellation_writes_order_cancelled() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    app.set_status_as_admin(id, "cancelled").assert_status(200);

    let last = app.outbox_rows_for(id).pop().unwrap();
    assert_eq!(
        last.event_type, "order_cancelled",
        "a cancellation is an order_cancelled event, whoever does it"
    );
    assert_eq!(last.payload["status"], "cancelled");
    assert_eq!(last.payload["previous_status"], "pending");
}

#[test]
fn the_outbox_holds_exactly_the_expected_rows_after_each_change() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    let other = app.place_order_id(&BOB, MOUSE, 1);
    let mut expected: Vec<(&str, i64, &str, Value)> = vec![
        ("order_created", id, "pending", Value::Null),
        ("order_created", other, "pending", Value::Null),
    ];
    assert_outbox(&app, &expected);
    for (from, to) in [
        ("pending", "confirmed"),
        ("confirmed", "shipped"),
        ("shipped", "delivered"),
    ] {
        app.set_status_as_admin(id, to).assert_status(200);
        expected.push(("order_status_updated", id, to, json!(from)));
        assert_outbox(&app, &expected);
    }
    app.cancel(&BOB, other).assert_status(200);
    expected.push(("order_cancelled", other, "cancelled", json!("pending")));
    assert_outbox(&app, &expected);
}

#[track_caller]
fn assert_outbox(app: &TestApp, expected: &[(&str, i64, &str, Value)]) {
    let rows = app.outbox_rows();
    let got: Vec<(String, i64, Value, Value)> = rows
        .iter()
        .map(|r| {
            (
                r.event_type.clone(),
                r.order_id,
                r.payload["status"].clone(),
                r.payload["previous_status"].clone(),
            )
        })
        .collect();
    let want: Vec<(String, i64, Value, Value)> = expected
        .iter()
        .map(|(t, o, s, p)| (t.to_string(), *o, json!(s), p.clone()))
        .collect();
    assert_eq!(got, want, "outbox rows, oldest first");
    for pair in rows.windows(2) {
        assert!(pair[0].id < pair[1].id, "outbox ids increase: {rows:?}");
    }
    for row in &rows {
        assert_eq!(
            row.payload["event_id"],
            format!("test-store:{}", row.id).as_str()
        );
        assert_eq!(row.payload["event_type"], row.event_type.as_str());
        assert_eq!(row.payload["order_id"], row.order_id);
        assert_eq!(row.payload["source"], "test-store");
    }
}

#[test]
fn status_changes_need_an_admin() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    let body = json!({"status": "confirmed"});
    let as_owner = vec![("X-User-Id".to_string(), "alice".to_string())];
    let as_customer_role = vec![
        ("X-User-Id".to_string(), "alice".to_string()),
        ("X-User-Role".to_string(), "customer".to_string()),
    ];
    let as_admin_lookalike = vec![
        ("X-User-Id".to_string(), "alice".to_string()),
        ("X-User-Role".to_string(), "administrator".to_string()),
    ];

    for headers in [as_owner, as_customer_role, as_admin_lookalike] {
        let response = app.set_status_with(&headers, id, &body);
        assert_eq!(response.status, 403, "{headers:?}: {response:?}");
        response.assert_error(403, "forbidden");
    }
    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
    assert_eq!(app.count_outbox(), 1);
}

#[test]
fn the_admin_bearer_token_grants_admin() {
    let app = TestApp::builder()
        .env("ADMIN_TOKEN", "s3cret-admin")
        .spawn();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    let headers = vec![
        ("X-User-Id".to_string(), "ops".to_string()),
        (
            "Authorization".to_string(),
            "Bearer s3cret-admin".to_string(),
        ),
    ];

    let response = app.set_status_with(&headers, id, &json!({"status": "confirmed"}));

    response.assert_status(200);
    assert_eq!(response.json()["status"], "confirmed");
}

#[test]
fn a_wrong_bearer_token_answers_403() {
    let app = TestApp::builder()
        .env("ADMIN_TOKEN", "s3cret-admin")
        .spawn();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    for authorization in [
        "Bearer s3cret-admi",
        "Bearer s3cret-admin2",
        "Bearer ",
        "Basic s3cret-admin",
        "s3cret-admin",
    ] {
        let headers = vec![
            ("X-User-Id".to_string(), "ops".to_string()),
            ("Authorization".to_string(), authorization.to_string()),
        ];

        let response = app.set_status_with(&headers, id, &json!({"status": "confirmed"}));

        assert_eq!(
            response.status, 403,
            "Authorization {authorization:?}: {response:?}"
        );
        response.assert_error(403, "forbidden");
    }
    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
}

#[test]
fn a_bearer_token_grants_nothing_when_no_admin_token_is_set() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    let headers = vec![
        ("X-User-Id".to_string(), "ops".to_string()),
        ("Authorization".to_string(), "Bearer ".to_string()),
    ];

    app.set_status_with(&headers, id, &json!({"status": "confirmed"}))
        .assert_error(403, "forbidden");
}

#[test]
fn an_invalid_status_answers_400_naming_the_field() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    let admin = app.admin_headers();
    for body in [
        json!({"status": "lost"}),
        json!({}),
        json!({"status": 3}),
        json!({"status": null}),
        json!({"status": ""}),
    ] {
        let response = app.set_status_with(&admin, id, &body);
        assert_eq!(response.status, 400, "{body}: {response:?}");
        response.assert_validation_failed("status");
    }
    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
    assert_eq!(app.count_outbox(), 1);
}

#[test]
fn a_malformed_status_body_answers_400_invalid_json() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    let mut headers: Vec<(&str, &str)> = vec![
        ("X-User-Id", ADMIN_USER_ID),
        ("X-User-Role", "admin"),
        ("Content-Type", "application/json"),
    ];

    let response = app.request(
        "PATCH",
        &format!("/api/orders/{id}/status"),
        &headers,
        Some(b"{\"status\": "),
    );
    response.assert_error(400, "invalid_json");

    headers.pop();
    let no_body = app.request("PATCH", &format!("/api/orders/{id}/status"), &headers, None);
    assert_eq!(
        no_body.status, 400,
        "a status change without a body: {no_body:?}"
    );
    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
}

#[test]
fn setting_the_status_of_a_missing_order_answers_404() {
    let app = spawn_app();

    app.set_status_as_admin(4242, "confirmed")
        .assert_error(404, "not_found");

    assert_eq!(app.count_outbox(), 0);
}

/// On PostgreSQL the changes of an order take a lock keyed by its id, among the keys of
/// the service's own locks (src/store/postgres/mod.rs): the relay holds one of them for
/// as long as it runs. An id from the path that is one of those keys is a missing order
/// like any other, answered at once, and holds up nothing.
#[test]
fn an_order_id_equal_to_one_of_the_services_own_lock_keys_is_a_missing_order() {
    if !require_postgres() {
        return;
    }
    let app = TestApp::builder().postgres_only().spawn();
    assert!(
        wait_until(Duration::from_secs(10), || {
            metric(&app.metrics().body, "order_service_relay_active") == Some(1.0)
        }),
        "the relay leads, holding its lock"
    );
    let relay_lock = 0x6f72_6465_7273_0002_i64;
    for id in [relay_lock - 1, relay_lock, relay_lock + 1] {
        let started = Instant::now();
        app.cancel(&ALICE, id).assert_error(404, "not_found");
        app.set_status_as_admin(id, "confirmed")
            .assert_error(404, "not_found");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "order {id} answered at once, not after {:?}",
            started.elapsed()
        );
    }

    // Every writing session is free: changes go through, with their events.
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    app.cancel(&ALICE, id).assert_status(200);
    app.set_status_as_admin(app.place_order_id(&ALICE, MOUSE, 1), "confirmed")
        .assert_status(200);
    assert_eq!(app.count_outbox(), 4);
}
