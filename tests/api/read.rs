//! `GET /api/orders/:id` and `GET /api/orders`: ownership, admin reads, pagination.

use serde_json::{json, Value};

use crate::support::*;

#[test]
fn get_order_answers_the_owners_order() {
    let app = spawn_app();
    let created = app.create_order(&ALICE, &items(&[(LAPTOP, 1), (MOUSE, 2)]));
    created.assert_status(201);
    let id = created.json()["id"].as_i64().unwrap();

    let response = app.get_order(&ALICE, id);

    response.assert_status(200);
    assert_eq!(
        response.json(),
        created.json(),
        "GET answers the order as created"
    );
    assert_order_shape(&response.json());
}

#[test]
fn get_a_missing_order_answers_404() {
    let app = spawn_app();

    app.get_order(&ALICE, 12345).assert_error(404, "not_found");
}

#[test]
fn another_users_order_answers_404_like_a_missing_one() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    let foreign = app.get_order(&BOB, id);
    let missing = app.get_order(&BOB, id + 1000);

    foreign.assert_error(404, "not_found");
    missing.assert_error(404, "not_found");
    assert_eq!(foreign.json()["code"], missing.json()["code"]);
    assert!(
        !foreign.body.contains("alice"),
        "nothing of the order leaks: {foreign:?}"
    );
}

#[test]
fn an_admin_may_read_any_order_by_role() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    let response = app.get_order_as_admin(id);

    response.assert_status(200);
    assert_eq!(response.json()["user_id"], "alice");
}

#[test]
fn an_admin_may_read_any_order_by_bearer_token() {
    let app = TestApp::builder()
        .env("ADMIN_TOKEN", "s3cret-admin")
        .spawn();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    let response = app.request(
        "GET",
        &format!("/api/orders/{id}"),
        &[
            ("X-User-Id", "ops"),
            ("Authorization", "Bearer s3cret-admin"),
        ],
        None,
    );

    response.assert_status(200);
    assert_eq!(response.json()["user_id"], "alice");
}

#[test]
fn a_wrong_bearer_token_does_not_read_another_users_order() {
    let app = TestApp::builder()
        .env("ADMIN_TOKEN", "s3cret-admin")
        .spawn();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    let response = app.request(
        "GET",
        &format!("/api/orders/{id}"),
        &[("X-User-Id", "mallory"), ("Authorization", "Bearer guess")],
        None,
    );

    assert!(
        response.status == 403 || response.status == 404,
        "a wrong token reads nothing: {response:?}"
    );
    assert!(!response.body.contains("alice"), "{response:?}");
}

#[test]
fn get_order_without_user_id_answers_401() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    app.request("GET", &format!("/api/orders/{id}"), &[], None)
        .assert_error(401, "unauthorized");
    app.request("GET", "/api/orders", &[], None)
        .assert_error(401, "unauthorized");
}

#[test]
fn list_of_a_user_without_orders_is_empty() {
    let app = spawn_app();

    let response = app.list_orders(&ALICE, "");

    response.assert_status(200);
    let body = response.json();
    assert_eq!(body["orders"], serde_json::json!([]));
    assert_eq!(body["page"], 1);
    assert_eq!(body["per_page"], 10);
    assert_eq!(body["total"], 0);
    assert_eq!(body["pages"], 0, "pages = ceil(total / per_page)");
}

#[test]
fn list_shows_only_the_callers_orders_newest_first() {
    let app = spawn_app();
    let a1 = app.place_order(&ALICE, &[(LAPTOP, 1)]);
    let _b1 = app.place_order(&BOB, &[(MOUSE, 1)]);
    let a2 = app.place_order(&ALICE, &[(MOUSE, 2)]);
    let a3 = app.place_order(&ALICE, &[(CABLE, 3)]);

    let response = app.list_orders(&ALICE, "");

    response.assert_status(200);
    let body = response.json();
    let orders = body["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 3, "{body}");
    assert!(orders.iter().all(|o| o["user_id"] == "alice"), "{body}");
    assert_eq!(
        *orders,
        vec![a3, a2, a1],
        "newest first, as full order objects"
    );
    assert_eq!(body["total"], 3);
    assert_eq!(body["pages"], 1);
}

#[test]
fn list_defaults_to_page_1_of_10() {
    let app = spawn_app();
    for _ in 0..12 {
        app.place_order_id(&ALICE, MOUSE, 1);
    }

    let body = app.list_orders(&ALICE, "").json();

    assert_eq!(body["page"], 1);
    assert_eq!(body["per_page"], 10);
    assert_eq!(body["total"], 12);
    assert_eq!(body["pages"], 2);
    assert_eq!(body["orders"].as_array().unwrap().len(), 10);
}

#[test]
fn pages_split_the_list_newest_first_with_total_and_pages() {
    let app = spawn_app();
    let ids: Vec<i64> = (0..5)
        .map(|_| app.place_order_id(&ALICE, MOUSE, 1))
        .collect();
    let newest_first: Vec<i64> = ids.iter().rev().copied().collect();

    let page = |n: i64| {
        let response = app.list_orders(&ALICE, &format!("page={n}&per_page=2"));
        response.assert_status(200);
        response.json()
    };
    let ids_of = |body: &Value| -> Vec<i64> {
        body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_i64().unwrap())
            .collect()
    };

    let (p1, p2, p3, p4) = (page(1), page(2), page(3), page(4));
    for (n, body) in [(1, &p1), (2, &p2), (3, &p3), (4, &p4)] {
        assert_eq!(body["page"], n, "{body}");
        assert_eq!(body["per_page"], 2, "{body}");
        assert_eq!(body["total"], 5, "{body}");
        assert_eq!(body["pages"], 3, "{body}");
    }
    assert_eq!(ids_of(&p1), newest_first[0..2]);
    assert_eq!(ids_of(&p2), newest_first[2..4]);
    assert_eq!(
        ids_of(&p3),
        newest_first[4..5],
        "the last page holds the rest"
    );
    assert_eq!(
        ids_of(&p4),
        Vec::<i64>::new(),
        "past the last page is empty, not an error"
    );
}

#[test]
fn next_cursors_walk_the_whole_list_as_the_pages_do() {
    let app = spawn_app();
    let ids: Vec<i64> = (0..7)
        .map(|_| app.place_order_id(&ALICE, MOUSE, 1))
        .collect();
    app.place_order_id(&BOB, MOUSE, 1);
    let newest_first: Vec<i64> = ids.iter().rev().copied().collect();

    let mut walked = Vec::new();
    let mut query = "per_page=3".to_string();
    let mut pages = 0;
    loop {
        let body = app.list_orders(&ALICE, &query).json();
        pages += 1;
        assert_eq!(body["total"], 7, "{body}");
        walked.extend(
            body["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_i64().unwrap()),
        );
        match body["next"].as_str() {
            Some(next) => query = format!("per_page=3&after={next}"),
            None => {
                assert!(pages == 1 || body["page"].is_null(), "{body}");
                break;
            }
        }
        assert!(pages < 10, "the cursors do not end");
    }

    assert_eq!(walked, newest_first, "every order once, newest first");
    assert_eq!(pages, 3);
    let last = app.list_orders(&ALICE, "page=3&per_page=3").json();
    assert!(last["next"].is_null(), "the last page has no next: {last}");
    let first = app.list_orders(&ALICE, "page=1&per_page=3").json();
    assert!(first["next"].is_string(), "{first}");
}

#[test]
fn per_page_100_is_accepted() {
    let app = spawn_app();
    app.place_order_id(&ALICE, MOUSE, 1);

    let response = app.list_orders(&ALICE, "per_page=100");

    response.assert_status(200);
    assert_eq!(response.json()["per_page"], 100);
    assert_eq!(response.json()["pages"], 1);
}

#[test]
fn per_page_1_is_accepted() {
    let app = spawn_app();
    app.place_order_id(&ALICE, MOUSE, 1);
    app.place_order_id(&ALICE, MOUSE, 1);

    let body = app.list_orders(&ALICE, "per_page=1").json();

    assert_eq!(body["pages"], 2);
    assert_eq!(body["orders"].as_array().unwrap().len(), 1);
}

#[test]
fn bad_paging_answers_400_naming_the_parameter() {
    let app = spawn_app();
    let cases = [
        ("per_page=101", "per_page"),
        ("per_page=0", "per_page"),
        ("per_page=-1", "per_page"),
        ("per_page=ten", "per_page"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page=99999999999999999999999", "page"),
        ("after=", "after"),
        ("after=abc", "after"),
        ("after=1.0", "after"),
        ("after=1.2.3", "after"),
        // Ambiguous: refused, not guessed.
        ("page=1&page=2", "page"),
        ("per_page=5&per_page=50", "per_page"),
        // Decoded as a form, as a proxy may read it.
        ("per_page=5&per%5Fpage=50", "per_page"),
        ("page=%zz", "page"),
        ("after=1.1&after=1.1", "after"),
        ("page=2&after=1.1", "page"),
    ];
    let mut failures = Vec::new();
    for (query, field) in cases {
        let response = app.list_orders(&ALICE, query);
        let ok = response.status == 400
            && serde_json::from_str::<Value>(&response.body)
                .is_ok_and(|b| b["code"] == "validation_failed" && b["details"]["field"] == field);
        if !ok {
            failures.push(format!(
                "?{query}: expected 400 validation_failed naming {field:?}, got {response:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A query is decoded as a form's: `%31` is `1`.
#[test]
fn escaped_query_values_are_read_decoded() {
    let app = spawn_app();
    app.place_order(&ALICE, &[(MOUSE, 1)]);
    app.place_order(&ALICE, &[(MOUSE, 1)]);

    let page = app.list_orders(&ALICE, "page=%32&per%5Fpage=%31").json();

    assert_eq!(
        (page["page"].clone(), page["per_page"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(page["orders"].as_array().map(Vec::len), Some(1), "{page}");
}

#[test]
fn unknown_query_parameters_are_ignored() {
    let app = spawn_app();

    let response = app.list_orders(&ALICE, "page=1&sort=price&utm_source=x");

    response.assert_status(200);
}
