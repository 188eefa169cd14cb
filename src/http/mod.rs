//! The HTTP side: a pool of workers taking requests from tiny_http. Only this module
//! knows about status codes and headers.

mod error;
mod request;
mod routes;

pub use error::ApiError;
pub use routes::{Route, ROUTES};

use crate::config::Secret;
use crate::domain::{OrderId, UserId};
use crate::metrics::Metrics;
use crate::orders::Orders;
use crate::products::Catalog;
use crate::store::{JoinGet, OpenReads, Reads, Then, WriterHandle};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The OpenAPI description of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// What every worker shares.
pub struct Shared {
    pub orders: Orders,
    /// For `/ready`: proves the database takes a write.
    pub writer: WriterHandle,
    pub catalog: Catalog,
    pub metrics: Arc<Metrics>,
    pub open_reads: OpenReads,
    /// Where a connection's thread may leave a get by id (PostgreSQL's gets combined).
    pub join_get: Option<JoinGet>,
    pub admin_token: Option<Secret>,
    pub gateway_token: Option<Secret>,
}

/// A response before it is written.
pub struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    headers: Vec<(&'static str, String)>,
}

impl Response {
    /// Serialized directly (not through `serde_json::Value`), so money keeps its two decimals.
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, body: &T) -> Response {
        let text = serde_json::to_string(body).expect("reply bodies always serialize");
        Response::raw_json(status, text)
    }

    pub fn raw_json(status: u16, body: String) -> Response {
        Response::text(status, "application/json", body)
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }

    fn from_error(e: &ApiError) -> Response {
        let mut reply = Response::json(e.status(), &e.body());
        reply.headers.extend(e.headers());
        reply
    }

    fn into_wire(self) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let mut response = tiny_http::Response::from_data(self.body.into_bytes())
            .with_status_code(self.status)
            .with_header(response_header("Content-Type", self.content_type));
        for (name, value) in &self.headers {
            response = response.with_header(response_header(name, value));
        }
        response
    }
}

/// The answer to a request the HTTP edge refuses before any worker sees it.
fn edge_refusal(status: u16) -> tiny_http::ResponseBox {
    Response::from_error(&ApiError::Edge(status))
        .into_wire()
        .boxed()
}

/// Printable ASCII as is; anything else (a control character, a non-ASCII one) escaped,
/// so a client cannot forge or break a log line.
fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().all(|b| b.is_ascii_graphic()) {
        text.into()
    } else {
        text.chars()
            .flat_map(char::escape_default)
            .collect::<String>()
            .into()
    }
}

/// The worker pool over one listening socket.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// The creates served at once, on their connections' threads.
    creates: Arc<CreateGate>,
}

/// The stack of a connection's thread, which serves creates: Rust's default for a
/// thread, as the write threads that served them had. Virtual memory: only the pages a
/// create touches take any.
const CREATE_STACK: usize = 2 * 1024 * 1024;

/// How many creates are served at once (`HTTP_WRITE_THREADS`). A create is served on its
/// connection's thread as soon as it is read, held there through its product lookups and
/// its commit: that thread waits for the answer anyway, one request at a time. Handing
/// it to a pool of threads, and its answer back, woke two threads more a create; served
/// where it was read, the service spent 12-14% less CPU a create on either backend.
/// Past the limit a create waits for a place, as it waited in the pool's queue. Once the
/// gate is closed (at shutdown) a create is given back, to be refused.
struct CreateGate {
    limit: usize,
    state: Mutex<GateState>,
    /// A place came free (one create is woken for it), or the gate closed (all are).
    room: Condvar,
    /// The last create inside left a closed gate.
    empty: Condvar,
}

#[derive(Default)]
struct GateState {
    serving: usize,
    closed: bool,
}

/// A create's place in the gate, given back when dropped.
struct Place<'a>(&'a CreateGate);

impl CreateGate {
    fn new(limit: usize) -> CreateGate {
        CreateGate {
            limit: limit.max(1),
            state: Mutex::default(),
            room: Condvar::new(),
            empty: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more create, once one is free; none once the gate is closed.
    fn enter(&self) -> Option<Place<'_>> {
        let mut state = self.state();
        while state.serving >= self.limit && !state.closed {
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.closed {
            return None;
        }
        state.serving += 1;
        Some(Place(self))
    }

    /// Lets no create in from now on, and waits for those being served.
    fn close_and_wait(&self) {
        let mut state = self.state();
        state.closed = true;
        self.room.notify_all();
        while state.serving > 0 {
            state = self.empty.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.serving -= 1;
        // One place: one waiting create woken for it, not all of them. A closed gate has
        // none waiting, only the shutdown, for the last.
        if !state.closed {
            self.0.room.notify_one();
        } else if state.serving == 0 {
            self.0.empty.notify_all();
        }
    }
}

/// How long an idle worker sleeps before it looks at `stopping` again: a stop wakes it
/// at once (`release_waiters`), so this is only a backstop. A quarter of a second woke
/// an idle service's 16 workers 64 times a second.
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// How long workers keep answering queued requests once asked to stop.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// A drain ends once no request has come for this long, and no connection is in the
/// middle of one.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// How often a drain looks again whether the connections in the middle of a request are done.
const DRAIN_STEP: Duration = Duration::from_millis(5);
/// At most this long, once the workers are done, for the connections' threads to write the
/// answers they were handed (a request that comes meanwhile is refused with 503): the
/// process exits right after.
const ANSWERS_WRITTEN: Duration = Duration::from_secs(1);

impl HttpServer {
    /// Starts `threads` workers on an already bound listener (port 0 allowed), serving
    /// at most `max_connections` clients at once, and at most `creates` creates.
    pub fn start(
        listener: std::net::TcpListener,
        shared: Arc<Shared>,
        threads: usize,
        creates: usize,
        max_connections: usize,
    ) -> std::io::Result<HttpServer> {
        // Each worker's session, opened here: one that cannot open fails the start, where a
        // worker that gave up alone would leave the service up with fewer workers, or none.
        let readers = (0..threads)
            .map(|_| (shared.open_reads)())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                std::io::Error::other(format!("an HTTP worker cannot open the database: {e}"))
            })?;
        let creates = Arc::new(CreateGate::new(creates));
        let options = tiny_http::Options {
            limits: tiny_http::Limits {
                max_body: request::MAX_BODY,
                ..tiny_http::Limits::default()
            },
            max_connections,
            refusal: {
                let metrics = shared.metrics.clone();
                Arc::new(move |status| {
                    metrics.edge_refused(status);
                    edge_refusal(status)
                })
            },
            // A create runs on the connection's thread (`direct`), JSON parsing, pricing
            // and all: the stack of any other thread of the process, where 128 KiB
            // overflowed on a body of 20,000 nested arrays (before serde_json's depth
            // limit refused it) in a build without optimizations.
            connection_stack: CREATE_STACK,
            // Weak: the connections' threads may outlive the server, and what `Shared`
            // holds (the writer's handle) may not.
            direct: Some({
                let (shared, creates) = (Arc::downgrade(&shared), creates.clone());
                Arc::new(move |req| match shared.upgrade() {
                    Some(shared) => direct(&shared, &creates, req),
                    None => Some(req),
                }) as tiny_http::Direct
            }),
        };
        let server = Arc::new(
            tiny_http::Server::from_listener(listener, options)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        );
        let stopping = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(threads);
        for (n, reader) in readers.into_iter().enumerate() {
            let (server, shared, stopping) = (server.clone(), shared.clone(), stopping.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("http-{n}"))
                    .spawn(move || work(&server, &shared, &stopping, reader.as_ref()))?,
            );
        }
        Ok(HttpServer {
            server,
            stopping,
            workers,
            creates,
        })
    }

    /// Closes the listening socket: a new connection is refused from now on, and a
    /// kept-alive one gets at most one more request, answered with `Connection: close`.
    /// The workers go on answering.
    pub fn stop_accepting(&self) {
        self.server.stop_accepting();
    }

    /// Answers what is still queued or being read (until it has been quiet for a moment,
    /// within `DRAIN_LIMIT`), joins the workers, refuses what came too late (503), and
    /// waits for the connections' threads to write the answers (`ANSWERS_WRITTEN`).
    pub fn shutdown(self) {
        self.server.stop_accepting();
        self.stopping.store(true, Ordering::SeqCst);
        // Waiting workers see `stopping` now, not at the end of their wait.
        self.server.release_waiters();
        for w in self.workers {
            let _ = w.join();
        }
        // The creates being served are answered; one read after this is given to the
        // queue, to be refused below.
        self.creates.close_and_wait();
        let until = Instant::now() + ANSWERS_WRITTEN;
        loop {
            while let Ok(Some(late)) = self.server.try_recv() {
                let _ = late.respond(Response::from_error(&ApiError::Stopping).into_wire());
            }
            if self.server.busy_connections() == 0 || Instant::now() >= until {
                break;
            }
            std::thread::sleep(DRAIN_STEP);
        }
    }
}

fn work(server: &tiny_http::Server, shared: &Shared, stopping: &AtomicBool, reader: &dyn Reads) {
    while !stopping.load(Ordering::SeqCst) {
        match server.recv_until_released(IDLE_WAIT) {
            Ok(Some(req)) => dispatch(shared, reader, req),
            Ok(None) => {}
            Err(e) => log::debug!("http: {e}"),
        }
    }
    // Requests already read or being read from open connections are answered, not
    // dropped.
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut quiet_since = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let quiet_left = DRAIN_QUIET.saturating_sub(quiet_since.elapsed());
        if left.is_zero() || (quiet_left.is_zero() && server.busy_connections() == 0) {
            break;
        }
        let wait = if quiet_left.is_zero() {
            DRAIN_STEP
        } else {
            quiet_left
        };
        match server.recv_timeout(wait.min(left)) {
            Ok(Some(req)) => {
                dispatch(shared, reader, req);
                quiet_since = Instant::now();
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
}

/// Serves `req` on this worker. Creates are served on their connections' threads
/// (`direct`); one reaches a worker only when the connection's thread could not take it,
/// and is then served here. A cancel or a status change is served here too: it waits on
/// no product, so it never queues behind creates whose product service is slow to
/// answer. A get by id is answered by whichever thread reads its order (`get`).
fn dispatch(shared: &Shared, reader: &dyn Reads, req: tiny_http::Request) {
    let route = Route::parse(request::path_of(req.url()));
    if let Some(id) = route.and_then(|r| r.get_by_id(req.method().as_str())) {
        return get(shared, reader, req, id);
    }
    serve(shared, req, route, |req, route, query| {
        routes::handle(shared, reader, req, route, query)
    });
}

/// Serves one request with `handler`: its request id, the checks every request gets,
/// the answer, its metrics and log line.
fn serve(
    shared: &Shared,
    req: tiny_http::Request,
    route: Option<Route>,
    handler: impl FnOnce(&mut tiny_http::Request, Route, &[(&str, &str)]) -> Result<Response, ApiError>,
) {
    let mut exchange = Exchange::begin(shared, req, route);
    let url = exchange.req().url().to_string();
    let (_, pairs) = request::split_url(&url);
    let query: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        exchange.check(shared)?;
        match route {
            None => Err(ApiError::NotFound),
            Some(route) => handler(exchange.req(), route, &query),
        }
    }));
    exchange.finish(outcome);
}

/// A get by id, answered by whichever thread reads the order: on PostgreSQL that may be
/// another worker's query, reading it with others (store/postgres/gets.rs), so this
/// worker waits on nothing and takes its next request.
fn get(shared: &Shared, reader: &dyn Reads, req: tiny_http::Request, id: OrderId) {
    let Some(asked) = ask(shared, req, id) else {
        return;
    };
    // A read that panics here drops the `Then`s it held, and with them their exchanges,
    // which answer 500; the worker lives on. (PostgreSQL's query by id catches its own
    // panic and fails the gets it took: gets.rs.)
    let _ = catch_unwind(AssertUnwindSafe(|| reader.order_then(id, asked.then())));
}

/// On a connection's thread, as soon as it is read, so that no worker is woken only to
/// pass a request on: a create is served right here once the gate lets it in (a create
/// needs no reading session), and on PostgreSQL a get by id joins the query by id
/// running now, if one does. Anything else is given back for the workers, and so is a
/// create once the gate is closed.
fn direct(
    shared: &Shared,
    creates: &CreateGate,
    req: tiny_http::Request,
) -> Option<tiny_http::Request> {
    let Some(route) = Route::parse(request::path_of(req.url())) else {
        return Some(req);
    };
    if route.is_create(req.method().as_str()) {
        let Some(_place) = creates.enter() else {
            return Some(req);
        };
        serve(shared, req, Some(Route::Orders), |req, _, _| {
            routes::create(shared, req)
        });
        return None;
    }
    let (Some(join_get), Some(id)) = (&shared.join_get, route.get_by_id(req.method().as_str()))
    else {
        return Some(req);
    };
    let mut asked = Some(ask(shared, req, id)?);
    let joined = catch_unwind(AssertUnwindSafe(|| {
        join_get(id, &mut || asked.take().expect("a get joins once").then())
    }));
    match (joined, asked) {
        (Ok(false), Some(asked)) => Some(asked.exchange.into_request()),
        _ => None,
    }
}

/// A get by id past the checks every request gets, and who asks.
struct Asked {
    exchange: Exchange,
    user: UserId,
    admin: bool,
}

/// A get's checks and its asker; none if it was answered already (refused).
fn ask(shared: &Shared, req: tiny_http::Request, id: OrderId) -> Option<Asked> {
    let mut exchange = Exchange::begin(shared, req, Some(Route::Order(Some(id))));
    let asked = catch_unwind(AssertUnwindSafe(|| {
        exchange.check(shared)?;
        routes::reader_of(shared, exchange.req())
    }));
    match asked {
        Ok(Ok((user, admin))) => Some(Asked {
            exchange,
            user,
            admin,
        }),
        Ok(Err(e)) => {
            exchange.finish(Ok(Err(e)));
            None
        }
        Err(panic) => {
            exchange.finish(Err(panic));
            None
        }
    }
}

impl Asked {
    /// What to do with the order once read: answer it.
    fn then(self) -> Then {
        let Asked {
            exchange,
            user,
            admin,
        } = self;
        Box::new(move |read| {
            let outcome = catch_unwind(AssertUnwindSafe(|| routes::order(read, &user, admin)));
            exchange.finish(outcome);
        })
    }
}

/// A request from its start to its answer: what the answer, metrics and log line need.
/// One dropped unanswered (a read that panicked took its `Then` with it) is answered 500.
struct Exchange {
    /// Taken when answered.
    req: Option<tiny_http::Request>,
    metrics: Arc<Metrics>,
    started: Instant,
    request_id: String,
    /// Escaped, as the log shows them.
    method: String,
    path: String,
    label: &'static str,
}

impl Exchange {
    fn begin(shared: &Shared, req: tiny_http::Request, route: Option<Route>) -> Exchange {
        // From the read, not from now: the wait for a worker is the client's too, and a
        // get by id its connection's thread could not leave to a query begins twice.
        let started = req.received_at();
        let request_id = request::header(&req, "X-Request-Id")
            .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        // What the client sent is escaped before it reaches a log line.
        let method = escaped(req.method().as_str()).into_owned();
        let path = escaped(request::path_of(req.url())).into_owned();
        Exchange {
            req: Some(req),
            metrics: shared.metrics.clone(),
            started,
            request_id,
            method,
            path,
            label: route.as_ref().map_or("unmatched", Route::pattern),
        }
    }

    /// The request back, unanswered, for another thread to begin anew.
    fn into_request(mut self) -> tiny_http::Request {
        self.req.take().expect("only an answer takes the request")
    }

    fn req(&mut self) -> &mut tiny_http::Request {
        self.req.as_mut().expect("only an answer takes the request")
    }

    /// The checks every request gets before its route's.
    fn check(&mut self, shared: &Shared) -> Result<(), ApiError> {
        let req = self.req();
        request::refuse_ambiguous_headers(req)?;
        // Every /api/ request needs the gateway's token, and then a valid X-User-Id (401
        // without, as the contract has it), an unknown path or a method a path does not
        // take too: without them nothing is said of the routes.
        let path = request::path_of(req.url());
        if path == "/api" || path.starts_with("/api/") {
            routes::check_gateway(shared, req)?;
            routes::user_id(req)?;
        }
        Ok(())
    }

    /// Writes the answer, and counts and logs it.
    fn finish(mut self, outcome: std::thread::Result<Result<Response, ApiError>>) {
        let reply = match outcome {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                if let Some(cause) = e.cause() {
                    self.log_error(&format!("{e}: {cause}"));
                }
                Response::from_error(&e)
            }
            Err(_) => self.internal("handler panicked"),
        };
        self.answer(reply);
    }

    fn internal(&self, why: &str) -> Response {
        self.log_error(why);
        Response::from_error(&ApiError::Internal(why.into()))
    }

    fn log_error(&self, what: &str) {
        let Exchange {
            method,
            path,
            request_id,
            ..
        } = self;
        log::error!("{method} {path} [{request_id}]: {what}");
    }

    fn answer(&mut self, reply: Response) {
        let Some(req) = self.req.take() else {
            return;
        };
        let Exchange {
            method,
            path,
            request_id,
            ..
        } = &*self;
        let status = reply.status;
        let response = reply
            .into_wire()
            .with_header(response_header("X-Request-Id", request_id));
        if let Err(e) = req.respond(response) {
            log::debug!("{method} {path} [{request_id}]: client went away: {e}");
        }
        let took = self.started.elapsed();
        self.metrics.observe_request(self.label, status, took);
        log::info!(
            "{method} {path} {status} {:.1}ms request_id={request_id}",
            took.as_secs_f64() * 1000.0
        );
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.req.is_some() {
            let reply = self.internal("dropped unanswered");
            self.answer(reply);
        }
    }
}

fn response_header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|_| {
        tiny_http::Header::from_bytes("X-Invalid-Header", "").expect("static header")
    })
}

fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // A system call each time otherwise, on every request.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:x}-{:x}-{n:x}",
        PID.get_or_init(std::process::id),
        crate::clock::now_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::CreateGate;
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    const A_WHILE: Duration = Duration::from_millis(100);

    #[test]
    fn the_gate_lets_in_as_many_creates_as_its_limit_and_the_next_when_one_leaves() {
        let gate = CreateGate::new(2);
        let (first, second) = (gate.enter(), gate.enter());
        assert!(first.is_some() && second.is_some());
        let gate = &gate;
        std::thread::scope(|s| {
            let (entered, came_in) = mpsc::channel();
            s.spawn(move || {
                let place = gate.enter();
                entered.send(place.is_some()).unwrap();
            });
            assert!(came_in.recv_timeout(A_WHILE).is_err(), "a third got in");
            drop(first);
            assert_eq!(came_in.recv_timeout(Duration::from_secs(5)), Ok(true));
        });
    }

    #[test]
    fn creates_waiting_for_a_place_each_get_one_as_the_one_before_leaves() {
        // Threads of their own, not scoped: one left waiting fails the test, not hangs it.
        let gate = Arc::new(CreateGate::new(1));
        let inside = gate.enter();
        let (entered, came_in) = mpsc::channel();
        for n in 0..3 {
            let (gate, entered) = (gate.clone(), entered.clone());
            std::thread::spawn(move || {
                let place = gate.enter();
                entered.send(n).unwrap();
                drop(place);
            });
        }
        assert!(
            came_in.recv_timeout(A_WHILE).is_err(),
            "one got in past the limit"
        );
        // Each leaving wakes one of those waiting, which leaves in turn.
        drop(inside);
        let mut all: Vec<i32> = (0..3)
            .map(|_| {
                came_in
                    .recv_timeout(Duration::from_secs(5))
                    .expect("every create got in")
            })
            .collect();
        all.sort();
        assert_eq!(all, vec![0, 1, 2]);
    }

    #[test]
    fn a_closed_gate_waits_for_the_creates_inside_and_turns_away_the_rest() {
        let gate = CreateGate::new(1);
        let inside = gate.enter();
        let gate = &gate;
        std::thread::scope(|s| {
            let (turned, turned_away) = mpsc::channel();
            s.spawn(move || turned.send(gate.enter().is_none()).unwrap());
            let (closed, was_closed) = mpsc::channel();
            s.spawn(move || {
                gate.close_and_wait();
                closed.send(()).unwrap();
            });
            // The one waiting for a place is turned away at once; the close waits for the
            // create inside.
            assert_eq!(turned_away.recv_timeout(Duration::from_secs(5)), Ok(true));
            assert!(
                was_closed.recv_timeout(A_WHILE).is_err(),
                "closed with a create inside"
            );
            drop(inside);
            assert_eq!(was_closed.recv_timeout(Duration::from_secs(5)), Ok(()));
        });
        assert!(gate.enter().is_none(), "a closed gate lets a create in");
    }
}
