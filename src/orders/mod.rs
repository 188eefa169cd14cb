//! The order rules' home: create (a priced order in, an order out), cancel, status
//! change, idempotent create. The rules (`rules.rs`) are functions over a storage
//! transaction (`store::Tx`); `Orders` runs them as jobs of the group-commit writer.

mod events;
mod idempotency;
mod rules;

pub use events::event_type;
pub use idempotency::{Answer, Claim, Idempotent, InFlight};

use crate::clock::now_micros;
use crate::domain::{Email, Order, OrderId, PricedLine, ProductId, Status, UserId};
use crate::store::{CachedProduct, Reads, StoreError, WriterHandle};
use std::fmt;
use std::sync::Arc;

/// An order priced from the product service, ready to be stored.
#[derive(Debug, Clone)]
pub struct PricedOrder {
    pub user_id: UserId,
    pub user_email: Email,
    pub lines: Vec<PricedLine>,
    /// The product service's fresh answers, kept for the offline policy.
    pub fresh_products: Vec<CachedProduct>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New(Order),
    /// The key was used before with the same request: its first answer.
    Replayed(Answer),
}

#[derive(Debug)]
pub enum OrderError {
    /// No such order, or not the caller's.
    NotFound,
    InvalidTransition {
        from: Status,
        to: Status,
    },
    IdempotencyKeyReused,
    IdempotencyKeyInProgress,
    Store(StoreError),
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderError::NotFound => f.write_str("order not found"),
            OrderError::InvalidTransition { from, to } => {
                write!(f, "an order cannot go from {from} to {to}")
            }
            OrderError::IdempotencyKeyReused => f.write_str("idempotency key reused"),
            OrderError::IdempotencyKeyInProgress => f.write_str("idempotency key in progress"),
            OrderError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OrderError {}

impl From<StoreError> for OrderError {
    fn from(e: StoreError) -> Self {
        OrderError::Store(e)
    }
}

/// Runs the rules on the writer. Cheap to clone.
#[derive(Clone)]
pub struct Orders {
    writer: WriterHandle,
    /// `STORE_ID`: the source of every event.
    source: Arc<str>,
    in_flight: InFlight,
}

impl Orders {
    pub fn new(writer: WriterHandle, source: &str) -> Orders {
        Orders {
            writer,
            source: source.into(),
            in_flight: InFlight::default(),
        }
    }

    /// Holds `key` for this user until the claim is dropped (409 while another request
    /// holds it), and answers a repeat of a finished request from its record.
    pub fn begin_idempotent(
        &self,
        reads: &dyn Reads,
        user: &UserId,
        key: &crate::domain::IdempotencyKey,
        request: &str,
    ) -> Result<(Claim, Option<Answer>), OrderError> {
        let claim = self.in_flight.claim(user, key)?;
        let seen = reads.idempotency_record(user, key.as_str())?;
        Ok((claim, idempotency::replay(seen, request)?))
    }

    pub fn create(
        &self,
        order: PricedOrder,
        idempotent: Option<Idempotent>,
    ) -> Result<Created, OrderError> {
        let source = self.source.clone();
        self.writer
            .run(move |tx| rules::create(tx, &source, order, idempotent, now_micros()))
    }

    /// Cancels the caller's own order; another user's order is `NotFound`.
    pub fn cancel(&self, id: OrderId, user: UserId) -> Result<Order, OrderError> {
        let source = self.source.clone();
        self.writer.run(move |tx| {
            rules::change_status(
                tx,
                &source,
                id,
                Some(&user),
                Status::Cancelled,
                now_micros(),
            )
        })
    }

    pub fn set_status(&self, id: OrderId, status: Status) -> Result<Order, OrderError> {
        let source = self.source.clone();
        self.writer
            .run(move |tx| rules::change_status(tx, &source, id, None, status, now_micros()))
    }

    /// Keeps the product service's latest answers (and forgets products it no longer
    /// knows) for a request that failed all the same. It waits for the commit (one group
    /// commit, as an order would), so the caller's next request prices from what this one
    /// learnt; a failure here is logged and does not change the caller's answer.
    pub fn remember_products(&self, fresh: Vec<CachedProduct>, unknown: Vec<ProductId>) {
        if fresh.is_empty() && unknown.is_empty() {
            return;
        }
        let kept = self.writer.run(move |tx| -> Result<(), StoreError> {
            for p in &fresh {
                tx.upsert_product(p)?;
            }
            for id in &unknown {
                tx.forget_product(*id)?;
            }
            Ok(())
        });
        if let Err(e) = kept {
            log::warn!("product cache not updated: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
