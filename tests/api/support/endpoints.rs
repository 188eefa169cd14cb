//! One method per endpoint, the identity headers the gateway adds, and shortcuts for
//! arranging a test (an order placed, an order brought to a status).

use serde_json::{json, Value};

use super::app::TestApp;
use super::fixtures::{items, User, ADMIN_USER_ID};
use super::http::{RawConnection, TestResponse};

impl TestApp {
    /// A request exactly as given: no identity, gateway or content-type headers added.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> TestResponse {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n--- stderr ---\n{}", self.stderr()))
    }

    /// [`TestApp::request`], with a transport error (the service killed mid-request, no
    /// answer in time) as its text instead of a panic.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<TestResponse, String> {
        let url = format!("{}{}", self.address(), path);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let result = match body {
            Some(bytes) => self
                .agent()
                .run(builder.body(bytes.to_vec()).expect("build request")),
            // ureq frames a body-less POST/PUT/PATCH as an empty chunked body; send
            // `Content-Length: 0` instead, as most clients do. The chunked form is tested on
            // its own (errors::every_answer_leaves_a_kept_alive_connection_usable).
            None if matches!(method, "POST" | "PUT" | "PATCH") => self
                .agent()
                .run(builder.body(Vec::new()).expect("build request")),
            None => self.agent().run(builder.body(()).expect("build request")),
        };
        let response = result.map_err(|e| format!("transport error {e}"))?;
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
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(TestResponse {
            status,
            headers,
            body,
        })
    }

    /// Raw bytes on a fresh connection, for requests ureq will not make.
    pub fn raw(&self, request: &[u8]) -> TestResponse {
        self.connect_raw()
            .send(request)
            .unwrap_or_else(|| panic!("raw request: the connection closed without an answer"))
    }

    /// A kept-alive connection for several raw requests in turn.
    pub fn connect_raw(&self) -> RawConnection {
        RawConnection::open(self.port())
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
        match self.setting("GATEWAY_TOKEN") {
            Some(token) => vec![("X-Gateway-Token".into(), token.to_string())],
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

    /// [`TestApp::create_order`] that tolerates the service dying under it.
    pub fn try_create_order(&self, user: &User, body: &Value) -> Result<TestResponse, String> {
        let headers = self.user_headers(user);
        let mut all: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.push(("Content-Type", "application/json"));
        self.try_request(
            "POST",
            "/api/orders",
            &all,
            Some(body.to_string().as_bytes()),
        )
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
