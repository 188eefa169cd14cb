//! Operations: graceful shutdown on SIGTERM/SIGINT/SIGHUP, metrics, health and readiness, the
//! OpenAPI description, the command line, backups, request logs, systemd readiness
//! notification and the systemd unit.

use crate::support::*;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Small tools
// ---------------------------------------------------------------------------------------

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = temp_dir();
    let probe = write_file(&dir, "whoami", "");
    std::fs::metadata(probe).unwrap().uid() == 0
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// Lines of the service's stderr containing every one of `needles`.
fn log_lines_with(app: &TestApp, needles: &[&str]) -> Vec<String> {
    app.stderr()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1, 2: graceful shutdown
// ---------------------------------------------------------------------------------------

// The fields are read through Debug, in the failure message.
#[allow(dead_code)]
#[derive(Debug)]
enum Outcome {
    /// 201 with the order.
    Created(Value),
    /// Any other HTTP status: never acceptable here.
    Status(u16, String),
    /// Refused, reset or closed at the transport level.
    Transport(String),
    /// Anything else ureq reports (timeouts, protocol errors): not acceptable either.
    Other(String),
}

fn create_once(agent: &ureq::Agent, address: &str, user: &User) -> Outcome {
    let result = agent
        .post(&format!("{address}/api/orders"))
        .header("X-User-Id", user.id)
        .header("X-User-Email", user.email)
        .header("Content-Type", "application/json")
        .send(items(&[(MOUSE, 1), (CABLE, 2)]).to_string());
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.into_body().read_to_string() {
                Ok(body) if status == 201 => match serde_json::from_str(&body) {
                    Ok(order) => Outcome::Created(order),
                    Err(e) => {
                        Outcome::Other(format!("201 with a body that is not JSON ({e}): {body}"))
                    }
                },
                Ok(body) => Outcome::Status(status, body),
                // The status line arrived but the body did not: the connection broke.
                Err(ureq::Error::Io(e)) => Outcome::Transport(format!("{status}, body cut: {e}")),
                Err(e) => Outcome::Other(format!("HTTP {status}, reading the body: {e}")),
            }
        }
        Err(ureq::Error::Io(e)) => Outcome::Transport(format!("{:?}: {e}", e.kind())),
        Err(ureq::Error::ConnectionFailed) => Outcome::Transport("connection failed".into()),
        Err(e) => Outcome::Other(e.to_string()),
    }
}

/// Streams creates from several threads, stops the service with `signal` mid-stream, and
/// checks the exit and every acknowledged order.
fn stop_mid_stream(signal: &str) {
    // The in-process product stand-in can stall for a moment when the machine is loaded
    // (every test runs at once); its slowness is not what this test is about, so a product
    // call gets more time than the default 2 s before it becomes a 503.
    let mut app = TestApp::builder()
        .env("PRODUCT_READ_TIMEOUT_MS", "5000")
        .env("PRODUCT_TIMEOUT_MS", "5000")
        .spawn();
    let address = app.address();
    let users = [ALICE, BOB, CAROL];
    let stop = Arc::new(AtomicBool::new(false));
    // (user, outcome, sent at, answered at)
    type Record = (User, Outcome, Instant, Instant);
    let outcomes: Arc<Mutex<Vec<Record>>> = Arc::default();
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let clients: Vec<_> = (0..6)
        .map(|n| {
            let (stop, outcomes, created, address) = (
                stop.clone(),
                outcomes.clone(),
                created.clone(),
                address.clone(),
            );
            let user = users[n % users.len()];
            std::thread::spawn(move || {
                let agent = agent(Duration::from_secs(20));
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let outcome = create_once(&agent, &address, &user);
                    let transport = matches!(outcome, Outcome::Transport(_));
                    if matches!(outcome, Outcome::Created(_)) {
                        created.fetch_add(1, Ordering::SeqCst);
                    }
                    outcomes
                        .lock()
                        .unwrap()
                        .push((user, outcome, sent, Instant::now()));
                    if transport {
                        // The port is closing or closed: do not spin.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();

    // Let the stream get going, then signal while it runs.
    let started = wait_until(Duration::from_secs(15), || {
        created.load(Ordering::SeqCst) >= 30
    });
    let before_signal = created.load(Ordering::SeqCst);
    app.signal(signal);
    let signalled = Instant::now();
    let exit = app.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        started,
        "the stream never reached 30 creates before the signal (got {before_signal})"
    );
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "SIG{signal}: the process did not exit within 15 s\n--- stderr ---\n{}",
            app.stderr()
        )
    });
    assert!(
        exit.success(),
        "SIG{signal}: exit status {exit} after {took:?} (expected 0)\n--- stderr ---\n{}",
        app.stderr()
    );

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let mut acknowledged: Vec<(User, Value)> = Vec::new();
    let mut transport: BTreeMap<String, usize> = BTreeMap::new();
    let mut unacceptable = Vec::new();
    // Milliseconds relative to the signal (negative: before it).
    let ms = |t: Instant| {
        if t >= signalled {
            (t - signalled).as_millis() as i64
        } else {
            -((signalled - t).as_millis() as i64)
        }
    };
    for (user, outcome, sent, answered) in outcomes {
        match outcome {
            Outcome::Created(order) => acknowledged.push((user, order)),
            Outcome::Transport(why) => *transport.entry(why).or_default() += 1,
            other => unacceptable.push(format!(
                "{other:?} (sent at {} ms, answered at {} ms from the signal)",
                ms(sent),
                ms(answered)
            )),
        }
    }
    eprintln!(
        "SIG{signal}: exit {exit} after {took:?}; {} created, transport failures {transport:?}",
        acknowledged.len()
    );
    assert!(
        unacceptable.is_empty(),
        "every request must get 201 or fail at the transport level; these did not: {unacceptable:#?}\n--- stderr ---\n{}",
        app.stderr()
    );

    // Every acknowledged order survives, with its event.
    let ids: BTreeSet<i64> = acknowledged
        .iter()
        .map(|(_, o)| o["id"].as_i64().expect("order id"))
        .collect();
    assert_eq!(ids.len(), acknowledged.len(), "two 201s with the same id");
    app.restart();
    let mut events: HashMap<i64, Vec<String>> = HashMap::new();
    for row in app.outbox_rows() {
        events.entry(row.order_id).or_default().push(row.event_type);
    }
    for (user, order) in &acknowledged {
        let id = order["id"].as_i64().unwrap();
        let now = app.get_order(user, id);
        assert_eq!(
            now.status, 200,
            "order {id} was acknowledged with 201 but is gone after SIG{signal}: {now:?}"
        );
        assert_eq!(
            &now.json(),
            order,
            "order {id} differs from what the 201 said"
        );
        assert!(
            events
                .get(&id)
                .is_some_and(|e| e.iter().any(|t| t == "order_created")),
            "order {id} has no order_created outbox row: {:?}",
            events.get(&id)
        );
    }
}

#[test]
fn sigterm_during_a_stream_of_creates_loses_no_acknowledged_order() {
    stop_mid_stream("TERM");
}

/// Unset, `HTTP_THREADS` is 8, or two per core (2 to 8) when PostgreSQL runs on this
/// machine, as the tests' server does; the start-up line says which.
#[test]
fn the_start_up_line_names_the_workers_the_database_leaves_room_for() {
    let app = TestApp::builder().env("RUST_LOG", "info").spawn();
    let cores = std::thread::available_parallelism().unwrap().get();
    let workers = match app.backend() {
        Backend::Sqlite => 8,
        Backend::Postgres => (2 * cores).clamp(2, 8),
    };
    app.wait_for_log(
        &format!(", {workers} HTTP workers)"),
        Duration::from_secs(5),
        "the start-up line does not name the workers",
    );
}

#[test]
fn sigint_also_stops_cleanly() {
    let mut app = spawn_app();
    app.place_order_id(&ALICE, MOUSE, 1);
    app.signal("INT");
    exits_cleanly(&mut app, "SIGINT");
}

/// A hang-up (the terminal the service ran in closed) is a graceful stop, not the
/// default handler's death: the order placed before it is answered and kept.
#[test]
fn sighup_stops_cleanly_too() {
    let mut app = spawn_app();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    app.signal("HUP");
    exits_cleanly(&mut app, "SIGHUP");
    app.restart();
    app.get_order(&ALICE, id).assert_status(200);
}

/// The service exits 0 within 15 s: a graceful stop after `what`.
fn exits_cleanly(app: &mut TestApp, what: &str) {
    let exit = app
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{what}: no exit within 15 s\n{}", app.stderr()));
    assert!(
        exit.success(),
        "{what}: exit status {exit} (expected 0)\n--- stderr ---\n{}",
        app.stderr()
    );
}

// ---------------------------------------------------------------------------------------
// 3: metrics
// ---------------------------------------------------------------------------------------

/// The seconds the service's metrics give its answers to `/health`, all told.
fn health_seconds(app: &TestApp) -> f64 {
    metric(
        &app.metrics().body,
        "order_service_http_request_duration_seconds_sum{route=\"/health\"}",
    )
    .unwrap_or(0.0)
}

#[test]
fn a_request_that_waits_for_a_worker_is_timed_from_when_it_was_read() {
    // One worker, held by a cancel whose write waits on a lock the test holds on the file.
    let app = TestApp::builder()
        .sqlite_only()
        .env("HTTP_THREADS", "1")
        .spawn();
    let id = app.place_order_id(&ALICE, MOUSE, 1);
    let before = health_seconds(&app);
    let file = rusqlite::Connection::open(app.db_path()).unwrap();
    file.execute_batch("BEGIN IMMEDIATE").unwrap();
    let waited = std::thread::scope(|s| {
        let cancel = s.spawn(|| app.cancel(&ALICE, id));
        std::thread::sleep(Duration::from_millis(300));
        let health = s.spawn(|| {
            let asked = Instant::now();
            app.health().assert_status(200);
            asked.elapsed()
        });
        std::thread::sleep(Duration::from_millis(700));
        file.execute_batch("ROLLBACK").unwrap();
        cancel.join().unwrap().assert_status(200);
        health.join().unwrap()
    });
    assert!(
        waited >= Duration::from_millis(600),
        "/health waited behind the cancel: {waited:?}"
    );
    // Counted just after its answer is written: give it a moment.
    let mut timed = 0.0;
    wait_until(Duration::from_secs(5), || {
        timed = health_seconds(&app) - before;
        timed > 0.0
    });
    assert!(
        timed >= waited.as_secs_f64() * 0.8,
        "timed {timed:.3} s of the {:.3} s its client waited",
        waited.as_secs_f64()
    );
}

#[test]
fn metrics_are_prometheus_text() {
    let app = spawn_app();
    app.place_order_id(&ALICE, MOUSE, 1);
    app.get_order(&ALICE, 999_999).assert_status(404);
    app.create_order(&ALICE, &items(&[(MOUSE, 0)]))
        .assert_status(400);

    // A request is counted just after its answer is written: give the last one a moment.
    let mut response = app.metrics();
    wait_until(Duration::from_secs(5), || {
        response = app.metrics();
        [
            "route=\"/api/orders\",status=\"201\"",
            "route=\"/api/orders/:id\",status=\"404\"",
            "route=\"/api/orders\",status=\"400\"",
        ]
        .iter()
        .all(|needle| response.body.contains(needle))
    });
    response.assert_status(200);
    let content_type = response.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "Content-Type {content_type:?}"
    );
    let metrics = Exposition::parse(&response.body);

    // Requests by route and status.
    let (requests, samples) = metrics.family_containing("http_requests");
    assert_eq!(metrics.types[requests], "counter");
    let count_of = |route: &str, status: &str| {
        samples
            .iter()
            .find(|s| {
                s.labels.get("route").map(String::as_str) == Some(route)
                    && s.labels.get("status").map(String::as_str) == Some(status)
            })
            .map(|s| s.value)
    };
    assert!(
        count_of("/api/orders", "201").is_some_and(|n| n >= 1.0),
        "no {requests}{{route=\"/api/orders\",status=\"201\"}} ≥ 1 in:\n{}",
        response.body
    );
    assert!(
        count_of("/api/orders/:id", "404").is_some_and(|n| n >= 1.0),
        "no {requests}{{route=\"/api/orders/:id\",status=\"404\"}} in:\n{}",
        response.body
    );
    assert!(
        count_of("/api/orders", "400").is_some_and(|n| n >= 1.0),
        "no {requests}{{route=\"/api/orders\",status=\"400\"}} in:\n{}",
        response.body
    );
    for s in &samples {
        assert!(
            !s.labels["route"].chars().any(|c| c.is_ascii_digit())
                || s.labels["route"] == "unmatched",
            "route label must be the pattern, not the raw path: {s:?}"
        );
    }

    // Histograms: cumulative buckets ending in +Inf = _count, with a _sum.
    let histograms: Vec<&String> = metrics
        .types
        .iter()
        .filter(|(_, k)| *k == "histogram")
        .map(|(n, _)| n)
        .collect();
    assert!(
        !histograms.is_empty(),
        "no latency histogram:\n{}",
        response.body
    );
    for name in histograms {
        let bucket_name = format!("{name}_bucket");
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in metrics.with_name(&bucket_name) {
            let mut key = s.labels.clone();
            let le = key
                .remove("le")
                .unwrap_or_else(|| panic!("bucket without le: {s:?}"));
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or_else(|_| panic!("bad le in {s:?}"))
            };
            series.entry(key).or_default().push((bound, s.value));
        }
        assert!(!series.is_empty(), "{name} has no buckets");
        for (labels, buckets) in &series {
            for pair in buckets.windows(2) {
                assert!(
                    pair[0].0 < pair[1].0,
                    "{name} {labels:?}: le not increasing: {buckets:?}"
                );
                assert!(
                    pair[0].1 <= pair[1].1,
                    "{name} {labels:?}: buckets not cumulative: {buckets:?}"
                );
            }
            let last = buckets.last().unwrap();
            assert!(
                last.0.is_infinite(),
                "{name} {labels:?}: the last bucket is not +Inf: {buckets:?}"
            );
            let count_name = format!("{name}_count");
            let count = metrics
                .with_name(&count_name)
                .find(|s| &s.labels == labels)
                .unwrap_or_else(|| panic!("no {count_name} for {labels:?}"));
            assert_eq!(
                last.1, count.value,
                "{name} {labels:?}: +Inf bucket differs from _count"
            );
            let sum_name = format!("{name}_sum");
            assert!(
                metrics.with_name(&sum_name).any(|s| &s.labels == labels),
                "no {sum_name} for {labels:?}"
            );
        }
        let has_orders_route = series
            .keys()
            .any(|l| l.get("route").map(String::as_str) == Some("/api/orders"));
        assert!(has_orders_route, "{name} has no series for /api/orders");
    }

    // Orders created, outbox pending, product-service calls and failures.
    let (name, samples) = metrics.family_containing("orders_created");
    assert!(
        samples[0].value >= 1.0,
        "{name} is {} after a 201",
        samples[0].value
    );
    let (name, samples) = metrics.family_containing("outbox_pending");
    let pending: i64 = app.query_one(
        "SELECT COUNT(*) FROM outbox WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
        &[],
    );
    assert_eq!(
        samples[0].value, pending as f64,
        "{name} differs from the outbox (no broker runs, so the event waits)"
    );
    assert!(pending >= 1, "the created order's event should be pending");
    let (name, samples) = metrics.family_containing("product_service_calls");
    assert!(
        samples[0].value >= 1.0,
        "{name} is {} after a create",
        samples[0].value
    );
    let (name, samples) = metrics.family_containing("product_service_failures");
    assert_eq!(
        samples[0].value, 0.0,
        "{name}: the stand-in answered every call"
    );
}

// ---------------------------------------------------------------------------------------
// 4: health and readiness
// ---------------------------------------------------------------------------------------

#[test]
fn health_and_ready() {
    let app = spawn_app();
    let health = app.health();
    health.assert_status(200);
    assert_eq!(health.json(), json!({"status": "ok"}));

    let check_ready = |expected_pending: i64| {
        let ready = app.ready();
        ready.assert_status(200);
        let body = ready.json();
        assert_eq!(body["database"], "ok", "{ready:?}");
        assert_eq!(
            body["outbox"]["pending"], expected_pending,
            "outbox pending count; {ready:?}"
        );
        assert!(
            body["outbox"]
                .as_object()
                .is_some_and(|o| o.contains_key("oldest_pending_age_seconds")),
            "oldest pending age is shown; {ready:?}"
        );
        assert!(body["broker"].is_string(), "broker state; {ready:?}");
    };
    check_ready(0);
    app.place_order_id(&ALICE, MOUSE, 1);
    // No broker runs in these tests: the event waits in the outbox.
    check_ready(1);

    if app.backend() != Backend::Sqlite {
        eprintln!(
            "health_and_ready: the unwritable-database case makes the SQLite file read-only: \
             SKIPPED on {:?}",
            app.backend()
        );
        return;
    }
    if is_root() {
        eprintln!(
            "health_and_ready: running as root, which ignores file permissions: \
             the unwritable-database case is SKIPPED"
        );
        return;
    }
    // The directory and the database files lose their write permission. SQLite keeps the
    // files it opened, so writes may well go on working; what /ready says must agree with
    // what a write does: 200 and a create succeeds, or 503 (Retry-After) and a create
    // answers 503 too.
    use std::os::unix::fs::PermissionsExt;
    struct ReadOnly(PathBuf);
    impl ReadOnly {
        fn set(&self, dir_mode: u32, file_mode: u32) {
            let mode = std::fs::Permissions::from_mode;
            for entry in std::fs::read_dir(&self.0).unwrap() {
                let path = entry.unwrap().path();
                if path.to_string_lossy().contains("orders.db") {
                    std::fs::set_permissions(&path, mode(file_mode)).unwrap();
                }
            }
            std::fs::set_permissions(&self.0, mode(dir_mode)).unwrap();
        }
    }
    impl Drop for ReadOnly {
        fn drop(&mut self) {
            self.set(0o755, 0o644);
        }
    }
    let read_only = ReadOnly(app.db_path().parent().unwrap().to_path_buf());
    read_only.set(0o555, 0o444);
    let ready = app.ready();
    let create = app.create_order(&BOB, &items(&[(MOUSE, 1)]));
    drop(read_only);
    match ready.status {
        200 => {
            assert_eq!(ready.json()["database"], "ok", "{ready:?}");
            assert_eq!(
                create.status, 201,
                "/ready said the database is writable, but a create failed: {create:?}"
            );
        }
        503 => {
            assert_ne!(ready.json()["database"], "ok", "{ready:?}");
            assert!(ready.header("retry-after").is_some(), "{ready:?}");
            assert_eq!(
                create.status, 503,
                "/ready said the database is not writable; a create answered {create:?}"
            );
        }
        _ => panic!("/ready with a read-only database directory: {ready:?}"),
    }
    app.ready().assert_status(200);
}

/// Context switches of every thread of process `pid` so far.
fn context_switches(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the service's threads")
        .flatten()
        .map(|task| {
            std::fs::read_to_string(task.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// A store's service with nobody ordering lets the machine sleep: its threads wake
/// under once a second in all, not each HTTP worker four times a second (192 switches in
/// 3 s) nor, on PostgreSQL (`TEST_BACKEND`), the database watchdog ten times a second (30).
#[test]
fn an_idle_service_wakes_its_threads_rarely() {
    let app = TestApp::builder().spawn();
    app.ready().assert_status(200);
    std::thread::sleep(Duration::from_millis(500));
    let pid = app.pid().expect("the service runs");
    let before = context_switches(pid);
    std::thread::sleep(Duration::from_secs(3));
    let woken = context_switches(pid) - before;
    assert!(
        woken < 10,
        "idle for 3 s, the service's threads were switched in {woken} times"
    );
}

// ---------------------------------------------------------------------------------------
// 5: the OpenAPI description
// ---------------------------------------------------------------------------------------

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Follows a local `$ref` (`#/a/b`), repeatedly.
fn resolve<'a>(spec: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..10 {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
            return value;
        };
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local $ref are expected: {reference}"));
        value = spec
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {reference}"));
    }
    panic!("$ref loop at {value}");
}

/// The status an order must have for `example` to be a legal change on `path`.
fn status_before(path: &str, example: &Value) -> &'static str {
    if !path.ends_with("/status") {
        return "pending";
    }
    match example["status"].as_str() {
        Some("confirmed") | Some("cancelled") | Some("pending") => "pending",
        Some("shipped") => "confirmed",
        Some("delivered") => "shipped",
        other => panic!("status example with no legal way to reach it: {other:?}"),
    }
}

#[test]
fn openapi_describes_every_route() {
    // The default stand-in holds products 1..5 with stock.
    let app = spawn_app();
    let response = app.request("GET", "/openapi.json", &[], None);
    response.assert_status(200);
    let spec = response.json();
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "not OpenAPI 3: openapi = {}",
        spec["openapi"]
    );
    assert!(spec["info"]["title"].is_string(), "info.title");
    assert!(spec["info"]["version"].is_string(), "info.version");
    let paths = spec["paths"].as_object().expect("paths is an object");

    // Every route the server knows is described.
    let mut known: BTreeSet<(String, String)> = BTreeSet::new();
    for (pattern, methods) in order_service::http::ROUTES {
        let path = pattern.replace(":id", "{id}");
        for method in *methods {
            let method = method.to_ascii_lowercase();
            assert!(
                paths.get(&path).is_some_and(|p| p.get(&method).is_some()),
                "{} {path} is served but not in openapi.json",
                method.to_uppercase()
            );
            known.insert((path.clone(), method));
        }
    }

    // Every described operation is served; every request-body example is accepted.
    let mut headers: Vec<(String, String)> = app.user_headers(&ALICE);
    headers.push(("X-User-Role".into(), "admin".into()));
    // `Some(empty)` sends `Content-Length: 0`; a non-empty body is JSON.
    let send = |method: &str, path: &str, body: Option<Vec<u8>>| {
        let mut all: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if body.as_ref().is_some_and(|b| !b.is_empty()) {
            all.push(("Content-Type", "application/json"));
        }
        app.request(method, path, &all, body.as_deref())
    };
    let concrete = |path: &str, status: &str| {
        if path.contains("{id}") {
            let id = app.place_order_id(&ALICE, MOUSE, 1);
            app.bring_to(id, status);
            path.replace("{id}", &id.to_string())
        } else {
            path.to_string()
        }
    };
    let mut examples_sent = 0;
    for (path, item) in paths {
        let item = resolve(&spec, item);
        for (method, operation) in item.as_object().expect("path item is an object") {
            if !HTTP_METHODS.contains(&method.as_str()) {
                continue;
            }
            let upper = method.to_uppercase();
            let target = concrete(path, "pending");
            // No body at all for GET and HEAD; an empty one (Content-Length: 0) otherwise.
            let empty = if matches!(upper.as_str(), "GET" | "HEAD") {
                None
            } else {
                Some(Vec::new())
            };
            let answer = send(&upper, &target, empty);
            assert!(
                answer.status != 404 && answer.status != 405,
                "{upper} {path} is in openapi.json but the server does not know it ({upper} {target}): {answer:?}"
            );
            assert!(
                known.contains(&(path.clone(), method.clone())),
                "{upper} {path} is in openapi.json but not in ROUTES"
            );

            let Some(body) = operation.get("requestBody") else {
                continue;
            };
            let body = resolve(&spec, body);
            let content = body["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{upper} {path}: requestBody without content"));
            for (media, content) in content {
                let mut examples = Vec::new();
                if let Some(example) = content.get("example") {
                    examples.push(example.clone());
                }
                if let Some(map) = content.get("examples").and_then(Value::as_object) {
                    for example in map.values() {
                        let example = resolve(&spec, example);
                        if let Some(value) = example.get("value") {
                            examples.push(value.clone());
                        }
                    }
                }
                assert!(
                    media.starts_with("application/json"),
                    "{upper} {path}: request media type {media}"
                );
                for example in examples {
                    let target = concrete(path, status_before(path, &example));
                    let answer = send(&upper, &target, Some(serde_json::to_vec(&example).unwrap()));
                    assert!(
                        (200..300).contains(&answer.status),
                        "the example of {upper} {path} was refused: {upper} {target} {example} → {answer:?}"
                    );
                    examples_sent += 1;
                }
            }
        }
    }
    assert!(
        examples_sent >= 2,
        "expected request-body examples for POST /api/orders and PATCH …/status, sent {examples_sent}"
    );
}

// ---------------------------------------------------------------------------------------
// 6: the command line
// ---------------------------------------------------------------------------------------

fn is_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
}

#[test]
fn cli() {
    let dir = temp_dir();
    let d = dir.path();

    // --version
    let out = run(d, &["--version"], &[]);
    assert!(out.status.success(), "--version: {}", out.status);
    let line = out.stdout.trim();
    let version = line
        .strip_prefix("order-service ")
        .unwrap_or_else(|| panic!("--version printed {line:?}"));
    assert!(is_semver(version), "--version printed {line:?}");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));

    // --help lists every setting.
    let out = run(d, &["--help"], &[]);
    assert!(out.status.success(), "--help: {}", out.status);
    for (name, _, _) in order_service::config::SETTINGS {
        assert!(
            out.stdout.contains(name),
            "--help does not mention {name}:\n{}",
            out.stdout
        );
    }

    // A bad setting: exit 2, one line naming it.
    let db = d.join("bad-port.db");
    let db = db.to_str().unwrap();
    let out = run(d, &[], &[("PORT", "abc"), ("DATABASE_URL", db)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "PORT=abc: {}; stderr {:?}",
        out.status,
        out.stderr
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "PORT=abc: stderr {:?}", out.stderr);
    assert!(
        lines[0].contains("PORT"),
        "PORT=abc: stderr {:?}",
        out.stderr
    );

    // An unknown command.
    let out = run(d, &["frobnicate"], &[("DATABASE_URL", db)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "unknown command: {}; stderr {:?}",
        out.status,
        out.stderr
    );
    assert!(!out.stderr.trim().is_empty(), "unknown command: say why");

    // migrate on a fresh path.
    let fresh = d.join("fresh").join("orders.db");
    let out = run(
        d,
        &["migrate"],
        &[("DATABASE_URL", fresh.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "migrate: {}; stderr {:?}",
        out.status,
        out.stderr
    );
    let conn =
        rusqlite::Connection::open_with_flags(&fresh, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("migrate created no database at {}: {e}", fresh.display()));
    let tables: BTreeSet<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for table in ["orders", "order_items", "outbox", "idempotency_keys"] {
        assert!(
            tables.contains(table),
            "migrate: no table {table} in {tables:?}"
        );
    }
    drop(conn);

    // --config FILE: the file's settings apply, also where the environment holds the
    // variable empty (as an unset `PORT=` line in a shell profile would)...
    let products = ProductStandIn::with_default_catalog();
    let env_file_text = |port: u16, db: &str| {
        format!(
            "# order-service settings\nHOST=127.0.0.1\nPORT={port}\nDATABASE_URL={db}\n\
             PRODUCT_SERVICE_URL={}\nRABBITMQ_HOST=127.0.0.1\nRABBITMQ_PORT=1\nSTORE_ID=\"cli test\"\n",
            products.url()
        )
    };
    let served_db = d.join("served.db");
    let served_db = served_db.to_str().unwrap();
    let mut started = None;
    for _ in 0..5 {
        let port = free_port();
        let file = write_file(&dir, "settings.env", &env_file_text(port, served_db));
        let mut child = spawn_serve(d, &["--config", file.to_str().unwrap()], &[("PORT", "")]);
        match wait_serving(&mut child, port, d) {
            Ok(()) => {
                started = Some(child);
                break;
            }
            Err(e) if e.contains("in use") => continue,
            Err(e) => panic!("--config FILE with PORT={port}: {e}"),
        }
    }
    let mut child = started.expect("--config: could not find a free port in 5 tries");
    child.child().kill().unwrap();
    let _ = child.child().wait();

    // ...and the process environment wins over the file.
    let mut started = None;
    for _ in 0..5 {
        let (file_port, env_port) = (free_port(), free_port());
        if file_port == env_port {
            continue;
        }
        let file = write_file(&dir, "settings.env", &env_file_text(file_port, served_db));
        let env_port_text = env_port.to_string();
        let mut child = spawn_serve(
            d,
            &["serve", "--config", file.to_str().unwrap()],
            &[("PORT", &env_port_text)],
        );
        match wait_serving(&mut child, env_port, d) {
            Ok(()) => {
                started = Some((child, file_port));
                break;
            }
            Err(e) if e.contains("in use") => continue,
            Err(e) => {
                panic!("PORT={env_port} in the environment, PORT={file_port} in the file: {e}")
            }
        }
    }
    let (_child, file_port) = started.expect("env over file: could not find free ports in 5 tries");
    assert!(
        health_status(file_port).is_err(),
        "the file's PORT {file_port} answers too, although the environment set another"
    );
}

/// A service started with `--config FILE` and `env`, up and answering; its stderr once
/// it has stopped after the health check that `wait_serving` made (a request logged at
/// INFO, after its answer).
fn stderr_of_serve(dir: &TempDir, settings: &str, env: &[(&str, &str)]) -> String {
    let d = dir.path();
    for _ in 0..5 {
        let port = free_port();
        let file = write_file(dir, "logging.env", &format!("PORT={port}\n{settings}"));
        let mut child = spawn_serve(d, &["--config", file.to_str().unwrap()], env);
        match wait_serving(&mut child, port, d) {
            Ok(()) => {
                child.signal("TERM");
                let exit = child.wait_exit(Duration::from_secs(20));
                assert!(exit.is_some_and(|e| e.success()), "exit: {exit:?}");
                return std::fs::read_to_string(d.join("serve.stderr")).unwrap();
            }
            Err(e) if e.contains("in use") => continue,
            Err(e) => panic!("--config with {settings:?}: {e}"),
        }
    }
    panic!("could not find a free port in 5 tries")
}

#[test]
fn rust_log_in_the_config_file_sets_the_log_filter_and_the_environment_wins() {
    let products = ProductStandIn::with_default_catalog();
    let dir = temp_dir();
    let settings = |filter: &str| {
        format!(
            "HOST=127.0.0.1\nDATABASE_URL={}\nPRODUCT_SERVICE_URL={}\n\
             RABBITMQ_HOST=127.0.0.1\nRABBITMQ_PORT=1\nRUST_LOG={filter}\n",
            dir.path().join("orders.db").display(),
            products.url()
        )
    };
    let info_lines = |log: &str| log.lines().filter(|l| l.contains(" INFO ")).count();

    let quiet = stderr_of_serve(&dir, &settings("warn"), &[]);
    assert_eq!(
        info_lines(&quiet),
        0,
        "RUST_LOG=warn in the file, yet INFO lines:\n{quiet}"
    );

    let told = stderr_of_serve(&dir, &settings("warn"), &[("RUST_LOG", "info")]);
    assert!(
        told.lines()
            .any(|l| l.contains(" INFO ") && l.contains("GET /health 200")),
        "RUST_LOG=info in the environment over warn in the file, yet no INFO line for the \
         health check:\n{told}"
    );
}

// ---------------------------------------------------------------------------------------
// 7: backup
// ---------------------------------------------------------------------------------------

#[test]
fn backup_copies_a_live_database() {
    let app = TestApp::builder().sqlite_only().spawn();
    for user in [ALICE, BOB, CAROL] {
        app.place_order_id(&user, MOUSE, 2);
    }
    let orders = app.count_orders();
    assert_eq!(orders, 3);
    let dir = temp_dir();
    let db = app.db_path().to_str().unwrap().to_string();
    let env = [("DATABASE_URL", db.as_str())];

    let copy = dir.path().join("copy.db");
    let out = run(dir.path(), &["backup", copy.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "backup: {}; stderr {:?}",
        out.status,
        out.stderr
    );
    let conn =
        rusqlite::Connection::open_with_flags(&copy, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("the copy does not open: {e}"));
    let copied: i64 = conn
        .query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("the copy holds no orders table: {e}"));
    assert_eq!(copied, orders, "orders in the copy");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "integrity of the copy");
    drop(conn);

    // The service is still serving and writing.
    app.health().assert_status(200);
    app.place_order_id(&ALICE, MOUSE, 1);

    // Onto an existing path: exit 1, the file untouched.
    let existing = write_file(&dir, "existing.db", "precious, not a database\n");
    let out = run(dir.path(), &["backup", existing.to_str().unwrap()], &env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "backup onto an existing file: {}; stderr {:?}",
        out.status,
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&existing).unwrap(),
        "precious, not a database\n",
        "backup overwrote an existing file"
    );
    let before = std::fs::read(&copy).unwrap();
    let out = run(dir.path(), &["backup", copy.to_str().unwrap()], &env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "backup onto an earlier backup: {}; stderr {:?}",
        out.status,
        out.stderr
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        before,
        "backup changed an earlier backup"
    );
}

// ---------------------------------------------------------------------------------------
// 8: request logs
// ---------------------------------------------------------------------------------------

/// Words that look like e-mail addresses: `x@y.z`.
fn emails_in(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || "\"'<>(),;[]{}=".contains(c))
        .filter(|w| {
            w.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            })
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn request_logs() {
    let app = TestApp::builder().env("RUST_LOG", "info").spawn();

    // A request id given is echoed and logged.
    let response = app.request("GET", "/health", &[("X-Request-Id", "abc-123")], None);
    response.assert_status(200);
    assert_eq!(response.header("x-request-id"), Some("abc-123"));
    assert!(
        wait_until(Duration::from_secs(5), || !log_lines_with(
            &app,
            &["request_id=abc-123"]
        )
        .is_empty()),
        "no log line with request_id=abc-123:\n{}",
        app.stderr()
    );
    let lines = log_lines_with(&app, &["request_id=abc-123"]);
    assert_eq!(lines.len(), 1, "one line per request: {lines:#?}");
    let line = &lines[0];
    for part in ["GET", "/health", "200"] {
        assert!(line.contains(part), "the log line lacks {part:?}: {line}");
    }

    // Without one, an id is made up, answered and logged.
    let response = app.request(
        "GET",
        "/api/orders/424242",
        &[("X-User-Id", ALICE.id)],
        None,
    );
    response.assert_status(404);
    let generated = response
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no generated X-Request-Id: {response:?}"))
        .to_string();
    assert!(!generated.trim().is_empty(), "empty generated X-Request-Id");
    let needle = format!("request_id={generated}");
    assert!(
        wait_until(Duration::from_secs(5), || !log_lines_with(&app, &[&needle])
            .is_empty()),
        "no log line with {needle}:\n{}",
        app.stderr()
    );
    let lines = log_lines_with(&app, &[&needle]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for part in ["GET", "/api/orders/424242", "404"] {
        assert!(
            lines[0].contains(part),
            "the log line lacks {part:?}: {}",
            lines[0]
        );
    }

    // No e-mail address at info level, even after a create.
    let email = "log.check@shop-example.org";
    let body = serde_json::to_vec(&items(&[(MOUSE, 1)])).unwrap();
    let created = app.request(
        "POST",
        "/api/orders",
        &[
            ("X-User-Id", "log-checker"),
            ("X-User-Email", email),
            ("Content-Type", "application/json"),
            ("X-Request-Id", "create-1"),
        ],
        Some(&body),
    );
    created.assert_status(201);
    assert!(
        wait_until(Duration::from_secs(5), || !log_lines_with(
            &app,
            &["request_id=create-1"]
        )
        .is_empty()),
        "no log line for the create:\n{}",
        app.stderr()
    );
    let lines = log_lines_with(&app, &["request_id=create-1"]);
    assert!(
        lines.len() == 1
            && ["POST", "/api/orders", "201"]
                .iter()
                .all(|p| lines[0].contains(p)),
        "{lines:#?}"
    );
    let log = app.stderr();
    assert!(
        !log.contains(email) && emails_in(&log).is_empty(),
        "an e-mail address in the log: {:?}\n{log}",
        emails_in(&log)
    );
}

// ---------------------------------------------------------------------------------------
// 9: systemd readiness
// ---------------------------------------------------------------------------------------

#[test]
fn ready_notification_after_a_longer_start_timeout() {
    let dir = temp_dir();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let products = ProductStandIn::with_default_catalog();
    let port = free_port();
    let port_text = port.to_string();
    let db = dir.path().join("orders.db");
    let product_url = products.url();
    let mut child = spawn_serve(
        dir.path(),
        &["serve"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("HOST", "127.0.0.1"),
            ("PORT", &port_text),
            ("DATABASE_URL", db.to_str().unwrap()),
            ("PRODUCT_SERVICE_URL", &product_url),
            ("RABBITMQ_HOST", "127.0.0.1"),
            ("RABBITMQ_PORT", "1"),
            ("STORE_ID", "notify-test"),
        ],
    );
    let stderr = || std::fs::read_to_string(dir.path().join("serve.stderr")).unwrap_or_default();
    let mut next = || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notification within 15 s ({e}); process: {:?}; stderr:\n{}",
                child.child().try_wait(),
                stderr()
            )
        });
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Before migrating, a longer start timeout than systemd's 90 s default.
    let first = next();
    let extended: Option<u64> = first
        .strip_prefix("EXTEND_TIMEOUT_USEC=")
        .and_then(|us| us.parse().ok());
    assert!(
        extended.is_some_and(|us| us >= 300_000_000),
        "the first notification does not ask for minutes to start: {first:?}"
    );
    let message = next();
    // Probe at once: no retry, READY=1 must mean the port answers.
    let health = health_status(port);
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "the notification after it is not READY=1: {message:?}"
    );
    assert_eq!(
        health,
        Ok(200),
        "READY=1 came before /health answered on port {port}; stderr:\n{}",
        stderr()
    );
}

// ---------------------------------------------------------------------------------------
// 10: the systemd unit
// ---------------------------------------------------------------------------------------

#[test]
fn systemd_unit_verifies() {
    let Some(tool) = which("systemd-analyze") else {
        if std::env::var_os("CI").is_some() {
            panic!("systemd-analyze is missing, and CI is set: install systemd to verify the unit");
        }
        loud_skip(
            "systemd_unit_verifies: systemd-analyze is not installed; \
             systemd/order-service.service was NOT verified",
        );
        return;
    };
    let unit_source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join("order-service.service");
    let text = std::fs::read_to_string(&unit_source)
        .unwrap_or_else(|e| panic!("read {}: {e}", unit_source.display()));

    // ExecStart's binary becomes the one just built.
    let mut replaced = 0;
    let unit: String = text
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("ExecStart=") else {
                return line.to_string();
            };
            let prefix_len = rest.len() - rest.trim_start_matches(['-', '@', ':', '+', '!']).len();
            let (prefixes, command) = rest.split_at(prefix_len);
            let (binary, args) = command.split_once(' ').unwrap_or((command, ""));
            assert!(
                binary.ends_with("order-service"),
                "ExecStart runs {binary}, not order-service"
            );
            replaced += 1;
            format!("ExecStart={prefixes}{BIN} {args}")
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert_eq!(replaced, 1, "expected one ExecStart= line in the unit");

    let dir = temp_dir();
    let unit_path = write_file(&dir, "order-service.service", &unit);
    let output = Command::new(&tool)
        .arg("verify")
        .arg(&unit_path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify: {}\n{stdout}{stderr}",
        output.status
    );
    let about_unit: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("order-service.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify has remarks on the unit:\n{}",
        about_unit.join("\n")
    );
}

/// `command` started as a service that talks to no product service or broker, on the
/// database `db`, its standard error kept for `exit_and_stderr`.
fn spawn_on(mut command: Command, db: &Path) -> ChildGuard {
    ChildGuard::spawn(
        command
            .env("PORT", "0")
            .env("PRODUCT_SERVICE_URL", CLOSED_PORT_URL)
            .env("RABBITMQ_PORT", "1")
            .env("DATABASE_URL", db.to_str().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

/// The process's exit within `within` (`None`: it was still running, and is killed), and
/// what it wrote to its standard error.
fn exit_and_stderr(
    process: &mut ChildGuard,
    within: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    // Taken first: the guard forgets the process, and its pipe, once it has exited.
    let mut pipe = process.child().stderr.take().expect("stderr piped");
    let status = process.wait_exit(within);
    process.kill();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    (status, stderr)
}

/// "A bad value stops start-up with a message naming the variable", RUST_LOG too: a
/// filter env_logger cannot parse is only warned about, and dropped, by env_logger
/// itself, and the service would serve on logging nothing at all.
#[test]
fn a_rust_log_that_does_not_parse_stops_start_up_naming_it() {
    let dir = temp_dir();
    let mut command = clean_command(dir.path());
    command.args(["serve"]).env("RUST_LOG", "info=debug=trace");
    let mut child = spawn_on(command, &dir.path().join("o.db"));
    let (status, stderr) = exit_and_stderr(&mut child, Duration::from_secs(10));
    let status = status
        .unwrap_or_else(|| panic!("it started serving with RUST_LOG=info=debug=trace: {stderr}"));
    assert_eq!(status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("RUST_LOG"), "{stderr}");
}

/// A signal while the service starts (here: its database held by another process, so
/// the start waits out its 5 s busy timeout) ends it at once, where it used to be queued
/// until the start was over: Ctrl-C did nothing through a long migration.
#[test]
fn a_signal_during_start_up_ends_the_process_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let dir = temp_dir();
    let db = dir.path().join("o.db");
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder
        .execute_batch("CREATE TABLE held (x); BEGIN EXCLUSIVE; INSERT INTO held VALUES (1);")
        .unwrap();
    let mut command = clean_command(dir.path());
    command.args(["serve"]);
    let mut child = spawn_on(command, &db);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(child.exited().is_none(), "it did not wait for the database");
    let signalled = Instant::now();
    child.signal("TERM");
    let (status, stderr) = exit_and_stderr(&mut child, Duration::from_secs(10));
    let took = signalled.elapsed();
    drop(holder);
    let status = status.unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM: {stderr}"));
    assert!(
        took < Duration::from_millis(2500),
        "SIGTERM during start-up took {took:?} to end it ({status}): {stderr}"
    );
    assert_eq!(status.signal(), Some(15), "{status}: {stderr}");
}

/// A wrapper that signals the service and then its process group (`timeout`, some
/// supervisors) sends the same SIGTERM twice, moments apart: one graceful stop, exit 0,
/// not the second signal's stop at once. (A tenth of a second apart here: two sent
/// within microseconds are often one by the time the signals' thread reads them.)
#[test]
fn the_same_sigterm_sent_twice_at_once_is_one_graceful_stop() {
    let mut app = spawn_app();
    app.place_order_id(&ALICE, MOUSE, 1);
    let pid = app.pid().expect("running");
    let sent = Command::new("sh")
        .args([
            "-c",
            &format!("kill -TERM {pid}; sleep 0.1; kill -TERM {pid}"),
        ])
        .status()
        .unwrap();
    assert!(sent.success());
    exits_cleanly(&mut app, "two SIGTERMs at once");
}

/// SIGUSR1 and SIGUSR2, which would end the process by default (and which scripts send
/// to daemons to reopen their logs), are logged and ignored: the service goes on serving,
/// and SIGTERM still stops it cleanly.
#[test]
fn sigusr1_and_sigusr2_are_logged_and_ignored() {
    let mut app = spawn_app();
    app.place_order_id(&ALICE, MOUSE, 1);
    for (name, number) in [("USR1", 10), ("USR2", 12)] {
        app.signal(name);
        app.wait_for_log(
            &format!("signal {number} ignored"),
            Duration::from_secs(10),
            &format!("SIG{name} was not logged as ignored"),
        );
        assert!(
            app.wait_exit(Duration::ZERO).is_none(),
            "SIG{name} ended the process:\n{}",
            app.stderr()
        );
        app.health().assert_status(200);
    }
    app.place_order_id(&ALICE, MOUSE, 1);
    app.signal("TERM");
    exits_cleanly(&mut app, "SIGTERM after SIGUSR1 and SIGUSR2");
}

/// Every HTTP worker opens its database session before the service says it is up: where
/// one cannot (here, too few file descriptors for 256 workers' sessions), the start
/// fails, instead of the service serving with the workers that could, or with none.
#[test]
fn a_worker_that_cannot_open_the_database_fails_the_start() {
    let dir = temp_dir();
    let db = dir.path().join("o.db");
    let mut command = cleaned(Command::new("sh"), dir.path());
    command
        .args(["-c", "ulimit -n 64 && exec \"$0\" serve", BIN])
        .env("HTTP_THREADS", "256")
        .env("CATALOG_REFRESH", "0");
    let mut child = spawn_on(command, &db);
    let (status, stderr) = exit_and_stderr(&mut child, Duration::from_secs(20));
    let status = status.unwrap_or_else(|| panic!("it served on: {stderr}"));
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(
        stderr.contains("HTTP worker cannot open the database"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// A setting that is not UTF-8 is a bad value: it stops start-up naming it, where it
/// used to count as unset, and the default applied unseen (here: another database).
#[test]
fn a_setting_that_is_not_utf8_stops_start_up_naming_it() {
    use std::os::unix::ffi::OsStrExt;
    let dir = temp_dir();
    let db = dir.path().join("ord\u{e9}.db");
    let mut latin1 = dir.path().as_os_str().as_bytes().to_vec();
    latin1.extend_from_slice(b"/ord\xe9.db");
    let out = clean_command(dir.path())
        .args(["migrate"])
        .env("DATABASE_URL", std::ffi::OsStr::from_bytes(&latin1))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("DATABASE_URL"), "{stderr}");
    assert!(
        !dir.path().join("data").exists() && !db.exists(),
        "a database was made: {stderr}"
    );
}
