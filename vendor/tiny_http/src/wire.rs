//! Local (PATCHES.md, 16): reading one whole request off a connection, strictly and within
//! bounds, before anything else sees it.
//!
//! The head is parsed by `httparse`; what it lets through that RFC 9112 does not (a bare
//! LF as a line end) is refused here, and so is any framing that two parsers could read
//! two ways: `Transfer-Encoding` other than exactly `chunked`, `Transfer-Encoding` with
//! `Content-Length`, several or malformed `Content-Length`s. The body, chunked or not, is
//! read whole into memory. Every byte is bounded (`Limits`), and so is the time one
//! request may take from its first byte to its last. A refusal always ends the
//! connection: nothing after it is ever read as a request.

use std::io::{self, ErrorKind};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ascii::AsciiString;

use crate::common::{HTTPVersion, Header, HeaderField, Method};

/// The bounds of one request. Every byte a client sends counts against one of them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line and headers, CRLFs included.
    pub max_head: usize,
    /// The longest request line (a longer one gets 414).
    pub max_request_line: usize,
    /// Header lines.
    pub max_headers: usize,
    /// The body after any chunked decoding.
    pub max_body: usize,
    /// What chunked framing may add to the body: chunk-size lines, CRLFs and trailers.
    pub max_chunk_framing: usize,
    /// From a request's first byte to its last.
    pub request_timeout: Duration,
    /// How long a kept-alive connection may wait for the first byte of its next request.
    pub idle_timeout: Duration,
    /// How long an answer may take to be written.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 64 * 1024,
            max_request_line: 8 * 1024,
            max_headers: 100,
            max_body: 64 * 1024,
            max_chunk_framing: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The most a connection ever holds of what its client sent.
    pub fn max_buffered(&self) -> usize {
        self.max_head + self.max_body + self.max_chunk_framing
    }
}

/// A byte stream with deadlines: a socket, or bytes in memory in the tests.
pub trait Wire {
    /// Reads what has arrived, waiting no later than `deadline`; `Ok(0)` at the end of the
    /// stream, an error of kind `TimedOut` or `WouldBlock` when the deadline passed (a
    /// socket may give up to 20 ms sooner, never later).
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize>;
    /// Writes all of `bytes`, finishing no later than `deadline`.
    fn write_by(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()>;
}

/// A request read whole.
#[derive(Debug)]
pub struct Parsed {
    pub method: Method,
    pub path: String,
    pub version: HTTPVersion,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// The length the client announced, when it announced one.
    pub content_length: Option<usize>,
    /// The client will send nothing after this request (`Connection: close`, HTTP/1.0).
    pub last: bool,
}

/// What reading the next request came to.
#[derive(Debug)]
pub enum Next {
    Request(Parsed),
    /// The client closed, went away, or stayed idle past `idle_timeout` between requests:
    /// nothing to answer.
    Closed,
    /// Answer this status and close the connection.
    Refused(u16),
}

/// Reads the requests of one connection, one at a time. Bytes the client sent past the
/// current request (pipelining) wait in its buffer, which never passes
/// `Limits::max_buffered`.
pub struct RequestReader {
    limits: Limits,
    buf: Vec<u8>,
    /// Where each read lands before its bytes join `buf`: zeroed once for the connection.
    /// Growing `buf` by a read's room instead zeroed 16 KiB for every read, a quarter of
    /// the instructions a small request cost the server.
    landing: Box<[u8]>,
}

const READ_SIZE: usize = 16 * 1024;
const MAX_CHUNK_LINE: usize = 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl RequestReader {
    pub fn new(limits: Limits) -> RequestReader {
        RequestReader {
            limits,
            buf: Vec::new(),
            landing: vec![0; READ_SIZE].into_boxed_slice(),
        }
    }

    /// Bytes held that belong to no request yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Waits (up to `idle_timeout`) for the first bytes of the next request, unless some
    /// are held already; false if the client closed, went away or stayed idle. Empty
    /// lines before a request are dropped (RFC 9112, 2.2): a client may send one after a
    /// body, and that is no request begun.
    pub fn wait_for_request<W: Wire>(&mut self, wire: &mut W) -> bool {
        let idle_until = Instant::now() + self.limits.idle_timeout;
        loop {
            let blank = blank_lines(&self.buf);
            self.buf.drain(..blank);
            if !self.buf.is_empty() && self.buf != b"\r" {
                return true;
            }
            if !matches!(self.fill(wire, idle_until), Fill::Got) {
                return false;
            }
        }
    }

    /// Reads the next whole request.
    pub fn next_request<W: Wire>(&mut self, wire: &mut W) -> Next {
        if !self.wait_for_request(wire) {
            return Next::Closed;
        }
        let deadline = Instant::now() + self.limits.request_timeout;
        match self.read_request(wire, deadline) {
            Ok(parsed) => Next::Request(parsed),
            Err(Stop::Closed) => Next::Closed,
            Err(Stop::Refuse(status)) => {
                // Where the next request would start is not known: nothing more is read.
                self.buf = Vec::new();
                Next::Refused(status)
            }
        }
    }

    fn read_request<W: Wire>(&mut self, wire: &mut W, deadline: Instant) -> Result<Parsed, Stop> {
        let head_len = self.read_head(wire, deadline)?;
        let head = parse_head(&self.buf[..head_len], &self.limits)?;
        let mut parsed = Parsed {
            method: head.method,
            path: head.path,
            version: head.version,
            headers: head.headers,
            body: Vec::new(),
            content_length: None,
            last: head.last,
        };
        let consumed = match head.framing {
            Framing::None => head_len,
            Framing::Length(length) => {
                if length > self.limits.max_body {
                    return Err(Stop::Refuse(413));
                }
                parsed.content_length = Some(length);
                if head.expects_continue && self.buf.len() == head_len && length > 0 {
                    wire.write_by(CONTINUE, deadline)
                        .map_err(|_| Stop::Closed)?;
                }
                while self.buf.len() < head_len + length {
                    self.more(wire, deadline)?;
                }
                parsed.body = self.buf[head_len..head_len + length].to_vec();
                head_len + length
            }
            Framing::Chunked => {
                if head.expects_continue && self.buf.len() == head_len {
                    wire.write_by(CONTINUE, deadline)
                        .map_err(|_| Stop::Closed)?;
                }
                let mut chunks = Chunked::new(head_len);
                let end = loop {
                    match chunks.advance(&self.buf, &self.limits)? {
                        Some(end) => break end,
                        None => self.more(wire, deadline)?,
                    }
                };
                parsed.body = chunks.body;
                end
            }
        };
        self.buf.drain(..consumed);
        Ok(parsed)
    }

    /// Reads until the buffer holds a whole head; returns its length.
    fn read_head<W: Wire>(&mut self, wire: &mut W, deadline: Instant) -> Result<usize, Stop> {
        loop {
            let (mut stack, mut heap) = ([httparse::EMPTY_HEADER; STACK_HEADER_SLOTS], Vec::new());
            let slots = header_slots(&mut stack, &mut heap, self.limits.max_headers);
            let mut request = httparse::Request::new(slots);
            match request.parse(&self.buf) {
                Ok(httparse::Status::Complete(length)) => {
                    if length > self.limits.max_head {
                        return Err(Stop::Refuse(431));
                    }
                    return Ok(length);
                }
                Ok(httparse::Status::Partial) => {
                    let line_end = self.buf.iter().position(|&b| b == b'\n');
                    if line_end.unwrap_or(self.buf.len()) > self.limits.max_request_line {
                        return Err(Stop::Refuse(414));
                    }
                    if self.buf.len() >= self.limits.max_head {
                        return Err(Stop::Refuse(431));
                    }
                }
                Err(httparse::Error::TooManyHeaders) => return Err(Stop::Refuse(431)),
                Err(httparse::Error::Version) => match later_minor_version(&self.buf) {
                    // Read as HTTP/1.1 from here on, its head parsed again.
                    Some(at) => {
                        self.buf[at] = b'1';
                        continue;
                    }
                    None => return Err(Stop::Refuse(version_error(&self.buf))),
                },
                Err(_) => return Err(Stop::Refuse(400)),
            }
            self.more(wire, deadline)?;
        }
    }

    /// Reads more of the current request.
    fn more<W: Wire>(&mut self, wire: &mut W, deadline: Instant) -> Result<(), Stop> {
        match self.fill(wire, deadline) {
            Fill::Got => Ok(()),
            // The client went away in the middle of its request: nobody to answer.
            Fill::Closed => Err(Stop::Closed),
            Fill::TimedOut => Err(Stop::Refuse(408)),
            // Each limit is checked before more is read, so a full buffer means the
            // request is larger than they allow together.
            Fill::Full => Err(Stop::Refuse(413)),
        }
    }

    fn fill<W: Wire>(&mut self, wire: &mut W, deadline: Instant) -> Fill {
        let room = self.limits.max_buffered().saturating_sub(self.buf.len());
        if room == 0 {
            return Fill::Full;
        }
        let landing = &mut self.landing[..room.min(READ_SIZE)];
        let result = loop {
            match wire.read_by(landing, deadline) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let got = *result.as_ref().unwrap_or(&0);
        self.buf.extend_from_slice(&landing[..got]);
        match result {
            Ok(0) => Fill::Closed,
            Ok(_) => Fill::Got,
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                Fill::TimedOut
            }
            Err(_) => Fill::Closed,
        }
    }
}

enum Fill {
    Got,
    Closed,
    TimedOut,
    Full,
}

#[derive(Debug)]
enum Stop {
    Closed,
    Refuse(u16),
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

struct Head {
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    framing: Framing,
    expects_continue: bool,
    last: bool,
}

/// Header slots for `httparse` held on the stack up to this many. A head is parsed
/// twice (to find its end, then to read it); slots on the heap were two 3 KiB
/// allocations per request, in the allocator's slow path.
const STACK_HEADER_SLOTS: usize = 128;

/// `max` slots for `httparse`: from `stack` when it has room, else from `heap`.
fn header_slots<'s, 'b>(
    stack: &'s mut [httparse::Header<'b>; STACK_HEADER_SLOTS],
    heap: &'s mut Vec<httparse::Header<'b>>,
    max: usize,
) -> &'s mut [httparse::Header<'b>] {
    if max <= STACK_HEADER_SLOTS {
        &mut stack[..max]
    } else {
        heap.resize(max, httparse::EMPTY_HEADER);
        heap
    }
}

/// The version on the request line that `buf` begins with (its third and last part, to
/// the line's end or the buffer's), and where in `buf` it begins.
fn request_version(buf: &[u8]) -> Option<(usize, &[u8])> {
    let line_len = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let mut parts = buf[..line_len].split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((method.len() + 1 + target.len() + 1, version))
}

/// Where the minor digit of an `HTTP/1.2` to `HTTP/1.9` request line is: RFC 9110, 2.5,
/// has a recipient process a higher minor version of a major version it implements as
/// the highest minor version it implements, 1.1 here.
fn later_minor_version(buf: &[u8]) -> Option<usize> {
    match request_version(buf)? {
        (at, [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9']) => Some(at + 7),
        _ => None,
    }
}

/// 505 for a well-formed version other than 1.x (`HTTP/2.0`), 400 for anything else.
fn version_error(buf: &[u8]) -> u16 {
    match request_version(buf) {
        Some((_, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]))
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            505
        }
        _ => 400,
    }
}

/// Checks and converts a complete head that `httparse` accepted.
fn parse_head(bytes: &[u8], limits: &Limits) -> Result<Head, Stop> {
    let bad = Stop::Refuse(400);
    check_line_ends(bytes)?;
    let (mut stack, mut heap) = ([httparse::EMPTY_HEADER; STACK_HEADER_SLOTS], Vec::new());
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers);
    let mut request = httparse::Request::new(slots);
    request.parse(bytes).map_err(|_| Stop::Refuse(400))?;
    let (Some(method), Some(path), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(bad);
    };
    let request_line = bytes.iter().position(|&b| b == b'\n').unwrap_or(0);
    if request_line > limits.max_request_line {
        return Err(Stop::Refuse(414));
    }
    let version = HTTPVersion(1, minor);
    let method = Method::from_str(method).map_err(|_| Stop::Refuse(400))?;
    let path = origin_form(path).ok_or(Stop::Refuse(400))?;

    let mut headers = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let field = HeaderField::from_bytes(h.name.as_bytes()).map_err(|_| Stop::Refuse(400))?;
        let value = AsciiString::from_ascii(h.value.trim_ascii()).map_err(|_| Stop::Refuse(400))?;
        headers.push(Header { field, value });
    }

    fn values<'h>(headers: &'h [Header], name: &'static str) -> impl Iterator<Item = &'h str> {
        headers
            .iter()
            .filter(move |h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    }
    let values = |name: &'static str| values(&headers, name);
    let tokens = |name: &'static str| {
        values(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
    };

    // RFC 9112, 3.2: one Host, which HTTP/1.1 must send; the service reads none, but
    // what stands in front of it may, and must not read another than it was sent.
    match values("Host").count() {
        1 => {}
        0 if minor == 0 => {}
        _ => return Err(Stop::Refuse(400)),
    }

    let lengths: Vec<&str> = values("Content-Length").collect();
    let encodings = tokens("Transfer-Encoding");
    let has_encoding = values("Transfer-Encoding").next().is_some();
    let framing = match (lengths.as_slice(), has_encoding) {
        ([], false) => Framing::None,
        ([], true) if version == HTTPVersion(1, 1) && encodings == ["chunked"] => Framing::Chunked,
        ([length], false) => Framing::Length(parse_length(length).ok_or(bad)?),
        _ => return Err(Stop::Refuse(400)),
    };

    let expects_continue = match values("Expect").collect::<Vec<_>>().as_slice() {
        [] => false,
        [v] if v.eq_ignore_ascii_case("100-continue") => version == HTTPVersion(1, 1),
        _ => return Err(Stop::Refuse(417)),
    };

    let connection = tokens("Connection");
    let last = connection.iter().any(|t| t == "close")
        || (version == HTTPVersion(1, 0) && !connection.iter().any(|t| t == "keep-alive"));

    Ok(Head {
        method,
        path,
        version,
        headers,
        framing,
        expects_continue,
        last,
    })
}

/// The request target as a path (origin-form, RFC 9112, 3.2.1). An absolute-form target
/// (`http://host/path?query`, 3.2.2), which a server must take, gives its path and query.
/// Any other (authority-form, asterisk-form, a path without its leading `/`) is none: the
/// service routes and checks a request by the same path, and never by one it must guess.
fn origin_form(target: &str) -> Option<String> {
    if target.starts_with('/') {
        return Some(target.to_owned());
    }
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let authority = rest.find(['/', '?']).unwrap_or(rest.len());
    if authority == 0 {
        return None;
    }
    Some(match &rest[authority..] {
        path if path.starts_with('/') => path.to_owned(),
        query => format!("/{query}"),
    })
}

/// Every line ends in CRLF: no bare CR or LF, no other control character, no line folding.
fn check_line_ends(head: &[u8]) -> Result<(), Stop> {
    let bad = Err(Stop::Refuse(400));
    for (i, &b) in head.iter().enumerate() {
        let ok = match b {
            b'\r' => head.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && head[i - 1] == b'\r',
            b'\t' => true,
            0..=0x1f | 0x7f => false,
            _ => true,
        };
        if !ok {
            return bad;
        }
        // A line after the request line that starts with white space is a folded one.
        if b == b'\n' && matches!(head.get(i + 1), Some(b' ' | b'\t')) {
            return bad;
        }
    }
    Ok(())
}

/// `1*DIGIT`, nothing else: no sign, no white space inside, no list.
fn parse_length(value: &str) -> Option<usize> {
    if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// An incremental decoder of a chunked body held in the connection's buffer.
struct Chunked {
    /// Where the next framing or data starts in the buffer.
    pos: usize,
    /// Where the body starts in the buffer.
    start: usize,
    state: ChunkState,
    body: Vec<u8>,
}

enum ChunkState {
    Size,
    Data(usize),
    Trailers,
}

impl Chunked {
    fn new(start: usize) -> Chunked {
        Chunked {
            pos: start,
            start,
            state: ChunkState::Size,
            body: Vec::new(),
        }
    }

    /// Decodes what `buf` holds: `Some(end)` once the body is complete, `None` when more
    /// is needed.
    fn advance(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, Stop> {
        loop {
            let framing = (self.pos - self.start) - self.body.len();
            if framing > limits.max_chunk_framing {
                return Err(Stop::Refuse(413));
            }
            match self.state {
                ChunkState::Size => {
                    let Some(line) = line_at(buf, self.pos, MAX_CHUNK_LINE)? else {
                        return Ok(None);
                    };
                    let size = parse_chunk_size(&buf[self.pos..self.pos + line])?;
                    if self.body.len() + size > limits.max_body {
                        return Err(Stop::Refuse(413));
                    }
                    self.pos += line + 2;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(size) => {
                    if buf.len() < self.pos + size + 2 {
                        return Ok(None);
                    }
                    if &buf[self.pos + size..self.pos + size + 2] != b"\r\n" {
                        return Err(Stop::Refuse(400));
                    }
                    self.body.extend_from_slice(&buf[self.pos..self.pos + size]);
                    self.pos += size + 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let room = limits.max_chunk_framing.saturating_sub(framing);
                    let Some(line) = line_at(buf, self.pos, room.max(2))? else {
                        return Ok(None);
                    };
                    let text = &buf[self.pos..self.pos + line];
                    self.pos += line + 2;
                    if text.is_empty() {
                        return Ok(Some(self.pos));
                    }
                    // Trailers are read past and dropped, but must be well formed.
                    let colon = text.iter().position(|&b| b == b':');
                    if colon.is_none_or(|c| c == 0) || matches!(text[0], b' ' | b'\t') {
                        return Err(Stop::Refuse(400));
                    }
                }
            }
        }
    }
}

/// The length of the CRLF-ended line at `pos` (without its CRLF), `None` if it has not
/// all arrived yet; 400 for a control character or a bare CR/LF in it, 413 past `max`.
fn line_at(buf: &[u8], pos: usize, max: usize) -> Result<Option<usize>, Stop> {
    for (i, &b) in buf[pos..].iter().enumerate() {
        if i + 2 > max {
            return Err(Stop::Refuse(413));
        }
        match b {
            b'\r' => {
                return match buf.get(pos + i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(Stop::Refuse(400)),
                }
            }
            b'\t' => {}
            0..=0x1f | 0x7f => return Err(Stop::Refuse(400)),
            _ => {}
        }
    }
    Ok(None)
}

/// `1*HEXDIG`, optionally followed by chunk extensions (ignored).
fn parse_chunk_size(line: &[u8]) -> Result<usize, Stop> {
    let digits = line
        .iter()
        .position(|&b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = &line[digits..];
    let rest_ok = rest.is_empty() || rest.trim_ascii_start().first() == Some(&b';');
    if digits == 0 || digits > 8 || !rest_ok {
        return Err(Stop::Refuse(400));
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| Stop::Refuse(400))?;
    usize::from_str_radix(text, 16).map_err(|_| Stop::Refuse(400))
}

/// The length of the empty lines (CRLF or LF) `buf` starts with.
fn blank_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &buf[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Bytes in memory, handed out in the pieces given, as a socket would.
    pub(crate) struct Pieces {
        pub pieces: VecDeque<Vec<u8>>,
        pub written: Vec<u8>,
    }

    impl Pieces {
        pub(crate) fn new<I: IntoIterator<Item = Vec<u8>>>(pieces: I) -> Pieces {
            Pieces {
                pieces: pieces.into_iter().collect(),
                written: Vec::new(),
            }
        }
        pub(crate) fn whole(bytes: &[u8]) -> Pieces {
            Pieces::new([bytes.to_vec()])
        }
    }

    impl Wire for Pieces {
        fn read_by(&mut self, buf: &mut [u8], _deadline: Instant) -> io::Result<usize> {
            let Some(piece) = self.pieces.front_mut() else {
                return Ok(0);
            };
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            piece.drain(..n);
            if piece.is_empty() {
                self.pieces.pop_front();
            }
            Ok(n)
        }
        fn write_by(&mut self, bytes: &[u8], _deadline: Instant) -> io::Result<()> {
            self.written.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Everything a connection reads from `wire`: requests until the first non-request.
    pub(crate) fn read_all(wire: &mut Pieces) -> (Vec<Parsed>, Next) {
        let mut reader = RequestReader::new(Limits::default());
        let mut requests = Vec::new();
        loop {
            assert!(reader.buffered() <= Limits::default().max_buffered());
            match reader.next_request(wire) {
                Next::Request(p) => {
                    let last = p.last;
                    requests.push(p);
                    if last {
                        return (requests, Next::Closed);
                    }
                }
                other => return (requests, other),
            }
        }
    }

    fn refused(bytes: &[u8]) -> Option<u16> {
        match read_all(&mut Pieces::whole(bytes)) {
            (_, Next::Refused(status)) => Some(status),
            _ => None,
        }
    }

    #[test]
    fn empty_lines_before_a_request_begin_none() {
        // A stray CRLF after a request, then silence: no request has begun.
        let mut reader = RequestReader::new(Limits::default());
        let mut wire = Pieces::new([b"\r\n".to_vec(), b"\n\r".to_vec()]);
        assert!(!reader.wait_for_request(&mut wire));
        // Empty lines, then a request: it is read as if they were not there.
        let mut reader = RequestReader::new(Limits::default());
        let mut wire = Pieces::new([
            b"\r\n\n\r".to_vec(),
            b"\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ]);
        assert!(reader.wait_for_request(&mut wire));
        match reader.next_request(&mut wire) {
            Next::Request(p) => assert_eq!(p.path, "/a"),
            other => panic!("{:?}", other),
        }
    }

    #[test]
    fn reads_a_request_with_its_body() {
        let mut wire =
            Pieces::whole(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        let (requests, end) = read_all(&mut wire);
        assert!(matches!(end, Next::Closed));
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].method, Method::Post);
        assert_eq!(requests[0].path, "/a?b=1");
        assert_eq!(requests[0].body, b"hello");
        assert_eq!(requests[0].content_length, Some(5));
        assert!(!requests[0].last);
    }

    #[test]
    fn reads_a_later_http_1_minor_version_as_http_1_1() {
        let raw = b"POST /a HTTP/1.5\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            2\r\nhi\r\n0\r\n\r\nGET /b HTTP/1.9\r\nHost: x\r\n\r\n";
        // Whole, and a byte at a time: the version may arrive before its line ends.
        for mut wire in [
            Pieces::whole(raw),
            Pieces::new(raw.iter().map(|&b| vec![b])),
        ] {
            let (requests, end) = read_all(&mut wire);
            assert!(matches!(end, Next::Closed));
            let seen: Vec<_> = requests
                .iter()
                .map(|r| {
                    (
                        r.path.as_str(),
                        r.version.clone(),
                        r.body.as_slice(),
                        r.last,
                    )
                })
                .collect();
            assert_eq!(
                seen,
                [
                    ("/a", HTTPVersion(1, 1), &b"hi"[..], false),
                    ("/b", HTTPVersion(1, 1), &b""[..], false),
                ]
            );
        }
    }

    #[test]
    fn reads_pipelined_requests_one_at_a_time() {
        let one = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let two = b"GET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut wire = Pieces::whole(&[&one[..], &two[..]].concat());
        let (requests, _) = read_all(&mut wire);
        let paths: Vec<_> = requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/1", "/2"]);
        assert!(requests[1].last);
    }

    #[test]
    fn decodes_chunked_bodies_byte_by_byte() {
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut wire = Pieces::new(raw.iter().map(|&b| vec![b]));
        let (requests, _) = read_all(&mut wire);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].body, b"hello!");
        assert_eq!(requests[1].path, "/next");
    }

    #[test]
    fn refuses_ambiguous_framing() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        ];
        for case in cases {
            assert_eq!(
                refused(case),
                Some(400),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn a_target_is_read_as_its_path_or_refused() {
        for (target, path) in [
            ("/a?b=1", Some("/a?b=1")),
            ("http://example.com/a?b=1", Some("/a?b=1")),
            ("HTTPS://example.com:8443", Some("/")),
            ("http://example.com?b=1", Some("/?b=1")),
            ("x/api/orders", None),
            ("http:/api/orders", None),
            ("http:///api/orders", None),
            ("ftp://example.com/a", None),
            ("example.com:443", None),
            ("*", None),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut reader = RequestReader::new(Limits::default());
            match (
                reader.next_request(&mut Pieces::whole(raw.as_bytes())),
                path,
            ) {
                (Next::Request(p), Some(path)) => assert_eq!(p.path, path, "{target}"),
                (Next::Refused(400), None) => {}
                (_, path) => panic!("{}: not read as {:?}", target, path),
            }
        }
    }

    #[test]
    fn http_1_1_needs_one_host_line_and_no_request_has_two() {
        for (head, read) in [
            ("GET / HTTP/1.1\r\nHost: x\r\n", true),
            ("GET / HTTP/1.1\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n", false),
            ("GET / HTTP/1.0\r\n", true),
            ("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n", false),
        ] {
            let raw = format!("{head}\r\n");
            let mut reader = RequestReader::new(Limits::default());
            match reader.next_request(&mut Pieces::whole(raw.as_bytes())) {
                Next::Request(_) => assert!(read, "{:?} read", head),
                Next::Refused(400) => assert!(!read, "{:?} refused", head),
                _ => panic!("{:?}: neither read nor refused", head),
            }
        }
    }

    #[test]
    fn the_header_limit_holds_below_and_above_the_slots_kept_on_the_stack() {
        for max_headers in [100, STACK_HEADER_SLOTS, STACK_HEADER_SLOTS + 50] {
            let limits = Limits {
                max_headers,
                ..Limits::default()
            };
            for (count, accepted) in [(max_headers, true), (max_headers + 1, false)] {
                // The Host line one of them.
                let raw = format!(
                    "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
                    "X: y\r\n".repeat(count - 1)
                );
                let mut reader = RequestReader::new(limits.clone());
                match reader.next_request(&mut Pieces::whole(raw.as_bytes())) {
                    Next::Request(p) => {
                        assert!(accepted, "{} headers of {} accepted", count, max_headers);
                        assert_eq!(p.headers.len(), count);
                    }
                    Next::Refused(431) => {
                        assert!(!accepted, "{} of {} refused", count, max_headers)
                    }
                    _ => panic!(
                        "{} headers of {}: neither read nor refused",
                        count, max_headers
                    ),
                }
            }
        }
    }

    #[test]
    fn refuses_past_each_bound() {
        let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
        assert_eq!(refused(long_line.as_bytes()), Some(414));
        let long_head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(70_000)
        );
        assert_eq!(refused(long_head.as_bytes()), Some(431));
        let many = format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "X: y\r\n".repeat(101)
        );
        assert_eq!(refused(many.as_bytes()), Some(431));
        let big = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n";
        assert_eq!(refused(big), Some(413));
        let huge = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999\r\n\r\n";
        assert_eq!(refused(huge), Some(413));
        let endless_size = [
            &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &vec![b'0'; 5000],
        ]
        .concat();
        assert_eq!(refused(&endless_size), Some(413));
        let big_chunk =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n";
        assert_eq!(refused(big_chunk), Some(413));
        assert_eq!(refused(b"GET / HTTP/2.0\r\n\r\n"), Some(505));
        assert_eq!(refused(b"GET / HTTP/1.10\r\nHost: x\r\n\r\n"), Some(400));
        assert_eq!(refused(b"GET / HTTP/1.x\r\nHost: x\r\n\r\n"), Some(400));
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n"),
            Some(417)
        );
    }

    #[test]
    fn answers_100_continue_only_before_a_body_it_will_read() {
        let head =
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        let mut wire = Pieces::new([head.to_vec(), b"ok".to_vec()]);
        let (requests, _) = read_all(&mut wire);
        assert_eq!(requests[0].body, b"ok");
        assert_eq!(wire.written, CONTINUE);

        let too_big =
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n";
        let mut wire = Pieces::whole(too_big);
        assert!(matches!(read_all(&mut wire).1, Next::Refused(413)));
        assert!(wire.written.is_empty());
    }

    #[test]
    fn a_refusal_ends_the_connection_whatever_follows() {
        let raw =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let (requests, end) = read_all(&mut Pieces::whole(raw));
        assert!(requests.is_empty());
        assert!(matches!(end, Next::Refused(400)));
    }

    mod fuzz {
        //! Property tests over raw byte streams, cut into arbitrary pieces as a socket
        //! would deliver them: the reader never panics, never holds more than its bounds,
        //! and a body, whatever it contains, is only ever body.
        use super::*;
        use proptest::prelude::*;

        /// Cuts `bytes` at the given points.
        fn cut(bytes: &[u8], points: &[usize]) -> Pieces {
            let mut points: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
            points.sort_unstable();
            points.dedup();
            let mut pieces = Vec::new();
            let mut start = 0;
            for p in points.into_iter().chain([bytes.len()]) {
                if p > start {
                    pieces.push(bytes[start..p].to_vec());
                    start = p;
                }
            }
            Pieces::new(pieces)
        }

        /// Bytes that are mostly HTTP: fragments a fuzzer would splice.
        fn httpish() -> impl Strategy<Value = Vec<u8>> {
            let fragment = prop_oneof![
                Just(b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec()),
                Just(b"POST /api/orders HTTP/1.1\r\nHost: x\r\n".to_vec()),
                Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
                Just(b"Content-Length: 5\r\n".to_vec()),
                Just(b"Content-Length: 70000\r\n".to_vec()),
                Just(b"Expect: 100-continue\r\n".to_vec()),
                Just(b"Connection: close\r\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r".to_vec()),
                Just(b"0\r\n\r\n".to_vec()),
                Just(b"5\r\nhello\r\n".to_vec()),
                Just(b"ffffffff\r\n".to_vec()),
                Just(b" ".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..16),
            ];
            proptest::collection::vec(fragment, 0..40).prop_map(|f| f.concat())
        }

        fn check_bounds(requests: &[Parsed]) {
            for r in requests {
                assert!(r.body.len() <= Limits::default().max_body);
            }
        }

        proptest! {
            // 2,000 cases a test by default; PROPTEST_CASES=N for a longer run.
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
            ))]

            #[test]
            fn any_bytes_in_any_pieces_never_panic_or_pass_the_bounds(
                bytes in prop_oneof![httpish(), proptest::collection::vec(any::<u8>(), 0..4096)],
                points in proptest::collection::vec(any::<usize>(), 0..12),
            ) {
                let (requests, _) = read_all(&mut cut(&bytes, &points));
                check_bounds(&requests);
            }

            #[test]
            fn a_body_is_only_body_whatever_it_holds(
                body in prop_oneof![
                    httpish(),
                    proptest::collection::vec(any::<u8>(), 0..2048),
                ],
                chunked in any::<bool>(),
                chunk_sizes in proptest::collection::vec(1usize..300, 1..20),
                points in proptest::collection::vec(any::<usize>(), 0..12),
            ) {
                let mut bytes = b"POST /first HTTP/1.1\r\nHost: x\r\n".to_vec();
                if chunked {
                    bytes.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    let mut rest = &body[..];
                    for size in chunk_sizes.iter().cycle() {
                        if rest.is_empty() {
                            break;
                        }
                        let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        bytes.extend_from_slice(chunk);
                        bytes.extend_from_slice(b"\r\n");
                        rest = tail;
                    }
                    bytes.extend_from_slice(b"0\r\n\r\n");
                } else {
                    bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                    bytes.extend_from_slice(&body);
                }
                bytes.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");

                let (requests, end) = read_all(&mut cut(&bytes, &points));

                prop_assert!(matches!(end, Next::Closed), "{:?}", end);
                prop_assert_eq!(requests.len(), 2);
                prop_assert_eq!(&requests[0].path, "/first");
                prop_assert_eq!(&requests[0].body, &body);
                prop_assert_eq!(&requests[1].path, "/second");
            }

            #[test]
            fn nothing_after_a_refusal_is_read_as_a_request(
                garbage in httpish(),
                points in proptest::collection::vec(any::<usize>(), 0..12),
            ) {
                // A refused request, then anything: no request comes out after it.
                let mut bytes = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec();
                bytes.extend_from_slice(&garbage);
                bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
                let (requests, end) = read_all(&mut cut(&bytes, &points));
                prop_assert!(requests.is_empty());
                prop_assert!(matches!(end, Next::Refused(400)), "{:?}", end);
            }
        }
    }
}
