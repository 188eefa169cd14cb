//! The events an order's changes send, as consumers receive them.

use crate::clock::rfc3339;
use crate::domain::{Email, Money, Order, OrderId, OrderItem, Status, UserId};
use crate::store::{NewEvent, StoreError, Tx};
use serde::Serialize;

/// Writes the event of `order`'s change (from `previous`; `None` for its creation) into
/// the outbox, in the caller's transaction.
pub fn record(
    tx: &mut dyn Tx,
    source: &str,
    order: &Order,
    previous: Option<Status>,
    at: i64,
) -> Result<(), StoreError> {
    let id = tx.next_event_id()?;
    let payload = payload(id, source, order, previous, at);
    tx.insert_event(&NewEvent {
        id,
        order_id: order.id,
        event_type: event_type(previous, order.status),
        payload: &payload,
        at,
    })
}

/// `<source>:<outbox id>`: what consumers deduplicate on.
pub fn event_id(source: &str, id: i64) -> String {
    format!("{source}:{id}")
}

pub fn event_type(previous: Option<Status>, now: Status) -> &'static str {
    match (previous, now) {
        (None, _) => "order_created",
        (Some(_), Status::Cancelled) => "order_cancelled",
        (Some(_), _) => "order_status_updated",
    }
}

#[derive(Serialize)]
struct Event<'a> {
    event_id: String,
    event_type: &'static str,
    /// The outbox id: commit order, for a consumer that wants to drop stale events.
    sequence: i64,
    occurred_at: String,
    source: &'a str,
    order_id: OrderId,
    user_id: &'a UserId,
    user_email: &'a Email,
    status: Status,
    previous_status: Option<Status>,
    total: Money,
    items: &'a [OrderItem],
    created_at: String,
    updated_at: String,
    /// False for an order taken offline, priced from the catalog snapshot.
    stock_verified: bool,
    priced_at: Option<String>,
}

fn payload(id: i64, source: &str, order: &Order, previous: Option<Status>, at: i64) -> String {
    let event = Event {
        event_id: event_id(source, id),
        event_type: event_type(previous, order.status),
        sequence: id,
        occurred_at: rfc3339(at),
        source,
        order_id: order.id,
        user_id: &order.user_id,
        user_email: &order.user_email,
        status: order.status,
        previous_status: previous,
        total: order.total,
        items: &order.items,
        created_at: rfc3339(order.created_at),
        updated_at: rfc3339(order.updated_at),
        stock_verified: order.stock_verified,
        priced_at: order.priced_at.map(rfc3339),
    };
    serde_json::to_string(&event).expect("an event always serializes")
}
