//! The benchmark: starts the release binary on a fresh database with a product-service
//! stand-in, drives it over loopback from client threads, and prints throughput and
//! latency percentiles for creates, reads and lists. With RabbitMQ on 127.0.0.1:5672 it
//! also times the relay draining the outbox of every order created.
//!
//! cargo bench --bench loadgen                      (defaults: 16 clients, 5,000 creates)
//! LOADGEN_CLIENTS=32 LOADGEN_CREATES=20000 cargo bench --bench loadgen

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let clients: usize = setting("LOADGEN_CLIENTS", 16);
    let creates: usize = setting("LOADGEN_CREATES", 5_000);
    let reads: usize = setting("LOADGEN_READS", 10_000);
    let broker = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_ok();

    let products = ProductStandIn::start();
    let dir = std::env::temp_dir().join(format!("order-service-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let queue = format!("loadgen-{}", std::process::id());
    let mut service = start_service(&dir, port, &products.url, &queue, broker);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base);
    println!(
        "order-service loadgen: {clients} clients, {creates} creates, {reads} reads, broker {}",
        if broker {
            "on"
        } else {
            "off (events wait in the outbox)"
        }
    );

    let started = Instant::now();
    let create_lat = run(clients, creates, |agent, i| {
        let body = format!(
            r#"{{"items":[{{"product_id":{},"quantity":1}},{{"product_id":{},"quantity":2}}]}}"#,
            1 + i % 5,
            6 + i % 5
        );
        let r = agent
            .post(&format!("{base}/api/orders"))
            .header("Content-Type", "application/json")
            .header("X-User-Id", &format!("user-{}", i % 100))
            .header("X-User-Email", &format!("user-{}@example.com", i % 100))
            .send(body.as_bytes())
            .expect("create");
        assert_eq!(r.status().as_u16(), 201, "create answered {}", r.status());
    });
    report("POST /api/orders", &create_lat, started.elapsed());

    let started = Instant::now();
    let read_lat = run(clients, reads, |agent, i| {
        let id = 1 + i % creates;
        let user = format!("user-{}", (id - 1) % 100);
        let r = agent
            .get(&format!("{base}/api/orders/{id}"))
            .header("X-User-Id", &user)
            .call()
            .expect("read");
        assert!(r.status().as_u16() == 200 || r.status().as_u16() == 404);
    });
    report("GET /api/orders/:id", &read_lat, started.elapsed());

    let started = Instant::now();
    let list_lat = run(clients, reads, |agent, i| {
        let r = agent
            .get(&format!("{base}/api/orders?page=1&per_page=20"))
            .header("X-User-Id", &format!("user-{}", i % 100))
            .call()
            .expect("list");
        assert_eq!(r.status().as_u16(), 200);
    });
    report(
        "GET /api/orders (20 per page)",
        &list_lat,
        started.elapsed(),
    );

    if broker {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(300);
        loop {
            let body = agent()
                .get(&format!("{base}/ready"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap();
            let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
            if ready["outbox"]["pending"] == 0 {
                println!(
                    "relay: outbox empty {:.2} s after the last create",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            if Instant::now() > deadline {
                println!(
                    "relay: outbox still holds {} events after 300 s",
                    ready["outbox"]["pending"]
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        delete_queue(&queue);
    }
    stop(&mut service);
    let _ = std::fs::remove_dir_all(&dir);
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// Runs `total` calls of `call` spread over `clients` threads; returns each call's latency.
fn run(clients: usize, total: usize, call: impl Fn(&ureq::Agent, usize) + Sync) -> Vec<Duration> {
    let next = AtomicUsize::new(0);
    let mut all = Vec::with_capacity(total);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let agent = agent();
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return lat;
                        }
                        let t = Instant::now();
                        call(&agent, i);
                        lat.push(t.elapsed());
                    }
                })
            })
            .collect();
        for w in workers {
            all.extend(w.join().unwrap());
        }
    });
    all
}

fn report(what: &str, lat: &[Duration], took: Duration) {
    let mut sorted = lat.to_vec();
    sorted.sort();
    let pct = |p: f64| {
        sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0
    };
    println!(
        "{what:<32} {:>7} requests in {:>6.2} s = {:>8.0}/s   p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
        sorted.len(),
        took.as_secs_f64(),
        sorted.len() as f64 / took.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}

fn start_service(
    dir: &std::path::Path,
    port: u16,
    products: &str,
    queue: &str,
    broker: bool,
) -> Child {
    // The release binary beside this benchmark (cargo bench builds both with optimizations).
    Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env_clear()
        .env("PORT", port.to_string())
        .env("DATABASE_URL", dir.join("orders.db"))
        .env("PRODUCT_SERVICE_URL", products)
        .env("RABBITMQ_HOST", "127.0.0.1")
        .env("RABBITMQ_PORT", if broker { "5672" } else { "1" })
        .env("RABBITMQ_QUEUE", queue)
        .env("STORE_ID", "loadgen")
        .env("HTTP_THREADS", "16")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start order-service")
}

fn stop(service: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(service.id().to_string())
        .status();
    let _ = service.wait();
}

fn wait_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if agent()
            .get(&format!("{base}/health"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("order-service did not start");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn delete_queue(queue: &str) {
    if let Ok(mut c) = amiquip::Connection::insecure_open("amqp://guest:guest@127.0.0.1:5672") {
        if let Ok(ch) = c.open_channel(None) {
            let _ = ch.queue_delete(queue, amiquip::QueueDeleteOptions::default());
        }
        let _ = c.close();
    }
}

/// Products 1..=10 with endless stock, served over HTTP with keep-alive.
struct ProductStandIn {
    url: String,
    _server: Arc<tiny_http::Server>,
}

impl ProductStandIn {
    fn start() -> ProductStandIn {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        for _ in 0..4 {
            let server = server.clone();
            std::thread::spawn(move || {
                for req in server.incoming_requests() {
                    let id: i64 = req
                        .url()
                        .rsplit('/')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let response = if (1..=10).contains(&id) {
                        tiny_http::Response::from_string(format!(
                            r#"{{"id":{id},"name":"Product {id}","price":{}.99,"stock":1000000}}"#,
                            id * 10
                        ))
                        .with_status_code(200)
                    } else {
                        tiny_http::Response::from_string("{}").with_status_code(404)
                    };
                    let _ = req.respond(response);
                }
            });
        }
        ProductStandIn {
            url,
            _server: server,
        }
    }
}
