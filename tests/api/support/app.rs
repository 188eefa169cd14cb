//! A fresh `order-service` process per test: its own database (`db.rs`), its own product
//! stand-in, a free port, and one method per endpoint.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use super::db::{Backend, TestDatabase};
use super::fixtures::{items, User, ADMIN_USER_ID};
use super::http::{agent, RawConnection, TestResponse};
use super::process::{clean_command, free_port, wait_healthy, ChildGuard};
use super::stand_in::ProductStandIn;
use super::{temp_dir, unique_suffix, TempDir};

/// Starts a service with the default settings and the default catalog, on the database
/// `TEST_BACKEND` names (SQLite unless it says `postgres`).
pub fn spawn_app() -> TestApp {
    TestApp::builder().spawn()
}

pub struct AppBuilder {
    env: Vec<(String, String)>,
    products: Option<ProductStandIn>,
    sqlite_only: bool,
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

    /// For a test about the SQLite file itself (backups, file modes, WAL): it runs on
    /// SQLite whatever `TEST_BACKEND` says.
    pub fn sqlite_only(mut self) -> Self {
        self.sqlite_only = true;
        self
    }

    pub fn spawn(self) -> TestApp {
        let dir = temp_dir();
        let products = self
            .products
            .unwrap_or_else(ProductStandIn::with_default_catalog);
        let backend = if self.sqlite_only {
            Backend::Sqlite
        } else {
            Backend::from_env()
        };
        let database = TestDatabase::create(backend, dir.path());
        let mut env = BTreeMap::new();
        env.insert("HOST".to_string(), "127.0.0.1".to_string());
        env.insert("DATABASE_URL".to_string(), database.url());
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
            port: 0,
            agent: new_agent(),
            process: None,
            env,
            database,
            dir,
        };
        app.start();
        app
    }
}

pub struct TestApp {
    pub products: ProductStandIn,
    port: u16,
    agent: ureq::Agent,
    process: Option<ChildGuard>,
    env: BTreeMap<String, String>,
    // After the process (killed first, in drop), before the folder it may live in.
    database: TestDatabase,
    // Last, so the directory goes only after the process is gone.
    dir: TempDir,
}

impl TestApp {
    pub fn builder() -> AppBuilder {
        AppBuilder {
            env: Vec::new(),
            products: None,
            sqlite_only: false,
        }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// Everything the service wrote to stderr, over all its starts.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, as in a power cut.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
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

    /// The running service process's id, if there is one.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildGuard::pid)
    }

    /// Sends `signal` ("TERM", "INT", …) to the service process with `kill -<signal> <pid>`.
    pub fn signal(&self, signal: &str) {
        self.process
            .as_ref()
            .expect("the service is not running")
            .signal(signal);
    }

    /// Waits up to `timeout` for the service process to exit on its own. Returns its exit
    /// status (the process is then forgotten, so `restart()` starts a new one), or `None`
    /// if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.process.as_mut()?.wait_exit(timeout)?;
        self.process = None;
        Some(status)
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
            let process = self.process.insert(ChildGuard::spawn(
                clean_command(self.dir.path())
                    .envs(&self.env)
                    .env("PORT", self.port.to_string())
                    .stdout(Stdio::from(stdout))
                    .stderr(Stdio::from(stderr)),
            ));
            match wait_healthy(process, self.port) {
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
            "order-service did not become healthy ({:?}, DATABASE_URL={}): {last_failure}\n--- stderr ---\n{}",
            self.backend(),
            self.database.url(),
            self.stderr()
        );
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
        RawConnection::open(self.port)
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

fn new_agent() -> ureq::Agent {
    // A hung service fails the test instead of hanging the suite.
    agent(Duration::from_secs(30))
}
