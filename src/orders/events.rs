//! The events an order's changes send, as consumers receive them.

use crate::clock::rfc3339;
use crate::domain::{Email, Money, Order, OrderId, OrderItem, Status, UserId};
use crate::store::{EventPayload, NewEvent, StoreError, Tx};
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
    tx.insert_event(&NewEvent {
        order_id: order.id,
        event_type: event_type(previous, order.status),
        payload: &around_id(source, order, previous, at),
        at,
    })
}

/// Stands for the outbox id while the payload is cut; the two places are found by the
/// keys around them.
const NO_ID: i64 = i64::MIN;

/// The payload, cut where its outbox id goes: in `event_id`, the first field (so before
/// `event_type`), and in `sequence`. A key's quotes cannot appear unescaped in a string.
/// The store puts the id back (`EventPayload::with_id`, or PostgreSQL's statement).
fn around_id(source: &str, order: &Order, previous: Option<Status>, at: i64) -> EventPayload {
    let text = payload(NO_ID, source, order, previous, at);
    let in_event_id = format!(":{NO_ID}\",\"event_type\":");
    let in_sequence = format!("\"sequence\":{NO_ID},");
    let cut = |text: &str, around: &str| -> (usize, usize) {
        let at = text.find(around).expect("the payload holds its id") + around.find('-').unwrap();
        (at, at + NO_ID.to_string().len())
    };
    let (first, first_end) = cut(&text, &in_event_id);
    let (second, second_end) = cut(&text, &in_sequence);
    EventPayload {
        head: text[..first].to_string(),
        middle: text[first_end..second].to_string(),
        tail: text[second_end..].to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_cut_around_its_id_is_the_payload_with_any_id() {
        // Sources, users and names that look like the places the id goes.
        let cases = [
            ("store-1", "user-1", "Mouse"),
            (
                "st\"ore:-9223372036854775808",
                "-9223372036854775808",
                "Cable",
            ),
            ("s:-9223372036854775808\",\"event_type\":", "u", "n"),
            ("\"sequence\":-9223372036854775808,", "u", "n"),
            ("ends in a backslash \\", "u", "n"),
            (
                "a",
                "x:-9223372036854775808\",\"event_type\":",
                "\"sequence\":-9223372036854775808,",
            ),
            ("магазин", "ユーザー", "\u{1F600}"),
        ];
        for (source, user, name) in cases {
            let order = Order::example(42, user, name);
            for previous in [None, Some(Status::Pending)] {
                let cut = around_id(source, &order, previous, 5);
                for id in [1, 42, 1_000_000_007, i64::MAX] {
                    assert_eq!(
                        cut.with_id(id),
                        payload(id, source, &order, previous, 5),
                        "source {source:?}, user {user:?}, name {name:?}, id {id}"
                    );
                }
            }
        }
    }
}
