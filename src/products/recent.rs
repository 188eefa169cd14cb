//! The snapshot rows this process wrote lately, so that a lookup that brings back what
//! was just written leaves the row alone.
//!
//! Every online order keeps its products' answers in the snapshot. On a busy store that
//! rewrote the same few rows with every create: a statement per product on SQLite's one
//! writer, and on PostgreSQL a row lock that every create of the same product waited
//! on until the one before it had committed. A row whose name, price and stock are
//! unchanged now gets written at most once per `REWRITE_AFTER`. Its age lags by that
//! much at most, and the sales since then count against its stock, which only makes an
//! offline order's stock check more careful.

use crate::domain::ProductId;
use crate::store::CachedProduct;
use std::collections::HashMap;
use std::sync::Mutex;

/// How long an unchanged row may go without being written again, in microseconds.
pub const REWRITE_AFTER: i64 = 1_000_000;
/// Past this many products remembered, the ones written too long ago are forgotten.
const KEEP: usize = 4096;

#[derive(Default)]
pub struct RecentRows {
    rows: Mutex<HashMap<ProductId, CachedProduct>>,
}

impl RecentRows {
    /// The rows of `fresh` the snapshot needs: those changed, or written long enough ago.
    pub fn worth_writing(&self, fresh: Vec<CachedProduct>) -> Vec<CachedProduct> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        fresh
            .into_iter()
            .filter(|p| {
                rows.get(&p.product_id).is_none_or(|last| {
                    p.fetched_at - last.fetched_at >= REWRITE_AFTER
                        || p.fetched_at < last.fetched_at
                        || (&p.name, p.price, p.stock) != (&last.name, last.price, last.stock)
                })
            })
            .collect()
    }

    /// `written` were committed to the snapshot.
    pub fn written(&self, written: &[CachedProduct]) {
        if written.is_empty() {
            return;
        }
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        for p in written {
            rows.insert(p.product_id, p.clone());
        }
        if rows.len() > KEEP {
            let newest = written.iter().map(|p| p.fetched_at).max().unwrap_or(0);
            rows.retain(|_, p| newest - p.fetched_at < REWRITE_AFTER);
        }
    }

    /// `ids` were removed from the snapshot (or may have been): the next answer is written.
    pub fn forget(&self, ids: &[ProductId]) {
        if ids.is_empty() {
            return;
        }
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            rows.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Money;

    fn row(id: i64, price_cents: i64, stock: i64, at: i64) -> CachedProduct {
        CachedProduct {
            product_id: ProductId::new(id).unwrap(),
            name: format!("product {id}"),
            price: Money::from_cents(price_cents),
            stock,
            fetched_at: at,
        }
    }

    fn ids(rows: &[CachedProduct]) -> Vec<i64> {
        rows.iter().map(|p| p.product_id.get()).collect()
    }

    #[test]
    fn a_row_never_written_is_written() {
        let recent = RecentRows::default();
        assert_eq!(ids(&recent.worth_writing(vec![row(1, 100, 5, 0)])), [1]);
    }

    #[test]
    fn the_same_answer_within_a_second_is_not_written_again() {
        let recent = RecentRows::default();
        recent.written(&[row(1, 100, 5, 0)]);
        let again = recent.worth_writing(vec![row(1, 100, 5, REWRITE_AFTER - 1)]);
        assert!(again.is_empty());
    }

    #[test]
    fn the_same_answer_a_second_later_is_written() {
        let recent = RecentRows::default();
        recent.written(&[row(1, 100, 5, 0)]);
        let again = recent.worth_writing(vec![row(1, 100, 5, REWRITE_AFTER)]);
        assert_eq!(ids(&again), [1]);
    }

    #[test]
    fn a_changed_price_name_or_stock_is_written_at_once() {
        let recent = RecentRows::default();
        recent.written(&[row(1, 100, 5, 0), row(2, 100, 5, 0), row(3, 100, 5, 0)]);
        let mut renamed = row(3, 100, 5, 10);
        renamed.name = "renamed".into();
        let fresh = vec![
            row(1, 101, 5, 10),
            row(2, 100, 4, 10),
            renamed,
            row(4, 1, 1, 10),
        ];
        assert_eq!(ids(&recent.worth_writing(fresh)), [1, 2, 3, 4]);
    }

    #[test]
    fn only_what_was_committed_counts() {
        let recent = RecentRows::default();
        // Priced, but its transaction never committed: nothing recorded.
        let _ = recent.worth_writing(vec![row(1, 100, 5, 0)]);
        assert_eq!(ids(&recent.worth_writing(vec![row(1, 100, 5, 1)])), [1]);
    }

    #[test]
    fn a_forgotten_product_is_written_at_its_next_answer() {
        let recent = RecentRows::default();
        recent.written(&[row(1, 100, 5, 0)]);
        recent.forget(&[ProductId::new(1).unwrap()]);
        assert_eq!(ids(&recent.worth_writing(vec![row(1, 100, 5, 1)])), [1]);
    }

    #[test]
    fn memory_stays_bounded_by_what_was_written_lately() {
        let recent = RecentRows::default();
        for id in 1..=KEEP as i64 {
            recent.written(&[row(id, 100, 5, 0)]);
        }
        recent.written(&[row(KEEP as i64 + 1, 100, 5, REWRITE_AFTER)]);
        assert_eq!(recent.rows.lock().unwrap().len(), 1);
    }
}
