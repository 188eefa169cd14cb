//! Threads the service cannot work without: the writer and the relay.

use std::thread::JoinHandle;

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
