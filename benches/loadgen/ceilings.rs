//! The ceilings, measured in the same run on the same machine: what the parts the
//! service is made of can do with nothing of the service around them.
//!
//! (a) SQLite with the service's schema and pragmas, one connection, one durable
//!     transaction per order (order + lines + outbox row); and the group-commit variant,
//!     K orders per transaction, which is what the service's writer does under load.
//!     On PostgreSQL the same through psql; and each order as one statement, as the
//!     service writes a create, over as many connections as the service writes on.
//! (b) The vendored tiny_http answering an order-sized body from the same number of
//!     workers, driven by the same client.
//! (c) amiquip publishing event-sized persistent messages with publisher confirms, in
//!     the relay's batch size, to a throwaway durable queue: as many as the drain
//!     publishes, since the broker takes them more slowly as its queue grows.

use crate::preload::{payload, Row};
use crate::scenarios::{self, Kind, Known, Outcome};
use amiquip::{AmqpProperties, AmqpValue, Confirm, ConfirmSmoother, FieldTable, Publish};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The migrations' SQL, in version order: the schema the service runs on, on SQLite with
/// its own table layouts (`order_service::store::sqlite_only`), which PostgreSQL leaves
/// out.
pub fn migrations_sql(postgres: bool) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .expect("migrations/")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let (version, rest) = name.strip_prefix('V')?.split_once("__")?;
            if postgres && order_service::store::sqlite_only(rest) {
                return None;
            }
            Some((version.parse().ok()?, e.path()))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|(_, p)| std::fs::read_to_string(p).expect("a migration"))
        .collect()
}

/// (a) on SQLite: `per_tx` orders of `lines` lines per durable transaction, for `time`.
pub fn sqlite(dir: &Path, lines: usize, per_tx: usize, time: Duration) -> Result<Outcome, String> {
    let path = dir.join(format!("ceiling-a-{lines}-{per_tx}.db"));
    let e = |e: rusqlite::Error| e.to_string();
    // Opened, migrated and set as the service's writer is (src/store/sqlite/mod.rs).
    let mut conn = order_service::store::open_write(&path).map_err(|e| e.to_string())?;
    order_service::store::migrate(&mut conn)?;
    order_service::store::for_the_writer(&conn).map_err(|e| e.to_string())?;
    let mut out = Outcome::default();
    let started = Instant::now();
    let mut id = 0u64;
    while started.elapsed() < time {
        let began = Instant::now();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        for _ in 0..per_tx {
            id += 1;
            let r = Row::new(
                id,
                (id % 1000) as u32,
                lines,
                "pending",
                began.elapsed().as_micros() as i64,
            );
            tx.prepare_cached(
                "INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at, updated_at, lines)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
            )
            .and_then(|mut s| s.execute(rusqlite::params![r.id, r.user, r.email, r.status, r.total, r.at, r.lines()]))
            .map_err(e)?;
            for (n, (p, name, q, price, sub)) in r.items.iter().enumerate() {
                tx.prepare_cached(
                    "INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity, price_cents, subtotal_cents)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut s| s.execute(rusqlite::params![r.id, n as i64 + 1, p, name, q, price, sub]))
                .map_err(e)?;
            }
            tx.prepare_cached(
                "INSERT INTO outbox (id, order_id, event_type, payload, created_at)
                 VALUES (?1, ?1, 'order_created', ?2, ?3)",
            )
            .and_then(|mut s| s.execute(rusqlite::params![r.id, payload(&r), r.at]))
            .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        out.ok += per_tx as u64;
        out.latencies.push(began.elapsed().as_micros() as u32);
    }
    out.seconds = started.elapsed().as_secs_f64();
    out.latencies.sort_unstable();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(out)
}

/// How psql writes each order in (a) on PostgreSQL.
#[derive(Clone, Copy)]
pub enum PgWrites {
    /// `per_tx` orders to a transaction, a statement per row.
    Transactions { per_tx: usize },
    /// One statement per order (its rows as data-modifying CTEs), committing alone: as
    /// the service writes a create.
    OneStatement,
}

/// (a) on PostgreSQL, through psql: `count` orders over `sessions` connections side by
/// side (the service writes on several), synchronous_commit as configured (on by
/// default). No latencies.
pub fn postgres(
    db: &str,
    lines: usize,
    writes: PgWrites,
    count: u64,
    sessions: usize,
) -> Result<Outcome, String> {
    let each = count / sessions as u64;
    let scripts: Vec<Vec<u8>> = (0..sessions as u64)
        .map(|s| orders_script(s * each, each, lines, writes))
        .collect();
    crate::preload::psql_run(db, "TRUNCATE orders, order_items, outbox", |_| {})?;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let running: Vec<_> = scripts
            .iter()
            .map(|script| scope.spawn(move || psql_script(db, script)))
            .collect();
        running
            .into_iter()
            .try_for_each(|r| r.join().unwrap_or_else(|_| Err("psql thread".into())))
    })?;
    Ok(Outcome {
        seconds: started.elapsed().as_secs_f64(),
        ok: each * sessions as u64,
        ..Outcome::default()
    })
}

/// Orders `after + 1` to `after + count` as psql input.
fn orders_script(after: u64, count: u64, lines: usize, writes: PgWrites) -> Vec<u8> {
    let per_tx = match writes {
        PgWrites::Transactions { per_tx } => per_tx,
        PgWrites::OneStatement => 1,
    };
    let mut script = Vec::new();
    let mut id = after;
    while id < after + count {
        let mut statements = Vec::new();
        for _ in 0..per_tx {
            id += 1;
            let r = Row::new(id, (id % 1000) as u32, lines, "pending", id as i64);
            statements.push(format!(
                "INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at, updated_at, lines) VALUES ({}, '{}', '{}', '{}', {}, {}, {}, '{}')",
                r.id, r.user, r.email, r.status, r.total, r.at, r.at, r.lines()
            ));
            let items: Vec<String> = r
                .items
                .iter()
                .enumerate()
                .map(|(n, (p, name, q, price, sub))| {
                    format!("({}, {}, {p}, '{name}', {q}, {price}, {sub})", r.id, n + 1)
                })
                .collect();
            match writes {
                // A statement per line, as (a) always had.
                PgWrites::Transactions { .. } => statements.extend(
                    items
                        .iter()
                        .map(|item| format!("INSERT INTO order_items VALUES {item}")),
                ),
                // One part per table.
                PgWrites::OneStatement => statements.push(format!(
                    "INSERT INTO order_items VALUES {}",
                    items.join(", ")
                )),
            }
            statements.push(format!(
                "INSERT INTO outbox (id, order_id, event_type, payload, created_at) VALUES ({}, {}, 'order_created', '{}', {})",
                r.id,
                r.id,
                payload(&r),
                r.at
            ));
        }
        match writes {
            PgWrites::Transactions { .. } => {
                let _ = writeln!(script, "BEGIN;\n{};\nCOMMIT;", statements.join(";\n"));
            }
            PgWrites::OneStatement => {
                let (main, parts) = statements.split_last().expect("an order's writes");
                let with: Vec<String> = parts
                    .iter()
                    .enumerate()
                    .map(|(i, part)| format!("w{i} AS ({part})"))
                    .collect();
                let _ = writeln!(script, "WITH {} {main};", with.join(", "));
            }
        }
    }
    script
}

/// Runs `script` through psql on a connection of its own.
fn psql_script(db: &str, script: &[u8]) -> Result<(), String> {
    let mut child = crate::preload::psql(db)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("psql: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script)
        .map_err(|e| e.to_string())?;
    let done = child.wait_with_output().map_err(|e| e.to_string())?;
    if !done.status.success() {
        return Err(String::from_utf8_lossy(&done.stderr).trim().to_string());
    }
    Ok(())
}

/// (b) tiny_http with `workers` threads answering `body_len` bytes of JSON to every request.
pub fn hello(
    body_len: usize,
    workers: usize,
    clients: usize,
    warmup: Duration,
    time: Duration,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(
        tiny_http::Server::from_listener(listener, tiny_http::Options::default())
            .expect("tiny_http on a bound listener"),
    );
    let body: Arc<Vec<u8>> = Arc::new(
        format!(
            "{{\"pad\":\"{}\"}}",
            "x".repeat(body_len.saturating_sub(10))
        )
        .into_bytes(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (server, body, stop) = (server.clone(), body.clone(), stop.clone());
            std::thread::spawn(move || {
                let json = tiny_http::Header::from_bytes("Content-Type", "application/json")
                    .expect("static header");
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(100)) {
                        let response = tiny_http::Response::from_data(body.as_slice())
                            .with_header(json.clone());
                        let _ = req.respond(response);
                    }
                }
            })
        })
        .collect();
    let out = scenarios::run(
        addr,
        Kind::Hello,
        &Known::default(),
        clients,
        warmup,
        time,
        None,
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    server.stop_accepting();
    out
}

/// How much ceiling (c) publishes.
#[derive(Clone, Copy)]
pub enum Amount {
    /// Batches for this long.
    For(Duration),
    /// Batches until this many messages (rounded up to a whole batch) are confirmed.
    Messages(u64),
}

/// (c) publishing `payload`-sized persistent messages in batches of `batch`, `amount` of
/// them, as the relay does: the next batch goes out before the last one's confirms are
/// waited on, so that the broker always has one to work on. Latencies are per batch,
/// from its first publish to its last confirm.
pub fn broker(payload_len: usize, batch: usize, amount: Amount) -> Result<Outcome, String> {
    let queue = crate::service::queue_name("ceiling");
    let mut connection = crate::service::broker().map_err(|e| format!("connect: {e}"))?;
    let result = (|| {
        let channel = connection
            .open_channel(None)
            .map_err(|e| format!("channel: {e}"))?;
        channel
            .queue_declare(
                queue.as_str(),
                amiquip::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
            )
            .map_err(|e| format!("declare: {e}"))?;
        let confirms = channel
            .listen_for_publisher_confirms()
            .map_err(|e| format!("confirms: {e}"))?;
        channel
            .enable_publisher_confirms()
            .map_err(|e| format!("confirms: {e}"))?;
        let body = vec![b'x'; payload_len];
        let mut tag = 0u64;
        // Publishes one batch; its last delivery tag and when it began.
        let mut publish = || -> Result<(u64, Instant), String> {
            let began = Instant::now();
            for _ in 0..batch {
                tag += 1;
                // The relay's properties and headers, so the frames are the same size.
                let mut headers = FieldTable::new();
                headers.insert("order_id".into(), AmqpValue::LongLongInt(tag as i64));
                headers.insert("source".into(), AmqpValue::LongString("loadgen".into()));
                let properties = AmqpProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(format!("loadgen:{tag}"))
                    .with_type_("order_created".into())
                    .with_app_id("order-service".into())
                    .with_timestamp(1_700_000_000)
                    .with_headers(headers);
                channel
                    .basic_publish(
                        "",
                        Publish {
                            body: &body,
                            routing_key: queue.clone(),
                            mandatory: true,
                            immediate: false,
                            properties,
                        },
                    )
                    .map_err(|e| format!("publish: {e}"))?;
            }
            Ok((tag, began))
        };
        let mut smoother = ConfirmSmoother::new();
        let mut acked = 0u64;
        let mut out = Outcome::default();
        let started = Instant::now();
        let mut waiting = publish()?;
        loop {
            let more = match amount {
                Amount::For(time) => started.elapsed() < time,
                Amount::Messages(n) => waiting.0 < n,
            };
            let next = if more { Some(publish()?) } else { None };
            let (last, began) = waiting;
            while acked < last {
                let raw = confirms
                    .recv_timeout(Duration::from_secs(10))
                    .map_err(|_| "no confirm in 10 s".to_string())?;
                for c in smoother.process(raw) {
                    match c {
                        Confirm::Ack(p) => acked = acked.max(p.delivery_tag),
                        Confirm::Nack(_) => return Err("the broker refused a message".into()),
                    }
                }
            }
            out.ok += batch as u64;
            out.latencies.push(began.elapsed().as_micros() as u32);
            match next {
                Some(next) => waiting = next,
                None => break,
            }
        }
        out.seconds = started.elapsed().as_secs_f64();
        out.latencies.sort_unstable();
        let _ = channel.queue_delete(queue.as_str(), amiquip::QueueDeleteOptions::default());
        Ok(out)
    })();
    let _ = connection.close();
    if result.is_err() {
        crate::service::delete_queue(&queue);
    }
    result
}
