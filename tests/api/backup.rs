//! `order-service backup` on a database of some size while the service takes writes:
//! it finishes, the copy is private and complete, and a killed run leaves no partial file
//! where the backup was asked for.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Rows of about 1 KB each: 60,000 make a database of about 60 MB, built in SQL in a
/// second or two (the API would take minutes). `BACKUP_TEST_ROWS=330000` makes it the
/// few hundred MB README's figure was measured on.
fn big_rows() -> i64 {
    std::env::var("BACKUP_TEST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000)
}

/// Fills a migrated, stopped service's database with `rows` outbox events (ids
/// 1..=rows, published now or pending) of about 1 KB each.
pub fn fill_outbox(db: &Path, rows: i64, published: bool) {
    fill_outbox_with(db, rows, published, 400);
}

/// As [`fill_outbox`], with `pad` random bytes (twice as many hex digits) in each payload.
pub fn fill_outbox_with(db: &Path, rows: i64, published: bool, pad: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    conn.execute(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?1)
         INSERT INTO outbox (id, order_id, event_type, payload, created_at)
         SELECT x, x, 'order_created',
                '{\"event_id\":\"test-store:' || x || '\",\"source\":\"test-store\",\"pad\":\"'
                  || hex(randomblob(?3)) || '\"}',
                ?2
         FROM n",
        rusqlite::params![rows, now, pad],
    )
    .unwrap();
    if published {
        conn.execute(
            "INSERT INTO outbox_marks (upto, at) VALUES (?1, ?2)",
            rusqlite::params![rows, now],
        )
        .unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
}

/// A service on a database of about `rows` KB.
fn big_app(rows: i64) -> TestApp {
    let mut app = TestApp::builder().sqlite_only().spawn();
    app.kill();
    fill_outbox(app.db_path(), rows, true);
    app.restart();
    app
}

fn start_backup(app: &TestApp, dest: &Path) -> Child {
    clean_command(dest.parent().unwrap())
        .env("DATABASE_URL", app.db_path().to_str().unwrap())
        .args(["backup", dest.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start order-service backup")
}

/// Waits up to `timeout`; kills the child and returns `None` past it.
fn finish(mut child: Child, timeout: Duration) -> Option<std::process::Output> {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".partial-"))
        .collect()
}

#[test]
fn a_backup_finishes_while_the_service_takes_writes() {
    let app = big_app(big_rows());
    let dir = temp_dir();
    let dest = dir.path().join("orders-backup.db");
    let stop = AtomicBool::new(false);
    let (outcome, created, ready) = std::thread::scope(|s| {
        let writes = s.spawn(|| {
            let mut created = 0;
            while !stop.load(Ordering::SeqCst) {
                app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
                    .assert_status(201);
                created += 1;
            }
            created
        });
        let probes = s.spawn(|| {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                statuses.push(app.ready().status);
                std::thread::sleep(Duration::from_millis(500));
            }
            statuses
        });
        std::thread::sleep(Duration::from_millis(200));
        let outcome = finish(start_backup(&app, &dest), Duration::from_secs(20));
        stop.store(true, Ordering::SeqCst);
        (outcome, writes.join().unwrap(), probes.join().unwrap())
    });
    let out = outcome.expect("the backup did not finish within 20 s while orders were written");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "backup: {}; stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "backup: {}; {created} orders created meanwhile; /ready answered {ready:?}",
        stdout.trim()
    );
    assert!(created > 0, "no order was written during the backup");
    assert!(
        ready.iter().all(|s| *s == 200),
        "/ready during the backup: {ready:?}"
    );

    let size = std::fs::metadata(&dest).unwrap().len();
    assert!(size > 50_000_000, "a copy of {size} bytes");
    assert!(
        stdout.contains(&format!("{size} bytes")) && stdout.contains(" s"),
        "reports size and time: {stdout:?}"
    );
    assert_eq!(mode(&dest), 0o600, "the copy holds customers' e-mails");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );

    let copy =
        rusqlite::Connection::open_with_flags(&dest, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let events: i64 = copy
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert!(events >= big_rows(), "{events} events in the copy");
}

#[test]
fn a_killed_backup_leaves_no_file_at_its_destination() {
    let app = big_app(big_rows());
    let dir = temp_dir();
    let dest = dir.path().join("orders-backup.db");
    let mut child = start_backup(&app, &dest);
    // Kill it once it has started writing.
    let started = wait_until(Duration::from_secs(10), || {
        dest.exists()
            || leftovers(dir.path())
                .iter()
                .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "the backup wrote nothing within 10 s");
    assert!(
        !dest.exists(),
        "a killed backup left {} behind",
        dest.display()
    );

    // The next run is not refused and completes.
    let out = finish(start_backup(&app, &dest), Duration::from_secs(20)).expect("second run");
    assert!(
        out.status.success(),
        "after a killed run: {}; stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&dest), 0o600);
}
