//! The order rules, each a function over one storage transaction: what it checks, what
//! it writes, and the event it records with it.

use super::events;
use super::idempotency::{self, Idempotent};
use super::{OrderError, Priced, PricedOrder};
use crate::domain::{Money, Order, OrderId, OrderItem, ProductId, Status, UserId};
use crate::products::price_from_snapshot;
use crate::store::Tx;

/// Stores a priced order with its `order_created` event and, with a key claimed for it,
/// the answer repeats will get.
pub fn create(
    tx: &mut dyn Tx,
    source: &str,
    order: PricedOrder,
    idempotent: Option<Idempotent>,
    now: i64,
) -> Result<Order, OrderError> {
    // In product order for every transaction, as the snapshot's row locks are taken:
    // two transactions refreshing the same products cannot deadlock (PostgreSQL).
    let mut fresh = order.fresh_products;
    fresh.sort_by_key(|p| p.product_id);
    let (lines, stock_verified, priced_at) = match order.priced {
        Priced::Live { lines, at } => (lines, true, at),
        Priced::Offline {
            order: new,
            max_age,
            outage,
        } => {
            let ids: Vec<ProductId> = new.lines().iter().map(|l| l.product_id).collect();
            let mut rows = tx.snapshot_for_update(&ids)?;
            if !fresh.is_empty() {
                // What the product service answered this order before it failed replaces
                // the older rows. Read again, they count this store's sales since those
                // answers (an order committed while the lookup was under way), as any
                // row does.
                tx.upsert_products(&fresh)?;
                fresh.clear();
                rows = tx.snapshot_for_update(&ids)?;
            }
            let (lines, at) = price_from_snapshot(&new, &rows, now, max_age, &outage)
                .map_err(OrderError::Pricing)?;
            (lines, false, at)
        }
    };
    let items: Vec<OrderItem> = lines
        .iter()
        .map(|l| OrderItem {
            product_id: l.product_id,
            product_name: l.product_name.clone(),
            quantity: l.quantity.get(),
            price: l.price,
            subtotal: l.subtotal(),
        })
        .collect();
    let total = items
        .iter()
        .try_fold(Money::ZERO, |sum, i| sum.plus(i.subtotal))
        .expect("totals are bounded by the item and quantity limits");
    let created = Order {
        id: tx.next_order_id(idempotent.is_some())?,
        user_id: order.user_id,
        user_email: order.user_email,
        items,
        total,
        status: Status::Pending,
        created_at: now,
        updated_at: now,
        stock_verified,
        priced_at: Some(priced_at),
    };
    tx.insert_order(&created)?;
    events::record(tx, source, &created, None, now)?;
    // Before the answer, which sends the writes held back. Pushed in this order, they
    // take the sales' lock first, then the product rows, then the user's count
    // (PostgreSQL runs a statement's held-back writes last to first), as an offline
    // create takes them (the lock and its snapshot first): a keyed create and an offline
    // one of the same user and product cannot deadlock.
    tx.upsert_products(&fresh)?;
    // Every sale, online or not, counts against the snapshot until a fresher row of
    // the product: the snapshot's stock was read before it.
    tx.record_sales(&created, now)?;
    if let Some(i) = idempotent {
        idempotency::answer(tx, &created.user_id, i, &created)?;
    }
    Ok(created)
}

/// Moves an order to `to` if the contract allows it, with its event; the same status is
/// a no-op (no event). With `owner`, only that user's order is visible.
pub fn change_status(
    tx: &mut dyn Tx,
    source: &str,
    id: OrderId,
    owner: Option<&UserId>,
    to: Status,
    now: i64,
) -> Result<Order, OrderError> {
    let mut order = tx
        .order_for_update(id)?
        .filter(|o| owner.is_none_or(|u| &o.user_id == u))
        .ok_or(OrderError::NotFound)?;
    let from = order.status;
    if from == to {
        return Ok(order);
    }
    if !from.can_become(to) {
        return Err(OrderError::InvalidTransition { from, to });
    }
    let now = now.max(order.updated_at);
    tx.update_status(id, to, now)?;
    order.status = to;
    order.updated_at = now;
    events::record(tx, source, &order, Some(from), now)?;
    Ok(order)
}
