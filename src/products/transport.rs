//! The product service's connections: TCP as ureq's own transport does it, with a
//! cheaper check that a kept connection is still usable.
//!
//! ureq checks a pooled connection twice a lookup, when it is handed back and when it
//! is taken again, each time by switching the socket to non-blocking, reading, and
//! switching it back: three system calls, six a lookup, a quarter of the service's own
//! under creates. One `recv` with `MSG_PEEK | MSG_DONTWAIT` answers the same question:
//! nothing waiting means open; an end of stream, an error or bytes nobody asked for mean
//! the connection is not used again. ureq's TCP transport is not public, so reads and
//! writes are done here as it does them: each with its time left set on the socket
//! (only when it changed), a timeout reported as ureq's, an interrupted read retried.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};

/// Connects to the product service (after ureq's CONNECT proxy, if one is configured,
/// whose connection it passes on).
#[derive(Debug, Default)]
pub(super) struct PeekingConnector;

impl<In: Transport> Connector<In> for PeekingConnector {
    type Out = Box<dyn Transport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        if let Some(proxied) = chained {
            return Ok(Some(proxied.boxed()));
        }
        let stream = connect(details)?;
        if details.config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let stream = Arc::new(stream);
        // The agent shuts the socket down through this to end a call under way.
        (details.register_shutdown)(Arc::downgrade(&stream) as _)?;
        let config = details.config;
        Ok(Some(Box::new(Peeking {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            read_timeout: None,
            write_timeout: None,
        })))
    }
}

/// Tries the resolved addresses in turn within the connect timeout: each but the last
/// gets half of the time left, the last all of it.
fn connect(details: &ConnectionDetails) -> Result<TcpStream, ureq::Error> {
    let deadline = deadline(details.timeout);
    let mut last = None;
    let count = details.addrs.len();
    for (n, addr) in details.addrs.iter().enumerate() {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            break;
        }
        let attempt = match left {
            Some(left) if n + 1 < count => TcpStream::connect_timeout(addr, (left / 2).max(MIN)),
            Some(left) => TcpStream::connect_timeout(addr, left),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            ureq::Error::Timeout(details.timeout.reason)
        }
        Some(e) => ureq::Error::Io(e),
        None => ureq::Error::Timeout(details.timeout.reason),
    })
}

/// The least time an address but the last is given.
const MIN: Duration = Duration::from_millis(10);

fn deadline(timeout: NextTimeout) -> Option<Instant> {
    if timeout.after.is_not_happening() {
        None
    } else {
        Instant::now().checked_add(*timeout.after)
    }
}

#[derive(Debug)]
struct Peeking {
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    /// The timeouts last set on the socket.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

/// The time `timeout` leaves, as a socket timeout: none if it never comes, and never
/// zero, which a socket takes for none (ureq's own rule).
fn socket_timeout(timeout: &NextTimeout) -> Option<Duration> {
    timeout.not_zero().map(|t| *t)
}

fn timed_out(e: std::io::Error, timeout: &NextTimeout) -> ureq::Error {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ureq::Error::Timeout(timeout.reason),
        _ => ureq::Error::Io(e),
    }
}

impl Transport for Peeking {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let wanted = socket_timeout(&timeout);
        if wanted != self.write_timeout {
            self.stream.set_write_timeout(wanted)?;
            self.write_timeout = wanted;
        }
        let output = &self.buffers.output()[..amount];
        (&*self.stream)
            .write_all(output)
            .map_err(|e| timed_out(e, &timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let wanted = socket_timeout(&timeout);
        let started = Instant::now();
        let read = |this: &mut Self, limit: Option<Duration>| {
            if limit != this.read_timeout {
                this.stream.set_read_timeout(limit)?;
                this.read_timeout = limit;
            }
            (&*this.stream).read(this.buffers.input_append_buf())
        };
        let mut limit = wanted;
        let amount = loop {
            match read(self, limit) {
                // A signal cut the wait short: wait again for what is left of it.
                Err(e) if e.kind() == ErrorKind::Interrupted => match wanted {
                    None => return Err(ureq::Error::Io(e)),
                    Some(w) => {
                        let left = w.saturating_sub(started.elapsed());
                        if left.is_zero() {
                            return Err(ureq::Error::Timeout(timeout.reason));
                        }
                        limit = Some(left);
                    }
                },
                result => break result.map_err(|e| timed_out(e, &timeout))?,
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        still_open(&self.stream)
    }
}

/// Whether a kept connection may carry another request: nothing is waiting on it.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    loop {
        // SAFETY: a one-byte buffer of our own, on a socket this transport holds open.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            // 0: the peer closed it; 1: bytes after the answer, which no request asked for.
            return false;
        }
        match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock => return true,
            std::io::ErrorKind::Interrupted => continue,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::still_open;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn settled() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    #[test]
    fn an_idle_connection_is_open_and_stays_blocking() {
        let (client, _server) = pair();
        assert!(still_open(&client));
        assert!(
            still_open(&client),
            "the probe took nothing and changed nothing"
        );
        // Still a blocking socket: a read with a timeout waits, it does not fail at once.
        client
            .set_read_timeout(Some(std::time::Duration::from_millis(30)))
            .unwrap();
        let started = std::time::Instant::now();
        let _ = std::io::Read::read(&mut &client, &mut [0u8; 1]);
        assert!(started.elapsed() >= std::time::Duration::from_millis(25));
    }

    #[test]
    fn a_connection_the_peer_closed_is_not_open() {
        let (client, server) = pair();
        drop(server);
        settled();
        assert!(!still_open(&client));
    }

    #[test]
    fn a_connection_with_bytes_nobody_asked_for_is_not_open() {
        let (client, mut server) = pair();
        server.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        settled();
        assert!(!still_open(&client));
    }
}
