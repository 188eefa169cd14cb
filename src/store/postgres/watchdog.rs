//! How long a session may wait on PostgreSQL. Its client times nothing once connected:
//! a server that stops answering while its host still acknowledges what it is sent (a
//! stopped process, storage that hangs, a proxy that keeps the connection open) held the
//! request waiting on it, and the HTTP worker or writing session under it, for good; a
//! few such requests and the instance answered nothing. The connect's own start-up
//! exchange is not timed either, only the TCP connect (`connect_timeout`).
//!
//! So each session notes when it starts waiting on the server. Past `DATABASE_TIMEOUT`
//! (a connect: past `DATABASE_CONNECT_TIMEOUT`) a watchdog thread shuts its socket down:
//! the wait ends in an error, the request gets 503, and the next use connects again. A
//! live server ends a lock wait itself a second sooner (`lock_timeout`, `Connector::setup`),
//! and a statement half a second sooner (`statement_timeout`), rolling it back: a create
//! is one statement that commits by itself, and the watchdog's cut does not stop it.
//!
//! The client does not show its socket. Connects are made one at a time, and a connect's
//! socket is the one connected to the server that was not there before it.

use crate::store::StoreError;
use postgres::config::Host;
use postgres::{Client, NoTls};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How often the watchdog looks while a session waits or a connect is under way; with
/// neither, it sleeps until one begins.
const TICK: Duration = Duration::from_millis(100);
/// How much sooner than the watchdog the server ends a lock wait.
const LOCK_MARGIN: Duration = Duration::from_secs(1);

pub struct Watchdog {
    /// How long a statement may wait for its answer.
    answer: Duration,
    /// How long a connect may take, start-up exchange and all.
    connect: Duration,
    epoch: Instant,
    state: Mutex<State>,
    /// Whether a connect is under way: connects go one at a time (`turn`).
    connecting: Mutex<bool>,
    turn_over: Condvar,
    /// The watchdog's thread, once started (`None` if it could not be).
    thread: OnceLock<Option<std::thread::Thread>>,
    /// The thread sleeps until woken: when it last looked, nothing was timed. An idle
    /// service's thread otherwise woke ten times a second, for nothing.
    asleep: AtomicBool,
}

#[derive(Default)]
struct State {
    sessions: Vec<Arc<Slot>>,
    /// The connect under way.
    connect: Option<Connect>,
}

struct Connect {
    /// When the connect's time is up, its wait for its turn included.
    deadline: Instant,
    peers: Vec<Peer>,
    /// The sockets to the server there were before it.
    before: Vec<RawFd>,
    /// Its time is up: told once, its sockets shut as they come.
    overdue: bool,
}

impl Connect {
    /// The sockets to the server made since the connect began: its own, as connects are
    /// one at a time.
    fn made(&self) -> Vec<RawFd> {
        let mut made = sockets_to(&self.peers);
        made.retain(|fd| !self.before.contains(fd));
        made
    }
}

/// One session's socket and whether it waits on the server.
struct Slot {
    fd: RawFd,
    /// Microseconds since the epoch, plus one, since the session waits; 0 when it does not.
    waiting_since: AtomicU64,
    cut: AtomicBool,
}

/// A session's side: held with its client, dropped before it (the socket is forgotten
/// before it closes and its number can be another socket's).
pub struct Watched {
    dog: Arc<Watchdog>,
    slot: Option<Arc<Slot>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watchdog {
    pub fn new(answer: Duration, connect: Duration) -> Arc<Watchdog> {
        Arc::new(Watchdog {
            answer,
            connect,
            epoch: Instant::now(),
            state: Mutex::default(),
            connecting: Mutex::new(false),
            turn_over: Condvar::new(),
            thread: OnceLock::new(),
            asleep: AtomicBool::new(false),
        })
    }

    /// How long a statement may wait for its answer before its session is closed.
    pub fn answer_timeout(&self) -> Duration {
        self.answer
    }

    /// How long a timed session's lock waits may last before the server cancels them:
    /// a second less than the answer's time, so that a live server ends them first.
    pub fn lock_timeout(&self) -> Duration {
        self.answer.saturating_sub(LOCK_MARGIN).max(LOCK_MARGIN / 2)
    }

    /// How long a timed session's statement may run before the server cancels it, and
    /// rolls it back: half a second less than the answer's time, so that a live server
    /// ends it before the watchdog cuts it, and after a lock wait's own end.
    pub fn statement_timeout(&self) -> Duration {
        self.answer
            .saturating_sub(LOCK_MARGIN / 2)
            .max(self.lock_timeout())
    }

    /// Connects, the watchdog timing the whole connect; `bounded`: the session's
    /// statements are timed too (not a maintenance session's, the migrations' or an
    /// import's, whose statements may rightly take long).
    pub fn connect(
        self: &Arc<Self>,
        config: &postgres::Config,
        bounded: bool,
    ) -> Result<(Client, Watched), StoreError> {
        self.start();
        let deadline = Instant::now() + self.connect;
        let _turn = self.turn(deadline)?;
        let peers = peers(config);
        let before = sockets_to(&peers);
        locked(&self.state).connect = Some(Connect {
            deadline,
            peers,
            before,
            overdue: false,
        });
        self.wake();
        let connected = config.connect(NoTls);
        let mut state = locked(&self.state);
        let connect = state.connect.take();
        let client = connected?;
        // A session whose statements are not timed needs no slot.
        let new = match connect.filter(|_| bounded) {
            Some(connect) => connect.made(),
            None => Vec::new(),
        };
        let slot = match new[..] {
            [fd] => {
                let slot = Arc::new(Slot {
                    fd,
                    waiting_since: AtomicU64::new(0),
                    cut: AtomicBool::new(false),
                });
                state.sessions.push(slot.clone());
                Some(slot)
            }
            _ if !bounded => None,
            _ => {
                log::debug!(
                    "database: {} sockets made by a connect (another client's in this \
                     process?): the new session's statements are not timed",
                    new.len()
                );
                None
            }
        };
        drop(state);
        Ok((
            client,
            Watched {
                dog: self.clone(),
                slot,
            },
        ))
    }

    /// Waits, until `deadline` at most, for the connect under way to end. Without the
    /// bound, while the server does not answer, each connect would wait for all those
    /// before it to time out.
    fn turn(&self, deadline: Instant) -> Result<Turn<'_>, StoreError> {
        let mut busy = locked(&self.connecting);
        while *busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable(format!(
                    "no connect within {} s",
                    self.connect.as_secs()
                )));
            }
            busy = (self.turn_over.wait_timeout(busy, left))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy = true;
        Ok(Turn(self))
    }

    fn start(self: &Arc<Self>) {
        self.thread.get_or_init(|| {
            let dog = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("db-watchdog".into())
                .spawn(move || watch(dog));
            match spawned {
                Ok(handle) => Some(handle.thread().clone()),
                Err(e) => {
                    log::error!(
                        "database: no watchdog thread ({e}): waits on the server are not timed"
                    );
                    None
                }
            }
        });
    }

    /// Wakes the thread if it sleeps: a wait or a connect began. Cheap when it does not
    /// (a load), as it never does while sessions keep waiting.
    fn wake(&self) {
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            if let Some(Some(thread)) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// Whether a session waits or a connect is under way.
    fn timing(&self) -> bool {
        let state = locked(&self.state);
        state.connect.is_some()
            || state
                .sessions
                .iter()
                .any(|s| s.waiting_since.load(Ordering::SeqCst) != 0)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Ends the waits that went on too long.
    fn look(&self) {
        let now = self.now();
        let mut state = locked(&self.state);
        let limit = self.answer.as_micros() as u64;
        for slot in &state.sessions {
            let since = slot.waiting_since.load(Ordering::Acquire);
            let over = since != 0 && now.saturating_sub(since) > limit;
            // Unless the wait ended (or another began) meanwhile.
            if over
                && slot
                    .waiting_since
                    .compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                slot.cut.store(true, Ordering::Release);
                shut(slot.fd);
                log::warn!(
                    "database: no answer within {} s; the session is closed and the next \
                     use connects again",
                    self.answer.as_secs()
                );
            }
        }
        // Watched until it returns, not only until its deadline: its TCP connect has a
        // timeout of its own, begun when its turn came, and a socket made after the
        // deadline would have its start-up exchange wait on a hung server untimed.
        if let Some(connect) = &mut state.connect {
            if Instant::now() > connect.deadline {
                for fd in connect.made() {
                    shut(fd);
                }
                if !connect.overdue {
                    connect.overdue = true;
                    log::warn!(
                        "database: a connect got no answer within {} s",
                        self.connect.as_secs()
                    );
                }
            }
        }
    }
}

/// A connect's turn, over when dropped.
struct Turn<'a>(&'a Watchdog);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *locked(&self.0.connecting) = false;
        self.0.turn_over.notify_one();
    }
}

fn watch(dog: Weak<Watchdog>) {
    loop {
        std::thread::sleep(TICK);
        let Some(dog) = dog.upgrade() else { return };
        dog.look();
        // Asleep first, then a last look: a wait beginning meanwhile sees the one (and
        // wakes the thread) or is seen by the other (both sides SeqCst).
        dog.asleep.store(true, Ordering::SeqCst);
        if dog.timing() {
            dog.asleep.store(false, Ordering::SeqCst);
            continue;
        }
        drop(dog);
        // Until a wait or a connect wakes it, or the watchdog is dropped.
        std::thread::park();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(Some(thread)) = self.thread.get() {
            thread.unpark();
        }
    }
}

fn shut(fd: RawFd) {
    // SAFETY: `fd` is a socket a live session holds (the state's lock keeps it from
    // closing meanwhile); shutdown ends its waits and leaves closing it to its owner.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

impl Watched {
    /// Runs `call`, a wait on the server, timed.
    pub fn waiting<T>(&self, call: impl FnOnce() -> T) -> T {
        let Some(slot) = &self.slot else {
            return call();
        };
        slot.waiting_since.store(self.dog.now(), Ordering::SeqCst);
        self.dog.wake();
        let result = call();
        slot.waiting_since.store(0, Ordering::Release);
        result
    }

    /// Whether the watchdog ended the session (its last wait went on too long).
    pub fn was_cut(&self) -> bool {
        self.slot
            .as_ref()
            .is_some_and(|s| s.cut.load(Ordering::Acquire))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            locked(&self.dog.state)
                .sessions
                .retain(|s| !Arc::ptr_eq(s, slot));
        }
    }
}

/// Where `config` connects: each host's addresses (or its `hostaddr`), with its port.
fn peers(config: &postgres::Config) -> Vec<Peer> {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let addrs = config.get_hostaddrs();
    if !addrs.is_empty() {
        return (addrs.iter().enumerate())
            .map(|(i, a)| Peer::Tcp(SocketAddr::new(*a, port(i))))
            .collect();
    }
    let mut peers = Vec::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        match host {
            Host::Tcp(name) => {
                let found = (name.as_str(), port(i)).to_socket_addrs();
                peers.extend(found.into_iter().flatten().map(Peer::Tcp));
            }
            Host::Unix(dir) => peers.push(Peer::Unix(dir.join(format!(".s.PGSQL.{}", port(i))))),
        }
    }
    peers
}

/// This process's sockets connected to one of `peers`.
fn sockets_to(peers: &[Peer]) -> Vec<RawFd> {
    let dir = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir,
        Err(e) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                log::warn!(
                    "database: this process's sockets cannot be listed (/proc/self/fd: {e}): \
                     waits on the server are not timed"
                )
            });
            return Vec::new();
        }
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| peer_of(fd).is_some_and(|p| peers.contains(&p)))
        .collect()
}

/// The address `fd` is connected to, if it is a connected socket.
fn peer_of(fd: RawFd) -> Option<Peer> {
    // SAFETY: all zeroes is a valid sockaddr_storage, which holds any address.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` has `len` bytes; an fd that is no socket fails (ENOTSOCK, EBADF).
    let got = unsafe { libc::getpeername(fd, (&raw mut addr).cast::<libc::sockaddr>(), &mut len) };
    if got != 0 {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says which address the storage holds.
            let a = unsafe { &*(&raw const addr).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(Peer::Tcp(SocketAddr::new(
                ip.into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above.
            let a = unsafe { &*(&raw const addr).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(Peer::Tcp(SocketAddr::new(
                ip.into(),
                u16::from_be(a.sin6_port),
            )))
        }
        libc::AF_UNIX => {
            // SAFETY: as above.
            let a = unsafe { &*(&raw const addr).cast::<libc::sockaddr_un>() };
            let path: Vec<u8> = a
                .sun_path
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            Some(Peer::Unix(PathBuf::from(std::ffi::OsStr::from_bytes(
                &path,
            ))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_db::TestDb;
    use super::*;
    use std::net::TcpListener;

    /// A server that takes connections and never answers: PostgreSQL hung.
    fn silent_server() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    #[test]
    fn a_connects_socket_made_after_its_deadline_is_shut_too() {
        use std::io::Read;
        let (_listener, port) = silent_server();
        let dog = Watchdog::new(Duration::from_secs(30), Duration::from_secs(1));
        let peers = vec![Peer::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))];
        locked(&dog.state).connect = Some(Connect {
            deadline: Instant::now() - Duration::from_millis(1),
            before: sockets_to(&peers),
            peers,
            overdue: false,
        });
        // Past its deadline, with no socket yet: its TCP connect is still under way.
        dog.look();
        let mut late = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        dog.look();
        late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let read = late.read(&mut [0u8; 1]);
        assert!(
            matches!(read, Ok(0)) && started.elapsed() < Duration::from_secs(1),
            "the late socket was left waiting on the server: {read:?} after {:?}",
            started.elapsed()
        );
    }

    fn config(port: u16) -> postgres::Config {
        let mut config: postgres::Config = format!("postgresql://someone@127.0.0.1:{port}/db")
            .parse()
            .unwrap();
        config.connect_timeout(Duration::from_secs(30));
        config
    }

    /// `n` connects at once to a server that never answers, with a connect timeout of
    /// 1 s (the TCP connect's is 30 s): how long each took to fail.
    fn connects_to_a_silent_server(n: usize) -> Vec<Duration> {
        let (listener, port) = silent_server();
        let dog = Watchdog::new(Duration::from_secs(30), Duration::from_secs(1));
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..n {
            let (dog, tx) = (dog.clone(), tx.clone());
            std::thread::spawn(move || {
                let _ = tx.send((dog.connect(&config(port), true).is_err(), started.elapsed()));
            });
        }
        let took = (0..n)
            .map(|_| {
                let (failed, took) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
                assert!(failed, "a server that never answers: an error");
                took
            })
            .collect();
        drop(listener);
        took
    }

    #[test]
    fn a_connect_that_gets_no_answer_ends_after_the_connect_timeout() {
        let took = connects_to_a_silent_server(1)[0];
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(3),
            "ended after the connect timeout of 1 s, not the TCP connect's 30 s: {took:?}"
        );
    }

    /// A watchdog with `answer` as its limit, on a fresh database (None without a server).
    fn on_a_database(answer: Duration) -> Option<(TestDb, postgres::Config, Arc<Watchdog>)> {
        let db = TestDb::create()?;
        let config: postgres::Config = db.url().parse().unwrap();
        Some((db, config, Watchdog::new(answer, Duration::from_secs(5))))
    }

    #[test]
    fn connects_at_the_same_time_each_end_within_the_connect_timeout() {
        for took in connects_to_a_silent_server(3) {
            assert!(
                took < Duration::from_millis(1800),
                "each within the 1 s, not one after the other: {took:?}"
            );
        }
    }

    #[test]
    fn a_session_is_known_by_its_socket_and_forgotten_when_it_ends() {
        let Some((_db, config, dog)) = on_a_database(Duration::from_secs(30)) else {
            return;
        };
        let (mut client, watched) = dog.connect(&config, true).unwrap();
        let slot = watched.slot.clone().expect("the session's socket is found");
        assert!(sockets_to(&peers(&config)).contains(&slot.fd));
        // The server sees the port the socket has here (no proxy in between).
        let port: i32 = client
            .query_one("SELECT inet_client_port()", &[])
            .unwrap()
            .get(0);
        // SAFETY: as in `peer_of`, for the local address.
        let local_port = unsafe {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::getsockname(slot.fd, (&raw mut addr).cast(), &mut len),
                0
            );
            u16::from_be(addr.sin_port)
        };
        assert_eq!(port, i32::from(local_port));
        assert_eq!(locked(&dog.state).sessions.len(), 1);
        drop(watched);
        assert!(locked(&dog.state).sessions.is_empty());
    }

    #[test]
    fn a_wait_past_the_limit_ends_in_an_error_and_a_short_one_does_not() {
        let Some((_db, config, dog)) = on_a_database(Duration::from_secs(1)) else {
            return;
        };
        let (mut client, watched) = dog.connect(&config, true).unwrap();
        // A statement that answers within the limit, the watchdog looking meanwhile.
        watched
            .waiting(|| client.batch_execute("SELECT pg_sleep(0.5)"))
            .unwrap();
        assert!(!watched.was_cut());
        let started = Instant::now();
        let slept = watched.waiting(|| client.batch_execute("SELECT pg_sleep(30)"));
        assert!(slept.is_err());
        assert!(watched.was_cut());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "ended after about 1 s: {:?}",
            started.elapsed()
        );
        assert!(client.is_closed());
        // A maintenance session's statements are not timed.
        let (mut client, watched) = dog.connect(&config, false).unwrap();
        watched
            .waiting(|| client.batch_execute("SELECT pg_sleep(1.5)"))
            .unwrap();
        assert!(!watched.was_cut());
    }
}
