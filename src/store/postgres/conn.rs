//! One PostgreSQL connection that reconnects after it was lost, with its prepared
//! statements. A lost server answers `StoreError` (a 503 upstream) until it is back; no
//! restart is needed.

use crate::store::StoreError;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, SimpleQueryMessage, Statement};
use std::collections::HashMap;

pub struct Conn {
    config: postgres::Config,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    /// Counts connects: a session-level lock (the relay's) is gone with its session.
    generation: u64,
    /// Inside a transaction: a lost connection is then an error, never a new one (whose
    /// statements would run outside the transaction).
    in_transaction: bool,
    /// Run on every new session before its first statement (session settings).
    setup: Option<&'static str>,
    /// A statement failed on this session since the last `take_failure`.
    failure: bool,
}

impl Conn {
    /// A connection that is made on first use, with `setup` (session settings; may be
    /// empty) run on every session it makes, the later ones too.
    pub fn with_setup(config: postgres::Config, setup: &'static str) -> Conn {
        Conn {
            config,
            client: None,
            statements: HashMap::new(),
            generation: 0,
            in_transaction: false,
            setup: (!setup.is_empty()).then_some(setup),
            failure: false,
        }
    }

    /// The same, connected now, so that a wrong URL or an absent server shows at start-up.
    pub fn connected(config: postgres::Config, setup: &'static str) -> Result<Conn, StoreError> {
        let mut conn = Conn::with_setup(config, setup);
        conn.client()?;
        Ok(conn)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the session is up: not lost, nor closed by the server.
    pub fn is_open(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            if self.in_transaction {
                return Err(StoreError::Unavailable(
                    "the database connection was lost in a transaction".into(),
                ));
            }
            let mut client = self.config.connect(NoTls).map_err(StoreError::from)?;
            if let Some(setup) = self.setup {
                client.batch_execute(setup).map_err(StoreError::from)?;
            }
            self.statements.clear();
            self.generation += 1;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(st) = self.statements.get(sql) {
            if self.is_open() {
                return Ok(st.clone());
            }
        }
        let prepared = self.client()?.prepare(sql);
        let st = prepared.map_err(|e| self.failed(e))?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Forgets a connection that is gone, so the next use makes a new one.
    fn failed(&mut self, e: postgres::Error) -> StoreError {
        if !self.is_open() {
            self.client = None;
        }
        self.failure = true;
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
    /// (a transaction cut short commits nothing). A commit never does.
    fn again_if_lost<T>(
        &mut self,
        mut op: impl FnMut(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let was_connected = self.client.is_some();
        match op(self) {
            Err(e) if was_connected && self.client.is_none() && !self.in_transaction => {
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
            let result = conn.client()?.query(&st, params);
            result.map_err(|e| conn.failed(e))
        })
    }

    pub fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        self.again_if_lost(|conn| {
            let st = conn.statement(sql)?;
            let result = conn.client()?.query_opt(&st, params);
            result.map_err(|e| conn.failed(e))
        })
    }

    pub fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        self.again_if_lost(|conn| {
            let st = conn.statement(sql)?;
            let result = conn.client()?.query_one(&st, params);
            result.map_err(|e| conn.failed(e))
        })
    }

    pub fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let st = self.statement(sql)?;
        let result = self.client()?.execute(&st, params);
        result.map_err(|e| self.failed(e))
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
        let messages = self.again_if_lost(|conn| {
            let result = conn.client()?.simple_query(&text);
            result.map_err(|e| conn.failed(e))
        })?;
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
        let result = self.client()?.batch_execute(sql);
        result.map_err(|e| self.failed(e))
    }

    /// Makes sure the session is alive (an empty statement), connecting again once if it
    /// was lost while idle.
    pub fn check(&mut self) -> Result<(), StoreError> {
        self.again_if_lost(|conn| conn.batch(""))
    }

    /// The client, for refinery's migrations.
    pub fn raw(&mut self) -> Result<&mut Client, StoreError> {
        self.client()
    }
}
