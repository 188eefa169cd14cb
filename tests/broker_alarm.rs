//! The broker's resource alarms, against the real RabbitMQ: while its memory or disk runs
//! low, it stops reading what connections publish until the alarm ends. A test binary of
//! its own, beside `api`: an alarm is the whole broker's and would hold up every other
//! test's events meanwhile, and cargo runs test binaries one after another.
//!
//! The alarm is raised with `rabbitmqctl` (root, or the broker's own user, on the machine
//! running RabbitMQ). Without the broker or `rabbitmqctl` the test says loudly that it did
//! not run, and fails under CI.

// The API tests' harness, of which this binary uses a part.
#[allow(dead_code, unused_imports)]
#[path = "api/broker.rs"]
mod broker;
#[allow(dead_code, unused_imports)]
#[path = "api/support/mod.rs"]
mod support;

use broker::*;
use std::collections::HashSet;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::*;

/// A service publishing to `queue` on the real broker.
fn app_on_broker(queue: &TestQueue) -> TestApp {
    TestApp::builder()
        .env("RABBITMQ_PORT", &BROKER_PORT.to_string())
        .env("RABBITMQ_QUEUE", queue.name())
        .env("RUST_LOG", "info")
        .spawn()
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether `rabbitmqctl` can talk to the broker; like `require_broker`, a failure under CI
/// and a loud note otherwise.
fn require_rabbitmqctl() -> bool {
    match Command::new("rabbitmqctl").arg("status").output() {
        Ok(out) if out.status.success() => true,
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var_os("CI").is_some() {
                panic!("rabbitmqctl is required in CI: {why}");
            }
            loud_skip(&format!(
                "rabbitmqctl cannot reach the broker, the alarm test did not run ({why})"
            ));
            false
        }
    }
}

/// RabbitMQ's memory alarm, raised by putting its watermark below what it uses. The
/// watermark it had is set back when dropped, a failed test's unwinding included.
struct MemoryAlarm {
    /// As the broker gives it: `0.4`, or `{absolute,1000000}`.
    watermark: String,
}

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        let watermark = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]);
        let alarm = MemoryAlarm { watermark };
        rabbitmqctl(&["set_vm_memory_high_watermark", "absolute", "1MB"]);
        alarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let absolute = self
            .watermark
            .strip_prefix("{absolute,")
            .and_then(|w| w.strip_suffix('}'));
        match absolute {
            Some(bytes) => rabbitmqctl(&["set_vm_memory_high_watermark", "absolute", bytes]),
            None => rabbitmqctl(&["set_vm_memory_high_watermark", &self.watermark]),
        };
    }
}

/// The alarm is the whole broker's: the tests of this binary raise it one after another.
fn one_alarm_at_a_time() -> MutexGuard<'static, ()> {
    static ALARMS: Mutex<()> = Mutex::new(());
    ALARMS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's established TCP connections to the broker's port, from /proc.
fn broker_connections(pid: u32) -> usize {
    let sockets: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let port = format!(":{BROKER_PORT:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // remote address, state (01: established), inode
            fields.len() > 9
                && fields[2].ends_with(&port)
                && fields[3] == "01"
                && sockets.contains(fields[9])
        })
        .count()
}

/// While `alarm` holds, for `watch`: the service keeps one connection to the broker, the
/// consumer gets nothing beyond the `delivered` events it had, and the log says why.
/// Then the alarm ends, and the `held` events arrive on that same connection.
fn held_on_one_connection(
    app: &TestApp,
    consumer: &QueueConsumer,
    alarm: MemoryAlarm,
    watch: Duration,
    delivered: usize,
    held: usize,
) {
    let pid = app.pid().expect("running");
    let started = Instant::now();
    let mut most = 0;
    while started.elapsed() < watch {
        most = most.max(broker_connections(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(most, 1, "one connection to the broker through the alarm");
    assert_eq!(
        consumer.count(),
        delivered,
        "nothing gets through the alarm"
    );
    assert!(
        app.stderr().contains("the broker blocks publishing"),
        "{}",
        app.stderr()
    );

    drop(alarm);
    assert!(
        consumer.wait_for(Duration::from_secs(15), |r| r.len() >= delivered + held),
        "the events held up arrive once the alarm ends; got {}",
        consumer.count()
    );
    assert_eq!(broker_connections(pid), 1);
}

#[test]
fn while_the_broker_blocks_publishing_the_relay_waits_on_its_connection_then_delivers() {
    if !require_broker() || !require_rabbitmqctl() {
        return;
    }
    let _alarms = one_alarm_at_a_time();
    let queue = TestQueue::declare();
    let consumer = QueueConsumer::start(&queue);
    let mut app = app_on_broker(&queue);
    app.place_order(&ALICE, &[(MOUSE, 1)]);
    assert!(
        consumer.wait_for(Duration::from_secs(10), |r| r.len() == 1),
        "the first event arrives"
    );

    let alarm = MemoryAlarm::raise();
    for _ in 0..3 {
        app.place_order(&ALICE, &[(MOUSE, 1)]);
    }
    // Past the 10 s a confirm is waited for: a relay that gave up on the blocked
    // connection would have opened another by now, and left the first behind (its close
    // waits for the alarm to end too).
    held_on_one_connection(&app, &consumer, alarm, Duration::from_secs(14), 1, 3);
    assert!(app.stderr().contains("the broker publishes again"));
    assert_eq!(app.ready().json()["outbox"]["pending"], 0);

    // A stop during an alarm does not wait for it to end; the event stays in the outbox.
    let alarm = MemoryAlarm::raise();
    app.place_order(&ALICE, &[(MOUSE, 1)]);
    std::thread::sleep(Duration::from_secs(2));
    app.signal("TERM");
    let stopping = Instant::now();
    let status = app.wait_exit(Duration::from_secs(15));
    let took = stopping.elapsed();
    drop(alarm);
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "{}", app.stderr());
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    let pending: i64 = app.query_one(
        "SELECT COUNT(*) FROM outbox WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
        &[],
    );
    assert_eq!(pending, 1, "the held up event, still to publish");
}

#[test]
fn a_relay_that_connects_during_an_alarm_waits_on_that_one_connection() {
    if !require_broker() || !require_rabbitmqctl() {
        return;
    }
    let _alarms = one_alarm_at_a_time();
    let queue = TestQueue::declare();
    let consumer = QueueConsumer::start(&queue);
    let alarm = MemoryAlarm::raise();
    let app = app_on_broker(&queue);
    app.place_order(&ALICE, &[(MOUSE, 1)]);
    app.place_order(&ALICE, &[(MOUSE, 2)]);

    // The broker tells a connection it blocks only once it publishes; a relay that missed
    // that would give up on each confirm it waits for and open another connection.
    held_on_one_connection(&app, &consumer, alarm, Duration::from_secs(25), 0, 2);
}
