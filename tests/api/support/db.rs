//! The database a test's service runs on (`TEST_BACKEND`: a fresh SQLite file, or a fresh
//! PostgreSQL database dropped after the test), and read-only queries into it that read
//! the same on both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::app::TestApp;
use super::unique_suffix;

/// Which database the harness gives a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `TEST_BACKEND`: `sqlite` (the default) or `postgres`.
    pub fn from_env() -> Backend {
        match std::env::var("TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
            Ok("postgres") | Ok("postgresql") => Backend::Postgres,
            Ok(other) => panic!("TEST_BACKEND={other}: expected sqlite or postgres"),
        }
    }
}

/// One test's database.
pub enum TestDatabase {
    /// A file in the test's own folder, gone with it.
    Sqlite(PathBuf),
    Postgres(PostgresDatabase),
}

impl TestDatabase {
    /// A fresh, empty database; the service's start migrates it.
    pub fn create(backend: Backend, dir: &Path) -> TestDatabase {
        match backend {
            Backend::Sqlite => TestDatabase::Sqlite(dir.join("orders.db")),
            Backend::Postgres => TestDatabase::Postgres(PostgresDatabase::create()),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            TestDatabase::Sqlite(_) => Backend::Sqlite,
            TestDatabase::Postgres(_) => Backend::Postgres,
        }
    }

    /// What the service gets as `DATABASE_URL`.
    pub fn url(&self) -> String {
        match self {
            TestDatabase::Sqlite(path) => path.display().to_string(),
            TestDatabase::Postgres(db) => db.url(),
        }
    }

    /// Each row of `sql` as `T`: a tuple for several columns, the value itself for one.
    /// Parameters are `?1`, `?2`, … in both backends.
    pub fn query<T: DeserializeOwned>(&self, sql: &str, params: &[Value]) -> Vec<T> {
        let rows = match self {
            TestDatabase::Sqlite(path) => sqlite_rows(path, sql, params),
            TestDatabase::Postgres(db) => postgres_rows(&db.name, sql, params),
        };
        rows.into_iter()
            .map(|mut row| {
                let value = if row.len() == 1 {
                    row.pop().unwrap()
                } else {
                    Value::Array(row)
                };
                serde_json::from_value(value.clone())
                    .unwrap_or_else(|e| panic!("{sql}: a row of {value} does not fit: {e}"))
            })
            .collect()
    }

    /// Runs `sql`, a statement without rows (DDL, for a test that changes the schema
    /// under the running service).
    pub fn execute(&self, sql: &str) {
        match self {
            TestDatabase::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute_batch(sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            TestDatabase::Postgres(db) => {
                psql(&db.name, &["-c", sql]).unwrap_or_else(|why| panic!("{sql}: {why}"));
            }
        }
    }

    /// The one row of `sql`, as [`TestDatabase::query`] reads it.
    #[track_caller]
    pub fn query_one<T: DeserializeOwned>(&self, sql: &str, params: &[Value]) -> T {
        let mut rows = self.query(sql, params);
        assert_eq!(rows.len(), 1, "{sql} {params:?}: expected one row");
        rows.pop().unwrap()
    }
}

// What tests read from their service's database.
impl TestApp {
    /// The SQLite file; for tests built with `TestApp::builder().sqlite_only()`.
    #[track_caller]
    pub fn db_path(&self) -> &Path {
        match self.database() {
            TestDatabase::Sqlite(path) => path,
            TestDatabase::Postgres(_) => panic!(
                "this test reads the SQLite file: build its app with TestApp::builder().sqlite_only()"
            ),
        }
    }

    /// The service's `DATABASE_URL`, for the binary's other commands on the same database.
    pub fn database_url(&self) -> String {
        self.database().url()
    }

    pub fn backend(&self) -> Backend {
        self.database().backend()
    }

    /// See [`TestDatabase::query`].
    pub fn query<T: DeserializeOwned>(&self, sql: &str, params: &[Value]) -> Vec<T> {
        self.database().query(sql, params)
    }

    /// See [`TestDatabase::query_one`].
    #[track_caller]
    pub fn query_one<T: DeserializeOwned>(&self, sql: &str, params: &[Value]) -> T {
        self.database().query_one(sql, params)
    }

    pub fn count(&self, table: &str) -> i64 {
        self.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
    }

    pub fn count_orders(&self) -> i64 {
        self.count("orders")
    }

    pub fn count_items(&self) -> i64 {
        self.count("order_items")
    }

    pub fn count_outbox(&self) -> i64 {
        self.count("outbox")
    }

    /// Every outbox row, oldest first.
    pub fn outbox_rows(&self) -> Vec<OutboxRow> {
        let rows: Vec<(i64, i64, String, Value)> = self.query(
            "SELECT id, order_id, event_type, payload FROM outbox ORDER BY id",
            &[],
        );
        rows.into_iter()
            .map(|(id, order_id, event_type, payload)| OutboxRow {
                id,
                order_id,
                event_type,
                // Text in SQLite; a JSON column may hand the value over already parsed.
                payload: match payload {
                    Value::String(text) => serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("outbox payload is not JSON ({e}): {text}")),
                    parsed => parsed,
                },
            })
            .collect()
    }

    pub fn outbox_rows_for(&self, order_id: i64) -> Vec<OutboxRow> {
        self.outbox_rows()
            .into_iter()
            .filter(|r| r.order_id == order_id)
            .collect()
    }

    /// A snapshot of what a failed request must not change.
    pub fn counts(&self) -> Counts {
        Counts {
            orders: self.count_orders(),
            items: self.count_items(),
            outbox: self.count_outbox(),
            idempotency_keys: self.count("idempotency_keys"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub order_id: i64,
    pub event_type: String,
    pub payload: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub orders: i64,
    pub items: i64,
    pub outbox: i64,
    pub idempotency_keys: i64,
}

// ---------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------

fn sqlite_rows(path: &Path, sql: &str, params: &[Value]) -> Vec<Vec<Value>> {
    use rusqlite::types::{Value as Sql, ValueRef};
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {} read-only: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut statement = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns = statement.column_count();
    let params = params.iter().map(|p| match p {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(*b as i64),
        Value::Number(n) => n
            .as_i64()
            .map_or(Sql::Real(n.as_f64().unwrap()), Sql::Integer),
        Value::String(s) => Sql::Text(s.clone()),
        other => Sql::Text(other.to_string()),
    });
    statement
        .query_map(rusqlite::params_from_iter(params), |row| {
            (0..columns)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(n) => n.into(),
                        ValueRef::Real(x) => x.into(),
                        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                        ValueRef::Blob(b) => b.to_vec().into(),
                    })
                })
                .collect()
        })
        .and_then(|rows| rows.collect())
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

// ---------------------------------------------------------------------------------------
// PostgreSQL, through psql: no client library to build for a handful of reads
// ---------------------------------------------------------------------------------------

/// A database made for one test on 127.0.0.1:5432 (user postgres, trust) and dropped
/// afterwards, even when the test fails.
pub struct PostgresDatabase {
    pub name: String,
    /// Made (and so dropped) by this value; a second instance's view of the first's
    /// database is not.
    owned: bool,
}

impl PostgresDatabase {
    pub fn create() -> PostgresDatabase {
        let name = format!("order_service_test_{}", unique_suffix().replace('-', "_"));
        psql("postgres", &["-c", &format!("CREATE DATABASE {name}")]).unwrap_or_else(|why| {
            panic!(
                "create the test database {name} (PostgreSQL on 127.0.0.1:5432, user \
                 postgres, trust authentication): {why}"
            )
        });
        PostgresDatabase { name, owned: true }
    }

    /// The same database, for another service on it; dropping this one leaves it.
    pub fn shared(&self) -> PostgresDatabase {
        PostgresDatabase {
            name: self.name.clone(),
            owned: false,
        }
    }

    pub fn url(&self) -> String {
        self.url_through(5432)
    }

    /// The URL by another port on 127.0.0.1: a proxy in front of the server.
    pub fn url_through(&self, port: u16) -> String {
        format!("postgresql://postgres@127.0.0.1:{port}/{}", self.name)
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // FORCE: a killed service's sessions may not be gone yet.
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(why) = psql("postgres", &["-c", &drop]) {
            eprintln!("could not drop test database {}: {why}", self.name);
        }
    }
}

/// True when PostgreSQL answers on 127.0.0.1:5432 (psql, user postgres). Otherwise
/// panics under CI (`CI` set), or says loudly that the test did not run and returns false.
pub fn require_postgres() -> bool {
    let Err(why) = psql("postgres", &["-c", "SELECT 1"]) else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("PostgreSQL is required in CI (psql -h 127.0.0.1 -U postgres): {why}");
    }
    super::loud_skip(&format!(
        "PostgreSQL not reachable on 127.0.0.1:5432, PostgreSQL-only tests did not run ({why})"
    ));
    false
}

/// Runs psql against `db` on 127.0.0.1 as postgres, stopping at the first error; stdout on success.
pub fn psql(db: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-X",
            "-q",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
        ])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "psql {} exited with {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The rows of `sql` as JSON values, column order kept: PostgreSQL turns each row into a
/// JSON array itself, so types come back as JSON types (numbers, strings, null).
fn postgres_rows(db: &str, sql: &str, params: &[Value]) -> Vec<Vec<Value>> {
    let sql = with_literals(sql, params);
    let wrapped = format!(
        "SELECT coalesce(json_agg((SELECT json_agg(c.value ORDER BY c.n) \
         FROM json_each(row_to_json(t)) WITH ORDINALITY AS c(key, value, n))), '[]') \
         FROM ({sql}) AS t"
    );
    let out = psql(db, &["-tA", "-c", &wrapped]).unwrap_or_else(|why| panic!("{sql}: {why}"));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{sql}: psql printed {out:?}: {e}"))
}

/// `sql` with each `?N` replaced by the Nth parameter as an SQL literal. The tests' SQL
/// holds no `?` inside its own string literals.
fn with_literals(sql: &str, params: &[Value]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            digits.push(d);
        }
        let n: usize = digits
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: parameters are ?1, ?2, …"));
        let literal = match params.get(n - 1) {
            Some(Value::Null) => "NULL".to_string(),
            Some(Value::Bool(b)) => b.to_string().to_uppercase(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => format!("'{}'", s.replace('\'', "''")),
            Some(other) => format!("'{}'", other.to_string().replace('\'', "''")),
            None => panic!("{sql}: no parameter ?{n}"),
        };
        out.push_str(&literal);
    }
    out
}
