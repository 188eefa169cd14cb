//! The benchmark's product service: a fixed catalog whose answers are made once, served
//! on kept-alive connections, each answered on its own thread.
//!
//! A real product service runs elsewhere; here it shares the two cores with the service
//! under test. The tests' stand-in (tiny_http, one thread answering every lookup, each
//! handed from a connection's thread to it and back) spent about 50 µs of CPU on a
//! lookup; this one reads a request and writes its answer on the same thread.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The catalog's size: products 1 to 10, whose orders the scenarios place.
pub const PRODUCTS: u64 = 10;

/// Product `id`'s name, as the catalog answers it.
pub fn name(id: u64) -> String {
    format!("Product {id}")
}

/// Product `id`'s price in cents, as the catalog answers it.
pub fn price_cents(id: u64) -> u64 {
    id * 1000 + 99
}

/// Products 1 to `PRODUCTS` with endless stock.
pub struct Catalog {
    port: u16,
    /// Requests answered since the start.
    answered: Arc<AtomicU64>,
}

impl Catalog {
    pub fn start() -> Catalog {
        let answers: HashMap<u64, Vec<u8>> = (1..=PRODUCTS)
            .map(|id| {
                let cents = price_cents(id);
                let body = format!(
                    r#"{{"id":{id},"name":"{}","price":{}.{:02},"stock":1000000,"description":"stand-in"}}"#,
                    name(id),
                    cents / 100,
                    cents % 100
                );
                (id, answer("200 OK", &body))
            })
            .collect();
        let answers = Arc::new(answers);
        let answered = Arc::new(AtomicU64::new(0));
        let counter = answered.clone();
        let listener = TcpListener::bind("127.0.0.1:0").expect("start the product catalog");
        let port = listener.local_addr().expect("its port").port();
        let named = || std::thread::Builder::new().name("catalog".into());
        named()
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (answers, counter) = (answers.clone(), counter.clone());
                    let _ = named().spawn(move || serve(stream, &answers, &counter));
                }
            })
            .expect("start the product catalog");
        Catalog { port, answered }
    }

    /// Requests answered since the start: the service's lookups.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers each request head on `stream` until the client closes it. The service's
/// lookups are GETs without a body; anything but a known product gets a JSON 404 (the
/// catalog list too: "no list, lookups only").
fn serve(mut stream: TcpStream, answers: &HashMap<u64, Vec<u8>>, answered: &AtomicU64) {
    let _ = stream.set_nodelay(true);
    let not_found = answer("404 Not Found", r#"{"error":"Product not found"}"#);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let id = std::str::from_utf8(&buf[..end])
                .ok()
                .and_then(|head| head.strip_prefix("GET /api/products/"))
                .and_then(|rest| rest.split([' ', '?', '/']).next())
                .and_then(|id| id.parse::<u64>().ok());
            let reply = id.and_then(|id| answers.get(&id)).unwrap_or(&not_found);
            if stream.write_all(reply).is_err() {
                return;
            }
            answered.fetch_add(1, Ordering::Relaxed);
            buf.drain(..end + 4);
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
}
