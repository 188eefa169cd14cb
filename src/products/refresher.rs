//! The catalog refresher thread: every `CATALOG_REFRESH` seconds it reads the whole
//! catalog (the product service's list, page by page, or the `file:` catalog) into the
//! snapshot, one writer job a page, so orders never wait long behind it.
//!
//! A refresh that reads every page drops the rows it did not see (products gone from the
//! catalog) and the ledger entries that no longer count. One that fails half-way keeps
//! what it wrote (each row is as fresh as its page) and drops nothing. A 404 for the list
//! means the product service has none: lookups alone fill the snapshot, said once.

use super::snapshot::ListPage;
use super::{get_json, read_catalog, snapshot_row, Catalog, Outage, Source};
use crate::clock::now_micros;
use crate::store::{CachedProduct, StoreError, WriterHandle};
use crate::threads::Stoppable;
use crossbeam_channel::{after, select, Receiver};
use std::collections::HashSet;
use std::time::Duration;

/// Products asked for per page.
pub const PER_PAGE: usize = 100;
/// A page of 100 products is some 10 to 30 KB; this leaves room for long descriptions.
const MAX_PAGE_BYTES: u64 = 4 * 1024 * 1024;
/// 1,000,000 products: a service that ignores `page` and always answers a full page is
/// stopped by the repeat check below, and this bounds the rest.
const MAX_PAGES: u32 = 10_000;

/// The running refresher; `shutdown` stops it.
pub struct RefresherHandle(Stoppable);

impl RefresherHandle {
    /// Asks the refresher to stop and waits up to `within` (a page being read takes at
    /// most `PRODUCT_TIMEOUT_MS`). False if it is left behind, still in a call.
    pub fn shutdown(self, within: Duration) -> bool {
        self.0.stop(within, "catalog refresher: still reading")
    }
}

/// Starts the refresher: a first refresh at once, then one every `every`.
pub fn spawn_refresher(
    catalog: Catalog,
    writer: WriterHandle,
    every: Duration,
) -> std::io::Result<RefresherHandle> {
    let thread = Stoppable::spawn("catalog", false, move |stop| {
        let mut refresher = Refresher {
            catalog,
            writer,
            stop,
            said_no_list: false,
        };
        loop {
            refresher.refresh();
            select! {
                recv(refresher.stop) -> _ => return,
                recv(after(every)) -> _ => {}
            }
        }
    })?;
    Ok(RefresherHandle(thread))
}

struct Refresher {
    catalog: Catalog,
    writer: WriterHandle,
    stop: Receiver<()>,
    /// The "no list" line was logged.
    said_no_list: bool,
}

/// What one page request came to.
enum Answer {
    /// The page and its size in bytes.
    Page(ListPage, usize),
    /// The product service's own 404: it has no list.
    NoList,
}

impl Refresher {
    fn refresh(&mut self) {
        let started = now_micros();
        let outcome = match &self.catalog.source {
            Source::File(path) => {
                let read = read_catalog(path);
                self.catalog.link(read.as_ref().map(|_| ()));
                match read {
                    Ok(products) => self
                        .write_page(&products, started)
                        .and_then(|()| self.finish(started, products.len(), "file", true)),
                    Err(_) => Ok(()),
                }
            }
            Source::Http { .. } => self.refresh_from_list(started),
        };
        if let Err(e) = outcome {
            log::warn!("catalog snapshot not updated: {e}");
        }
    }

    fn refresh_from_list(&mut self, started: i64) -> Result<(), StoreError> {
        let clock = std::time::Instant::now();
        let mut seen: HashSet<i64> = HashSet::new();
        let mut refused = Vec::new();
        let mut bytes = 0;
        // A page shorter than this ends the list. A service may cap `per_page` below what
        // was asked: a short first page is then its page size, not the list's end, and the
        // rest of the catalog, taken as gone, would leave the snapshot.
        let mut full_page = PER_PAGE;
        for page in 1..=MAX_PAGES {
            if self.stopping() {
                return Ok(());
            }
            let fetched_at = now_micros();
            let answer = self.catalog.fetch_list_page(page);
            self.catalog.link(answer.as_ref().map(|_| ()));
            let list = match answer {
                Err(e) => {
                    log::debug!("catalog refresh stopped at page {page}: {e}");
                    return Ok(());
                }
                // Past the last page, some services answer 404 rather than an empty page.
                Ok(Answer::NoList) if page > 1 => {
                    return self.finish(started, seen.len(), "list", true);
                }
                Ok(Answer::NoList) => {
                    if !self.said_no_list {
                        self.said_no_list = true;
                        log::warn!(
                            "the product service has no product list (404): the catalog \
                             snapshot holds only products looked up for orders"
                        );
                    }
                    return Ok(());
                }
                Ok(Answer::Page(list, size)) => {
                    bytes += size;
                    list
                }
            };
            if self.said_no_list {
                self.said_no_list = false;
                log::info!("the product service now has a product list: the snapshot takes it");
            }
            let fresh = list
                .products
                .iter()
                .filter(|p| seen.insert(p.id.get()))
                .count();
            if fresh == 0 && !list.products.is_empty() {
                if page == 2 && full_page < PER_PAGE {
                    // A service that ignores `page` and answers its whole, short list.
                    return self.finished_list(started, &seen, 1, bytes, clock, &refused);
                }
                log::warn!(
                    "catalog refresh: page {page} repeats earlier products (is `page` ignored?); \
                     the snapshot keeps what it has"
                );
                return Ok(());
            }
            if page == 1 && list.products.is_empty() {
                // No real catalog is empty: a service being redeployed, or with its data
                // away, can answer so, or in a shape this service does not read. Taken as
                // complete, it would drop the whole snapshot just before offline sales
                // might need it.
                match list.refused.first() {
                    None => log::warn!(
                        "catalog refresh: the product list is empty; the snapshot keeps what it has"
                    ),
                    Some(first) => log::warn!(
                        "catalog refresh: none of the {} product(s) on the list's first page \
                         could be read (page 1 {first}); the snapshot keeps what it has",
                        list.refused.len()
                    ),
                }
                return Ok(());
            }
            refused.extend(list.refused.iter().map(|r| format!("page {page} {r}")));
            self.write_page(&list.products, fetched_at)?;
            if page == 1 && list.entries < PER_PAGE {
                full_page = list.entries;
            } else if list.entries < full_page {
                return self.finished_list(started, &seen, page, bytes, clock, &refused);
            }
        }
        log::warn!("catalog refresh: stopped after {MAX_PAGES} pages");
        Ok(())
    }

    /// The whole list was read: products missing from it leave the snapshot.
    fn finished_list(
        &self,
        started: i64,
        seen: &HashSet<i64>,
        pages: u32,
        bytes: usize,
        clock: std::time::Instant,
        refused: &[String],
    ) -> Result<(), StoreError> {
        if let Some(first) = refused.first() {
            log::warn!(
                "catalog refresh: {} product(s) refused and left out of the snapshot; {first}",
                refused.len()
            );
        }
        self.finish(started, seen.len(), "list", true)?;
        log::info!(
            "catalog snapshot refreshed: {} products, {pages} page(s), {bytes} bytes in {} ms",
            seen.len(),
            clock.elapsed().as_millis()
        );
        Ok(())
    }

    fn write_page(&self, products: &[super::Product], at: i64) -> Result<(), StoreError> {
        let rows = snapshot_rows(products, at);
        self.writer.run(move |tx| tx.upsert_products(&rows))
    }

    fn finish(
        &self,
        started: i64,
        products: usize,
        source: &'static str,
        complete: bool,
    ) -> Result<(), StoreError> {
        let n = products as i64;
        self.writer
            .run(move |tx| tx.finish_refresh(started, n, source, complete))
    }

    fn stopping(&self) -> bool {
        crate::threads::stop_asked(&self.stop)
    }
}

impl Catalog {
    /// `GET {base}/api/products?page=N&per_page=100`.
    fn fetch_list_page(&self, page: u32) -> Result<Answer, Outage> {
        let Source::Http { agent, base, .. } = &self.source else {
            return Err(Outage("no product service to list".into()));
        };
        let url = format!("{base}/api/products?page={page}&per_page={PER_PAGE}");
        self.metrics.product_call();
        let result = (|| {
            // As for a single lookup: only the service's own JSON 404 says "no list".
            let Some(text) = get_json(agent, &url, self.total_timeout, MAX_PAGE_BYTES)? else {
                return Ok(Answer::NoList);
            };
            ListPage::parse(&text)
                .map(|page| Answer::Page(page, text.len()))
                .map_err(|e| Outage(format!("GET {url}: {e}")))
        })();
        if result.is_err() {
            self.metrics.product_failure();
        }
        result
    }
}

/// Loads `products` into the snapshot as fetched at `taken_at` (`catalog import`): rows
/// fetched later (by a lookup or a refresh) are kept, and nothing else is dropped.
/// Returns how many products that was (a product listed twice counts once).
pub fn import_snapshot(
    writer: &WriterHandle,
    products: &[super::Product],
    taken_at: i64,
    source: &str,
) -> Result<usize, StoreError> {
    let rows = snapshot_rows(products, taken_at);
    let (n, source) = (rows.len(), source.to_string());
    writer.run(move |tx| {
        tx.upsert_products(&rows)?;
        tx.finish_refresh(taken_at, n as i64, &source, false)
    })?;
    Ok(n)
}

/// The snapshot's rows for `products`, one per product (the last given) in product
/// order, as every transaction takes the snapshot's row locks (orders/rules.rs): a page
/// written while creates refresh some of the same products cannot deadlock with them
/// (PostgreSQL).
fn snapshot_rows(products: &[super::Product], at: i64) -> Vec<CachedProduct> {
    let rows: std::collections::BTreeMap<_, _> = products
        .iter()
        .map(|p| (p.id, snapshot_row(p, at)))
        .collect();
    rows.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Money, ProductId};

    #[test]
    fn a_page_is_written_one_row_per_product_in_product_order() {
        let product = |id: i64, stock: i64| super::super::Product {
            id: ProductId::new(id).unwrap(),
            name: format!("Product {id}"),
            price: Money::from_cents(100),
            stock,
        };
        let page = [product(9, 1), product(2, 1), product(9, 7), product(5, 1)];
        let rows = snapshot_rows(&page, 42);
        let kept: Vec<(i64, i64)> = rows.iter().map(|r| (r.product_id.get(), r.stock)).collect();
        assert_eq!(kept, [(2, 1), (5, 1), (9, 7)], "the last answer of 9 kept");
        assert!(rows.iter().all(|r| r.fetched_at == 42));
    }
}
