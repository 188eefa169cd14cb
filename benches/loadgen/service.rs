//! The service under test: the release binary beside this benchmark, started on a
//! database of the run's own, and the product-service stand-in it prices orders from.

use crate::client::{Conn, Request};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The release binary: cargo builds it with this benchmark (same profile, same sources).
pub const BINARY: &str = env!("CARGO_BIN_EXE_order-service");

pub struct Service {
    child: Child,
    pub addr: SocketAddr,
    pub ready_after: Duration,
    log: PathBuf,
}

/// The environment of every start: the database, the stand-in, the broker and queue.
pub struct Setup {
    pub database_url: String,
    pub products_url: String,
    pub broker: bool,
    pub queue: String,
    pub http_threads: usize,
    pub log: PathBuf,
    /// RUST_LOG.
    pub log_filter: String,
}

impl Setup {
    fn command(&self, port: u16) -> Command {
        let mut c = Command::new(BINARY);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATABASE_URL", &self.database_url)
            .env("PRODUCT_SERVICE_URL", &self.products_url)
            .env("RABBITMQ_HOST", "127.0.0.1")
            .env("RABBITMQ_PORT", if self.broker { "5672" } else { "1" })
            .env("RABBITMQ_QUEUE", &self.queue)
            .env("STORE_ID", "loadgen")
            .env("HTTP_THREADS", self.http_threads.to_string())
            .env("RUST_LOG", &self.log_filter);
        c
    }

    /// `order-service migrate`: the schema exactly as the service makes it.
    pub fn migrate(&self) -> Result<(), String> {
        let out = self
            .command(0)
            .arg("migrate")
            .output()
            .map_err(|e| format!("cannot run {BINARY}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Starts the service and waits for its first 200 on /ready; an exit before that
    /// is an error carrying what it wrote to stderr.
    pub fn start(&self) -> Result<Service, String> {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(&self.log).map_err(|e| e.to_string())?;
        let spawned = Instant::now();
        let mut child = self
            .command(port)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {BINARY}: {e}"))?;
        let deadline = spawned + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let said = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!("the service exited ({status}): {}", said.trim()));
            }
            if ready(addr) {
                return Ok(Service {
                    child,
                    addr,
                    ready_after: spawned.elapsed(),
                    log: self.log.clone(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the service was not ready within 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn ready(addr: SocketAddr) -> bool {
    let mut conn = Conn::new(addr);
    conn.send(&Request::get("/ready".into()))
        .is_ok_and(|r| r.status == 200)
}

/// A run cut short (a panic, such as a print to a closed stdout) leaves no service behind.
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the peak-RSS mark over (`/proc/<pid>/clear_refs`); false if the kernel refused.
    pub fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// Peak resident set since start or the last reset, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// The outbox's pending count from /ready.
    pub fn pending_events(&self) -> Option<i64> {
        let resp = Conn::new(self.addr)
            .send(&Request::get("/ready".into()))
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
        v["outbox"]["pending"].as_i64()
    }

    /// SIGTERM, then wait for the exit; the log is left for a look on failure.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn broker_reachable() -> bool {
    TcpStream::connect_timeout(&"127.0.0.1:5672".parse().unwrap(), Duration::from_secs(1)).is_ok()
}

/// The type of the filesystem `dir` is on (`ext4`, `tmpfs`…), as `stat -f` names it.
pub fn filesystem(dir: &Path) -> Option<String> {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let name = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// A connection to the local RabbitMQ, as guest, with Nagle off as the relay's (its small
/// frames would else wait for the last one's acknowledgement).
pub fn broker() -> Result<amiquip::Connection, String> {
    let stream = TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().expect("an address"),
        Duration::from_secs(5),
    )
    .and_then(|s| {
        s.set_nodelay(true)?;
        mio::net::TcpStream::from_stream(s)
    })
    .map_err(|e| e.to_string())?;
    let options = amiquip::ConnectionOptions::default().auth(amiquip::Auth::Plain {
        username: "guest".into(),
        password: "guest".into(),
    });
    amiquip::Connection::insecure_open_stream(stream, options, amiquip::ConnectionTuning::default())
        .map_err(|e| e.to_string())
}

/// The queues a run declares, by part: each named for the part and this process, so that
/// what a run cut short leaves behind is known by name (`Run`'s drop deletes them).
pub const QUEUE_PARTS: [&str; 5] = ["fresh", "ceiling", "scale", "baseline", "drain"];

/// The run's queue for `part` (one of `QUEUE_PARTS`).
pub fn queue_name(part: &str) -> String {
    debug_assert!(QUEUE_PARTS.contains(&part), "{part}");
    format!("loadgen-{part}-{}", std::process::id())
}

pub fn delete_queue(queue: &str) {
    if let Ok(mut c) = broker() {
        if let Ok(ch) = c.open_channel(None) {
            let _ = ch.queue_delete(queue, amiquip::QueueDeleteOptions::default());
        }
        let _ = c.close();
    }
}

/// A folder of the run's own under the chosen parent, removed at the end.
pub fn run_dir(parent: &Path) -> PathBuf {
    let dir = parent.join(format!("order-service-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the run's folder");
    dir
}

/// The number of messages a queue holds, as the broker counts them: a passive declare on
/// one connection kept for the purpose. Cheap for the broker, and it costs the service
/// nothing, unlike asking the service for its pending count. Dropping it closes both.
pub struct QueueDepth {
    // Dropped in this order: the channel closes before its connection.
    channel: Option<amiquip::Channel>,
    connection: amiquip::Connection,
    queue: String,
}

impl QueueDepth {
    pub fn open(queue: &str) -> Result<QueueDepth, String> {
        let connection = broker().map_err(|e| format!("connect: {e}"))?;
        Ok(QueueDepth {
            channel: None,
            connection,
            queue: queue.to_string(),
        })
    }

    /// None until the queue exists (the service declares it once connected). A passive
    /// declare of a missing queue closes its channel, so the next call opens another.
    pub fn messages(&mut self) -> Option<u32> {
        if self.channel.is_none() {
            self.channel = self.connection.open_channel(None).ok();
        }
        let declared = self
            .channel
            .as_ref()?
            .queue_declare_passive(self.queue.as_str());
        match declared {
            Ok(q) => q.declared_message_count(),
            Err(_) => {
                self.channel = None;
                None
            }
        }
    }
}

/// Whether the kernel shares the CPU out by session (`sched_autogroup_enabled`): then
/// PostgreSQL's and RabbitMQ's processes, started in sessions of their own, take turns
/// with this run's as groups, and a busy group's processes can wait long for a core.
pub fn sched_autogroup() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .ok()
        .map(|v| v.trim() != "0")
}
