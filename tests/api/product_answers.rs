//! What the product service's answers are taken to mean: which 404 says "no such
//! product", prices read from their exact text, and a cache that never goes back in time
//! nor rewrites an unchanged answer more than once a second.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

fn proxy_page(content_type: &'static str, body: &str) -> Behaviour {
    Behaviour::Answer {
        status: 404,
        content_type,
        body: body.to_string(),
    }
}

#[test]
fn a_404_that_is_not_the_product_service_s_json_is_an_outage() {
    let app = spawn_app();
    for page in [
        proxy_page(
            "text/html",
            "<html><body><h1>404 Not Found</h1>default backend</body></html>",
        ),
        proxy_page("text/plain; charset=utf-8", "404 page not found"),
        proxy_page("application/json", "<html>not json</html>"),
    ] {
        app.products.set(MOUSE, page.clone());
        let response = app.create_order(&ALICE, &items(&[(MOUSE, 1)]));
        response.assert_error(503, "product_service_unavailable");
        assert!(response.header("Retry-After").is_some(), "{page:?}");
    }
    assert_eq!(app.count_orders(), 0);

    // A JSON 404, the product service's own, still means an unknown product.
    app.products.set(MOUSE, Behaviour::NotFound);
    let body = app
        .create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_error(422, "unknown_product");
    assert_eq!(body["details"]["product_ids"], json!([MOUSE]));
}

#[test]
fn a_404_with_a_json_body_is_an_unknown_product_whatever_its_content_type() {
    let app = spawn_app();
    for (id, page) in [
        (
            30,
            proxy_page("text/plain", r#"{"error":"Product not found"}"#),
        ),
        (31, proxy_page("application/json", r#""Product not found""#)),
    ] {
        app.products.set(id, page);
        let body = app
            .create_order(&ALICE, &items(&[(id, 1)]))
            .assert_error(422, "unknown_product");
        assert_eq!(body["details"]["product_ids"], json!([id]));
    }
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn a_product_answer_with_a_data_field_of_its_own_is_the_product() {
    let app = spawn_app();
    app.products.set(
        33,
        Behaviour::Answer {
            status: 200,
            content_type: "application/json",
            body: r#"{"id":33,"name":"Mug","price":4.50,"stock":10,"data":{"color":"red"},"product":{"sku":"M-1"}}"#
                .into(),
        },
    );

    let response = app.create_order(&ALICE, &items(&[(33, 2)]));

    response.assert_status(201);
    assert_eq!(line_for(&response.json(), 33)["product_name"], "Mug");
    assert_eq!(raw_numbers(&response.body, "total"), ["9.00"]);
}

#[test]
fn a_proxy_404_serves_the_cache_and_keeps_it() {
    let app = TestApp::builder()
        .env("PRODUCT_CACHE_MAX_AGE", "60")
        .spawn();
    app.place_order(&ALICE, &[(MONITOR, 1)]);
    app.products
        .set(MONITOR, proxy_page("text/html", "<h1>404 Not Found</h1>"));

    let response = app.create_order(&ALICE, &items(&[(MONITOR, 1)]));
    response.assert_status(201);
    assert_eq!(
        line_for(&response.json(), MONITOR)["price"].as_f64(),
        Some(249.5)
    );
    let cached: i64 = app.query_one(
        "SELECT COUNT(*) FROM product_cache WHERE product_id = ?1",
        &[MONITOR.into()],
    );
    assert_eq!(cached, 1, "the cached answer is kept");
}

#[test]
fn a_price_with_more_than_two_decimals_is_refused_whatever_a_float_makes_of_it() {
    let app = spawn_app();
    // As an f64 this is exactly 20.0.
    app.products
        .set(MOUSE, product("Mouse", "19.999999999999999", 1000));
    app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_error(503, "product_service_unavailable");
    app.products
        .set(MOUSE, product("Mouse", "20.000000000000001", 1000));
    app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_error(503, "product_service_unavailable");
    assert_eq!(app.count_orders(), 0);

    app.products.set(MOUSE, product("Mouse", "19.90", 1000));
    let order = app.place_order(&ALICE, &[(MOUSE, 1)]);
    assert_eq!(line_for(&order, MOUSE)["price"].as_f64(), Some(19.9));
}

fn cached_price_cents(app: &TestApp, id: i64) -> i64 {
    app.query_one(
        "SELECT price_cents FROM product_cache WHERE product_id = ?1",
        &[id.into()],
    )
}

#[test]
fn a_slow_lookup_does_not_put_back_an_older_price() {
    let app = spawn_app();
    app.products.set(
        MOUSE,
        Behaviour::Slow(
            std::time::Duration::from_millis(1200),
            Box::new(product("Mouse", "10.00", 1000)),
        ),
    );
    std::thread::scope(|s| {
        let slow = s.spawn(|| app.create_order(&ALICE, &items(&[(MOUSE, 1)])));
        // The slow lookup has started; the price changes and a fast lookup sees it.
        std::thread::sleep(std::time::Duration::from_millis(300));
        app.products.set(MOUSE, product("Mouse", "20.00", 1000));
        app.place_order(&BOB, &[(MOUSE, 1)]);
        assert_eq!(cached_price_cents(&app, MOUSE), 2000);
        slow.join().unwrap().assert_status(201);
    });
    assert_eq!(
        cached_price_cents(&app, MOUSE),
        2000,
        "the answer fetched first was written last and replaced the newer one"
    );
}

/// A lookup that started before the product service said it no longer knows a product,
/// and commits after that answer, does not put the product back in the snapshot: once the
/// service is away, the product is not sold from it.
#[test]
fn a_slow_lookup_does_not_bring_back_a_product_answered_unknown() {
    const GONE: i64 = 77;
    let app = spawn_app();
    app.products.set(
        GONE,
        Behaviour::Slow(
            Duration::from_millis(1200),
            Box::new(product("Gone soon", "10.00", 5)),
        ),
    );
    std::thread::scope(|s| {
        let slow = s.spawn(|| app.create_order(&ALICE, &items(&[(GONE, 1)])));
        // The slow lookup has started; the product leaves the catalog, and a lookup sent
        // now says so.
        std::thread::sleep(Duration::from_millis(300));
        app.products.set(GONE, Behaviour::NotFound);
        app.create_order(&BOB, &items(&[(GONE, 1)]))
            .assert_error(422, "unknown_product");
        slow.join().unwrap().assert_status(201);
    });
    app.products.set_down(true);
    let offline = app.create_order(&BOB, &items(&[(GONE, 1)]));
    assert_eq!(
        offline.status, 503,
        "a product the service said it no longer knows was sold offline: {}",
        offline.body
    );
}

fn cached_fetched_at(app: &TestApp, id: i64) -> i64 {
    app.query_one(
        "SELECT fetched_at FROM product_cache WHERE product_id = ?1",
        &[id.into()],
    )
}

#[test]
fn an_unchanged_answer_is_written_to_the_cache_at_most_once_a_second() {
    let app = spawn_app();
    let started = std::time::Instant::now();
    app.place_order(&ALICE, &[(MOUSE, 1)]);
    let first = cached_fetched_at(&app, MOUSE);
    app.place_order(&BOB, &[(MOUSE, 1)]);
    let again = cached_fetched_at(&app, MOUSE);
    if started.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(
            again, first,
            "the same answer was written again within a second"
        );
    }

    // A changed answer is written at once.
    app.products.set(MOUSE, product("Mouse", "21.00", 1000));
    app.place_order(&ALICE, &[(MOUSE, 1)]);
    assert_eq!(cached_price_cents(&app, MOUSE), 2100);
    let changed = cached_fetched_at(&app, MOUSE);
    assert!(changed > again);

    // The same answer a second later is written again: the row lags by a second at most.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    app.place_order(&BOB, &[(MOUSE, 1)]);
    assert!(cached_fetched_at(&app, MOUSE) >= changed + 1_000_000);
}

/// Product `id`'s answer with a description of `len` bytes.
fn padded_answer(id: i64, len: usize) -> Behaviour {
    Behaviour::Answer {
        status: 200,
        content_type: "application/json",
        body: format!(
            r#"{{"id":{id},"name":"Padded","price":19.99,"stock":1000,"description":"{}"}}"#,
            "d".repeat(len)
        ),
    }
}

#[test]
fn an_answer_larger_than_a_connection_buffer_is_read_whole_and_one_over_the_limit_is_an_outage() {
    let app = spawn_app();
    // 60 KiB: several times a kept connection's 16 KiB buffer, within the 64 KiB an
    // answer may have.
    app.products.set(MOUSE, padded_answer(MOUSE, 60 * 1024));
    let order = app.place_order(&ALICE, &[(MOUSE, 2)]);
    assert_eq!(order["items"][0]["product_name"], "Padded");
    assert_eq!(order["total"], json!(39.98));
    assert_eq!(order["stock_verified"], json!(true));

    // A product never seen before, so no snapshot prices it instead.
    app.products.set(CABLE, padded_answer(CABLE, 70 * 1024));
    app.create_order(&ALICE, &items(&[(CABLE, 1)]))
        .assert_error(503, "product_service_unavailable");
    assert_eq!(app.count_orders(), 1);
}

#[test]
fn an_answer_head_over_its_limit_is_an_outage_named_as_such() {
    let app = spawn_app();
    // 4 KiB of headers are taken.
    app.products.set(
        MOUSE,
        Behaviour::Padded(4 * 1024, Box::new(product("Mouse", "19.99", 1000))),
    );
    app.place_order(&ALICE, &[(MOUSE, 1)]);

    // 9 KiB are over the 8 KiB limit: an outage, and the log says why. A product never
    // seen before, so no snapshot prices it instead.
    app.products.set(
        CABLE,
        Behaviour::Padded(9 * 1024, Box::new(product("Cable", "0.10", 1000))),
    );
    app.create_order(&ALICE, &items(&[(CABLE, 1)]))
        .assert_error(503, "product_service_unavailable");
    assert_eq!(app.count_orders(), 1);
    app.wait_for_log(
        "response header is too big",
        Duration::from_secs(5),
        "the log does not name the cause",
    );
}
