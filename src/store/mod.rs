//! Everything that touches the database: connections, migrations, queries and the writer.
//! Only this module writes SQL.

mod outbox;
mod reads;
mod writer;
mod writes;

pub use outbox::{BlockedEvent, OutboxRow, OutboxStats};
pub use reads::{CachedProduct, IdempotencyRecord, Reader};
pub use writer::{Created, NewOrderRecord, Writer, WriterHandle};

use rusqlite::{Connection, OpenFlags};
use std::fmt;
use std::path::Path;
use std::time::Duration;

mod embedded {
    refinery::embed_migrations!("migrations");
}

#[derive(Debug)]
pub enum StoreError {
    NotFound,
    InvalidTransition {
        from: crate::domain::Status,
        to: crate::domain::Status,
    },
    IdempotencyKeyReused,
    /// The writer is gone or did not answer in time.
    Unavailable(String),
    Db(rusqlite::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound => f.write_str("order not found"),
            StoreError::InvalidTransition { from, to } => {
                write!(f, "an order cannot go from {from} to {to}")
            }
            StoreError::IdempotencyKeyReused => f.write_str("idempotency key reused"),
            StoreError::Unavailable(why) => write!(f, "database unavailable: {why}"),
            StoreError::Db(e) => write!(f, "database: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e)
    }
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if needed) the one write connection: WAL, full fsync on commit.
pub fn open_write(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {}", dir.display(), e))
        })?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before the writer answers (2xx means durable).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// A read-only connection; each HTTP worker and the relay own one.
pub fn open_read(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Applies the embedded migrations that the database has not seen; returns their names.
pub fn migrate(conn: &mut Connection) -> Result<Vec<String>, String> {
    let report = embedded::migrations::runner()
        .run(conn)
        .map_err(|e| format!("migrations: {e}"))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// Copies the live database into `dest` consistently, with the service running or not.
pub fn backup(src: &Path, dest: &Path) -> Result<(), StoreError> {
    if dest.exists() {
        return Err(StoreError::Unavailable(format!(
            "{} exists already; choose a new path",
            dest.display()
        )));
    }
    let from = open_read(src)?;
    let mut to = Connection::open(dest)?;
    let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
    backup.run_to_completion(256, Duration::from_millis(10), None)?;
    Ok(())
}
