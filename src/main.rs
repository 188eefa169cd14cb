//! The command line: `order-service [--config FILE] [serve | migrate | outbox status |
//! catalog status | catalog import FILE | backup PATH | import-sqlite FILE | queue peek [N]]`.
//! The one place where errors become exit codes: 0 ok, 1 failure, 2 bad configuration.

use order_service::app::App;
use order_service::config::{self, Config, Database};
use order_service::{store, systemd};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: order_service::memory::Allocator = order_service::memory::Allocator;

enum Command {
    Serve,
    Migrate,
    OutboxStatus,
    CatalogStatus,
    CatalogImport(PathBuf),
    Backup(PathBuf),
    ImportSqlite(PathBuf),
    QueuePeek(usize),
    Help,
    Version,
}

enum Failure {
    Usage(String),
    Config(String),
    Other(String),
}

fn main() -> ExitCode {
    order_service::memory::bound_arenas();
    let result = parse_args(std::env::args().skip(1).collect())
        .and_then(|(cmd, config_file)| run(cmd, config_file));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) | Err(Failure::Config(msg)) => {
            eprintln!("order-service: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Other(msg)) => {
            eprintln!("order-service: {msg}");
            ExitCode::from(1)
        }
    }
}

fn parse_args(args: Vec<String>) -> Result<(Command, Option<PathBuf>), Failure> {
    let mut config_file = None;
    let mut words = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok((Command::Help, None)),
            "-V" | "--version" => return Ok((Command::Version, None)),
            "-c" | "--config" => {
                let file = it
                    .next()
                    .ok_or_else(|| Failure::Usage("--config needs a file".into()))?;
                config_file = Some(PathBuf::from(file));
            }
            a if a.starts_with("--config=") => {
                config_file = Some(PathBuf::from(&a["--config=".len()..]))
            }
            a if a.starts_with('-') => {
                return Err(Failure::Usage(format!("unknown option {a}; see --help")))
            }
            _ => words.push(arg),
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let cmd = match words.as_slice() {
        [] | ["serve"] => Command::Serve,
        ["migrate"] => Command::Migrate,
        ["outbox", "status"] | ["outbox"] => Command::OutboxStatus,
        ["catalog", "status"] | ["catalog"] => Command::CatalogStatus,
        ["catalog", "import", file] => Command::CatalogImport(PathBuf::from(file)),
        ["catalog", "import"] => {
            return Err(Failure::Usage(
                "catalog import needs a JSON file of products".into(),
            ))
        }
        ["backup", path] => Command::Backup(PathBuf::from(path)),
        ["queue", "peek"] => Command::QueuePeek(10),
        ["queue", "peek", n] => Command::QueuePeek(
            n.parse()
                .map_err(|_| Failure::Usage(format!("queue peek takes a count, got {n:?}")))?,
        ),
        ["backup"] => return Err(Failure::Usage("backup needs a destination path".into())),
        ["import-sqlite", file] => Command::ImportSqlite(PathBuf::from(file)),
        ["import-sqlite"] => {
            return Err(Failure::Usage(
                "import-sqlite needs the SQLite file to copy".into(),
            ))
        }
        _ => {
            return Err(Failure::Usage(format!(
                "unknown command {:?}; see --help",
                words.join(" ")
            )))
        }
    };
    Ok((cmd, config_file))
}

fn run(cmd: Command, config_file: Option<PathBuf>) -> Result<(), Failure> {
    match cmd {
        Command::Help => {
            print!("{}", help());
            return Ok(());
        }
        Command::Version => {
            println!("order-service {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        _ => {}
    }
    let config =
        Config::load(config_file.as_deref()).map_err(|e| Failure::Config(e.to_string()))?;
    // The filter comes from `Config` (a `--config` file may set it); colours, as before,
    // from RUST_LOG_STYLE in the environment.
    let mut logs = env_logger::Builder::new();
    if let Ok(style) = std::env::var("RUST_LOG_STYLE") {
        logs.parse_write_style(&style);
    }
    logs.parse_filters(&config.log_filter)
        .format_timestamp_millis()
        // amiquip logs the AMQP handshake at debug, and its start-ok holds the broker
        // password in clear: no RUST_LOG may show it.
        .filter_module("amiquip::io_loop::handshake_state", log::LevelFilter::Info)
        .init();
    match cmd {
        Command::Serve => serve(&config),
        Command::Migrate => {
            let applied = store::migrate_database(&config.database, &config.postgres)
                .map_err(Failure::Other)?;
            println!(
                "{}: {} migration(s) applied",
                config.database.describe(),
                applied.len()
            );
            for m in applied {
                println!("  {m}");
            }
            Ok(())
        }
        Command::OutboxStatus => outbox_status(&config),
        Command::CatalogStatus => catalog_status(&config),
        Command::CatalogImport(file) => catalog_import(&config, &file),
        Command::Backup(dest) => {
            let Database::Sqlite(path) = &config.database else {
                return Err(Failure::Other(
                    "backup copies an SQLite file; back PostgreSQL up with its own tools (pg_dump)"
                        .into(),
                ));
            };
            let report = store::backup(path, &dest).map_err(|e| Failure::Other(e.to_string()))?;
            println!(
                "{} copied to {}: {} bytes in {:.2} s",
                path.display(),
                dest.display(),
                report.bytes,
                report.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Command::ImportSqlite(file) => import_sqlite(&config, &file),
        Command::QueuePeek(n) => {
            order_service::queue::peek(&config.rabbitmq, n).map_err(Failure::Other)?;
            Ok(())
        }
        Command::Help | Command::Version => unreachable!("answered above"),
    }
}

/// How long systemd waits for READY=1 from the start-up's first message on, instead of
/// its start timeout: enough to migrate tens of millions of orders.
const START_LIMIT: Duration = Duration::from_secs(15 * 60);

/// From the first SIGTERM/SIGINT/SIGHUP, the shutdown gets this long (systemd's stop timeout is
/// 30 s); past it the process exits with status 1.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(25);

fn serve(config: &Config) -> Result<(), Failure> {
    // SIGHUP too: a terminal that closes under the service hangs it up, and there is no
    // setting to reload (they are read once), so it stops as gracefully as on SIGTERM.
    // SIGUSR1 and SIGUSR2 would end the process at once by default, though many daemons
    // take them as a request (to reopen logs, say) and scripts send them out of habit.
    // The service has no such request, and logs to stderr: they are logged and ignored.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])
        .map_err(|e| Failure::Other(format!("signals: {e}")))?;
    let (signal_tx, signal_rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGUSR1 || signal == SIGUSR2 {
                    log::warn!(
                        "signal {signal} ignored: SIGTERM, SIGINT or SIGHUP stop the service"
                    );
                    continue;
                }
                if signal_tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Failure::Other(format!("signals: {e}")))?;
    // Start-up applies the migrations the database has not seen. One that rebuilds
    // tables (V9 on SQLite: about 17 s for a million orders here) can outlast systemd's
    // start timeout (90 s by default), which would kill it and roll it back at every try.
    systemd::notify(&format!("EXTEND_TIMEOUT_USEC={}", START_LIMIT.as_micros()));
    // Until it is built, a signal ends the process at once: nothing was acknowledged yet,
    // and a migration cut short is rolled back with its transaction.
    let (built, building) = crossbeam_channel::bounded::<()>(0);
    let start_guard = {
        let signal_rx = signal_rx.clone();
        std::thread::Builder::new()
            .name("start-guard".into())
            .spawn(move || {
                crossbeam_channel::select! {
                    recv(signal_rx) -> signal => {
                        if let Ok(signal) = signal {
                            log::warn!("signal {signal} during start-up: exiting now");
                            exit_of(signal);
                        }
                    },
                    recv(building) -> _ => {},
                }
            })
            .map_err(|e| Failure::Other(format!("signals: {e}")))?
    };
    let app = App::build(config);
    drop(built);
    let _ = start_guard.join();
    let app = app.map_err(Failure::Other)?;
    log::info!(
        "order-service {} listening on http://{} (store {}, database {}, {} HTTP workers)",
        env!("CARGO_PKG_VERSION"),
        app.address(),
        config.store_id,
        config.database.describe(),
        config.http_threads
    );
    systemd::notify("READY=1");
    let first = signal_rx.recv().ok();
    if let Some(signal) = first {
        log::info!("signal {signal}: shutting down");
    }
    let since = Instant::now();
    systemd::notify("STOPPING=1");
    std::thread::Builder::new()
        .name("stop-guard".into())
        .spawn(move || guard_shutdown(&signal_rx, first, since))
        .map_err(|e| Failure::Other(format!("signals: {e}")))?;
    app.shutdown();
    log::info!("stopped");
    Ok(())
}

/// A signal that repeats the first within this long is taken as the same one, sent twice:
/// a wrapper that signals its child and then its process group (`timeout`, some
/// supervisors) does so within microseconds, where a person's second Ctrl-C comes later.
const SAME_SIGNAL: Duration = Duration::from_millis(500);

/// While the service shuts down: a second signal ends the process at once, as does
/// `SHUTDOWN_LIMIT`. Either way nothing acknowledged is lost: a 2xx was committed (and
/// synced) before it was sent, and the outbox keeps what the relay did not publish.
fn guard_shutdown(signals: &crossbeam_channel::Receiver<i32>, first: Option<i32>, since: Instant) {
    let limit = crossbeam_channel::at(since + SHUTDOWN_LIMIT);
    loop {
        crossbeam_channel::select! {
            recv(signals) -> signal => {
                let Ok(signal) = signal else { return };
                if first == Some(signal) && since.elapsed() < SAME_SIGNAL {
                    log::info!("signal {signal} again at once: the same stop, sent twice");
                    continue;
                }
                log::warn!("signal {signal} again: exiting now");
                exit_of(signal);
            },
            recv(limit) -> _ => {
                log::error!(
                    "shutdown did not finish within {} s; exiting now",
                    SHUTDOWN_LIMIT.as_secs()
                );
                std::process::exit(1);
            },
        }
    }
}

/// Dies of `signal`, as without a handler (systemd counts that as a clean stop).
fn exit_of(signal: i32) -> ! {
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    std::process::exit(128 + signal);
}

fn outbox_status(config: &Config) -> Result<(), Failure> {
    let reader = store::reads(&config.database, &config.postgres).map_err(Failure::Other)?;
    let stats = reader
        .outbox_stats()
        .map_err(|e| Failure::Other(e.to_string()))?;
    println!("database: {}", config.database.describe());
    println!("pending: {}", stats.pending);
    let published = reader
        .published_events()
        .map_err(|e| Failure::Other(e.to_string()))?;
    println!("published: {published}");
    match stats.oldest_pending_age_seconds() {
        Some(age) => println!("oldest_pending_age_seconds: {age}"),
        None => println!("oldest_pending_age_seconds: none"),
    }
    let blocked = reader
        .blocked_event()
        .map_err(|e| Failure::Other(e.to_string()))?;
    match blocked {
        Some(b) => println!(
            "blocked_event: {} {} refused by the broker since {}; the events after it wait",
            b.event_id,
            b.event_type,
            order_service::clock::rfc3339(b.since)
        ),
        None => println!("blocked_event: none"),
    }
    Ok(())
}

fn import_sqlite(config: &Config, file: &std::path::Path) -> Result<(), Failure> {
    if !matches!(config.database, Database::Postgres(_)) {
        return Err(Failure::Config(format!(
            "import-sqlite copies into PostgreSQL: set DATABASE_URL to postgresql://user:pass@host:port/db (it names {})",
            config.database.describe()
        )));
    }
    let report =
        store::import_sqlite(file, &config.database, &config.postgres).map_err(Failure::Other)?;
    println!(
        "{} copied into {} in {:.2} s",
        file.display(),
        config.database.describe(),
        report.elapsed.as_secs_f64()
    );
    println!("orders: {}", report.orders);
    println!("order_items: {}", report.items);
    println!("outbox: {} ({} pending)", report.events, report.pending);
    println!("idempotency_keys: {}", report.idempotency_keys);
    println!("product_cache: {}", report.products);
    Ok(())
}

fn catalog_status(config: &Config) -> Result<(), Failure> {
    let reader = store::reads(&config.database, &config.postgres).map_err(Failure::Other)?;
    let max_age = config.product_cache_max_age;
    let now = order_service::clock::now_micros();
    let fresh_after = now.saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX));
    let stats = reader
        .catalog_stats(fresh_after)
        .map_err(|e| Failure::Other(e.to_string()))?;
    let age = |t: Option<i64>| match t {
        Some(t) => ((now - t) / 1_000_000).max(0).to_string(),
        None => "none".into(),
    };
    println!("database: {}", config.database.describe());
    println!("products: {}", stats.products);
    if max_age.is_zero() {
        println!("offline_sales: off (PRODUCT_CACHE_MAX_AGE=0)");
    } else {
        println!(
            "offline_sales: on, for products refreshed within {} s",
            max_age.as_secs()
        );
        println!("fresh_products: {}", stats.fresh);
    }
    match (stats.refreshed_at, &stats.source) {
        (Some(at), Some(source)) => println!(
            "last_refresh: {} from {source}, {} products",
            order_service::clock::rfc3339(at),
            stats.refreshed_products.unwrap_or(0)
        ),
        _ => println!("last_refresh: none"),
    }
    println!("age_seconds: {}", age(stats.refreshed_at));
    println!(
        "oldest_product_age_seconds: {}",
        age(stats.oldest_fetched_at)
    );
    println!(
        "newest_product_age_seconds: {}",
        age(stats.newest_fetched_at)
    );
    Ok(())
}

/// Loads a catalog file into the snapshot, stamped with the file's modification time:
/// the best word there is on when its stock figures were true.
fn catalog_import(config: &Config, file: &std::path::Path) -> Result<(), Failure> {
    let products = order_service::products::read_catalog_file(file).map_err(Failure::Other)?;
    let now = order_service::clock::now_micros();
    let taken_at = std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now, |d| {
            i64::try_from(d.as_micros()).unwrap_or(now).min(now)
        });
    store::require_existing(&config.database).map_err(Failure::Other)?;
    let opened = store::open(&config.database, &config.postgres).map_err(Failure::Other)?;
    let (wake, _woken) = crossbeam_channel::bounded(1);
    let (writer, threads) =
        store::spawn_writer(opened.engines, wake).map_err(|e| Failure::Other(e.to_string()))?;
    let name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let imported = order_service::products::import_snapshot(
        &writer,
        &products,
        taken_at,
        &format!("import {name}"),
    );
    drop(writer);
    for thread in threads {
        let _ = thread.join();
    }
    let imported = imported.map_err(|e| Failure::Other(e.to_string()))?;
    let age = (now - taken_at) / 1_000_000;
    println!(
        "{}: {} products imported into the catalog snapshot of {}, as of {} (the file's time; rows fetched later are kept)",
        file.display(),
        imported,
        config.database.describe(),
        order_service::clock::rfc3339(taken_at)
    );
    let max_age = config.product_cache_max_age;
    if max_age.is_zero() {
        println!("note: offline sales are off (PRODUCT_CACHE_MAX_AGE=0): the snapshot is not used");
    } else if age > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX) {
        println!(
            "warning: the file is {age} s old, past PRODUCT_CACHE_MAX_AGE ({} s): its products will not be sold offline",
            max_age.as_secs()
        );
    }
    Ok(())
}

fn help() -> String {
    let mut text = format!(
        "order-service {}\n\
         Order management for a shop: HTTP JSON API over embedded SQLite, events to RabbitMQ.\n\n\
         USAGE:\n    order-service [--config FILE] [COMMAND]\n\n\
         COMMANDS:\n    serve            run the service (the default)\n    \
         migrate          apply database migrations and exit\n    \
         outbox status    print pending and published event counts from the database\n    \
         catalog status   print the catalog snapshot's size and age\n    \
         catalog import FILE\n                     load a JSON catalog (an array of {{id, name, price, stock}}) into the\n                     snapshot, as of the file's modification time\n    \
         backup PATH      copy the live database consistently to a new file PATH (mode 0600)\n    \
         import-sqlite FILE\n                     copy the SQLite store FILE into the empty PostgreSQL database\n                     DATABASE_URL names (ids, pending events and their order kept)\n    \
         queue peek [N]   show up to N (10) events waiting in RABBITMQ_QUEUE, leaving them there\n\n\
         OPTIONS:\n    -c, --config FILE   read settings from FILE (KEY=VALUE lines, systemd EnvironmentFile format);\n                        \
         the process environment wins over the file\n    -h, --help          print this\n    \
         -V, --version       print the version\n\n\
         SETTINGS (environment variables):\n",
        env!("CARGO_PKG_VERSION")
    );
    for s in config::ALL {
        let never_logged = if s.secret { "; never logged" } else { "" };
        let default = match s.default {
            "" => String::new(),
            d => format!(" [default: {d}]"),
        };
        text.push_str(&format!(
            "    {:<28} {}{never_logged}{default}\n",
            s.name, s.help
        ));
    }
    text.push_str(
        "\nOFFLINE SALES:\n    The service keeps a snapshot of the whole catalog in its database, read from\n    \
         PRODUCT_SERVICE_URL every CATALOG_REFRESH seconds and from every lookup. While the\n    \
         product service cannot answer, an order is priced from the snapshot if its products\n    \
         were refreshed within PRODUCT_CACHE_MAX_AGE (24 h by default), checked against the\n    \
         snapshot's stock minus this store's own sales since, and marked\n    \
         \"stock_verified\": false. PRODUCT_CACHE_MAX_AGE=0 turns this off (503 instead).\n",
    );
    text.push_str("\nEXIT CODES:\n    0 ok, 1 failure, 2 bad command line or configuration\n");
    text
}
