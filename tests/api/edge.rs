//! The HTTP edge as an attacker meets it (vendor/tiny_http/PATCHES.md, 16 and 17): one
//! client, unauthenticated, on raw sockets, trying to smuggle a request, starve the
//! workers, exhaust memory or connections, forge log lines or slip in ambiguous input.

use crate::hardening::{open, read_response, read_until_closed, HEALTH};
use crate::support::*;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A request that, if it were ever parsed, would read alice's order as an admin.
const SMUGGLED: &str = "GET /api/orders/1 HTTP/1.1\r\nHost: x\r\nX-User-Id: mallory\r\n\
                        X-User-Role: admin\r\n\r\n";

/// Sends `bytes` on a new connection and reads everything until the server closes it.
fn send_and_read_all(app: &TestApp, bytes: &[u8]) -> (String, bool) {
    let mut stream = open(app);
    // The server may refuse and close before all of it is sent.
    let _ = stream.write_all(bytes);
    let (got, closed) = read_until_closed(&mut stream, Instant::now() + Duration::from_secs(10));
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

fn answers_in(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

fn health_time(app: &TestApp) -> Duration {
    let started = Instant::now();
    let mut stream = open(app);
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = read_response(&mut stream, Duration::from_secs(30));
    assert_eq!(answer.map(|a| a.0), Some(200), "no 200 from /health");
    started.elapsed()
}

fn rss_kib(app: &TestApp) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.pid().unwrap())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn alice_has_order_1(app: &TestApp) {
    let order = app.place_order(&ALICE, &[(MOUSE, 1)]);
    assert_eq!(order["id"], 1);
}

#[test]
fn a_request_in_the_tail_of_an_overlong_chunked_body_is_never_answered() {
    let app = spawn_app();
    alice_has_order_1(&app);
    let mut bytes =
        b"POST /nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let filler = vec![b'a'; 0x8000];
    for _ in 0..36 {
        bytes.extend_from_slice(b"8000\r\n");
        bytes.extend_from_slice(&filler);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes.extend_from_slice(SMUGGLED.as_bytes());

    let (text, closed) = send_and_read_all(&app, &bytes);

    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert_eq!(answers_in(&text), 1, "{text}");
    assert!(!text.contains("alice@example.com"), "{text}");
    assert!(closed, "the connection stayed open");
}

#[test]
fn a_request_inside_a_body_is_only_body() {
    let app = spawn_app();
    alice_has_order_1(&app);
    let body = SMUGGLED.as_bytes();
    let mut bytes = b"POST /nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
        Connection: close\r\n\r\n"
        .to_vec();
    bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(b"\r\n0\r\n\r\n");

    let (text, _) = send_and_read_all(&app, &bytes);

    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    assert_eq!(answers_in(&text), 1, "{text}");
}

#[test]
fn conflicting_or_unknown_framing_gets_one_400_and_a_closed_connection() {
    let app = spawn_app();
    alice_has_order_1(&app);
    let cases = [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Content-Length: 4\r\nContent-Length: 5",
        "Content-Length: 4\r\nContent-Length: 4",
        "Content-Length: 4, 4",
        "Content-Length: -4",
        "Transfer-Encoding : chunked",
    ];
    let mut failures = Vec::new();
    for framing in cases {
        let bytes =
            format!("POST /nope HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n0\r\n\r\n{SMUGGLED}");
        let (text, closed) = send_and_read_all(&app, bytes.as_bytes());
        let one_json_400 = text.starts_with("HTTP/1.1 400 ")
            && text.contains("\"code\":\"bad_request\"")
            && answers_in(&text) == 1;
        if !one_json_400 || !closed || text.contains("alice@") {
            failures.push(format!("{framing:?}: closed {closed}\n{text}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n---\n"));
}

#[test]
fn a_bare_line_feed_or_control_character_is_refused_and_forges_no_log_line() {
    let app = spawn_app();
    let cases: [&[u8]; 4] = [
        b"GET /health HTTP/1.1\nHost: x\n\n",
        b"GET /x\nFORGED-LINE HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\rFORGED-LINE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: \x1b[31mFORGED-LINE\r\n\r\n",
    ];
    for bytes in cases {
        let (text, closed) = send_and_read_all(&app, bytes);
        assert!(text.starts_with("HTTP/1.1 400 "), "{bytes:?}: {text}");
        assert!(closed, "{bytes:?}: the connection stayed open");
    }
    // Non-ASCII in a path reaches the log escaped.
    let (text, _) = send_and_read_all(
        &app,
        "GET /caf\u{e9}\u{85}x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".as_bytes(),
    );
    assert!(
        text.starts_with("HTTP/1.1 404 ") || text.starts_with("HTTP/1.1 400 "),
        "{text}"
    );
    let log = app.stderr();
    assert!(!log.contains("FORGED-LINE"), "{log}");
    assert!(!log.contains('\u{85}') && !log.contains('\u{1b}'), "{log}");
}

#[test]
fn health_answers_at_once_while_connections_stall_in_every_way() {
    let app = TestApp::builder().env("HTTP_THREADS", "2").spawn();
    let stalls: [&[u8]; 6] = [
        // Upgrade: the socket was handed to a worker as the body.
        b"POST /api/orders HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n",
        // A chunked body that stops after its first chunk.
        b"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
        // 100-continue, then no body.
        b"POST /api/orders HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 50\r\n\r\n",
        // Half a body.
        b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"items\":",
        // Half a head.
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow:",
        // Half a chunk-size line.
        b"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4",
    ];
    let mut held: Vec<TcpStream> = Vec::new();
    for bytes in stalls {
        for _ in 0..4 {
            let mut stream = open(&app);
            stream.write_all(bytes).unwrap();
            held.push(stream);
        }
    }
    std::thread::sleep(Duration::from_millis(300));

    let slowest = (0..5).map(|_| health_time(&app)).max().unwrap();

    // A worker held by a stalled client would keep /health waiting for the 10 s
    // request timeout; 3 s leaves room for a busy machine.
    assert!(
        slowest < Duration::from_secs(3),
        "/health took {slowest:?} behind 24 stalled connections"
    );
    drop(held);
}

#[test]
fn a_request_that_trickles_is_cut_off_by_one_deadline() {
    // A byte every 500 ms: each read is quick, so a per-read timeout never fires; the
    // whole request has 10 s.
    let app = spawn_app();
    let mut stream = open(&app);
    let started = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut answer = Vec::new();
    for byte in head.iter().cycle().take(60) {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        let (got, closed) =
            read_until_closed(&mut stream, Instant::now() + Duration::from_millis(500));
        answer.extend_from_slice(&got);
        if closed {
            break;
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408 "),
        "after {took:?}: {text:?}"
    );
    assert!(took < Duration::from_secs(13), "cut off after {took:?}");
}

#[test]
fn a_client_that_pipelines_and_never_reads_holds_only_its_own_connection() {
    let app = TestApp::builder().env("HTTP_THREADS", "2").spawn();
    let before = rss_kib(&app);
    let mut stream = TcpStream::connect(("127.0.0.1", app.port())).unwrap();
    stream.set_nonblocking(true).unwrap();
    let request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut burst = Vec::new();
    for _ in 0..100_000 {
        burst.extend_from_slice(request);
    }
    // Write for a while: socket buffers take megabytes, but the server reads one request
    // at a time, and only once the previous answer is written.
    let until = Instant::now() + Duration::from_secs(3);
    let mut sent = 0;
    while sent < burst.len() && Instant::now() < until {
        match stream.write(&burst[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => break,
        }
    }

    let slowest = (0..5).map(|_| health_time(&app)).max().unwrap();
    let grown = rss_kib(&app).saturating_sub(before);

    assert!(
        slowest < Duration::from_secs(3),
        "/health took {slowest:?} beside the pipelining client"
    );
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB after {sent} bytes"
    );
    drop(stream);
}

#[test]
fn an_endless_chunk_size_line_is_cut_off_and_memory_stays_flat() {
    let app = spawn_app();
    let before = rss_kib(&app);
    let mut stream = open(&app);
    stream
        .write_all(b"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let digits = vec![b'f'; 64 * 1024];
    let until = Instant::now() + Duration::from_secs(3);
    let mut sent = 0usize;
    while Instant::now() < until {
        match stream.write(&digits) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let (got, closed) = read_until_closed(&mut stream, Instant::now() + Duration::from_secs(5));
    let grown = rss_kib(&app).saturating_sub(before);

    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 413 ") || text.is_empty(),
        "{text}"
    );
    assert!(closed, "still open after {sent} bytes of chunk size");
    assert!(
        grown < 8 * 1024,
        "RSS grew by {grown} KiB after {sent} bytes"
    );
    app.health().assert_status(200);
}

/// A kept-alive connection that has been answered, so it surely holds one of the places.
/// The start-up's health check may still hold one for a moment after it closed (until its
/// connection thread sees the close): a connection refused meanwhile is opened again.
fn hold_a_place(app: &TestApp) -> TcpStream {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = open(app);
        let _ = stream.write_all(HEALTH);
        match read_response(&mut stream, Duration::from_secs(5)) {
            Some((200, _, _)) => return stream,
            // Refused: with its 503, or closed before it was read.
            Some((503, _, _)) | None if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("no place: {other:?}"),
        }
    }
}

#[test]
fn past_max_connections_a_new_client_gets_a_fast_503_and_later_a_place() {
    let app = TestApp::builder().env("MAX_CONNECTIONS", "3").spawn();
    let held: Vec<TcpStream> = (0..3).map(|_| hold_a_place(&app)).collect();

    let started = Instant::now();
    let mut extra = open(&app);
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let (got, closed) = read_until_closed(&mut extra, Instant::now() + Duration::from_secs(5));
    let took = started.elapsed();

    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("\"code\":\"too_many_connections\""), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    assert!(
        closed && took < Duration::from_secs(1),
        "closed {closed} after {took:?}"
    );

    drop(held);
    assert!(
        wait_until(Duration::from_secs(5), || app
            .raw(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .status
            == 200),
        "no place again once the held connections closed"
    );
    let refused = metric(
        &app.metrics().body,
        r#"order_service_http_requests_total{route="edge",status="503"}"#,
    );
    assert!(refused >= Some(1.0), "the 503s are counted: {refused:?}");
}

/// What the edge refuses before any route sees it shows in /metrics, under the route
/// `edge`: an operator sees a flood of malformed requests.
#[test]
fn a_request_the_edge_refuses_is_counted_in_metrics() {
    let app = spawn_app();
    let (answer, _) = send_and_read_all(&app, b"GET /health HTTP/1.1\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(
        metric(
            &app.metrics().body,
            r#"order_service_http_requests_total{route="edge",status="400"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn a_duplicated_identity_auth_or_content_type_header_is_refused() {
    let app = spawn_app();
    alice_has_order_1(&app);
    let mut failures = Vec::new();
    for (name, value) in [
        ("X-User-Id", "mallory"),
        ("X-User-Email", "m@example.com"),
        ("X-User-Role", "admin"),
        ("X-Gateway-Token", "t"),
        ("Authorization", "Bearer t"),
        ("Idempotency-Key", "k2"),
        ("Content-Type", "text/plain"),
    ] {
        let request = format!(
            "GET /api/orders/1 HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\n\
             X-User-Email: alice@example.com\r\nX-User-Role: user\r\nX-Gateway-Token: t\r\n\
             Authorization: Bearer x\r\nIdempotency-Key: k1\r\n\
             Content-Type: application/json\r\n{name}: {value}\r\n\
             Connection: close\r\n\r\n"
        );
        let response = app.raw(request.as_bytes());
        let ok = response.status == 400
            && response.json()["code"] == "validation_failed"
            && response.json()["details"]["field"] == name;
        if !ok {
            failures.push(format!("{name}: {response:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_json_object_with_a_key_twice_is_refused() {
    let app = spawn_app();
    let body = r#"{"items":[{"product_id":1,"product_id":2,"quantity":1}]}"#;
    let request = format!(
        "POST /api/orders HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\n\
         X-User-Email: alice@example.com\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );

    let response = app.raw(request.as_bytes());

    let error = response.assert_error(400, "invalid_json");
    assert!(
        error["error"].as_str().unwrap().contains("product_id"),
        "{error}"
    );
    assert_eq!(app.count_orders(), 0);
}

#[test]
fn a_page_of_ten_orders_answers_in_milliseconds_on_a_kept_alive_connection() {
    // Answers over ~1 KB used to leave in several small writes without TCP_NODELAY:
    // Nagle then held the last one for the client's delayed ACK, 40 ms each time.
    let app = spawn_app();
    for _ in 0..10 {
        app.place_order(&ALICE, &[(MOUSE, 1), (CABLE, 2)]);
    }
    let mut connection = app.connect_raw();
    let request = b"GET /api/orders?per_page=10 HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\n\r\n";
    // The first answers on a new connection are acknowledged at once (quick ACK), stall
    // or not: they are not timed.
    for _ in 0..3 {
        connection.send(request).expect("no answer");
    }
    let mut times = Vec::new();
    for _ in 0..21 {
        let started = Instant::now();
        let response = connection.send(request).expect("no answer");
        times.push(started.elapsed());
        assert_eq!(response.json()["orders"].as_array().unwrap().len(), 10);
    }
    // Nagle's stall held every answer after those; a busy machine delays only some. The
    // fastest quarter shows the one without the other.
    times.sort();
    let quarter = times[times.len() / 4];
    assert!(
        quarter < Duration::from_millis(25),
        "a quarter took {quarter:?} or less: {times:?}"
    );
}

#[test]
fn binding_beyond_loopback_without_the_gateway_token_is_refused() {
    let dir = temp_dir();
    let mut child = clean_command(dir.path())
        .args(["serve"])
        .env("HOST", "0.0.0.0")
        .env("PORT", "0")
        .env("DATABASE_URL", dir.path().join("o.db").to_str().unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(exited, "it started serving on 0.0.0.0: {stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("HOST") && lines[0].contains("GATEWAY_TOKEN"),
        "{stderr}"
    );
    assert!(lines[0].contains("ALLOW_UNTRUSTED_NETWORK"), "{stderr}");
}

#[test]
fn a_request_target_without_its_leading_slash_is_refused_and_never_passes_the_gateway() {
    let app = TestApp::builder()
        .env("GATEWAY_TOKEN", "gw-token-1")
        .spawn();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    let body = r#"{"items":[{"product_id":2,"quantity":1}]}"#;
    let status = r#"{"status":"confirmed"}"#;
    let mut served = Vec::new();
    for request in [
        "GET x/api/orders HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\nConnection: close\r\n\r\n"
            .to_string(),
        format!(
            "GET x/api/orders/{id} HTTP/1.1\r\nHost: x\r\nX-User-Id: mallory\r\n\
             X-User-Role: admin\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "POST x/api/orders HTTP/1.1\r\nHost: x\r\nX-User-Id: mallory\r\n\
             X-User-Email: m@example.com\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        format!(
            "PATCH http:/api/orders/{id}/status HTTP/1.1\r\nHost: x\r\nX-User-Id: mallory\r\n\
             X-User-Role: admin\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{status}",
            status.len()
        ),
    ] {
        let response = app.raw(request.as_bytes());
        if response.status != 400 {
            let line = request.lines().next().unwrap().to_string();
            served.push(format!("{line}: {response:?}"));
        }
    }
    assert!(served.is_empty(), "not refused:\n{}", served.join("\n"));
    assert_eq!(app.count_orders(), 1);
    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
}

#[test]
fn an_absolute_form_request_target_is_served_like_its_path() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    let request = format!(
        "GET http://127.0.0.1:{}/api/orders/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         X-User-Id: alice\r\nConnection: close\r\n\r\n",
        app.port()
    );

    let response = app.raw(request.as_bytes());

    response.assert_status(200);
    assert_eq!(response.json()["id"], id);
}

#[test]
fn a_request_with_two_host_lines_or_none_on_http_1_1_is_refused() {
    let app = spawn_app();
    let mut served = Vec::new();
    for request in [
        &b"GET /health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"
            [..],
        &b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
    ] {
        let (text, closed) = send_and_read_all(&app, request);
        if !text.starts_with("HTTP/1.1 400 ") || !closed {
            let request = String::from_utf8_lossy(request);
            served.push(format!("{request:?}: closed {closed}\n{text}"));
        }
    }
    assert!(served.is_empty(), "\n{}", served.join("\n---\n"));
}

#[test]
fn a_bearer_admin_token_is_taken_whatever_the_case_of_its_scheme() {
    let app = TestApp::builder()
        .env("ADMIN_TOKEN", "admin-token-1")
        .spawn();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    let status = r#"{"status":"confirmed"}"#;
    let request = format!(
        "PATCH /api/orders/{id}/status HTTP/1.1\r\nHost: x\r\nX-User-Id: ops\r\n\
         Authorization: bearer admin-token-1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{status}",
        status.len()
    );

    let response = app.raw(request.as_bytes());

    response.assert_status(200);
    assert_eq!(response.json()["status"], "confirmed");
}

#[test]
fn every_api_request_without_a_user_id_is_answered_401_before_its_route() {
    let app = spawn_app();
    for (method, path) in [
        ("GET", "/api/nope"),
        ("DELETE", "/api/orders/1"),
        ("GET", "/api"),
    ] {
        app.request(method, path, &[], None)
            .assert_error(401, "unauthorized");
    }
    // Outside /api/, none is asked for.
    app.request("GET", "/nope", &[], None)
        .assert_error(404, "not_found");
    app.health().assert_status(200);
}

/// Method names are case-sensitive (RFC 9110, 9.1): `pOsT` is no method of the API, so a
/// rule a gateway keys on `POST` or `PATCH` is not got round by writing it otherwise.
#[test]
fn a_method_in_another_case_is_not_taken_for_the_method() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    let body = r#"{"items":[{"product_id":2,"quantity":1}]}"#;
    let status = r#"{"status":"confirmed"}"#;
    for request in [
        format!(
            "pOsT /api/orders HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\n\
             X-User-Email: alice@example.com\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        format!(
            "patch /api/orders/{id}/status HTTP/1.1\r\nHost: x\r\nX-User-Id: admin\r\n\
             X-User-Role: admin\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{status}",
            status.len()
        ),
        format!("get /api/orders/{id} HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\nConnection: close\r\n\r\n"),
    ] {
        let response = app.raw(request.as_bytes());
        let line = request.lines().next().unwrap().to_string();
        assert_eq!(response.status, 405, "{line}: {response:?}");
    }
    assert_eq!(app.count_orders(), 1);
    assert_eq!(app.get_order(&ALICE, id).json()["status"], "pending");
}

/// HEAD is GET without the body (RFC 9110, 9.3.2), as a load balancer's check may send it.
#[test]
fn head_is_answered_as_get_without_its_body() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    for target in [
        "/health".to_string(),
        format!("/api/orders/{id}"),
        "/api/orders".into(),
    ] {
        let (answer, _) = send_and_read_all(
            &app,
            format!("HEAD {target} HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(
            answer.starts_with("HTTP/1.1 200 "),
            "HEAD {target}: {answer}"
        );
        let (head, rest) = answer.split_once("\r\n\r\n").expect("a whole head");
        assert!(rest.is_empty(), "HEAD {target} sent a body: {rest:?}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "HEAD {target}: {head}"
        );
    }
}
