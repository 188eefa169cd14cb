//! The outbox table: events waiting for the broker, and what they look like.

use crate::clock::{now_micros, rfc3339};
use crate::domain::{Email, Money, Order, OrderId, OrderItem, Status, UserId};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// An unpublished event, as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub order_id: i64,
    pub event_type: String,
    pub payload: String,
    pub created_at: i64,
    /// As written in the payload when the event was committed, whatever STORE_ID is now.
    pub event_id: String,
    pub source: String,
}

/// `<source>:<outbox id>`: what consumers deduplicate on.
pub(crate) fn event_id(source: &str, id: i64) -> String {
    format!("{source}:{id}")
}

/// What `/ready` and `/metrics` show of the outbox. Both are read through the partial
/// index of pending rows, so a probe costs the same however many published rows the
/// outbox keeps (measured: the same with 1 M published rows as with none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: i64,
    /// Creation time of the oldest unpublished event, in microseconds.
    pub oldest_pending_at: Option<i64>,
}

impl OutboxStats {
    pub fn oldest_pending_age_seconds(&self) -> Option<i64> {
        self.oldest_pending_at
            .map(|t| ((now_micros() - t) / 1_000_000).max(0))
    }
}

pub(crate) fn event_type(previous: Option<Status>, now: Status) -> &'static str {
    match (previous, now) {
        (None, _) => "order_created",
        (Some(_), Status::Cancelled) => "order_cancelled",
        (Some(_), _) => "order_status_updated",
    }
}

/// The event as consumers receive it.
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
}

#[derive(serde::Deserialize)]
struct EventHead {
    event_id: String,
    source: String,
}

pub(crate) fn payload(
    id: i64,
    source: &str,
    order: &Order,
    previous: Option<Status>,
    at: i64,
) -> String {
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
    };
    serde_json::to_string(&event).expect("an event always serializes")
}

pub(crate) fn insert(
    conn: &Connection,
    id: i64,
    order_id: i64,
    event_type: &str,
    payload: &str,
    at: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO outbox (id, order_id, event_type, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, order_id, event_type, payload, at])?;
    Ok(())
}

/// Unpublished rows, oldest first.
pub fn pending(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, order_id, event_type, payload, created_at FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        let id: i64 = r.get(0)?;
        let payload: String = r.get(3)?;
        let head: EventHead = serde_json::from_str(&payload).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?;
        Ok(OutboxRow {
            id,
            order_id: r.get(1)?,
            event_type: r.get(2)?,
            created_at: r.get(4)?,
            event_id: head.event_id,
            source: head.source,
            payload,
        })
    })?;
    rows.collect()
}

pub fn stats(conn: &Connection) -> rusqlite::Result<OutboxStats> {
    let pending = conn
        .prepare_cached("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")?
        .query_row([], |r| r.get(0))?;
    // Ids are handed out in commit order: the oldest pending event has the lowest id.
    let oldest_pending_at = conn
        .prepare_cached(
            "SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(OutboxStats {
        pending,
        oldest_pending_at,
    })
}

/// Published rows still kept: a scan of them, for `outbox status`, never for a probe.
pub fn published_count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL",
        [],
        |r| r.get(0),
    )
}

pub(crate) fn mark_published(conn: &Connection, ids: &[i64], at: i64) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(
        "UPDATE outbox SET published_at = ?1 WHERE id = ?2 AND published_at IS NULL",
    )?;
    let mut n = 0;
    for id in ids {
        n += stmt.execute(params![at, id])?;
    }
    Ok(n)
}

/// Deletes at most `limit` published rows older than `before`, oldest first, but never
/// the newest row, so that ids (and event ids) are not handed out twice.
pub(crate) fn prune(conn: &Connection, before: i64, limit: usize) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM outbox WHERE id IN (
           SELECT id FROM outbox
           WHERE published_at IS NOT NULL AND published_at < ?1
             AND id < (SELECT MAX(id) FROM outbox)
           ORDER BY published_at LIMIT ?2)",
    )?
    .execute(params![before, limit as i64])
}

pub(crate) fn max_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT MAX(id) FROM outbox", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .optional()
    .map(|v| v.flatten().unwrap_or(0))
}

/// An event the broker refused again and again; the events after it wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedEvent {
    /// The outbox id (the event's `sequence`).
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    /// When the broker first refused it, in microseconds.
    pub since: i64,
}

/// The refused event, while it is still pending (publishing it ends the block).
pub fn blocked(conn: &Connection) -> rusqlite::Result<Option<BlockedEvent>> {
    conn.prepare_cached(
        "SELECT id, event_type, payload, blocked_since FROM outbox
         WHERE blocked_since IS NOT NULL AND published_at IS NULL ORDER BY id LIMIT 1",
    )?
    .query_row([], |r| {
        let payload: String = r.get(2)?;
        let head: EventHead = serde_json::from_str(&payload).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?;
        Ok(BlockedEvent {
            id: r.get(0)?,
            event_id: head.event_id,
            event_type: r.get(1)?,
            since: r.get(3)?,
        })
    })
    .optional()
}

pub(crate) fn mark_blocked(conn: &Connection, id: i64, since: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE outbox SET blocked_since = ?1 WHERE id = ?2 AND published_at IS NULL",
    )?
    .execute(params![since, id])
}
