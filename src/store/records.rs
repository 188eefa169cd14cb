//! Rows as the store hands them out, whatever the engine.

use crate::clock::now_micros;
use crate::domain::{Money, Order, ProductId};

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

/// What an event's payload says of where it comes from, as the engines read it back.
#[derive(serde::Deserialize)]
pub(crate) struct EventHead {
    pub event_id: String,
    pub source: String,
}

impl EventHead {
    pub(crate) fn of(payload: &str) -> Result<EventHead, serde_json::Error> {
        serde_json::from_str(payload)
    }
}

impl OutboxRow {
    /// A row as an engine read it; its event id and source are the payload's own.
    pub(crate) fn read(
        id: i64,
        order_id: i64,
        event_type: String,
        created_at: i64,
        payload: String,
    ) -> Result<OutboxRow, serde_json::Error> {
        let head = EventHead::of(&payload)?;
        Ok(OutboxRow {
            id,
            order_id,
            event_type,
            created_at,
            event_id: head.event_id,
            source: head.source,
            payload,
        })
    }
}

/// What `/ready` and `/metrics` show of the outbox. Both read only the pending rows, by
/// their ids past the watermark (V12), so a probe costs the same however many published
/// rows the outbox keeps (measured: the same with 1 M published rows as with none).
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

/// An idempotency key's row: claimed by a request being processed, then holding that
/// request's answer as the HTTP layer handed it over (opaque to the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The canonical form of the request it answered.
    pub request: String,
    /// 0 while the claim has no answer yet.
    pub status: u16,
    pub body: String,
    pub created_at: i64,
}

/// The last good product-service answer for one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedProduct {
    pub product_id: ProductId,
    pub name: String,
    pub price: Money,
    pub stock: i64,
    pub fetched_at: i64,
}

/// A page of a user's orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderList {
    pub orders: Vec<Order>,
    /// The user's orders in all.
    pub total: i64,
    /// Whether older orders follow this page.
    pub more: bool,
}

/// A snapshot row as an offline order sees it: the product as last fetched, and what this
/// store sold of it since (the ledger entries at or after `fetched_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotProduct {
    pub product: CachedProduct,
    pub sold_since: i64,
}

/// What `catalog status`, /ready and /metrics show of the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogStats {
    pub products: i64,
    /// Rows fetched at or after the `fresh_after` asked for: sellable offline now.
    pub fresh: i64,
    pub oldest_fetched_at: Option<i64>,
    pub newest_fetched_at: Option<i64>,
    /// The last complete refresh (the whole list, a file, or an import), if any.
    pub refreshed_at: Option<i64>,
    pub refreshed_products: Option<i64>,
    pub source: Option<String>,
}

impl CatalogStats {
    /// Seconds since the last complete refresh.
    pub fn age_seconds(&self) -> Option<i64> {
        self.refreshed_at
            .map(|t| ((now_micros() - t) / 1_000_000).max(0))
    }
}
