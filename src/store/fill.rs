//! The thread that gives orders written without `lines` (before V8, or by an older
//! instance on a shared database) their lines, once per start, in the background: reads
//! take such orders' lines from `order_items` meanwhile, so start-up does not wait for
//! a fill that takes a while on a big store (a million orders: 4.6 s on SQLite here,
//! 22 s on PostgreSQL).

use super::WriterHandle;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct FillHandle {
    stop: Sender<()>,
    /// Disconnected when the thread ends.
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl FillHandle {
    /// Asks the fill to stop after its step and waits up to `within`. False if it is left
    /// behind, its step still waiting for the writer.
    pub fn shutdown(self, within: Duration) -> bool {
        drop(self.stop);
        match self.done.recv_timeout(within) {
            Err(RecvTimeoutError::Timeout) => {
                log::warn!(
                    "lines fill: still in a step after {} ms; leaving it",
                    within.as_millis()
                );
                false
            }
            _ => {
                let _ = self.thread.join();
                true
            }
        }
    }
}

/// Starts the fill; the thread ends when `WriterHandle::fill_lines` returns.
pub fn spawn(writer: WriterHandle) -> std::io::Result<FillHandle> {
    let (stop, stopped) = bounded::<()>(0);
    let (done_tx, done) = bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name("lines-fill".into())
        .spawn(move || {
            let _done = done_tx;
            match writer.fill_lines(&stopped) {
                Ok(0) => {}
                Ok(filled) => log::info!(
                    "orders given their lines on their row (written before V8, or by an older instance): {filled}"
                ),
                Err(e) => log::warn!(
                    "lines fill: {e}; the orders still without them are read from order_items until the next start"
                ),
            }
        })?;
    Ok(FillHandle { stop, done, thread })
}
