//! The one SQLite write connection as the writer drives it, and `Tx` over it.
//!
//! Ids come from counters held here rather than from the database: this connection is
//! the only writer of the file, so `MAX(id) + 1` read once at start (and again after a
//! failed transaction) is exact, and costs no statement per order.

use super::{outbox, reads, writes};
use crate::domain::{Order, OrderId, ProductId, Status, UserId};
use crate::store::{
    CachedProduct, Engine, IdempotencyRecord, NewEvent, SnapshotProduct, StoreError, Tx,
};
use rusqlite::Connection;

pub struct SqliteEngine {
    conn: Connection,
    next_order_id: i64,
    next_event_id: i64,
    /// The event counter when the transaction began.
    events_at_begin: i64,
    events_at_commit: i64,
}

impl SqliteEngine {
    /// Takes the write connection (from `open_write`, migrated).
    pub fn new(conn: Connection) -> Result<SqliteEngine, StoreError> {
        super::for_the_writer(&conn)?;
        let mut engine = SqliteEngine {
            conn,
            next_order_id: 0,
            next_event_id: 0,
            events_at_begin: 0,
            events_at_commit: 0,
        };
        engine.reload_ids()?;
        Ok(engine)
    }

    fn reload_ids(&mut self) -> rusqlite::Result<()> {
        self.next_order_id = writes::max_order_id(&self.conn)? + 1;
        self.next_event_id = outbox::max_id(&self.conn)? + 1;
        self.events_at_commit = self.next_event_id;
        Ok(())
    }

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }
}

/// Orders one transaction may hold: one fsync for up to this many.
const MAX_BATCH: usize = 128;

impl Engine for SqliteEngine {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.events_at_begin = self.next_event_id;
        // IMMEDIATE: the write lock now, not at the first write, so a batch never fails
        // half-way on a lock.
        self.exec("BEGIN IMMEDIATE")
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.exec("SAVEPOINT job")
    }

    fn release(&mut self) -> Result<(), StoreError> {
        self.exec("RELEASE job")
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.exec("ROLLBACK TO job")?;
        self.exec("RELEASE job")
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.exec("COMMIT")?;
        self.events_at_commit = self.next_event_id;
        Ok(())
    }

    fn rollback(&mut self) {
        // The ids the job took stay taken: a gap, never a reuse.
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            log::error!("writer: cannot roll back: {e}");
            self.abandon();
        }
    }

    fn abandon(&mut self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                log::error!("writer: cannot roll back: {e}");
            }
        }
        if let Err(e) = self.reload_ids() {
            log::error!("writer: cannot read ids back: {e}");
        }
    }

    fn tx(&mut self) -> &mut dyn Tx {
        self
    }

    fn wrote_events(&mut self) -> bool {
        self.events_at_commit != self.events_at_begin
    }

    fn changes(&mut self) -> Option<u64> {
        Some(self.conn.total_changes())
    }

    fn in_transaction(&mut self) -> bool {
        !self.conn.is_autocommit()
    }
}

impl Tx for SqliteEngine {
    fn next_order_id(&mut self, _answered: bool) -> Result<OrderId, StoreError> {
        let id = self.next_order_id;
        self.next_order_id += 1;
        Ok(OrderId::from_trusted(id))
    }

    fn insert_order(&mut self, order: &Order) -> Result<(), StoreError> {
        Ok(writes::insert_order(&self.conn, order)?)
    }

    fn order_for_update(&mut self, id: OrderId) -> Result<Option<Order>, StoreError> {
        // The transaction holds the database's one write lock: nothing else changes it.
        Ok(reads::load_order(&self.conn, id)?)
    }

    fn update_status(&mut self, id: OrderId, status: Status, at: i64) -> Result<(), StoreError> {
        Ok(writes::update_status(&self.conn, id.get(), status, at)?)
    }

    fn insert_event(&mut self, event: &NewEvent<'_>) -> Result<(), StoreError> {
        let id = self.next_event_id;
        self.next_event_id += 1;
        Ok(outbox::insert(&self.conn, id, event)?)
    }

    fn idempotency(
        &mut self,
        user: &UserId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(reads::load_idempotency(&self.conn, user, key)?)
    }

    fn claim_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        request: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        Ok(writes::claim_idempotency(
            &self.conn, user, key, request, at,
        )?)
    }

    fn retake_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        request: &str,
        at: i64,
        stale_before: i64,
    ) -> Result<bool, StoreError> {
        Ok(writes::retake_idempotency(
            &self.conn,
            user,
            key,
            request,
            at,
            stale_before,
        )?)
    }

    fn answer_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        claimed_at: i64,
        status: u16,
        body: &str,
    ) -> Result<bool, StoreError> {
        Ok(writes::answer_idempotency(
            &self.conn, user, key, claimed_at, status, body,
        )?)
    }

    fn release_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        claimed_at: i64,
    ) -> Result<(), StoreError> {
        Ok(writes::release_idempotency(
            &self.conn, user, key, claimed_at,
        )?)
    }

    fn upsert_product(&mut self, product: &CachedProduct) -> Result<(), StoreError> {
        Ok(writes::upsert_product(&self.conn, product)?)
    }

    fn forget_product(&mut self, id: ProductId, answered_at: i64) -> Result<(), StoreError> {
        Ok(writes::forget_product(&self.conn, id, answered_at)?)
    }

    fn mark_published(&mut self, ids: &[i64], at: i64) -> Result<usize, StoreError> {
        Ok(outbox::mark_published(&self.conn, ids, at)?)
    }

    fn mark_blocked(&mut self, id: i64, since: i64) -> Result<usize, StoreError> {
        Ok(outbox::mark_blocked(&self.conn, id, since)?)
    }

    fn prune_outbox(&mut self, before: i64, limit: usize) -> Result<usize, StoreError> {
        Ok(outbox::prune(&self.conn, before, limit)?)
    }

    fn prune_idempotency(&mut self, before: i64, limit: usize) -> Result<usize, StoreError> {
        Ok(writes::prune_idempotency(&self.conn, before, limit)?)
    }

    fn prune_gone_products(&mut self, before: i64, limit: usize) -> Result<usize, StoreError> {
        Ok(writes::prune_gone_products(&self.conn, before, limit)?)
    }

    fn fill_lines(&mut self, after: i64, limit: usize) -> Result<Option<(i64, usize)>, StoreError> {
        Ok(writes::fill_lines(&self.conn, after, limit)?)
    }

    fn heartbeat(&mut self, at: i64) -> Result<(), StoreError> {
        Ok(writes::heartbeat(&self.conn, at)?)
    }

    fn snapshot_for_update(
        &mut self,
        ids: &[ProductId],
    ) -> Result<Vec<SnapshotProduct>, StoreError> {
        Ok(reads::snapshot(&self.conn, ids)?)
    }

    fn record_sales(&mut self, order: &Order, at: i64) -> Result<(), StoreError> {
        for i in &order.items {
            writes::record_sale(&self.conn, order.id, i.product_id, i.quantity, at)?;
        }
        Ok(())
    }

    fn finish_refresh(
        &mut self,
        started: i64,
        products: i64,
        source: &str,
        complete_list: bool,
    ) -> Result<(), StoreError> {
        Ok(writes::finish_refresh(
            &self.conn,
            started,
            products,
            source,
            complete_list,
        )?)
    }
}

#[cfg(test)]
impl SqliteEngine {
    /// A migrated in-memory database, for the order rules' unit tests.
    pub fn in_memory() -> SqliteEngine {
        let mut conn = Connection::open_in_memory().unwrap();
        super::migrate(&mut conn).unwrap();
        SqliteEngine::new(conn).unwrap()
    }

    /// The events not yet published, oldest first.
    pub fn pending_events(&self) -> Vec<crate::store::OutboxRow> {
        outbox::pending(&self.conn, 0, 1000).unwrap()
    }
}
