//! A fresh `order-service` process per test: its own database (`db.rs`), its own product
//! stand-in, a free port, and one method per endpoint.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::process::Stdio;
use std::time::Duration;

use super::db::{Backend, TestDatabase};
use super::http::agent;
use super::process::{clean_command, free_port, wait_healthy, ChildGuard};
use super::stand_in::ProductStandIn;
use super::{temp_dir, unique_suffix, TempDir};

/// Starts a service with the default settings and the default catalog, on the database
/// `TEST_BACKEND` names (SQLite unless it says `postgres`).
pub fn spawn_app() -> TestApp {
    TestApp::builder().spawn()
}

pub struct AppBuilder {
    env: Vec<(String, String)>,
    products: Option<ProductStandIn>,
    sqlite_only: bool,
    postgres_only: bool,
    /// Another app's database: this one runs on it too, and leaves it when dropped.
    shared: Option<TestDatabase>,
    /// The service reaches PostgreSQL through this port on 127.0.0.1 (a proxy).
    database_port: Option<u16>,
}

impl AppBuilder {
    /// An extra (or overriding) environment variable for the service.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Use this stand-in instead of a fresh one with the default catalog.
    pub fn products(mut self, products: ProductStandIn) -> Self {
        self.products = Some(products);
        self
    }

    /// For a test about the SQLite file itself (backups, file modes, WAL): it runs on
    /// SQLite whatever `TEST_BACKEND` says.
    pub fn sqlite_only(mut self) -> Self {
        self.sqlite_only = true;
        self
    }

    /// For a test about PostgreSQL itself (several instances, a lost connection): it runs
    /// on PostgreSQL whatever `TEST_BACKEND` says. Such a test first asks
    /// [`require_postgres`](super::require_postgres), which fails it in CI without one.
    pub fn postgres_only(mut self) -> Self {
        self.postgres_only = true;
        self
    }

    /// A second instance on `app`'s PostgreSQL database, as several instances behind one
    /// load balancer run. `app` owns the database (it is dropped with `app`); this one's
    /// own settings (queue, STORE_ID, …) are given as usual.
    pub fn on_database_of(mut self, app: &TestApp) -> Self {
        match app.database() {
            TestDatabase::Postgres(db) => self.shared = Some(TestDatabase::Postgres(db.shared())),
            TestDatabase::Sqlite(_) => {
                panic!(
                    "instances share a PostgreSQL database: build the first with .postgres_only()"
                )
            }
        }
        self
    }

    /// The service reaches PostgreSQL through 127.0.0.1:`port` (a proxy the test controls)
    /// instead of 5432; the test's own queries still go straight to the server.
    pub fn database_through(mut self, port: u16) -> Self {
        self.database_port = Some(port);
        self
    }

    pub fn spawn(self) -> TestApp {
        let dir = temp_dir();
        let products = self
            .products
            .unwrap_or_else(ProductStandIn::with_default_catalog);
        let backend = if self.sqlite_only {
            Backend::Sqlite
        } else if self.postgres_only {
            Backend::Postgres
        } else {
            Backend::from_env()
        };
        let database = match self.shared {
            Some(database) => database,
            None => TestDatabase::create(backend, dir.path()),
        };
        let url = match (&database, self.database_port) {
            (TestDatabase::Postgres(db), Some(port)) => db.url_through(port),
            (TestDatabase::Sqlite(_), Some(_)) => panic!("a proxy in front of SQLite?"),
            (_, None) => database.url(),
        };
        let mut env = BTreeMap::new();
        env.insert("HOST".to_string(), "127.0.0.1".to_string());
        env.insert("DATABASE_URL".to_string(), url);
        env.insert("PRODUCT_SERVICE_URL".to_string(), products.url());
        env.insert("RABBITMQ_HOST".to_string(), "127.0.0.1".to_string());
        // Nothing listens on port 1: the relay keeps retrying in the background.
        env.insert("RABBITMQ_PORT".to_string(), "1".to_string());
        env.insert(
            "RABBITMQ_QUEUE".to_string(),
            format!("test-{}", unique_suffix()),
        );
        env.insert("STORE_ID".to_string(), "test-store".to_string());
        env.insert("RUST_LOG".to_string(), "warn".to_string());
        for (k, v) in self.env {
            env.insert(k, v);
        }
        let mut app = TestApp {
            products,
            port: 0,
            agent: new_agent(),
            process: None,
            env,
            database,
            dir,
        };
        app.start();
        app
    }
}

pub struct TestApp {
    pub products: ProductStandIn,
    port: u16,
    agent: ureq::Agent,
    process: Option<ChildGuard>,
    env: BTreeMap<String, String>,
    // After the process (killed first, in drop), before the folder it may live in.
    database: TestDatabase,
    // Last, so the directory goes only after the process is gone.
    dir: TempDir,
}

impl TestApp {
    pub fn builder() -> AppBuilder {
        AppBuilder {
            env: Vec::new(),
            products: None,
            sqlite_only: false,
            postgres_only: false,
            shared: None,
            database_port: None,
        }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// A setting the service was started with.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    /// The client the endpoint methods send with (kept-alive, 30 s timeout).
    pub(super) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// Everything the service wrote to stderr, over all its starts.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Waits up to `within` for `text` in the service's log (over all its starts); panics
    /// saying `missing`, with the log, if it does not come.
    #[track_caller]
    pub fn wait_for_log(&self, text: &str, within: Duration, missing: &str) {
        assert!(
            super::wait_until(within, || self.stderr().contains(text)),
            "{missing}:\n{}",
            self.stderr()
        );
    }

    /// SIGKILL: no chance to clean up, as in a power cut.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Kills the process and starts a new one with the same settings on the same database.
    pub fn restart(&mut self) {
        self.kill();
        self.agent = new_agent();
        self.start();
    }

    /// Restarts on the same database with one setting changed.
    pub fn restart_with_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_string(), value.to_string());
        self.restart();
    }

    /// The running service process's id, if there is one.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildGuard::pid)
    }

    /// Sends `signal` ("TERM", "INT", …) to the service process with `kill -<signal> <pid>`.
    pub fn signal(&self, signal: &str) {
        self.process
            .as_ref()
            .expect("the service is not running")
            .signal(signal);
    }

    /// Waits up to `timeout` for the service process to exit on its own. Returns its exit
    /// status (the process is then forgotten, so `restart()` starts a new one), or `None`
    /// if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.process.as_mut()?.wait_exit(timeout)?;
        self.process = None;
        Some(status)
    }

    fn start(&mut self) {
        let mut last_failure = String::new();
        // A port picked by binding :0 can be taken by another test before the service
        // binds it; then try another one.
        for _ in 0..5 {
            self.port = free_port();
            let stderr = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("stderr.log"))
                .expect("open stderr.log");
            let stdout = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("stdout.log"))
                .expect("open stdout.log");
            let process = self.process.insert(ChildGuard::spawn(
                clean_command(self.dir.path())
                    .envs(&self.env)
                    .env("PORT", self.port.to_string())
                    .stdout(Stdio::from(stdout))
                    .stderr(Stdio::from(stderr)),
            ));
            match wait_healthy(process, self.port) {
                Ok(()) => return,
                Err(failure) => {
                    self.kill();
                    let stderr = self.stderr();
                    let port_taken = stderr.contains("in use") || stderr.contains("AddrInUse");
                    last_failure = failure;
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        panic!(
            "order-service did not become healthy ({:?}, DATABASE_URL={}): {last_failure}\n--- stderr ---\n{}",
            self.backend(),
            self.database.url(),
            self.stderr()
        );
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- order-service stderr ({}) ---\n{}",
                self.dir.path().display(),
                self.stderr()
            );
        }
    }
}

fn new_agent() -> ureq::Agent {
    // A hung service fails the test instead of hanging the suite.
    agent(Duration::from_secs(30))
}
