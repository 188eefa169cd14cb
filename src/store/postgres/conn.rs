//! One PostgreSQL connection that reconnects after it was lost, with its prepared
//! statements. A lost server answers `StoreError` (a 503 upstream) until it is back; no
//! restart is needed. Every wait on the server is timed (watchdog.rs).

use super::watchdog::{Watchdog, Watched};
use crate::store::StoreError;
use postgres::types::ToSql;
use postgres::{Client, Row, SimpleQueryMessage, Statement};
use std::collections::HashMap;
use std::sync::Arc;

/// A connected session.
struct Session {
    // Declared first, so dropped first: the watchdog forgets the socket before it closes.
    watched: Watched,
    client: Client,
}

pub struct Conn {
    config: postgres::Config,
    dog: Arc<Watchdog>,
    /// Whether the watchdog times its statements (all but maintenance sessions').
    bounded: bool,
    session: Option<Session>,
    statements: HashMap<String, Statement>,
    /// Counts connects: a session-level lock (the relay's) is gone with its session.
    generation: u64,
    /// Inside a transaction: a lost connection is then an error, never a new one (whose
    /// statements would run outside the transaction).
    in_transaction: bool,
    /// Run on every new session before its first statement (session settings).
    setup: Option<String>,
    /// A statement failed on this session since the last `take_failure`.
    failure: bool,
    /// The last statement's session was ended by the watchdog.
    cut: bool,
}

impl Conn {
    /// A connection that is made on first use, with `setup` (session settings; may be
    /// empty) run on every session it makes, the later ones too; `bounded`: its waits on
    /// the server are timed by `dog`.
    pub fn with_setup(
        config: postgres::Config,
        dog: Arc<Watchdog>,
        bounded: bool,
        setup: String,
    ) -> Conn {
        Conn {
            config,
            dog,
            bounded,
            session: None,
            statements: HashMap::new(),
            generation: 0,
            in_transaction: false,
            setup: (!setup.is_empty()).then_some(setup),
            failure: false,
            cut: false,
        }
    }

    /// This connection, connected now, so that a wrong URL or an absent server shows at
    /// start-up.
    pub fn connected(mut self) -> Result<Conn, StoreError> {
        self.session()?;
        Ok(self)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the session is up: not lost, nor closed by the server.
    pub fn is_open(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.client.is_closed())
    }

    fn session(&mut self) -> Result<&mut Session, StoreError> {
        if self.session.as_ref().is_some_and(|s| s.client.is_closed()) {
            self.session = None;
        }
        if self.session.is_none() {
            if self.in_transaction {
                return Err(StoreError::Unavailable(
                    "the database connection was lost in a transaction".into(),
                ));
            }
            let (mut client, watched) = self.dog.connect(&self.config, self.bounded)?;
            if let Some(setup) = &self.setup {
                let done = watched.waiting(|| client.batch_execute(setup));
                done.map_err(StoreError::from)?;
            }
            self.statements.clear();
            self.generation += 1;
            self.session = Some(Session { watched, client });
        }
        Ok(self.session.as_mut().expect("connected above"))
    }

    /// Runs `call` on the session, the wait for its answer timed.
    fn on_server<T>(
        &mut self,
        call: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let session = self.session()?;
        let result = session.watched.waiting(|| call(&mut session.client));
        result.map_err(|e| self.failed(e))
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(st) = self.statements.get(sql) {
            if self.is_open() {
                return Ok(st.clone());
            }
        }
        let st = self.on_server(|client| client.prepare(sql))?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Forgets a connection that is gone, so the next use makes a new one.
    fn failed(&mut self, e: postgres::Error) -> StoreError {
        self.cut = self.session.as_ref().is_some_and(|s| s.watched.was_cut());
        if self.cut || !self.is_open() {
            self.session = None;
        }
        self.failure = true;
        if self.cut {
            return StoreError::Unavailable(format!(
                "no answer within {} s",
                self.dog.answer_timeout().as_secs()
            ));
        }
        StoreError::from(e)
    }

    /// Whether a statement failed on the session since the last call.
    pub fn take_failure(&mut self) -> bool {
        std::mem::take(&mut self.failure)
    }

    /// Runs `op`, and once more on a new connection if it found this one gone outside a
    /// transaction. A connection that died while idle (the server restarted, the network
    /// dropped) is only noticed when next used: without a second try, each of the pool's
    /// connections would fail one request after the server is back. Only statements that
    /// may run twice come here: reads outside a transaction, and a transaction's start
    /// (a transaction cut short commits nothing). A commit never does. Nor does a
    /// statement the server gave no answer to in time: it would wait as long again.
    fn again_if_lost<T>(
        &mut self,
        mut op: impl FnMut(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let was_connected = self.session.is_some();
        self.cut = false;
        match op(self) {
            Err(e)
                if was_connected && self.session.is_none() && !self.in_transaction && !self.cut =>
            {
                log::info!("database: the connection was lost ({e}); connecting again");
                op(self)
            }
            done => done,
        }
    }

    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.again_if_lost(|conn| {
            let st = conn.statement(sql)?;
            conn.on_server(|client| client.query(&st, params))
        })
    }

    pub fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        self.again_if_lost(|conn| {
            let st = conn.statement(sql)?;
            conn.on_server(|client| client.query_opt(&st, params))
        })
    }

    pub fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        self.again_if_lost(|conn| {
            let st = conn.statement(sql)?;
            conn.on_server(|client| client.query_one(&st, params))
        })
    }

    pub fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let st = self.statement(sql)?;
        self.on_server(|client| client.execute(&st, params))
    }

    pub fn begin(&mut self) -> Result<(), StoreError> {
        self.again_if_lost(|conn| conn.batch("BEGIN"))?;
        self.in_transaction = true;
        Ok(())
    }

    /// Begins a transaction with `sql` (no parameters) as its first statement, in one
    /// round trip; the first row's values, which must be integers.
    pub fn begin_with(&mut self, sql: &str) -> Result<Vec<i64>, StoreError> {
        let text = format!("BEGIN; {sql}");
        let messages =
            self.again_if_lost(|conn| conn.on_server(|client| client.simple_query(&text)))?;
        self.in_transaction = true;
        let row = messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .ok_or_else(|| StoreError::Unavailable(format!("no row from {sql}")))?;
        (0..row.len())
            .map(|i| {
                row.get(i)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| StoreError::Unavailable(format!("not an integer from {sql}")))
            })
            .collect()
    }

    pub fn commit(&mut self) -> Result<(), StoreError> {
        let done = self.batch("COMMIT");
        self.in_transaction = false;
        done
    }

    /// Ends the transaction, keeping nothing; a lost connection ended it already.
    pub fn rollback(&mut self) {
        if self.is_open() {
            if let Err(e) = self.batch("ROLLBACK") {
                log::warn!("database: rollback failed: {e}");
            }
        }
        self.in_transaction = false;
    }

    /// Statements without parameters (transaction control, DDL), in one round trip.
    pub fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.on_server(|client| client.batch_execute(sql))
    }

    /// Makes sure the session is alive (an empty statement), connecting again once if it
    /// was lost while idle.
    pub fn check(&mut self) -> Result<(), StoreError> {
        self.again_if_lost(|conn| conn.batch(""))
    }

    /// The client, for refinery's migrations and an import's copy: not timed.
    pub fn raw(&mut self) -> Result<&mut Client, StoreError> {
        Ok(&mut self.session()?.client)
    }
}
