//! Reads on a PostgreSQL session of the reader's own (a get by id may be read by another
//! reader's query: gets.rs), and the relay's leadership.
//!
//! Every statement here is planned once, for any values (`plan_cache_mode =
//! force_generic_plan`, mod.rs): each reads by a key, a user's index or a partial index,
//! or counts a whole table, and that plan is the best whatever is bound. A filter on a skewed column (a `status =
//! $1`, say) would need a plan per value, and belongs on another session.

use super::conn::Conn;
use super::gets::Combined;
use super::RELAY_LOCK;
use crate::domain::{Email, Money, Order, OrderId, OrderItem, Page, ProductId, Status, UserId};
use crate::store::{
    BlockedEvent, CachedProduct, CatalogStats, EventHead, IdempotencyRecord, Lead, OrderList,
    OutboxRow, OutboxStats, Reads, StoreError, Then,
};
use postgres::Row;
use std::cell::RefCell;
use std::sync::Arc;

pub struct PgReader {
    conn: RefCell<Conn>,
    /// Gets by id, combined with the other sessions' of this process.
    gets: Arc<Combined>,
    /// The session (by its connect count) that holds the relay's lock, if one does.
    leading: RefCell<Option<u64>>,
}

impl PgReader {
    pub(super) fn new(conn: Conn, gets: Arc<Combined>) -> PgReader {
        PgReader {
            conn: RefCell::new(conn),
            gets,
            leading: RefCell::new(None),
        }
    }
}

fn unparsed(e: serde_json::Error) -> StoreError {
    StoreError::Unavailable(format!("an outbox payload does not parse: {e}"))
}

/// A page of a user's orders in one query: `$1` is the user, `$from` the rest of the
/// page's query after its column list (its FROM, order and bounds). Columns as
/// `orders_from` reads them, and the user's count last.
macro_rules! page_of_orders {
    ($from:literal) => {
        concat!(
            "WITH total AS (
               SELECT COALESCE((SELECT orders FROM order_counts WHERE user_id = $1), 0) AS n),
             page AS (
               SELECT id, user_id, user_email, status, total_cents, created_at, updated_at,
                 stock_verified, priced_at, lines ",
            $from,
            ")
             SELECT p.id, p.user_id, p.user_email, p.status, p.total_cents, p.created_at,
               p.updated_at, p.stock_verified, p.priced_at, p.lines, total.n
             FROM total LEFT JOIN page p ON true
             ORDER BY p.created_at DESC, p.id DESC"
        )
    };
}

/// Orders' rows, as `orders_from` reads them, `$rest` being the query's WHERE clause
/// (and a row lock for a change).
macro_rules! orders_where {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_id, user_email, status, total_cents, created_at, updated_at,
               stock_verified, priced_at, lines
             FROM orders WHERE ",
            $rest
        )
    };
}
pub(super) use orders_where;

/// The order read by `orders_where!`, if there was one.
pub(super) fn order_of(conn: &mut Conn, rows: &[Row]) -> Result<Option<Order>, StoreError> {
    Ok(orders_from(conn, rows, 1)?.0.pop())
}

/// Orders from rows holding an order's columns (0 to 8) and its `lines` (9): at most
/// `max` of them, and whether more followed. A row without an order (an empty page's)
/// is skipped. An order written without `lines` (before V8, or by an older instance)
/// has its items read from `order_items`, in one more query for all such orders.
pub(super) fn orders_from(
    conn: &mut Conn,
    rows: &[Row],
    max: usize,
) -> Result<(Vec<Order>, bool), StoreError> {
    let mut orders = Vec::with_capacity(max.min(rows.len()));
    let mut more = false;
    for row in rows {
        if row.try_get::<_, Option<i64>>(0)?.is_none() {
            continue;
        }
        if orders.len() == max {
            more = true;
            break;
        }
        let items = match row.try_get::<_, Option<&str>>(9)? {
            Some(text) => crate::store::lines::decode(text).map_err(StoreError::Unavailable)?,
            None => Vec::new(),
        };
        orders.push(load_order(row, items)?);
    }
    // No order is without items otherwise: a create needs at least one.
    let missing: Vec<i64> = orders
        .iter()
        .filter(|o| o.items.is_empty())
        .map(|o| o.id.get())
        .collect();
    if !missing.is_empty() {
        let lines = conn.query(
            "SELECT order_id, product_id, product_name, quantity, price_cents, subtotal_cents
             FROM order_items WHERE order_id = ANY($1) ORDER BY order_id, line_no",
            &[&missing],
        )?;
        for line in &lines {
            let id: i64 = line.try_get(0)?;
            if let Some(o) = orders.iter_mut().find(|o| o.id.get() == id) {
                o.items.push(item_at(line, 1)?);
            }
        }
    }
    Ok((orders, more))
}

impl Reads for PgReader {
    fn order(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        self.gets.order(&mut self.conn.borrow_mut(), id.get())
    }

    fn order_then(&self, id: OrderId, then: Then) {
        self.gets
            .order_then(&mut self.conn.borrow_mut(), id.get(), then)
    }

    fn orders_of(&self, user: &UserId, page: Page, per_page: u32) -> Result<OrderList, StoreError> {
        // One round trip: the user's count and the page (one order more than asked, to
        // know whether older ones follow), each order with its lines. `total LEFT JOIN
        // page` keeps one row (carrying the count) when the page is empty.
        let limit = i64::from(per_page) + 1;
        let mut conn = self.conn.borrow_mut();
        let rows = match page {
            Page::Number(n) => {
                let offset = i64::from(n - 1) * i64::from(per_page);
                conn.query(
                    page_of_orders!(
                        "FROM orders WHERE user_id = $1
                         ORDER BY created_at DESC, id DESC
                         -- Past the last order, LIMIT 0 ends it before the offset is scanned.
                         LIMIT CASE WHEN $3::bigint >= (SELECT n FROM total) THEN 0::bigint
                                    ELSE $2::bigint END
                         OFFSET $3::bigint"
                    ),
                    &[&user.as_str(), &limit, &offset],
                )?
            }
            Page::After(c) => conn.query(
                page_of_orders!(
                    "FROM orders WHERE user_id = $1 AND (created_at, id) < ($2, $3)
                     ORDER BY created_at DESC, id DESC LIMIT $4"
                ),
                &[&user.as_str(), &c.created_at, &c.id.get(), &limit],
            )?,
        };
        let total: i64 = rows.first().map_or(Ok(0), |r| r.try_get(10))?;
        let (orders, more) = orders_from(&mut conn, &rows, per_page as usize)?;
        Ok(OrderList {
            orders,
            total,
            more,
        })
    }

    fn cached_products(&self, ids: &[ProductId]) -> Result<Vec<CachedProduct>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        let rows = self.conn.borrow_mut().query(
            "SELECT product_id, name, price_cents, stock, fetched_at FROM product_cache
             WHERE product_id = ANY($1) AND gone = 0",
            &[&ids],
        )?;
        rows.iter().map(cached_product).collect()
    }

    fn catalog_stats(&self, fresh_after: i64) -> Result<CatalogStats, StoreError> {
        let mut conn = self.conn.borrow_mut();
        let r = conn.query_one(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN fetched_at >= $1 THEN 1 ELSE 0 END), 0)::BIGINT,
               MIN(fetched_at), MAX(fetched_at) FROM product_cache WHERE gone = 0",
            &[&fresh_after],
        )?;
        let mut stats = CatalogStats {
            products: r.try_get(0)?,
            fresh: r.try_get(1)?,
            oldest_fetched_at: r.try_get(2)?,
            newest_fetched_at: r.try_get(3)?,
            ..CatalogStats::default()
        };
        if let Some(last) = conn.query_opt(
            "SELECT refreshed_at, products, source FROM catalog_refresh WHERE id = 1",
            &[],
        )? {
            stats.refreshed_at = Some(last.try_get(0)?);
            stats.refreshed_products = Some(last.try_get(1)?);
            stats.source = Some(last.try_get(2)?);
        }
        Ok(stats)
    }

    fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let mut conn = self.conn.borrow_mut();
        let pending: i64 = conn
            .query_one(
                "SELECT COUNT(*) FROM outbox
                 WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
                &[],
            )?
            .try_get(0)?;
        let oldest_pending_at = conn
            .query_opt(
                "SELECT created_at FROM outbox
                 WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)
                 ORDER BY id LIMIT 1",
                &[],
            )?
            .map(|r| r.try_get(0))
            .transpose()?;
        Ok(OutboxStats {
            pending,
            oldest_pending_at,
        })
    }

    fn published_events(&self) -> Result<i64, StoreError> {
        let row = self.conn.borrow_mut().query_one(
            "SELECT COUNT(*) FROM outbox
             WHERE id <= (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
            &[],
        )?;
        Ok(row.try_get(0)?)
    }

    fn pending_events(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        // By id, past the watermark (V12) and `after`, and only up to the first event one
        // of whose older transactions has not ended: event ids are taken in the order of
        // transaction ids, so no lower id can still commit, and the outbox goes out in
        // its order, as with SQLite. (Per order, the row lock orders the changes anyway.)
        // Cut there, not filtered: an event restored from another server (`tx` NULL,
        // mod.rs) behind one held back would otherwise go first, and the watermark, moved
        // past both, would leave the held one unpublished for good. The id of the oldest
        // transaction still running, as a number, is read once: as a subquery it is
        // computed before the scan, where in the filter it was a snapshot taken for each
        // row (0.47 against 0.12 ms for a batch of 500).
        let rows = self.conn.borrow_mut().query(
            "SELECT id, order_id, event_type, payload, created_at,
                    tx IS NOT NULL
                      AND tx >= (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)
             FROM outbox
             WHERE id > GREATEST($1, (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks))
             ORDER BY id LIMIT $2",
            &[&after, &(limit as i64)],
        )?;
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            if r.try_get::<_, bool>(5)? {
                break;
            }
            let row = OutboxRow::read(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(4)?,
                r.try_get(3)?,
            );
            events.push(row.map_err(unparsed)?);
        }
        Ok(events)
    }

    fn blocked_event(&self) -> Result<Option<BlockedEvent>, StoreError> {
        let row = self.conn.borrow_mut().query_opt(
            "SELECT id, event_type, payload, blocked_since FROM outbox
             WHERE blocked_since IS NOT NULL
               AND id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)
             ORDER BY id LIMIT 1",
            &[],
        )?;
        row.map(|r| {
            let payload: String = r.try_get(2)?;
            Ok(BlockedEvent {
                id: r.try_get(0)?,
                event_id: EventHead::of(&payload).map_err(unparsed)?.event_id,
                event_type: r.try_get(1)?,
                since: r.try_get(3)?,
            })
        })
        .transpose()
    }

    fn lead_relay(&self) -> Result<Lead, StoreError> {
        let mut conn = self.conn.borrow_mut();
        // A session-level lock lives as long as the session: held if this session (not
        // an earlier one, lost since) took it. Checking the session costs a round trip.
        let session = {
            conn.check()?;
            conn.generation()
        };
        if *self.leading.borrow() == Some(session) {
            return Ok(Lead::Held);
        }
        let took: bool = conn
            .query_one("SELECT pg_try_advisory_lock($1)", &[&RELAY_LOCK])?
            .get(0);
        *self.leading.borrow_mut() = took.then_some(session);
        Ok(if took { Lead::Taken } else { Lead::Elsewhere })
    }
}

pub(super) fn load_idempotency(
    conn: &mut Conn,
    user: &UserId,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let row = conn.query_opt(
        "SELECT request, response_status, response_body, created_at FROM idempotency_keys
         WHERE user_id = $1 AND idem_key = $2",
        &[&user.as_str(), &key],
    )?;
    row.map(|r| {
        Ok(IdempotencyRecord {
            request: r.try_get(0)?,
            status: u16::try_from(r.try_get::<_, i32>(1)?).map_err(|_| bad("a response status"))?,
            body: r.try_get(2)?,
            created_at: r.try_get(3)?,
        })
    })
    .transpose()
}

/// An order from its head row (as selected above) and its items. A column that does not
/// read as this build expects it (a later migration's type) fails this order only.
pub(super) fn load_order(head: &Row, items: Vec<OrderItem>) -> Result<Order, StoreError> {
    let status: String = head.try_get(3)?;
    Ok(Order {
        id: OrderId::from_trusted(head.try_get(0)?),
        user_id: UserId::from_trusted(head.try_get(1)?),
        user_email: Email::from_trusted(head.try_get(2)?),
        items,
        total: Money::from_cents(head.try_get(4)?),
        status: Status::parse(&status).ok_or_else(|| bad("a status"))?,
        created_at: head.try_get(5)?,
        updated_at: head.try_get(6)?,
        stock_verified: head.try_get::<_, i32>(7)? != 0,
        priced_at: head.try_get(8)?,
    })
}

/// A product row selected as `product_id, name, price_cents, stock, fetched_at`.
pub(super) fn cached_product(r: &Row) -> Result<CachedProduct, StoreError> {
    Ok(CachedProduct {
        product_id: ProductId::new(r.try_get(0)?).ok_or_else(|| bad("a product id"))?,
        name: r.try_get(1)?,
        price: Money::from_cents(r.try_get(2)?),
        stock: r.try_get(3)?,
        fetched_at: r.try_get(4)?,
    })
}

fn item_at(r: &Row, first: usize) -> Result<OrderItem, StoreError> {
    Ok(OrderItem {
        product_id: ProductId::new(r.try_get(first)?).ok_or_else(|| bad("a product id"))?,
        product_name: r.try_get(first + 1)?,
        quantity: u32::try_from(r.try_get::<_, i32>(first + 2)?).map_err(|_| bad("a quantity"))?,
        price: Money::from_cents(r.try_get(first + 3)?),
        subtotal: Money::from_cents(r.try_get(first + 4)?),
    })
}

fn bad(what: &str) -> StoreError {
    StoreError::Unavailable(format!("the database holds {what} out of range"))
}

#[cfg(test)]
mod tests {
    use super::super::test_db::TestDb;
    use super::super::{migrate, reader, Connector};
    use crate::domain::{Page, UserId};
    use crate::store::Reads;

    #[test]
    fn a_reading_session_plans_a_list_page_once_and_keeps_the_urls_own_options() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let url = format!("{}?options=-c%20statement_timeout%3D4321", db.url());
        let connector = Connector::new(&url, &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        let reader = reader(&connector);
        let user = UserId::parse("user-1").unwrap();
        for _ in 0..10 {
            reader.orders_of(&user, Page::Number(1), 10).unwrap();
        }

        let mut conn = reader.conn.borrow_mut();
        let plans = conn
            .query(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements
                 WHERE statement LIKE 'WITH total%'",
                &[],
            )
            .unwrap();
        assert_eq!(plans.len(), 1, "one prepared statement for the page");
        let counts: (i64, i64) = (plans[0].get(0), plans[0].get(1));
        assert_eq!(
            counts,
            (10, 0),
            "(generic, custom) plans of the page's statement after ten pages"
        );
        let timeout: String = conn
            .query_one("SHOW statement_timeout", &[])
            .unwrap()
            .get(0);
        assert_eq!(timeout, "4321ms", "the URL's own options");
    }

    #[test]
    fn a_plan_mode_the_url_gives_stays_on_reading_sessions() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let url = format!(
            "{}?options=-c%20plan_cache_mode%3Dforce_custom_plan",
            db.url()
        );
        let connector = Connector::new(&url, &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        let reader = reader(&connector);
        let user = UserId::parse("user-1").unwrap();
        reader.orders_of(&user, Page::Number(1), 10).unwrap();
        let mode: String = reader
            .conn
            .borrow_mut()
            .query_one("SHOW plan_cache_mode", &[])
            .unwrap()
            .get(0);
        assert_eq!(mode, "force_custom_plan");
    }

    #[test]
    fn rows_whose_columns_no_longer_read_as_this_build_expects_are_errors_not_panics() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        let reader = reader(&connector);
        // As a later migration might change them, with an older instance still reading.
        reader
            .conn
            .borrow_mut()
            .batch(
                "INSERT INTO outbox (id, order_id, event_type, payload, created_at, blocked_since)
                   VALUES (1, 1, 'order_created', '{\"event_id\":\"s:1\"}', 1, 1);
                 INSERT INTO idempotency_keys
                   (user_id, idem_key, request, response_status, response_body, created_at)
                   VALUES ('user-1', 'k', '{}', 201, '{}', 1);
                 INSERT INTO product_cache VALUES (7, 'p', 1, 1, 1);
                 ALTER TABLE outbox ALTER COLUMN created_at TYPE numeric,
                   ALTER COLUMN blocked_since TYPE numeric;
                 ALTER TABLE idempotency_keys ALTER COLUMN response_status TYPE bigint;
                 ALTER TABLE product_cache ALTER COLUMN fetched_at TYPE numeric;",
            )
            .unwrap();
        let user = UserId::parse("user-1").unwrap();
        assert!(reader.pending_events(0, 10).is_err());
        assert!(reader.blocked_event().is_err());
        assert!(reader.outbox_stats().is_err());
        assert!(super::load_idempotency(&mut reader.conn.borrow_mut(), &user, "k").is_err());
        assert!(reader.catalog_stats(0).is_err());
    }
}
