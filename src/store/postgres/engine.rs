//! A PostgreSQL write session as the writer drives it, and `Tx` over it.
//!
//! Each session runs one job per transaction (`max_batch` 1): a batch of several would
//! hold the row locks of several orders at once, and two instances batching the same
//! orders in another order would deadlock. Concurrent sessions still share the WAL's
//! flushes, which is PostgreSQL's own group commit. Online creates, which lock no order,
//! are the exception: several that queued are written as one statement (combined.rs).

use super::combined::{self, Combined, Sales};
use super::conn::Conn;
use super::deferred::{Deferred, Param};
use super::reads::{cached_product, load_idempotency, order_of, orders_where};
use crate::domain::{Order, OrderId, ProductId, Status, UserId};
use crate::store::{
    CachedProduct, Engine, IdempotencyRecord, NewEvent, SnapshotProduct, StoreError, Tx, MARK_SPAN,
};

pub struct PgEngine {
    conn: Conn,
    /// This transaction's writes not sent yet: they go out with whatever is sent next.
    deferred: Deferred,
    /// Whether the transaction was begun on the server: `begin` waits for its first
    /// statement, and the event id's query carries the BEGIN.
    open: bool,
    wrote_events: bool,
    /// The event id this transaction took, with the transaction's id (see `take_event`).
    event: Option<(i64, i64)>,
    /// An order id taken with the event id, for the create to come.
    order_id: Option<OrderId>,
    /// Whether an online create is one statement (`insert_event`): this server runs a
    /// statement's main query before the writes in its `WITH` (`main_query_first`).
    one_statement: bool,
    /// Whether this transaction has written anything yet.
    wrote: bool,
    /// Online creates written together, held until the commit (`begin_combined`).
    combined: Option<Combined>,
    /// Order ids taken ahead for online creates (`order_ids`).
    reserved: std::collections::VecDeque<i64>,
}

/// Order ids an online create's session takes ahead in one round trip.
const ORDER_ID_BLOCK: usize = 64;

/// Online creates one statement writes at most: a session's share of the HTTP workers
/// is far fewer.
const MAX_COMBINED: usize = 64;

impl PgEngine {
    /// The connection in this transaction, begun if it was not yet, once the writes held
    /// back went out: what runs next sees them.
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        self.not_combined()?;
        if !self.open {
            self.conn.begin()?;
            self.open = true;
        }
        self.deferred.flush(&mut self.conn)?;
        Ok(&mut self.conn)
    }

    /// Holds back a write to `table` until something else is sent (`conn`).
    fn defer(
        &mut self,
        table: &'static str,
        sql: &str,
        params: Vec<Param>,
    ) -> Result<(), StoreError> {
        self.make_room(&[table])?;
        self.deferred.push(table, sql, params);
        Ok(())
    }

    /// Before writes to `tables` are held back: a write held for one of them goes out
    /// first (one part per table in a statement).
    fn make_room(&mut self, tables: &[&str]) -> Result<(), StoreError> {
        self.not_combined()?;
        self.wrote = true;
        if tables.iter().any(|t| self.deferred.holds(t)) {
            self.conn()?;
        }
        Ok(())
    }

    /// Combined creates write only what `Combined` holds: anything else is a job that
    /// should not have been combined, refused rather than sent outside its statement.
    fn not_combined(&self) -> Result<(), StoreError> {
        match self.combined {
            Some(_) => Err(StoreError::Unavailable(
                "a write that is not an online create, among combined creates".into(),
            )),
            None => Ok(()),
        }
    }

    /// Whether this server runs a statement's main query before the data-modifying parts
    /// of its `WITH` that it does not read: what PostgreSQL's executor does (those run at
    /// the end of the statement), though its documentation leaves the order open. Tried
    /// once at start-up, in a transaction rolled back: the main query looks whether the
    /// transaction has an id yet, which the write in `WITH` would give it. If not, or if
    /// the trial fails, every create is a transaction begun with its event id.
    pub(super) fn main_query_first(&mut self) -> bool {
        let tried = self.conn.begin().and_then(|()| {
            self.conn.query_one(
                "WITH w AS (INSERT INTO order_counts (user_id, orders) VALUES ('', 0)
                   ON CONFLICT (user_id) DO NOTHING)
                 SELECT pg_current_xact_id_if_assigned() IS NULL",
                &[],
            )
        });
        self.conn.rollback();
        let why_not = match tried.map(|row| row.get::<_, bool>(0)) {
            Ok(true) => return true,
            Ok(false) => "this PostgreSQL runs a statement's writes before its main query".into(),
            Err(e) => format!("the trial of a create as one statement failed ({e})"),
        };
        log::warn!("database: {why_not}; creates take a transaction begun with their event id");
        false
    }

    /// `n` order ids for online creates, from the block this session took ahead, the
    /// next block taken (one round trip) when it runs short: before a single create's
    /// transaction, and at the start of one for creates written together (`nextval` is
    /// not undone by a rollback either way).
    /// Taking an id on its own was a round trip per statement, a tenth of PostgreSQL's
    /// time a create. Ids then follow creation time within a session only: nothing
    /// orders by them (lists go by `created_at`, then id), and a block unused when the
    /// process stops is a gap, as a failed create's id is.
    fn order_ids(&mut self, n: usize) -> Result<Vec<i64>, StoreError> {
        if self.reserved.len() < n {
            let take = (n - self.reserved.len()).max(ORDER_ID_BLOCK) as i32;
            let rows = self.conn.query(
                "SELECT nextval('order_ids') FROM generate_series(1, $1)",
                &[&take],
            )?;
            self.reserved
                .extend(rows.iter().map(|r| r.get::<_, i64>(0)));
        }
        if self.reserved.len() < n {
            return Err(StoreError::Unavailable("fewer order ids than asked".into()));
        }
        Ok(self.reserved.drain(..n).collect())
    }

    /// Writes online creates as one statement, or not (`main_query_first`).
    pub(super) fn set_one_statement(&mut self, yes: bool) {
        self.one_statement = yes;
    }

    pub(super) fn new(conn: Conn) -> PgEngine {
        PgEngine {
            conn,
            deferred: Deferred::default(),
            open: false,
            wrote_events: false,
            event: None,
            order_id: None,
            one_statement: false,
            wrote: false,
            combined: None,
            reserved: std::collections::VecDeque::new(),
        }
    }

    /// Takes this transaction's event id, and with it the transaction's own id, under a
    /// lock held for microseconds (`order_service_next_event`, made in `migrate`): event
    /// ids then follow transaction ids, which lets the relay keep the outbox's order
    /// (reads.rs, `pending_events`). It must come before the transaction's first write,
    /// which would assign the transaction's id outside the lock: the calls that lock rows
    /// (`order_for_update`, `snapshot_for_update`) take it first, a create's statement
    /// takes it in its main query (`insert_event`), and a later try is refused loudly, here
    /// and by the function.
    fn take_event(&mut self, also_order_id: bool) -> Result<(), StoreError> {
        self.not_combined()?;
        if self.wrote {
            return Err(StoreError::Unavailable(
                "an event id taken after the transaction's first write".into(),
            ));
        }
        let sql = if also_order_id {
            "SELECT e.id, e.tx, nextval('order_ids') FROM order_service_next_event() e"
        } else {
            "SELECT id, tx FROM order_service_next_event()"
        };
        let row: Vec<i64> = if self.open {
            let row = self.conn()?.query_one(sql, &[])?;
            (0..row.len()).map(|i| row.get(i)).collect()
        } else {
            // Usually a transaction's first statement: the BEGIN goes with it. Open from
            // now on, so that a failure after the BEGIN is rolled back.
            self.open = true;
            self.conn.begin_with(sql)?
        };
        self.event = Some((row[0], row[1]));
        self.order_id = also_order_id.then(|| OrderId::from_trusted(row[2]));
        Ok(())
    }
}

impl Engine for PgEngine {
    fn max_batch(&self) -> usize {
        1
    }

    /// Only where a create is one statement: it takes its event ids in its main query.
    fn combines(&self) -> usize {
        if self.one_statement {
            MAX_COMBINED
        } else {
            0
        }
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.wrote_events = false;
        self.event = None;
        self.order_id = None;
        self.wrote = false;
        self.deferred.clear();
        self.open = false;
        self.combined = None;
        Ok(())
    }

    /// Takes the creates' order ids from the session's block (`order_ids`), as a single
    /// create does.
    fn begin_combined(&mut self, creates: usize) -> Result<(), StoreError> {
        self.begin()?;
        let ids = self.order_ids(creates.min(MAX_COMBINED))?;
        self.combined = Some(Combined::new(ids));
        Ok(())
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        if let Some(c) = &mut self.combined {
            c.next_create();
            return Ok(());
        }
        self.conn()?.batch("SAVEPOINT job")
    }

    fn release(&mut self) -> Result<(), StoreError> {
        if self.combined.is_some() {
            return Ok(());
        }
        self.conn()?.batch("RELEASE SAVEPOINT job")
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        if let Some(c) = &mut self.combined {
            c.undo_create();
            return Ok(());
        }
        // What the job held back was written after its savepoint.
        self.deferred.clear();
        self.conn
            .batch("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if let Some(c) = self.combined.take() {
            // One statement, atomic without a transaction around it.
            self.wrote_events = c.holds_events();
            c.hold(&mut self.deferred);
            return self.deferred.flush(&mut self.conn);
        }
        if !self.open {
            // Nothing was sent: the writes held back, if any, are one statement, atomic
            // without a transaction around it.
            return self.deferred.flush(&mut self.conn);
        }
        // A failed write leaves the transaction open: the writer's rollback ends it.
        self.deferred.flush(&mut self.conn)?;
        self.open = false;
        self.conn.commit()
    }

    fn rollback(&mut self) {
        self.wrote_events = false;
        self.combined = None;
        self.deferred.clear();
        if std::mem::take(&mut self.open) {
            self.conn.rollback();
        }
        // A statement that failed inside the event-id function, between its lock and its
        // unlock (cancelled, say), left this session holding the event-id lock, and every
        // instance's events would wait for it. A write session holds no other
        // session-level lock.
        if self.conn.take_failure() && self.conn.is_open() {
            if let Err(e) = self.conn.batch("SELECT pg_advisory_unlock_all()") {
                log::warn!("database: could not let go of the session's locks: {e}");
            }
        }
    }

    fn abandon(&mut self) {
        self.rollback();
    }

    fn tx(&mut self) -> &mut dyn Tx {
        self
    }

    fn wrote_events(&mut self) -> bool {
        self.wrote_events
    }
}

impl Tx for PgEngine {
    fn next_order_id(&mut self, answered: bool) -> Result<OrderId, StoreError> {
        if let (Some(c), false) = (&mut self.combined, answered) {
            return c.order_id();
        }
        if self.order_id.is_none() && !self.open && (answered || !self.one_statement) {
            // A create that cannot be one statement (its answer is read back before the
            // commit): a transaction begun with its event id, as a change of status is.
            self.take_event(true)?;
        }
        if let Some(id) = self.order_id.take() {
            return Ok(id);
        }
        if self.open {
            // Not reached by the rules: a transaction is begun with its event id, which
            // takes the order id too. `nextval` here could assign the transaction's id.
            return Err(StoreError::Unavailable(
                "an order id asked for in a transaction without one".into(),
            ));
        }
        // An online create's, before anything else: outside a transaction, since order ids
        // need no order among transactions (a failed create leaves a gap, as a rolled back
        // one does). Its one statement takes the event id (`insert_event`).
        let ids = self.order_ids(1)?;
        Ok(OrderId::from_trusted(ids[0]))
    }

    fn insert_order(&mut self, o: &Order) -> Result<(), StoreError> {
        if let Some(c) = &mut self.combined {
            return c.insert_order(o);
        }
        // The lines go as arrays, whatever their number: a statement each was most of a
        // create's time, every one a round trip.
        self.make_room(&["orders", "order_counts", "order_items"])?;
        combined::push_orders(&mut self.deferred, &[o]);
        Ok(())
    }

    fn order_for_update(&mut self, id: OrderId) -> Result<Option<Order>, StoreError> {
        // Changes to one order take turns on a lock of the order's own, held until the
        // transaction ends, and only then take their event id: so one order's events get
        // ids in the order the changes commit. (An event id taken while waiting could be
        // lower than that of the change that got in first.) An advisory lock assigns no
        // transaction id, so `take_event` still comes before the first one is assigned.
        if super::SERVICE_LOCKS.contains(&id.get()) {
            return Ok(None);
        }
        if !self.wrote {
            // The order is looked for with the lock, before any event id: one whose create
            // has not committed is not found, and takes no event id, which could be lower
            // than its create's and go out before `order_created`. One found was committed
            // with its create's event id, lower than any taken from now on.
            let found = self.conn()?.query_one(
                "SELECT pg_advisory_xact_lock($1), EXISTS (SELECT 1 FROM orders WHERE id = $1)",
                &[&id.get()],
            )?;
            if !found.try_get::<_, bool>(1)? {
                return Ok(None);
            }
        }
        if self.event.is_none() {
            // The row lock below assigns the transaction's id: the event id comes first.
            self.take_event(false)?;
        }
        // Nobody else changes the row meanwhile: every change of an order takes the lock
        // above first. The row lock is for anything that would not. The order is read as
        // a get reads it.
        self.wrote = true;
        let conn = self.conn()?;
        let rows = conn.query(orders_where!("id = $1 FOR UPDATE"), &[&id.get()])?;
        order_of(conn, &rows)
    }

    fn update_status(&mut self, id: OrderId, status: Status, at: i64) -> Result<(), StoreError> {
        self.wrote = true;
        self.defer(
            "orders",
            "UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3",
            vec![Box::new(status.as_str()), Box::new(at), Box::new(id.get())],
        )?;
        Ok(())
    }

    fn insert_event(&mut self, e: &NewEvent<'_>) -> Result<(), StoreError> {
        if let Some(c) = &mut self.combined {
            return c.insert_event(e);
        }
        if self.event.is_none()
            && !self.open
            && self.one_statement
            && !self.deferred.holds("outbox")
        {
            // Nothing sent yet (an online create without an idempotency key): the
            // statement that writes the event takes its id in its main query, which runs
            // before the writes in its `WITH`, and commits alone, without BEGIN and COMMIT.
            self.wrote = true;
            combined::push_events(&mut self.deferred, &[&combined::Event::of(e)]);
            self.wrote_events = true;
            return Ok(());
        }
        // One event per transaction (one job each): a second id, taken after a write,
        // could be overtaken by another transaction's.
        if self.event.is_none() {
            self.take_event(false)?;
        }
        let (id, tx) = self.event.take().expect("taken above");
        self.defer(
            "outbox",
            "INSERT INTO outbox (id, order_id, event_type, payload, created_at, tx)
             VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                Box::new(id),
                Box::new(e.order_id.get()),
                Box::new(e.event_type.to_string()),
                Box::new(e.payload.with_id(id)),
                Box::new(e.at),
                Box::new(tx),
            ],
        )?;
        self.wrote_events = true;
        Ok(())
    }

    fn idempotency(
        &mut self,
        user: &UserId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        load_idempotency(self.conn()?, user, key)
    }

    fn claim_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        request: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        self.wrote = true;
        let n = self.conn()?.execute(
            "INSERT INTO idempotency_keys (user_id, idem_key, request, response_status, response_body, created_at)
             VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT (user_id, idem_key) DO NOTHING",
            &[&user.as_str(), &key, &request, &at],
        )?;
        Ok(n == 1)
    }

    fn retake_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        request: &str,
        at: i64,
        stale_before: i64,
    ) -> Result<bool, StoreError> {
        self.wrote = true;
        let n = self.conn()?.execute(
            "UPDATE idempotency_keys SET request = $3, created_at = $4
             WHERE user_id = $1 AND idem_key = $2 AND response_status = 0 AND created_at < $5",
            &[&user.as_str(), &key, &request, &at, &stale_before],
        )?;
        Ok(n == 1)
    }

    fn answer_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        claimed_at: i64,
        status: u16,
        body: &str,
    ) -> Result<bool, StoreError> {
        self.wrote = true;
        let n = self.conn()?.execute(
            "UPDATE idempotency_keys SET response_status = $4, response_body = $5
             WHERE user_id = $1 AND idem_key = $2 AND created_at = $3 AND response_status = 0",
            &[&user.as_str(), &key, &claimed_at, &i32::from(status), &body],
        )?;
        Ok(n == 1)
    }

    fn release_idempotency(
        &mut self,
        user: &UserId,
        key: &str,
        claimed_at: i64,
    ) -> Result<(), StoreError> {
        self.wrote = true;
        self.conn()?.execute(
            "DELETE FROM idempotency_keys
             WHERE user_id = $1 AND idem_key = $2 AND created_at = $3 AND response_status = 0",
            &[&user.as_str(), &key, &claimed_at],
        )?;
        Ok(())
    }

    fn upsert_product(&mut self, p: &CachedProduct) -> Result<(), StoreError> {
        self.upsert_products(std::slice::from_ref(p))
    }

    /// One statement; the rows go in their order, as their row locks are taken.
    fn upsert_products(&mut self, products: &[CachedProduct]) -> Result<(), StoreError> {
        if products.is_empty() {
            return Ok(());
        }
        if let Some(c) = &mut self.combined {
            return c.upsert_products(products);
        }
        self.make_room(&["product_cache"])?;
        let rows: Vec<&CachedProduct> = products.iter().collect();
        combined::push_products(&mut self.deferred, &rows);
        Ok(())
    }

    fn forget_product(&mut self, id: ProductId, answered_at: i64) -> Result<(), StoreError> {
        self.wrote = true;
        // Under `SALES_LOCK` shared, as every write of snapshot rows (`push_products`).
        // A row even where there was none, for an older answer still on its way to meet.
        self.conn()?.execute(
            "INSERT INTO product_cache (product_id, name, price_cents, stock, fetched_at, gone)
             SELECT $1, '', 0, 0, $2, 1
             WHERE (SELECT pg_advisory_xact_lock_shared($3)) IS NOT NULL
             ON CONFLICT (product_id) DO UPDATE SET fetched_at = excluded.fetched_at, gone = 1
             WHERE excluded.fetched_at >= product_cache.fetched_at",
            &[&id.get(), &answered_at, &super::SALES_LOCK],
        )?;
        Ok(())
    }

    /// As on SQLite (sqlite/outbox.rs, `mark_published`), in one statement. An instance
    /// that lost the relay's lock and marks late moves the watermark nowhere; two marking
    /// at once (at a change of lead) may leave it behind one of them, whose events then
    /// go out again (at least once).
    fn mark_published(&mut self, ids: &[i64], at: i64) -> Result<usize, StoreError> {
        let Some(&last) = ids.last() else {
            return Ok(0);
        };
        self.wrote = true;
        let row = self.conn()?.query_one(
            "WITH w AS (SELECT upto, at FROM outbox_marks ORDER BY upto DESC LIMIT 1),
                  moved AS (UPDATE outbox_marks m SET upto = $1 FROM w
                            WHERE m.upto = w.upto AND $1 > w.upto AND $2 - w.at < $3),
                  added AS (INSERT INTO outbox_marks (upto, at)
                            SELECT $1, $2
                            WHERE $1 > COALESCE((SELECT upto FROM w), 0)
                              AND NOT EXISTS (SELECT 1 FROM w WHERE $2 - w.at < $3)
                            ON CONFLICT (upto) DO NOTHING)
             SELECT COALESCE((SELECT upto FROM w), 0)",
            &[&last, &at, &MARK_SPAN],
        )?;
        let upto: i64 = row.try_get(0)?;
        Ok(ids.iter().filter(|&&id| id > upto).count())
    }

    fn mark_blocked(&mut self, id: i64, since: i64) -> Result<usize, StoreError> {
        self.wrote = true;
        let n = self.conn()?.execute(
            "UPDATE outbox SET blocked_since = $1
             WHERE id = $2 AND id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
            &[&since, &id],
        )?;
        Ok(n as usize)
    }

    fn prune_outbox(&mut self, before: i64, limit: usize) -> Result<usize, StoreError> {
        self.wrote = true;
        // As on SQLite (sqlite/outbox.rs, `prune`): the events published before `before`,
        // then the marks no event is left under, but the watermark.
        let conn = self.conn()?;
        let n = conn.execute(
            "DELETE FROM outbox WHERE id IN (
               SELECT id FROM outbox
               WHERE id <= COALESCE(
                 (SELECT upto FROM outbox_marks WHERE at < $1 ORDER BY at DESC LIMIT 1), 0)
                 AND id < (SELECT MAX(id) FROM outbox)
               ORDER BY id LIMIT $2)",
            &[&before, &(limit as i64)],
        )?;
        conn.execute(
            "DELETE FROM outbox_marks
             WHERE upto < (SELECT COALESCE(MIN(id), 0) FROM outbox)
               AND upto < (SELECT MAX(upto) FROM outbox_marks)",
            &[],
        )?;
        Ok(n as usize)
    }

    fn fill_lines(&mut self, after: i64, limit: usize) -> Result<Option<(i64, usize)>, StoreError> {
        self.wrote = true;
        let conn = self.conn()?;
        let last: Option<i64> = conn
            .query_one(
                "SELECT MAX(id) FROM (
                   SELECT id FROM orders WHERE lines IS NULL AND id > $1 ORDER BY id LIMIT $2) t",
                &[&after, &(limit as i64)],
            )?
            .get(0);
        let Some(last) = last else {
            return Ok(None);
        };
        // The same arrays as `store::lines::encode` writes; `[]` for an order without
        // lines, so that none stays behind. Another instance filling the same orders
        // meanwhile: this statement waits for its commit, then skips them.
        let filled = conn.execute(
            "UPDATE orders o SET lines = COALESCE((
               SELECT json_agg(json_build_array(i.product_id, i.product_name, i.quantity,
                 i.price_cents, i.subtotal_cents) ORDER BY i.line_no)::text
               FROM order_items i WHERE i.order_id = o.id), '[]')
             WHERE o.lines IS NULL AND o.id > $1 AND o.id <= $2",
            &[&after, &last],
        )?;
        Ok(Some((last, filled as usize)))
    }

    fn prune_idempotency(&mut self, before: i64, limit: usize) -> Result<usize, StoreError> {
        self.wrote = true;
        let n = self.conn()?.execute(
            "DELETE FROM idempotency_keys WHERE (user_id, idem_key) IN (
               SELECT user_id, idem_key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
            &[&before, &(limit as i64)],
        )?;
        Ok(n as usize)
    }

    fn prune_gone_products(&mut self, before: i64, limit: usize) -> Result<usize, StoreError> {
        self.wrote = true;
        // In product order, and under `SALES_LOCK` shared, as every write of snapshot rows.
        let n = self.conn()?.execute(
            "DELETE FROM product_cache WHERE product_id IN (
               SELECT product_id FROM product_cache WHERE gone = 1 AND fetched_at < $1
                 AND (SELECT pg_advisory_xact_lock_shared($3)) IS NOT NULL
               ORDER BY product_id LIMIT $2 FOR UPDATE)",
            &[&before, &(limit as i64), &super::SALES_LOCK],
        )?;
        Ok(n as usize)
    }

    fn heartbeat(&mut self, at: i64) -> Result<(), StoreError> {
        self.wrote = true;
        self.conn()?.execute(
            "INSERT INTO heartbeat (id, beat_at) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at",
            &[&at],
        )?;
        Ok(())
    }
    fn snapshot_for_update(
        &mut self,
        ids: &[ProductId],
    ) -> Result<Vec<SnapshotProduct>, StoreError> {
        if self.event.is_none() && !self.wrote {
            // Its row locks assign the transaction's id: the event id, and the order's,
            // come first.
            self.take_event(true)?;
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        // Alone, until the transaction ends: the creates whose sales are being written
        // commit first, and are counted below; those that come later wait for this one.
        // (An online create whose answers are the rows already there locks no row.) It
        // comes before any other lock, as in the statement of a create that records sales.
        self.conn()?
            .execute("SELECT pg_advisory_xact_lock($1)", &[&super::SALES_LOCK])?;
        // The rows' locks, in one order (by id) for every order, hold until the
        // transaction ends: another instance's offline order of the same product waits,
        // then counts this one's ledger entries. An online order takes the same locks by
        // refreshing the rows it looked up.
        let rows = self.conn()?.query(
            "SELECT product_id, name, price_cents, stock, fetched_at FROM product_cache
             WHERE product_id = ANY($1) AND gone = 0 ORDER BY product_id FOR UPDATE",
            &[&ids],
        )?;
        let sold = self.conn()?.query(
            "SELECT l.product_id, SUM(l.quantity) FROM stock_ledger l
               JOIN product_cache p ON p.product_id = l.product_id
             WHERE l.product_id = ANY($1) AND l.sold_at >= p.fetched_at
             GROUP BY l.product_id",
            &[&ids],
        )?;
        rows.iter()
            .map(|r| {
                let product = cached_product(r)?;
                let mut sold_since = 0;
                for s in &sold {
                    if s.try_get::<_, i64>(0)? == product.product_id.get() {
                        sold_since = s.try_get(1)?;
                    }
                }
                Ok(SnapshotProduct {
                    product,
                    sold_since,
                })
            })
            .collect()
    }

    /// One statement for all the order's lines.
    fn record_sales(&mut self, order: &Order, at: i64) -> Result<(), StoreError> {
        if let Some(c) = &mut self.combined {
            return c.record_sales(order, at);
        }
        self.make_room(&["stock_ledger"])?;
        combined::push_sales(&mut self.deferred, &[&Sales::of(order, at)]);
        Ok(())
    }

    fn finish_refresh(
        &mut self,
        started: i64,
        products: i64,
        source: &str,
        complete_list: bool,
    ) -> Result<(), StoreError> {
        if complete_list {
            // Gone as of the refresh's start: a lookup older than it does not put them
            // back; a row gone already keeps its stamp, so that the prune takes it in
            // time. Locked in product order, as creates lock the rows they upsert: in the
            // table's order, a create holding one of two such rows and this waiting on it
            // while holding the other would deadlock. Under `SALES_LOCK` shared, as every
            // write of snapshot rows (`push_products`).
            self.conn()?.execute(
                "UPDATE product_cache SET fetched_at = $1, gone = 1 WHERE product_id IN (
                   SELECT product_id FROM product_cache WHERE fetched_at < $1 AND gone = 0
                     AND (SELECT pg_advisory_xact_lock_shared($2)) IS NOT NULL
                   ORDER BY product_id FOR UPDATE)",
                &[&started, &super::SALES_LOCK],
            )?;
        }
        self.conn()?.execute(
            "DELETE FROM stock_ledger WHERE sold_at < COALESCE(
               (SELECT p.fetched_at FROM product_cache p WHERE p.product_id = stock_ledger.product_id), $1)",
            &[&started],
        )?;
        self.conn()?.execute(
            "INSERT INTO catalog_refresh (id, refreshed_at, products, source) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET refreshed_at = excluded.refreshed_at,
               products = excluded.products, source = excluded.source
             WHERE excluded.refreshed_at >= catalog_refresh.refreshed_at",
            &[&started, &products, &source],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_db::TestDb;
    use super::super::{engines, migrate, Connector};
    use super::{PgEngine, ORDER_ID_BLOCK};
    use crate::domain::{Money, Order, OrderId, ProductId, Status, UserId};
    use crate::store::{CachedProduct, Engine, EventPayload, NewEvent, StoreError, Tx};
    use postgres::{Client, NoTls};
    use std::time::Duration;

    fn engine(db: &TestDb) -> PgEngine {
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        engines(&connector, &TestDb::pool()).unwrap().remove(0)
    }

    /// An online create's writes as the rules make them, after its order id: the order of
    /// `user`, its sales, its event, and the rows of `products` as answered at `fetched_at`.
    fn write_create(tx: &mut dyn Tx, id: OrderId, user: &str, fetched_at: i64, products: &[i64]) {
        let payload = EventPayload {
            head: r#"{"event_id":"s:"#.into(),
            middle: r#"","sequence":"#.into(),
            tail: "}".into(),
        };
        let order = Order::example(id.get(), user, "Product 7");
        tx.insert_order(&order).unwrap();
        tx.record_sales(&order, 10).unwrap();
        tx.insert_event(&NewEvent {
            order_id: order.id,
            event_type: "order_created",
            payload: &payload,
            at: 10,
        })
        .unwrap();
        let rows: Vec<CachedProduct> = products
            .iter()
            .map(|&n| CachedProduct {
                product_id: ProductId::new(n).unwrap(),
                name: format!("Product {n}"),
                price: Money::from_cents(1999),
                stock: 50,
                fetched_at,
            })
            .collect();
        tx.upsert_products(&rows).unwrap();
    }

    /// A create as the rules write it (order, sales, event, the product's fresh row, its
    /// answer if `keyed`), committed.
    fn create(engine: &mut PgEngine, keyed: Option<&str>) {
        let user = UserId::from_trusted("user-1".into());
        if let Some(key) = keyed {
            engine.begin().unwrap();
            assert!(engine.tx().claim_idempotency(&user, key, "{}", 10).unwrap());
            engine.commit().unwrap();
        }
        engine.begin().unwrap();
        let id = engine.tx().next_order_id(keyed.is_some()).unwrap();
        assert_eq!(
            engine.event.is_some(),
            keyed.is_some() || !engine.one_statement,
            "a transaction begun with the event id, unless the create is one statement"
        );
        write_create(engine.tx(), id, "user-1", 10, &[7]);
        if let Some(key) = keyed {
            let tx = engine.tx();
            assert!(tx.answer_idempotency(&user, key, 10, 201, "{}").unwrap());
        }
        engine.commit().unwrap();
    }

    /// Each order's event: written by the order's transaction, with its id in its
    /// payload, event ids rising with transaction ids. Returns the number of
    /// transactions that wrote them.
    fn check_events(db: &TestDb, orders: usize) -> usize {
        let mut client = Client::connect(&db.url(), NoTls).unwrap();
        let rows = client
            .query(
                "SELECT o.id, x.id, x.payload, o.xmin::text, x.tx % 4294967296
                 FROM orders o JOIN outbox x ON x.order_id = o.id ORDER BY x.id",
                &[],
            )
            .unwrap();
        assert_eq!(rows.len(), orders, "each order with its event");
        let (mut last_tx, mut transactions) = (0, 0);
        for r in rows {
            let (order, event, payload): (i64, i64, String) = (r.get(0), r.get(1), r.get(2));
            assert_eq!(
                payload,
                format!(r#"{{"event_id":"s:{event}","sequence":{event}}}"#)
            );
            let (order_xid, event_tx): (String, i64) = (r.get(3), r.get(4));
            assert_eq!(
                order_xid,
                event_tx.to_string(),
                "order {order} and its event written by one transaction"
            );
            assert!(
                event_tx >= last_tx,
                "event {event}: ids follow transaction ids"
            );
            transactions += usize::from(event_tx > last_tx);
            last_tx = event_tx;
        }
        transactions
    }

    /// Holds the row locks `sql` takes, in a transaction of its own, for `held`.
    fn hold_rows(url: String, sql: &'static str, held: Duration) -> std::thread::JoinHandle<()> {
        let (locked, taken) = std::sync::mpsc::sync_channel(0);
        let holder = std::thread::spawn(move || {
            let mut c = Client::connect(&url, NoTls).unwrap();
            c.batch_execute("BEGIN").unwrap();
            c.batch_execute(sql).unwrap();
            locked.send(()).unwrap();
            std::thread::sleep(held);
            c.batch_execute("COMMIT").unwrap();
        });
        taken.recv().unwrap();
        holder
    }

    #[test]
    fn a_create_whose_statement_outlasts_its_time_is_ended_by_the_server_and_not_kept() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let (connector, pool) = db.migrated_answering_within(Duration::from_secs(2));
        let mut engine = engines(&connector, &pool).unwrap().remove(0);
        assert!(engine.one_statement);
        Client::connect(&db.url(), NoTls)
            .unwrap()
            .batch_execute(
                "INSERT INTO product_cache VALUES (7, 'p', 1, 1, 1), (8, 'p', 1, 1, 1);
                 INSERT INTO order_counts VALUES ('user-1', 0);",
            )
            .unwrap();
        // Three lock waits in a row, each shorter than the lock timeout (1 s), 2.4 s in
        // all: past the 2 s the watchdog gives a statement.
        let ms = Duration::from_millis;
        let holders = [
            (
                "SELECT 1 FROM product_cache WHERE product_id = 7 FOR UPDATE",
                ms(800),
            ),
            (
                "SELECT 1 FROM product_cache WHERE product_id = 8 FOR UPDATE",
                ms(1600),
            ),
            (
                "SELECT 1 FROM order_counts WHERE user_id = 'user-1' FOR UPDATE",
                ms(2400),
            ),
        ]
        .map(|(sql, held)| hold_rows(db.url(), sql, held));
        engine.begin().unwrap();
        let id = engine.tx().next_order_id(false).unwrap();
        write_create(engine.tx(), id, "user-1", 10, &[7, 8]);

        assert!(engine.commit().is_err(), "answered as not kept");
        engine.abandon();
        for holder in holders {
            holder.join().unwrap();
        }
        let id = id.get();
        let kept = count(&db, &format!("SELECT COUNT(*) FROM orders WHERE id = {id}"));
        let events = count(
            &db,
            &format!("SELECT COUNT(*) FROM outbox WHERE order_id = {id}"),
        );
        assert_eq!((kept, events), (0, 0), "and not kept");
    }

    /// One value of the database's.
    fn count(db: &TestDb, sql: &str) -> i64 {
        let mut client = Client::connect(&db.url(), NoTls).unwrap();
        client.query_one(sql, &[]).unwrap().get(0)
    }

    /// The orders' ids, in order.
    fn order_ids(db: &TestDb) -> Vec<i64> {
        let mut client = Client::connect(&db.url(), NoTls).unwrap();
        let rows = client
            .query("SELECT id FROM orders ORDER BY id", &[])
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    #[test]
    fn online_creates_take_their_order_ids_a_block_at_a_time_and_each_session_its_own() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let mut other = engine(&db);
        let mut engine = engine(&db);
        let last_value = || count(&db, "SELECT last_value FROM order_ids");
        create(&mut engine, None);
        let first = count(&db, "SELECT MAX(id) FROM orders");
        assert_eq!(
            last_value(),
            first + ORDER_ID_BLOCK as i64 - 1,
            "one block taken"
        );
        create(&mut engine, None);
        engine.begin_combined(2).unwrap();
        for _ in 0..2 {
            engine.savepoint().unwrap();
            let id = engine.tx().next_order_id(false).unwrap();
            write_create(engine.tx(), id, "user-2", 20, &[7]);
            engine.release().unwrap();
        }
        engine.commit().unwrap();
        create(&mut other, None);
        let ids = order_ids(&db);
        let block = ORDER_ID_BLOCK as i64;
        assert_eq!(
            ids,
            [first, first + 1, first + 2, first + 3, first + block],
            "the first session's creates from its block, the other's from the next"
        );
        assert_eq!(last_value(), first + 2 * block - 1, "two blocks in all");
    }

    #[test]
    fn online_creates_written_together_are_one_transaction_and_a_failed_one_is_left_out() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let mut engine = engine(&db);
        assert!(engine.combines() > 1);
        // user-1 has an order already: the statement adds to its count.
        create(&mut engine, None);
        let mut ids = vec![count(&db, "SELECT MAX(id) FROM orders")];
        engine.begin_combined(3).unwrap();
        for (user, fetched_at, fails) in [
            ("user-1", 20, false),
            ("user-2", 40, true),
            ("user-1", 30, false),
        ] {
            engine.savepoint().unwrap();
            let id = engine.tx().next_order_id(false).unwrap();
            write_create(engine.tx(), id, user, fetched_at, &[7]);
            if fails {
                engine.rollback_to_savepoint().unwrap();
            } else {
                engine.release().unwrap();
                ids.push(id.get());
            }
        }
        engine.commit().unwrap();
        assert!(engine.wrote_events());
        assert_eq!(
            check_events(&db, 3),
            2,
            "the first create's, and one for both"
        );
        let orders = order_ids(&db);
        assert_eq!(orders, ids, "the failed create left out");
        assert_eq!(count(&db, "SELECT COUNT(*) FROM order_items"), 3);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM stock_ledger"), 3);
        assert_eq!(
            count(
                &db,
                "SELECT orders FROM order_counts WHERE user_id = 'user-1'"
            ),
            3,
            "one count row, every order"
        );
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM order_counts WHERE user_id = 'user-2'"
            ),
            0
        );
        assert_eq!(
            count(
                &db,
                "SELECT fetched_at FROM product_cache WHERE product_id = 7"
            ),
            30,
            "the newest answer of the creates kept"
        );
        // A create undone takes its event with it; what a combined create may not write
        // is refused, not sent on its own.
        engine.begin_combined(2).unwrap();
        engine.savepoint().unwrap();
        let id = engine.tx().next_order_id(false).unwrap();
        write_create(engine.tx(), id, "user-3", 50, &[7]);
        engine.rollback_to_savepoint().unwrap();
        engine.savepoint().unwrap();
        let refused =
            engine
                .tx()
                .update_status(OrderId::from_trusted(ids[0]), Status::Cancelled, 50);
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        engine.rollback_to_savepoint().unwrap();
        engine.commit().unwrap();
        assert!(!engine.wrote_events(), "nothing written");
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM orders WHERE status = 'pending'"),
            3
        );
    }

    #[test]
    fn a_combined_statement_that_fails_keeps_none_of_its_creates() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let mut engine = engine(&db);
        engine.begin_combined(2).unwrap();
        let mut first = None;
        for _ in 0..2 {
            engine.savepoint().unwrap();
            let id = engine.tx().next_order_id(false).unwrap();
            // The second order under the first's id: the statement fails on its key.
            let id = *first.get_or_insert(id);
            write_create(engine.tx(), id, "user-1", 10, &[7]);
            engine.release().unwrap();
        }
        assert!(engine.commit().is_err());
        engine.abandon();
        for table in [
            "orders",
            "order_items",
            "order_counts",
            "stock_ledger",
            "outbox",
        ] {
            let rows = count(&db, &format!("SELECT COUNT(*) FROM {table}"));
            assert_eq!(rows, 0, "{table}");
        }
        // The session goes on.
        create(&mut engine, None);
        assert_eq!(check_events(&db, 1), 1);
    }

    #[test]
    fn a_create_that_fails_inside_the_event_id_function_lets_go_of_its_lock() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let mut engine = engine(&db);
        create(&mut engine, None);
        // No event id left: the function fails after taking its lock, before letting go.
        let mut other = Client::connect(&db.url(), NoTls).unwrap();
        other
            .batch_execute("ALTER SEQUENCE outbox_ids MAXVALUE 2; SELECT setval('outbox_ids', 2)")
            .unwrap();
        engine.begin().unwrap();
        let id = engine.tx().next_order_id(false).unwrap();
        write_create(engine.tx(), id, "user-1", 10, &[7]);
        let failed = engine.commit().unwrap_err();
        assert!(failed.to_string().contains("maximum value"), "{failed}");
        engine.abandon();
        let lock = super::super::EVENT_ID_LOCK;
        let free: bool = other
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lock])
            .unwrap()
            .get(0);
        assert!(
            free,
            "the event-id lock still held by the failed create's session"
        );
    }

    /// The writer on `writers` sessions of `db`.
    fn writer(
        db: &TestDb,
        writers: usize,
    ) -> (crate::store::WriterHandle, Vec<std::thread::JoinHandle<()>>) {
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        let pool = crate::config::PostgresPool {
            writers,
            ..TestDb::pool()
        };
        let engines: Vec<Box<dyn Engine>> = engines(&connector, &pool)
            .unwrap()
            .into_iter()
            .map(|e| Box::new(e) as Box<dyn Engine>)
            .collect();
        assert!(engines[0].combines() > 1, "this server combines creates");
        let (wake, _woken) = crossbeam_channel::unbounded();
        crate::store::spawn_writer(engines, wake).unwrap()
    }

    /// A job that holds its session until `held` gives it a go.
    fn hold(
        writer: &crate::store::WriterHandle,
        held: crossbeam_channel::Receiver<()>,
    ) -> std::thread::JoinHandle<Result<(), StoreError>> {
        let writer = writer.clone();
        std::thread::spawn(move || {
            writer.run(move |_tx| -> Result<(), StoreError> {
                let _ = held.recv();
                Ok(())
            })
        })
    }

    /// Drops the writer's last handle and waits for its threads to stop.
    fn stop(writer: crate::store::WriterHandle, threads: Vec<std::thread::JoinHandle<()>>) {
        drop(writer);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_session_that_combines_creates_takes_other_jobs_when_no_create_waits() {
        let Some(db) = TestDb::create() else {
            return;
        };
        // Three sessions: the first takes creates first and other jobs, the second only
        // creates, the third only other jobs.
        let (writer, threads) = writer(&db, 3);
        let (release, held) = crossbeam_channel::unbounded::<()>();
        let holding = hold(&writer, held);
        std::thread::sleep(std::time::Duration::from_millis(100));
        // While one session is held, another job still runs.
        let pinged = writer.ping(std::time::Duration::from_secs(5));
        let _ = release.send(());
        holding.join().unwrap().unwrap();
        assert!(pinged.is_ok(), "{pinged:?}");
        stop(writer, threads);
    }

    #[test]
    fn a_create_does_not_wait_behind_other_jobs_that_hold_the_other_sessions() {
        let Some(db) = TestDb::create() else {
            return;
        };
        // Three jobs that hold their session: two run, on the two sessions that take
        // other jobs, and one waits for them.
        let (writer, threads) = writer(&db, 3);
        let (release, held) = crossbeam_channel::unbounded::<()>();
        let holding: Vec<_> = (0..3).map(|_| hold(&writer, held.clone())).collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (done, created) = crossbeam_channel::bounded(1);
        let creating = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                let id = writer.create(|tx| -> Result<OrderId, StoreError> {
                    let id = tx.next_order_id(false)?;
                    write_create(tx, id, "user-1", 10, &[7]);
                    Ok(id)
                });
                let _ = done.send(id);
            })
        };
        let answer = created.recv_timeout(std::time::Duration::from_secs(5));
        for _ in 0..3 {
            let _ = release.send(());
        }
        for h in holding {
            h.join().unwrap().unwrap();
        }
        creating.join().unwrap();
        assert!(matches!(answer, Ok(Ok(_))), "{answer:?}");
        stop(writer, threads);
    }

    #[test]
    fn creates_that_queue_while_the_combining_writers_write_go_together() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let (writer, threads) = writer(&db, 4);
        // Every seventh create fails after its writes: it must leave nothing.
        let clients: Vec<_> = (0..16)
            .map(|c| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for n in 0..25 {
                        let fails = (c * 25 + n) % 7 == 0;
                        let user = format!("user-{}", n % 3);
                        let created = writer.create(move |tx| -> Result<i64, StoreError> {
                            let id = tx.next_order_id(false)?;
                            write_create(tx, id, &user, 10 + n, &[7]);
                            if fails {
                                return Err(StoreError::Unavailable("refused".into()));
                            }
                            Ok(id.get())
                        });
                        match (created, fails) {
                            (Ok(id), false) => kept.push(id),
                            (Err(_), true) => {}
                            (other, _) => panic!("create {c}/{n}: {other:?}"),
                        }
                    }
                    kept
                })
            })
            .collect();
        let mut kept: Vec<i64> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        kept.sort_unstable();
        stop(writer, threads);
        let orders = order_ids(&db);
        assert_eq!(orders, kept, "every answered create, and no other");
        let transactions = check_events(&db, kept.len());
        assert!(
            transactions < kept.len(),
            "{} creates in {transactions} transactions: none combined",
            kept.len()
        );
        assert_eq!(
            count(&db, "SELECT SUM(orders)::bigint FROM order_counts"),
            kept.len() as i64
        );
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM stock_ledger"),
            kept.len() as i64
        );
    }

    #[test]
    fn a_change_of_an_order_whose_create_has_not_committed_finds_none_and_takes_no_event_id() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let (mut creating, mut changing) = (engine(&db), engine(&db));
        creating.begin().unwrap();
        let id = creating.tx().next_order_id(false).unwrap();
        write_create(creating.tx(), id, "user-1", 10, &[7]);

        // Its id taken, its statement not yet run: a cancel that guessed it.
        changing.begin().unwrap();
        assert!(changing.tx().order_for_update(id).unwrap().is_none());
        assert_eq!(changing.event, None, "no event id taken");
        changing.rollback();

        creating.commit().unwrap();
        changing.begin().unwrap();
        assert!(changing.tx().order_for_update(id).unwrap().is_some());
        let (change, _) = changing.event.expect("an event id, once found");
        changing.rollback();
        let created = count(&db, "SELECT MAX(id) FROM outbox");
        assert!(
            change > created,
            "after order_created's: {change} > {created}"
        );
    }

    #[test]
    fn a_refresh_that_forgets_rows_locks_them_in_product_order_as_creates_do() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let mut refresh = engine(&db);
        let mut seller = Client::connect(&db.url(), NoTls).unwrap();
        // Two rows the next complete list leaves out; product 1's row, changed since,
        // lies after product 2's in the table.
        seller
            .batch_execute(
                "INSERT INTO product_cache VALUES (1, 'p', 1, 1, 10), (2, 'p', 1, 1, 10);
                 UPDATE product_cache SET name = 'q' WHERE product_id = 1;",
            )
            .unwrap();
        let heap: Vec<i64> = seller
            .query("SELECT product_id FROM product_cache ORDER BY ctid", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(heap, [2, 1], "product 2's row first in the table");

        // A create's upsert of both, in product order: product 1's row first.
        seller.batch_execute("BEGIN").unwrap();
        seller
            .batch_execute("UPDATE product_cache SET fetched_at = 30 WHERE product_id = 1")
            .unwrap();
        let refreshing = std::thread::spawn(move || {
            refresh.begin().unwrap();
            let forgot = refresh.tx().finish_refresh(20, 0, "test", true);
            let done = forgot.and_then(|()| refresh.commit());
            if done.is_err() {
                refresh.abandon();
            }
            done
        });
        db.until_a_session_waits_on_a_lock("the refresh on product 1's row");
        // The refresh waits on product 1's row: it must hold no other of the create's.
        let sold =
            seller.batch_execute("UPDATE product_cache SET fetched_at = 30 WHERE product_id = 2");
        assert!(sold.is_ok(), "the create goes on: {sold:?}");
        seller.batch_execute("COMMIT").unwrap();
        assert!(
            refreshing.join().unwrap().is_ok(),
            "and so does the refresh"
        );
        let kept = count(
            &db,
            "SELECT COUNT(*) FROM product_cache WHERE fetched_at = 30",
        );
        assert_eq!(kept, 2, "the rows the create wrote are not forgotten");
    }

    #[test]
    fn an_online_create_takes_its_event_id_in_the_transaction_of_its_writes() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let mut engine = engine(&db);
        assert!(
            engine.one_statement,
            "this server runs the main query first"
        );
        for _ in 0..3 {
            create(&mut engine, None);
        }
        assert_eq!(check_events(&db, 3), 3, "a transaction each");
    }

    #[test]
    fn a_keyed_create_and_one_on_a_server_that_failed_the_trial_begin_with_the_event_id() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let mut engine = engine(&db);
        create(&mut engine, Some("key-1"));
        // A trial that fails (its table renamed away for it).
        let rename = |from: &str, to: &str| {
            Client::connect(&db.url(), NoTls)
                .unwrap()
                .batch_execute(&format!("ALTER TABLE {from} RENAME TO {to}"))
                .unwrap()
        };
        rename("order_counts", "counts_away");
        assert!(!engine.main_query_first(), "a failed trial");
        rename("counts_away", "order_counts");
        assert!(engine.main_query_first(), "this server passes it");
        engine.set_one_statement(false);
        create(&mut engine, None);
        create(&mut engine, Some("key-2"));
        assert_eq!(check_events(&db, 3), 3, "a transaction each");
        let answered: i64 = Client::connect(&db.url(), NoTls)
            .unwrap()
            .query_one(
                "SELECT COUNT(*) FROM idempotency_keys WHERE response_status = 201",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(answered, 2, "both keys answered");
    }

    #[test]
    fn an_event_id_is_refused_to_a_transaction_that_wrote_first() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        let mut client = Client::connect(&db.url(), NoTls).unwrap();
        let mut tx = client.transaction().unwrap();
        tx.execute(
            "INSERT INTO order_counts (user_id, orders) VALUES ('user-1', 1)",
            &[],
        )
        .unwrap();
        let refused = tx
            .query("SELECT id, tx FROM order_service_next_event()", &[])
            .unwrap_err();
        let message = refused.as_db_error().map(|e| e.message().to_string());
        assert_eq!(
            message.as_deref(),
            Some("an event id taken after the transaction's first write")
        );
    }
}
