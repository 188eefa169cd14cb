//! Where a scenario's CPU went: the service's, the database server's, the broker's and
//! the benchmark's own (its clients and catalog), over the measured seconds, per request
//! answered; and how busy the machine's cores were. On two shared cores a rate is capped
//! by what every process spends on a request, not by the service's share alone.

use serde_json::{json, Value};
use std::time::Instant;

/// The processes a scenario's CPU is counted for, by kind.
#[derive(Clone, Copy)]
pub struct Watch {
    pub service: u32,
    /// PostgreSQL's processes count as the database (SQLite's is in the service).
    pub postgres: bool,
    /// RabbitMQ's Erlang VM counts as the broker.
    pub broker: bool,
}

/// CPU time taken so far, in seconds: each group's, and the machine's busy and total.
struct Sample {
    at: Instant,
    service: f64,
    database: f64,
    broker: f64,
    client: f64,
    busy: f64,
    total: f64,
}

/// What a group used over the window, in µs of CPU per request.
pub struct Usage {
    pub service: f64,
    pub database: Option<f64>,
    pub broker: Option<f64>,
    pub client: f64,
    /// The cores' busy time over the window, as a percentage of one core.
    pub busy_pct: f64,
    pub cores: f64,
}

impl Usage {
    pub fn text(&self) -> String {
        let mut parts = vec![format!("service {:.0}", self.service)];
        if let Some(d) = self.database {
            parts.push(format!("PostgreSQL {d:.0}"));
        }
        if let Some(b) = self.broker {
            parts.push(format!("RabbitMQ {b:.0}"));
        }
        parts.push(format!("benchmark {:.0}", self.client));
        format!(
            "CPU µs a request: {}; cores busy {:.0}% of {:.0}%",
            parts.join(", "),
            self.busy_pct,
            self.cores * 100.0
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "service": round(self.service),
            "postgres": self.database.map(round),
            "rabbitmq": self.broker.map(round),
            "benchmark": round(self.client),
            "cores_busy_pct": round(self.busy_pct),
        })
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The kernel's clock ticks a second, the unit of `/proc`'s CPU times.
fn ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system and has no other effect.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads), in ticks, and its command name.
fn process(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn sample(watch: Watch, hz: f64) -> Sample {
    let at = Instant::now();
    let own = std::process::id().to_string();
    let service = watch.service.to_string();
    let (mut s, mut d, mut b, mut c) = (0u64, 0u64, 0u64, 0u64);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|ch| ch.is_ascii_digit()) {
                continue;
            }
            let Some((name, t)) = process(&pid) else {
                continue;
            };
            if pid == service {
                s += t;
            } else if pid == own {
                c += t;
            } else if watch.postgres && name == "postgres" {
                d += t;
            } else if watch.broker && name == "beam.smp" {
                b += t;
            }
        }
    }
    // The first line of /proc/stat: user nice system idle iowait irq softirq steal ...
    let (mut busy, mut total) = (0u64, 0u64);
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        if let Some(line) = stat.lines().next() {
            for (i, v) in line.split_whitespace().skip(1).take(8).enumerate() {
                let v: u64 = v.parse().unwrap_or(0);
                total += v;
                if i != 3 && i != 4 {
                    busy += v;
                }
            }
        }
    }
    let secs = |t: u64| t as f64 / hz;
    Sample {
        at,
        service: secs(s),
        database: secs(d),
        broker: secs(b),
        client: secs(c),
        busy: secs(busy),
        total: secs(total),
    }
}

/// Counts CPU from `start` to `stop`, then divides by the requests answered.
pub struct Meter {
    watch: Watch,
    hz: f64,
    first: Option<Sample>,
    last: Option<Sample>,
}

impl Meter {
    pub fn new(watch: Watch) -> Meter {
        Meter {
            watch,
            hz: ticks(),
            first: None,
            last: None,
        }
    }

    pub fn start(&mut self) {
        self.first = Some(sample(self.watch, self.hz));
    }

    pub fn stop(&mut self) {
        self.last = Some(sample(self.watch, self.hz));
    }

    /// `None` without both samples or without a request.
    pub fn usage(&self, requests: u64) -> Option<Usage> {
        let (a, b) = (self.first.as_ref()?, self.last.as_ref()?);
        if requests == 0 || b.at <= a.at {
            return None;
        }
        let per = |x: f64, y: f64| (y - x).max(0.0) * 1e6 / requests as f64;
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let cores = if b.total > a.total {
            (b.total - a.total) / wall
        } else {
            0.0
        };
        let busy_pct = if b.total > a.total {
            (b.busy - a.busy) / (b.total - a.total) * cores * 100.0
        } else {
            0.0
        };
        Some(Usage {
            service: per(a.service, b.service),
            database: self.watch.postgres.then(|| per(a.database, b.database)),
            broker: self.watch.broker.then(|| per(a.broker, b.broker)),
            client: per(a.client, b.client),
            busy_pct,
            cores: cores.round(),
        })
    }
}
