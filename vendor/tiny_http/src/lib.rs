//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::io::Write;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{ReadWrite, Request};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;
pub use wire::Limits;

mod client;
mod common;
mod connection;
mod request;
mod response;
mod test;
mod util;
#[doc(hidden)]
pub mod wire;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket. Requests that have
/// already been returned by the `recv()` function will not close and the responses will be
/// transferred to the client; requests still queued are answered 500.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // Local patch (PATCHES.md, 6): set by `stop_accepting` (and on drop); every
    // connection then reads no request after its current one, answered with
    // `Connection: close`.
    stopping: Arc<AtomicBool>,

    // PATCHES.md, 17: connections open now.
    open: Arc<AtomicUsize>,

    // PATCHES.md, 18: connections between a request's first byte and its answer written.
    busy: Arc<AtomicUsize>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,
}

pub(crate) enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

/// Local patch (PATCHES.md, 8): pauses after a failed `accept()`, doubling up to the
/// maximum while failures go on, so running out of file descriptors is not logged 20
/// times a second.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// PATCHES.md, 17: the stack of a connection's thread unless `Options::connection_stack`
/// says otherwise. It parses and copies; nothing on it is large (buffers are on the heap).
const CONNECTION_STACK: usize = 128 * 1024;

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,
}

/// Local (PATCHES.md, 20): a request the application may take on the connection's own
/// thread, as soon as it is read, instead of through the queue. It gives the request
/// back to have it queued for the workers as usual. It runs on every connection's
/// thread, so it must not block.
pub type Direct = std::sync::Arc<dyn Fn(Request) -> Option<Request> + Send + Sync>;

/// Local (PATCHES.md, 16, 17): the answer to a request the server refuses on its own, by
/// status. It runs on the connection's (or the accepting) thread, so it must not block.
pub type Refusal = std::sync::Arc<dyn Fn(u16) -> ResponseBox + Send + Sync>;

/// Local (PATCHES.md, 16, 17, 20): how the server bounds its clients.
#[derive(Clone)]
pub struct Options {
    /// The bounds of one request, in bytes and time.
    pub limits: Limits,
    /// Connections served at once; one more gets a 503 and is closed at once.
    pub max_connections: usize,
    /// The answer to a request the server refuses on its own (400, 408, 413, 414, 417,
    /// 431, 505, and 503 when full), by status: an empty body unless set.
    pub refusal: Refusal,
    /// Requests taken before the queue (PATCHES.md, 20); none if unset.
    pub direct: Option<Direct>,
    /// The stack of each connection's thread, in bytes (virtual: only the pages touched
    /// take memory). The default suits the server's own parsing; a `direct` hook that
    /// does more work on that thread needs more.
    pub connection_stack: usize,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("limits", &self.limits)
            .field("max_connections", &self.max_connections)
            .field("direct", &self.direct.is_some())
            .field("connection_stack", &self.connection_stack)
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            limits: Limits::default(),
            max_connections: 512,
            refusal: std::sync::Arc::new(|status| Response::empty(status).boxed()),
            direct: None,
            connection_stack: CONNECTION_STACK,
        }
    }
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
        })
    }

    /// Shortcut for a UNIX socket server at a specific path
    #[cfg(unix)]
    #[inline]
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, Options::default())
    }

    /// Builds a new server using the specified TCP listener, within `options`.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        options: Options,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = listener.into();
        let close_trigger = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let local_addr = listener.local_addr()?;
        log::debug!("Server listening on {}", local_addr);

        let messages = MessagesQueue::with_capacity(8);
        let shared = Arc::new(client::Shared {
            messages: messages.clone(),
            stopping: stopping.clone(),
            busy: busy.clone(),
            limits: options.limits.clone(),
            refusal: options.refusal.clone(),
            direct: options.direct.clone(),
        });

        let inside_close_trigger = close_trigger.clone();
        let inside_open = open.clone();
        thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || {
                accept_loop(
                    listener,
                    &inside_close_trigger,
                    &inside_open,
                    &options,
                    &shared,
                )
            })?;

        Ok(Server {
            messages,
            close: close_trigger,
            stopping,
            open,
            busy,
            listening_addr: local_addr,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        self.open.load(SeqCst)
    }

    /// Connections in the middle of a request: from its first byte until its answer is
    /// written (or the connection ends). A request being read, queued, handled or
    /// answered counts; an idle kept-alive connection does not.
    ///
    /// Local patch (PATCHES.md, 18), for a shutdown that waits for them.
    pub fn busy_connections(&self) -> usize {
        self.busy.load(SeqCst)
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::other("thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Like `recv_timeout()`, but returns `Ok(None)` at once, while nothing is queued, once
    /// `release_waiters()` was called: a worker waiting for work learns of a shutdown
    /// then, not at its next timeout.
    ///
    /// Local patch (PATCHES.md, 18).
    pub fn recv_until_released(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_until_released(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Wakes every thread in `recv_until_released()`, now and from now on, to return once
    /// nothing is queued. `recv()`, `recv_timeout()` and `try_recv()` are unchanged, so
    /// a drain can still wait for what open connections send.
    ///
    /// Local patch (PATCHES.md, 18).
    pub fn release_waiters(&self) {
        self.messages.release();
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Stops taking new connections: the accept thread ends and the listening socket is
    /// closed, so new clients are refused. Unlike dropping the `Server`, requests already
    /// read stay available through `recv()`, `recv_timeout()` and `try_recv()`. Every open
    /// connection reads at most one more request, whose response (like that of a request
    /// being handled now) says `Connection: close`, and then ends; a kept-alive connection
    /// that sends nothing more ends when its client closes it or at the idle timeout.
    ///
    /// Local patch (PATCHES.md, 6), for a graceful shutdown.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, SeqCst);
        if self.close.swap(true, SeqCst) {
            return; // already stopped: the address may belong to someone else by now
        }
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // PATCHES.md, 6: the same as `stop_accepting` (which moved the code from here).
        self.stop_accepting();
        // Requests still queued are answered (500), so their connections end.
        while self.messages.try_pop().is_some() {}

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Takes connections and gives each a thread of its own, up to `max_connections`.
fn accept_loop(
    listener: Listener,
    close: &AtomicBool,
    open: &Arc<AtomicUsize>,
    options: &Options,
    shared: &Arc<client::Shared>,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    log::debug!("Running accept thread");
    while !close.load(Relaxed) {
        let (conn, remote_addr) = match listener.accept() {
            // PATCHES.md, 6: the connection that wakes a stopping accept thread (or any
            // taken after `stop_accepting`) is not served; the listening socket closes as
            // this thread ends.
            Ok(_) if close.load(SeqCst) => break,
            Ok(accepted) => accepted,
            Err(e) => {
                // PATCHES.md, 2, 8: a failed accept (out of file descriptors, a connection
                // reset before it was taken) must not stop the server for good.
                log::error!(
                    "Error accepting new client: {} (next try in {:?})",
                    e,
                    backoff
                );
                thread::sleep(backoff);
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        backoff = ACCEPT_BACKOFF_MIN;
        // PATCHES.md, 17: answers go out in one write; without this, Nagle held back a
        // small last segment until the client's delayed ACK (40 ms).
        let _ = conn.set_nodelay(true);

        let slot = Slot::take(open, options.max_connections);
        let Some(slot) = slot else {
            refuse_at_once(conn, (options.refusal)(503));
            continue;
        };
        let shared = shared.clone();
        let started = thread::Builder::new()
            .name("http-conn".into())
            .stack_size(options.connection_stack)
            .spawn(move || {
                let _slot = slot;
                client::serve(conn, remote_addr, &shared);
            });
        if let Err(e) = started {
            // The closure, and with it the connection and its slot, is dropped: the
            // client sees the connection close, and the server goes on.
            log::error!("Cannot start a connection thread: {}", e);
        }
    }
    log::debug!("Terminating accept thread");
}

/// One of the `max_connections` places, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Past `max_connections`: the refusal goes out without waiting on the client (it fits in
/// any socket buffer) and the connection closes, on the accept thread itself.
fn refuse_at_once(mut conn: Connection, response: ResponseBox) {
    let mut bytes = Vec::new();
    let _ = response.raw_print_closing(&mut bytes, HTTPVersion(1, 1), &[], false, None, true);
    let _ = conn.set_nonblocking(true);
    let _ = conn.write_all(&bytes);
    let _ = conn.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::{Options, Response, Server};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    fn busy_becomes(server: &Server, count: usize) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if server.busy_connections() == count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Sends `GET path` on `client` and reads the answer's body (`Content-Length` only).
    fn exchange(client: &mut TcpStream, path: &str) -> String {
        write!(client, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(client.read(&mut byte).unwrap(), 1, "closed in the head");
            got.push(byte[0]);
        }
        let head = String::from_utf8(got).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("a Content-Length")
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        client.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }

    #[test]
    fn a_request_taken_directly_is_answered_without_a_worker_and_one_given_back_is_queued() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let direct: super::Direct = std::sync::Arc::new(|req: super::Request| {
            if req.url() == "/direct" {
                let thread = std::thread::current().name().unwrap_or("").to_string();
                req.respond(Response::from_string(format!("direct on {thread}")))
                    .unwrap();
                None
            } else {
                Some(req)
            }
        });
        let options = Options {
            direct: Some(direct),
            ..Options::default()
        };
        let server = Server::from_listener(listener, options).unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();

        // Nothing takes requests from the queue meanwhile.
        assert_eq!(exchange(&mut client, "/direct"), "direct on http-conn");
        assert!(server.try_recv().unwrap().is_none());

        // On the same connection, a request given back waits for a worker.
        let worker = std::thread::spawn({
            let server = std::sync::Arc::new(server);
            move || {
                let request = server
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap()
                    .expect("the request given back is queued");
                let url = request.url().to_string();
                request
                    .respond(Response::from_string(format!("queued {url}")))
                    .unwrap();
            }
        });
        assert_eq!(exchange(&mut client, "/queued"), "queued /queued");
        worker.join().unwrap();
    }

    #[test]
    fn a_connection_is_busy_from_a_request_s_first_byte_until_its_answer_is_written() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Server::from_listener(listener, Options::default()).unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();

        // Connected, nothing sent: not busy.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(server.busy_connections(), 0);

        client.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        assert!(busy_becomes(&server, 1), "half a head sent");
        client.write_all(b"st: x\r\n\r\n").unwrap();
        let request = server
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(server.busy_connections(), 1, "read, not answered yet");
        // An answer larger than the sockets' buffers: its write waits for the client.
        const SIZE: usize = 64 * 1024 * 1024;
        request
            .respond(Response::from_data(vec![b'x'; SIZE]))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(server.busy_connections(), 1, "answered, not yet written");
        let mut got = 0;
        let mut chunk = vec![0u8; 1024 * 1024];
        while got < SIZE {
            let n = client.read(&mut chunk).unwrap();
            assert!(n > 0, "closed after {} bytes", got);
            got += n;
        }
        assert!(busy_becomes(&server, 0), "written, kept alive and idle");
        // A stray empty line after it begins no request.
        client.write_all(b"\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(server.busy_connections(), 0, "an empty line");
    }
}
