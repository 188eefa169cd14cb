//! A database of its own on the local PostgreSQL, for this backend's unit tests.

use crate::config::{url_host, PostgresPool};
use postgres::config::Host;
use postgres::{Client, NoTls};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A database of its own on the local PostgreSQL (127.0.0.1:5432, user postgres,
/// trust), dropped after. Without the server: a failure under CI, a loud note and
/// no test otherwise.
pub struct TestDb {
    name: String,
    admin: Client,
}

impl TestDb {
    pub fn create() -> Option<TestDb> {
        let admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
        let mut admin = match Client::connect(admin, NoTls) {
            Ok(client) => client,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("PostgreSQL is required in CI (127.0.0.1:5432, user postgres): {e}")
            }
            Err(e) => {
                // Past the test harness's capture, which would swallow the note.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** PostgreSQL not reachable on 127.0.0.1:5432: this test did NOT run ({e}) ***\n"
                );
                return None;
            }
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("order_service_unit_{}_{nanos}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        Some(TestDb { name, admin })
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// The same database through the server's Unix socket, which a Debian PostgreSQL
    /// keeps in `/var/run/postgresql`, as user postgres without a password (a `local`
    /// line of `pg_hba.conf` with `trust`). Without it: a failure under CI, a loud note
    /// and `None` otherwise.
    pub fn socket_url(&self) -> Option<String> {
        let host = url_host(&Host::Unix("/var/run/postgresql".into()));
        let url = format!("postgresql://postgres@{host}:5432/{}", self.name);
        match Client::connect(&url, NoTls) {
            Ok(_) => Some(url),
            Err(e) if std::env::var_os("CI").is_some() => panic!(
                "PostgreSQL's socket in /var/run/postgresql (user postgres, trust) is required in CI: {e}"
            ),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** PostgreSQL not reachable through /var/run/postgresql as postgres without a password: this test did NOT run ({e}) ***\n"
                );
                None
            }
        }
    }

    pub fn pool() -> PostgresPool {
        PostgresPool {
            writers: 1,
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(30),
        }
    }

    /// Returns once a session on this database waits on a lock; fails after 10 s.
    pub fn until_a_session_waits_on_a_lock(&self, what: &str) {
        self.until_sessions_wait_on_locks(1, what);
    }

    /// Returns once `n` sessions on this database wait on locks; fails after 10 s.
    pub fn until_sessions_wait_on_locks(&self, n: i64, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.sessions_waiting_on_locks() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: no session waits"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many sessions on this database wait on a lock now.
    pub fn sessions_waiting_on_locks(&self) -> i64 {
        Client::connect(&self.url(), NoTls)
            .unwrap()
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
    }

    /// A connector to this database, migrated, whose sessions wait `answer` at most for
    /// the server (`DATABASE_TIMEOUT`); with its pool.
    pub fn migrated_answering_within(&self, answer: Duration) -> (super::Connector, PostgresPool) {
        let pool = PostgresPool {
            answer_timeout: answer,
            ..TestDb::pool()
        };
        let connector = super::Connector::new(&self.url(), &pool).unwrap();
        super::migrate(&connector).unwrap();
        (connector, pool)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = self.admin.batch_execute(&drop) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
