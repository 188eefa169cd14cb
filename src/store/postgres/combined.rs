//! Online creates written together: one statement for several orders, their lines,
//! counts, sales, events and fresh product rows. A create alone costs PostgreSQL a
//! backend woken, a statement started and ended, and a commit of its own (its WAL
//! flushed), whatever its size; several in one statement share them. The parts that
//! write the orders, sales, events and product rows (`push_orders`, `push_sales`,
//! `push_events`, `push_products`) are a single create's too (engine.rs).
//!
//! The writer hands a session several such creates only when they queued while the
//! sessions that write them were busy (writer.rs, `run_combining`), so a create never
//! waits on a timer. The statement takes one event id per order, in the orders' turn,
//! with its transaction's id, under the same lock as a single create's
//! (`order_service_next_events`): event ids still follow transaction ids. The rows a
//! statement locks, users' counts and products' snapshot rows, go in key order, so two
//! such statements cannot deadlock; a create writes none of another's rows.
//!
//! A create that fails before the commit is left out (`undo_create`). The statement
//! fails only for the database's own reasons (what a create writes was parsed at the
//! edge), and then every create in it is told it was not kept, as a failed commit tells
//! every job of an SQLite batch.

use super::deferred::Deferred;
use crate::domain::{Order, OrderId};
use crate::store::{CachedProduct, EventPayload, NewEvent, StoreError};
use std::collections::BTreeMap;

/// An order's sales: when, and each line's product and quantity.
pub(super) struct Sales {
    order: OrderId,
    at: i64,
    lines: Vec<(i64, i32)>,
}

impl Sales {
    pub(super) fn of(o: &Order, at: i64) -> Sales {
        let lines = o
            .items
            .iter()
            .map(|i| (i.product_id.get(), i.quantity as i32))
            .collect();
        Sales {
            order: o.id,
            at,
            lines,
        }
    }
}

/// An event, its id to come.
pub(super) struct Event {
    order: OrderId,
    kind: String,
    payload: EventPayload,
    at: i64,
}

impl Event {
    pub(super) fn of(e: &NewEvent<'_>) -> Event {
        Event {
            order: e.order_id,
            kind: e.event_type.to_string(),
            payload: e.payload.clone(),
            at: e.at,
        }
    }
}

/// What one create (a job of the writer's) wrote.
#[derive(Default)]
struct Create {
    orders: Vec<Order>,
    sales: Vec<Sales>,
    events: Vec<Event>,
    products: Vec<CachedProduct>,
}

/// The creates of one statement, held until the commit.
pub struct Combined {
    /// Order ids taken for the batch, one per create, handed out in turn.
    ids: std::vec::IntoIter<i64>,
    creates: Vec<Create>,
}

impl Combined {
    pub fn new(ids: Vec<i64>) -> Combined {
        Combined {
            ids: ids.into_iter(),
            creates: Vec::new(),
        }
    }

    /// The next create begins (the writer's savepoint for it).
    pub fn next_create(&mut self) {
        self.creates.push(Create::default());
    }

    /// Forgets what the create under way wrote: it failed.
    pub fn undo_create(&mut self) {
        self.creates.pop();
    }

    fn current(&mut self) -> Result<&mut Create, StoreError> {
        self.creates
            .last_mut()
            .ok_or_else(|| StoreError::Unavailable("a combined write outside a create".into()))
    }

    pub fn order_id(&mut self) -> Result<OrderId, StoreError> {
        self.ids
            .next()
            .map(OrderId::from_trusted)
            .ok_or_else(|| StoreError::Unavailable("more creates than order ids taken".into()))
    }

    pub fn insert_order(&mut self, o: &Order) -> Result<(), StoreError> {
        self.current()?.orders.push(o.clone());
        Ok(())
    }

    pub fn record_sales(&mut self, o: &Order, at: i64) -> Result<(), StoreError> {
        self.current()?.sales.push(Sales::of(o, at));
        Ok(())
    }

    pub fn insert_event(&mut self, e: &NewEvent<'_>) -> Result<(), StoreError> {
        self.current()?.events.push(Event::of(e));
        Ok(())
    }

    pub fn upsert_products(&mut self, products: &[CachedProduct]) -> Result<(), StoreError> {
        self.current()?.products.extend_from_slice(products);
        Ok(())
    }

    /// Whether a create kept so far wrote an event.
    pub fn holds_events(&self) -> bool {
        self.creates.iter().any(|c| !c.events.is_empty())
    }

    /// Holds the creates' writes in `deferred` as one statement, its parts in the order a
    /// single create pushes them (engine.rs, with the same `push_orders`, `push_products`
    /// and `push_sales`), so that every create locks rows of a table in the same turn.
    /// (The server runs the parts of a `WITH` it does not read last to first, after the
    /// main query: the sales' lock, then the product rows, then the user's count.)
    /// Nothing held if no create wrote.
    pub fn hold(self, deferred: &mut Deferred) {
        let creates = self.creates;
        let orders: Vec<&Order> = creates.iter().flat_map(|c| &c.orders).collect();
        if !orders.is_empty() {
            push_orders(deferred, &orders);
        }
        let events: Vec<_> = creates.iter().flat_map(|c| &c.events).collect();
        if !events.is_empty() {
            push_events(deferred, &events);
        }
        // One row per product, the newest answer: a statement may not upsert a row twice.
        let mut products: BTreeMap<i64, &CachedProduct> = BTreeMap::new();
        for p in creates.iter().flat_map(|c| &c.products) {
            let kept = products.entry(p.product_id.get()).or_insert(p);
            if p.fetched_at > kept.fetched_at {
                *kept = p;
            }
        }
        if !products.is_empty() {
            let rows: Vec<&CachedProduct> = products.into_values().collect();
            push_products(deferred, &rows);
        }
        let sales: Vec<_> = creates.iter().flat_map(|c| &c.sales).collect();
        if !sales.is_empty() {
            push_sales(deferred, &sales);
        }
    }
}

/// Upserts the snapshot rows of `rows`, in their order, unless a row holds a newer
/// answer (a product gone since, V11, too). A statement may not upsert a row twice: one row per product, callers see to it.
/// Under `SALES_LOCK` shared, before the rows' locks, as every write of snapshot rows:
/// an offline create, which takes it alone before it locks the rows it has and then
/// inserts the ones it was answered, meets none of them half-way.
pub(super) fn push_products(deferred: &mut Deferred, rows: &[&CachedProduct]) {
    deferred.push(
        "product_cache",
        "INSERT INTO product_cache (product_id, name, price_cents, stock, fetched_at)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
         WHERE (SELECT pg_advisory_xact_lock_shared($6)) IS NOT NULL
         ON CONFLICT (product_id) DO UPDATE SET name = excluded.name,
           price_cents = excluded.price_cents, stock = excluded.stock,
           fetched_at = excluded.fetched_at, gone = 0
         WHERE excluded.fetched_at >= product_cache.fetched_at",
        vec![
            Box::new(rows.iter().map(|p| p.product_id.get()).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|p| p.name.clone()).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|p| p.price.cents()).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|p| p.stock).collect::<Vec<_>>()),
            Box::new(rows.iter().map(|p| p.fetched_at).collect::<Vec<_>>()),
            Box::new(super::SALES_LOCK),
        ],
    );
}

/// The sales of the orders' lines, to the ledger, under `SALES_LOCK` shared until the
/// transaction ends: an offline create, which takes it alone before it counts the sales
/// against the snapshot, waits for these to commit and counts them.
pub(super) fn push_sales(deferred: &mut Deferred, sales: &[&Sales]) {
    let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in sales {
        for (product, quantity) in &s.lines {
            cols.0.push(*product);
            cols.1.push(s.at);
            cols.2.push(s.order.get());
            cols.3.push(*quantity);
        }
    }
    deferred.push(
        "stock_ledger",
        "INSERT INTO stock_ledger (product_id, sold_at, order_id, quantity)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::integer[])
         WHERE (SELECT pg_advisory_xact_lock_shared($5)) IS NOT NULL",
        vec![
            Box::new(cols.0),
            Box::new(cols.1),
            Box::new(cols.2),
            Box::new(cols.3),
            Box::new(super::SALES_LOCK),
        ],
    );
}

/// The orders, their users' counts (one row per user, in user order) and their lines.
pub(super) fn push_orders(deferred: &mut Deferred, orders: &[&Order]) {
    let col = |f: fn(&Order) -> i64| orders.iter().map(|o| f(o)).collect::<Vec<i64>>();
    let text = |f: fn(&Order) -> &str| {
        orders
            .iter()
            .map(|o| f(o).to_string())
            .collect::<Vec<String>>()
    };
    deferred.push(
        "orders",
        "INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at,
           updated_at, stock_verified, priced_at, lines)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
           $6::bigint[], $7::bigint[], $8::integer[], $9::bigint[], $10::text[])",
        vec![
            Box::new(col(|o| o.id.get())),
            Box::new(text(|o| o.user_id.as_str())),
            Box::new(text(|o| o.user_email.as_str())),
            Box::new(text(|o| o.status.as_str())),
            Box::new(col(|o| o.total.cents())),
            Box::new(col(|o| o.created_at)),
            Box::new(col(|o| o.updated_at)),
            Box::new(
                orders
                    .iter()
                    .map(|o| i32::from(o.stock_verified))
                    .collect::<Vec<_>>(),
            ),
            Box::new(orders.iter().map(|o| o.priced_at).collect::<Vec<_>>()),
            Box::new(
                orders
                    .iter()
                    .map(|o| crate::store::lines::encode(&o.items))
                    .collect::<Vec<_>>(),
            ),
        ],
    );
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for o in orders {
        *counts.entry(o.user_id.as_str()).or_default() += 1;
    }
    deferred.push(
        "order_counts",
        "INSERT INTO order_counts (user_id, orders)
         SELECT * FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (user_id) DO UPDATE SET orders = order_counts.orders + excluded.orders",
        vec![
            Box::new(counts.keys().map(|u| u.to_string()).collect::<Vec<_>>()),
            Box::new(counts.values().copied().collect::<Vec<_>>()),
        ],
    );
    let mut lines = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for o in orders {
        for (n, i) in o.items.iter().enumerate() {
            lines.0.push(o.id.get());
            lines.1.push(n as i32 + 1);
            lines.2.push(i.product_id.get());
            lines.3.push(i.product_name.as_str().to_string());
            lines.4.push(i.quantity as i32);
            lines.5.push(i.price.cents());
            lines.6.push(i.subtotal.cents());
        }
    }
    deferred.push(
        "order_items",
        "INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity,
           price_cents, subtotal_cents)
         SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::text[],
           $5::integer[], $6::bigint[], $7::bigint[])",
        vec![
            Box::new(lines.0),
            Box::new(lines.1),
            Box::new(lines.2),
            Box::new(lines.3),
            Box::new(lines.4),
            Box::new(lines.5),
            Box::new(lines.6),
        ],
    );
}

/// The events, as the statement's main query: it takes their ids, in their turn, before
/// the writes in the statement's `WITH` give the transaction its id. The payload's id is
/// put in as `EventPayload::with_id` does.
pub(super) fn push_events(deferred: &mut Deferred, events: &[&Event]) {
    let text = |f: fn(&Event) -> &str| events.iter().map(|e| f(e).to_string()).collect::<Vec<_>>();
    deferred.push_main(
        "outbox",
        "INSERT INTO outbox (id, order_id, event_type, payload, created_at, tx)
         SELECT n.id, e.order_id, e.event_type,
           e.head || n.id::text || e.middle || n.id::text || e.tail, e.at, n.tx
         FROM order_service_next_events($1) WITH ORDINALITY AS n (id, tx, i)
         JOIN unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
           $7::bigint[]) WITH ORDINALITY AS e (order_id, event_type, head, middle, tail, at, i)
           ON e.i = n.i",
        vec![
            Box::new(events.len() as i32),
            Box::new(events.iter().map(|e| e.order.get()).collect::<Vec<_>>()),
            Box::new(text(|e| &e.kind)),
            Box::new(text(|e| &e.payload.head)),
            Box::new(text(|e| &e.payload.middle)),
            Box::new(text(|e| &e.payload.tail)),
            Box::new(events.iter().map(|e| e.at).collect::<Vec<_>>()),
        ],
    );
}
