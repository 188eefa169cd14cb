//! A TCP proxy on 127.0.0.1 in front of a local server (PostgreSQL on 5432), which a test
//! cuts and restores to take the server away from a service and give it back.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

struct Shared {
    upstream: SocketAddr,
    /// Guarded by `live`: new connections are piped only while open.
    open: AtomicBool,
    stopping: AtomicBool,
    /// Both ends of every piped connection, so that `cut` can close them.
    live: Mutex<Vec<TcpStream>>,
    /// Connections piped so far.
    piped: AtomicU64,
    /// Connections accepted and closed at once, while cut.
    refused: AtomicU64,
    /// Cleared by `black_hole`: bytes are read and dropped, both ways.
    forwarding: AtomicBool,
}

/// Listens on 127.0.0.1:<some port> and pipes every connection both ways to
/// 127.0.0.1:`upstream`.
pub struct PortProxy {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl PortProxy {
    pub fn to(upstream: u16) -> PortProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream)),
            open: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
            piped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            forwarding: AtomicBool::new(true),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, &shared))
        };
        PortProxy {
            port,
            shared,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every live connection, both ends; new ones are accepted and closed at once,
    /// as a server that went away would leave them.
    pub fn cut(&self) {
        let mut live = self.shared.live.lock().unwrap();
        self.shared.open.store(false, Ordering::SeqCst);
        for stream in live.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Pipes new connections again.
    pub fn restore(&self) {
        let _live = self.shared.live.lock().unwrap();
        self.shared.open.store(true, Ordering::SeqCst);
        self.shared.forwarding.store(true, Ordering::SeqCst);
    }

    /// A server that hangs: every connection stays open, but from now on nothing said on
    /// it arrives, either way; `restore` forwards again.
    pub fn black_hole(&self) {
        self.shared.forwarding.store(false, Ordering::SeqCst);
    }

    /// Connections piped so far.
    pub fn piped(&self) -> u64 {
        self.shared.piped.load(Ordering::SeqCst)
    }

    /// Connections accepted and closed at once while cut: how often a client dialled a
    /// server that was away.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for PortProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        if !shared.open.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2))
        else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        {
            let mut live = shared.live.lock().unwrap();
            // Checked again under the lock, so a `cut` in between cannot miss this one.
            if !shared.open.load(Ordering::SeqCst) {
                shared.refused.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
                continue;
            }
            live.push(client.try_clone().expect("clone a socket"));
            live.push(upstream.try_clone().expect("clone a socket"));
        }
        shared.piped.fetch_add(1, Ordering::SeqCst);
        let (c2, u2) = (
            client.try_clone().expect("clone a socket"),
            upstream.try_clone().expect("clone a socket"),
        );
        let (s1, s2) = (shared.clone(), shared.clone());
        std::thread::spawn(move || pipe(client, upstream, &s1));
        std::thread::spawn(move || pipe(u2, c2, &s2));
    }
}

/// Copies `from` to `to` until either side ends, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) if !shared.forwarding.load(Ordering::SeqCst) => {}
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
