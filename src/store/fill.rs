//! The thread that gives orders written without `lines` (before V8, or by an older
//! instance on a shared database) their lines, once per start, in the background: reads
//! take such orders' lines from `order_items` meanwhile, so start-up does not wait for
//! a fill that takes a while on a big store (a million orders: 4.6 s on SQLite here,
//! 22 s on PostgreSQL).

use super::WriterHandle;
use crate::threads::Stoppable;
use std::time::Duration;

pub struct FillHandle(Stoppable);

impl FillHandle {
    /// Asks the fill to stop after its step and waits up to `within`. False if it is left
    /// behind, its step still waiting for the writer.
    pub fn shutdown(self, within: Duration) -> bool {
        self.0.stop(within, "lines fill: still in a step")
    }
}

/// Starts the fill; the thread ends when `WriterHandle::fill_lines` returns.
pub fn spawn(writer: WriterHandle) -> std::io::Result<FillHandle> {
    let thread = Stoppable::spawn("lines-fill", false, move |stop| {
        match writer.fill_lines(&stop) {
            Ok(0) => {}
            Ok(filled) => log::info!(
                "orders given their lines on their row (written before V8, or by an older instance): {filled}"
            ),
            Err(e) => log::warn!(
                "lines fill: {e}; the orders still without them are read from order_items until the next start"
            ),
        }
    })?;
    Ok(FillHandle(thread))
}
