//! Every setting, read once from the environment (and an optional env file) and validated.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum ProductSource {
    /// Base URL of the product service, without a trailing slash.
    Http(String),
    /// A local JSON catalog: an array of product objects.
    File(PathBuf),
}

/// The URL without its `user:password@`: a `Config` printed whole never shows them.
impl fmt::Debug for ProductSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProductSource::Http(url) => f
                .debug_tuple("Http")
                .field(&crate::redact::userinfo(url))
                .finish(),
            ProductSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RabbitConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub queue: String,
}

/// Where the orders live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file: the default, one instance per file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgresql://user:pass@host:port/db`), which several
    /// instances may share. The URL may hold a password: it is a `Secret`.
    Postgres(Secret),
}

impl Database {
    /// `DATABASE_URL`'s value as the service reads it.
    pub fn parse(url: &str) -> Result<Database, String> {
        parse_database(url)
    }

    /// Whether the database's server runs on this machine: SQLite, or PostgreSQL
    /// reached only through a socket file or a loopback address (`localhost` included).
    pub fn shares_this_machine(&self) -> bool {
        let Database::Postgres(url) = self else {
            return true;
        };
        let Ok(c) = url.expose().parse::<postgres::Config>() else {
            return false;
        };
        let addrs = c.get_hostaddrs();
        if !addrs.is_empty() {
            return addrs.iter().all(IpAddr::is_loopback);
        }
        c.get_hosts().iter().all(|h| match h {
            postgres::config::Host::Unix(_) => true,
            postgres::config::Host::Tcp(name) => {
                name.eq_ignore_ascii_case("localhost")
                    || name.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
            }
        })
    }

    /// How to name it in a message: the file, or the server and database without the
    /// user and password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            // As a URL spells it (no user, no password), so that the name is one to
            // connect to.
            Database::Postgres(url) => match url.expose().parse::<postgres::Config>() {
                Ok(c) => {
                    let host = c.get_hosts().first().map_or("localhost".into(), url_host);
                    let port = c.get_ports().first().copied().unwrap_or(5432);
                    let db = url_escaped(c.get_dbname().unwrap_or_default().as_bytes());
                    format!("postgresql://{host}:{port}/{db}")
                }
                Err(_) => "postgresql".into(),
            },
        }
    }
}

/// The PostgreSQL connections: how many write, how long a connect may take, and how long
/// a statement may wait for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresPool {
    pub writers: usize,
    pub connect_timeout: Duration,
    pub answer_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub database: Database,
    pub postgres: PostgresPool,
    pub secret_key: Option<Secret>,
    pub rabbitmq: RabbitConfig,
    pub product_source: ProductSource,
    pub product_connect_timeout: Duration,
    pub product_read_timeout: Duration,
    pub product_total_timeout: Duration,
    pub store_id: String,
    pub admin_token: Option<Secret>,
    pub gateway_token: Option<Secret>,
    /// Zero turns the offline policy off.
    pub product_cache_max_age: Duration,
    /// Zero: no background refresh of the catalog snapshot.
    pub catalog_refresh: Duration,
    pub outbox_retention: Duration,
    pub http_threads: usize,
    pub http_write_threads: usize,
    pub max_connections: usize,
    /// env_logger's filter: from the environment or the `--config` file, like the rest.
    pub log_filter: String,
}

/// A bad setting, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// One setting, all of it in one place: `Config::from_lookup` reads through it, `--help`
/// prints it, and tests hold README's table and the env file to it.
pub struct Setting<T> {
    pub name: &'static str,
    /// What an unset or empty variable means, written as an operator would write it: it
    /// goes through `parse` like any value, so the typed default cannot drift from it.
    /// Empty where the default depends on something else (the host name for `STORE_ID`,
    /// the database for `HTTP_THREADS`).
    pub default: &'static str,
    pub help: &'static str,
    /// Kept as a [`Secret`]: it never reaches a log line.
    pub secret: bool,
    parse: fn(&str) -> Result<T, String>,
}

/// A setting without its parser, so that every setting fits in one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct About {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub secret: bool,
}

impl<T> Setting<T> {
    pub const fn about(&self) -> About {
        About {
            name: self.name,
            default: self.default,
            help: self.help,
            secret: self.secret,
        }
    }

    /// The value `get` finds (trimmed, empty meaning unset), else the default, parsed.
    fn read(&self, get: &impl Fn(&str) -> Option<String>) -> Result<T, ConfigError> {
        let raw = get(self.name);
        (self.parse)(raw.as_deref().unwrap_or(self.default)).map_err(|problem| ConfigError {
            variable: self.name.to_string(),
            problem,
        })
    }
}

pub const HOST: Setting<IpAddr> = Setting {
    name: "HOST",
    default: "127.0.0.1",
    help: "address to bind",
    secret: false,
    parse: ip_address,
};
pub const PORT: Setting<u16> = Setting {
    name: "PORT",
    default: "8003",
    help: "port to bind (0 picks a free one)",
    secret: false,
    parse: port_number,
};
pub const DATABASE_URL: Setting<Database> = Setting {
    name: "DATABASE_URL",
    default: "./data/orders.db",
    help: "SQLite file (a path or sqlite://PATH), or postgresql://user:pass@host:port/db",
    secret: true,
    parse: parse_database,
};
pub const DATABASE_POOL_SIZE: Setting<usize> = Setting {
    name: "DATABASE_POOL_SIZE",
    default: "8",
    help: "PostgreSQL only: connections that write, each one transaction at a time (1..=64); every HTTP worker and the relay have a reading one besides",
    secret: false,
    parse: pool_size,
};
pub const DATABASE_CONNECT_TIMEOUT: Setting<Duration> = Setting {
    name: "DATABASE_CONNECT_TIMEOUT",
    default: "5",
    help: "PostgreSQL only: seconds a connection attempt may take, its start-up exchange included (1..=60); while none succeeds, requests get 503",
    secret: false,
    parse: connect_timeout,
};
pub const DATABASE_TIMEOUT: Setting<Duration> = Setting {
    name: "DATABASE_TIMEOUT",
    default: "10",
    help: "PostgreSQL only: seconds a statement may wait for the server's answer (1..=3600); past them its session is closed and the request gets 503; a lock wait ends a second sooner (lock_timeout), a statement half a second sooner (statement_timeout, rolled back), the session kept",
    secret: false,
    parse: answer_timeout,
};
pub const SECRET_KEY: Setting<Option<Secret>> = Setting {
    name: "SECRET_KEY",
    default: "",
    help: "accepted for compatibility",
    secret: true,
    parse: optional_secret,
};
pub const RABBITMQ_HOST: Setting<String> = Setting {
    name: "RABBITMQ_HOST",
    default: "localhost",
    help: "broker host",
    secret: false,
    parse: text,
};
pub const RABBITMQ_PORT: Setting<u16> = Setting {
    name: "RABBITMQ_PORT",
    default: "5672",
    help: "broker port",
    secret: false,
    parse: port_number,
};
pub const RABBITMQ_USER: Setting<String> = Setting {
    name: "RABBITMQ_USER",
    default: "guest",
    help: "broker user",
    secret: false,
    parse: text,
};
pub const RABBITMQ_PASSWORD: Setting<Secret> = Setting {
    name: "RABBITMQ_PASSWORD",
    default: "guest",
    help: "broker password",
    secret: true,
    parse: secret,
};
pub const RABBITMQ_QUEUE: Setting<String> = Setting {
    name: "RABBITMQ_QUEUE",
    default: "notifications",
    help: "durable queue the events go to",
    secret: false,
    parse: queue_name,
};
pub const PRODUCT_SERVICE_URL: Setting<ProductSource> = Setting {
    name: "PRODUCT_SERVICE_URL",
    default: "http://localhost:8001",
    help: "product service base URL (http://), or file:PATH for a local catalog",
    secret: false,
    parse: parse_product_source,
};
pub const PRODUCT_CONNECT_TIMEOUT_MS: Setting<Duration> = Setting {
    name: "PRODUCT_CONNECT_TIMEOUT_MS",
    default: "1000",
    help: "product service connect timeout",
    secret: false,
    parse: timeout_ms,
};
pub const PRODUCT_READ_TIMEOUT_MS: Setting<Duration> = Setting {
    name: "PRODUCT_READ_TIMEOUT_MS",
    default: "2000",
    help: "product service response timeout",
    secret: false,
    parse: timeout_ms,
};
pub const PRODUCT_TIMEOUT_MS: Setting<Duration> = Setting {
    name: "PRODUCT_TIMEOUT_MS",
    default: "3000",
    help: "time allowed for all product lookups of one order",
    secret: false,
    parse: timeout_ms,
};
pub const STORE_ID: Setting<String> = Setting {
    name: "STORE_ID",
    default: "",
    help: "source of every event (unset: the host name)",
    secret: false,
    parse: store_id,
};
pub const ADMIN_TOKEN: Setting<Option<Secret>> = Setting {
    name: "ADMIN_TOKEN",
    default: "",
    help: "Bearer token that grants admin",
    secret: true,
    parse: optional_secret,
};
pub const GATEWAY_TOKEN: Setting<Option<Secret>> = Setting {
    name: "GATEWAY_TOKEN",
    default: "",
    help: "when set, every /api request needs X-Gateway-Token",
    secret: true,
    parse: optional_secret,
};
pub const PRODUCT_CACHE_MAX_AGE: Setting<Duration> = Setting {
    name: "PRODUCT_CACHE_MAX_AGE",
    default: "86400",
    help: "offline sales: while the product service cannot answer, orders are priced from \
           catalog snapshot rows refreshed within this many seconds (0 = off: 503; at most \
           10 years)",
    secret: false,
    parse: seconds,
};
pub const CATALOG_REFRESH: Setting<Duration> = Setting {
    name: "CATALOG_REFRESH",
    default: "300",
    help: "seconds between reads of the whole product list into the catalog snapshot \
           (0 = never: lookups and `catalog import` only; at most 10 years)",
    secret: false,
    parse: seconds,
};
pub const OUTBOX_RETENTION: Setting<Duration> = Setting {
    name: "OUTBOX_RETENTION",
    default: "604800",
    help: "seconds published events are kept (at most 10 years)",
    secret: false,
    parse: seconds,
};
/// Reads, cancels and status changes: creates are served on their connections' threads
/// (`HTTP_WRITE_THREADS`). On SQLite eight workers answered gets and creates faster
/// than sixteen in two pairs of runs of three, and the mix in both pairs; on PostgreSQL,
/// where each holds a session of the server's (a process there, and one of its
/// `max_connections` for every instance), 16 made gets 8–15% slower. Unset, it is
/// `default_http_threads`.
pub const HTTP_THREADS: Setting<Option<usize>> = Setting {
    name: "HTTP_THREADS",
    default: "",
    help: "HTTP worker threads, each with a reading session of the database's: reads, \
           cancels and status changes (1..=256; unset: 8, or two per core up to 8 when \
           the database is PostgreSQL on this machine)",
    secret: false,
    parse: optional_threads,
};

/// The workers when `HTTP_THREADS` is unset: 8, or, where PostgreSQL runs on this
/// machine, two per core (at least 2, at most 8). Its sessions' server processes then
/// share this machine's cores with the workers: past about two busy sessions a core
/// they only wait for one, and, on two cores with eight workers reading list pages,
/// some waited hundreds of ms to a few seconds for a core while PostgreSQL spent under
/// 1 ms on their query. A server elsewhere has cores of its own, and more sessions
/// there hide the network's round trips. SQLite's reads run on the workers themselves,
/// with no other process to wait for.
pub fn default_http_threads(database: &Database) -> usize {
    match database {
        Database::Postgres(_) if database.shares_this_machine() => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (2 * cores).clamp(2, 8)
        }
        _ => 8,
    }
}

/// A create holds its connection's thread through its product lookups and its commit,
/// so this is how many creates wait on those at once: the writers commit what waits for
/// them together, so more make bigger commits. With 16 clients, creates ran 29–37%
/// faster on PostgreSQL, and 0–10% on SQLite, than when the workers served them. The
/// name is from when they were served by a pool of threads of their own.
pub const HTTP_WRITE_THREADS: Setting<usize> = Setting {
    name: "HTTP_WRITE_THREADS",
    default: "16",
    help: "creates served at once, each on its connection's thread as soon as it is read, \
           held there through its product lookups and commit (1..=256)",
    secret: false,
    parse: threads,
};
pub const MAX_CONNECTIONS: Setting<usize> = Setting {
    name: "MAX_CONNECTIONS",
    default: "512",
    help: "client connections served at once; one more gets 503 (1..=65536)",
    secret: false,
    parse: connections,
};
pub const ALLOW_UNTRUSTED_NETWORK: Setting<bool> = Setting {
    name: "ALLOW_UNTRUSTED_NETWORK",
    default: "0",
    help: "1 lets a HOST other than loopback start without GATEWAY_TOKEN",
    secret: false,
    parse: yes_or_no,
};
/// Handed to env_logger as its filter, so that a `--config` file can set it too.
pub const RUST_LOG: Setting<String> = Setting {
    name: "RUST_LOG",
    default: "info",
    help: "log filter",
    secret: false,
    parse: log_filter,
};
/// Read by nothing: older deployments set it, and it must not stop them.
pub const FLASK_ENV: Setting<String> = Setting {
    name: "FLASK_ENV",
    default: "",
    help: "accepted and ignored",
    secret: false,
    parse: text,
};

/// Every setting, in `--help`'s order.
pub const ALL: &[About] = &[
    HOST.about(),
    PORT.about(),
    DATABASE_URL.about(),
    DATABASE_POOL_SIZE.about(),
    DATABASE_CONNECT_TIMEOUT.about(),
    DATABASE_TIMEOUT.about(),
    SECRET_KEY.about(),
    RABBITMQ_HOST.about(),
    RABBITMQ_PORT.about(),
    RABBITMQ_USER.about(),
    RABBITMQ_PASSWORD.about(),
    RABBITMQ_QUEUE.about(),
    PRODUCT_SERVICE_URL.about(),
    PRODUCT_CONNECT_TIMEOUT_MS.about(),
    PRODUCT_READ_TIMEOUT_MS.about(),
    PRODUCT_TIMEOUT_MS.about(),
    STORE_ID.about(),
    ADMIN_TOKEN.about(),
    GATEWAY_TOKEN.about(),
    PRODUCT_CACHE_MAX_AGE.about(),
    CATALOG_REFRESH.about(),
    OUTBOX_RETENTION.about(),
    HTTP_THREADS.about(),
    HTTP_WRITE_THREADS.about(),
    MAX_CONNECTIONS.about(),
    ALLOW_UNTRUSTED_NETWORK.about(),
    RUST_LOG.about(),
    FLASK_ENV.about(),
];

/// `(name, default, help)` of every setting in [`ALL`], for callers that only list them.
pub const SETTINGS: [(&str, &str, &str); ALL.len()] = {
    let mut rows = [("", "", ""); ALL.len()];
    let mut i = 0;
    while i < ALL.len() {
        rows[i] = (ALL[i].name, ALL[i].default, ALL[i].help);
        i += 1;
    }
    rows
};

impl Config {
    /// Reads the settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        // Read in this order, so that of several bad settings the same one is named first.
        let host = HOST.read(&get)?;
        let port = PORT.read(&get)?;
        let database = DATABASE_URL.read(&get)?;
        let postgres = PostgresPool {
            writers: DATABASE_POOL_SIZE.read(&get)?,
            connect_timeout: DATABASE_CONNECT_TIMEOUT.read(&get)?,
            answer_timeout: DATABASE_TIMEOUT.read(&get)?,
        };
        let rabbitmq = RabbitConfig {
            host: RABBITMQ_HOST.read(&get)?,
            port: RABBITMQ_PORT.read(&get)?,
            user: RABBITMQ_USER.read(&get)?,
            password: RABBITMQ_PASSWORD.read(&get)?,
            queue: RABBITMQ_QUEUE.read(&get)?,
        };
        let product_source = PRODUCT_SERVICE_URL.read(&get)?;
        let store_id = STORE_ID.read(&get)?;
        let gateway_token = GATEWAY_TOKEN.read(&get)?;
        let untrusted_ok = ALLOW_UNTRUSTED_NETWORK.read(&get)?;
        // The gateway's headers are the only identity there is: anyone who can reach the
        // port can send them, so beyond loopback they need the gateway's token.
        if !host.is_loopback() && gateway_token.is_none() && !untrusted_ok {
            return Err(ConfigError {
                variable: "HOST".into(),
                problem: format!(
                    "{host} is reachable from the network, where anyone could send the identity \
                     headers: set GATEWAY_TOKEN, or ALLOW_UNTRUSTED_NETWORK=1 if only the \
                     gateway can reach this port"
                ),
            });
        }
        let http_threads = HTTP_THREADS
            .read(&get)?
            .unwrap_or_else(|| default_http_threads(&database));
        Ok(Config {
            host,
            port,
            database,
            postgres,
            secret_key: SECRET_KEY.read(&get)?,
            rabbitmq,
            product_source,
            product_connect_timeout: PRODUCT_CONNECT_TIMEOUT_MS.read(&get)?,
            product_read_timeout: PRODUCT_READ_TIMEOUT_MS.read(&get)?,
            product_total_timeout: PRODUCT_TIMEOUT_MS.read(&get)?,
            store_id,
            admin_token: ADMIN_TOKEN.read(&get)?,
            gateway_token,
            product_cache_max_age: PRODUCT_CACHE_MAX_AGE.read(&get)?,
            catalog_refresh: CATALOG_REFRESH.read(&get)?,
            outbox_retention: OUTBOX_RETENTION.read(&get)?,
            http_threads,
            http_write_threads: HTTP_WRITE_THREADS.read(&get)?,
            max_connections: MAX_CONNECTIONS.read(&get)?,
            log_filter: RUST_LOG.read(&get)?,
        })
    }

    /// The process environment over the variables of `env_file`, if one is given.
    pub fn load(env_file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let file = match env_file {
            Some(path) => read_env_file(path)?,
            None => HashMap::new(),
        };
        // A value that is not UTF-8 is refused, not taken as unset: the file's value or the
        // default would apply unseen (another database, the gateway's check off).
        for (name, _, _) in SETTINGS {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(name) {
                return Err(ConfigError {
                    variable: name.into(),
                    problem: "not valid UTF-8".into(),
                });
            }
        }
        // An empty variable counts as unset, so the file's value (or the default) applies.
        Config::from_lookup(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .or_else(|| file.get(k).cloned())
        })
    }
}

/// Reads a file in the format of systemd's `EnvironmentFile=` (`parse_env_text`).
pub fn read_env_file(path: &std::path::Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        variable: "--config".into(),
        problem: format!("cannot read {}: {}", path.display(), e),
    })?;
    parse_env_text(&text).map_err(|(line, problem)| ConfigError {
        variable: "--config".into(),
        problem: format!("{} line {}: {}", path.display(), line, problem),
    })
}

/// Where a value's reading is, as in systemd's env-file.c.
#[derive(PartialEq)]
enum EnvValue {
    /// Before the value, or just after a closing quote: blanks are skipped, a quote opens.
    Before,
    /// Unquoted: quotes are characters like any other.
    Bare,
    Single,
    Double,
}

/// `KEY=VALUE` lines as systemd reads an `EnvironmentFile=`, so that the commands
/// (`--config`) read the values the service gets: lines starting with `#` or `;` are
/// comments (an `export ` before a key is allowed); at a value's start, or right after
/// a closing quote, blanks are skipped and a quote opens; single quotes keep everything;
/// in double quotes `\"`, `\\`, `` \` `` and `\$` lose their backslash; unquoted, a
/// backslash takes the next character as it is; a backslash before a line's end joins
/// the next line (in double quotes too); unquoted blanks at the end are dropped; quoted
/// values may span lines. Errors name the line a setting starts on.
fn parse_env_text(text: &str) -> Result<HashMap<String, String>, (usize, String)> {
    let text = text.replace("\r\n", "\n");
    let mut vars = HashMap::new();
    let mut lines = text.split('\n');
    let mut number = 0;
    while let Some(line) = lines.next() {
        number += 1;
        let first = number;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let (key, rest) = line
            .split_once('=')
            .ok_or((first, "expected KEY=VALUE".to_string()))?;
        let key = key.trim();
        let key = key.strip_prefix("export ").map_or(key, str::trim_start);
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err((first, format!("bad variable name {key:?}")));
        }
        let (mut value, mut state) = (String::new(), EnvValue::Before);
        // Where unquoted blanks at the end begin.
        let mut blanks_from: Option<usize> = None;
        let mut rest = rest.to_string();
        loop {
            let mut chars = rest.chars();
            let mut joined = false;
            while let Some(c) = chars.next() {
                match (&state, c) {
                    (EnvValue::Single, '\'') | (EnvValue::Double, '"') => state = EnvValue::Before,
                    (EnvValue::Single, c) => value.push(c),
                    (EnvValue::Double, '\\') => match chars.next() {
                        Some(e @ ('"' | '\\' | '`' | '$')) => value.push(e),
                        Some(e) => {
                            value.push('\\');
                            value.push(e);
                        }
                        None => joined = true,
                    },
                    (EnvValue::Double, c) => value.push(c),
                    (EnvValue::Before, c) if c.is_whitespace() => {}
                    (EnvValue::Before, '\'') => state = EnvValue::Single,
                    (EnvValue::Before, '"') => state = EnvValue::Double,
                    (_, '\\') => {
                        state = EnvValue::Bare;
                        blanks_from = None;
                        match chars.next() {
                            Some(e) => value.push(e),
                            None => joined = true,
                        }
                    }
                    (_, c) => {
                        state = EnvValue::Bare;
                        if !c.is_whitespace() {
                            blanks_from = None;
                        } else if blanks_from.is_none() {
                            blanks_from = Some(value.len());
                        }
                        value.push(c);
                    }
                }
            }
            let quoted = matches!(state, EnvValue::Single | EnvValue::Double);
            if !joined && !quoted {
                break;
            }
            let Some(next) = lines.next() else {
                return Err((first, "a quoted value is not closed".to_string()));
            };
            number += 1;
            if quoted && !joined {
                value.push('\n');
            }
            rest = next.to_string();
        }
        if let Some(end) = blanks_from {
            value.truncate(end);
        }
        vars.insert(key.to_string(), value);
    }
    Ok(vars)
}

/// Ten years: longer periods are surely a typo, and keep time arithmetic far from overflow.
const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;
const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// `host` as a PostgreSQL URL writes it: a socket folder percent-encoded, an IPv6
/// address in brackets.
pub fn url_host(host: &postgres::config::Host) -> String {
    match host {
        postgres::config::Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
        postgres::config::Host::Tcp(h) => url_escaped(h.as_bytes()),
        postgres::config::Host::Unix(p) => {
            use std::os::unix::ffi::OsStrExt;
            url_escaped(p.as_os_str().as_bytes())
        }
    }
}

/// `bytes` with all but URL's unreserved characters percent-encoded.
fn url_escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn within(n: u64, min: u64, max: u64) -> Result<u64, String> {
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be from {min} to {max}"))
    }
}

fn parse_num<T: std::str::FromStr>(v: &str, what: &str) -> Result<T, String> {
    v.parse::<T>()
        .map_err(|_| format!("must be {what}, got {v:?}"))
}

fn parse_database(v: &str) -> Result<Database, String> {
    if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        return match v.parse::<postgres::Config>() {
            Ok(c) if c.get_dbname().is_some() => Ok(Database::Postgres(Secret(v.to_string()))),
            Ok(_) => Err(
                "a PostgreSQL URL must name its database: postgresql://user@host:port/db".into(),
            ),
            // The parser's message may quote the URL, password included.
            Err(_) => {
                Err("not a valid PostgreSQL URL (postgresql://user:pass@host:port/db)".into())
            }
        };
    }
    // Meant for PostgreSQL but not its URL (a `:` or `//` left out, libpq's `key=value`
    // form): taken as a path, it was a new, empty SQLite file named after it, the
    // password in its name and in every line that names the database.
    if almost_postgres(v) {
        return Err("looks like a PostgreSQL connection, but is not its URL: \
             postgresql://user:pass@host:port/db"
            .into());
    }
    let path = v
        .strip_prefix("sqlite://")
        .or_else(|| v.strip_prefix("sqlite:"))
        .unwrap_or(v);
    if path.is_empty() || (path.contains("://") && !path.starts_with("file:")) {
        return Err("must be a file path or sqlite://PATH".into());
    }
    // SQLite reads these as a database that lives only in this process: every order
    // would be answered 201 and lost at exit.
    if path == ":memory:"
        || (path.starts_with("file:")
            && (path.contains(":memory:") || path.contains("mode=memory")))
    {
        return Err("must be a file: an in-memory database loses every order at exit".into());
    }
    // An SQLite `file:` URI is taken as the path it names, which the service then opens,
    // creates (0600, its folder too) and backs up as it does any path. Parameters
    // (`vfs=memdb`, `mode=…`) or %-escapes could make it another database than that
    // file, or one that lives only in this process: refused.
    let path = match path.strip_prefix("file:") {
        None => path,
        Some(uri) => {
            if uri.contains(['?', '#', '%']) {
                return Err(
                    "a file: URI must name its file without parameters or %-escapes: \
                            give the file's path instead"
                        .into(),
                );
            }
            let named = match uri.strip_prefix("//") {
                Some(rest) => rest.strip_prefix("localhost").unwrap_or(rest),
                None => uri,
            };
            if named.is_empty() || (uri.starts_with("//") && !named.starts_with('/')) {
                return Err(
                    "a file: URI names a file on this machine: file:PATH or file:///PATH".into(),
                );
            }
            named
        }
    };
    if path.starts_with("file:") {
        return Err("must be a file path or sqlite://PATH".into());
    }
    Ok(Database::Sqlite(PathBuf::from(path)))
}

/// A PostgreSQL URL with its `://` mistyped (`postgresql//…`, `postgres:/…`), or a
/// libpq connection string (`host=… dbname=…`).
fn almost_postgres(v: &str) -> bool {
    let lower = v.trim_start().to_ascii_lowercase();
    let scheme = ["postgresql", "postgres"]
        .iter()
        .find_map(|s| lower.strip_prefix(s));
    if scheme.is_some_and(|rest| rest.starts_with(':') || rest.starts_with("//")) {
        return true;
    }
    const LIBPQ_KEYS: [&str; 7] = [
        "host=",
        "hostaddr=",
        "port=",
        "dbname=",
        "user=",
        "password=",
        "sslmode=",
    ];
    v.split_ascii_whitespace()
        .any(|word| LIBPQ_KEYS.iter().any(|k| word.starts_with(k)))
}

fn pool_size(v: &str) -> Result<usize, String> {
    parse_num::<u64>(v, "a number of connections")
        .and_then(|n| within(n, 1, 64))
        .map(|n| n as usize)
}

fn connect_timeout(v: &str) -> Result<Duration, String> {
    seconds_within(v, 1, 60)
}

fn answer_timeout(v: &str) -> Result<Duration, String> {
    seconds_within(v, 1, 3600)
}

fn parse_product_source(v: &str) -> Result<ProductSource, String> {
    if let Some(path) = v.strip_prefix("file:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        return if path.is_empty() {
            Err("file: needs a path".into())
        } else {
            Ok(ProductSource::File(PathBuf::from(path)))
        };
    }
    // ureq is built without TLS: an https:// URL would start and then fail every lookup.
    if v.starts_with("https://") {
        return Err(
            "https:// is not supported: the product service is reached over plain \
                    HTTP (http://, on a trusted network or through a local TLS proxy)"
                .into(),
        );
    }
    if let Some(rest) = v.strip_prefix("http://") {
        if rest.is_empty() || rest.starts_with('/') {
            return Err("needs a host".into());
        }
        return Ok(ProductSource::Http(v.trim_end_matches('/').to_string()));
    }
    Err("must start with http:// or file:".into())
}

fn ip_address(v: &str) -> Result<IpAddr, String> {
    v.parse().map_err(|_| "must be an IP address".into())
}

fn port_number(v: &str) -> Result<u16, String> {
    parse_num(v, "a port number")
}

fn text(v: &str) -> Result<String, String> {
    Ok(v.to_string())
}

/// The crates whose log lines the service writes, its own first.
const LOGGING_CRATES: [&str; 7] = [
    "order_service",
    "tiny_http",
    "ureq",
    "amiquip",
    "postgres",
    "tokio_postgres",
    "refinery_core",
];

/// A filter env_logger parses whole: the parts it cannot, it would only warn about on
/// stderr and drop, and a service started with such a filter may log nothing at all.
/// So would one that sets no level and names none of the crates that log here: a
/// misspelt level (`inf`) reads as a module's name. `off`, said, is taken at its word.
fn log_filter(v: &str) -> Result<String, String> {
    env_filter::Builder::new()
        .try_parse(v)
        .map_err(|e| format!("not a log filter ({e})"))?;
    // As env_logger reads each directive: `level`, `module`, or `module=level`; a module
    // names the targets that begin with it.
    let spec = v.split('/').next().unwrap_or_default();
    let (mut logs, mut says_off) = (spec.trim().is_empty(), false);
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (module, level) = match directive.split_once('=') {
            Some((module, level)) => (Some(module.trim()), level.trim()),
            None if directive.parse::<log::LevelFilter>().is_ok() => (None, directive),
            None => (Some(directive), "trace"),
        };
        says_off |= level.eq_ignore_ascii_case("off");
        logs |= module.is_none_or(|m| {
            LOGGING_CRATES
                .iter()
                .any(|c| c.starts_with(m) || m.starts_with(&format!("{c}::")))
        });
    }
    if logs || says_off {
        Ok(v.to_string())
    } else {
        Err(format!(
            "logs nothing: no level (off, error, warn, info, debug, trace) and no module of \
             the service's ({})",
            LOGGING_CRATES.join(", ")
        ))
    }
}

fn secret(v: &str) -> Result<Secret, String> {
    Ok(Secret(v.to_string()))
}

/// Empty (the default) leaves the feature the secret guards off.
fn optional_secret(v: &str) -> Result<Option<Secret>, String> {
    Ok((!v.is_empty()).then(|| Secret(v.to_string())))
}

fn queue_name(v: &str) -> Result<String, String> {
    if v.len() <= 255 && !v.starts_with("amq.") {
        Ok(v.to_string())
    } else {
        Err("must be at most 255 bytes and not start with amq.".into())
    }
}

fn timeout_ms(v: &str) -> Result<Duration, String> {
    parse_num::<u64>(v, "milliseconds")
        .and_then(|n| within(n, 1, MAX_TIMEOUT_MS))
        .map(Duration::from_millis)
}

fn seconds(v: &str) -> Result<Duration, String> {
    seconds_within(v, 0, MAX_SECONDS)
}

fn seconds_within(v: &str, min: u64, max: u64) -> Result<Duration, String> {
    parse_num::<u64>(v, "seconds")
        .and_then(|n| within(n, min, max))
        .map(Duration::from_secs)
}

/// Empty (the default) is the host name, so that each machine's events tell where they
/// came from without a setting.
fn store_id(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Ok(host_name());
    }
    if v.len() <= 100 && !v.chars().any(char::is_control) {
        Ok(v.to_string())
    } else {
        Err("must be at most 100 bytes, without control characters".into())
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "store".to_string())
}

fn optional_threads(v: &str) -> Result<Option<usize>, String> {
    (!v.is_empty()).then(|| threads(v)).transpose()
}

fn threads(v: &str) -> Result<usize, String> {
    parse_num::<usize>(v, "a number of threads")
        .and_then(|n| within(n as u64, 1, 256).map(|n| n as usize))
}

fn connections(v: &str) -> Result<usize, String> {
    parse_num::<usize>(v, "a number of connections")
        .and_then(|n| within(n as u64, 1, 65_536).map(|n| n as usize))
}

fn yes_or_no(v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err("must be 1 or 0".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8003);
        assert_eq!(c.host.to_string(), "127.0.0.1");
        assert_eq!(
            c.database,
            Database::Sqlite(PathBuf::from("./data/orders.db"))
        );
        assert_eq!(c.rabbitmq.queue, "notifications");
        assert_eq!(
            c.product_source,
            ProductSource::Http("http://localhost:8001".into())
        );
        assert_eq!(c.product_cache_max_age, Duration::from_secs(86_400));
        assert_eq!(c.catalog_refresh, Duration::from_secs(300));
        assert_eq!(c.outbox_retention, Duration::from_secs(604_800));
    }

    #[test]
    fn the_http_workers_and_write_threads_take_their_defaults_on_either_database_unless_set() {
        let pg = ("DATABASE_URL", "postgresql://postgres@db.example/orders");
        for database in [&[][..], &[pg][..]] {
            let c = config(database).unwrap();
            assert_eq!((c.http_threads, c.http_write_threads), (8, 16));
        }
        // As an env file written when the workers' default followed the database says it.
        assert_eq!(config(&[("HTTP_THREADS", "")]).unwrap().http_threads, 8);
        // PostgreSQL on this machine: two workers a core, 2 to 8.
        let cores = std::thread::available_parallelism().unwrap().get();
        for url in [
            "postgresql://postgres@127.0.0.1/orders",
            "postgresql://postgres@localhost:5433/orders",
            "postgresql://postgres@[::1]/orders",
            "postgresql://postgres@%2Fvar%2Frun%2Fpostgresql/orders",
            "postgresql:///orders?host=/var/run/postgresql",
        ] {
            let c = config(&[("DATABASE_URL", url)]).unwrap();
            assert_eq!(c.http_threads, (2 * cores).clamp(2, 8), "{url}");
            assert!(c.database.shares_this_machine(), "{url}");
            let set = config(&[("DATABASE_URL", url), ("HTTP_THREADS", "8")]).unwrap();
            assert_eq!(set.http_threads, 8, "{url}");
        }
        for url in [
            "postgresql://postgres@db.example/orders",
            "postgresql://postgres@10.0.0.5/orders",
            "postgresql://postgres@127.0.0.1,db.example/orders",
        ] {
            let c = config(&[("DATABASE_URL", url)]).unwrap();
            assert_eq!(c.http_threads, 8, "{url}");
            assert!(!c.database.shares_this_machine(), "{url}");
        }
        let c = config(&[pg, ("HTTP_THREADS", "24"), ("HTTP_WRITE_THREADS", "3")]).unwrap();
        assert_eq!((c.http_threads, c.http_write_threads), (24, 3));
        for bad in ["0", "257", "x"] {
            assert_eq!(
                config(&[("HTTP_WRITE_THREADS", bad)]).unwrap_err().variable,
                "HTTP_WRITE_THREADS"
            );
        }
    }

    #[test]
    fn a_host_beyond_loopback_needs_the_gateway_token_or_a_word_from_the_operator() {
        let open = config(&[("HOST", "0.0.0.0")]).unwrap_err();
        assert_eq!(open.variable, "HOST");
        assert!(open.problem.contains("GATEWAY_TOKEN"), "{}", open.problem);
        assert!(config(&[("HOST", "0.0.0.0"), ("GATEWAY_TOKEN", "t")]).is_ok());
        assert!(config(&[("HOST", "0.0.0.0"), ("ALLOW_UNTRUSTED_NETWORK", "1")]).is_ok());
        assert!(config(&[("HOST", "::1")]).is_ok());
        assert!(config(&[("HOST", "127.0.0.2")]).is_ok());
        let bad = config(&[("ALLOW_UNTRUSTED_NETWORK", "maybe")]).unwrap_err();
        assert_eq!(bad.variable, "ALLOW_UNTRUSTED_NETWORK");
        assert_eq!(config(&[]).unwrap().max_connections, 512);
        assert_eq!(
            config(&[("MAX_CONNECTIONS", "0")]).unwrap_err().variable,
            "MAX_CONNECTIONS"
        );
    }

    #[test]
    fn names_the_bad_variable() {
        assert_eq!(config(&[("PORT", "eighty")]).unwrap_err().variable, "PORT");
        assert_eq!(config(&[("HOST", "nowhere")]).unwrap_err().variable, "HOST");
        assert_eq!(
            config(&[("PRODUCT_SERVICE_URL", "ftp://x")])
                .unwrap_err()
                .variable,
            "PRODUCT_SERVICE_URL"
        );
        assert_eq!(
            config(&[("HTTP_THREADS", "0")]).unwrap_err().variable,
            "HTTP_THREADS"
        );
        assert_eq!(
            config(&[("HTTP_THREADS", "257")]).unwrap_err().variable,
            "HTTP_THREADS"
        );
        let too_long = config(&[("OUTBOX_RETENTION", "10000000000000")]).unwrap_err();
        assert_eq!(too_long.variable, "OUTBOX_RETENTION");
        let zero = config(&[("PRODUCT_TIMEOUT_MS", "0")]).unwrap_err();
        assert_eq!(zero.variable, "PRODUCT_TIMEOUT_MS");
        assert_eq!(
            config(&[("DATABASE_URL", "postgresql://db")])
                .unwrap_err()
                .variable,
            "DATABASE_URL"
        );
        for filter in [
            "info=debug=trace",
            "order_service=loud",
            "a=b=c,info",
            "inf",
            "order_servce=debug",
            "nothing_here=info,other=trace",
        ] {
            assert_eq!(
                config(&[("RUST_LOG", filter)]).unwrap_err().variable,
                "RUST_LOG",
                "{filter}"
            );
        }
        for filter in [
            "info",
            "warn,order_service=debug",
            "order_service::http=trace",
            "off",
            "OFF",
            "order_service=off",
            "tiny_http=debug",
            "info/created",
        ] {
            assert_eq!(config(&[("RUST_LOG", filter)]).unwrap().log_filter, filter);
        }
    }

    #[test]
    fn a_postgresql_url_is_a_secret_with_its_pool() {
        let url = "postgresql://shop:canary-pw@db.example:5433/orders";
        let c = config(&[("DATABASE_URL", url), ("DATABASE_POOL_SIZE", "3")]).unwrap();
        assert_eq!(c.database, Database::Postgres(Secret(url.into())));
        assert!(!c.database.describe().contains("canary-pw"));
        assert!(!format!("{c:?}").contains("canary-pw"));
        assert_eq!(c.postgres.writers, 3);
        assert_eq!(c.postgres.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.postgres.answer_timeout, Duration::from_secs(10));
        let c = config(&[("DATABASE_URL", url), ("DATABASE_TIMEOUT", "2")]).unwrap();
        assert_eq!(c.postgres.answer_timeout, Duration::from_secs(2));
        for bad in ["0", "3601", "soon"] {
            let e = config(&[("DATABASE_URL", url), ("DATABASE_TIMEOUT", bad)]).unwrap_err();
            assert_eq!(e.variable, "DATABASE_TIMEOUT");
        }
        let c = config(&[("DATABASE_URL", "postgres://u@h/d")]).unwrap();
        assert!(matches!(c.database, Database::Postgres(_)));
        let bad = config(&[("DATABASE_URL", "postgresql://u:canary-pw@h:notaport/d")]).unwrap_err();
        assert_eq!(bad.variable, "DATABASE_URL");
        assert!(!bad.problem.contains("canary-pw"), "{}", bad.problem);
        assert_eq!(
            config(&[("DATABASE_POOL_SIZE", "0")]).unwrap_err().variable,
            "DATABASE_POOL_SIZE"
        );
    }

    #[test]
    fn a_postgresql_url_is_named_as_one_to_connect_to_without_its_user() {
        use postgres::config::Host;
        use std::path::PathBuf;
        let cases = [
            (
                "postgresql://shop:canary-pw@%2Fvar%2Frun%2Fpostgresql:5433/orders",
                "postgresql://%2Fvar%2Frun%2Fpostgresql:5433/orders",
                Host::Unix(PathBuf::from("/var/run/postgresql")),
            ),
            (
                "postgresql://shop:canary-pw@%2Ftmp%2Fpg%20a%2C%3A%40%25b/orders",
                "postgresql://%2Ftmp%2Fpg%20a%2C%3A%40%25b:5432/orders",
                Host::Unix(PathBuf::from("/tmp/pg a,:@%b")),
            ),
            (
                "postgresql://shop:canary-pw@[::1]:5433/orders",
                "postgresql://[::1]:5433/orders",
                Host::Tcp("::1".into()),
            ),
            (
                "postgresql://shop:canary-pw@db.example/orders",
                "postgresql://db.example:5432/orders",
                Host::Tcp("db.example".into()),
            ),
        ];
        for (url, named, host) in cases {
            let c = config(&[("DATABASE_URL", url)]).unwrap();
            let described = c.database.describe();
            assert_eq!(described, named);
            let back: postgres::Config = described.parse().unwrap();
            assert_eq!(back.get_hosts(), [host], "{described}");
            assert_eq!(back.get_dbname(), Some("orders"), "{described}");
            assert_eq!(back.get_user(), None, "{described}");
        }
    }

    #[test]
    fn a_postgresql_connection_that_is_not_its_url_is_refused_not_taken_for_a_path() {
        for url in [
            "postgresql//orders:canary-pw@db.example:5432/orders",
            "postgres:/orders:canary-pw@db.example/orders",
            "PostgreSQL:orders",
            "host=db.example user=orders password=canary-pw dbname=orders",
            "dbname=orders",
        ] {
            let e = config(&[("DATABASE_URL", url)]).unwrap_err();
            assert_eq!(e.variable, "DATABASE_URL", "{url}");
            assert!(e.to_string().contains("PostgreSQL"), "{url}: {e}");
            assert!(!e.to_string().contains("canary-pw"), "{url}: {e}");
        }
        // Paths that only look alike are paths.
        for path in ["postgres/orders.db", "postgresql.db", "data/host=a.db"] {
            let c = config(&[("DATABASE_URL", path)]).unwrap();
            assert_eq!(c.database, Database::Sqlite(PathBuf::from(path)), "{path}");
        }
    }

    #[test]
    fn refuses_in_memory_databases() {
        for url in [
            ":memory:",
            "sqlite::memory:",
            "sqlite://:memory:",
            "file::memory:",
            "file::memory:?cache=shared",
            "file:orders?mode=memory",
        ] {
            let e = config(&[("DATABASE_URL", url)]).unwrap_err();
            assert_eq!(e.variable, "DATABASE_URL", "{url}");
            assert!(e.to_string().contains("in-memory"), "{url}: {e}");
        }
    }

    #[test]
    fn a_file_uri_names_its_path_and_nothing_else() {
        for (url, path) in [
            ("file:/var/lib/o.db", "/var/lib/o.db"),
            ("file:///var/lib/o.db", "/var/lib/o.db"),
            ("file://localhost/var/lib/o.db", "/var/lib/o.db"),
            ("file:data/o.db", "data/o.db"),
            ("sqlite:file:data/o.db", "data/o.db"),
        ] {
            let c = config(&[("DATABASE_URL", url)]).unwrap();
            assert_eq!(c.database, Database::Sqlite(PathBuf::from(path)), "{url}");
        }
        for url in [
            "file:/x/a.db?vfs=memdb",
            "file:/x/b.db?mode=%6Demory",
            "file:/x/b%20c.db",
            "file:/x/o.db?mode=ro",
            "file:/x/o.db#f",
            "file://db.example/x/o.db",
            "file:",
            "file:file:/x/o.db",
        ] {
            let e = config(&[("DATABASE_URL", url)]).unwrap_err();
            assert_eq!(e.variable, "DATABASE_URL", "{url}");
        }
    }

    #[test]
    fn reads_database_and_catalog_forms() {
        let c = config(&[
            ("DATABASE_URL", "sqlite:///var/lib/o.db"),
            ("PRODUCT_SERVICE_URL", "file:config/p.json"),
        ])
        .unwrap();
        assert_eq!(c.database, Database::Sqlite(PathBuf::from("/var/lib/o.db")));
        assert_eq!(
            c.product_source,
            ProductSource::File(PathBuf::from("config/p.json"))
        );
        let c = config(&[("PRODUCT_SERVICE_URL", "http://p:8001/")]).unwrap();
        assert_eq!(
            c.product_source,
            ProductSource::Http("http://p:8001".into())
        );
    }

    #[test]
    fn an_https_product_service_stops_start_up_since_lookups_speak_plain_http() {
        let e = config(&[("PRODUCT_SERVICE_URL", "https://products.internal")]).unwrap_err();
        assert_eq!(e.variable, "PRODUCT_SERVICE_URL");
        assert!(e.to_string().contains("https:// is not supported"), "{e}");
        for bad in ["http://", "http:///api", "products:8001"] {
            assert!(
                config(&[("PRODUCT_SERVICE_URL", bad)]).is_err(),
                "{bad} is refused"
            );
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = config(&[
            ("RABBITMQ_PASSWORD", "hunter2"),
            ("ADMIN_TOKEN", "tok-123"),
            ("SECRET_KEY", "sk-9"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-123") && !shown.contains("sk-9")
        );
    }

    #[test]
    fn env_files_read_like_systemd() {
        let vars = parse_env_text("# c\n; c\nPORT=9000\nexport A=\"x y\"\nB='z'\n\n").unwrap();
        assert_eq!(vars["PORT"], "9000");
        assert_eq!(vars["A"], "x y");
        assert_eq!(vars["B"], "z");
        assert!(parse_env_text("nonsense").is_err());
    }

    /// Each line of the file, and the value systemd's env-file.c gives it.
    #[test]
    fn env_file_values_unescape_as_systemd_reads_them() {
        for (line, value) in [
            (r"A=pa\\ss", r"pa\ss"),
            (r#"A="to\"ken""#, r#"to"ken"#),
            (r"A=a\ b", "a b"),
            (r#"A="a\\b\$c\`d\xe""#, r"a\b$c`d\xe"),
            (r#"A='a\\b\"c'"#, r#"a\\b\"c"#),
            ("A=it's", "it's"),
            ("A=a \"b\" c", "a \"b\" c"),
            ("A=  spaced out  ", "spaced out"),
            ("A=trailing\\ ", "trailing "),
            ("A='x' \"y\"z", "xyz"),
            ("A=#not a comment", "#not a comment"),
            ("A=", ""),
            ("A=line\\\nB=joined", "lineB=joined"),
            ("A=kept  \\\n", "kept  "),
            ("A=\"two\nlines\"", "two\nlines"),
            ("A='two\r\nlines'", "two\nlines"),
        ] {
            let vars = parse_env_text(line).unwrap_or_else(|e| panic!("{line:?}: {e:?}"));
            assert_eq!(vars["A"], value, "{line:?}");
        }
        let vars = parse_env_text("A=\"x\ny\"\nB=1\n").unwrap();
        assert_eq!((vars["A"].as_str(), vars["B"].as_str()), ("x\ny", "1"));
        assert_eq!(
            parse_env_text("A=1\nB=\"open\nC=2\n").unwrap_err().0,
            2,
            "the line the unclosed value starts on"
        );
        assert_eq!(parse_env_text("A=\"x\ny\"\nnonsense").unwrap_err().0, 3);
    }

    #[test]
    fn a_printed_config_shows_no_product_service_credentials() {
        let config = Config::from_lookup(|k| {
            (k == "PRODUCT_SERVICE_URL").then(|| "http://shop:canary-s3cret@products:8001".into())
        })
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("canary-s3cret"), "{printed}");
        assert!(
            printed.contains("Http(\"http://***@products:8001\")"),
            "{printed}"
        );
    }

    #[test]
    fn the_table_is_what_config_reads() {
        let asked = std::cell::RefCell::new(Vec::new());
        Config::from_lookup(|k| {
            asked.borrow_mut().push(k.to_string());
            None
        })
        .unwrap();
        let mut asked = asked.into_inner();
        asked.sort();
        // FLASK_ENV is read by nothing.
        let mut listed: Vec<String> = ALL
            .iter()
            .map(|s| s.name.to_string())
            .filter(|n| n != FLASK_ENV.name)
            .collect();
        listed.sort();
        assert_eq!(asked, listed);
        assert_eq!(SETTINGS.len(), ALL.len());
    }

    #[test]
    fn readme_lists_every_setting_with_its_default() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .expect("README has a Configuration section");
        let section = section.split("\n## ").next().unwrap();
        let rows: HashMap<&str, (&str, &str)> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.splitn(4, '|').map(str::trim).collect();
                let name = cells[1].trim_matches('`');
                (name, (cells[2], cells[3]))
            })
            .collect();
        for s in ALL {
            let (default, meaning) = rows
                .get(s.name)
                .unwrap_or_else(|| panic!("README's table lacks {}", s.name));
            let expected = match s.default {
                "" => String::new(),
                d => format!("`{d}`"),
            };
            assert_eq!(*default, expected, "README's default for {}", s.name);
            if s.secret {
                assert!(
                    meaning.contains("never logged"),
                    "README: {} is secret",
                    s.name
                );
            }
        }
        for name in rows.keys() {
            assert!(
                ALL.iter().any(|s| s.name == *name),
                "README's table lists {name}, which is no setting"
            );
        }
        assert_eq!(rows.len(), ALL.len(), "a setting listed twice in README");
    }

    #[test]
    fn the_env_files_name_only_settings_and_hold_valid_values() {
        let shipped = include_str!("../config/order-service.env");
        // `NAME=value` or, for a setting left at its default, `#NAME=value`; prose
        // comments start with "# ".
        let named: Vec<&str> = shipped
            .lines()
            .filter_map(|l| l.strip_prefix('#').unwrap_or(l).split_once('='))
            .map(|(name, _)| name)
            .filter(|n| {
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            })
            .collect();
        for s in ALL {
            assert!(
                named.contains(&s.name),
                "config/order-service.env lacks {}",
                s.name
            );
        }
        for name in &named {
            assert!(
                ALL.iter().any(|s| s.name == *name),
                "config/order-service.env names {name}, which is no setting"
            );
        }
        for (file, text) in [
            ("order-service.env", shipped),
            ("local.env", include_str!("../config/local.env")),
        ] {
            let vars = parse_env_text(text).unwrap();
            for name in vars.keys() {
                assert!(
                    ALL.iter().any(|s| s.name == *name),
                    "config/{file} sets {name}, which is no setting"
                );
            }
            if let Err(e) = Config::from_lookup(|k| vars.get(k).cloned()) {
                panic!("config/{file}: {e}");
            }
        }
    }
}
