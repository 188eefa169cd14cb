//! Rows written straight into a database the service migrated: orders with two lines
//! each, spread over many users plus one user holding a big share, and optionally one
//! pending outbox event per order (what a store offline for a long while holds).

use crate::catalog::{self, PRODUCTS};
use crate::scenarios::BIG;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy)]
pub struct Spec {
    pub orders: u64,
    pub users: u32,
    /// Percent of the orders that belong to the big user.
    pub big_percent: u64,
    pub pending_events: bool,
}

impl Spec {
    /// The owner of order `id`: the big user for `big_percent` ids of each hundred, the
    /// others in turn for the rest, so that each holds as many orders. (Taking `id % users`
    /// for the rest left every user whose number ends in 00 to 19 without orders, since
    /// 100 divides the user count: a fifth of the list pages read an empty page.)
    pub fn owner(&self, id: u64) -> u32 {
        let slot = id % 100;
        if slot < self.big_percent {
            BIG
        } else {
            let nth = id / 100 * (100 - self.big_percent) + (slot - self.big_percent);
            (nth % u64::from(self.users)) as u32
        }
    }

    /// How many orders `user` holds (`BIG`: the big user), counted over the ids.
    pub fn held(&self, user: u32) -> u64 {
        (1..=self.orders)
            .filter(|&id| self.owner(id) == user)
            .count() as u64
    }
}

/// One order, in the shapes each table wants: (product, name, quantity, price, subtotal).
pub struct Row {
    pub id: i64,
    pub user: String,
    pub email: String,
    pub status: &'static str,
    pub total: i64,
    pub at: i64,
    pub items: Vec<(i64, String, i64, i64, i64)>,
}

impl Row {
    pub fn new(id: u64, user: u32, lines: usize, status: &'static str, at: i64) -> Row {
        let user = crate::scenarios::user_name(user);
        let items: Vec<_> = (0..lines as u64)
            .map(|k| {
                let p = (id + 3 * k) % PRODUCTS + 1;
                let q = (k % 3 + 1) as i64;
                let price = catalog::price_cents(p) as i64;
                (p as i64, catalog::name(p), q, price, q * price)
            })
            .collect();
        Row {
            id: id as i64,
            email: format!("{user}@example.com"),
            user,
            status,
            total: items.iter().map(|i| i.4).sum(),
            at,
            items,
        }
    }
}

impl Row {
    /// The order's lines as the service keeps them on the order's row (`orders.lines`):
    /// an array of `[product, name, quantity, price, subtotal]`.
    pub fn lines(&self) -> String {
        serde_json::to_string(&self.items).expect("numbers and plain names")
    }
}

fn row(spec: &Spec, id: u64, base: i64) -> Row {
    let status = if spec.pending_events {
        "pending"
    } else {
        ["delivered", "delivered", "shipped", "cancelled", "pending"][(id % 5) as usize]
    };
    Row::new(id, spec.owner(id), 2, status, base + id as i64 * 1000)
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// The `order_created` event of `r`, shaped like the service's own (same fields, same size).
pub fn payload(r: &Row) -> String {
    let items: Vec<String> = r
        .items
        .iter()
        .map(|(p, name, q, price, sub)| {
            format!(
                r#"{{"product_id":{p},"product_name":"{name}","quantity":{q},"price":{},"subtotal":{}}}"#,
                money(*price),
                money(*sub)
            )
        })
        .collect();
    format!(
        r#"{{"event_id":"loadgen:{id}","event_type":"order_created","sequence":{id},"occurred_at":"2025-01-01T00:00:00Z","source":"loadgen","order_id":{id},"user_id":"{user}","user_email":"{email}","status":"pending","previous_status":null,"total":{total},"items":[{items}],"created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z","stock_verified":true,"priced_at":"2025-01-01T00:00:00Z"}}"#,
        id = r.id,
        user = r.user,
        email = r.email,
        total = money(r.total),
        items = items.join(",")
    )
}

/// A typical event (an order of two lines), for the broker ceiling.
pub fn typical_payload() -> String {
    payload(&Row::new(4242, 4242, 2, "pending", 0))
}

fn base_time(spec: &Spec) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    now - spec.orders as i64 * 1000 - 60_000_000
}

/// Fills a SQLite file the service migrated, in one transaction with prepared statements.
pub fn sqlite(path: &Path, spec: &Spec) -> Result<Duration, String> {
    let started = Instant::now();
    let e = |e: rusqlite::Error| e.to_string();
    let mut conn = rusqlite::Connection::open(path).map_err(e)?;
    // Bulk settings for the load only; the service opens the file with its own.
    conn.execute_batch(
        "PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;",
    )
    .map_err(e)?;
    let base = base_time(spec);
    let tx = conn.transaction().map_err(e)?;
    {
        let mut orders = tx
            .prepare(
                "INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at, updated_at, lines)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
            )
            .map_err(e)?;
        let mut items = tx
            .prepare(
                "INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity, price_cents, subtotal_cents)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(e)?;
        let mut outbox = tx
            .prepare(
                "INSERT INTO outbox (id, order_id, event_type, payload, created_at)
                 VALUES (?1, ?1, 'order_created', ?2, ?3)",
            )
            .map_err(e)?;
        for id in 1..=spec.orders {
            let r = row(spec, id, base);
            orders
                .execute(rusqlite::params![
                    r.id,
                    r.user,
                    r.email,
                    r.status,
                    r.total,
                    r.at,
                    r.lines()
                ])
                .map_err(e)?;
            for (n, (p, name, q, price, sub)) in r.items.iter().enumerate() {
                items
                    .execute(rusqlite::params![
                        r.id,
                        n as i64 + 1,
                        p,
                        name,
                        q,
                        price,
                        sub
                    ])
                    .map_err(e)?;
            }
            if spec.pending_events {
                outbox
                    .execute(rusqlite::params![r.id, payload(&r), r.at])
                    .map_err(e)?;
            }
        }
    }
    // Each user's count, which a list's total reads (kept by the service's creates).
    tx.execute_batch(
        "DELETE FROM order_counts;
         INSERT INTO order_counts (user_id, orders) SELECT user_id, COUNT(*) FROM orders GROUP BY user_id;",
    )
    .map_err(e)?;
    tx.commit().map_err(e)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; ANALYZE;")
        .map_err(e)?;
    drop(conn);
    // Written without syncing: on disk before the service starts, so that the kernel's
    // write-back does not run during what is measured next.
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("sync {}: {e}", path.display()))?;
    Ok(started.elapsed())
}

static PG_HOST: OnceLock<String> = OnceLock::new();

/// Sets how the local PostgreSQL is reached (once, from the options): an address, or a
/// socket folder (starting with `/`).
pub fn set_pg_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.contains(['%', ' ', '@', '?', '#', ',', '[', ']']) {
        return Err(format!(
            "--pg-host: not an address or a socket folder: {host:?}"
        ));
    }
    PG_HOST
        .set(host.to_string())
        .map_err(|_| "the PostgreSQL host was set twice".to_string())
}

/// How the local PostgreSQL is reached: as `--pg-host` said (127.0.0.1 by default, as
/// the figures in README and benches/MEASUREMENTS.md were measured).
pub fn pg_host() -> &'static str {
    PG_HOST.get().map_or("127.0.0.1", String::as_str)
}

/// `psql` against one database of the local PostgreSQL (user postgres, trust).
pub fn psql(db: &str) -> Command {
    let mut c = Command::new("psql");
    c.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        pg_host(),
        "-U",
        "postgres",
        "-d",
        db,
    ]);
    c
}

/// Runs `sql` through psql, feeding `input` (COPY data) after it on stdin.
pub fn psql_run(db: &str, sql: &str, input: impl FnOnce(&mut dyn Write)) -> Result<(), String> {
    let mut child = psql(db)
        .args(["-c", sql])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("psql: {e}"))?;
    {
        let mut stdin = std::io::BufWriter::with_capacity(1 << 20, child.stdin.take().unwrap());
        input(&mut stdin);
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The same rows into PostgreSQL, one COPY per table.
pub fn postgres(db: &str, spec: &Spec) -> Result<Duration, String> {
    let started = Instant::now();
    let base = base_time(spec);
    psql_run(
        db,
        "COPY orders (id, user_id, user_email, status, total_cents, created_at, updated_at, lines) FROM STDIN",
        |w| {
            for id in 1..=spec.orders {
                let r = row(spec, id, base);
                // The lines' JSON holds no tab, newline or backslash for COPY to escape.
                let _ = writeln!(
                    w,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    r.id,
                    r.user,
                    r.email,
                    r.status,
                    r.total,
                    r.at,
                    r.at,
                    r.lines()
                );
            }
        },
    )?;
    psql_run(
        db,
        "COPY order_items (order_id, line_no, product_id, product_name, quantity, price_cents, subtotal_cents) FROM STDIN",
        |w| {
            for id in 1..=spec.orders {
                let r = row(spec, id, base);
                for (n, (p, name, q, price, sub)) in r.items.iter().enumerate() {
                    let _ = writeln!(w, "{}\t{}\t{p}\t{name}\t{q}\t{price}\t{sub}", r.id, n + 1);
                }
            }
        },
    )?;
    if spec.pending_events {
        psql_run(
            db,
            "COPY outbox (id, order_id, event_type, payload, created_at) FROM STDIN",
            |w| {
                for id in 1..=spec.orders {
                    let r = row(spec, id, base);
                    let _ = writeln!(
                        w,
                        "{}\t{}\torder_created\t{}\t{}",
                        r.id,
                        r.id,
                        payload(&r),
                        r.at
                    );
                }
            },
        )?;
    }
    psql_run(
        db,
        "DELETE FROM order_counts;
         INSERT INTO order_counts (user_id, orders) SELECT user_id, COUNT(*) FROM orders GROUP BY user_id;
         ANALYZE",
        |_| {},
    )?;
    // The loaded pages written out now, not by the server's next checkpoint during what
    // is measured next.
    psql_run(db, "CHECKPOINT", |_| {})?;
    Ok(started.elapsed())
}
