//! The database as an operator meets it: what `DATABASE_URL` may name, and probes that
//! stay cheap however many events the outbox keeps.

use crate::helpers::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Runs `serve` with `DATABASE_URL=url` and a free port; returns its exit code and
/// stderr, or panics if it is still serving after 10 s.
fn serve_exit(url: &str) -> (Option<i32>, String) {
    let dir = TempDir::new();
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
    let dir = TempDir::new();
    let state = dir.path().join("state").join("orders");
    let db = state.join("orders.db");
    let app = TestApp::builder()
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
    let out = clean_command(dir.path())
        .env("DATABASE_URL", other.to_str().unwrap())
        .arg("migrate")
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate: {out:?}");
    assert_eq!(mode(other.parent().unwrap()), 0o700);
    assert_eq!(mode(&other), 0o600);
}
