//! Threads the service cannot work without (the writer and the relay), and threads
//! that stop when asked (the relay, the catalog refresher, the lines fill).

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Starts `body` on a named thread; a panic there ends the process with status 1.
/// Without its writer or relay the service would answer but not work, and a restart
/// (systemd's Restart=on-failure) is the way back; committed data is safe on disk.
pub fn spawn_critical(
    name: &'static str,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
                log::error!("the {name} thread panicked; exiting so the service can be restarted");
                std::process::exit(1);
            }
        })
}

/// A thread asked to stop through a channel: `stop` drops the sender, which the body's
/// receiver sees as disconnected; `done` disconnects when the body has returned.
pub struct Stoppable {
    stop: Sender<()>,
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl Stoppable {
    /// Starts `body` on a thread named `name`, handing it the receiver that says "stop";
    /// with `critical`, a panic ends the process (`spawn_critical`).
    pub fn spawn(
        name: &'static str,
        critical: bool,
        body: impl FnOnce(Receiver<()>) + Send + 'static,
    ) -> std::io::Result<Stoppable> {
        let (stop, stopped) = bounded::<()>(0);
        let (done_tx, done) = bounded::<()>(0);
        let run = move || {
            let _done = done_tx;
            body(stopped)
        };
        let thread = if critical {
            spawn_critical(name, run)?
        } else {
            std::thread::Builder::new().name(name.into()).spawn(run)?
        };
        Ok(Stoppable { stop, done, thread })
    }

    /// Asks the thread to stop and waits up to `within`. False if it has not ended by
    /// then: it is left behind, and `busy` (what it is still doing) is logged.
    pub fn stop(self, within: Duration, busy: &str) -> bool {
        drop(self.stop);
        match self.done.recv_timeout(within) {
            Err(RecvTimeoutError::Timeout) => {
                log::warn!("{busy} after {} ms; leaving it", within.as_millis());
                false
            }
            _ => {
                let _ = self.thread.join();
                true
            }
        }
    }
}

/// Whether the body of a `Stoppable` has been asked to stop, through the receiver it
/// was handed: the sender is dropped, never sent on.
pub fn stop_asked(stop: &Receiver<()>) -> bool {
    matches!(stop.try_recv(), Err(TryRecvError::Disconnected))
}
