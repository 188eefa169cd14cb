//! `order-service import-sqlite FILE`: a store the service built on SQLite, copied into a
//! fresh PostgreSQL database (made here and dropped afterwards), then served from there.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};
use serde_json::Value;

use crate::support::*;

/// Every table the import copies, with its columns and key, as in `migrations/`: each row
/// is compared by all of its columns.
const TABLES: [(&str, &str, &str); 6] = [
    (
        "orders",
        "id, user_id, user_email, status, total_cents, created_at, updated_at, stock_verified,
         priced_at, lines",
        "id",
    ),
    (
        "order_items",
        "order_id, line_no, product_id, product_name, quantity, price_cents, subtotal_cents",
        "order_id, line_no",
    ),
    (
        "outbox",
        "id, order_id, event_type, payload, created_at, blocked_since",
        "id",
    ),
    ("outbox_marks", "upto, at", "upto"),
    (
        "idempotency_keys",
        "user_id, idem_key, request, response_status, response_body, created_at",
        "user_id, idem_key",
    ),
    (
        "product_cache",
        "product_id, name, price_cents, stock, fetched_at",
        "product_id",
    ),
];

#[test]
fn a_store_moves_onto_postgresql_with_its_ids_history_and_pending_events() {
    let Some(db) = FreshDatabase::create_or_skip("the SQLite import") else {
        return;
    };
    // Declared after the database, so the service stops before the database is dropped.
    let mut app = TestApp::builder().sqlite_only().spawn();
    let first = app.place_order_id(&ALICE, LAPTOP, 1);
    let second = app.place_order(&BOB, &[(MOUSE, 2), (CABLE, 3)])["id"]
        .as_i64()
        .unwrap();
    let third = app.place_order_id(&ALICE, ADAPTER, 4);
    app.cancel(&ALICE, third).assert_status(200);
    app.bring_to(second, "shipped");
    let keyed_body = items(&[(MONITOR, 1), (CABLE, 2)]);
    let keyed = app.create_order_with_key(&CAROL, "move-1", &keyed_body);
    keyed.assert_status(201);
    let keyed_id = keyed.json()["id"].as_i64().unwrap();
    let owned = [
        (ALICE, first),
        (BOB, second),
        (ALICE, third),
        (CAROL, keyed_id),
    ];
    let answered: Vec<(u16, String)> = owned
        .iter()
        .map(|(user, id)| {
            let r = app.get_order(user, *id);
            (r.status, r.body)
        })
        .collect();
    let alice_listed = app.list_orders(&ALICE, "").body;
    app.signal("TERM");
    assert!(
        app.wait_exit(Duration::from_secs(30)).is_some(),
        "the SQLite service did not stop"
    );
    // As the relay leaves the outbox after the broker confirmed the first three events
    // and then kept refusing the fourth (the broker is never reachable here).
    {
        let conn = rusqlite::Connection::open(app.db_path()).unwrap();
        conn.execute_batch(
            "INSERT INTO outbox_marks (upto, at) SELECT id, created_at + 1000 FROM outbox WHERE id = 3;
             UPDATE outbox SET blocked_since = created_at + 2000 WHERE id = 4;",
        )
        .unwrap();
    }
    let before = dump_sqlite(app.db_path());
    let count = |table: &str| before.iter().find(|(t, _)| *t == table).unwrap().1.len();
    assert_eq!(count("orders"), 4);
    assert_eq!(
        count("outbox"),
        7,
        "4 creates, a cancel, confirmed, shipped"
    );
    assert_eq!(count("idempotency_keys"), 1);
    assert!(
        count("product_cache") >= 5,
        "every product answer is cached"
    );
    let pending_before = pending_ids_sqlite(app.db_path());
    assert_eq!(pending_before, vec![4, 5, 6, 7]);
    let sqlite_status = outbox_status(&app.db_path().display().to_string());

    let imported = import(app.db_path(), &db.url());

    assert!(imported.status.success(), "{}", text(&imported));
    let stdout = String::from_utf8_lossy(&imported.stdout);
    for line in [
        "orders: 4".to_string(),
        format!("order_items: {}", count("order_items")),
        "outbox: 7 (4 pending)".to_string(),
        "idempotency_keys: 1".to_string(),
        format!("product_cache: {}", count("product_cache")),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no {line:?} in {stdout}");
    }
    assert!(stdout.contains(" s"), "the time taken: {stdout}");
    let mut pg = db.connect();
    assert_eq!(
        dump_pg(&mut pg),
        before,
        "every row, every column, as in SQLite"
    );
    let sequences: (i64, i64) = pg
        .query_one(
            "SELECT (SELECT last_value FROM order_ids), (SELECT last_value FROM outbox_ids)",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        sequences,
        (4, 7),
        "the id sequences moved by the import itself"
    );
    assert_eq!(
        outbox_status(&db.url()),
        sqlite_status,
        "pending, published and blocked event as on SQLite"
    );

    app.restart_with_env("DATABASE_URL", &db.url());

    for ((user, id), (status, body)) in owned.iter().zip(&answered) {
        let r = app.get_order(user, *id);
        assert_eq!((r.status, &r.body), (*status, body), "GET order {id}");
    }
    assert_eq!(app.list_orders(&ALICE, "").body, alice_listed);
    let replay = app.create_order_with_key(&CAROL, "move-1", &keyed_body);
    assert_eq!(
        (replay.status, &replay.body),
        (keyed.status, &keyed.body),
        "the stored answer replayed"
    );
    assert_eq!(
        pg_count(&mut pg, "orders"),
        4,
        "no order made by the replay"
    );
    let new_order = app.place_order_id(&BOB, MOUSE, 1);
    assert_eq!(new_order, 5, "the next id past the imported ones");
    let new_event: i64 = pg
        .query_one("SELECT id FROM outbox WHERE order_id = $1", &[&new_order])
        .unwrap()
        .get(0);
    assert_eq!(new_event, 8, "the next event id past the imported ones");
    // What the relay publishes first, in its order (`pending_events`: oldest id first).
    let pending: Vec<i64> = pg
        .query(
            "SELECT id FROM outbox WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks) ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pending, vec![4, 5, 6, 7, 8]);
    let status = outbox_status(&db.url());
    assert!(status.contains("pending: 5\n"), "{status}");
    assert!(status.contains("blocked_event: test-store:4 "), "{status}");

    let after_service = dump_pg(&mut pg);
    let again = import(app.db_path(), &db.url());

    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains(
            "is not empty (5 orders, 8 outbox rows, 1 publication marks, 1 idempotency keys"
        ),
        "names what it found: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert_eq!(
        dump_pg(&mut pg),
        after_service,
        "the refused import changed nothing"
    );
}

/// Orders the file holds before the copy: 20,000 make the copy last long enough for the
/// service to commit many times during it. `IMPORT_TEST_ORDERS=100000` gives README's
/// figure (the time is printed with `--nocapture`).
fn many_orders() -> i64 {
    std::env::var("IMPORT_TEST_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn a_copy_taken_while_the_sqlite_service_writes_is_one_consistent_moment() {
    let Some(db) = FreshDatabase::create_or_skip("the SQLite import under writes") else {
        return;
    };
    let mut app = TestApp::builder().sqlite_only().spawn();
    app.place_order(&ALICE, &[(MOUSE, 1), (CABLE, 2)]);
    app.signal("TERM");
    assert!(app.wait_exit(Duration::from_secs(30)).is_some());
    let filled = many_orders();
    fill_like_order_1(app.db_path(), filled);
    app.restart();

    let stop = AtomicBool::new(false);
    let (imported, made_during) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut made = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = app.place_order(&BOB, &[(MOUSE, 1), (ADAPTER, 3)])["id"]
                    .as_i64()
                    .unwrap();
                app.cancel(&BOB, id).assert_status(200);
                made += 1;
            }
            made
        });
        std::thread::sleep(Duration::from_millis(100));
        let imported = import(app.db_path(), &db.url());
        stop.store(true, Ordering::Relaxed);
        (imported, writer.join().unwrap())
    });

    assert!(imported.status.success(), "{}", text(&imported));
    eprintln!("{}", String::from_utf8_lossy(&imported.stdout).trim());
    let mut pg = db.connect();
    let orders = pg_count(&mut pg, "orders");
    assert!(orders >= filled, "{orders}");
    let torn: i64 = pg
        .query_one(
            "SELECT COUNT(*) FROM orders o
               LEFT JOIN (SELECT order_id, COUNT(*) AS n FROM order_items GROUP BY order_id) i
                 ON i.order_id = o.id
               LEFT JOIN (SELECT order_id, COUNT(*) AS n FROM outbox GROUP BY order_id) e
                 ON e.order_id = o.id
              WHERE COALESCE(i.n, 0) <> 2
                 OR COALESCE(e.n, 0) <> CASE o.status WHEN 'cancelled' THEN 2 ELSE 1 END",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(torn, 0, "an order copied without its items or events");
    let max_event: i64 = pg
        .query_one("SELECT MAX(id) FROM outbox", &[])
        .unwrap()
        .get(0);
    assert_eq!(max_event, pg_count(&mut pg, "outbox"), "no event missing");
    assert!(made_during > 0, "orders were made during the copy");
    assert!(
        app.count_orders() > orders,
        "the service went on writing past the copy"
    );
}

/// Adds orders 2..=n+1 to a stopped service's file, each a copy of order 1 with its items
/// and its one event: a big store in a second, where the API would take minutes.
fn fill_like_order_1(file: &Path, n: i64) {
    let conn = rusqlite::Connection::open(file).unwrap();
    let numbers =
        format!("WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i <= {n})");
    conn.execute_batch(&format!(
        "BEGIN;
         {numbers} INSERT INTO orders (id, user_id, user_email, status, total_cents,
             created_at, updated_at) SELECT i, user_id, user_email, status, total_cents,
             created_at, updated_at FROM n, orders WHERE id = 1;
         {numbers} INSERT INTO order_items (order_id, line_no, product_id, product_name,
             quantity, price_cents, subtotal_cents) SELECT i, line_no, product_id, product_name,
             quantity, price_cents, subtotal_cents FROM n, order_items WHERE order_id = 1;
         {numbers} INSERT INTO outbox (id, order_id, event_type, payload, created_at,
             blocked_since) SELECT i, i, event_type, payload, created_at,
             blocked_since FROM n, outbox WHERE id = 1;
         UPDATE order_counts SET orders = orders + {n}
             WHERE user_id = (SELECT user_id FROM orders WHERE id = 1);
         COMMIT;"
    ))
    .unwrap();
}

#[test]
fn import_sqlite_needs_a_postgresql_target_and_an_existing_file() {
    let dir = temp_dir();
    let file = dir.path().join("orders.db");
    let file = file.display().to_string();

    let onto_sqlite = clean_command(dir.path())
        .args(["import-sqlite", &file])
        .env("DATABASE_URL", dir.path().join("other.db"))
        .output()
        .unwrap();
    assert_eq!(onto_sqlite.status.code(), Some(2), "{}", text(&onto_sqlite));
    assert!(
        String::from_utf8_lossy(&onto_sqlite.stderr).contains("copies into PostgreSQL"),
        "{}",
        text(&onto_sqlite)
    );

    // Port 1: the missing file is found before anything connects.
    let missing = clean_command(dir.path())
        .args(["import-sqlite", &file])
        .env("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nothing")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        format!("order-service: no SQLite database at {file}")
    );
    assert!(!Path::new(&file).exists(), "the file was not created");

    let no_file = clean_command(dir.path())
        .arg("import-sqlite")
        .output()
        .unwrap();
    assert_eq!(no_file.status.code(), Some(2), "{}", text(&no_file));
}

/// A PostgreSQL database made for one test and dropped afterwards, even when it fails.
struct FreshDatabase {
    name: String,
}

impl FreshDatabase {
    /// `None` (after a loud note) when PostgreSQL is not reachable; under CI it must be.
    fn create_or_skip(what: &str) -> Option<FreshDatabase> {
        let mut admin = match Client::connect(&server("postgres"), NoTls) {
            Ok(client) => client,
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!(
                        "PostgreSQL must be reachable in CI (127.0.0.1:5432, user postgres): {e}"
                    );
                }
                loud_skip(&format!(
                    "PostgreSQL not reachable (127.0.0.1:5432, user postgres), {what} not tried: {e}"
                ));
                return None;
            }
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("order_service_import_{}_{nanos}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        Some(FreshDatabase { name })
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:5432/{}", self.name)
    }

    fn connect(&self) -> Client {
        Client::connect(&server(&self.name), NoTls)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let dropped = Client::connect(&server("postgres"), NoTls).and_then(|mut admin| {
            admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

fn server(db: &str) -> String {
    format!("host=127.0.0.1 port=5432 user=postgres dbname={db} connect_timeout=5")
}

/// `order-service import-sqlite FILE` with DATABASE_URL set to `url`.
fn import(file: &Path, url: &str) -> Output {
    let dir = temp_dir();
    clean_command(dir.path())
        .arg("import-sqlite")
        .arg(file)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// `order-service outbox status` on `database`, without its lines that name the
/// database or depend on the moment it runs.
fn outbox_status(database: &str) -> String {
    let dir = temp_dir();
    let out = clean_command(dir.path())
        .args(["outbox", "status"])
        .env("DATABASE_URL", database)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("database:") && !l.starts_with("oldest_pending_age"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Each table's rows in key order, every row a JSON array of its columns.
fn dump_sqlite(file: &Path) -> Vec<(&'static str, Vec<Value>)> {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    TABLES
        .iter()
        .map(|(table, columns, key)| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT json_array({columns}) FROM {table} ORDER BY {key}"
                ))
                .unwrap();
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(|row| serde_json::from_str(&row.unwrap()).unwrap())
                .collect();
            (*table, rows)
        })
        .collect()
}

/// As `dump_sqlite`, from PostgreSQL.
fn dump_pg(pg: &mut Client) -> Vec<(&'static str, Vec<Value>)> {
    TABLES
        .iter()
        .map(|(table, columns, key)| {
            let rows = pg
                .query(
                    &format!(
                        "SELECT json_build_array({columns})::text FROM {table} ORDER BY {key}"
                    ),
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
                .collect();
            (*table, rows)
        })
        .collect()
}

fn pending_ids_sqlite(file: &Path) -> Vec<i64> {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT id FROM outbox WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks) ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn pg_count(pg: &mut Client, table: &str) -> i64 {
    pg.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
