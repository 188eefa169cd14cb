//! HTTP as the tests speak it: the response a test asserts on, a client connection
//! written by hand for requests ureq will not make, and the ureq agents.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// A ureq agent that reports HTTP statuses as responses, not errors, and gives up after
/// `timeout` (a hung service fails the test instead of hanging the suite).
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// GET http://127.0.0.1:port/health once; the status, or the transport error's text.
pub fn health_status(port: u16) -> Result<u16, String> {
    agent(Duration::from_secs(2))
        .get(&format!("http://127.0.0.1:{port}/health"))
        .call()
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

pub struct TestResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl std::fmt::Debug for TestResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {:?} {}", self.status, self.headers, self.body)
    }
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): HTTP {} {:?}",
                self.status, self.body
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status; response: {self:?}");
        self
    }

    /// Asserts the status and the error shape `{"error":"…","code":"…"}`; returns the body.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        self.assert_status(status);
        let body = self.json();
        assert_eq!(
            body["code"], code,
            "unexpected error code; response: {self:?}"
        );
        assert!(
            body["error"].as_str().is_some_and(|s| !s.trim().is_empty()),
            "an error needs a sentence for a person in \"error\"; response: {self:?}"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "errors are JSON; response: {self:?}"
        );
        body
    }

    /// `details.field` of a validation error.
    #[track_caller]
    pub fn assert_validation_failed(&self, field: &str) {
        let body = self.assert_error(400, "validation_failed");
        assert_eq!(
            body["details"]["field"], field,
            "wrong field named; response: {self:?}"
        );
    }
}

/// One client connection written by hand: each `send` writes bytes and reads one response.
pub struct RawConnection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConnection {
    /// A fresh connection to 127.0.0.1:`port`.
    pub fn open(port: u16) -> RawConnection {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        RawConnection {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `request` and reads the next response; `None` if the server closed the
    /// connection without one.
    pub fn send(&mut self, request: &[u8]) -> Option<TestResponse> {
        // The server may answer before reading all of a large body, and close: keep going.
        let _ = self.stream.write_all(request);
        let _ = self.stream.flush();
        self.read_response()
    }

    /// Reads the next response (framed by Content-Length or chunked, else up to EOF).
    pub fn read_response(&mut self) -> Option<TestResponse> {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some((response, used)) = parse_response(&self.buf) {
                self.buf.drain(..used);
                return Some(response);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if self.buf.is_empty() && e.kind() != std::io::ErrorKind::ConnectionReset =>
                {
                    panic!("raw request: no answer: {e}")
                }
                Err(_) => break,
            }
        }
        let (status, headers, body_start) = parse_head(&self.buf)?;
        let body = String::from_utf8_lossy(&self.buf[body_start..]).into_owned();
        self.buf.clear();
        Some(TestResponse {
            status,
            headers,
            body,
        })
    }
}

/// A complete response at the start of `buf`, if it holds one, and the bytes it took.
fn parse_response(buf: &[u8]) -> Option<(TestResponse, usize)> {
    let (status, headers, body_start) = parse_head(buf)?;
    let body = &buf[body_start..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (decoded, used) = if header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        decode_chunked(body)?
    } else if let Some(length) =
        header("content-length").and_then(|v| v.trim().parse::<usize>().ok())
    {
        if body.len() < length {
            return None;
        }
        (body[..length].to_vec(), length)
    } else {
        return None;
    };
    let response = TestResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&decoded).into_owned(),
    };
    Some((response, body_start + used))
}

/// Status, headers and the length of the head.
type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, end + 4))
}

/// The decoded body and the bytes it took, once the last chunk has arrived.
fn decode_chunked(body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + body[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers are expected: the final CRLF ends the body.
            return (body.len() >= at + 2).then_some((out, at + 2));
        }
        if body.len() < at + size + 2 {
            return None;
        }
        out.extend_from_slice(&body[at..at + size]);
        at += size + 2;
    }
}
