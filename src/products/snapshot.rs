//! The catalog snapshot's formats and the pricing of an order from it: a page of the
//! product service's list, a catalog file (`catalog import`), and an offline order checked
//! against the snapshot's stock minus what this store sold since.

use super::{parse_product, Outage, PricingError, Product, Shortage};
use crate::domain::{NewOrder, PricedLine, ProductId};
use crate::store::SnapshotProduct;
use serde_json::value::RawValue;
use std::path::Path;
use std::time::Duration;

/// One page of `GET /api/products?page=N&per_page=…`: the products it held that parse,
/// how many entries it held in all, and why the others were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub products: Vec<Product>,
    pub entries: usize,
    pub refused: Vec<String>,
}

impl ListPage {
    /// Reads an array of products, or one wrapped as `{"products":[…]}` or `{"data":[…]}`;
    /// each entry has the single lookup's shape. An entry that does not parse is refused
    /// alone (it is left out of the snapshot, as a lookup of it would be an outage).
    pub fn parse(text: &str) -> Result<ListPage, String> {
        let entries = list_entries(text)?;
        let mut page = ListPage {
            products: Vec::with_capacity(entries.len()),
            entries: entries.len(),
            refused: Vec::new(),
        };
        for (i, entry) in entries.iter().enumerate() {
            match parse_product(entry.get()) {
                Ok(p) => page.products.push(p),
                Err(e) => page.refused.push(format!("entry {i}: {e}")),
            }
        }
        Ok(page)
    }
}

/// A whole catalog from a file, in any form a list page may take; every entry must parse.
pub fn read_catalog_file(path: &Path) -> Result<Vec<Product>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let page = ListPage::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(first) = page.refused.first() {
        return Err(format!(
            "{}: {} of {} entries refused; {first}",
            path.display(),
            page.refused.len(),
            page.entries
        ));
    }
    Ok(page.products)
}

fn list_entries(text: &str) -> Result<Vec<&RawValue>, String> {
    #[derive(serde::Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow, default)]
        products: Option<Vec<&'a RawValue>>,
        #[serde(borrow, default)]
        data: Option<Vec<&'a RawValue>>,
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).map_err(|e| format!("not a JSON array: {e}"));
    }
    let wrapped: Wrapped<'_> =
        serde_json::from_str(text).map_err(|e| format!("not a list of products: {e}"))?;
    wrapped
        .products
        .or(wrapped.data)
        .ok_or_else(|| "neither an array nor an object with \"products\" or \"data\"".into())
}

/// Prices `order` from snapshot rows (as `Tx::snapshot_for_update` gives them) at `now`:
/// every product must have a row fetched within `max_age`, else the product service's
/// `outage` stands (503); each line must fit the row's stock minus what was sold since
/// (409 otherwise). Also returns the oldest row's time: the order's `priced_at`.
pub fn price_from_snapshot(
    order: &NewOrder,
    rows: &[SnapshotProduct],
    now: i64,
    max_age: Duration,
    outage: &Outage,
) -> Result<(Vec<PricedLine>, i64), PricingError> {
    let oldest_allowed = now.saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX));
    let row = |id: ProductId| rows.iter().find(|r| r.product.product_id == id);
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for line in order.lines() {
        match row(line.product_id) {
            None => missing.push(line.product_id),
            Some(r) if r.product.fetched_at < oldest_allowed => stale.push(line.product_id),
            Some(_) => {}
        }
    }
    if !missing.is_empty() || !stale.is_empty() {
        let mut why = outage.0.clone();
        if !missing.is_empty() {
            why.push_str(&format!(
                "; not in the catalog snapshot: {}",
                join(&missing)
            ));
        }
        if !stale.is_empty() {
            why.push_str(&format!(
                "; snapshot older than PRODUCT_CACHE_MAX_AGE ({} s) for: {}",
                max_age.as_secs(),
                join(&stale)
            ));
        }
        return Err(PricingError::Outage(Outage(why)));
    }
    let shortages: Vec<Shortage> = order
        .lines()
        .iter()
        .filter_map(|l| {
            let r = row(l.product_id)?;
            let available = (r.product.stock - r.sold_since).max(0);
            (available < i64::from(l.quantity.get())).then_some(Shortage {
                product_id: l.product_id,
                requested: l.quantity.get(),
                available,
            })
        })
        .collect();
    if !shortages.is_empty() {
        return Err(PricingError::InsufficientStock(shortages));
    }
    let mut priced_at = now;
    let lines = order
        .lines()
        .iter()
        .filter_map(|l| {
            let r = row(l.product_id)?;
            priced_at = priced_at.min(r.product.fetched_at);
            Some(PricedLine {
                product_id: l.product_id,
                product_name: r.product.name.clone(),
                quantity: l.quantity,
                price: r.product.price,
            })
        })
        .collect();
    Ok((lines, priced_at))
}

fn join(ids: &[ProductId]) -> String {
    ids.iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Money;
    use crate::store::CachedProduct;
    use serde_json::json;

    const NOW: i64 = 1_000_000_000_000;
    const DAY: Duration = Duration::from_secs(86_400);

    fn order(lines: &[(i64, u32)]) -> NewOrder {
        let items: Vec<_> = lines
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        NewOrder::parse(&json!({ "items": items })).unwrap()
    }

    fn row(id: i64, stock: i64, sold_since: i64, age_secs: i64) -> SnapshotProduct {
        SnapshotProduct {
            product: CachedProduct {
                product_id: ProductId::new(id).unwrap(),
                name: format!("P{id}"),
                price: Money::from_cents(150),
                stock,
                fetched_at: NOW - age_secs * 1_000_000,
            },
            sold_since,
        }
    }

    fn outage() -> Outage {
        Outage("GET x: connection refused".into())
    }

    #[test]
    fn prices_from_the_rows_and_dates_the_order_by_the_oldest() {
        let rows = [row(1, 5, 0, 60), row(2, 5, 0, 3600)];
        let (lines, priced_at) =
            price_from_snapshot(&order(&[(1, 2), (2, 1)]), &rows, NOW, DAY, &outage()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].product_name, "P1");
        assert_eq!(lines[1].price.cents(), 150);
        assert_eq!(priced_at, NOW - 3600 * 1_000_000);
    }

    #[test]
    fn the_ledger_counts_against_the_snapshot_stock() {
        let rows = [row(1, 5, 3, 60)];
        assert!(price_from_snapshot(&order(&[(1, 2)]), &rows, NOW, DAY, &outage()).is_ok());
        match price_from_snapshot(&order(&[(1, 3)]), &rows, NOW, DAY, &outage()) {
            Err(PricingError::InsufficientStock(s)) => assert_eq!(s[0].available, 2),
            other => panic!("{other:?}"),
        }
        // More sold than the snapshot knew of: nothing is available, never a negative.
        match price_from_snapshot(&order(&[(1, 1)]), &[row(1, 2, 5, 60)], NOW, DAY, &outage()) {
            Err(PricingError::InsufficientStock(s)) => assert_eq!(s[0].available, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_or_stale_row_leaves_the_outage() {
        let stale = [row(1, 5, 0, 86_401)];
        for rows in [&stale[..], &[]] {
            match price_from_snapshot(&order(&[(1, 1)]), rows, NOW, DAY, &outage()) {
                Err(PricingError::Outage(o)) => assert!(o.0.starts_with("GET x"), "{o}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reads_a_list_in_any_of_its_forms() {
        let one = json!({"id":1,"name":"A","price":"1.50","stock":2});
        let two = json!({"id":2,"name":"B","price":0.1,"stock":0});
        let bad = json!({"id":3,"name":"C","price":1.001,"stock":1});
        for text in [
            json!([one, two, bad]).to_string(),
            json!({"products": [one, two, bad], "total": 3}).to_string(),
            json!({"data": [one, two, bad]}).to_string(),
        ] {
            let page = ListPage::parse(&text).unwrap();
            assert_eq!(page.entries, 3);
            assert_eq!(page.products.len(), 2);
            assert_eq!(page.products[0].price.cents(), 150);
            assert_eq!(page.refused.len(), 1, "{:?}", page.refused);
        }
        assert!(ListPage::parse("<html>").is_err());
        assert!(ListPage::parse(r#"{"items":[]}"#).is_err());
        assert_eq!(ListPage::parse("[]").unwrap().entries, 0);
    }
}
