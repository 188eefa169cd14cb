//! The product service as the tests need it: answers set per product id, served by the
//! vendored tiny_http, every lookup counted. (The benchmark has a leaner one of its own,
//! `benches/loadgen/catalog.rs`, that takes less of the shared cores.)

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// The default catalog every stand-in starts with.
pub const LAPTOP: i64 = 1; // 1299.99, stock 50
pub const MOUSE: i64 = 2; // 19.99, stock 1000
pub const CABLE: i64 = 3; // 0.10, stock 1000
pub const ADAPTER: i64 = 4; // 0.20, stock 1000
pub const MONITOR: i64 = 5; // 249.50, stock 3
pub const UNKNOWN_PRODUCT: i64 = 999;

/// How the stand-in answers `GET /api/products/{id}` for one id.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with `{"id","name","price","stock"}`; `price` is JSON number text, e.g. "1299.99".
    Product {
        name: String,
        price: String,
        stock: i64,
    },
    /// 200 with the inner answer's object under this key: "product" or "data".
    Wrapped(&'static str, Box<Behaviour>),
    /// This status with a small JSON error body.
    Status(u16),
    /// Waits, then answers as the inner behaviour.
    Slow(Duration, Box<Behaviour>),
    /// Answers as the inner behaviour, with an `X-Padding` header this many bytes long.
    Padded(usize, Box<Behaviour>),
    /// 404, as for an id the catalog does not hold.
    NotFound,
    /// 302 to this URL (an ingress sending callers elsewhere during a deploy, say).
    Redirect(String),
    /// Exactly this status, Content-Type and body: a proxy's page, say.
    Answer {
        status: u16,
        content_type: &'static str,
        body: String,
    },
}

pub fn product(name: &str, price: &str, stock: i64) -> Behaviour {
    Behaviour::Product {
        name: name.into(),
        price: price.into(),
        stock,
    }
}

type Catalog = Arc<Mutex<HashMap<i64, Behaviour>>>;

/// A lookup: the product id asked for, and the connection it came on.
struct Call {
    id: i64,
    peer: Option<SocketAddr>,
}

/// How the stand-in answers beyond single lookups (tests/api/offline.rs).
#[derive(Default)]
struct Switches {
    /// `GET /api/products?page=N&per_page=M`: `None` answers 404 (no list), else the
    /// catalog's `Product` entries by id, as an array or wrapped under this key ("").
    list: Mutex<Option<&'static str>>,
    list_pages: AtomicU64,
    /// The list's pages hold at most this many entries, whatever `per_page` asks (0: no cap).
    per_page_cap: AtomicUsize,
    /// The list's `page` is ignored: every page is the first.
    page_ignored: AtomicBool,
    /// Every connection is closed without an answer, as by a crashed service.
    down: AtomicBool,
}

/// One thread takes requests from the server and answers them, except a `Slow` one, which
/// gets a thread of its own so it holds up no other lookup, as with a real service under
/// parallel calls.
pub struct ProductStandIn {
    server: Arc<tiny_http::Server>,
    catalog: Catalog,
    switches: Arc<Switches>,
    calls: Arc<Mutex<Vec<Call>>>,
    stopping: Arc<AtomicBool>,
    dispatcher: Option<JoinHandle<()>>,
    answers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    port: u16,
}

impl ProductStandIn {
    /// An empty catalog: every id answers 404.
    pub fn start() -> ProductStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("start the product stand-in");
        let port = listener.local_addr().unwrap().port();
        let server = tiny_http::Server::from_listener(listener, tiny_http::Options::default())
            .unwrap_or_else(|e| panic!("start the product stand-in: {e}"));
        let server = Arc::new(server);
        let catalog: Catalog = Arc::default();
        let switches: Arc<Switches> = Arc::default();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let answers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let dispatcher = {
            let (server, catalog, calls, stopping, answers, switches) = (
                server.clone(),
                catalog.clone(),
                calls.clone(),
                stopping.clone(),
                answers.clone(),
                switches.clone(),
            );
            std::thread::spawn(move || loop {
                let request = match server.recv() {
                    Ok(request) => request,
                    // `unblock()` from drop, or an error the server reports: go on unless
                    // stopping.
                    Err(_) if stopping.load(Ordering::SeqCst) => return,
                    Err(_) => continue,
                };
                if !is_slow(&request, &catalog) {
                    // Answered here: no thread to start for each lookup.
                    answer(request, &catalog, &switches, &calls, &stopping);
                    continue;
                }
                let (catalog, calls, stopping, switches) = (
                    catalog.clone(),
                    calls.clone(),
                    stopping.clone(),
                    switches.clone(),
                );
                let answer = std::thread::spawn(move || {
                    answer(request, &catalog, &switches, &calls, &stopping)
                });
                let mut all = answers.lock().unwrap();
                all.retain(|a| !a.is_finished());
                all.push(answer);
            })
        };
        ProductStandIn {
            server,
            catalog,
            switches,
            calls,
            stopping,
            dispatcher: Some(dispatcher),
            answers,
            port,
        }
    }

    /// Laptop, Mouse, Cable, Adapter and Monitor (see the constants above).
    pub fn with_default_catalog() -> ProductStandIn {
        let products = ProductStandIn::start();
        products.set(LAPTOP, product("Laptop", "1299.99", 50));
        products.set(MOUSE, product("Mouse", "19.99", 1000));
        products.set(CABLE, product("Cable", "0.10", 1000));
        products.set(ADAPTER, product("Adapter", "0.20", 1000));
        products.set(MONITOR, product("Monitor", "249.50", 3));
        products
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, id: i64, behaviour: Behaviour) {
        self.catalog.lock().unwrap().insert(id, behaviour);
    }

    /// Serves `GET /api/products?page=N&per_page=M`: a plain array with `None`, else
    /// wrapped under that key ("products" or "data").
    pub fn serve_list(&self, wrapped: Option<&'static str>) {
        *self.switches.list.lock().unwrap() = Some(wrapped.unwrap_or(""));
    }

    /// List pages hold at most `cap` entries, as some services cap `per_page`.
    pub fn cap_per_page(&self, cap: usize) {
        self.switches.per_page_cap.store(cap, Ordering::SeqCst);
    }

    /// Every list page answered is the first, as from a service without paging.
    pub fn ignore_page(&self) {
        self.switches.page_ignored.store(true, Ordering::SeqCst);
    }

    /// List pages answered so far.
    pub fn list_pages(&self) -> u64 {
        self.switches.list_pages.load(Ordering::SeqCst)
    }

    /// Down: every request's connection is closed without an answer. Up again: as before.
    pub fn set_down(&self, down: bool) {
        self.switches.down.store(down, Ordering::SeqCst);
    }

    /// Requests for product ids so far (any id, including unknown ones).
    pub fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    pub fn calls_for(&self, id: i64) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.id == id)
            .count()
    }

    /// The connections lookups came on so far: one per connection the service opened.
    pub fn connections(&self) -> usize {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| c.peer)
            .collect::<HashSet<_>>()
            .len()
    }
}

impl Drop for ProductStandIn {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = dispatcher.join();
        }
        // A `Slow` answer looks at `stopping` every 10 ms.
        for answer in self.answers.lock().unwrap().drain(..) {
            let _ = answer.join();
        }
        // The server goes with the last reference, here: its listener closes.
    }
}

fn answer(
    request: tiny_http::Request,
    catalog: &Catalog,
    switches: &Switches,
    calls: &Mutex<Vec<Call>>,
    stopping: &AtomicBool,
) {
    if switches.down.load(Ordering::SeqCst) {
        // Nothing written, and the connection closes.
        drop(request.into_writer());
        return;
    }
    if let Some(query) = request.url().strip_prefix("/api/products?") {
        let list = *switches.list.lock().unwrap();
        let (status, body) = match list {
            Some(wrapper) if *request.method() == tiny_http::Method::Get => {
                switches.list_pages.fetch_add(1, Ordering::SeqCst);
                (
                    200,
                    render_list(catalog, query, wrapper, switches, stopping),
                )
            }
            _ => (404, r#"{"error":"Not found"}"#.to_string()),
        };
        let json = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
            .expect("a Content-Type header");
        let _ = request.respond(
            tiny_http::Response::from_string(body)
                .with_status_code(status)
                .with_header(json),
        );
        return;
    }
    let id = product_id(&request);
    let behaviour = match id {
        Some(id) if *request.method() == tiny_http::Method::Get => {
            calls.lock().unwrap().push(Call {
                id,
                peer: request.remote_addr().copied(),
            });
            catalog
                .lock()
                .unwrap()
                .get(&id)
                .cloned()
                .unwrap_or(Behaviour::NotFound)
        }
        _ => Behaviour::NotFound,
    };
    let (status, body) = render(id.unwrap_or(0), &behaviour, stopping);
    let content_type =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type(&behaviour).as_bytes())
            .expect("a Content-Type header");
    let mut response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(content_type);
    let padding = padding(&behaviour);
    if padding > 0 {
        response.add_header(
            tiny_http::Header::from_bytes(&b"X-Padding"[..], "p".repeat(padding).as_bytes())
                .expect("a padding header"),
        );
    }
    if let Behaviour::Redirect(to) = &behaviour {
        response.add_header(
            tiny_http::Header::from_bytes(&b"Location"[..], to.as_bytes())
                .expect("a Location header"),
        );
    }
    // The client may have given up (a test of the service's timeout): nothing to do then.
    let _ = request.respond(response);
}

/// One page of the catalog's `Product` entries, by id; the other behaviours are left out.
fn render_list(
    catalog: &Catalog,
    query: &str,
    wrapper: &str,
    switches: &Switches,
    stopping: &AtomicBool,
) -> String {
    let param = |name: &str, default: usize| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let (mut page, mut per_page) = (param("page", 1).max(1), param("per_page", 100).max(1));
    if switches.page_ignored.load(Ordering::SeqCst) {
        page = 1;
    }
    match switches.per_page_cap.load(Ordering::SeqCst) {
        0 => {}
        cap => per_page = per_page.min(cap),
    }
    let catalog = catalog.lock().unwrap();
    let mut ids: Vec<i64> = catalog
        .iter()
        .filter(|(_, b)| matches!(b, Behaviour::Product { .. }))
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    let entries: Vec<String> = ids
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|id| render(*id, &catalog[id], stopping).1)
        .collect();
    let array = format!("[{}]", entries.join(","));
    match wrapper {
        "" => array,
        key => format!(
            r#"{{{}:{array},"page":{page}}}"#,
            serde_json::to_string(key).unwrap()
        ),
    }
}

/// Whether `request` asks for a product whose answer waits (`Slow`).
fn is_slow(request: &tiny_http::Request, catalog: &Catalog) -> bool {
    fn waits(b: &Behaviour) -> bool {
        match b {
            Behaviour::Slow(..) => true,
            Behaviour::Wrapped(_, inner) | Behaviour::Padded(_, inner) => waits(inner),
            _ => false,
        }
    }
    product_id(request).is_some_and(|id| catalog.lock().unwrap().get(&id).is_some_and(waits))
}

fn product_id(request: &tiny_http::Request) -> Option<i64> {
    request
        .url()
        .strip_prefix("/api/products/")
        .and_then(|rest| rest.split(['?', '/']).next())
        .and_then(|id| id.parse::<i64>().ok())
}

/// The Content-Type the stand-in sends with `behaviour`.
fn content_type(behaviour: &Behaviour) -> &'static str {
    match behaviour {
        Behaviour::Answer { content_type, .. } => content_type,
        Behaviour::Wrapped(_, inner) | Behaviour::Slow(_, inner) | Behaviour::Padded(_, inner) => {
            content_type(inner)
        }
        _ => "application/json",
    }
}

/// The length of the `X-Padding` header the stand-in sends with `behaviour`.
fn padding(behaviour: &Behaviour) -> usize {
    match behaviour {
        Behaviour::Padded(n, _) => *n,
        Behaviour::Wrapped(_, inner) | Behaviour::Slow(_, inner) => padding(inner),
        _ => 0,
    }
}

fn render(id: i64, behaviour: &Behaviour, stopping: &AtomicBool) -> (u16, String) {
    match behaviour {
        Behaviour::Product { name, price, stock } => (
            200,
            format!(
                r#"{{"id":{id},"name":{},"price":{price},"stock":{stock},"description":"stand-in"}}"#,
                serde_json::to_string(name).unwrap()
            ),
        ),
        Behaviour::Wrapped(key, inner) => {
            let (status, body) = render(id, inner, stopping);
            (
                status,
                format!(r#"{{{}:{body}}}"#, serde_json::to_string(key).unwrap()),
            )
        }
        Behaviour::Status(status) => (*status, r#"{"error":"stand-in failure"}"#.to_string()),
        Behaviour::Slow(delay, inner) => {
            let until = Instant::now() + *delay;
            while Instant::now() < until && !stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            render(id, inner, stopping)
        }
        Behaviour::Padded(_, inner) => render(id, inner, stopping),
        Behaviour::NotFound => (404, r#"{"error":"Product not found"}"#.to_string()),
        Behaviour::Answer { status, body, .. } => (*status, body.clone()),
        Behaviour::Redirect(_) => (302, String::new()),
    }
}
