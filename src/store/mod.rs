//! Storage, behind a seam: what a transaction may do (`Tx`) and what may be read
//! (`Reads`), the group-commit writer that runs jobs over `Tx` (engine-neutral), and the
//! SQLite engine. The order rules (`crate::orders`) and the relay write through `Tx`;
//! only this module writes SQL.

/// The migrations, embedded once for both engines: SQLite runs them all, PostgreSQL all
/// but SQLite's own (`sqlite_only`).
mod embedded {
    refinery::embed_migrations!("migrations");
}

mod fill;
mod lines;
mod postgres;
mod records;
mod sqlite;
mod writer;

pub use fill::{spawn as spawn_lines_fill, FillHandle};
#[cfg(test)]
pub(crate) use postgres::test_db::TestDb;
pub use postgres::ImportReport;
pub(crate) use records::EventHead;
pub use records::{
    BlockedEvent, CachedProduct, CatalogStats, IdempotencyRecord, OrderList, OutboxRow,
    OutboxStats, SnapshotProduct,
};
pub use sqlite::{
    backup, for_the_writer, migrate, open_read, open_write, BackupReport, Reader, SqliteEngine,
};
pub use writer::{spawn as spawn_writer, Engine, Pending, WriterHandle};

use crate::config::{Database, PostgresPool};
use crate::domain::{Order, OrderId, Page, ProductId, Status, UserId};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// What a get does with the order it read, on whichever thread read it.
pub type Then = Box<dyn FnOnce(Result<Option<Order>, StoreError>) + Send>;

/// Opens a read session of a worker's own.
pub type OpenReads = Arc<dyn Fn() -> Result<Box<dyn Reads>, StoreError> + Send + Sync>;

/// Hands get `id` to a query by id that runs now and will read it next (PostgreSQL's
/// gets combined), if one does; a thread without a session of its own asks this way.
/// `then` is called, to make the get's `Then`, only if the get joins.
pub type JoinGet = Arc<dyn Fn(OrderId, &mut dyn FnMut() -> Then) -> bool + Send + Sync>;

/// A database opened and migrated, ready for the writer and the readers.
pub struct Opened {
    /// One per writer thread.
    pub engines: Vec<Box<dyn Engine>>,
    pub open_reads: OpenReads,
    /// Where gets combine (PostgreSQL); none where each is read on its worker's session.
    pub join_get: Option<JoinGet>,
    /// The migrations this start applied.
    pub applied: Vec<String>,
}

/// Opens `database`, applies the migrations it has not seen, and connects the writer.
pub fn open(database: &Database, pool: &PostgresPool) -> Result<Opened, String> {
    let named = |e: &dyn fmt::Display| format!("database {}: {e}", database.describe());
    match database {
        Database::Sqlite(path) => {
            let mut conn = open_write(path).map_err(|e| named(&e))?;
            let applied = migrate(&mut conn).map_err(|e| named(&e))?;
            let engine = SqliteEngine::new(conn).map_err(|e| named(&e))?;
            let path = path.clone();
            Ok(Opened {
                engines: vec![Box::new(engine)],
                open_reads: Arc::new(move || Ok(Box::new(Reader::open(&path)?))),
                join_get: None,
                applied,
            })
        }
        Database::Postgres(url) => {
            let connector = postgres::Connector::new(url.expose(), pool).map_err(|e| named(&e))?;
            let (applied, engines) = postgres::open(&connector, pool).map_err(|e| named(&e))?;
            let join_get = connector.join_get();
            Ok(Opened {
                engines: engines
                    .into_iter()
                    .map(|e| Box::new(e) as Box<dyn Engine>)
                    .collect(),
                open_reads: Arc::new(move || Ok(Box::new(postgres::reader(&connector)))),
                join_get: Some(join_get),
                applied,
            })
        }
    }
}

/// Whether the migration named `name` (what follows `V<n>__`) is SQLite's alone: a table
/// layout with no spelling on PostgreSQL (V9), or an index PostgreSQL does without
/// (V10). Such migrations change no column; they are named `sqlite_`, and PostgreSQL
/// leaves them out.
pub fn sqlite_only(name: &str) -> bool {
    name.starts_with("sqlite_")
}

/// Applies the migrations `database` has not seen; returns their names.
pub fn migrate_database(database: &Database, pool: &PostgresPool) -> Result<Vec<String>, String> {
    let named = |e: &dyn fmt::Display| format!("database {}: {e}", database.describe());
    match database {
        Database::Sqlite(path) => {
            let mut conn = open_write(path).map_err(|e| named(&e))?;
            migrate(&mut conn).map_err(|e| named(&e))
        }
        Database::Postgres(url) => {
            let connector = postgres::Connector::new(url.expose(), pool).map_err(|e| named(&e))?;
            postgres::migrate(&connector).map_err(|e| named(&e))
        }
    }
}

/// Copies the SQLite store at `file` (opened read-only, read in one read transaction)
/// into the PostgreSQL database `target`, after migrating it: every order, item, outbox
/// row, idempotency key and cached product with its id, in one transaction, the id
/// sequences moved past the copied ids. Refuses a target that holds any of them.
pub fn import_sqlite(
    file: &Path,
    target: &Database,
    pool: &PostgresPool,
) -> Result<ImportReport, String> {
    let Database::Postgres(url) = target else {
        return Err(format!(
            "import-sqlite copies into PostgreSQL; DATABASE_URL names the SQLite file {}",
            target.describe()
        ));
    };
    if !file.is_file() {
        return Err(format!("no SQLite database at {}", file.display()));
    }
    migrate_database(target, pool)?;
    let named = |e: &dyn fmt::Display| format!("database {}: {e}", target.describe());
    let connector = postgres::Connector::new(url.expose(), pool).map_err(|e| named(&e))?;
    postgres::import_sqlite(file, &connector, &target.describe())
}

/// For a command that works on a store: an SQLite file that is not there is refused, not
/// made (a setting left out would point at `./data/orders.db` in another folder).
pub fn require_existing(database: &Database) -> Result<(), String> {
    match database {
        Database::Sqlite(path) if !path.exists() => {
            Err(format!("no database at {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// A read session on an existing database, for the command line.
pub fn reads(database: &Database, pool: &PostgresPool) -> Result<Box<dyn Reads>, String> {
    let named = |e: &dyn fmt::Display| format!("database {}: {e}", database.describe());
    require_existing(database)?;
    match database {
        Database::Sqlite(path) => Ok(Box::new(Reader::open(path).map_err(|e| named(&e))?)),
        Database::Postgres(url) => {
            let connector = postgres::Connector::new(url.expose(), pool).map_err(|e| named(&e))?;
            Ok(Box::new(postgres::reader(&connector)))
        }
    }
}

/// Batches marked within this long (µs) after a mark was made move that mark instead of
/// adding one (V12): `outbox_marks` grows by a row a second at most, however often the
/// relay passes, and an event may count as published up to that much before it was.
pub(crate) const MARK_SPAN: i64 = 1_000_000;

/// What the order rules and the relay may do within one transaction. Each call is one
/// statement (or one small group); the writer decides where transactions begin and end.
pub trait Tx {
    /// The id the next order gets. `answered`: the create stores an idempotency answer,
    /// whose outcome it reads before its commit.
    fn next_order_id(&mut self, answered: bool) -> Result<OrderId, StoreError>;
    /// Inserts an order with its items, and counts it to its user.
    fn insert_order(&mut self, order: &Order) -> Result<(), StoreError>;
    /// The order, safe from concurrent change until the transaction ends.
    fn order_for_update(&mut self, id: OrderId) -> Result<Option<Order>, StoreError>;
    fn update_status(&mut self, id: OrderId, status: Status, at: i64) -> Result<(), StoreError>;
    /// Writes the event with the next outbox id (its `sequence`).
    fn insert_event(&mut self, event: &NewEvent<'_>) -> Result<(), StoreError>;
    fn idempotency(
        &mut self,
        user: &UserId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Claims `key` for `request` (a row without an answer) unless it has a row already;
    /// whether it did. Across instances the key's uniqueness decides who claims it.
    fn claim_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        request: &str,
        at: i64,
    ) -> Result<bool, StoreError>;
    /// Takes over a claim made before `stale_before` that never got its answer (its
    /// holder died); whether it did.
    fn retake_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        request: &str,
        at: i64,
        stale_before: i64,
    ) -> Result<bool, StoreError>;
    /// Stores the answer of the claim made (or taken over) at `claimed_at`; whether that
    /// claim was still there to answer. A claim taken over since is another request's.
    fn answer_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        claimed_at: i64,
        status: u16,
        body: &str,
    ) -> Result<bool, StoreError>;
    /// Deletes the claim made at `claimed_at` if it got no answer: the key may be used
    /// again. A claim taken over since is left to its new holder.
    fn release_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        claimed_at: i64,
    ) -> Result<(), StoreError>;
    /// Keeps a product-service answer unless the cache holds a newer one.
    fn upsert_product(&mut self, product: &CachedProduct) -> Result<(), StoreError>;
    /// `upsert_product` for each, in their order (an engine may take them in one go).
    fn upsert_products(&mut self, products: &[CachedProduct]) -> Result<(), StoreError> {
        products.iter().try_for_each(|p| self.upsert_product(p))
    }
    /// Marks a product gone (V11): the service answered at `answered_at` that it does not
    /// know it. Unless the cache holds an answer newer than that one; a gone row is
    /// written where there was none, so that an older answer committing later meets it.
    fn forget_product(&mut self, id: ProductId, answered_at: i64) -> Result<(), StoreError>;
    /// Marks pending events published, `ids` being the confirmed run from the oldest
    /// pending one: the watermark (V12) moves to the last of them. Returns how many were.
    fn mark_published(&mut self, ids: &[i64], at: i64) -> Result<usize, StoreError>;
    fn mark_blocked(&mut self, id: i64, since: i64) -> Result<usize, StoreError>;
    /// Deletes at most `limit` events published before `before`, never the newest row.
    fn prune_outbox(&mut self, before: i64, limit: usize) -> Result<usize, StoreError>;
    fn prune_idempotency(&mut self, before: i64, limit: usize) -> Result<usize, StoreError>;
    /// Deletes at most `limit` snapshot rows of products gone before `before`.
    fn prune_gone_products(&mut self, before: i64, limit: usize) -> Result<usize, StoreError>;
    /// Writes `lines` on at most `limit` of the orders without them (V8) whose id is above
    /// `after`, lowest ids first, from their `order_items`: the last id it took and how
    /// many it filled, or `None` when no such order is left.
    fn fill_lines(&mut self, after: i64, limit: usize) -> Result<Option<(i64, usize)>, StoreError>;
    /// A real write, so that a full disk or a read-only database shows in `/ready`.
    fn heartbeat(&mut self, at: i64) -> Result<(), StoreError>;
    /// The snapshot rows of `ids` (those it has), each with what this store sold of it
    /// since it was fetched; safe from concurrent change until the transaction ends, so
    /// two offline orders never both take the last units.
    fn snapshot_for_update(
        &mut self,
        ids: &[ProductId],
    ) -> Result<Vec<SnapshotProduct>, StoreError>;
    /// Adds every line of `order` to the stock ledger, sold at `at`.
    fn record_sales(&mut self, order: &Order, at: i64) -> Result<(), StoreError>;
    /// Ends a complete refresh that started at `started`: with `complete_list`, drops the
    /// rows it did not see (gone from the catalog); drops the ledger entries that no
    /// longer count; records the refresh.
    fn finish_refresh(
        &mut self,
        started: i64,
        products: i64,
        source: &str,
        complete_list: bool,
    ) -> Result<(), StoreError>;
}

/// What may be read, on a connection of the reader's own (each HTTP worker and the relay
/// have one).
pub trait Reads: Send {
    fn order(&self, id: OrderId) -> Result<Option<Order>, StoreError>;
    /// Order `id`, given to `then`: here and now, or later on another reader's thread.
    fn order_then(&self, id: OrderId, then: Then) {
        then(self.order(id))
    }
    /// A page of a user's orders, newest first, and how many they have in all.
    fn orders_of(&self, user: &UserId, page: Page, per_page: u32) -> Result<OrderList, StoreError>;
    fn cached_products(&self, ids: &[ProductId]) -> Result<Vec<CachedProduct>, StoreError>;
    /// The snapshot's size and age; `fresh` counts rows fetched at or after `fresh_after`.
    fn catalog_stats(&self, fresh_after: i64) -> Result<CatalogStats, StoreError>;
    fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;
    /// Published rows still kept: a scan, for `outbox status`, never for a probe.
    fn published_events(&self) -> Result<i64, StoreError>;
    /// Unpublished rows with ids above `after`, oldest first.
    fn pending_events(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError>;
    /// The pending event the broker keeps refusing, if the relay declared one.
    fn blocked_event(&self) -> Result<Option<BlockedEvent>, StoreError>;
    /// Whether this reader's instance is the one that relays (on PostgreSQL, several
    /// instances share the outbox and one publishes at a time); asked before each pass.
    fn lead_relay(&self) -> Result<Lead, StoreError> {
        Ok(Lead::Held)
    }
}

/// Who relays, as `Reads::lead_relay` finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// This instance, without a break since it was last asked.
    Held,
    /// This instance, from now: another may have relayed since it last did.
    Taken,
    /// Another instance.
    Elsewhere,
}

/// An outbox row about to be written. Its id is the store's to take (on PostgreSQL, a
/// create's is taken by the statement that writes the row), so its payload comes cut where
/// the id goes.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub order_id: OrderId,
    pub event_type: &'a str,
    pub payload: &'a EventPayload,
    pub at: i64,
}

/// An event's JSON without its outbox id, which it holds twice: the text before, between
/// and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPayload {
    pub head: String,
    pub middle: String,
    pub tail: String,
}

impl EventPayload {
    pub fn with_id(&self, id: i64) -> String {
        format!("{}{id}{}{id}{}", self.head, self.middle, self.tail)
    }
}

/// Storage failed: the engine reported an error, or the writer is gone or did not answer.
#[derive(Debug)]
pub enum StoreError {
    /// The writer is gone, did not answer in time, or the transaction did not commit.
    Unavailable(String),
    Db(rusqlite::Error),
    Postgres(::postgres::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "database unavailable: {why}"),
            StoreError::Db(e) => write!(f, "database: {e}"),
            // The driver's own text for a server error is just "db error".
            StoreError::Postgres(e) => match e.as_db_error() {
                Some(db) => write!(f, "database: {}: {}", db.code().code(), db.message()),
                None => write!(f, "database: {e}"),
            },
        }
    }
}

impl std::error::Error for StoreError {}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> Self {
        StoreError::Postgres(e)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e)
    }
}

#[cfg(test)]
mod tests {
    /// Each migration's checksum as released. refinery refuses to start on a database
    /// whose applied migration's text differs from the binary's (its name, version and
    /// whole SQL, comments included): an edit of a released migration stops every store
    /// that applied it. A change of schema goes in a new migration, whose checksum is
    /// added here once it is released.
    const RELEASED: &[(i64, &str, u64)] = &[
        (1, "initial", 7983703465362211119),
        (2, "heartbeat", 9969261734700208379),
        (3, "prune_indexes", 13331936227959050701),
        (4, "blocked_event", 10719571066963221733),
        (5, "outbox_tx", 17894757894125338782),
        (6, "order_counts", 6675619735946476664),
        (7, "catalog", 15454073805541161615),
        (8, "order_lines", 3743126637668977483),
        (9, "sqlite_row_keys", 15945681522886386728),
        (10, "sqlite_list_pages", 17794689251288278281),
        (11, "product_gone", 14314268959007337005),
        (12, "outbox_marks", 12651674108758168158),
    ];

    #[test]
    fn a_released_migration_never_changes() {
        let runner = super::embedded::migrations::runner();
        let now: Vec<(i64, String, u64)> = runner
            .get_migrations()
            .iter()
            .map(|m| (i64::from(m.version()), m.name().to_string(), m.checksum()))
            .collect();
        for (version, name, checksum) in RELEASED {
            let found = now.iter().find(|(v, _, _)| v == version);
            assert_eq!(
                found.map(|(_, n, c)| (n.as_str(), *c)),
                Some((*name, *checksum)),
                "V{version}__{name} was released with this text: a change of schema \
                 goes in a new migration"
            );
        }
        let unlisted: Vec<String> = now
            .iter()
            .filter(|(v, _, _)| !RELEASED.iter().any(|(r, _, _)| r == v))
            .map(|(v, n, c)| format!("({v}, {n:?}, {c}),"))
            .collect();
        assert!(
            unlisted.is_empty(),
            "migrations without their released checksum here: {unlisted:?}"
        );
    }
}
