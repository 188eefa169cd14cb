//! The harness, by concern: a fresh `order-service` per test (`app`) with one method per
//! endpoint (`endpoints`) on its own database (`db`: SQLite, or PostgreSQL when
//! `TEST_BACKEND=postgres`); the binary as a process (`process`); HTTP by hand and the
//! response a test asserts on (`http`); the product-service stand-in (`stand_in`); users
//! and order bodies (`fixtures`); the order contract's shapes (`contract`); Prometheus
//! text (`metrics`); a TCP proxy a test cuts to take PostgreSQL away (`proxy`).
//!
//! No module names `crate::`: a bench can take the whole of it with
//! `#[path = "../tests/api/support/mod.rs"] mod support;`.

mod app;
mod contract;
mod db;
mod endpoints;
mod fixtures;
mod http;
mod metrics;
mod process;
mod proxy;
mod stand_in;

pub use app::*;
pub use contract::*;
pub use db::*;
pub use fixtures::*;
pub use http::*;
pub use metrics::*;
pub use process::*;
pub use proxy::*;
pub use stand_in::*;

pub use tempfile::TempDir;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A fresh folder under the system's temporary one, removed with everything in it on drop.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("order-service-tests-")
        .tempdir()
        .unwrap_or_else(|e| panic!("create a temporary folder: {e}"))
}

/// Writes `contents` to `name` inside `dir`; returns its path.
pub fn write_file(dir: &TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
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

/// Says that a test did not run, where `cargo test` shows it: straight to stderr, past
/// the harness's capture of a passing test's output.
pub fn loud_skip(message: &str) {
    use std::io::Write;
    let bar = "!".repeat(79);
    let _ = writeln!(std::io::stderr(), "\n{bar}\nSKIPPED: {message}\n{bar}");
}

/// `<pid>-<counter>-<nanos>`: a name no other test, in this process or another, uses.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{}-{}", std::process::id(), n, nanos)
}
