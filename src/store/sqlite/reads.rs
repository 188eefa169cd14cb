//! Read queries, on a connection of the caller's own.

use super::outbox;
use crate::domain::{Email, Money, Order, OrderId, OrderItem, Page, ProductId, Status, UserId};
use crate::store::{
    BlockedEvent, CachedProduct, CatalogStats, IdempotencyRecord, OrderList, OutboxRow,
    OutboxStats, Reads, SnapshotProduct, StoreError,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;

/// A page of a user's orders, newest first, by number; and after a cursor. Both read
/// only the columns that the user's index holds (V10), so SQLite answers them from the
/// index without a lookup in the table per order.
const LIST_PAGE: &str =
    "SELECT id, user_id, user_email, status, total_cents, created_at, updated_at,
       stock_verified, priced_at, lines
     FROM orders WHERE user_id = ?1
     ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3";
const LIST_AFTER: &str =
    "SELECT id, user_id, user_email, status, total_cents, created_at, updated_at,
       stock_verified, priced_at, lines
     FROM orders WHERE user_id = ?1 AND (created_at, id) < (?2, ?3)
     ORDER BY created_at DESC, id DESC LIMIT ?4";

/// A read-only connection and the queries run on it.
pub struct Reader {
    conn: Connection,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        Ok(Reader {
            conn: super::open_read(path)?,
        })
    }
}

impl Reads for Reader {
    fn order(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        Ok(load_order(&self.conn, id)?)
    }

    fn orders_of(&self, user: &UserId, page: Page, per_page: u32) -> Result<OrderList, StoreError> {
        // The count, the page and its items from one snapshot: a create committed between
        // two of them would give a page that disagrees with its total.
        let conn = self.conn.unchecked_transaction()?;
        let total: i64 = conn
            .prepare_cached("SELECT orders FROM order_counts WHERE user_id = ?1")?
            .query_row([user.as_str()], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        // One more than the page, to know whether older orders follow.
        let limit = i64::from(per_page) + 1;
        let mut heads = match page {
            Page::Number(n) => {
                let offset = i64::from(n - 1) * i64::from(per_page);
                if offset >= total {
                    return Ok(OrderList {
                        orders: Vec::new(),
                        total,
                        more: false,
                    });
                }
                conn.prepare_cached(LIST_PAGE)?
                    .query_map(params![user.as_str(), limit, offset], order_head)?
                    .collect::<rusqlite::Result<Vec<Order>>>()?
            }
            Page::After(c) => conn
                .prepare_cached(LIST_AFTER)?
                .query_map(
                    params![user.as_str(), c.created_at, c.id.get(), limit],
                    order_head,
                )?
                .collect::<rusqlite::Result<Vec<Order>>>()?,
        };
        let more = heads.len() > per_page as usize;
        heads.truncate(per_page as usize);
        load_items_of(&conn, &mut heads)?;
        Ok(OrderList {
            orders: heads,
            total,
            more,
        })
    }

    fn cached_products(&self, ids: &[ProductId]) -> Result<Vec<CachedProduct>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT product_id, name, price_cents, stock, fetched_at FROM product_cache
             WHERE product_id = ?1 AND gone = 0",
        )?;
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            let row = stmt
                .query_row([id.get()], |r| {
                    Ok(CachedProduct {
                        product_id: *id,
                        name: r.get(1)?,
                        price: Money::from_cents(r.get(2)?),
                        stock: r.get(3)?,
                        fetched_at: r.get(4)?,
                    })
                })
                .optional()?;
            found.extend(row);
        }
        Ok(found)
    }

    fn catalog_stats(&self, fresh_after: i64) -> Result<CatalogStats, StoreError> {
        let mut stats = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN fetched_at >= ?1 THEN 1 ELSE 0 END), 0),
                   MIN(fetched_at), MAX(fetched_at) FROM product_cache WHERE gone = 0",
            )?
            .query_row([fresh_after], |r| {
                Ok(CatalogStats {
                    products: r.get(0)?,
                    fresh: r.get(1)?,
                    oldest_fetched_at: r.get(2)?,
                    newest_fetched_at: r.get(3)?,
                    ..CatalogStats::default()
                })
            })?;
        let last = self
            .conn
            .prepare_cached(
                "SELECT refreshed_at, products, source FROM catalog_refresh WHERE id = 1",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((at, products, source)) = last {
            stats.refreshed_at = Some(at);
            stats.refreshed_products = Some(products);
            stats.source = Some(source);
        }
        Ok(stats)
    }

    fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        Ok(outbox::stats(&self.conn)?)
    }

    fn published_events(&self) -> Result<i64, StoreError> {
        Ok(outbox::published_count(&self.conn)?)
    }

    fn pending_events(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(outbox::pending(&self.conn, after, limit)?)
    }

    fn blocked_event(&self) -> Result<Option<BlockedEvent>, StoreError> {
        Ok(outbox::blocked(&self.conn)?)
    }
}

pub(crate) fn load_order(conn: &Connection, id: OrderId) -> rusqlite::Result<Option<Order>> {
    let head = conn
        .prepare_cached(
            "SELECT id, user_id, user_email, status, total_cents, created_at, updated_at,
               stock_verified, priced_at, lines
             FROM orders WHERE id = ?1",
        )?
        .query_row([id.get()], order_head)
        .optional()?;
    match head {
        None => Ok(None),
        Some(mut order) => {
            if order.items.is_empty() {
                order.items = load_items(conn, order.id)?;
            }
            Ok(Some(order))
        }
    }
}

/// The snapshot rows of `ids` with what was sold of each since it was fetched. The
/// writer's transaction holds the database's one write lock: nothing changes them meanwhile.
pub(crate) fn snapshot(
    conn: &Connection,
    ids: &[ProductId],
) -> rusqlite::Result<Vec<SnapshotProduct>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.name, p.price_cents, p.stock, p.fetched_at,
           (SELECT COALESCE(SUM(l.quantity), 0) FROM stock_ledger l
             WHERE l.product_id = p.product_id AND l.sold_at >= p.fetched_at)
         FROM product_cache p WHERE p.product_id = ?1 AND p.gone = 0",
    )?;
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        let row = stmt
            .query_row([id.get()], |r| {
                Ok(SnapshotProduct {
                    product: CachedProduct {
                        product_id: *id,
                        name: r.get(0)?,
                        price: Money::from_cents(r.get(1)?),
                        stock: r.get(2)?,
                        fetched_at: r.get(3)?,
                    },
                    sold_since: r.get(4)?,
                })
            })
            .optional()?;
        found.extend(row);
    }
    Ok(found)
}

pub(crate) fn load_idempotency(
    conn: &Connection,
    user: &UserId,
    key: &str,
) -> rusqlite::Result<Option<IdempotencyRecord>> {
    conn.prepare_cached(
        "SELECT request, response_status, response_body, created_at FROM idempotency_keys
         WHERE user_id = ?1 AND idem_key = ?2",
    )?
    .query_row(params![user.as_str(), key], |r| {
        Ok(IdempotencyRecord {
            request: r.get(0)?,
            status: r.get(1)?,
            body: r.get(2)?,
            created_at: r.get(3)?,
        })
    })
    .optional()
}

/// An order from its row, its items from its `lines` (column 9). An order written
/// without them (before V8, or by an older instance) comes with no items, which no
/// order has otherwise: the caller reads those from `order_items`.
fn order_head(r: &Row<'_>) -> rusqlite::Result<Order> {
    let items = match r.get_ref(9)?.as_str_or_null()? {
        Some(text) => crate::store::lines::decode(text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, e.into())
        })?,
        None => Vec::new(),
    };
    let status: String = r.get(3)?;
    let status = Status::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown status {status:?}").into(),
        )
    })?;
    Ok(Order {
        id: OrderId::from_trusted(r.get(0)?),
        user_id: UserId::from_trusted(r.get(1)?),
        user_email: Email::from_trusted(r.get(2)?),
        items,
        total: Money::from_cents(r.get(4)?),
        status,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        stock_verified: r.get::<_, i64>(7)? != 0,
        priced_at: r.get(8)?,
    })
}

/// The items of a page's orders that came without them (`order_head`), in one query.
fn load_items_of(conn: &Connection, orders: &mut [Order]) -> rusqlite::Result<()> {
    if orders.iter().all(|o| !o.items.is_empty()) {
        return Ok(());
    }
    let ids = format!(
        "[{}]",
        orders
            .iter()
            .filter(|o| o.items.is_empty())
            .map(|o| o.id.get().to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut stmt = conn.prepare_cached(
        "SELECT order_id, product_id, product_name, quantity, price_cents, subtotal_cents
         FROM order_items WHERE order_id IN (SELECT value FROM json_each(?1))
         ORDER BY order_id, line_no",
    )?;
    let mut rows = stmt.query([ids])?;
    while let Some(r) = rows.next()? {
        let order_id: i64 = r.get(0)?;
        let item = OrderItem {
            product_id: ProductId::new(r.get(1)?)
                .ok_or(rusqlite::Error::IntegralValueOutOfRange(1, 0))?,
            product_name: r.get(2)?,
            quantity: r.get(3)?,
            price: Money::from_cents(r.get(4)?),
            subtotal: Money::from_cents(r.get(5)?),
        };
        if let Some(o) = orders.iter_mut().find(|o| o.id.get() == order_id) {
            o.items.push(item);
        }
    }
    Ok(())
}

const ITEMS_OF_ORDER: &str =
    "SELECT product_id, product_name, quantity, price_cents, subtotal_cents
     FROM order_items WHERE order_id = ?1 ORDER BY line_no";

fn load_items(conn: &Connection, order: OrderId) -> rusqlite::Result<Vec<OrderItem>> {
    let mut stmt = conn.prepare_cached(ITEMS_OF_ORDER)?;
    let items = stmt.query_map([order.get()], |r| {
        Ok(OrderItem {
            product_id: ProductId::new(r.get(0)?)
                .ok_or(rusqlite::Error::IntegralValueOutOfRange(0, 0))?,
            product_name: r.get(1)?,
            quantity: r.get(2)?,
            price: Money::from_cents(r.get(3)?),
            subtotal: Money::from_cents(r.get(4)?),
        })
    })?;
    items.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates of a user commit while their list pages are read: each page agrees with its
    /// total (all of the user's orders fit on one). Three users one after another, so that
    /// without the read transaction a page disagrees a dozen times, not a few.
    #[test]
    fn a_list_page_and_its_total_come_from_one_moment() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.db");
        let mut w = crate::store::open_write(&path).unwrap();
        crate::store::migrate(&mut w).unwrap();
        w.pragma_update(None, "synchronous", "OFF").unwrap();
        let reader = Reader::open(&path).unwrap();
        let (done, current) = (AtomicBool::new(false), AtomicUsize::new(0));
        let disagreed = std::thread::scope(|s| {
            let (done, current) = (&done, &current);
            s.spawn(move || {
                for user in 0..3_usize {
                    current.store(user, Ordering::SeqCst);
                    for n in 1..=90_i64 {
                        let tx = w.unchecked_transaction().unwrap();
                        tx.execute(
                            "INSERT INTO orders (id, user_id, user_email, status, total_cents,
                               created_at, updated_at, stock_verified, priced_at, lines)
                             VALUES (?1, ?2, 'u@example.com', 'pending', 100, ?1, ?1, 1, 1, '[]')",
                            params![user as i64 * 90 + n, format!("u{user}")],
                        )
                        .unwrap();
                        tx.execute(
                            "INSERT INTO order_counts (user_id, orders) VALUES (?1, 1)
                             ON CONFLICT (user_id) DO UPDATE SET orders = orders + 1",
                            [format!("u{user}")],
                        )
                        .unwrap();
                        tx.commit().unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
                done.store(true, Ordering::SeqCst);
            });
            let mut disagreed = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let user = UserId::from_trusted(format!("u{}", current.load(Ordering::SeqCst)));
                let list = reader.orders_of(&user, Page::Number(1), 100).unwrap();
                if list.orders.len() as i64 != list.total {
                    disagreed.push((list.total, list.orders.len()));
                }
            }
            disagreed
        });
        assert!(
            disagreed.is_empty(),
            "(total, orders on the page): {disagreed:?}"
        );
    }

    /// Each of a page's orders read from the table was a page of the file on its own,
    /// which a reader's cache rarely holds once the orders number in the millions.
    #[test]
    fn a_list_page_reads_its_orders_from_the_users_index_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrate(&mut conn).unwrap();
        for (sql, search) in [
            (LIST_PAGE, "user_id=?"),
            (LIST_AFTER, "user_id=? AND created_at<?"),
        ] {
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let unbound = vec![rusqlite::types::Null; explain.parameter_count()];
            let plan: Vec<String> = explain
                .query_map(rusqlite::params_from_iter(unbound), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(
                plan,
                [format!(
                    "SEARCH orders USING COVERING INDEX orders_by_user ({search})"
                )],
                "{sql}"
            );
        }
    }

    #[test]
    fn an_orders_statements_are_prepared_once_whatever_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.db");
        let mut w = crate::store::open_write(&path).unwrap();
        crate::store::migrate(&mut w).unwrap();
        for id in 1..=20 {
            w.execute(
                "INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at,
                   updated_at, stock_verified, priced_at)
                 VALUES (?1, 'u', 'u@example.com', 'pending', 100, 1, 1, 1, 1)",
                [id],
            )
            .unwrap();
            w.execute(
                "INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity,
                   price_cents, subtotal_cents) VALUES (?1, 1, 1, 'p', 1, 100, 100)",
                [id],
            )
            .unwrap();
        }
        let reader = Reader::open(&path).unwrap();
        for id in 1..=20 {
            let order = reader.order(OrderId::from_trusted(id)).unwrap().unwrap();
            assert_eq!(order.items.len(), 1);
        }
        // Under SQLite's default planner, the items' ORDER BY made every new id a
        // reparse and a new plan: the statement cache saved nothing.
        let items = reader.conn.prepare_cached(ITEMS_OF_ORDER).unwrap();
        assert_eq!(
            items.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "re-prepared on a new id"
        );
    }
}
