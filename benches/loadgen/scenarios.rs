//! The scenarios: N client threads, each on its own keep-alive connection, a warm-up,
//! then a fixed time during which every request's latency is recorded.

use crate::catalog::PRODUCTS;
use crate::client::{Conn, Request};
use crate::cpu::Meter;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The user index of the one user holding a big share of the preloaded orders.
pub const BIG: u32 = u32::MAX;

pub fn user_name(u: u32) -> String {
    if u == BIG {
        "user-big".to_string()
    } else {
        format!("user-{u}")
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// POST /api/orders with this many lines (each a product lookup).
    Create(usize),
    /// GET /api/orders/:id of a known order, as its owner.
    Get,
    /// GET /api/orders?page=1&per_page=10 of a random user, or of the big user.
    List { big: bool },
    /// 80% reads (50 get, 30 list), 15% creates, 5% cancels and status changes.
    Mix,
    /// The same request shape as `Get`, to a server that answers a fixed body.
    Hello,
    /// GET /api/orders?after=…&per_page=10 of the big user: the page nine tenths of the
    /// way down its orders, by the cursor `Known::deep_after`.
    Deep,
}

/// Orders that exist, with their owners; the users creates and lists pick from.
#[derive(Default)]
pub struct Known {
    pub orders: Vec<(i64, u32)>,
    pub users: u32,
    /// A cursor (`next`) deep into the big user's orders, for `Kind::Deep`, percent-encoded
    /// for a query string once, not at each request.
    pub deep_after: Option<String>,
}

/// What one scenario measured.
#[derive(Default)]
pub struct Outcome {
    pub seconds: f64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Latencies in microseconds, sorted.
    pub latencies: Vec<u32>,
    pub created: Vec<(i64, u32)>,
    pub body_bytes: u64,
    pub bodies: u64,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    /// Milliseconds at quantile `q` (1.0 = max), by nearest rank: the smallest latency
    /// that at least `q` of them do not exceed.
    pub fn ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let n = self.latencies.len();
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        f64::from(self.latencies[i]) / 1000.0
    }

    pub fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.latencies.extend(other.latencies);
        self.created.extend(other.created);
        self.body_bytes += other.body_bytes;
        self.bodies += other.bodies;
    }
}

/// A xorshift generator: cheap, and the same run gives the same requests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

pub fn create_body(rng: &mut Rng, items: usize) -> String {
    let first = rng.below(PRODUCTS);
    let lines: Vec<String> = (0..items as u64)
        .map(|k| {
            format!(
                r#"{{"product_id":{},"quantity":{}}}"#,
                1 + (first + k) % PRODUCTS,
                1 + k % 3
            )
        })
        .collect();
    format!(r#"{{"items":[{}]}}"#, lines.join(","))
}

fn create(rng: &mut Rng, known: &Known, items: usize) -> (Request, u32) {
    let u = rng.below(u64::from(known.users)) as u32;
    let req = Request::get("/api/orders".into())
        .header("X-User-Id", user_name(u))
        .header("X-User-Email", format!("{}@example.com", user_name(u)))
        .json("POST", create_body(rng, items));
    (req, u)
}

fn get(rng: &mut Rng, known: &Known) -> Request {
    let (id, u) = known.orders[rng.below(known.orders.len() as u64) as usize];
    Request::get(format!("/api/orders/{id}")).header("X-User-Id", user_name(u))
}

fn list(rng: &mut Rng, known: &Known, big: bool) -> Request {
    let u = if big {
        BIG
    } else {
        rng.below(u64::from(known.users)) as u32
    };
    Request::get("/api/orders?page=1&per_page=10".into()).header("X-User-Id", user_name(u))
}

fn deep(known: &Known) -> Request {
    let after = known
        .deep_after
        .as_deref()
        .expect("a deep cursor, read before");
    Request::get(format!("/api/orders?after={after}&per_page=10"))
        .header("X-User-Id", user_name(BIG))
}

enum Sent {
    Other,
    Create(u32),
}

/// Runs `kind` from `clients` threads against `addr`: `warmup`, then `duration` measured.
pub fn run(
    addr: SocketAddr,
    kind: Kind,
    known: &Known,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    meter: Option<&mut Meter>,
) -> Outcome {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut total = Outcome {
        seconds: duration.as_secs_f64(),
        ..Outcome::default()
    };
    std::thread::scope(|s| {
        if let Some(meter) = meter {
            s.spawn(move || {
                sleep_until(measure_from);
                meter.start();
                sleep_until(end);
                meter.stop();
            });
        }
        let threads: Vec<_> = (0..clients)
            .map(|t| s.spawn(move || client(addr, kind, known, t as u64, measure_from, end)))
            .collect();
        for t in threads {
            total.merge(t.join().expect("client thread"));
        }
    });
    total.latencies.sort_unstable();
    total
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn client(
    addr: SocketAddr,
    kind: Kind,
    known: &Known,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> Outcome {
    let mut conn = Conn::new(addr);
    let mut rng = Rng::new(seed + 1);
    let mut out = Outcome::default();
    // The mix's own pending orders: what its cancels and status changes work on.
    let mut own: Vec<(i64, u32)> = Vec::new();
    loop {
        let began = Instant::now();
        if began >= end {
            break;
        }
        let (req, sent) = match kind {
            Kind::Create(items) => {
                let (r, u) = create(&mut rng, known, items);
                (r, Sent::Create(u))
            }
            Kind::Get => (get(&mut rng, known), Sent::Other),
            Kind::List { big } => (list(&mut rng, known, big), Sent::Other),
            Kind::Deep => (deep(known), Sent::Other),
            Kind::Hello => (
                Request::get("/api/orders/1".into()).header("X-User-Id", "user-1"),
                Sent::Other,
            ),
            Kind::Mix => {
                let roll = rng.below(100);
                if roll < 50 && !known.orders.is_empty() {
                    (get(&mut rng, known), Sent::Other)
                } else if roll < 80 {
                    (list(&mut rng, known, false), Sent::Other)
                } else if roll >= 95 && !own.is_empty() {
                    let (id, u) = own.swap_remove(rng.below(own.len() as u64) as usize);
                    let req = if roll < 98 {
                        Request::get(format!("/api/orders/{id}/cancel"))
                            .header("X-User-Id", user_name(u))
                            .json("PATCH", "{}".into())
                    } else {
                        Request::get(format!("/api/orders/{id}/status"))
                            .header("X-User-Id", user_name(u))
                            .header("X-User-Role", "admin")
                            .json("PATCH", r#"{"status":"confirmed"}"#.into())
                    };
                    (req, Sent::Other)
                } else {
                    let (r, u) = create(&mut rng, known, 2);
                    (r, Sent::Create(u))
                }
            }
        };
        let result = conn.send(&req);
        let took = began.elapsed();
        let measured = began >= measure_from;
        match result {
            Ok(resp) => {
                if let (Sent::Create(u), Some(loc)) = (&sent, &resp.location) {
                    if let Some(id) = loc.rsplit('/').next().and_then(|s| s.parse().ok()) {
                        out.created.push((id, *u));
                        own.push((id, *u));
                    }
                }
                if !measured {
                    // Not timed, but counted: the warm-up's requests are as valid.
                    if !(200..300).contains(&resp.status) {
                        *out.errors
                            .entry(format!("warm-up {}", resp.status))
                            .or_default() += 1;
                    }
                    continue;
                }
                if (200..300).contains(&resp.status) {
                    out.ok += 1;
                    out.latencies
                        .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                    out.body_bytes += resp.body.len() as u64;
                    out.bodies += 1;
                } else {
                    *out.errors.entry(resp.status.to_string()).or_default() += 1;
                }
            }
            Err(_) => {
                let key = if measured { "io" } else { "warm-up io" };
                *out.errors.entry(key.into()).or_default() += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    out
}
