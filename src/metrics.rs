//! Counters and histograms, rendered in the Prometheus text format.

use crate::store::{BlockedEvent, CatalogStats, OutboxStats};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request counts and latencies, as one stripe holds them.
#[derive(Default)]
struct Requests {
    by_status: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// Stripes of the request metrics: every request updates them, from every HTTP worker at
/// once, and one lock for all had workers queue behind one preempted on two cores. A
/// thread keeps to one stripe; a scrape adds them up.
const STRIPES: usize = 16;

/// The stripe of the calling thread: threads take them in turn as they first record.
fn stripe() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

#[derive(Default)]
pub struct Metrics {
    requests: [Mutex<Requests>; STRIPES],
    orders_created: AtomicU64,
    product_calls: AtomicU64,
    product_failures: AtomicU64,
    product_cache_hits: AtomicU64,
    outbox_published: AtomicU64,
    outbox_failed: AtomicU64,
    broker_connected: AtomicBool,
    relay_active: AtomicBool,
    /// `LINK_UP` or `LINK_DOWN`: what the last call to the product service came to; 0
    /// before the first.
    product_link: AtomicU8,
    /// When the link last changed, in microseconds.
    product_link_since: AtomicI64,
    /// Orders taken offline since the link was last lost.
    offline_orders: AtomicU64,
}

// 0: nothing asked yet.
const LINK_UP: u8 = 1;
const LINK_DOWN: u8 = 2;

/// How the product-service link changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChange {
    /// The first answer since start, or the first failure.
    First,
    /// Up again after being down this long, with this many orders taken offline.
    Back {
        down_for: Duration,
        offline_orders: u64,
    },
}

impl Metrics {
    /// `route` is the route's pattern (`/api/orders/:id`), never the raw path.
    pub fn observe_request(&self, route: &'static str, status: u16, took: Duration) {
        let mut requests = self.requests[stripe()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *requests.by_status.entry((route, status)).or_default() += 1;
        let secs = took.as_secs_f64();
        let h = requests.latency.entry(route).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// A request the HTTP edge refused before any route saw it (400, 408, 413, 414, 417,
    /// 431, 505, and 503 when full): counted under the route `edge`, with no duration.
    pub fn edge_refused(&self, status: u16) {
        let mut requests = self.requests[stripe()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *requests.by_status.entry(("edge", status)).or_default() += 1;
    }

    pub fn order_created(&self) {
        self.orders_created.fetch_add(1, Relaxed);
    }

    pub fn product_call(&self) {
        self.product_calls.fetch_add(1, Relaxed);
    }

    pub fn product_failure(&self) {
        self.product_failures.fetch_add(1, Relaxed);
    }

    pub fn product_cache_hit(&self) {
        self.product_cache_hits.fetch_add(1, Relaxed);
    }

    /// Records what the last call to the product service came to; `Some` when that
    /// changes the link (up to down, down to up, or the first word either way).
    pub fn set_product_link(&self, up: bool) -> Option<LinkChange> {
        let new = if up { LINK_UP } else { LINK_DOWN };
        let old = self.product_link.swap(new, Relaxed);
        if old == new {
            return None;
        }
        let now = crate::clock::now_micros();
        let since = self.product_link_since.swap(now, Relaxed);
        if up && old == LINK_DOWN {
            let down_for = Duration::from_micros(u64::try_from(now - since).unwrap_or(0));
            Some(LinkChange::Back {
                down_for,
                offline_orders: self.offline_orders.load(Relaxed),
            })
        } else {
            if !up {
                self.offline_orders.store(0, Relaxed);
            }
            Some(LinkChange::First)
        }
    }

    /// "up", "down" or "unknown" (nothing asked yet), and since when (microseconds).
    pub fn product_link(&self) -> (&'static str, Option<i64>) {
        let since = Some(self.product_link_since.load(Relaxed)).filter(|t| *t > 0);
        match self.product_link.load(Relaxed) {
            LINK_UP => ("up", since),
            LINK_DOWN => ("down", since),
            _ => ("unknown", None),
        }
    }

    /// An order was taken offline (priced from the catalog snapshot).
    pub fn offline_order(&self) {
        self.offline_orders.fetch_add(1, Relaxed);
        self.product_cache_hits.fetch_add(1, Relaxed);
    }

    /// Orders taken offline since the product-service link was last lost.
    pub fn offline_orders(&self) -> u64 {
        self.offline_orders.load(Relaxed)
    }

    pub fn events_published(&self, n: u64) {
        self.outbox_published.fetch_add(n, Relaxed);
    }

    pub fn events_failed(&self, n: u64) {
        self.outbox_failed.fetch_add(n, Relaxed);
    }

    pub fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up, Relaxed);
    }

    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Relaxed)
    }

    /// Whether this instance publishes the outbox (one at a time on a shared database).
    pub fn set_relay_active(&self, active: bool) {
        self.relay_active.store(active, Relaxed);
    }

    pub fn relay_active(&self) -> bool {
        self.relay_active.load(Relaxed)
    }

    /// The whole exposition; `outbox`, `blocked` and `catalog` are read from the database
    /// at scrape time.
    pub fn render(
        &self,
        outbox: Option<&OutboxStats>,
        blocked: Option<&BlockedEvent>,
        catalog: Option<&CatalogStats>,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let mut by_status = BTreeMap::<(&'static str, u16), u64>::new();
        let mut latency = BTreeMap::<&'static str, Histogram>::new();
        for stripe in &self.requests {
            let stripe = stripe.lock().unwrap_or_else(|p| p.into_inner());
            for (key, n) in &stripe.by_status {
                *by_status.entry(*key).or_default() += n;
            }
            for (route, h) in &stripe.latency {
                let sum = latency.entry(route).or_default();
                for (total, n) in sum.counts.iter_mut().zip(h.counts) {
                    *total += n;
                }
                sum.count += h.count;
                sum.sum += h.sum;
            }
        }
        header(
            &mut out,
            "order_service_http_requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        for ((route, status), n) in &by_status {
            let _ = writeln!(
                out,
                "order_service_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            &mut out,
            "order_service_http_request_duration_seconds",
            "histogram",
            "Time to answer a request, by route.",
        );
        for (route, h) in &latency {
            let name = "order_service_http_request_duration_seconds";
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", h.count);
        }
        let counters = [
            ("order_service_orders_created_total", "Orders created.", &self.orders_created),
            ("order_service_product_service_calls_total", "Calls to the product service.", &self.product_calls),
            ("order_service_product_service_failures_total", "Product service calls that failed (connect, timeout, 5xx, bad answer).", &self.product_failures),
            ("order_service_product_cache_hits_total", "Orders taken offline: priced from the catalog snapshot while the product service was away.", &self.product_cache_hits),
            ("order_service_outbox_published_total", "Events the broker confirmed.", &self.outbox_published),
            ("order_service_outbox_failed_total", "Events whose publish was not confirmed (nack, return, lost connection); they are retried.", &self.outbox_failed),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Relaxed));
        }
        header(
            &mut out,
            "order_service_broker_connected",
            "gauge",
            "1 while the relay holds a broker connection.",
        );
        let _ = writeln!(
            out,
            "order_service_broker_connected {}",
            u8::from(self.broker_connected())
        );
        header(
            &mut out,
            "order_service_relay_active",
            "gauge",
            "1 while this instance publishes the outbox (one instance at a time on a shared database).",
        );
        let _ = writeln!(
            out,
            "order_service_relay_active {}",
            u8::from(self.relay_active())
        );
        let (link, _) = self.product_link();
        let gauges = [
            ("order_service_product_service_up", "1 while the product service answers, 0 while it cannot (offline selling), 0 before it was first asked.", i64::from(link == "up")),
            ("order_service_offline_orders", "Orders taken offline since the product service link was last lost.", self.offline_orders() as i64),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        if let Some(catalog) = catalog {
            let gauges = [
                ("order_service_catalog_products", "Products in the catalog snapshot.", Some(catalog.products)),
                ("order_service_catalog_fresh_products", "Snapshot products recent enough (PRODUCT_CACHE_MAX_AGE) to be sold offline.", Some(catalog.fresh)),
                ("order_service_catalog_age_seconds", "Time since the last complete refresh of the snapshot (absent before the first).", catalog.age_seconds()),
            ];
            for (name, help, value) in gauges {
                if let Some(value) = value {
                    header(&mut out, name, "gauge", help);
                    let _ = writeln!(out, "{name} {value}");
                }
            }
        }
        if let Some(stats) = outbox {
            header(
                &mut out,
                "order_service_outbox_pending",
                "gauge",
                "Events waiting for the broker.",
            );
            let _ = writeln!(out, "order_service_outbox_pending {}", stats.pending);
            header(
                &mut out,
                "order_service_outbox_oldest_pending_age_seconds",
                "gauge",
                "Age of the oldest waiting event (0 when none waits).",
            );
            let _ = writeln!(
                out,
                "order_service_outbox_oldest_pending_age_seconds {}",
                stats.oldest_pending_age_seconds().unwrap_or(0)
            );
            header(
                &mut out,
                "order_service_outbox_blocked_event_sequence",
                "gauge",
                "Sequence (outbox id) of the event the broker keeps refusing, which the events after it wait for; 0 when none.",
            );
            let _ = writeln!(
                out,
                "order_service_outbox_blocked_event_sequence {}",
                blocked.map_or(0, |b| b.id)
            );
            header(
                &mut out,
                "order_service_outbox_blocked_seconds",
                "gauge",
                "Time since the broker first refused that event; 0 when none is blocked.",
            );
            let _ = writeln!(
                out,
                "order_service_outbox_blocked_seconds {}",
                blocked.map_or(0, |b| ((crate::clock::now_micros() - b.since) / 1_000_000)
                    .max(0))
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_request("/health", 200, Duration::from_millis(3));
        m.observe_request("/health", 200, Duration::from_millis(30));
        let text = m.render(None, None, None);
        assert!(
            text.contains("order_service_http_requests_total{route=\"/health\",status=\"200\"} 2")
        );
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"0.05\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
    }

    #[test]
    fn requests_recorded_from_many_threads_add_up_in_one_exposition() {
        let m = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..STRIPES + 4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        m.observe_request("/api/orders/:id", 200, Duration::from_millis(3));
                    }
                    m.observe_request("/api/orders/:id", 404, Duration::from_millis(30));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render(None, None, None);
        let n = STRIPES + 4;
        let route = "route=\"/api/orders/:id\"";
        for line in [
            format!(
                "order_service_http_requests_total{{{route},status=\"200\"}} {}",
                n * 100
            ),
            format!("order_service_http_requests_total{{{route},status=\"404\"}} {n}"),
            format!(
                "order_service_http_request_duration_seconds_bucket{{{route},le=\"0.005\"}} {}",
                n * 100
            ),
            format!(
                "order_service_http_request_duration_seconds_bucket{{{route},le=\"+Inf\"}} {}",
                n * 101
            ),
            format!(
                "order_service_http_request_duration_seconds_count{{{route}}} {}",
                n * 101
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line} in:\n{text}"
            );
        }
    }

    #[test]
    fn the_link_counts_offline_orders_from_each_loss() {
        let m = Metrics::default();
        assert_eq!(m.product_link().0, "unknown");
        assert_eq!(m.set_product_link(true), Some(LinkChange::First));
        assert_eq!(m.set_product_link(true), None);
        assert_eq!(m.set_product_link(false), Some(LinkChange::First));
        m.offline_order();
        m.offline_order();
        assert_eq!(m.set_product_link(false), None);
        match m.set_product_link(true) {
            Some(LinkChange::Back { offline_orders, .. }) => assert_eq!(offline_orders, 2),
            other => panic!("{other:?}"),
        }
        m.set_product_link(false);
        assert_eq!(m.offline_orders(), 0, "a new loss counts from zero");
    }
}
