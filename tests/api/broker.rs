//! Helpers for the relay tests: is the broker there, a queue per test (deleted at the end),
//! a consumer that records every message with its properties, and a TCP proxy the test can
//! cut and restore to simulate a broker outage.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use amiquip::{
    Connection, ConsumerMessage, ConsumerOptions, FieldTable, QueueDeclareOptions,
    QueueDeleteOptions,
};
use serde_json::Value;

use crate::support::PortProxy;

pub const BROKER_HOST: &str = "127.0.0.1";
pub const BROKER_PORT: u16 = 5672;
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672";

/// True when RabbitMQ accepts a TCP connection on 127.0.0.1:5672 within 2 s. Otherwise
/// panics under CI (`CI` set), or says loudly that the test did not run and returns false.
pub fn require_broker() -> bool {
    let addr: SocketAddr = format!("{BROKER_HOST}:{BROKER_PORT}").parse().unwrap();
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "RabbitMQ is required in CI (127.0.0.1:5672 did not accept a connection: {e})"
                );
            }
            crate::support::loud_skip(&format!(
                "RabbitMQ not reachable on 127.0.0.1:5672, broker tests did not run ({e})"
            ));
            false
        }
    }
}

fn connect() -> Connection {
    Connection::insecure_open(AMQP_URL)
        .unwrap_or_else(|e| panic!("connect to RabbitMQ at {AMQP_URL}: {e}"))
}

/// The options the service declares its queue with; a different declaration would clash.
fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

// ---------------------------------------------------------------------------------------
// A queue per test
// ---------------------------------------------------------------------------------------

/// A durable queue with a name no other test uses; deleted when dropped.
pub struct TestQueue {
    name: String,
}

impl TestQueue {
    pub fn declare() -> TestQueue {
        TestQueue::declare_with(FieldTable::new())
    }

    /// A durable queue with these arguments (`x-max-length`, `x-overflow`…), as an
    /// operator may set them up before the service first connects.
    pub fn declare_with(arguments: FieldTable) -> TestQueue {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("relay-test-{}-{}-{}", std::process::id(), n, nanos);
        let mut connection = connect();
        {
            let channel = connection.open_channel(None).expect("open a channel");
            let options = QueueDeclareOptions {
                arguments,
                ..durable()
            };
            channel
                .queue_declare(name.as_str(), options)
                .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
        }
        let _ = connection.close();
        TestQueue { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the queue now (and again, harmlessly, when dropped).
    pub fn delete(&self) {
        let mut connection = connect();
        {
            let channel = connection.open_channel(None).expect("open a channel");
            channel
                .queue_delete(self.name.as_str(), QueueDeleteOptions::default())
                .unwrap_or_else(|e| panic!("delete queue {}: {e}", self.name));
        }
        let _ = connection.close();
    }

    /// Drops every message ready in the queue; how many there were.
    pub fn purge(&self) -> u32 {
        let mut connection = connect();
        let purged = {
            let channel = connection.open_channel(None).expect("open a channel");
            channel
                .queue_purge(self.name.as_str())
                .unwrap_or_else(|e| panic!("purge queue {}: {e}", self.name))
        };
        let _ = connection.close();
        purged
    }

    /// Messages ready in the queue (not counting those delivered to a consumer).
    pub fn message_count(&self) -> u32 {
        let mut connection = connect();
        let count = {
            let channel = connection.open_channel(None).expect("open a channel");
            let queue = channel
                .queue_declare_passive(self.name.as_str())
                .unwrap_or_else(|e| panic!("passive declare of {}: {e}", self.name));
            queue.declared_message_count().expect("a message count")
        };
        let _ = connection.close();
        count
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        if let Ok(mut connection) = Connection::insecure_open(AMQP_URL) {
            if let Ok(channel) = connection.open_channel(None) {
                let _ = channel.queue_delete(self.name.as_str(), QueueDeleteOptions::default());
            }
            let _ = connection.close();
        }
    }
}

// ---------------------------------------------------------------------------------------
// A consumer
// ---------------------------------------------------------------------------------------

/// One message as a consumer got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: Option<String>,
    pub type_: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub app_id: Option<String>,
    pub timestamp: Option<u64>,
    pub routing_key: String,
    pub exchange: String,
    /// The raw body.
    pub body: Vec<u8>,
}

impl Received {
    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "message body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn id(&self) -> String {
        self.message_id
            .clone()
            .unwrap_or_else(|| panic!("a message without message_id: {self:?}"))
    }
}

/// Consumes a queue on its own connection (straight to the broker) in a background
/// thread, auto-acking, and records every message in arrival order.
pub struct QueueConsumer {
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
    queue: String,
}

impl QueueConsumer {
    /// Returns once the consumer is registered with the broker.
    pub fn start(queue: &TestQueue) -> QueueConsumer {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let name = queue.name().to_string();
        let thread = {
            let (received, stop, name) = (received.clone(), stop.clone(), name.clone());
            std::thread::spawn(move || consume(&name, &received, &stop, ready_tx))
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("cannot consume {name}: {e}"),
            Err(_) => panic!("the consumer of {name} did not start within 10 s"),
        }
        QueueConsumer {
            received,
            stop,
            thread: Some(thread),
            queue: name,
        }
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.check_alive();
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.check_alive();
        self.received.lock().unwrap().len()
    }

    /// Polls until `condition` holds for what was received so far, or `timeout` passes.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[Received]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive();
            if condition(&self.received.lock().unwrap()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check_alive(&self) {
        if let Some(thread) = &self.thread {
            if thread.is_finished() && !self.stop.load(Ordering::SeqCst) {
                panic!("the consumer of {} stopped on its own", self.queue);
            }
        }
    }
}

impl Drop for QueueConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn consume(
    queue: &str,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
    ready: mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    let mut connection = match Connection::insecure_open(AMQP_URL) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("connect: {e}")));
            return Err(e.to_string());
        }
    };
    let result = (|| {
        let channel = connection
            .open_channel(None)
            .map_err(|e| format!("open channel: {e}"))?;
        let consumer = channel
            .basic_consume(
                queue,
                ConsumerOptions {
                    no_ack: true,
                    ..ConsumerOptions::default()
                },
            )
            .map_err(|e| format!("basic.consume: {e}"));
        let consumer = match consumer {
            Ok(c) => {
                let _ = ready.send(Ok(()));
                c
            }
            Err(e) => {
                let _ = ready.send(Err(e.clone()));
                return Err(e);
            }
        };
        while !stop.load(Ordering::SeqCst) {
            match consumer.receiver().recv_timeout(Duration::from_millis(50)) {
                Ok(ConsumerMessage::Delivery(d)) => {
                    let p = &d.properties;
                    received.lock().unwrap().push(Received {
                        message_id: p.message_id().clone(),
                        type_: p.type_().clone(),
                        content_type: p.content_type().clone(),
                        delivery_mode: *p.delivery_mode(),
                        app_id: p.app_id().clone(),
                        timestamp: *p.timestamp(),
                        routing_key: d.routing_key.clone(),
                        exchange: d.exchange.clone(),
                        body: d.body,
                    });
                }
                Ok(other) => return Err(format!("consumer ended: {other:?}")),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err("consumer channel disconnected".into())
                }
            }
        }
        let _ = consumer.cancel();
        drop(consumer);
        Ok(())
    })();
    let _ = connection.close();
    result
}

// ---------------------------------------------------------------------------------------
// A TCP proxy in front of the broker
// ---------------------------------------------------------------------------------------

/// A proxy in front of the broker (`support/proxy.rs`), which a test can cut, restore or
/// black-hole.
pub type TcpProxy = PortProxy;

pub fn broker_proxy() -> TcpProxy {
    PortProxy::to(BROKER_PORT)
}
