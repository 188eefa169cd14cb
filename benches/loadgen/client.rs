//! A keep-alive HTTP/1.1 client on a raw `TcpStream`: one per client thread, no pool, no
//! allocation per request beyond the answer's body, so that what is measured is the
//! server and not the client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
}

impl Request {
    pub fn get(path: String) -> Request {
        Request {
            method: "GET",
            path,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Request {
        self.headers.push((name, value.into()));
        self
    }

    pub fn json(mut self, method: &'static str, body: String) -> Request {
        self.method = method;
        self.headers
            .push(("Content-Type", "application/json".to_string()));
        self.body = Some(body);
        self
    }
}

pub struct Response {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// One connection, opened on first use and again after the server closed it.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    out: Vec<u8>,
    line: String,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            out: Vec::with_capacity(1024),
            line: String::with_capacity(256),
        }
    }

    pub fn send(&mut self, req: &Request) -> std::io::Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_write_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(BufReader::with_capacity(64 * 1024, s));
        }
        self.out.clear();
        write!(
            self.out,
            "{} {} HTTP/1.1\r\nHost: loadgen\r\n",
            req.method, req.path
        )?;
        for (name, value) in &req.headers {
            write!(self.out, "{name}: {value}\r\n")?;
        }
        if let Some(body) = &req.body {
            write!(self.out, "Content-Length: {}\r\n\r\n{body}", body.len())?;
        } else {
            self.out.extend_from_slice(b"\r\n");
        }
        let stream = self.stream.as_mut().expect("connected above");
        let result = stream
            .get_mut()
            .write_all(&self.out)
            .and_then(|_| read_response(stream, &mut self.line));
        match result {
            Ok((response, close)) => {
                if close {
                    self.stream = None;
                }
                Ok(response)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one answer; also says whether the server closes the connection after it.
fn read_response(
    r: &mut BufReader<TcpStream>,
    line: &mut String,
) -> std::io::Result<(Response, bool)> {
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before an answer",
        ));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut length, mut chunked, mut close, mut location) = (None, false, false, None);
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(bad("connection closed in the head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| bad("bad length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_string());
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                loop {
                    line.clear();
                    if r.read_line(line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(line)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if close {
        r.read_to_end(&mut body)?;
    }
    Ok((
        Response {
            status,
            location,
            body,
        },
        close,
    ))
}
