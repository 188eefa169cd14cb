//! The harness: a fresh `order-service` process per test over its own SQLite file, a
//! product-service stand-in, one method per endpoint, and read-only peeks into the database.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_order-service");

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

// The default catalog every stand-in starts with.
pub const LAPTOP: i64 = 1; // 1299.99, stock 50
pub const MOUSE: i64 = 2; // 19.99, stock 1000
pub const CABLE: i64 = 3; // 0.10, stock 1000
pub const ADAPTER: i64 = 4; // 0.20, stock 1000
pub const MONITOR: i64 = 5; // 249.50, stock 3
pub const UNKNOWN_PRODUCT: i64 = 999;

pub const STATUSES: [&str; 5] = ["pending", "confirmed", "shipped", "delivered", "cancelled"];

/// Starts a service with the default settings and the default catalog.
pub fn spawn_app() -> TestApp {
    TestApp::builder().spawn()
}

/// `{"items":[{"product_id":p,"quantity":q},…]}`
pub fn items(lines: &[(i64, i64)]) -> Value {
    json!({
        "items": lines
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect::<Vec<_>>()
    })
}

// ---------------------------------------------------------------------------------------
// The service process
// ---------------------------------------------------------------------------------------

pub struct AppBuilder {
    env: Vec<(String, String)>,
    products: Option<ProductStandIn>,
}

impl AppBuilder {
    /// An extra (or overriding) environment variable for the service.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Use this stand-in instead of a fresh one with the default catalog.
    pub fn products(mut self, products: ProductStandIn) -> Self {
        self.products = Some(products);
        self
    }

    pub fn spawn(self) -> TestApp {
        let dir = TempDir::new();
        let products = self
            .products
            .unwrap_or_else(ProductStandIn::with_default_catalog);
        let db_path = dir.path().join("orders.db");
        let mut env = BTreeMap::new();
        env.insert("HOST".to_string(), "127.0.0.1".to_string());
        env.insert("DATABASE_URL".to_string(), db_path.display().to_string());
        env.insert("PRODUCT_SERVICE_URL".to_string(), products.url());
        env.insert("RABBITMQ_HOST".to_string(), "127.0.0.1".to_string());
        // Nothing listens on port 1: the relay keeps retrying in the background.
        env.insert("RABBITMQ_PORT".to_string(), "1".to_string());
        env.insert(
            "RABBITMQ_QUEUE".to_string(),
            format!("test-{}", unique_suffix()),
        );
        env.insert("STORE_ID".to_string(), "test-store".to_string());
        env.insert("RUST_LOG".to_string(), "warn".to_string());
        for (k, v) in self.env {
            env.insert(k, v);
        }
        let mut app = TestApp {
            products,
            db_path,
            port: 0,
            agent: new_agent(),
            child: None,
            env,
            dir,
        };
        app.start();
        app
    }
}

pub struct TestApp {
    pub products: ProductStandIn,
    pub db_path: PathBuf,
    port: u16,
    agent: ureq::Agent,
    child: Option<Child>,
    env: BTreeMap<String, String>,
    // Last, so the directory goes only after the process is gone.
    dir: TempDir,
}

impl TestApp {
    pub fn builder() -> AppBuilder {
        AppBuilder {
            env: Vec::new(),
            products: None,
        }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything the service wrote to stderr, over all its starts.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, as in a power cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process and starts a new one with the same settings on the same database.
    pub fn restart(&mut self) {
        self.kill();
        self.agent = new_agent();
        self.start();
    }

    /// Restarts on the same database with one setting changed.
    pub fn restart_with_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_string(), value.to_string());
        self.restart();
    }

    fn start(&mut self) {
        let mut last_failure = String::new();
        // A port picked by binding :0 can be taken by another test before the service
        // binds it; then try another one.
        for _ in 0..5 {
            self.port = free_port();
            let stderr = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("stderr.log"))
                .expect("open stderr.log");
            let stdout = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("stdout.log"))
                .expect("open stdout.log");
            let mut command = clean_command(self.dir.path());
            command
                .envs(&self.env)
                .env("PORT", self.port.to_string())
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr));
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
            self.child = Some(child);
            match self.wait_until_healthy() {
                Ok(()) => return,
                Err(failure) => {
                    self.kill();
                    let stderr = self.stderr();
                    let port_taken = stderr.contains("in use") || stderr.contains("AddrInUse");
                    last_failure = failure;
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        panic!(
            "order-service did not become healthy: {last_failure}\n--- stderr ---\n{}",
            self.stderr()
        );
    }

    fn wait_until_healthy(&mut self) -> Result<(), String> {
        let probe: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(1)))
            .build()
            .new_agent();
        let url = format!("{}/health", self.address());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("the process exited with {status}"));
            }
            if let Ok(response) = probe.get(&url).call() {
                if response.status().as_u16() == 200 {
                    // Make sure it is our process that answered, not a neighbour on a reused port.
                    if let Some(status) = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        return Err(format!("the process exited with {status}"));
                    }
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err("GET /health did not answer 200 within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // -----------------------------------------------------------------------------------
    // Requests
    // -----------------------------------------------------------------------------------

    /// A request exactly as given: no identity, gateway or content-type headers added.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> TestResponse {
        let url = format!("{}{}", self.address(), path);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let result = match body {
            Some(bytes) => self
                .agent
                .run(builder.body(bytes.to_vec()).expect("build request")),
            // ureq frames a body-less POST/PUT/PATCH as an empty chunked body; send
            // `Content-Length: 0` instead, as most clients do. The chunked form is tested on
            // its own (errors::every_answer_leaves_a_kept_alive_connection_usable).
            None if matches!(method, "POST" | "PUT" | "PATCH") => self
                .agent
                .run(builder.body(Vec::new()).expect("build request")),
            None => self.agent.run(builder.body(()).expect("build request")),
        };
        let response = result.unwrap_or_else(|e| {
            panic!(
                "{method} {path}: transport error {e}\n--- stderr ---\n{}",
                self.stderr()
            )
        });
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
        TestResponse {
            status,
            headers,
            body,
        }
    }

    /// Raw bytes on a fresh connection, for requests ureq will not make.
    pub fn raw(&self, request: &[u8]) -> TestResponse {
        self.connect_raw()
            .send(request)
            .unwrap_or_else(|| panic!("raw request: the connection closed without an answer"))
    }

    /// A kept-alive connection for several raw requests in turn.
    pub fn connect_raw(&self) -> RawConnection {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        RawConnection {
            stream,
            buf: Vec::new(),
        }
    }

    /// The gateway headers for `user` (and the gateway token, if this app has one).
    pub fn user_headers(&self, user: &User) -> Vec<(String, String)> {
        let mut headers = self.gateway_headers();
        headers.push(("X-User-Id".into(), user.id.into()));
        headers.push(("X-User-Email".into(), user.email.into()));
        headers
    }

    pub fn admin_headers(&self) -> Vec<(String, String)> {
        let mut headers = self.gateway_headers();
        headers.push(("X-User-Id".into(), ADMIN_USER_ID.into()));
        headers.push(("X-User-Role".into(), "admin".into()));
        headers
    }

    fn gateway_headers(&self) -> Vec<(String, String)> {
        match self.env.get("GATEWAY_TOKEN") {
            Some(token) => vec![("X-Gateway-Token".into(), token.clone())],
            None => Vec::new(),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&Value>,
    ) -> TestResponse {
        let mut all: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        if bytes.is_some() {
            all.push(("Content-Type", "application/json"));
        }
        self.request(method, path, &all, bytes.as_deref())
    }

    pub fn health(&self) -> TestResponse {
        self.request("GET", "/health", &[], None)
    }

    pub fn ready(&self) -> TestResponse {
        self.request("GET", "/ready", &[], None)
    }

    pub fn metrics(&self) -> TestResponse {
        self.request("GET", "/metrics", &[], None)
    }

    pub fn create_order(&self, user: &User, body: &Value) -> TestResponse {
        self.send("POST", "/api/orders", &self.user_headers(user), Some(body))
    }

    pub fn create_order_with_key(&self, user: &User, key: &str, body: &Value) -> TestResponse {
        let mut headers = self.user_headers(user);
        headers.push(("Idempotency-Key".into(), key.into()));
        self.send("POST", "/api/orders", &headers, Some(body))
    }

    pub fn get_order(&self, user: &User, id: i64) -> TestResponse {
        self.send(
            "GET",
            &format!("/api/orders/{id}"),
            &self.user_headers(user),
            None,
        )
    }

    pub fn get_order_as_admin(&self, id: i64) -> TestResponse {
        self.send(
            "GET",
            &format!("/api/orders/{id}"),
            &self.admin_headers(),
            None,
        )
    }

    /// `query` without the `?`, e.g. `"page=2&per_page=5"`; empty for the defaults.
    pub fn list_orders(&self, user: &User, query: &str) -> TestResponse {
        let path = if query.is_empty() {
            "/api/orders".to_string()
        } else {
            format!("/api/orders?{query}")
        };
        self.send("GET", &path, &self.user_headers(user), None)
    }

    pub fn cancel(&self, user: &User, id: i64) -> TestResponse {
        self.send(
            "PATCH",
            &format!("/api/orders/{id}/cancel"),
            &self.user_headers(user),
            None,
        )
    }

    pub fn set_status_as_admin(&self, id: i64, status: &str) -> TestResponse {
        self.set_status_with(&self.admin_headers(), id, &json!({ "status": status }))
    }

    /// PATCH /api/orders/:id/status with exactly these identity headers (plus the gateway token).
    pub fn set_status_with(
        &self,
        headers: &[(String, String)],
        id: i64,
        body: &Value,
    ) -> TestResponse {
        let mut all = self.gateway_headers();
        all.extend(headers.iter().cloned());
        self.send(
            "PATCH",
            &format!("/api/orders/{id}/status"),
            &all,
            Some(body),
        )
    }

    // -----------------------------------------------------------------------------------
    // Shortcuts for arranging a test
    // -----------------------------------------------------------------------------------

    /// Creates an order that must succeed; returns the order object.
    pub fn place_order(&self, user: &User, lines: &[(i64, i64)]) -> Value {
        let response = self.create_order(user, &items(lines));
        response.assert_status(201);
        response.json()
    }

    /// Creates a one-line order that must succeed; returns its id.
    pub fn place_order_id(&self, user: &User, product: i64, quantity: i64) -> i64 {
        self.place_order(user, &[(product, quantity)])["id"]
            .as_i64()
            .expect("order id")
    }

    /// Walks a pending order to `status` through legal admin steps.
    pub fn bring_to(&self, id: i64, status: &str) {
        let path: &[&str] = match status {
            "pending" => &[],
            "confirmed" => &["confirmed"],
            "shipped" => &["confirmed", "shipped"],
            "delivered" => &["confirmed", "shipped", "delivered"],
            "cancelled" => &["cancelled"],
            other => panic!("no path to {other}"),
        };
        for step in path {
            let response = self.set_status_as_admin(id, step);
            response.assert_status(200);
            assert_eq!(
                response.json()["status"],
                *step,
                "bringing order {id} to {status}"
            );
        }
    }

    // -----------------------------------------------------------------------------------
    // The database, read-only
    // -----------------------------------------------------------------------------------

    pub fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap_or_else(|e| panic!("open {} read-only: {e}", self.db_path.display()));
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    pub fn count(&self, table: &str) -> i64 {
        self.db()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("count {table}: {e}"))
    }

    pub fn count_orders(&self) -> i64 {
        self.count("orders")
    }

    pub fn count_items(&self) -> i64 {
        self.count("order_items")
    }

    pub fn count_outbox(&self) -> i64 {
        self.count("outbox")
    }

    /// Every outbox row, oldest first.
    pub fn outbox_rows(&self) -> Vec<OutboxRow> {
        let conn = self.db();
        let mut stmt = conn
            .prepare("SELECT id, order_id, event_type, payload FROM outbox ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| {
            let payload: String = r.get(3)?;
            Ok(OutboxRow {
                id: r.get(0)?,
                order_id: r.get(1)?,
                event_type: r.get(2)?,
                payload: serde_json::from_str(&payload)
                    .unwrap_or_else(|e| panic!("outbox payload is not JSON ({e}): {payload}")),
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
    }

    pub fn outbox_rows_for(&self, order_id: i64) -> Vec<OutboxRow> {
        self.outbox_rows()
            .into_iter()
            .filter(|r| r.order_id == order_id)
            .collect()
    }

    /// A snapshot of what a failed request must not change.
    pub fn counts(&self) -> Counts {
        Counts {
            orders: self.count_orders(),
            items: self.count_items(),
            outbox: self.count_outbox(),
            idempotency_keys: self.count("idempotency_keys"),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- order-service stderr ({}) ---\n{}",
                self.dir.path().display(),
                self.stderr()
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub order_id: i64,
    pub event_type: String,
    pub payload: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub orders: i64,
    pub items: i64,
    pub outbox: i64,
    pub idempotency_keys: i64,
}

fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A hung service fails the test instead of hanging the suite.
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{}-{}", std::process::id(), n, nanos)
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

pub struct TestResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl std::fmt::Debug for TestResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {:?} {}", self.status, self.headers, self.body)
    }
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): HTTP {} {:?}",
                self.status, self.body
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status; response: {self:?}");
        self
    }

    /// Asserts the status and the error shape `{"error":"…","code":"…"}`; returns the body.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        self.assert_status(status);
        let body = self.json();
        assert_eq!(
            body["code"], code,
            "unexpected error code; response: {self:?}"
        );
        assert!(
            body["error"].as_str().is_some_and(|s| !s.trim().is_empty()),
            "an error needs a sentence for a person in \"error\"; response: {self:?}"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "errors are JSON; response: {self:?}"
        );
        body
    }

    /// `details.field` of a validation error.
    #[track_caller]
    pub fn assert_validation_failed(&self, field: &str) {
        let body = self.assert_error(400, "validation_failed");
        assert_eq!(
            body["details"]["field"], field,
            "wrong field named; response: {self:?}"
        );
    }
}

/// The raw text of every number written as `"key": <number>` in a JSON text, so a test
/// can check how money is spelled, not just its value.
pub fn raw_numbers(body: &str, key: &str) -> Vec<String> {
    let needle = format!("\"{key}\"");
    let mut found = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find(&needle) {
        rest = &rest[at + needle.len()..];
        let after = rest.trim_start();
        if let Some(value) = after.strip_prefix(':') {
            let value = value.trim_start();
            let number: String = value
                .chars()
                .take_while(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
                .collect();
            if !number.is_empty() {
                found.push(number);
            }
        }
    }
    found
}

/// RFC 3339 in UTC: `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)`.
#[track_caller]
pub fn assert_utc_rfc3339(value: &Value) {
    let s = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time string: {value}"));
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        r.into_iter()
            .all(|i| b.get(i).is_some_and(u8::is_ascii_digit))
    };
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let zone = s.ends_with('Z') || s.ends_with("+00:00");
    let middle = &s[19..s.len()
        - if s.ends_with('Z') {
            1
        } else {
            6.min(s.len() - 19)
        }];
    let fraction_ok = middle.is_empty()
        || (middle.starts_with('.')
            && middle.len() > 1
            && middle[1..].bytes().all(|c| c.is_ascii_digit()));
    assert!(shape && zone && fraction_ok, "not UTC RFC 3339: {s}");
}

/// Checks the order object's fields and types, as the contract shows them.
#[track_caller]
pub fn assert_order_shape(order: &Value) {
    assert!(
        order["id"].as_i64().is_some_and(|id| id >= 1),
        "id: {order}"
    );
    assert!(order["user_id"].is_string(), "user_id: {order}");
    assert!(order["user_email"].is_string(), "user_email: {order}");
    assert!(order["total"].is_number(), "total: {order}");
    assert!(
        STATUSES.contains(&order["status"].as_str().unwrap_or("")),
        "status: {order}"
    );
    assert_utc_rfc3339(&order["created_at"]);
    assert_utc_rfc3339(&order["updated_at"]);
    let lines = order["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items: {order}"));
    assert!(!lines.is_empty(), "items: {order}");
    for line in lines {
        assert!(line["product_id"].as_i64().is_some(), "product_id: {line}");
        assert!(line["product_name"].is_string(), "product_name: {line}");
        assert!(line["quantity"].as_i64().is_some(), "quantity: {line}");
        assert!(line["price"].is_number(), "price: {line}");
        assert!(line["subtotal"].is_number(), "subtotal: {line}");
    }
}

/// The line for `product_id` in an order.
#[track_caller]
pub fn line_for(order: &Value, product_id: i64) -> Value {
    order["items"]
        .as_array()
        .and_then(|lines| lines.iter().find(|l| l["product_id"] == product_id))
        .cloned()
        .unwrap_or_else(|| panic!("no line for product {product_id} in {order}"))
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One client connection written by hand: each `send` writes bytes and reads one response.
pub struct RawConnection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConnection {
    /// Writes `request` and reads the next response; `None` if the server closed the
    /// connection without one.
    pub fn send(&mut self, request: &[u8]) -> Option<TestResponse> {
        // The server may answer before reading all of a large body, and close: keep going.
        let _ = self.stream.write_all(request);
        let _ = self.stream.flush();
        self.read_response()
    }

    /// Reads the next response (framed by Content-Length or chunked, else up to EOF).
    pub fn read_response(&mut self) -> Option<TestResponse> {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some((response, used)) = parse_response(&self.buf) {
                self.buf.drain(..used);
                return Some(response);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if self.buf.is_empty() && e.kind() != std::io::ErrorKind::ConnectionReset =>
                {
                    panic!("raw request: no answer: {e}")
                }
                Err(_) => break,
            }
        }
        let (status, headers, body_start) = parse_head(&self.buf)?;
        let body = String::from_utf8_lossy(&self.buf[body_start..]).into_owned();
        self.buf.clear();
        Some(TestResponse {
            status,
            headers,
            body,
        })
    }
}

/// A complete response at the start of `buf`, if it holds one, and the bytes it took.
fn parse_response(buf: &[u8]) -> Option<(TestResponse, usize)> {
    let (status, headers, body_start) = parse_head(buf)?;
    let body = &buf[body_start..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (decoded, used) = if header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        decode_chunked(body)?
    } else if let Some(length) =
        header("content-length").and_then(|v| v.trim().parse::<usize>().ok())
    {
        if body.len() < length {
            return None;
        }
        (body[..length].to_vec(), length)
    } else {
        return None;
    };
    let response = TestResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&decoded).into_owned(),
    };
    Some((response, body_start + used))
}

/// Status, headers and the length of the head.
type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, end + 4))
}

/// The decoded body and the bytes it took, once the last chunk has arrived.
fn decode_chunked(body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + body[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers are expected: the final CRLF ends the body.
            return (body.len() >= at + 2).then_some((out, at + 2));
        }
        if body.len() < at + size + 2 {
            return None;
        }
        out.extend_from_slice(&body[at..at + size]);
        at += size + 2;
    }
}

// ---------------------------------------------------------------------------------------
// The product-service stand-in
// ---------------------------------------------------------------------------------------

/// How the stand-in answers `GET /api/products/{id}` for one id.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with `{"id","name","price","stock"}`; `price` is JSON number text, e.g. "1299.99".
    Product {
        name: String,
        price: String,
        stock: i64,
    },
    /// 200 with the inner answer's object under this key: "product" or "data".
    Wrapped(&'static str, Box<Behaviour>),
    /// This status with a small JSON error body.
    Status(u16),
    /// Waits, then answers as the inner behaviour.
    Slow(Duration, Box<Behaviour>),
    /// 404, as for an id the catalog does not hold.
    NotFound,
    /// Exactly this status, Content-Type and body: a proxy's page, say.
    Answer {
        status: u16,
        content_type: &'static str,
        body: String,
    },
}

/// The Content-Type the stand-in sends with `behaviour`.
fn content_type(behaviour: &Behaviour) -> &'static str {
    match behaviour {
        Behaviour::Answer { content_type, .. } => content_type,
        Behaviour::Wrapped(_, inner) | Behaviour::Slow(_, inner) => content_type(inner),
        _ => "application/json",
    }
}

pub fn product(name: &str, price: &str, stock: i64) -> Behaviour {
    Behaviour::Product {
        name: name.into(),
        price: price.into(),
        stock,
    }
}

type Catalog = Arc<Mutex<HashMap<i64, Behaviour>>>;

/// How the stand-in answers beyond single lookups (tests/api/offline.rs).
#[derive(Default)]
struct Switches {
    /// `GET /api/products?page=N&per_page=M`: `None` answers 404 (no list), else the
    /// catalog's `Product` entries by id, as an array or wrapped under this key ("").
    list: Mutex<Option<&'static str>>,
    list_pages: AtomicU64,
    /// Every connection is closed without an answer, as by a crashed service.
    down: AtomicBool,
}

/// A small HTTP/1.1 server on std sockets: one thread per connection, keep-alive.
///
/// Not tiny_http: tiny_http 0.12 hands each connection to a pool thread with a lost
/// wake-up (`TaskPool::spawn` trusts `waiting_tasks`, which still counts a thread already
/// woken), so when several connections open at once some wait, unanswered, until another
/// connection closes. As a stand-in that lost 3 to 4 of 100 parallel product lookups.
pub struct ProductStandIn {
    catalog: Catalog,
    switches: Arc<Switches>,
    calls: Arc<Mutex<Vec<i64>>>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    port: u16,
}

impl ProductStandIn {
    /// An empty catalog: every id answers 404.
    pub fn start() -> ProductStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("start the product stand-in");
        let port = listener.local_addr().unwrap().port();
        let catalog: Catalog = Arc::default();
        let switches: Arc<Switches> = Arc::default();
        let calls: Arc<Mutex<Vec<i64>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = {
            let (catalog, calls, stopping, connections, switches) = (
                catalog.clone(),
                calls.clone(),
                stopping.clone(),
                connections.clone(),
                switches.clone(),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (catalog, calls, stopping, switches) = (
                        catalog.clone(),
                        calls.clone(),
                        stopping.clone(),
                        switches.clone(),
                    );
                    let connection = std::thread::spawn(move || {
                        serve_connection(stream, &catalog, &switches, &calls, &stopping)
                    });
                    let mut all = connections.lock().unwrap();
                    all.retain(|c| !c.is_finished());
                    all.push(connection);
                }
            })
        };
        ProductStandIn {
            catalog,
            switches,
            calls,
            stopping,
            acceptor: Some(acceptor),
            connections,
            port,
        }
    }

    /// Laptop, Mouse, Cable, Adapter and Monitor (see the constants above).
    pub fn with_default_catalog() -> ProductStandIn {
        let products = ProductStandIn::start();
        products.set(LAPTOP, product("Laptop", "1299.99", 50));
        products.set(MOUSE, product("Mouse", "19.99", 1000));
        products.set(CABLE, product("Cable", "0.10", 1000));
        products.set(ADAPTER, product("Adapter", "0.20", 1000));
        products.set(MONITOR, product("Monitor", "249.50", 3));
        products
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, id: i64, behaviour: Behaviour) {
        self.catalog.lock().unwrap().insert(id, behaviour);
    }

    /// Serves `GET /api/products?page=N&per_page=M`: a plain array with `None`, else
    /// wrapped under that key ("products" or "data").
    pub fn serve_list(&self, wrapped: Option<&'static str>) {
        *self.switches.list.lock().unwrap() = Some(wrapped.unwrap_or(""));
    }

    /// List pages answered so far.
    pub fn list_pages(&self) -> u64 {
        self.switches.list_pages.load(Ordering::SeqCst)
    }

    /// Down: every request's connection is closed without an answer. Up again: as before.
    pub fn set_down(&self, down: bool) {
        self.switches.down.store(down, Ordering::SeqCst);
    }

    /// Requests for product ids so far (any id, including unknown ones).
    pub fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    pub fn calls_for(&self, id: i64) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|&&c| c == id)
            .count()
    }
}

impl Drop for ProductStandIn {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Connections poll `stopping` every 50 ms, a `Slow` answer every 10 ms.
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.join();
        }
    }
}

/// Answers requests on one connection until the client closes it or the stand-in stops.
fn serve_connection(
    mut stream: TcpStream,
    catalog: &Catalog,
    switches: &Switches,
    calls: &Mutex<Vec<i64>>,
    stopping: &AtomicBool,
) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split_whitespace();
        let (method, target) = (
            request_line.next().unwrap_or(""),
            request_line.next().unwrap_or(""),
        );
        let mut body_len = 0usize;
        let mut close = false;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => body_len = value.trim().parse().unwrap_or(0),
                    "connection" => close = value.to_ascii_lowercase().contains("close"),
                    _ => {}
                }
            }
        }
        // Skip a request body, if any: the stand-in only answers GETs.
        while buf.len() < head_end + body_len {
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) if !stopping.load(Ordering::SeqCst) => continue,
                Err(_) => return,
            }
        }
        buf.drain(..head_end + body_len);
        if switches.down.load(Ordering::SeqCst) {
            return;
        }
        if let Some(query) = target.strip_prefix("/api/products?") {
            let list = *switches.list.lock().unwrap();
            let (status, body) = match list {
                Some(wrapper) if method == "GET" => {
                    switches.list_pages.fetch_add(1, Ordering::SeqCst);
                    (200, render_list(catalog, query, wrapper, stopping))
                }
                _ => (404, r#"{"error":"Not found"}"#.to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
                reason(status),
                body.len(),
                if close { "Connection: close\r\n" } else { "" },
            );
            if stream.write_all(response.as_bytes()).is_err() || close {
                return;
            }
            continue;
        }

        let id = target
            .strip_prefix("/api/products/")
            .and_then(|rest| rest.split(['?', '/']).next())
            .and_then(|id| id.parse::<i64>().ok());
        let behaviour = match id {
            Some(id) if method == "GET" => {
                calls.lock().unwrap().push(id);
                catalog
                    .lock()
                    .unwrap()
                    .get(&id)
                    .cloned()
                    .unwrap_or(Behaviour::NotFound)
            }
            _ => Behaviour::NotFound,
        };
        let (status, body) = render(id.unwrap_or(0), &behaviour, stopping);
        let response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n{body}",
            reason(status),
            content_type(&behaviour),
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
        );
        if stream.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// One page of the catalog's `Product` entries, by id; the other behaviours are left out.
fn render_list(catalog: &Catalog, query: &str, wrapper: &str, stopping: &AtomicBool) -> String {
    let param = |name: &str, default: usize| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let (page, per_page) = (param("page", 1).max(1), param("per_page", 100).max(1));
    let catalog = catalog.lock().unwrap();
    let mut ids: Vec<i64> = catalog
        .iter()
        .filter(|(_, b)| matches!(b, Behaviour::Product { .. }))
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    let entries: Vec<String> = ids
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|id| render(*id, &catalog[id], stopping).1)
        .collect();
    let array = format!("[{}]", entries.join(","));
    match wrapper {
        "" => array,
        key => format!(
            r#"{{{}:{array},"page":{page}}}"#,
            serde_json::to_string(key).unwrap()
        ),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn render(id: i64, behaviour: &Behaviour, stopping: &AtomicBool) -> (u16, String) {
    match behaviour {
        Behaviour::Product { name, price, stock } => (
            200,
            format!(
                r#"{{"id":{id},"name":{},"price":{price},"stock":{stock},"description":"stand-in"}}"#,
                serde_json::to_string(name).unwrap()
            ),
        ),
        Behaviour::Wrapped(key, inner) => {
            let (status, body) = render(id, inner, stopping);
            (
                status,
                format!(r#"{{{}:{body}}}"#, serde_json::to_string(key).unwrap()),
            )
        }
        Behaviour::Status(status) => (*status, r#"{"error":"stand-in failure"}"#.to_string()),
        Behaviour::Slow(delay, inner) => {
            let until = Instant::now() + *delay;
            while Instant::now() < until && !stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            render(id, inner, stopping)
        }
        Behaviour::NotFound => (404, r#"{"error":"Product not found"}"#.to_string()),
        Behaviour::Answer { status, body, .. } => (*status, body.clone()),
    }
}

// ---------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------

/// `<tmp>/order-service-tests/<pid>-<counter>-<nanos>`, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir()
            .join("order-service-tests")
            .join(unique_suffix());
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file inside the directory; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        File::create(&path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// Operations tests (tests/api/operations.rs): signals and exit status of the service process.
impl TestApp {
    /// The running service process's id, if there is one.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` ("TERM", "INT", …) to the service process with `kill -<signal> <pid>`.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the service is not running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// Waits up to `timeout` for the service process to exit on its own. Returns its exit
    /// status (the process is then forgotten, so `restart()` starts a new one), or `None`
    /// if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Says that a test did not run, where `cargo test` shows it: straight to stderr, past
/// the harness's capture of a passing test's output.
pub fn loud_skip(message: &str) {
    use std::io::Write;
    let bar = "!".repeat(79);
    let _ = writeln!(std::io::stderr(), "\n{bar}\nSKIPPED: {message}\n{bar}");
}

/// The service binary with an empty environment but PATH, so the developer's settings
/// never leak into a test, run in `dir` with no standard input.
pub fn clean_command(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .current_dir(dir)
        .stdin(Stdio::null());
    command
}
