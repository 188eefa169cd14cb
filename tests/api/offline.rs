//! Offline sales (issue 12): the catalog snapshot fills from the product service's list,
//! orders are taken from it while the service is down (`stock_verified: false`), the
//! stock ledger keeps them within what the store knew, and `catalog import`/`status`
//! work on a stopped service's database.
//!
//! On the backend `TEST_BACKEND` names, like every API test.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A service on the backend `TEST_BACKEND` names, with a stand-in that serves the list.
struct Store {
    app: TestApp,
}

impl std::ops::Deref for Store {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl std::ops::DerefMut for Store {
    fn deref_mut(&mut self) -> &mut TestApp {
        &mut self.app
    }
}

fn store(env: &[(&str, &str)]) -> Store {
    let products = ProductStandIn::with_default_catalog();
    products.serve_list(None);
    store_with(products, env)
}

fn store_with(products: ProductStandIn, env: &[(&str, &str)]) -> Store {
    let mut builder = TestApp::builder().products(products);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    Store {
        app: builder.spawn(),
    }
}

impl Store {
    fn database_url(&self) -> String {
        self.app.database().url()
    }

    fn ready_json(&self) -> Value {
        self.app.ready().json()
    }

    /// Waits for a complete refresh from `source` holding `products` products.
    fn wait_for_snapshot(&self, source: &str, products: i64) -> Value {
        let mut last = Value::Null;
        let filled = wait_until(Duration::from_secs(10), || {
            last = self.ready_json()["catalog"].clone();
            last["source"] == source && last["products"] == products
        });
        assert!(filled, "the snapshot did not fill from {source}: {last}");
        last
    }

    /// The payload of the order's `order_created` event.
    fn created_event(&self, order_id: i64) -> Value {
        self.app
            .outbox_rows_for(order_id)
            .into_iter()
            .find(|r| r.event_type == "order_created")
            .expect("an order_created event")
            .payload
    }

    /// Runs `order-service <args>` on this service's database.
    fn command(&self, args: &[&str]) -> (bool, String, String) {
        let dir = temp_dir();
        let out = clean_command(dir.path())
            .env("DATABASE_URL", self.database_url())
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .expect("run order-service");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn the_snapshot_fills_from_the_list_on_start() {
    let products = ProductStandIn::with_default_catalog();
    products.serve_list(Some("products"));
    let app = store_with(products, &[]);

    let catalog = app.wait_for_snapshot("list", 5);

    assert_eq!(catalog["fresh_products"], 5, "{catalog}");
    assert!(catalog["refreshed_at"].is_string(), "{catalog}");
    assert_eq!(app.products.calls(), 0, "no single lookup was needed");
    assert!(app.products.list_pages() >= 1);
    let ready = app.ready_json();
    assert_eq!(ready["product_service"]["link"], "up", "{ready}");
    assert_eq!(ready["product_service"]["offline_sales"], "on", "{ready}");
    assert_eq!(
        ready["product_service"]["offline_max_age_seconds"], 86400,
        "the default is 24 h: {ready}"
    );
    let metrics = app.metrics().body;
    assert!(
        metrics.contains("\norder_service_catalog_products 5\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\norder_service_product_service_up 1\n"));
}

#[test]
fn a_list_whose_pages_are_capped_below_per_page_is_read_to_its_end() {
    // 125 products, answered 50 a page where 100 were asked for: a short first page is
    // the service's page size, not the list's end.
    let products = ProductStandIn::with_default_catalog();
    for id in 1001..=1120 {
        products.set(id, product(&format!("Product {id}"), "1.00", 10));
    }
    products.cap_per_page(50);
    products.serve_list(None);
    let app = store_with(products, &[]);

    app.wait_for_snapshot("list", 125);
    assert_eq!(app.products.list_pages(), 3, "pages of 50, 50 and 25");

    app.products.set_down(true);
    let order = app.place_order(&ALICE, &[(1120, 1)]);
    assert_eq!(
        order["stock_verified"], false,
        "sold from the snapshot: {order}"
    );
    assert_eq!(order["items"][0]["product_name"], "Product 1120");
}

#[test]
fn a_list_without_paging_is_read_once_and_taken_whole() {
    // Every page is the first: the second one repeats the first, short one.
    let products = ProductStandIn::with_default_catalog();
    products.ignore_page();
    products.serve_list(None);
    let app = store_with(products, &[]);

    let catalog = app.wait_for_snapshot("list", 5);
    assert!(catalog["refreshed_at"].is_string(), "{catalog}");
    assert_eq!(app.products.list_pages(), 2);
    assert!(!app.stderr().contains("repeats earlier products"));
}

#[test]
fn with_the_service_down_a_product_never_looked_up_is_sold_from_the_snapshot() {
    let app = store(&[]);
    app.wait_for_snapshot("list", 5);
    let online = app.place_order(&BOB, &[(MOUSE, 1)]);
    assert_eq!(online["stock_verified"], true, "{online}");
    assert_utc_rfc3339(&online["priced_at"]);

    app.products.set_down(true);
    let response = app.create_order(&ALICE, &items(&[(MONITOR, 2), (CABLE, 3)]));

    response.assert_status(201);
    let order = response.json();
    assert_eq!(order["stock_verified"], false, "{order}");
    assert_utc_rfc3339(&order["priced_at"]);
    assert_eq!(line_for(&order, MONITOR)["product_name"], "Monitor");
    assert_eq!(
        raw_numbers(&response.body, "total"),
        ["499.30"],
        "{}",
        response.body
    );
    let id = order["id"].as_i64().unwrap();
    let stored = app.get_order(&ALICE, id).json();
    assert_eq!(stored["stock_verified"], false);
    assert_eq!(stored["priced_at"], order["priced_at"]);
    let event = app.created_event(id);
    assert_eq!(event["stock_verified"], false, "{event}");
    assert_eq!(event["priced_at"], order["priced_at"], "{event}");
    assert_eq!(
        app.created_event(online["id"].as_i64().unwrap())["stock_verified"],
        true
    );

    let ready = app.ready_json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["product_service"]["link"], "down", "{ready}");
    assert_eq!(ready["product_service"]["offline_orders"], 1, "{ready}");
    assert!(app
        .metrics()
        .body
        .contains("\norder_service_offline_orders 1\n"));

    // A product the snapshot never held is still a 503, and writes nothing.
    let before = app.get_order(&ALICE, id).json();
    app.create_order(&ALICE, &items(&[(UNKNOWN_PRODUCT, 1)]))
        .assert_error(503, "product_service_unavailable");
    assert_eq!(app.get_order(&ALICE, id).json(), before);
    assert_eq!(app.list_orders(&ALICE, "").json()["total"], 1);
}

/// The lookups of an order that the service answered before one of them failed are its
/// latest word on those products: they refuse the order as they would online, and they
/// price it ahead of the snapshot's older rows.
#[test]
fn answers_that_came_before_a_failed_lookup_outweigh_the_snapshot() {
    let app = store(&[]);
    app.wait_for_snapshot("list", 5);
    // The cable's lookup fails after the monitor's has been answered.
    let failing = Behaviour::Slow(Duration::from_millis(300), Box::new(Behaviour::Status(500)));
    app.products.set(CABLE, failing);
    let order = items(&[(MONITOR, 1), (CABLE, 1)]);

    // Sold out now, though the snapshot holds 3.
    app.products.set(MONITOR, product("Monitor", "249.50", 0));
    let response = app.create_order(&ALICE, &order);
    response.assert_error(409, "insufficient_stock");
    assert_eq!(
        response.json()["details"],
        json!([{"product_id": MONITOR, "requested": 1, "available": 0}])
    );
    // Gone from the catalog now.
    app.products.set(MONITOR, Behaviour::NotFound);
    app.create_order(&ALICE, &order)
        .assert_error(422, "unknown_product");
    assert_eq!(
        app.list_orders(&ALICE, "").json()["total"],
        0,
        "nothing written"
    );

    // Back, at a new price: sold offline at that price, the cable at the snapshot's.
    app.products.set(MONITOR, product("Monitor", "199.00", 10));
    let response = app.create_order(&ALICE, &order);
    response.assert_status(201);
    let created = response.json();
    assert_eq!(created["stock_verified"], false, "{created}");
    assert_eq!(
        raw_numbers(&response.body, "total"),
        ["199.10"],
        "{}",
        response.body
    );
    // The answer is kept in the snapshot: with the service down, the next order gets it.
    app.products.set_down(true);
    let response = app.create_order(&BOB, &items(&[(MONITOR, 10)]));
    response.assert_error(409, "insufficient_stock");
    assert_eq!(
        response.json()["details"][0]["available"],
        9,
        "10 less the one sold"
    );
}

/// An order sold offline that the snapshot then refuses (a product it does not hold)
/// still keeps the answers its other lookups got before the failure.
#[test]
fn answers_are_kept_when_the_snapshot_refuses_the_offline_order() {
    let app = store(&[]);
    app.wait_for_snapshot("list", 5);
    let failing = Behaviour::Slow(Duration::from_millis(300), Box::new(Behaviour::Status(500)));
    app.products.set(UNKNOWN_PRODUCT, failing);
    app.products.set(MONITOR, product("Monitor", "199.00", 10));

    app.create_order(&ALICE, &items(&[(MONITOR, 1), (UNKNOWN_PRODUCT, 1)]))
        .assert_error(503, "product_service_unavailable");

    app.products.set_down(true);
    let response = app.create_order(&ALICE, &items(&[(MONITOR, 1)]));
    response.assert_status(201);
    assert_eq!(response.json()["stock_verified"], false);
    assert_eq!(
        raw_numbers(&response.body, "total"),
        ["199.00"],
        "{}",
        response.body
    );
}

#[test]
fn the_ledger_refuses_the_sale_that_would_pass_the_snapshot_stock() {
    // Monitor: stock 3 in the snapshot.
    let app = store(&[]);
    app.wait_for_snapshot("list", 5);
    app.products.set_down(true);

    app.place_order(&ALICE, &[(MONITOR, 2)]);
    let body = app
        .create_order(&ALICE, &items(&[(MONITOR, 2)]))
        .assert_error(409, "insufficient_stock");
    assert_eq!(
        body["details"],
        json!([{"product_id": MONITOR, "requested": 2, "available": 1}])
    );
    // Concurrent offline orders share the one unit left: exactly one gets it.
    let answers: Vec<u16> = std::thread::scope(|s| {
        let all: Vec<_> = (0..8)
            .map(|_| s.spawn(|| app.create_order(&BOB, &items(&[(MONITOR, 1)])).status))
            .collect();
        all.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(
        answers.iter().filter(|s| **s == 201).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|s| *s == 201 || *s == 409),
        "{answers:?}"
    );
    let body = app
        .create_order(&ALICE, &items(&[(MONITOR, 1)]))
        .assert_error(409, "insufficient_stock");
    assert_eq!(body["details"][0]["available"], 0);
}

#[test]
fn a_snapshot_past_the_max_age_refuses_with_503() {
    let app = store(&[("PRODUCT_CACHE_MAX_AGE", "4"), ("CATALOG_REFRESH", "3600")]);
    app.wait_for_snapshot("list", 5);
    let filled = Instant::now();
    app.products.set_down(true);
    app.place_order(&ALICE, &[(MOUSE, 1)]);

    std::thread::sleep(Duration::from_millis(4500).saturating_sub(filled.elapsed()));
    let response = app.create_order(&ALICE, &items(&[(MOUSE, 1)]));

    response.assert_error(503, "product_service_unavailable");
    assert!(response.header("Retry-After").is_some());
    assert_eq!(app.ready_json()["catalog"]["fresh_products"], 0);
}

/// Catalog refreshes the service has finished, by its log (at INFO).
fn refreshes(app: &TestApp) -> usize {
    app.stderr().matches("catalog snapshot refreshed").count()
}

#[test]
fn with_the_service_back_orders_are_verified_live_and_the_snapshot_refreshed() {
    let app = store(&[("CATALOG_REFRESH", "1"), ("RUST_LOG", "info")]);
    let first = app.wait_for_snapshot("list", 5);
    app.products.set_down(true);
    let offline = app.place_order(&ALICE, &[(MONITOR, 3)]);
    assert_eq!(offline["stock_verified"], false);

    app.products.set(MONITOR, product("Monitor", "199.00", 10));
    app.products.set_down(false);
    let live = app.place_order(&ALICE, &[(MONITOR, 1)]);
    let refreshes_by_then = refreshes(&app);

    assert_eq!(live["stock_verified"], true, "{live}");
    assert_eq!(line_for(&live, MONITOR)["price"].as_f64(), Some(199.0));
    // The next refresh takes the new stock and leaves the sales before it behind.
    let refreshed = wait_until(Duration::from_secs(10), || {
        let catalog = app.ready_json()["catalog"].clone();
        catalog["refreshed_at"] != first["refreshed_at"] && catalog["source"] == "list"
    });
    assert!(refreshed, "no refresh after the service came back");
    // A refresh that began before the live sale committed still counts it against the
    // stock. The second to end after the sale was answered began after the first ended.
    assert!(
        wait_until(Duration::from_secs(10), || refreshes(&app)
            >= refreshes_by_then + 2),
        "no two refreshes after the live sale"
    );
    app.products.set_down(true);
    let again = app.place_order(&ALICE, &[(MONITOR, 10)]);
    assert_eq!(again["stock_verified"], false);
    assert_eq!(line_for(&again, MONITOR)["price"].as_f64(), Some(199.0));

    let log = app.stderr();
    assert_eq!(
        log.matches("offline selling starts").count(),
        2,
        "once per outage:\n{log}"
    );
    assert_eq!(
        log.matches("offline selling ends").count(),
        1,
        "once per return:\n{log}"
    );
    assert!(log.contains("1 order(s) were taken offline"), "{log}");
}

/// A product list with nothing this service can read: every entry refused, or none.
#[test]
fn a_product_list_with_nothing_readable_leaves_the_snapshot_as_it_was() {
    let app = store(&[("CATALOG_REFRESH", "1")]);
    let filled = app.wait_for_snapshot("list", 5);
    let products = [LAPTOP, MOUSE, CABLE, ADAPTER, MONITOR];
    let refreshes_of = |list: &dyn Fn(i64) -> Behaviour| {
        for id in products {
            app.products.set(id, list(id));
        }
        let pages = app.products.list_pages();
        assert!(
            wait_until(Duration::from_secs(10), || app.products.list_pages()
                >= pages + 2),
            "no refresh read the list"
        );
        let catalog = app.ready_json()["catalog"].clone();
        assert_eq!(catalog["products"], 5, "{catalog}");
        assert_eq!(catalog["refreshed_at"], filled["refreshed_at"], "{catalog}");
    };
    // Prices with three decimals: entries, none of which parses.
    refreshes_of(&|id| product(&format!("Product {id}"), "1.001", 10));
    refreshes_of(&|_| Behaviour::NotFound);

    app.products.set_down(true);
    let order = app.place_order(&ALICE, &[(MOUSE, 1)]);
    assert_eq!(
        order["stock_verified"], false,
        "sold from the snapshot: {order}"
    );
    let log = app.stderr();
    assert!(log.contains("none of the 5 product(s) on the list's first page could be read"));
    assert!(log.contains("the product list is empty"));
}

#[test]
fn catalog_import_and_status_work_on_a_stopped_service_s_database() {
    let mut app = store_with(ProductStandIn::with_default_catalog(), &[]);
    app.kill();
    let dir = temp_dir();
    let file = write_file(
        &dir,
        "usb-catalog.json",
        r#"{"products":[{"id":70,"name":"USB Lamp","price":"12.50","stock":4},
                        {"id":71,"name":"Desk Fan","price":30,"stock":1}]}"#,
    );

    let (ok, out, err) = app.command(&["catalog", "import", &file.display().to_string()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("2 products imported"), "{out}");
    let (ok, status, err) = app.command(&["catalog", "status"]);
    assert!(ok, "{status}{err}");
    assert!(status.contains("products: 2\n"), "{status}");
    assert!(status.contains("fresh_products: 2\n"), "{status}");
    assert!(status.contains("from import usb-catalog.json"), "{status}");
    let bad = write_file(
        &dir,
        "bad.json",
        r#"[{"id":1,"name":"x","price":1.001,"stock":1}]"#,
    );
    let (ok, _, err) = app.command(&["catalog", "import", &bad.display().to_string()]);
    assert!(!ok && err.contains("entry 0"), "{err}");
    if !app.database_url().starts_with("postgres") {
        // A database that is not there (a setting left out) is not made for the import.
        let missing = dir.path().join("not-here").join("orders.db");
        let out = clean_command(dir.path())
            .env("DATABASE_URL", &missing)
            .args(["catalog", "import", &file.display().to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("no database at"),
            "{err}"
        );
        assert!(!missing.exists(), "no database made");
    }

    // Started with no product service at all, it sells what the import brought.
    app.restart_with_env("PRODUCT_SERVICE_URL", CLOSED_PORT_URL);
    let order = app.place_order(&ALICE, &[(70, 3)]);
    assert_eq!(order["stock_verified"], false);
    assert_eq!(line_for(&order, 70)["product_name"], "USB Lamp");
    let body = app
        .create_order(&ALICE, &items(&[(70, 2)]))
        .assert_error(409, "insufficient_stock");
    assert_eq!(body["details"][0]["available"], 1);
}

#[test]
fn with_offline_sales_off_a_down_service_answers_503_as_before() {
    let app = store(&[("PRODUCT_CACHE_MAX_AGE", "0")]);
    app.wait_for_snapshot("list", 5);
    let online = app.place_order(&ALICE, &[(MOUSE, 1)]);
    assert_eq!(online["stock_verified"], true);

    app.products.set_down(true);
    let response = app.create_order(&ALICE, &items(&[(MOUSE, 1)]));

    response.assert_error(503, "product_service_unavailable");
    assert!(response.header("Retry-After").is_some());
    assert_eq!(app.list_orders(&ALICE, "").json()["total"], 1);
    let ready = app.ready_json();
    assert_eq!(ready["product_service"]["offline_sales"], "off", "{ready}");
    assert_eq!(ready["product_service"]["offline_orders"], 0, "{ready}");
}

/// `cargo test --test api offline::refresh_cost -- --ignored --nocapture` (with
/// `TEST_BACKEND=postgres` for PostgreSQL): one refresh of a 10,000-product catalog.
#[test]
#[ignore = "a measurement"]
fn refresh_cost_of_a_10000_product_catalog() {
    let products = ProductStandIn::start();
    for id in 1..=10_000 {
        products.set(id, product(&format!("Product {id}"), "12.34", 100));
    }
    products.serve_list(None);
    // The first refresh fills the snapshot; the second one rewrites every row.
    let app = store_with(products, &[("RUST_LOG", "info"), ("CATALOG_REFRESH", "1")]);
    let refreshes = || -> Vec<String> {
        app.stderr()
            .lines()
            .filter(|l| l.contains("catalog snapshot refreshed"))
            .map(str::to_string)
            .collect()
    };
    assert!(wait_until(Duration::from_secs(30), || refreshes().len() >= 2));
    let backend = format!("{:?}", app.backend());
    for (what, line) in ["fill", "refresh"].iter().zip(refreshes()) {
        println!("{backend} {what}: {line}");
    }
    if app.backend() == Backend::Sqlite {
        let size = |suffix: &str| {
            std::fs::metadata(format!("{}{suffix}", app.db_path().display())).map_or(0, |m| m.len())
        };
        println!("sqlite file {} bytes, wal {} bytes", size(""), size("-wal"));
    }
}
