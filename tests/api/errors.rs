//! The edges of HTTP: health and readiness, unknown routes and methods, bodies that are too
//! big, not JSON or oddly framed, the gateway token, and "never a 500 for client input".

use serde_json::{json, Value};

use crate::support::*;

const JSON: (&str, &str) = ("Content-Type", "application/json");
const AS_ALICE: [(&str, &str); 2] = [
    ("X-User-Id", "alice"),
    ("X-User-Email", "alice@example.com"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut headers = AS_ALICE.to_vec();
    headers.extend_from_slice(extra);
    headers
}

/// A valid create body padded with an ignored field to exactly `len` bytes.
fn create_body_of_len(len: usize) -> Vec<u8> {
    let start = br#"{"items":[{"product_id":2,"quantity":1}],"pad":""#;
    let end = br#""}"#;
    let mut body = start.to_vec();
    body.resize(len - end.len(), b'x');
    body.extend_from_slice(end);
    assert_eq!(body.len(), len);
    body
}

#[test]
fn health_answers_200_status_ok() {
    let app = spawn_app();

    let response = app.health();

    response.assert_status(200);
    assert_eq!(response.json(), json!({"status": "ok"}));
}

#[test]
fn ready_answers_200_when_the_database_is_writable() {
    let app = spawn_app();

    let response = app.ready();

    response.assert_status(200);
    assert!(response.json().is_object(), "{response:?}");
}

#[test]
fn metrics_answer_prometheus_text() {
    let app = spawn_app();
    app.place_order_id(&ALICE, MOUSE, 1);

    let response = app.metrics();

    response.assert_status(200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{response:?}"
    );
    assert!(
        response
            .body
            .lines()
            .any(|l| !l.starts_with('#') && !l.trim().is_empty()),
        "{response:?}"
    );
}

#[test]
fn an_unknown_route_answers_404_json() {
    let app = spawn_app();
    for path in [
        "/nope",
        "/api",
        "/api/nope",
        "/api/orders/1/extra",
        "/api/orders/1/cancel/x",
        "/api/products/1",
    ] {
        let response = app.request("GET", path, &AS_ALICE, None);
        assert_eq!(response.status, 404, "GET {path}: {response:?}");
        response.assert_error(404, "not_found");
    }
}

#[test]
fn a_wrong_method_answers_405_with_allow() {
    let app = spawn_app();
    let cases: [(&str, &str, &[&str]); 7] = [
        ("DELETE", "/api/orders/1", &["GET"]),
        ("PUT", "/api/orders/1", &["GET"]),
        ("PUT", "/api/orders", &["GET", "POST"]),
        ("DELETE", "/api/orders", &["GET", "POST"]),
        ("POST", "/health", &["GET"]),
        ("GET", "/api/orders/1/cancel", &["PATCH"]),
        ("POST", "/api/orders/1/status", &["PATCH"]),
    ];
    let mut failures = Vec::new();
    for (method, path, allowed) in cases {
        let response = app.request(method, path, &AS_ALICE, None);
        let allow: Vec<String> = response
            .header("allow")
            .unwrap_or("")
            .split(',')
            .map(|m| m.trim().to_ascii_uppercase())
            .filter(|m| !m.is_empty())
            .collect();
        let code_ok = serde_json::from_str::<Value>(&response.body)
            .is_ok_and(|b| b["code"] == "method_not_allowed");
        let allow_ok = allowed.iter().all(|m| allow.iter().any(|a| a == m))
            && !allow.iter().any(|a| a == method);
        if response.status != 405 || !code_ok || !allow_ok {
            failures.push(format!("{method} {path}: expected 405 method_not_allowed, Allow {allowed:?}; got {response:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_body_over_64_kib_answers_413_and_writes_nothing() {
    let app = spawn_app();

    let response = app.request(
        "POST",
        "/api/orders",
        &with(&[JSON]),
        Some(&create_body_of_len(65_537)),
    );

    response.assert_error(413, "payload_too_large");
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn a_much_larger_body_answers_413() {
    let app = spawn_app();

    let response = app.request(
        "POST",
        "/api/orders",
        &with(&[JSON]),
        Some(&create_body_of_len(2 << 20)),
    );

    response.assert_error(413, "payload_too_large");
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn a_body_of_exactly_64_kib_is_accepted() {
    let app = spawn_app();

    let response = app.request(
        "POST",
        "/api/orders",
        &with(&[JSON]),
        Some(&create_body_of_len(65_536)),
    );

    response.assert_status(201);
}

#[test]
fn malformed_json_answers_400_invalid_json_and_writes_nothing() {
    let app = spawn_app();
    let bodies: [&[u8]; 7] = [
        b"{",
        b"{\"items\": [}",
        b"not json",
        b"",
        b"{\"items\":[{\"product_id\":1,\"quantity\":1}]} trailing",
        b"{\"items\":[{\"product_id\":1,\"quantity\":1,}]}",
        b"\xff\xfe{\"items\":[]}",
    ];
    for body in bodies {
        let response = app.request("POST", "/api/orders", &with(&[JSON]), Some(body));
        assert_eq!(
            response.status,
            400,
            "body {:?}: {response:?}",
            String::from_utf8_lossy(body)
        );
        response.assert_error(400, "invalid_json");
    }
    assert_eq!(app.count_orders(), 0);
    assert_eq!(app.count_outbox(), 0);
}

#[test]
fn deeply_nested_json_answers_400_not_a_crash() {
    let app = spawn_app();
    let depth = 20_000;
    let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));

    let response = app.request("POST", "/api/orders", &with(&[JSON]), Some(body.as_bytes()));

    assert_eq!(response.status, 400, "{response:?}");
    app.health().assert_status(200);
}

#[test]
fn a_text_plain_body_answers_415() {
    let app = spawn_app();
    let body = serde_json::to_vec(&items(&[(MOUSE, 1)])).unwrap();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let response = app.request(
            "POST",
            "/api/orders",
            &with(&[("Content-Type", content_type)]),
            Some(&body),
        );
        assert_eq!(
            response.status, 415,
            "Content-Type {content_type}: {response:?}"
        );
        response.assert_error(415, "unsupported_media_type");
    }
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn json_with_a_charset_parameter_is_accepted() {
    let app = spawn_app();
    let body = serde_json::to_vec(&items(&[(MOUSE, 1)])).unwrap();

    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let response = app.request(
            "POST",
            "/api/orders",
            &with(&[("Content-Type", content_type)]),
            Some(&body),
        );
        assert_eq!(
            response.status, 201,
            "Content-Type {content_type}: {response:?}"
        );
    }
}

#[test]
fn out_of_range_numbers_and_odd_ids_never_answer_500() {
    let app = spawn_app();
    let mut failures = Vec::new();
    for path in [
        "/api/orders/abc",
        "/api/orders/0",
        "/api/orders/-1",
        "/api/orders/99999999999999999999999",
        "/api/orders/1.5",
        "/api/orders/%00",
    ] {
        let response = app.request("GET", path, &AS_ALICE, None);
        if !matches!(response.status, 400 | 404) || response.json()["code"].as_str().is_none() {
            failures.push(format!(
                "GET {path}: expected 400 or 404 with a code, got {response:?}"
            ));
        }
    }
    for body in [
        r#"{"items":[{"product_id":1,"quantity":99999999999999999999999}]}"#,
        r#"{"items":[{"product_id":99999999999999999999999,"quantity":1}]}"#,
        r#"{"items":[{"product_id":1e400,"quantity":1}]}"#,
        r#"{"items":[{"product_id":1,"quantity":4294967297}]}"#,
    ] {
        let response = app.request("POST", "/api/orders", &with(&[JSON]), Some(body.as_bytes()));
        if response.status != 400 {
            failures.push(format!("POST {body}: expected 400, got {response:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn the_request_id_is_echoed() {
    let app = spawn_app();

    let ok = app.request(
        "GET",
        "/api/orders",
        &with(&[("X-Request-Id", "req-abc-123")]),
        None,
    );
    let error = app.request(
        "GET",
        "/api/orders/777",
        &with(&[("X-Request-Id", "req-def-456")]),
        None,
    );

    assert_eq!(ok.header("x-request-id"), Some("req-abc-123"), "{ok:?}");
    assert_eq!(
        error.header("x-request-id"),
        Some("req-def-456"),
        "{error:?}"
    );
}

#[test]
fn missing_user_id_answers_401_on_every_api_endpoint() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    let body = serde_json::to_vec(&items(&[(MOUSE, 1)])).unwrap();
    let cases: Vec<(&str, String, Option<&[u8]>)> = vec![
        ("GET", "/api/orders".into(), None),
        ("GET", format!("/api/orders/{id}"), None),
        ("POST", "/api/orders".into(), Some(&body)),
        ("PATCH", format!("/api/orders/{id}/cancel"), None),
    ];
    for (method, path, body) in cases {
        let response = app.request(
            method,
            &path,
            &[("X-User-Email", "alice@example.com"), JSON],
            body,
        );
        assert_eq!(response.status, 401, "{method} {path}: {response:?}");
        response.assert_error(401, "unauthorized");
    }
    // An admin role is no identity either.
    let response = app.request(
        "PATCH",
        &format!("/api/orders/{id}/cancel"),
        &[("X-User-Role", "admin")],
        None,
    );
    assert_eq!(response.status, 401, "{response:?}");
    assert_eq!(app.count_orders(), 1);
    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
}

#[test]
fn with_a_gateway_token_every_api_request_needs_it() {
    let app = TestApp::builder()
        .env("GATEWAY_TOKEN", "gw-token-1")
        .spawn();
    // The helpers send the token: the happy path works.
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    app.get_order(&ALICE, id).assert_status(200);
    let body = serde_json::to_vec(&items(&[(MOUSE, 1)])).unwrap();

    let mut failures = Vec::new();
    for token in [
        None,
        Some("wrong"),
        Some("gw-token-"),
        Some("gw-token-12"),
        Some(""),
    ] {
        let mut headers = with(&[JSON, ("X-User-Role", "admin")]);
        if let Some(token) = token {
            headers.push(("X-Gateway-Token", token));
        }
        for (method, path, body) in [
            ("GET", "/api/orders".to_string(), None),
            ("GET", format!("/api/orders/{id}"), None),
            ("POST", "/api/orders".to_string(), Some(body.as_slice())),
            ("PATCH", format!("/api/orders/{id}/cancel"), None),
            (
                "PATCH",
                format!("/api/orders/{id}/status"),
                Some(&br#"{"status":"confirmed"}"#[..]),
            ),
            // A method a path does not take, and a path that is no route, say nothing
            // of the routes either.
            ("DELETE", format!("/api/orders/{id}"), None),
            ("GET", "/api/anything".to_string(), None),
        ] {
            let response = app.request(method, &path, &headers, body);
            let ok = response.status == 401
                && serde_json::from_str::<Value>(&response.body)
                    .is_ok_and(|b| b["code"] == "unauthorized");
            if !ok {
                failures.push(format!("{method} {path} with token {token:?}: expected 401 unauthorized, got {response:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(app.count_orders(), 1);
    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
    // Health and readiness are not behind the gateway.
    app.health().assert_status(200);
    app.ready().assert_status(200);
}

#[test]
fn a_chunked_body_is_read() {
    let app = spawn_app();
    let body = serde_json::to_string(&items(&[(MOUSE, 2)])).unwrap();
    let (a, b) = body.split_at(body.len() / 2);
    let request = format!(
        "POST /api/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: alice\r\nX-User-Email: alice@example.com\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );

    let response = app.raw(request.as_bytes());

    response.assert_status(201);
    assert_eq!(response.json()["items"][0]["quantity"], 2);
}

#[test]
fn a_chunked_body_over_64_kib_answers_413() {
    let app = spawn_app();
    let body = create_body_of_len(70_000);
    let mut request = b"POST /api/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: alice\r\n\
        X-User-Email: alice@example.com\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for chunk in body.chunks(8192) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");

    let response = app.raw(&request);

    response.assert_error(413, "payload_too_large");
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn a_bad_content_length_answers_400() {
    let app = spawn_app();
    let request = b"POST /api/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: alice\r\n\
        X-User-Email: alice@example.com\r\nContent-Type: application/json\r\n\
        Content-Length: lots\r\nConnection: close\r\n\r\n{\"items\":[{\"product_id\":2,\"quantity\":1}]}";

    let response = app.raw(request);

    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(app.count_orders(), 0);
    app.health().assert_status(200);
}

#[test]
fn a_content_length_longer_than_the_body_does_not_create_an_order() {
    let app = spawn_app();
    let body = br#"{"items":[{"product_id":2,"quantity":1}]}"#;
    let mut request = format!(
        "POST /api/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: alice\r\nX-User-Email: alice@example.com\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len() + 10
    )
    .into_bytes();
    request.extend_from_slice(body);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", app.port())).unwrap();
    std::io::Write::write_all(&mut stream, &request).unwrap();
    // The client goes away before sending the rest.
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(stream);

    app.health().assert_status(200);
    assert_eq!(app.count_orders(), 0, "a truncated body is no order");
}

#[test]
fn a_patch_without_any_body_or_content_length_works() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    let request = format!(
        "PATCH /api/orders/{id}/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: alice\r\nConnection: close\r\n\r\n"
    );

    let response = app.raw(request.as_bytes());

    response.assert_status(200);
    assert_eq!(response.json()["status"], "cancelled");
}

#[test]
fn a_cancel_ignores_a_json_body() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, MOUSE, 1);

    let response = app.request(
        "PATCH",
        &format!("/api/orders/{id}/cancel"),
        &with(&[JSON]),
        Some(br#"{"reason":"changed my mind"}"#),
    );

    response.assert_status(200);
}

#[test]
fn keep_alive_connections_serve_several_requests() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    let one =
        format!("GET /api/orders/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: alice\r\n\r\n");
    let last = format!("GET /api/orders/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: alice\r\nConnection: close\r\n\r\n");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", app.port())).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut stream, format!("{one}{one}{last}").as_bytes()).unwrap();
    let mut all = String::new();
    std::io::Read::read_to_string(&mut stream, &mut all).unwrap();

    assert_eq!(all.matches("HTTP/1.1 200").count(), 3, "{all}");
}

#[test]
fn every_answer_leaves_a_kept_alive_connection_usable() {
    // After each answer, the next request on the same connection must be served, unless
    // the server said `Connection: close` and closed. A body the handler does not need
    // (or refuses) must still be read past, or the next request starts in its middle.
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    let padded = format!(r#"{{"reason":"{}"}}"#, "x".repeat(2000));
    let chunked = |head: &str, body: &str| {
        format!(
            "{head}\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            if body.is_empty() {
                "0\r\n\r\n".to_string()
            } else {
                format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
            }
        )
    };
    let sized = |head: &str, body: &str| {
        format!(
            "{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let big = String::from_utf8(create_body_of_len(70_000)).unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "cancel with an empty chunked body (ureq's PATCH without a body)",
            chunked(&format!("PATCH /api/orders/{id}/cancel HTTP/1.1\r\nX-User-Id: bob"), ""),
        ),
        (
            "cancel with a chunked JSON body",
            chunked(&format!("PATCH /api/orders/{id}/cancel HTTP/1.1\r\nX-User-Id: bob\r\nContent-Type: application/json"), r#"{"reason":"x"}"#),
        ),
        (
            "cancel with a 2 KB JSON body",
            sized(&format!("PATCH /api/orders/{id}/cancel HTTP/1.1\r\nX-User-Id: bob\r\nContent-Type: application/json"), &padded),
        ),
        (
            "create without X-User-Id, chunked body (401)",
            chunked("POST /api/orders HTTP/1.1\r\nContent-Type: application/json", r#"{"items":[{"product_id":2,"quantity":1}]}"#),
        ),
        (
            "create with text/plain, 2 KB body (415)",
            sized("POST /api/orders HTTP/1.1\r\nX-User-Id: alice\r\nX-User-Email: a@example.com\r\nContent-Type: text/plain", &padded),
        ),
        (
            "DELETE with a 2 KB body (405)",
            sized(&format!("DELETE /api/orders/{id} HTTP/1.1\r\nX-User-Id: alice"), &padded),
        ),
        (
            "unknown route with a chunked body (404)",
            chunked("POST /nope HTTP/1.1", "hello"),
        ),
        (
            "list with a chunked body",
            chunked("GET /api/orders HTTP/1.1\r\nX-User-Id: alice", "ignored"),
        ),
        (
            "create with a body over 64 KiB (413)",
            sized("POST /api/orders HTTP/1.1\r\nX-User-Id: alice\r\nX-User-Email: a@example.com\r\nContent-Type: application/json", &big),
        ),
    ];
    let mut failures = Vec::new();
    for (name, request) in cases {
        let mut connection = app.connect_raw();
        let Some(first) = connection.send(request.as_bytes()) else {
            failures.push(format!("{name}: no answer at all"));
            continue;
        };
        let closes = first
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let next = connection.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        match next {
            Some(r) if r.status == 200 => {}
            None if closes => {}
            other => failures.push(format!(
                "{name}: first answer HTTP {} (Connection: {:?}); the next request on the connection got {:?}",
                first.status,
                first.header("connection"),
                other
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
