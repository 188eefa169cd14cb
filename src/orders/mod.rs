//! The order rules' home: create (a priced order in, an order out), cancel, status
//! change, idempotent create. The rules (`rules.rs`) are functions over a storage
//! transaction (`store::Tx`); `Orders` runs them as jobs of the group-commit writer.

mod events;
mod idempotency;
mod rules;

pub use events::event_type;
pub use idempotency::{Answer, Claimed, Idempotent};

use crate::clock::now_micros;
use crate::domain::{
    Email, IdempotencyKey, NewOrder, Order, OrderId, PricedLine, ProductId, Status, UserId,
};
use crate::products::recent::RecentRows;
use crate::products::{Outage, PricingError};
use crate::store::{CachedProduct, StoreError, Tx, WriterHandle};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// An order priced from the product service, or to be priced from the catalog snapshot,
/// ready to be stored.
#[derive(Debug, Clone)]
pub struct PricedOrder {
    pub user_id: UserId,
    pub user_email: Email,
    pub priced: Priced,
    /// The product service's fresh answers, kept in the snapshot.
    pub fresh_products: Vec<CachedProduct>,
}

/// How an order's lines get their names, prices and stock check.
#[derive(Debug, Clone)]
pub enum Priced {
    /// By the product service, whose lookups started at `at`.
    Live { lines: Vec<PricedLine>, at: i64 },
    /// The product service could not answer (`outage`): from the snapshot rows fetched
    /// within `max_age`, against their stock minus this store's sales since, inside the
    /// order's transaction (so two orders never both take the last units).
    Offline {
        order: NewOrder,
        max_age: Duration,
        outage: Outage,
    },
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
    /// Offline: not priceable from the snapshot, or short of stock there.
    Pricing(PricingError),
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
            OrderError::Pricing(PricingError::Outage(e)) => e.fmt(f),
            OrderError::Pricing(_) => f.write_str("not priceable from the catalog snapshot"),
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
    /// What the snapshot was last given, so that the same answers are not rewritten.
    recent: Arc<RecentRows>,
}

impl Orders {
    pub fn new(writer: WriterHandle, source: &str) -> Orders {
        Orders {
            writer,
            source: source.into(),
            recent: Arc::default(),
        }
    }

    /// Claims `key` for this request (409 while another request holds it, on any
    /// instance), or gives a finished request's answer again. A fresh claim comes with a
    /// guard that releases it unless the create committed.
    pub fn claim(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        request: &str,
    ) -> Result<(Claimed, Option<ClaimGuard>), OrderError> {
        let (u, k, r) = (user.clone(), key.clone(), request.to_string());
        let at = now_micros();
        let claimed = self
            .writer
            .run(move |tx| idempotency::claim(tx, &u, &k, &r, at))?;
        let guard = (claimed == Claimed::Fresh).then(|| ClaimGuard {
            writer: self.writer.clone(),
            user: user.clone(),
            key: key.clone(),
            claimed_at: at,
            answered: false,
        });
        Ok((claimed, guard))
    }

    /// Stores a priced order; with `idempotent`, its key must be claimed by this request
    /// (`claim`), and the claim gets the answer in the same transaction.
    pub fn create(
        &self,
        mut order: PricedOrder,
        idempotent: Option<Idempotent>,
    ) -> Result<Order, OrderError> {
        let source = self.source.clone();
        order.fresh_products = self.recent.worth_writing(order.fresh_products);
        let written = order.fresh_products.clone();
        // An online create without a key writes only its own rows, nothing it reads back:
        // the writer may combine it with others (`WriterHandle::create`).
        let combinable = idempotent.is_none() && matches!(order.priced, Priced::Live { .. });
        let create =
            move |tx: &mut dyn Tx| rules::create(tx, &source, order, idempotent, now_micros());
        let created = if combinable {
            self.writer.create(create)
        } else {
            self.writer.run(create)
        };
        match &created {
            Ok(_) => self.recent.written(&written),
            // An offline order the snapshot refused took back the answers it wrote with
            // it: they are kept all the same (no product among them is unknown).
            Err(OrderError::Pricing(_)) if !written.is_empty() => {
                self.remember_products(written, Vec::new(), 0)
            }
            Err(_) => {}
        }
        created
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
    pub fn remember_products(
        &self,
        fresh: Vec<CachedProduct>,
        unknown: Vec<ProductId>,
        answered_at: i64,
    ) {
        self.recent.forget(&unknown);
        let mut fresh = self.recent.worth_writing(fresh);
        if fresh.is_empty() && unknown.is_empty() {
            return;
        }
        // In product order, as a create takes the snapshot's row locks (rules.rs): on
        // PostgreSQL another order would make a deadlock (one of the two aborted).
        fresh.sort_by_key(|p| p.product_id);
        let written = fresh.clone();
        let kept = self.writer.run(move |tx| -> Result<(), StoreError> {
            if unknown.is_empty() {
                return tx.upsert_products(&fresh);
            }
            let mut steps: Vec<(ProductId, Option<&CachedProduct>)> = fresh
                .iter()
                .map(|p| (p.product_id, Some(p)))
                .chain(unknown.iter().map(|id| (*id, None)))
                .collect();
            steps.sort_by_key(|(id, _)| *id);
            for (id, fresh) in steps {
                match fresh {
                    Some(p) => tx.upsert_product(p)?,
                    None => tx.forget_product(id, answered_at)?,
                }
            }
            Ok(())
        });
        match kept {
            Ok(()) => self.recent.written(&written),
            Err(e) => log::warn!("product cache not updated: {e}"),
        }
    }
}

/// A fresh claim of an idempotency key; released when dropped unless `answered`.
pub struct ClaimGuard {
    writer: WriterHandle,
    user: UserId,
    key: IdempotencyKey,
    claimed_at: i64,
    answered: bool,
}

impl ClaimGuard {
    /// The create's side of this claim: its key, its time, and the answer to keep.
    pub fn idempotent(&self, answer: Box<dyn FnOnce(&Order) -> Answer + Send>) -> Idempotent {
        Idempotent {
            key: self.key.clone(),
            claimed_at: self.claimed_at,
            answer,
        }
    }

    /// The create committed with the claim's answer: nothing to release.
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let (user, key, at) = (self.user.clone(), self.key.clone(), self.claimed_at);
        let released = self
            .writer
            .run(move |tx| tx.release_idempotency(&user, key.as_str(), at));
        if let Err(e) = released {
            // Taken over after its timeout by the next request with the key.
            log::warn!("idempotency claim not released: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
