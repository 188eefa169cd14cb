use std::io::Error as IoError;
use std::io::{self, Cursor, Read, Write};

use std::fmt;
use std::net::SocketAddr;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Instant;

use crate::wire::Parsed;
use crate::{HTTPVersion, Header, Method, Response};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// Local (PATCHES.md, 16): the request has been read whole, body included, by the
/// connection's own thread before it is handed out, so reading its body never waits on
/// the client. Its answer is written to a buffer and handed back to that thread, which
/// writes it: answering never waits on the client either.
///
/// # Handling
///
/// Handling the request is done by calling `respond`. If the request is dropped without
/// an answer, it is answered with an empty 500.
pub struct Request {
    body: Cursor<Vec<u8>>,

    // where the answer goes; `None` once answered
    answer: Option<SyncSender<Outgoing>>,

    remote_addr: Option<SocketAddr>,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    body_length: Option<usize>,

    // the connection reads nothing after this request (the client said so, or the server
    // was stopping when it was read); the answer then says `Connection: close`, as it
    // does when the server is stopping by the time it is written
    last_on_connection: bool,
    server_stopping: Option<Arc<AtomicBool>>,

    // when its connection had read all of it
    received_at: Instant,
}

/// An answer as bytes, for the connection's thread to write; `close` when the connection
/// ends after it.
pub(crate) struct Outgoing {
    pub bytes: Vec<u8>,
    pub close: bool,
}

impl Request {
    pub(crate) fn read(
        parsed: Parsed,
        remote_addr: Option<SocketAddr>,
        last_on_connection: bool,
        server_stopping: Arc<AtomicBool>,
        answer: SyncSender<Outgoing>,
    ) -> Request {
        Request {
            body: Cursor::new(parsed.body),
            answer: Some(answer),
            remote_addr,
            method: parsed.method,
            path: parsed.path,
            http_version: parsed.version,
            headers: parsed.headers,
            body_length: parsed.content_length,
            last_on_connection,
            server_stopping: Some(server_stopping),
            received_at: Instant::now(),
        }
    }

    /// A request made in memory (`TestRequest`); its answer goes nowhere.
    pub(crate) fn in_memory(
        method: Method,
        path: String,
        http_version: HTTPVersion,
        headers: Vec<Header>,
        body: Vec<u8>,
        remote_addr: Option<SocketAddr>,
    ) -> Request {
        let body_length = Some(body.len());
        let (answer, _) = std::sync::mpsc::sync_channel(1);
        Request {
            body: Cursor::new(body),
            answer: Some(answer),
            remote_addr,
            method,
            path,
            http_version,
            headers,
            body_length,
            last_on_connection: true,
            server_stopping: None,
            received_at: Instant::now(),
        }
    }

    /// Whether the server has stopped accepting by now (`Server::stop_accepting`): the
    /// answer then says `Connection: close`, and a handler may say it is going away.
    /// Local patch (PATCHES.md, 6).
    pub fn server_stopping(&self) -> bool {
        self.server_stopping
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        false
    }

    /// When the connection had read the whole request, before it waited for a thread to
    /// take it: the start of its time, as its client sees it.
    #[inline]
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes as the client announced it
    /// (`Content-Length`); `None` for a chunked body or none.
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Allows to read the body of the request, already in memory.
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        &mut self.body
    }

    /// Turns the `Request` into a writer of the raw answer: what is written is sent as
    /// is once the writer is dropped, and the connection then closes (its framing is the
    /// writer's own).
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        Box::new(RawAnswer {
            bytes: Vec::new(),
            answer: self.answer.take(),
        })
    }

    /// Sends a response to this request.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        self.respond_impl(response)
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let Some(answer) = self.answer.take() else {
            return Ok(());
        };
        let closing = self.last_on_connection || self.server_stopping();
        let mut bytes = Vec::with_capacity(256 + response.data_length().unwrap_or(0));
        let printed = response.raw_print_closing(
            &mut bytes,
            self.http_version.clone(),
            &self.headers,
            self.method == Method::Head,
            None,
            closing,
        );
        // A response whose reader failed midway cannot be framed: close after what went out.
        let close = closing || printed.is_err();
        // The connection may be gone already; nothing waits on the client here.
        let _ = answer.send(Outgoing { bytes, close });
        printed
    }
}

/// The writer of `Request::into_writer`.
struct RawAnswer {
    bytes: Vec<u8>,
    answer: Option<SyncSender<Outgoing>>,
}

impl Write for RawAnswer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for RawAnswer {
    fn drop(&mut self) {
        if let Some(answer) = self.answer.take() {
            let bytes = std::mem::take(&mut self.bytes);
            let _ = answer.send(Outgoing { bytes, close: true });
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.answer.is_some() {
            let response = Response::empty(500);
            let _ = self.respond_impl(response); // ignoring any potential error
        }
    }
}

pub trait ReadWrite: Read + Write {}
impl<T> ReadWrite for T where T: Read + Write {}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
