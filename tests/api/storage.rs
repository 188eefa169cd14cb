//! The database as an operator meets it: what `DATABASE_URL` may name, and probes that
//! stay cheap however many events the outbox keeps.

use crate::support::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Runs `serve` with `DATABASE_URL=url` and a free port; returns its exit code and
/// stderr, or panics if it is still serving after 10 s.
fn serve_exit(url: &str) -> (Option<i32>, String) {
    let dir = temp_dir();
    let mut child = clean_command(dir.path())
        .env("DATABASE_URL", url)
        .env("PORT", free_port().to_string())
        .env("PRODUCT_SERVICE_URL", "file:none.json")
        .env("RABBITMQ_PORT", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start order-service");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("DATABASE_URL={url}: the service started and kept serving");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn an_in_memory_database_is_refused_at_start() {
    for url in [":memory:", "sqlite::memory:", "file::memory:"] {
        let (code, stderr) = serve_exit(url);
        assert_eq!(code, Some(2), "DATABASE_URL={url}: stderr {stderr:?}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        assert!(
            stderr.contains("DATABASE_URL") && stderr.contains("in-memory"),
            "names the variable and why: {stderr:?}"
        );
    }
}

/// A PostgreSQL URL missing its `:`, or libpq's `key=value` form, is refused at start
/// (exit 2), its password never printed: taken as a path, it was a new SQLite file.
#[test]
fn a_mistyped_postgresql_url_is_refused_and_its_password_never_printed() {
    for url in [
        "postgresql//orders:canary-pw@db.example:5432/orders",
        "host=db.example user=orders password=canary-pw dbname=orders",
    ] {
        let (code, stderr) = serve_exit(url);
        assert_eq!(code, Some(2), "DATABASE_URL={url}: stderr {stderr:?}");
        assert!(
            stderr.contains("DATABASE_URL") && !stderr.contains("canary-pw"),
            "names the variable, not the password: {stderr:?}"
        );
    }
}

#[test]
fn a_file_uri_with_parameters_that_could_keep_nothing_is_refused() {
    for url in ["file:orders.db?vfs=memdb", "file:orders.db?mode=%6Demory"] {
        let (code, stderr) = serve_exit(url);
        assert_eq!(code, Some(2), "DATABASE_URL={url}: stderr {stderr:?}");
        assert!(
            stderr.contains("DATABASE_URL"),
            "names the variable: {stderr:?}"
        );
    }
}

/// `migrate` with `DATABASE_URL=url`, run in `dir`.
fn migrate(dir: &std::path::Path, url: &str) -> std::process::Output {
    clean_command(dir)
        .env("DATABASE_URL", url)
        .arg("migrate")
        .output()
        .unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_database_it_creates_is_private() {
    let dir = temp_dir();
    let state = dir.path().join("state").join("orders");
    let db = state.join("orders.db");
    let app = TestApp::builder()
        .sqlite_only()
        .env("DATABASE_URL", db.to_str().unwrap())
        .spawn();
    app.place_order_id(&ALICE, MOUSE, 1);
    for folder in [dir.path().join("state"), state.clone()] {
        assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    }
    for file in ["orders.db", "orders.db-wal", "orders.db-shm"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }

    // `migrate` creates it the same way.
    let other = dir.path().join("fresh").join("m.db");
    let out = migrate(dir.path(), other.to_str().unwrap());
    assert!(out.status.success(), "migrate: {out:?}");
    assert_eq!(mode(other.parent().unwrap()), 0o700);
    assert_eq!(mode(&other), 0o600);

    // And named by a `file:` URI, the file it names, with nothing beside it.
    let named = dir.path().join("uri").join("u.db");
    let out = migrate(dir.path(), &format!("file:{}", named.display()));
    assert!(out.status.success(), "migrate: {out:?}");
    assert_eq!(mode(named.parent().unwrap()), 0o700);
    assert_eq!(mode(&named), 0o600);
    assert!(!dir.path().join("file:").exists(), "no stray file: folder");
}

/// Median times of `count` calls each of `a` and `b`, made in turns so that both see
/// the machine as busy as the other.
fn medians_in_turns(
    count: usize,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (Duration, Duration) {
    let time = |probe: &mut dyn FnMut()| {
        let started = Instant::now();
        probe();
        started.elapsed()
    };
    let (mut times_a, mut times_b): (Vec<Duration>, Vec<Duration>) =
        (0..count).map(|_| (time(&mut a), time(&mut b))).unzip();
    times_a.sort();
    times_b.sort();
    (times_a[count / 2], times_b[count / 2])
}

/// A service whose outbox holds `published` rows the broker confirmed.
fn app_with_published(published: i64) -> TestApp {
    let mut app = TestApp::builder().sqlite_only().spawn();
    if published > 0 {
        app.kill();
        crate::backup::fill_outbox_with(app.db_path(), published, true, 16);
        app.restart();
    }
    app
}

/// `PROBE_TEST_ROWS` changes the 1 M published rows.
fn probe_rows() -> i64 {
    std::env::var("PROBE_TEST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[test]
fn probes_cost_the_same_with_a_million_published_events_as_with_none() {
    let rows = probe_rows();
    // A fresh connection per probe, as a load balancer or Prometheus makes them (and
    // clear of the test client's 40 ms delayed-ACK stall on a kept-alive connection).
    let probe = |app: &TestApp, path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        app.raw(request.as_bytes()).assert_status(200);
    };
    let empty = app_with_published(0);
    let full = app_with_published(rows);
    let costs = |path: &str| {
        probe(&empty, path);
        probe(&full, path);
        medians_in_turns(41, || probe(&empty, path), || probe(&full, path))
    };
    let (ready_none, ready_full) = costs("/ready");
    let (metrics_none, metrics_full) = costs("/metrics");
    assert_eq!(
        full.ready().json()["outbox"]["pending"],
        serde_json::json!(0)
    );
    eprintln!(
        "probe medians, none vs {rows} published: /ready {ready_none:?} vs {ready_full:?}, \
         /metrics {metrics_none:?} vs {metrics_full:?}"
    );
    // Generous: a scan of the published rows costs tens of milliseconds.
    let bound = |none: Duration| none * 2 + Duration::from_millis(5);
    assert!(
        ready_full <= bound(ready_none),
        "/ready: {ready_none:?} with none, {ready_full:?} with {rows} published"
    );
    assert!(
        metrics_full <= bound(metrics_none),
        "/metrics: {metrics_none:?} with none, {metrics_full:?} with {rows} published"
    );
}
