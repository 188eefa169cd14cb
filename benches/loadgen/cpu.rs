//! Where a scenario's CPU went: the service's, the database server's, the broker's and
//! the benchmark's own (its clients and catalog), over the measured seconds, per request
//! answered; and how busy the machine's cores were. On two shared cores a rate is capped
//! by what every process spends on a request, not by the service's share alone.

use serde_json::{json, Value};
use std::collections::HashMap;
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Service,
    Database,
    Broker,
    Client,
}

/// The CPU each watched process had taken, in ticks, by pid and start time (a pid the
/// kernel gives again is another process); and the machine's busy and total ticks.
struct Sample {
    at: Instant,
    processes: HashMap<(u32, u64), (Group, u64)>,
    busy: u64,
    steal: u64,
    total: u64,
}

/// What a group used over the window, in µs of CPU per request.
pub struct Usage {
    pub service: f64,
    pub database: Option<f64>,
    pub broker: Option<f64>,
    pub client: f64,
    /// The cores' busy time over the window, as a percentage of one core.
    pub busy_pct: f64,
    /// The time the host gave the cores to others, as a percentage of one core: on a
    /// virtual machine, a stall of every thread at once, seen as a tail in every client.
    pub steal_pct: f64,
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
            "CPU µs a request: {}; cores busy {:.0}% of {:.0}%, taken by the host {:.1}%",
            parts.join(", "),
            self.busy_pct,
            self.cores * 100.0,
            self.steal_pct
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "service": round(self.service),
            "postgres": self.database.map(round),
            "rabbitmq": self.broker.map(round),
            "benchmark": round(self.client),
            "cores_busy_pct": round(self.busy_pct),
            "steal_pct": round(self.steal_pct),
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

/// A process's command name, utime + stime (all its threads, in ticks) and start time.
fn process(pid: u32) -> Option<(String, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_string();
    // The fields after the name, from the third (state): utime and stime are the 14th
    // and 15th, starttime the 22nd.
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((name, utime + stime, start))
}

fn sample(watch: Watch) -> Sample {
    let at = Instant::now();
    let own = std::process::id();
    let mut processes = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((name, ticks, start)) = process(pid) else {
                continue;
            };
            let group = if pid == watch.service {
                Group::Service
            } else if pid == own {
                Group::Client
            } else if watch.postgres && name == "postgres" {
                Group::Database
            } else if watch.broker && name == "beam.smp" {
                Group::Broker
            } else {
                continue;
            };
            processes.insert((pid, start), (group, ticks));
        }
    }
    // The first line of /proc/stat: user nice system idle iowait irq softirq steal. Busy
    // is what this machine's processes ran; steal is time the host gave to others.
    let (mut busy, mut steal, mut total) = (0u64, 0u64, 0u64);
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        if let Some(line) = stat.lines().next() {
            for (i, v) in line.split_whitespace().skip(1).take(8).enumerate() {
                let v: u64 = v.parse().unwrap_or(0);
                total += v;
                match i {
                    3 | 4 => {}
                    7 => steal += v,
                    _ => busy += v,
                }
            }
        }
    }
    Sample {
        at,
        processes,
        busy,
        steal,
        total,
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
        self.first = Some(sample(self.watch));
    }

    pub fn stop(&mut self) {
        self.last = Some(sample(self.watch));
    }

    /// `None` without both samples or without a request. Each process counts what it
    /// took between the samples, all it took if it started after the first; one that
    /// ended before the second is not counted.
    pub fn usage(&self, requests: u64) -> Option<Usage> {
        let (a, b) = (self.first.as_ref()?, self.last.as_ref()?);
        if requests == 0 || b.at <= a.at || b.total <= a.total {
            return None;
        }
        let per = |group: Group| {
            let ticks: u64 = b
                .processes
                .iter()
                .filter(|(_, (g, _))| *g == group)
                .map(|(key, (_, now))| {
                    let before = a.processes.get(key).map_or(0, |(_, t)| *t);
                    now.saturating_sub(before)
                })
                .sum();
            ticks as f64 / self.hz * 1e6 / requests as f64
        };
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let total = (b.total - a.total) as f64 / self.hz;
        let busy = b.busy.saturating_sub(a.busy) as f64 / self.hz;
        let steal = b.steal.saturating_sub(a.steal) as f64 / self.hz;
        Some(Usage {
            service: per(Group::Service),
            database: self.watch.postgres.then(|| per(Group::Database)),
            broker: self.watch.broker.then(|| per(Group::Broker)),
            client: per(Group::Client),
            busy_pct: busy / wall * 100.0,
            steal_pct: steal / wall * 100.0,
            cores: (total / wall).round(),
        })
    }
}
