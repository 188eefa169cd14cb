//! The product service as the order service sees it: unknown products, stock, failures,
//! timeouts, wrapped answers, copied names and prices, the offline cache and `file:` catalogs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

#[test]
fn an_unknown_product_answers_422_with_its_id_and_writes_nothing() {
    let app = spawn_app();

    let response = app.create_order(&ALICE, &items(&[(LAPTOP, 1), (UNKNOWN_PRODUCT, 1)]));

    let body = response.assert_error(422, "unknown_product");
    assert_eq!(body["details"]["product_ids"], json!([UNKNOWN_PRODUCT]));
    assert_eq!(app.counts().orders, 0);
    assert_eq!(app.counts().outbox, 0);
    assert_eq!(app.count_items(), 0);
}

#[test]
fn several_unknown_products_are_all_named() {
    let app = spawn_app();

    let response = app.create_order(&ALICE, &items(&[(998, 1), (LAPTOP, 1), (997, 1)]));

    let body = response.assert_error(422, "unknown_product");
    let mut ids: Vec<i64> = body["details"]["product_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [997, 998]);
}

#[test]
fn low_stock_answers_409_with_requested_and_available() {
    let app = spawn_app();

    let response = app.create_order(&ALICE, &items(&[(LAPTOP, 1), (MONITOR, 4)]));

    let body = response.assert_error(409, "insufficient_stock");
    assert_eq!(
        body["details"],
        json!([{"product_id": MONITOR, "requested": 4, "available": 3}])
    );
    assert_eq!(app.counts().orders, 0);
    assert_eq!(app.counts().outbox, 0);
}

#[test]
fn every_short_product_is_listed() {
    let app = spawn_app();
    app.products.set(30, product("Rare", "1.00", 0));

    let response = app.create_order(&ALICE, &items(&[(MONITOR, 5), (MOUSE, 1), (30, 1)]));

    let body = response.assert_error(409, "insufficient_stock");
    let mut details = body["details"].as_array().unwrap().clone();
    details.sort_by_key(|d| d["product_id"].as_i64());
    assert_eq!(
        details,
        vec![
            json!({"product_id": MONITOR, "requested": 5, "available": 3}),
            json!({"product_id": 30, "requested": 1, "available": 0}),
        ]
    );
}

#[test]
fn ordering_exactly_the_stock_is_allowed() {
    let app = spawn_app();

    app.create_order(&ALICE, &items(&[(MONITOR, 3)]))
        .assert_status(201);
}

#[test]
fn a_product_service_500_answers_503_with_retry_after_and_writes_nothing() {
    let app = spawn_app();
    app.products.set(31, Behaviour::Status(500));

    let response = app.create_order(&ALICE, &items(&[(LAPTOP, 1), (31, 1)]));

    response.assert_error(503, "product_service_unavailable");
    let retry_after = response
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {response:?}"));
    assert!(
        retry_after.trim().parse::<u64>().is_ok(),
        "Retry-After in seconds: {retry_after:?}"
    );
    assert_eq!(app.counts().orders, 0);
    assert_eq!(app.counts().outbox, 0);
}

#[test]
fn an_unreachable_product_service_answers_503() {
    let app = TestApp::builder()
        .env("PRODUCT_SERVICE_URL", CLOSED_PORT_URL)
        .spawn();

    let started = Instant::now();
    let response = app.create_order(&ALICE, &items(&[(LAPTOP, 1)]));

    response.assert_error(503, "product_service_unavailable");
    assert!(response.header("retry-after").is_some(), "{response:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a refused connection fails fast: {:?}",
        started.elapsed()
    );
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn a_slow_product_service_answers_503_within_the_timeout() {
    let app = TestApp::builder()
        .env("PRODUCT_TIMEOUT_MS", "500")
        .env("PRODUCT_READ_TIMEOUT_MS", "500")
        .spawn();
    app.products.set(
        32,
        Behaviour::Slow(
            Duration::from_secs(10),
            Box::new(product("Late", "1.00", 5)),
        ),
    );

    let started = Instant::now();
    let response = app.create_order(&ALICE, &items(&[(32, 1)]));
    let took = started.elapsed();

    response.assert_error(503, "product_service_unavailable");
    assert!(response.header("retry-after").is_some(), "{response:?}");
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}, the timeout is 500 ms"
    );
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn the_total_timeout_bounds_a_whole_order() {
    let app = TestApp::builder()
        .env("PRODUCT_TIMEOUT_MS", "500")
        .env("PRODUCT_READ_TIMEOUT_MS", "500")
        .spawn();
    for id in 40..45 {
        app.products.set(
            id,
            Behaviour::Slow(
                Duration::from_secs(10),
                Box::new(product("Late", "1.00", 5)),
            ),
        );
    }
    let lines: Vec<(i64, i64)> = (40..45).map(|id| (id, 1)).collect();

    let started = Instant::now();
    let response = app.create_order(&ALICE, &items(&lines));
    let took = started.elapsed();

    response.assert_error(503, "product_service_unavailable");
    assert!(
        took < Duration::from_secs(5),
        "five slow products answered after {took:?}"
    );
}

#[test]
fn a_product_answer_wrapped_in_product_works() {
    let app = spawn_app();
    app.products.set(
        33,
        Behaviour::Wrapped("product", Box::new(product("Wrapped Lamp", "45.50", 7))),
    );

    let response = app.create_order(&ALICE, &items(&[(33, 2)]));

    response.assert_status(201);
    let line = line_for(&response.json(), 33);
    assert_eq!(line["product_name"], "Wrapped Lamp");
    assert_eq!(
        raw_numbers(&response.body, "total"),
        ["91.00"],
        "{}",
        response.body
    );
}

#[test]
fn a_product_answer_wrapped_in_data_works() {
    let app = spawn_app();
    app.products.set(
        34,
        Behaviour::Wrapped("data", Box::new(product("Data Desk", "120.00", 2))),
    );

    let response = app.create_order(&ALICE, &items(&[(34, 2)]));

    response.assert_status(201);
    assert_eq!(line_for(&response.json(), 34)["product_name"], "Data Desk");
    assert_eq!(
        raw_numbers(&response.body, "total"),
        ["240.00"],
        "{}",
        response.body
    );

    // Stock is checked in wrapped answers too.
    app.create_order(&ALICE, &items(&[(34, 3)]))
        .assert_error(409, "insufficient_stock");
}

#[test]
fn name_and_price_are_copied_into_the_order() {
    let app = spawn_app();
    app.products.set(35, product("Kettle", "30.00", 10));
    let id = app.place_order_id(&ALICE, 35, 2);

    app.products.set(35, product("Kettle Deluxe", "45.00", 10));

    let old = app.get_order(&ALICE, id).json();
    let old_line = line_for(&old, 35);
    assert_eq!(
        old_line["product_name"], "Kettle",
        "later name changes do not touch the order"
    );
    assert_eq!(
        old_line["price"].as_f64(),
        Some(30.0),
        "later price changes do not touch the order"
    );
    assert_eq!(old["total"].as_f64(), Some(60.0));
    let new = app.place_order(&ALICE, &[(35, 2)]);
    assert_eq!(line_for(&new, 35)["product_name"], "Kettle Deluxe");
    assert_eq!(new["total"].as_f64(), Some(90.0));
}

#[test]
fn names_with_quotes_and_unicode_survive() {
    let app = spawn_app();
    app.products.set(
        36,
        product("Caf\u{e9} \"Deluxe\" \u{2615} \\ <b>", "4.20", 10),
    );

    let order = app.place_order(&ALICE, &[(36, 1)]);

    assert_eq!(
        line_for(&order, 36)["product_name"],
        "Caf\u{e9} \"Deluxe\" \u{2615} \\ <b>"
    );
}

#[test]
fn each_product_is_asked_for_once_per_order() {
    let app = spawn_app();

    app.place_order(&ALICE, &[(LAPTOP, 1), (MOUSE, 1), (LAPTOP, 2)]);

    assert_eq!(
        app.products.calls_for(LAPTOP),
        1,
        "a merged line is one lookup"
    );
    assert_eq!(app.products.calls_for(MOUSE), 1);
}

#[test]
fn the_offline_policy_serves_a_cached_product_while_the_product_service_fails() {
    let app = TestApp::builder()
        .env("PRODUCT_CACHE_MAX_AGE", "60")
        .spawn();
    app.place_order(&ALICE, &[(MONITOR, 1)]);

    app.products.set(MONITOR, Behaviour::Status(500));
    let calls_before = app.products.calls_for(MONITOR);
    let response = app.create_order(&ALICE, &items(&[(MONITOR, 2)]));

    response.assert_status(201);
    assert!(
        app.products.calls_for(MONITOR) > calls_before,
        "the service is asked first, the cache is the fallback"
    );
    let line = line_for(&response.json(), MONITOR);
    assert_eq!(line["product_name"], "Monitor");
    assert_eq!(line["price"].as_f64(), Some(249.5));
    // Checked against the cached stock (3) minus this store's sales since it was fetched
    // (1 online, then 2 offline): the stock ledger of the offline policy (issue 12).
    let short = app.create_order(&ALICE, &items(&[(MONITOR, 4)]));
    let body = short.assert_error(409, "insufficient_stock");
    assert_eq!(
        body["details"],
        json!([{"product_id": MONITOR, "requested": 4, "available": 0}])
    );
    // A product never seen has no cached answer.
    app.products.set(37, Behaviour::Status(500));
    app.create_order(&ALICE, &items(&[(37, 1)]))
        .assert_error(503, "product_service_unavailable");
}

#[test]
fn the_offline_policy_serves_the_cache_while_the_product_service_is_unreachable() {
    let products = ProductStandIn::with_default_catalog();
    let mut app = TestApp::builder()
        .env("PRODUCT_CACHE_MAX_AGE", "60")
        .products(products)
        .spawn();
    app.place_order(&ALICE, &[(MOUSE, 1)]);

    // The same database, with the product service now at a closed port.
    app.restart_with_env("PRODUCT_SERVICE_URL", CLOSED_PORT_URL);

    let response = app.create_order(&ALICE, &items(&[(MOUSE, 2)]));

    response.assert_status(201);
    assert_eq!(line_for(&response.json(), MOUSE)["product_name"], "Mouse");
}

#[test]
fn without_the_offline_policy_a_failing_product_service_answers_503_even_for_cached_products() {
    let app = TestApp::builder().env("PRODUCT_CACHE_MAX_AGE", "0").spawn();
    app.place_order(&ALICE, &[(MONITOR, 1)]);

    app.products.set(MONITOR, Behaviour::Status(500));
    let response = app.create_order(&ALICE, &items(&[(MONITOR, 1)]));

    response.assert_error(503, "product_service_unavailable");
    assert_eq!(app.count_orders(), 1);
}

#[test]
fn a_cached_answer_older_than_the_max_age_is_not_used() {
    let app = TestApp::builder().env("PRODUCT_CACHE_MAX_AGE", "1").spawn();
    app.place_order(&ALICE, &[(MONITOR, 1)]);
    app.products.set(MONITOR, Behaviour::Status(500));

    std::thread::sleep(Duration::from_millis(2100));
    let response = app.create_order(&ALICE, &items(&[(MONITOR, 1)]));

    response.assert_error(503, "product_service_unavailable");
}

#[test]
fn a_404_is_never_served_from_the_cache() {
    let app = TestApp::builder()
        .env("PRODUCT_CACHE_MAX_AGE", "60")
        .spawn();
    app.place_order(&ALICE, &[(MONITOR, 1)]);

    app.products.set(MONITOR, Behaviour::NotFound);
    let response = app.create_order(&ALICE, &items(&[(MONITOR, 1)]));

    response.assert_error(422, "unknown_product");
}

#[test]
fn a_redirect_is_not_followed_and_answers_503_like_an_outage() {
    let elsewhere = ProductStandIn::start();
    elsewhere.set(37, product("Not the real thing", "0.01", 1_000_000));
    let app = TestApp::builder().spawn();
    let there = format!("{}/api/products/37", elsewhere.url());
    app.products.set(37, Behaviour::Redirect(there));

    let response = app.create_order(&ALICE, &items(&[(37, 1)]));

    response.assert_error(503, "product_service_unavailable");
    assert_eq!(
        (app.count_orders(), elsewhere.calls()),
        (0, 0),
        "nothing written, and the other host is never asked"
    );
}

#[test]
fn a_redirect_to_a_json_404_elsewhere_leaves_the_product_known_and_sold_offline() {
    let app = TestApp::builder()
        .env("PRODUCT_CACHE_MAX_AGE", "60")
        .spawn();
    app.place_order(&ALICE, &[(MONITOR, 1)]);
    // An empty catalog elsewhere: its 404 is a JSON object, like the product service's.
    let elsewhere = ProductStandIn::start();
    let there = format!("{}/api/products/{MONITOR}", elsewhere.url());
    app.products.set(MONITOR, Behaviour::Redirect(there));

    let response = app.create_order(&ALICE, &items(&[(MONITOR, 1)]));

    response.assert_status(201);
    assert_eq!(
        response.json()["stock_verified"],
        false,
        "sold from the snapshot row, which stays"
    );
}

#[test]
fn a_file_catalog_serves_products_without_a_product_service() {
    let dir = temp_dir();
    let catalog = write_file(
        &dir,
        "catalog.json",
        r#"[{"id":1,"name":"File Laptop","price":999.99,"stock":2},{"id":2,"name":"File Mouse","price":9.5,"stock":100}]"#,
    );
    let app = TestApp::builder()
        .env(
            "PRODUCT_SERVICE_URL",
            &format!("file:{}", catalog.display()),
        )
        .spawn();

    let response = app.create_order(&ALICE, &items(&[(1, 2), (2, 1)]));

    response.assert_status(201);
    let order = response.json();
    assert_eq!(line_for(&order, 1)["product_name"], "File Laptop");
    assert_eq!(
        raw_numbers(&response.body, "total"),
        ["2009.48"],
        "{}",
        response.body
    );
    app.create_order(&ALICE, &items(&[(1, 3)]))
        .assert_error(409, "insufficient_stock");
    app.create_order(&ALICE, &items(&[(3, 1)]))
        .assert_error(422, "unknown_product");
    assert_eq!(app.products.calls(), 0, "the stand-in is not asked");
}

/// A product a `file:` catalog lists twice is its last entry, online as offline, where
/// the snapshot takes the last one.
#[test]
fn a_product_a_file_catalog_lists_twice_is_its_last_entry() {
    let dir = temp_dir();
    let catalog = write_file(
        &dir,
        "catalog.json",
        r#"[{"id":1,"name":"Old Laptop","price":"900.00","stock":5},{"id":1,"name":"Laptop","price":"999.99","stock":5}]"#,
    );
    let app = TestApp::builder()
        .env(
            "PRODUCT_SERVICE_URL",
            &format!("file:{}", catalog.display()),
        )
        .spawn();
    let online = app.place_order(&ALICE, &[(1, 1)]);
    assert_eq!(line_for(&online, 1)["product_name"], "Laptop", "{online}");
    let snapshot: String = app.query_one(
        "SELECT name FROM product_cache WHERE product_id = ?1",
        &[1.into()],
    );
    assert_eq!(snapshot, "Laptop");
}

#[test]
fn a_refused_order_still_refreshes_the_cached_stock() {
    let app = TestApp::builder()
        .env("PRODUCT_CACHE_MAX_AGE", "60")
        .spawn();
    app.place_order(&ALICE, &[(MONITOR, 1)]);
    // The product service now says stock 1: the order is refused, but the answer is kept.
    app.products.set(MONITOR, product("Monitor", "249.50", 1));
    app.create_order(&ALICE, &items(&[(MONITOR, 2)]))
        .assert_error(409, "insufficient_stock");

    app.products.set(MONITOR, Behaviour::Status(500));
    let offline = app.create_order(&ALICE, &items(&[(MONITOR, 2)]));

    let body = offline.assert_error(409, "insufficient_stock");
    assert_eq!(
        body["details"],
        json!([{"product_id": MONITOR, "requested": 2, "available": 1}]),
        "offline pricing uses the latest answer, not the one cached by the earlier order"
    );
}

#[test]
fn a_product_the_service_no_longer_knows_leaves_the_cache() {
    let app = TestApp::builder()
        .env("PRODUCT_CACHE_MAX_AGE", "60")
        .spawn();
    app.place_order(&ALICE, &[(MONITOR, 1)]);
    app.products.set(MONITOR, Behaviour::NotFound);
    app.create_order(&ALICE, &items(&[(MONITOR, 1)]))
        .assert_error(422, "unknown_product");

    app.products.set(MONITOR, Behaviour::Status(500));
    app.create_order(&ALICE, &items(&[(MONITOR, 1)]))
        .assert_error(503, "product_service_unavailable");
}

#[test]
fn a_refused_order_keeps_one_product_s_new_answer_and_forgets_another_found_gone() {
    let app = TestApp::builder()
        .env("PRODUCT_CACHE_MAX_AGE", "60")
        .spawn();
    app.place_order(&ALICE, &[(MOUSE, 1), (MONITOR, 1)]);
    // The mouse is gone (its row is forgotten), the monitor's answer changed (its row is
    // written again): both in one transaction, in product order.
    app.products.set(MOUSE, Behaviour::NotFound);
    app.products.set(MONITOR, product("Monitor", "249.50", 1));
    app.create_order(&ALICE, &items(&[(MOUSE, 1), (MONITOR, 1)]))
        .assert_error(422, "unknown_product");

    app.products.set(MOUSE, Behaviour::Status(500));
    app.products.set(MONITOR, Behaviour::Status(500));
    app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_error(503, "product_service_unavailable");
    // The row kept is the new answer's (1 in stock), not the first order's (3, one sold).
    let body = app
        .create_order(&ALICE, &items(&[(MONITOR, 2)]))
        .assert_error(409, "insufficient_stock");
    assert_eq!(body["details"][0]["available"], 1, "{body}");
    let offline = app.create_order(&ALICE, &items(&[(MONITOR, 1)]));
    offline.assert_status(201);
    assert_eq!(offline.json()["stock_verified"], false, "{}", offline.body);
}

#[test]
fn many_slow_products_share_one_deadline() {
    let app = TestApp::builder()
        .env("PRODUCT_TIMEOUT_MS", "800")
        .env("PRODUCT_READ_TIMEOUT_MS", "700")
        .spawn();
    // 40 products on at most 8 lookup threads: 5 in a row on each, 600 ms apiece.
    for id in 100..140 {
        app.products.set(
            id,
            Behaviour::Slow(
                Duration::from_millis(600),
                Box::new(product("Slow", "1.00", 5)),
            ),
        );
    }
    let lines: Vec<(i64, i64)> = (100..140).map(|id| (id, 1)).collect();

    let started = Instant::now();
    let response = app.create_order(&ALICE, &items(&lines));
    let took = started.elapsed();

    response.assert_error(503, "product_service_unavailable");
    assert!(
        took < Duration::from_millis(2_000),
        "one order's lookups took {took:?}, past its 800 ms deadline"
    );
    assert_eq!(app.counts().orders, 0);
}

#[test]
fn the_lookups_of_one_order_run_side_by_side() {
    let app = TestApp::builder()
        .env("PRODUCT_TIMEOUT_MS", "5000")
        .env("PRODUCT_READ_TIMEOUT_MS", "4000")
        .spawn();
    // Eight products of 1 s each: 8 s one after the other (past the 5 s for the order),
    // about 1 s side by side (the order's worker and seven lookup helpers).
    for id in 200..208 {
        app.products.set(
            id,
            Behaviour::Slow(Duration::from_secs(1), Box::new(product("Slow", "1.00", 5))),
        );
    }
    let lines: Vec<(i64, i64)> = (200..208).map(|id| (id, 1)).collect();

    let started = Instant::now();
    let response = app.create_order(&ALICE, &items(&lines));
    let took = started.elapsed();

    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(response.json()["items"].as_array().map(Vec::len), Some(8));
    assert!(
        took < Duration::from_secs(4),
        "eight 1 s lookups took {took:?}: not side by side"
    );
    for id in 200..208 {
        assert_eq!(app.products.calls_for(id), 1, "product {id}");
    }
}

#[test]
fn lookups_keep_their_connections_to_the_product_service() {
    let app = spawn_app();
    // Four orders of eight lines at a time, twenty times over, each order with products of
    // its own (concurrent lookups of one product share a request): up to twenty lookups
    // at once, the four orders' workers and the sixteen lookup helpers.
    let bodies: Vec<Value> = (0..4)
        .map(|order| {
            let ids = (0..8).map(|line| 300 + 8 * order + line);
            ids.clone()
                .for_each(|id| app.products.set(id, product("Part", "1.00", 1_000_000)));
            items(&ids.map(|id| (id, 1)).collect::<Vec<_>>())
        })
        .collect();

    for _ in 0..20 {
        std::thread::scope(|s| {
            for body in &bodies {
                s.spawn(|| {
                    app.create_order(&ALICE, body).assert_status(201);
                });
            }
        });
    }

    assert_eq!(app.products.calls(), 640);
    let connections = app.products.connections();
    assert!(
        (1..=24).contains(&connections),
        "640 lookups, at most 20 at once, came on {connections} connections: \
         kept-alive connections were closed and opened anew"
    );
}

#[test]
fn a_kept_connection_the_product_service_closed_is_not_used_again() {
    // A product service that answers one request on each connection, then closes it
    // without saying so (no `Connection: close`), as one whose idle timeout is short.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (closed, closes) = std::sync::mpsc::channel::<bool>();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && matches!(stream.read(&mut byte), Ok(1)) {
                head.push(byte[0]);
            }
            let lookup = head.starts_with(b"GET /api/products/1 ");
            let (status, body) = if lookup {
                (
                    "200 OK",
                    r#"{"id":1,"name":"Laptop","price":1299.99,"stock":50}"#,
                )
            } else {
                ("404 Not Found", r#"{"error":"not found"}"#)
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            drop(stream);
            let _ = closed.send(lookup);
        }
    });
    let app = TestApp::builder().env("PRODUCT_SERVICE_URL", &url).spawn();
    let lookup_closed = || loop {
        match closes.recv_timeout(Duration::from_secs(10)) {
            Ok(true) => return,
            Ok(false) => continue,
            Err(e) => panic!("no lookup came: {e}"),
        }
    };

    for _ in 0..3 {
        app.create_order(&ALICE, &items(&[(LAPTOP, 1)]))
            .assert_status(201);
        // Its lookup reached the product service, which has closed that connection
        // before the next order comes.
        lookup_closed();
    }
}
