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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductSource {
    /// Base URL of the product service, without a trailing slash.
    Http(String),
    /// A local JSON catalog: an array of product objects.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct RabbitConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub queue: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub database_path: PathBuf,
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
    pub outbox_retention: Duration,
    pub http_threads: usize,
    pub max_connections: usize,
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

/// Every variable the service reads, with its default and meaning; `--help` prints this.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    ("HOST", "127.0.0.1", "address to bind"),
    ("PORT", "8003", "port to bind (0 picks a free one)"),
    (
        "DATABASE_URL",
        "./data/orders.db",
        "SQLite file: a path or sqlite://PATH",
    ),
    ("SECRET_KEY", "", "accepted for compatibility; never logged"),
    ("RABBITMQ_HOST", "localhost", "broker host"),
    ("RABBITMQ_PORT", "5672", "broker port"),
    ("RABBITMQ_USER", "guest", "broker user"),
    (
        "RABBITMQ_PASSWORD",
        "guest",
        "broker password; never logged",
    ),
    (
        "RABBITMQ_QUEUE",
        "notifications",
        "durable queue the events go to",
    ),
    (
        "PRODUCT_SERVICE_URL",
        "http://localhost:8001",
        "product service base URL, or file:PATH for a local catalog",
    ),
    (
        "PRODUCT_CONNECT_TIMEOUT_MS",
        "1000",
        "product service connect timeout",
    ),
    (
        "PRODUCT_READ_TIMEOUT_MS",
        "2000",
        "product service response timeout",
    ),
    (
        "PRODUCT_TIMEOUT_MS",
        "3000",
        "time allowed for all product lookups of one order",
    ),
    ("STORE_ID", "(host name)", "source of every event"),
    (
        "ADMIN_TOKEN",
        "",
        "Bearer token that grants admin; never logged",
    ),
    (
        "GATEWAY_TOKEN",
        "",
        "when set, every /api request needs X-Gateway-Token; never logged",
    ),
    (
        "PRODUCT_CACHE_MAX_AGE",
        "0",
        "seconds a cached product answer may serve while the product service is away (0 = off; at most 10 years)",
    ),
    (
        "OUTBOX_RETENTION",
        "604800",
        "seconds published events are kept (at most 10 years)",
    ),
    ("HTTP_THREADS", "8", "HTTP worker threads (1..=256)"),
    (
        "MAX_CONNECTIONS",
        "512",
        "client connections served at once; one more gets 503 (1..=65536)",
    ),
    (
        "ALLOW_UNTRUSTED_NETWORK",
        "",
        "1 lets a HOST other than loopback start without GATEWAY_TOKEN",
    ),
    ("RUST_LOG", "info", "log filter"),
    ("FLASK_ENV", "", "accepted and ignored"),
];

impl Config {
    /// Reads the settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let host = parse_or(&get, "HOST", "127.0.0.1".parse().unwrap(), |v| {
            v.parse::<IpAddr>()
                .map_err(|_| "must be an IP address".into())
        })?;
        let port = parse_or(&get, "PORT", 8003, |v| parse_num::<u16>(v, "a port number"))?;
        let database_path = parse_or(
            &get,
            "DATABASE_URL",
            PathBuf::from("./data/orders.db"),
            parse_database,
        )?;
        let rabbitmq = RabbitConfig {
            host: get("RABBITMQ_HOST").unwrap_or_else(|| "localhost".into()),
            port: parse_or(&get, "RABBITMQ_PORT", 5672, |v| {
                parse_num::<u16>(v, "a port number")
            })?,
            user: get("RABBITMQ_USER").unwrap_or_else(|| "guest".into()),
            password: Secret(get("RABBITMQ_PASSWORD").unwrap_or_else(|| "guest".into())),
            queue: parse_or(&get, "RABBITMQ_QUEUE", "notifications".into(), |v| {
                if v.len() <= 255 && !v.starts_with("amq.") {
                    Ok(v.to_string())
                } else {
                    Err("must be at most 255 bytes and not start with amq.".into())
                }
            })?,
        };
        let product_source = parse_or(
            &get,
            "PRODUCT_SERVICE_URL",
            ProductSource::Http("http://localhost:8001".into()),
            parse_product_source,
        )?;
        let ms = |name: &str, default: u64| {
            parse_or(&get, name, Duration::from_millis(default), |v| {
                parse_num::<u64>(v, "milliseconds")
                    .and_then(|n| within(n, 1, MAX_TIMEOUT_MS))
                    .map(Duration::from_millis)
            })
        };
        let secs = |name: &str, default: u64| {
            parse_or(&get, name, Duration::from_secs(default), |v| {
                parse_num::<u64>(v, "seconds")
                    .and_then(|n| within(n, 0, MAX_SECONDS))
                    .map(Duration::from_secs)
            })
        };
        let store_id = parse_or(&get, "STORE_ID", default_store_id(), |v| {
            if v.len() <= 100 && !v.chars().any(char::is_control) {
                Ok(v.to_string())
            } else {
                Err("must be at most 100 characters".into())
            }
        })?;
        let gateway_token = get("GATEWAY_TOKEN").map(Secret);
        let untrusted_ok = parse_or(&get, "ALLOW_UNTRUSTED_NETWORK", false, |v| match v {
            "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" => Ok(false),
            _ => Err("must be 1 or 0".into()),
        })?;
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
        Ok(Config {
            host,
            port,
            database_path,
            secret_key: get("SECRET_KEY").map(Secret),
            rabbitmq,
            product_source,
            product_connect_timeout: ms("PRODUCT_CONNECT_TIMEOUT_MS", 1000)?,
            product_read_timeout: ms("PRODUCT_READ_TIMEOUT_MS", 2000)?,
            product_total_timeout: ms("PRODUCT_TIMEOUT_MS", 3000)?,
            store_id,
            admin_token: get("ADMIN_TOKEN").map(Secret),
            gateway_token,
            product_cache_max_age: secs("PRODUCT_CACHE_MAX_AGE", 0)?,
            outbox_retention: secs("OUTBOX_RETENTION", 7 * 24 * 3600)?,
            http_threads: parse_or(&get, "HTTP_THREADS", 8, |v| {
                parse_num::<usize>(v, "a number of threads").and_then(|n| {
                    if (1..=256).contains(&n) {
                        Ok(n)
                    } else {
                        Err("must be from 1 to 256".into())
                    }
                })
            })?,
            max_connections: parse_or(&get, "MAX_CONNECTIONS", 512, |v| {
                parse_num::<usize>(v, "a number of connections")
                    .and_then(|n| within(n as u64, 1, 65_536).map(|n| n as usize))
            })?,
        })
    }

    /// The process environment over the variables of `env_file`, if one is given.
    pub fn load(env_file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let file = match env_file {
            Some(path) => read_env_file(path)?,
            None => HashMap::new(),
        };
        // An empty variable counts as unset, so the file's value (or the default) applies.
        Config::from_lookup(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .or_else(|| file.get(k).cloned())
        })
    }
}

/// Reads a file in the format of systemd's `EnvironmentFile=`: `KEY=VALUE` lines,
/// `#` or `;` comments, values optionally in single or double quotes.
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

fn parse_env_text(text: &str) -> Result<HashMap<String, String>, (usize, String)> {
    let mut vars = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line
            .split_once('=')
            .ok_or((n + 1, "expected KEY=VALUE".to_string()))?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err((n + 1, format!("bad variable name {key:?}")));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|&q| value.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
            .unwrap_or(value);
        vars.insert(key.to_string(), value.to_string());
    }
    Ok(vars)
}

fn parse_or<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(v) => parse(&v).map_err(|problem| ConfigError {
            variable: name.to_string(),
            problem,
        }),
    }
}

/// Ten years: longer periods are surely a typo, and keep time arithmetic far from overflow.
const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;
const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;

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

fn parse_database(v: &str) -> Result<PathBuf, String> {
    if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        return Err(
            "PostgreSQL is not supported by this build yet; use a path or sqlite://PATH".into(),
        );
    }
    let path = v
        .strip_prefix("sqlite://")
        .or_else(|| v.strip_prefix("sqlite:"))
        .unwrap_or(v);
    if path.is_empty() || path.contains("://") {
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
    Ok(PathBuf::from(path))
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
    if v.starts_with("http://") || v.starts_with("https://") {
        let rest = v.split_once("://").map(|(_, r)| r).unwrap_or("");
        if rest.is_empty() || rest.starts_with('/') {
            return Err("needs a host".into());
        }
        return Ok(ProductSource::Http(v.trim_end_matches('/').to_string()));
    }
    Err("must start with http://, https:// or file:".into())
}

fn default_store_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "store".to_string())
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
        assert_eq!(c.database_path, PathBuf::from("./data/orders.db"));
        assert_eq!(c.rabbitmq.queue, "notifications");
        assert_eq!(
            c.product_source,
            ProductSource::Http("http://localhost:8001".into())
        );
        assert_eq!(c.product_cache_max_age, Duration::ZERO);
        assert_eq!(c.outbox_retention, Duration::from_secs(604_800));
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
        let too_long = config(&[("OUTBOX_RETENTION", "10000000000000")]).unwrap_err();
        assert_eq!(too_long.variable, "OUTBOX_RETENTION");
        let zero = config(&[("PRODUCT_TIMEOUT_MS", "0")]).unwrap_err();
        assert_eq!(zero.variable, "PRODUCT_TIMEOUT_MS");
        assert_eq!(
            config(&[("DATABASE_URL", "postgresql://db/x")])
                .unwrap_err()
                .variable,
            "DATABASE_URL"
        );
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
        let c = config(&[("DATABASE_URL", "file:/var/lib/o.db")]).unwrap();
        assert_eq!(c.database_path, PathBuf::from("file:/var/lib/o.db"));
    }

    #[test]
    fn reads_database_and_catalog_forms() {
        let c = config(&[
            ("DATABASE_URL", "sqlite:///var/lib/o.db"),
            ("PRODUCT_SERVICE_URL", "file:config/p.json"),
        ])
        .unwrap();
        assert_eq!(c.database_path, PathBuf::from("/var/lib/o.db"));
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
}
