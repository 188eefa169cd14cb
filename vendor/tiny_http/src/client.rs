use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // Local patches (PATCHES.md):
    // 6: set by `Server::stop_accepting`; then no request is read after the current one.
    server_stopping: Arc<AtomicBool>,
    // 4: how much the previous request left unread of its body, once it is dropped.
    unread_body: Option<Receiver<IoResult<usize>>>,
    // 5: whether a byte of the request being read has arrived; a timeout before that
    // is an idle keep-alive connection (closed silently), after it a stalled one (408).
    request_started: bool,
    // 13: how many requests were handed out, and the number of the latest one, shared with
    // the requests; a response that says `Connection: close` sets it to `CONNECTION_CLOSING`.
    handed_out: usize,
    latest_request: Arc<AtomicUsize>,
}

/// An unread request body is skipped to keep the connection usable (PATCHES.md, 4): up to
/// `MAX_SKIPPED_BODY`, and beyond that only while `SKIP_LINGER` has not passed since the
/// skipping started; then the connection is closed. Stopping at a byte count alone would
/// close on a client still sending its body (most write it all before reading the answer),
/// and closing a socket with unread data resets the connection: the client would see a
/// reset instead of the answer (a 413 for a 2 MiB upload, say).
const MAX_SKIPPED_BODY: usize = 1024 * 1024;
const SKIP_LINGER: Duration = Duration::from_secs(5);

/// Local patch (PATCHES.md, 11): bounds of a request's head. Without them a client sending
/// an endless request line, header line or run of header lines made the connection's
/// thread buffer it all (unbounded memory). Past a bound the request gets 431 (414 for the
/// request line) and the connection closes. Lines are counted with their CRLF.
const MAX_HEAD_LINE: usize = 8 * 1024;
const MAX_HEADER_LINES: usize = 100;
const MAX_HEAD: usize = 64 * 1024;

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    /// PATCHES.md, 11: the head passed a bound; the status to answer (414 or 431).
    HeadTooLarge(u16, HTTPVersion),
    ReadIoError(IoError),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        server_stopping: Arc<AtomicBool>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            server_stopping,
            unread_body: None,
            request_started: false,
            handed_out: 0,
            latest_request: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// Local patch (PATCHES.md, 7): returns the bytes; the caller checks they are ASCII,
    /// so that a line that is not answers 400 rather than failing like a broken socket.
    ///
    /// Local patch (PATCHES.md, 11): `Ok(None)` once more than `limit` bytes (CRLF
    /// included) have come without the line ending, so a line cannot grow without bound.
    fn read_next_line(&mut self, limit: usize) -> IoResult<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            // `buf` holds every byte of the line read so far but the LF to come.
            if buf.len() >= limit {
                return Ok(None);
            }

            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b?,
                None => return Err(IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF")),
            };
            self.request_started = true;

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return Ok(Some(buf));
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// Local patch (PATCHES.md, 4): skips what the previous request left unread of its
    /// body, here on the connection's thread (not on the worker that dropped the request)
    /// and through a small buffer, within the bounds of `MAX_SKIPPED_BODY`. An error means
    /// the connection cannot be reused: the body's reading failed, the bounds were hit
    /// before its end, or the client went away or stalled.
    fn skip_unread_body(&mut self) -> IoResult<()> {
        // Blocks until the request is dropped, as reading the next line would.
        let left = match self.unread_body.take().map(|signal| signal.recv()) {
            None | Some(Err(_)) => return Ok(()),
            Some(Ok(left)) => left?,
        };
        let linger_until = Instant::now() + SKIP_LINGER;
        let mut skipped = 0;
        let mut buf = [0u8; 8 * 1024];
        while skipped < left {
            if skipped >= MAX_SKIPPED_BODY && Instant::now() > linger_until {
                return Err(IoError::new(
                    ErrorKind::Other,
                    "unread request body too long to skip",
                ));
            }
            let want = (left - skipped).min(buf.len());
            match self.next_header_source.read(&mut buf[..want]) {
                Ok(0) => return Err(IoError::new(ErrorKind::UnexpectedEof, "body cut short")),
                Ok(n) => skipped += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        self.request_started = false;
        self.skip_unread_body().map_err(ReadError::ReadIoError)?;

        // PATCHES.md, 11: what the rest of the head may still take, CRLFs included.
        let mut head_left = MAX_HEAD;

        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self
                    .read_next_line(MAX_HEAD_LINE)
                    .map_err(ReadError::ReadIoError)?
                    .ok_or(ReadError::HeadTooLarge(414, HTTPVersion(1, 1)))?;
                head_left -= line.len() + 2;
                let line =
                    AsciiString::from_ascii(line).map_err(|_| ReadError::WrongRequestLine)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let too_large = || ReadError::HeadTooLarge(431, version.clone());
                    let line = self
                        .read_next_line(MAX_HEAD_LINE.min(head_left))
                        .map_err(ReadError::ReadIoError)?
                        .ok_or_else(too_large)?;
                    head_left -= line.len() + 2;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() == MAX_HEADER_LINES {
                        return Err(too_large());
                    }
                    let line = AsciiString::from_ascii(line)
                        .map_err(|_| ReadError::WrongHeader(version.clone()))?;
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let (request, unread_body) = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            // PATCHES.md, 15: `peer_addr` fails on a socket the client reset before it was
            // accepted (its request still readable); that `unwrap` panicked the thread.
            self.remote_addr.as_ref().ok().copied().flatten(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;
        self.unread_body = unread_body;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            // PATCHES.md, 4: still skip an unread body (as the reader's destructor used to)
            // so the close is not a reset that could destroy the answer in flight.
            let _ = self.skip_unread_body();
            return None;
        }

        loop {
            let rq = match self.read() {
                // The connection closes after each of these error answers; since PATCHES.md, 6
                // they say so with `Connection: close`.
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print_closing(writer, HTTPVersion(1, 1), &[], false, None, true)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print_closing(writer, ver, &[], false, None, true)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                // Local patch (PATCHES.md, 5): with a socket read timeout, Linux reports
                // `WouldBlock` (EAGAIN), not `TimedOut`. A connection idle before its next
                // request just closes; one that stalled within a request gets a 408.
                Err(ReadError::ReadIoError(ref err))
                    if matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) =>
                {
                    if !self.request_started {
                        return None;
                    }
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(408));
                    response
                        .raw_print_closing(writer, HTTPVersion(1, 1), &[], false, None, true)
                        .ok();
                    return None; // closing the connection
                }

                // PATCHES.md, 11: the rest of the head is not read, so where the next
                // request would start is unknown: answer and close.
                Err(ReadError::HeadTooLarge(status, ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(status));
                    response
                        .raw_print_closing(writer, ver, &[], false, None, true)
                        .ok();
                    return None;
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response
                        .raw_print_closing(writer, ver, &[], true, None, true)
                        .ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                // PATCHES.md, 12: the 505 goes through the request's own writer. A new one
                // from `sink` waited for that one, held by `rq` on this very thread until
                // the end of this block: the connection hung for good. (Taking the writer
                // out also keeps the dropped request from answering a 500.) It is flushed,
                // as the connection goes on: `raw_print` does not.
                let mut writer = rq.into_writer();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(&mut writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                writer.flush().ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // Local patch (PATCHES.md, 6): once the server is stopping, this is the last
            // request read on the connection, and its response says `Connection: close`.
            if self.server_stopping.load(Ordering::SeqCst) {
                self.no_more_requests = true;
            }

            // Local patch (PATCHES.md, 13): a response says `Connection: close` on stopping
            // only while its request is the latest handed out, and then no later request
            // is: one read meanwhile is dropped unanswered (not with the 500 of a dropped
            // request) and the connection closes, as its client expects.
            let number = self.handed_out + 1;
            if self
                .latest_request
                .compare_exchange(self.handed_out, number, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                drop(rq.into_writer());
                return None;
            }
            self.handed_out = number;

            // returning the request
            return Some(rq.with_connection_state(
                self.no_more_requests,
                self.server_stopping.clone(),
                self.latest_request.clone(),
                number,
            ));
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
