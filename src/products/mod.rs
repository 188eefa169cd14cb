//! The product service: name, price and stock of each product, over HTTP or from a
//! local `file:` catalog, and the pricing of a new order against them. The catalog
//! snapshot that prices orders while the product service is away: its refresh
//! (`refresher.rs`), the list and file formats and the offline pricing (`snapshot.rs`).

mod fan_out;
pub mod recent;
mod refresher;
mod resolver;
mod single_flight;
mod snapshot;

pub use refresher::{import_snapshot, spawn_refresher, RefresherHandle, PER_PAGE};
pub use snapshot::{price_from_snapshot, read_catalog_file, ListPage};

use crate::config::{Config, ProductSource};
use crate::domain::{Money, NewOrder, PricedLine, ProductId};
use crate::metrics::{LinkChange, Metrics};
use crate::store::CachedProduct;
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What the product service says of one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub price: Money,
    pub stock: i64,
}

/// The product service could not give a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage(pub String);

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PRODUCT_SERVICE_URL may carry credentials; the message quotes it.
        write!(f, "product service: {}", crate::redact::userinfo(&self.0))
    }
}

/// A shortfall: the product has fewer units than asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Shortage {
    pub product_id: ProductId,
    pub requested: u32,
    pub available: i64,
}

/// Why an order cannot be priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PricingError {
    Unknown(Vec<ProductId>),
    InsufficientStock(Vec<Shortage>),
    Outage(Outage),
}

/// The outcome of pricing an order, and what the product service said on the way:
/// its good answers refresh the snapshot and its unknown products leave it whatever the
/// outcome, so the offline policy never works from an answer older than the last one seen.
#[derive(Debug, Clone)]
pub struct Pricing {
    pub outcome: Result<Vec<PricedLine>, PricingError>,
    pub fresh: Vec<CachedProduct>,
    pub unknown: Vec<ProductId>,
    /// When the lookups started: the time the answers are stamped with.
    pub priced_at: i64,
}

const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// Lookups of one order run on at most this many threads: its own (its connection's)
/// and helpers'.
const MAX_PARALLEL: usize = 8;
/// Helper threads for the lookups of orders with several lines, shared by all creates.
const LOOKUP_HELPERS: usize = 2 * MAX_PARALLEL;
/// Each way, a kept connection's buffer.
const CONNECTION_BUFFER: usize = 16 * 1024;
/// The largest answer head taken: below the buffer, so that a larger head is reported
/// as too large (with a full buffer ureq could only say the peer went away).
const ANSWER_HEAD_LIMIT: usize = 8 * 1024;
/// How long past its lookups' own deadline an order waits for a helper's answer that
/// never comes (its part panicked): ureq's timeout has ended every request by then.
const HELPER_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Catalog {
    source: Source,
    flights: Arc<single_flight::Flights>,
    total_timeout: Duration,
    cache_max_age: Duration,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
enum Source {
    Http {
        agent: ureq::Agent,
        base: Arc<str>,
        helpers: fan_out::Helpers,
    },
    File(PathBuf),
}

impl Catalog {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Catalog {
        let source = match &config.product_source {
            ProductSource::Http(base) => {
                // A connection for each thread that may look up at once: the creates
                // served at once, the helpers and the refresher. Both caps: ureq's
                // overall one (10 by default) closed the connections handed back past
                // the tenth, and the next lookups connected anew.
                let connections = config.http_write_threads + LOOKUP_HELPERS + 1;
                let agent_config = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    // Only the product service answers for its products: a redirect is
                    // an answer like any other status but 200 and its own 404 (an outage),
                    // never a pointer to another host whose word would price the order.
                    .max_redirects(0)
                    .timeout_connect(Some(config.product_connect_timeout))
                    .timeout_recv_response(Some(config.product_read_timeout))
                    .timeout_global(Some(config.product_total_timeout))
                    .max_idle_connections(connections)
                    .max_idle_connections_per_host(connections)
                    // Each kept connection holds its buffers, 128 KiB each way by
                    // default, written through when first used. A lookup's request
                    // and the answer's head are far smaller; a body streams through.
                    .input_buffer_size(CONNECTION_BUFFER)
                    .output_buffer_size(CONNECTION_BUFFER)
                    .max_response_header_size(ANSWER_HEAD_LIMIT)
                    .user_agent(concat!("order-service/", env!("CARGO_PKG_VERSION")))
                    .build();
                let agent = ureq::Agent::with_parts(
                    agent_config,
                    ureq::unversioned::transport::DefaultConnector::default(),
                    resolver::LookupResolver::default(),
                );
                Source::Http {
                    agent,
                    base: base.as_str().into(),
                    helpers: fan_out::Helpers::start(LOOKUP_HELPERS, "lookup"),
                }
            }
            ProductSource::File(path) => Source::File(path.clone()),
        };
        Catalog {
            source,
            flights: Arc::default(),
            total_timeout: config.product_total_timeout,
            cache_max_age: config.product_cache_max_age,
            metrics,
        }
    }

    /// Prices every line from the product service. When it cannot answer, the outcome is
    /// `PricingError::Outage`: the caller may then price from the snapshot
    /// (`offline_max_age`), in the order's own transaction.
    /// `since`: when the order arrived (lookups may share a request sent after it).
    pub fn price(&self, order: &NewOrder, since: Instant) -> Pricing {
        let ids: Vec<ProductId> = order.lines().iter().map(|l| l.product_id).collect();
        let now = crate::clock::now_micros();
        let (answered, outage) = match self.lookup_all(&ids, since) {
            Ok(answers) => (answers.into_iter().map(Some).collect(), None),
            Err(Cut { outage, answered }) => (answered, Some(outage)),
        };
        self.link(outage.as_ref().map_or(Ok(()), Err));
        // The answers that came, before a failure too, are the product service's latest
        // word on their products: they refuse the order as they would online, and they
        // outweigh the snapshot's older rows (rules.rs).
        let fresh = answered
            .iter()
            .flatten()
            .flatten()
            .map(|p| snapshot_row(p, now))
            .collect();
        let unknown = ids
            .iter()
            .zip(&answered)
            .filter(|(_, a)| matches!(a, Some(None)))
            .map(|(id, _)| *id)
            .collect();
        let outcome = match (refusal(order, answered.iter().map(Option::as_ref)), outage) {
            (Some(refused), _) => Err(refused),
            (None, Some(outage)) => Err(PricingError::Outage(outage)),
            (None, None) => Ok(priced_lines(order, &answered)),
        };
        Pricing {
            outcome,
            fresh,
            unknown,
            priced_at: now,
        }
    }

    /// How old a snapshot row may be to price an order offline; `None` when offline
    /// sales are off (`PRODUCT_CACHE_MAX_AGE=0`).
    pub fn offline_max_age(&self) -> Option<Duration> {
        (!self.cache_max_age.is_zero()).then_some(self.cache_max_age)
    }

    /// An order was taken offline.
    pub fn sold_offline(&self) {
        self.metrics.offline_order();
    }

    /// Notes what the last call to the product service came to; says once in the log when
    /// the link is lost (and offline selling starts) and once when it is back.
    fn link(&self, outcome: Result<(), &Outage>) {
        let Some(change) = self.metrics.set_product_link(outcome.is_ok()) else {
            return;
        };
        match (outcome, change) {
            (Err(e), _) => match self.offline_max_age() {
                Some(age) => log::warn!(
                    "{e}; offline selling starts: orders are priced from the catalog snapshot \
                     (products refreshed within {} s) and marked stock_verified=false",
                    age.as_secs()
                ),
                None => log::warn!(
                    "{e}; offline sales are off (PRODUCT_CACHE_MAX_AGE=0): orders get 503 \
                     until it is back"
                ),
            },
            (
                Ok(()),
                LinkChange::Back {
                    down_for,
                    offline_orders,
                },
            ) => log::info!(
                "product service reachable again after {} s: offline selling ends; \
                 {offline_orders} order(s) were taken offline",
                down_for.as_secs()
            ),
            (Ok(()), LinkChange::First) => {}
        }
    }

    /// One answer per id, in order: `None` for an unknown product. The whole lookup
    /// shares one deadline (`PRODUCT_TIMEOUT_MS`), and the first failure stops the rest.
    fn lookup_all(&self, ids: &[ProductId], since: Instant) -> Result<Vec<Option<Product>>, Cut> {
        let none_answered = |outage| Cut {
            outage,
            answered: vec![None; ids.len()],
        };
        let (agent, base, helpers) = match &self.source {
            Source::File(path) => {
                let catalog = read_catalog(path).map_err(none_answered)?;
                // A product listed twice is its last entry, as the snapshot takes it.
                return Ok(ids
                    .iter()
                    .map(|id| catalog.iter().rev().find(|p| p.id == *id).cloned())
                    .collect());
            }
            Source::Http {
                agent,
                base,
                helpers,
            } => (agent, base, helpers),
        };
        let deadline = Instant::now() + self.total_timeout;
        let lookup = Lookup {
            agent: agent.clone(),
            base: base.clone(),
            flights: self.flights.clone(),
            since,
            deadline,
            first_failure: OnceLock::new(),
            metrics: self.metrics.clone(),
        };
        if ids.len() == 1 {
            return Ok(vec![lookup.fetch(ids[0]).map_err(none_answered)?]);
        }
        let lookup = Arc::new(lookup);
        let (each, all) = (lookup.clone(), ids.to_vec());
        let answers = helpers.map(ids.len(), MAX_PARALLEL - 1, deadline + HELPER_GRACE, {
            move |i| each.fetch(all[i])
        });
        let Some(answers) = answers else {
            return Err(none_answered(Outage("a lookup helper failed".into())));
        };
        match lookup.first_failure.get() {
            Some(first) => Err(Cut {
                outage: first.clone(),
                answered: answers.into_iter().map(Result::ok).collect(),
            }),
            None => answers
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(none_answered),
        }
    }
}

/// An order's lookups cut short by `outage`, with the answers that came before it (`None`
/// where a product got none).
struct Cut {
    outage: Outage,
    answered: Vec<Option<Option<Product>>>,
}

/// The lookups of one order: one agent, one deadline, and the first failure, which
/// stops the rest.
struct Lookup {
    agent: ureq::Agent,
    base: Arc<str>,
    flights: Arc<single_flight::Flights>,
    /// When the order arrived: only answers to requests sent since then verify it.
    since: Instant,
    deadline: Instant,
    first_failure: OnceLock<Outage>,
    metrics: Arc<Metrics>,
}

impl Lookup {
    fn fetch(&self, id: ProductId) -> Result<Option<Product>, Outage> {
        if self.first_failure.get().is_some() {
            return Err(Outage("an earlier lookup of this order failed".into()));
        }
        if Instant::now() >= self.deadline {
            return Err(self.failed(Outage("out of time for this order".into())));
        }
        let result = self.flights.fetch(id, self.since, self.deadline, || {
            // What is left when the request goes: a lookup may first wait on another's.
            let left = self.deadline.saturating_duration_since(Instant::now());
            self.metrics.product_call();
            let result = fetch_one(&self.agent, &self.base, id, left);
            if result.is_err() {
                self.metrics.product_failure();
            }
            result
        });
        result.map_err(|e| self.failed(e))
    }

    fn failed(&self, e: Outage) -> Outage {
        let _ = self.first_failure.set(e.clone());
        e
    }
}

fn fetch_one(
    agent: &ureq::Agent,
    base: &str,
    id: ProductId,
    time_left: Duration,
) -> Result<Option<Product>, Outage> {
    let url = format!("{base}/api/products/{id}");
    let Some(text) = get_json(agent, &url, time_left, MAX_ANSWER_BYTES)? else {
        return Ok(None);
    };
    let product = parse_product(&text).map_err(|e| Outage(format!("GET {url}: {e}")))?;
    if product.id != id {
        return Err(Outage(format!(
            "GET {url}: answered for product {}",
            product.id
        )));
    }
    Ok(Some(product))
}

/// `GET url` from the product service: its answer's text, or `None` for its own "not
/// found". Only a 404 with a JSON body says that (the contract's rule): a proxy's or
/// ingress's 404 (an HTML or text page while a deploy is under way) is an outage, like
/// any other status, so the order may be retried and the snapshot stays.
fn get_json(
    agent: &ureq::Agent,
    url: &str,
    time_left: Duration,
    limit: u64,
) -> Result<Option<String>, Outage> {
    let mut response = agent
        .get(url)
        .header("Accept", "application/json")
        .config()
        .timeout_global(Some(time_left))
        .build()
        .call()
        .map_err(|e| Outage(format!("GET {url}: {e}")))?;
    let status = response.status().as_u16();
    if status != 200 && status != 404 {
        return Err(Outage(format!("GET {url} answered {status}")));
    }
    let text = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_string()
        .map_err(|e| Outage(format!("GET {url}: {e}")))?;
    if status == 404 {
        // Whatever its Content-Type says: the contract reads the body.
        let own = serde_json::from_str::<Value>(&text).is_ok();
        return if own {
            Ok(None)
        } else {
            Err(Outage(format!(
                "GET {url} answered 404 without a JSON body; taken for a proxy, not the product service"
            )))
        };
    }
    Ok(Some(text))
}

/// A product as a snapshot row fetched at `at`.
fn snapshot_row(p: &Product, at: i64) -> CachedProduct {
    CachedProduct {
        product_id: p.id,
        name: p.name.clone(),
        price: p.price,
        stock: p.stock,
        fetched_at: at,
    }
}

/// Reads `{…}`, `{"product":{…}}` or `{"data":{…}}` holding id, name, price and stock.
///
/// The price is read from its JSON text, never through a float: `19.999999999999999`
/// is a float's 20.0 but has more than two decimals, so it is refused.
pub fn parse_product(text: &str) -> Result<Product, String> {
    let outer: Answer<'_> = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    // An answer with an id is the product itself, whatever else it holds (a `data`
    // field of its own, say); only one without is looked into for a wrapped product.
    let wrapped = [outer.product, outer.data]
        .into_iter()
        .flatten()
        .find(|raw| outer.id.is_none() && raw.get().starts_with('{'));
    let obj = match wrapped {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| format!("not JSON: {e}"))?,
        None => outer,
    };
    let id = obj
        .id
        .as_ref()
        .and_then(Value::as_i64)
        .and_then(ProductId::new)
        .ok_or("no integer id")?;
    let name = obj
        .name
        .as_ref()
        .and_then(Value::as_str)
        // PostgreSQL keeps no NUL in text: refused here, it is refused on both engines alike.
        .filter(|n| !n.is_empty() && n.len() <= 500 && !n.contains('\0'))
        .ok_or("no name, or one that is empty, over 500 bytes or holds a NUL")?
        .to_string();
    let price = obj
        .price
        .and_then(|raw| match raw.get() {
            // Some services send decimals as strings to keep them exact.
            quoted if quoted.starts_with('"') => serde_json::from_str::<String>(quoted)
                .ok()
                .and_then(|s| Money::parse_price(&s)),
            number => Money::parse_price(number),
        })
        .ok_or("price is not an amount of at most two decimals")?;
    let stock = obj
        .stock
        .as_ref()
        .and_then(Value::as_i64)
        .filter(|s| *s >= 0)
        .ok_or("stock is not a non-negative integer")?;
    Ok(Product {
        id,
        name,
        price,
        stock,
    })
}

/// The fields of a product answer, the price kept as the text it was sent as.
#[derive(serde::Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    product: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(borrow, default)]
    price: Option<&'a RawValue>,
    #[serde(default)]
    stock: Option<Value>,
}

fn read_catalog(path: &PathBuf) -> Result<Vec<Product>, Outage> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Outage(format!("cannot read {}: {e}", path.display())))?;
    let list: Vec<&RawValue> = serde_json::from_str(&text)
        .map_err(|e| Outage(format!("{} must hold a JSON array: {e}", path.display())))?;
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            parse_product(v.get()).map_err(|e| Outage(format!("{} entry {i}: {e}", path.display())))
        })
        .collect()
}

/// The order's lines priced from its answers, every one of them a product that covers
/// its quantity (`refusal` found nothing).
fn priced_lines(order: &NewOrder, answered: &[Option<Option<Product>>]) -> Vec<PricedLine> {
    order
        .lines()
        .iter()
        .zip(answered.iter().flatten().flatten())
        .map(|(l, p)| PricedLine {
            product_id: l.product_id,
            product_name: p.name.clone(),
            quantity: l.quantity,
            price: p.price,
        })
        .collect()
}

/// What the answers refuse the order for, whatever the lines without one (`None`) would
/// get: products unknown, else stock short. One answer per line, in the order's order.
fn refusal<'a, I>(order: &NewOrder, answers: I) -> Option<PricingError>
where
    I: Iterator<Item = Option<&'a Option<Product>>> + Clone,
{
    let lines = || order.lines().iter().zip(answers.clone());
    let unknown: Vec<ProductId> = lines()
        .filter(|(_, a)| matches!(a, Some(None)))
        .map(|(l, _)| l.product_id)
        .collect();
    if !unknown.is_empty() {
        return Some(PricingError::Unknown(unknown));
    }
    let shortages: Vec<Shortage> = lines()
        .filter_map(|(l, a)| {
            let p = a?.as_ref()?;
            (p.stock < i64::from(l.quantity.get())).then(|| Shortage {
                product_id: l.product_id,
                requested: l.quantity.get(),
                available: p.stock,
            })
        })
        .collect();
    (!shortages.is_empty()).then_some(PricingError::InsufficientStock(shortages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_plain_and_wrapped_answers() {
        let plain = json!({"id":1,"name":"Laptop","price":1299.99,"stock":3});
        let p = parse_product(&plain.to_string()).unwrap();
        assert_eq!((p.price.cents(), p.stock), (129_999, 3));
        let wrapped = |k: &str| json!({ k: plain }).to_string();
        assert_eq!(parse_product(&wrapped("product")).unwrap(), p);
        assert_eq!(parse_product(&wrapped("data")).unwrap(), p);
        let quoted = r#"{"id":1,"name":"Laptop","price":"1299.99","stock":3,"data":[1]}"#;
        assert_eq!(parse_product(quoted).unwrap(), p);
        let spaced =
            "{ \"id\" : 1 , \"name\" : \"Laptop\" , \"price\" :\n 1299.99 , \"stock\" : 3 }";
        assert_eq!(parse_product(spaced).unwrap(), p);
    }

    #[test]
    fn reads_prices_from_their_text() {
        let with = |price: &str| format!(r#"{{"id":1,"name":"x","price":{price},"stock":1}}"#);
        for (price, cents) in [("19.99", 1999), ("0.3", 30), ("42", 4200), ("1.50", 150)] {
            assert_eq!(
                parse_product(&with(price)).unwrap().price.cents(),
                cents,
                "{price}"
            );
        }
        // Each of these reads back from a float as a price with two decimals.
        for price in [
            "19.999999999999999",
            "20.000000000000001",
            "1e3",
            "19.990",
            "-3",
        ] {
            assert!(parse_product(&with(price)).is_err(), "{price}");
        }
    }

    #[test]
    fn refuses_answers_it_cannot_trust() {
        for bad in [
            json!({"id":1,"name":"x","price":1.999,"stock":3}),
            json!({"id":1,"name":"x","price":1,"stock":-1}),
            json!({"id":1,"price":1,"stock":1}),
            json!({"name":"x","price":1,"stock":1}),
            json!({"id":1,"name":"","price":1,"stock":1}),
            json!({"id":1,"name":"x".repeat(501),"price":1,"stock":1}),
            json!({"id":1,"name":"Mug\u{0}","price":1,"stock":1}),
        ] {
            assert!(parse_product(&bad.to_string()).is_err(), "{bad}");
        }
        assert!(parse_product("<html>").is_err());
    }
}
