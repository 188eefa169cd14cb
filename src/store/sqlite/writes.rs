//! Statements that change the database, one function a change. Run by the writer only.

use crate::domain::{Order, OrderId, ProductId, Status, UserId};
use crate::store::CachedProduct;
use rusqlite::{params, Connection};

pub(crate) fn insert_order(conn: &Connection, o: &Order) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at, updated_at,
           stock_verified, priced_at, lines)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        o.id.get(),
        o.user_id.as_str(),
        o.user_email.as_str(),
        o.status.as_str(),
        o.total.cents(),
        o.created_at,
        o.updated_at,
        i64::from(o.stock_verified),
        o.priced_at,
        crate::store::lines::encode(&o.items)
    ])?;
    let mut item = conn.prepare_cached(
        "INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity, price_cents, subtotal_cents)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    conn.prepare_cached(
        "INSERT INTO order_counts (user_id, orders) VALUES (?1, 1)
         ON CONFLICT (user_id) DO UPDATE SET orders = order_counts.orders + 1",
    )?
    .execute([o.user_id.as_str()])?;
    for (line_no, i) in o.items.iter().enumerate() {
        item.execute(params![
            o.id.get(),
            line_no as i64 + 1,
            i.product_id.get(),
            i.product_name,
            i.quantity,
            i.price.cents(),
            i.subtotal.cents()
        ])?;
    }
    Ok(())
}

pub(crate) fn update_status(
    conn: &Connection,
    id: i64,
    status: Status,
    at: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE orders SET status = ?1, updated_at = ?2 WHERE id = ?3")?
        .execute(params![status.as_str(), at, id])?;
    Ok(())
}

pub(crate) fn claim_idempotency(
    conn: &Connection,
    user: &UserId,
    key: &str,
    request: &str,
    at: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO idempotency_keys (user_id, idem_key, request, response_status, response_body, created_at)
             VALUES (?1, ?2, ?3, 0, '', ?4) ON CONFLICT (user_id, idem_key) DO NOTHING",
        )?
        .execute(params![user.as_str(), key, request, at])?;
    Ok(n == 1)
}

pub(crate) fn retake_idempotency(
    conn: &Connection,
    user: &UserId,
    key: &str,
    request: &str,
    at: i64,
    stale_before: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE idempotency_keys SET request = ?3, created_at = ?4
             WHERE user_id = ?1 AND idem_key = ?2 AND response_status = 0 AND created_at < ?5",
        )?
        .execute(params![user.as_str(), key, request, at, stale_before])?;
    Ok(n == 1)
}

pub(crate) fn answer_idempotency(
    conn: &Connection,
    user: &UserId,
    key: &str,
    claimed_at: i64,
    status: u16,
    body: &str,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE idempotency_keys SET response_status = ?4, response_body = ?5
             WHERE user_id = ?1 AND idem_key = ?2 AND created_at = ?3 AND response_status = 0",
        )?
        .execute(params![user.as_str(), key, claimed_at, status, body])?;
    Ok(n == 1)
}

pub(crate) fn release_idempotency(
    conn: &Connection,
    user: &UserId,
    key: &str,
    claimed_at: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM idempotency_keys
         WHERE user_id = ?1 AND idem_key = ?2 AND created_at = ?3 AND response_status = 0",
    )?
    .execute(params![user.as_str(), key, claimed_at])?;
    Ok(())
}

/// Deletes at most `limit` idempotency records created before `before`.
pub(crate) fn prune_idempotency(
    conn: &Connection,
    before: i64,
    limit: usize,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM idempotency_keys WHERE rowid IN (
           SELECT rowid FROM idempotency_keys WHERE created_at < ?1 LIMIT ?2)",
    )?
    .execute(params![before, limit as i64])
}

/// See `Tx::fill_lines`. The partial index `orders_without_lines` finds the orders.
pub(crate) fn fill_lines(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Option<(i64, usize)>> {
    let last: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(id) FROM (
               SELECT id FROM orders WHERE lines IS NULL AND id > ?1 ORDER BY id LIMIT ?2)",
        )?
        .query_row(params![after, limit as i64], |r| r.get(0))?;
    let Some(last) = last else {
        return Ok(None);
    };
    // The same arrays as `store::lines::encode` writes.
    let filled = conn
        .prepare_cached(
            "UPDATE orders SET lines = (
               SELECT json_group_array(json_array(product_id, product_name, quantity,
                 price_cents, subtotal_cents) ORDER BY line_no)
               FROM order_items WHERE order_id = orders.id)
             WHERE lines IS NULL AND id > ?1 AND id <= ?2",
        )?
        .execute(params![after, last])?;
    Ok(Some((last, filled)))
}

/// Keeps `p` unless the cache holds a newer answer: a slow lookup that commits last
/// must not put back an older price, nor a product answered gone since (V11).
pub(crate) fn upsert_product(conn: &Connection, p: &CachedProduct) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO product_cache (product_id, name, price_cents, stock, fetched_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (product_id) DO UPDATE SET name = excluded.name,
           price_cents = excluded.price_cents, stock = excluded.stock,
           fetched_at = excluded.fetched_at, gone = 0
         WHERE excluded.fetched_at >= product_cache.fetched_at",
    )?
    .execute(params![
        p.product_id.get(),
        p.name,
        p.price.cents(),
        p.stock,
        p.fetched_at
    ])?;
    Ok(())
}

/// Marks the product gone as of `answered_at`, unless a newer answer knows it; a row
/// even where there was none, for an older answer still on its way to meet.
pub(crate) fn forget_product(
    conn: &Connection,
    id: ProductId,
    answered_at: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO product_cache (product_id, name, price_cents, stock, fetched_at, gone)
         VALUES (?1, '', 0, 0, ?2, 1)
         ON CONFLICT (product_id) DO UPDATE SET fetched_at = excluded.fetched_at, gone = 1
         WHERE excluded.fetched_at >= product_cache.fetched_at",
    )?
    .execute([id.get(), answered_at])?;
    Ok(())
}

/// Deletes at most `limit` rows of products gone before `before`.
pub(crate) fn prune_gone_products(
    conn: &Connection,
    before: i64,
    limit: usize,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM product_cache WHERE product_id IN (
           SELECT product_id FROM product_cache WHERE gone = 1 AND fetched_at < ?1 LIMIT ?2)",
    )?
    .execute(params![before, limit as i64])
}

pub(crate) fn record_sale(
    conn: &Connection,
    order: OrderId,
    product: ProductId,
    quantity: u32,
    at: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO stock_ledger (product_id, sold_at, order_id, quantity) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![product.get(), at, order.get(), quantity])?;
    Ok(())
}

/// See `Tx::finish_refresh`. A ledger entry counts while it is not older than its
/// product's row; one whose product has no row counts until a refresh after it.
pub(crate) fn finish_refresh(
    conn: &Connection,
    started: i64,
    products: i64,
    source: &str,
    complete_list: bool,
) -> rusqlite::Result<()> {
    if complete_list {
        // Gone as of the refresh's start: a lookup older than it does not put them back.
        // A row gone already keeps its stamp, so that the prune takes it in time.
        conn.prepare_cached(
            "UPDATE product_cache SET fetched_at = ?1, gone = 1 WHERE fetched_at < ?1 AND gone = 0",
        )?
        .execute([started])?;
    }
    conn.prepare_cached(
        "DELETE FROM stock_ledger WHERE sold_at < COALESCE(
           (SELECT p.fetched_at FROM product_cache p WHERE p.product_id = stock_ledger.product_id), ?1)",
    )?
    .execute([started])?;
    conn.prepare_cached(
        "INSERT INTO catalog_refresh (id, refreshed_at, products, source) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET refreshed_at = excluded.refreshed_at,
           products = excluded.products, source = excluded.source
             WHERE excluded.refreshed_at >= catalog_refresh.refreshed_at",
    )?
    .execute(params![started, products, source])?;
    Ok(())
}

/// A real write, so that a full disk or a read-only file shows in `/ready`.
pub(crate) fn heartbeat(conn: &Connection, at: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO heartbeat (id, beat_at) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at",
    )?
    .execute([at])?;
    Ok(())
}

pub(crate) fn max_order_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT MAX(id) FROM orders", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .map(|v| v.unwrap_or(0))
}
