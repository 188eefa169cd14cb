//! Local (PATCHES.md, 16): one connection, served by its own thread.
//!
//! The thread reads a whole request (`wire::RequestReader`), hands it to the application
//! through the server's queue, waits for the answer, and writes it itself: so a worker
//! never touches a socket, and a client that sends slowly, or never reads, holds only this
//! thread. One request at a time: the next is read only once the answer is written.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Connection;
use crate::request::{Outgoing, Request};
use crate::util::MessagesQueue;
use crate::wire::{Limits, Next, RequestReader, Wire};
use crate::{HTTPVersion, Message, ResponseBox};

/// What every connection of a server shares.
pub(crate) struct Shared {
    pub messages: Arc<MessagesQueue<Message>>,
    pub stopping: Arc<AtomicBool>,
    /// Connections between a request's first byte and the end of writing its answer
    /// (PATCHES.md, 18).
    pub busy: Arc<AtomicUsize>,
    pub limits: Limits,
    pub refusal: crate::Refusal,
    pub direct: Option<crate::Direct>,
}

/// After a refusal, how long (and how much) the client's remaining bytes are read and
/// dropped before the socket closes. Closing with unread data resets the connection,
/// and a client still sending its body (most write it all before reading) would see the
/// reset instead of the answer. Nothing read here is parsed.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

pub(crate) fn serve(conn: Connection, remote_addr: Option<SocketAddr>, shared: &Shared) {
    let mut conn = Timed::new(conn);
    let mut reader = RequestReader::new(shared.limits.clone());
    loop {
        if !reader.wait_for_request(&mut conn) {
            return;
        }
        let _busy = Busy::new(&shared.busy);
        let parsed = match reader.next_request(&mut conn) {
            Next::Request(parsed) => parsed,
            Next::Closed => return,
            Next::Refused(status) => {
                let mut bytes = Vec::new();
                let _ = (shared.refusal)(status).raw_print_closing(
                    &mut bytes,
                    HTTPVersion(1, 1),
                    &[],
                    false,
                    None,
                    true,
                );
                let deadline = Instant::now() + shared.limits.write_timeout;
                let written = conn.write_by(&bytes, deadline).is_ok();
                drop(_busy);
                if written {
                    linger(&mut conn);
                }
                return;
            }
        };
        // Once the server stops, the request read is the connection's last.
        let last = parsed.last || shared.stopping.load(Ordering::SeqCst);
        let (answer, answered) = mpsc::sync_channel(1);
        let request = Request::read(parsed, remote_addr, last, shared.stopping.clone(), answer);
        let queued = match &shared.direct {
            Some(direct) => direct(request),
            None => Some(request),
        };
        if let Some(request) = queued {
            shared.messages.push(Message::NewRequest(request));
        }
        let Ok(Outgoing { bytes, close }) = answered.recv() else {
            return;
        };
        let deadline = Instant::now() + shared.limits.write_timeout;
        if conn.write_by(&bytes, deadline).is_err() {
            return;
        }
        drop(_busy);
        if close {
            linger(&mut conn);
            return;
        }
    }
}

/// Counts its connection in `Shared::busy` while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn new(busy: &'a AtomicUsize) -> Busy<'a> {
        busy.fetch_add(1, Ordering::SeqCst);
        Busy(busy)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A graceful close: no more writes, then what the client still sends is dropped until it
/// closes too (or `LINGER` passes).
fn linger(conn: &mut Timed) {
    let _ = conn.conn.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut buf = [0u8; 8 * 1024];
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        match conn.read_by(&mut buf, until) {
            Ok(0) | Err(_) => return,
            Ok(n) => dropped += n,
        }
    }
}

/// A connection and the timeouts its socket was last given. Each request's deadlines are
/// usually as far off as the last one's, and setting a timeout is a system call per read
/// and per write: one already set is kept when it ends at most `SLACK` before the
/// deadline, never after it. A new one ends half of `SLACK` before the deadline: the
/// kernel rounds it up to its next tick, and the next request's deadline, a little
/// later, keeps it.
struct Timed {
    conn: Connection,
    read: Option<Duration>,
    write: Option<Duration>,
}

const SLACK: Duration = Duration::from_millis(20);

impl Timed {
    fn new(conn: Connection) -> Timed {
        Timed {
            conn,
            read: None,
            write: None,
        }
    }
}

/// Whether a socket whose timeout is `set` needs a new one, with `left` to the deadline.
fn resets(set: Option<Duration>, left: Duration) -> bool {
    !set.is_some_and(|set| set <= left && left - set <= SLACK)
}

/// The timeout to set with `left` to the deadline.
fn timeout_for(left: Duration) -> Duration {
    left.saturating_sub(SLACK / 2).max(Duration::from_millis(1))
}

/// Gives the socket a new timeout through `apply` unless the one `set` still serves, with
/// `left` to the deadline; `set` is unknown (`None`) if that fails.
fn refresh(
    set: &mut Option<Duration>,
    left: Duration,
    apply: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    if resets(*set, left) {
        let timeout = timeout_for(left);
        *set = None;
        apply(Some(timeout))?;
        *set = Some(timeout);
    }
    Ok(())
}

impl Wire for Timed {
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let Timed { conn, read, .. } = self;
        refresh(read, time_left(deadline)?, |t| conn.set_read_timeout(t))?;
        conn.read(buf)
    }

    fn write_by(&mut self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            let Timed { conn, write, .. } = self;
            refresh(write, time_left(deadline)?, |t| conn.set_write_timeout(t))?;
            match conn.write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What is left until `deadline`, never zero (which would mean no timeout at all).
fn time_left(deadline: Instant) -> io::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if left >= Duration::from_millis(1) => Ok(left),
        _ => Err(ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(10);

    #[test]
    fn a_socket_without_a_timeout_gets_one() {
        assert!(resets(None, S));
    }

    #[test]
    fn a_timeout_ending_a_little_before_the_deadline_is_kept() {
        assert!(!resets(Some(S), S));
        assert!(!resets(Some(S), S + SLACK));
    }

    #[test]
    fn a_timeout_ending_after_the_deadline_is_replaced() {
        assert!(resets(Some(S), S - Duration::from_millis(1)));
    }

    #[test]
    fn a_timeout_ending_well_before_the_deadline_is_replaced() {
        assert!(resets(Some(S), S + SLACK + Duration::from_millis(1)));
    }

    #[test]
    fn a_new_timeout_ends_before_the_deadline_and_is_kept_for_the_next_one() {
        let set = timeout_for(S);
        assert!(set < S);
        assert!(!resets(Some(set), S));
        // The next request's deadline, a little later or a little sooner.
        assert!(!resets(Some(set), S + Duration::from_millis(3)));
        assert!(!resets(Some(set), S - Duration::from_millis(3)));
        assert_eq!(
            timeout_for(Duration::from_millis(2)),
            Duration::from_millis(1)
        );
    }
}
