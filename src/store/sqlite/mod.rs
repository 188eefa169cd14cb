//! The SQLite engine: connections, migrations, backup, the write session (`engine.rs`),
//! reads, and the statements behind them.

mod engine;
mod outbox;
mod reads;
mod writes;

pub use engine::SqliteEngine;
pub use reads::Reader;

use super::StoreError;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// A reader's page cache, as SQLite writes it: negative means KiB.
const READER_CACHE_KIB: i64 = -256;
/// The WAL grows past its usual 4 MB while a long read (a backup) holds checkpoints
/// back; after the next checkpoint it is cut back to this size instead of keeping its
/// largest size for good.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The WAL pages after which a commit of the writer's copies them into the database file.
/// Under creates, SQLite's 1,000 (4 MB) came every ~150 ms, and each copied again the
/// same hot pages (the tables' ends, the users' index and counts), fsync included, with
/// every caller of the batch waiting. At 4,000 (16 MB) the writer wrote 7% fewer bytes
/// per order and took 3-8% more creates a second. At 16,000 (64 MB, within
/// `JOURNAL_SIZE_LIMIT`), with creates at 12,000-13,000 a second, a checkpoint's stall
/// came a quarter as often: 12-15% more creates, their p99 7 ms instead of 13.
const CHECKPOINT_PAGES: i64 = 16000;

/// Opens (creating if needed) the one write connection: WAL, synced to disk on every
/// commit (`fdatasync`: .cargo/config.toml).
pub fn open_write(path: &Path) -> Result<Connection, StoreError> {
    create_private(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before the writer answers (2xx means durable).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// Makes `conn` the writer's: its temporary storage in memory. The writer runs each job
/// of a batch in a savepoint, whose journal holds the pages the job changed; past 64 KiB
/// SQLite moved it to a temporary file, and from then every page went through a write
/// call of its own until the commit, a third of the writer's writes. In memory it is
/// dropped at each job's RELEASE, and it never has to survive a crash (the WAL covers
/// that). Migrations run before, on the default: a large index build may sort on disk.
pub fn for_the_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    Ok(())
}

/// Query plans that do not depend on the values bound: otherwise SQLite re-plans a
/// statement each time a new value is bound to a parameter that its plan looked at (an
/// order's items, `WHERE order_id = ?1 ORDER BY line_no`, were parsed and planned anew on
/// every read), and the statement cache saves nothing. Every query here is a key lookup
/// whose plan is the same for any value.
fn stable_plans(conn: &Connection) -> Result<(), StoreError> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

/// Creates the database file 0600 (and any missing folder 0700) before SQLite does:
/// the orders hold customers' e-mail addresses. SQLite gives the -wal and -shm files
/// the database file's mode. Files and folders that exist already are left as they are.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let failed = |what: &Path, e: std::io::Error| {
        StoreError::Unavailable(format!("cannot create {}: {e}", what.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| failed(dir, e))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(failed(path, e)),
    }
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
    // Each HTTP worker has a reader; SQLite's default page cache (2 MB each) made most of
    // the process's memory under reads. The OS keeps the file's pages cached anyway.
    conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// Applies the embedded migrations that the database has not seen; returns their names.
pub fn migrate(conn: &mut Connection) -> Result<Vec<String>, String> {
    migrate_to(conn, refinery::Target::Latest)
}

/// Applies the embedded migrations up to `target` that the database has not seen.
pub(super) fn migrate_to(
    conn: &mut Connection,
    target: refinery::Target,
) -> Result<Vec<String>, String> {
    let report = super::embedded::migrations::runner()
        .set_target(target)
        .set_grouped(true)
        .run(conn)
        .map_err(|e| format!("migrations: {e}"))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// What a backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Copies the live database into `dest` consistently, with the service running or not.
///
/// One `VACUUM INTO` reads the whole database in a single read transaction, so writes
/// from the service neither restart nor block it (SQLite's stepwise online backup
/// starts over after every write from another connection and may never finish on a
/// busy store). It writes a temporary file next to `dest`, created exclusively with
/// mode 0600, syncs it, and links it to `dest` only when complete: `dest` is never a
/// partial file and an existing file there is never replaced. A run killed midway
/// leaves only `<dest>.partial-<pid>`, which can be deleted.
pub fn backup(src: &Path, dest: &Path) -> Result<BackupReport, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let started = std::time::Instant::now();
    let failed = |what: &str, e: std::io::Error| StoreError::Unavailable(format!("{what}: {e}"));
    if dest.exists() {
        return Err(StoreError::Unavailable(format!(
            "{} exists already; choose a new path",
            dest.display()
        )));
    }
    if !src.exists() {
        return Err(StoreError::Unavailable(format!(
            "no database at {}",
            src.display()
        )));
    }
    let mut partial = dest.as_os_str().to_owned();
    partial.push(format!(".partial-{}", std::process::id()));
    let partial = std::path::PathBuf::from(partial);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| failed(&format!("cannot create {}", partial.display()), e))?;
    let copied = (|| -> Result<u64, StoreError> {
        let from = open_read(src)?;
        let target = partial
            .to_str()
            .ok_or_else(|| StoreError::Unavailable("the backup path is not UTF-8".into()))?;
        from.execute("VACUUM INTO ?1", [target])?;
        drop(from);
        // VACUUM INTO does not sync what it wrote.
        let file = std::fs::File::open(&partial).map_err(|e| failed("reopen the copy", e))?;
        file.sync_all().map_err(|e| failed("sync the copy", e))?;
        let bytes = file
            .metadata()
            .map_err(|e| failed("size of the copy", e))?
            .len();
        // A hard link fails rather than replace a file that appeared meanwhile.
        std::fs::hard_link(&partial, dest)
            .map_err(|e| failed(&format!("cannot create {}", dest.display()), e))?;
        // The link itself is durable once its folder is synced: a bare file name's
        // folder is the current one.
        let dir = dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Err(e) = std::fs::File::open(dir).and_then(|dir| dir.sync_all()) {
            // Not known to be durable: no backup at PATH, so that the same command can be
            // run again.
            let _ = std::fs::remove_file(dest);
            return Err(failed("sync the backup's folder", e));
        }
        Ok(bytes)
    })();
    let _ = std::fs::remove_file(&partial);
    Ok(BackupReport {
        bytes: copied?,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's open files that are already deleted, which is how SQLite holds a
    /// temporary file (unnamed with O_TMPFILE, else unlinked at once), by descriptor.
    fn deleted_files() -> std::collections::BTreeSet<String> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|fd| {
                let target = std::fs::read_link(fd.path()).ok()?;
                let target = target.to_string_lossy();
                target
                    .ends_with(" (deleted)")
                    .then(|| format!("{} {target}", fd.file_name().to_string_lossy()))
            })
            .collect()
    }

    #[test]
    fn a_savepoint_of_the_writer_that_changes_many_pages_keeps_its_journal_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_write(&dir.path().join("orders.db")).unwrap();
        for_the_writer(&conn).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (b BLOB);
             WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100)
             INSERT INTO t SELECT zeroblob(3000) FROM n;",
        )
        .unwrap();
        let before = deleted_files();
        // 100 pages changed in a savepoint: 400 KiB of journal, past SQLite's 64 KiB.
        conn.execute_batch("BEGIN; SAVEPOINT job; UPDATE t SET b = zeroblob(3001);")
            .unwrap();
        let during = deleted_files();
        conn.execute_batch("RELEASE job; COMMIT;").unwrap();
        let after = deleted_files();
        // Other tests run alongside: only a file opened during the savepoint and closed
        // with its transaction is this connection's.
        let journals: Vec<_> = during
            .difference(&before)
            .filter(|f| !after.contains(*f))
            .collect();
        assert!(
            journals.is_empty(),
            "the savepoint's journal went to {journals:?}"
        );
    }

    #[test]
    fn the_writers_wal_is_copied_into_the_database_only_past_its_checkpoint_size() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_write(&dir.path().join("orders.db")).unwrap();
        for_the_writer(&conn).unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        // 15,000 pages in commits of 100: past SQLite's default of 1,000, below ours.
        for _ in 0..150 {
            conn.execute_batch(
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100)
                 INSERT INTO t SELECT zeroblob(4000) FROM n;",
            )
            .unwrap();
        }
        // (busy, frames in the WAL, frames copied): a checkpoint past 1,000 would have
        // started the WAL over, leaving well under 15,000 frames in it.
        let (frames, copied): (i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert!(frames >= 15000, "the WAL held {frames} frames");
        assert_eq!(copied, frames);
    }

    #[test]
    fn the_wal_shrinks_back_after_a_big_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("orders.db");
        let conn = open_write(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE big (b BLOB);
             WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 20000)
             INSERT INTO big SELECT zeroblob(4000) FROM n;",
        )
        .unwrap();
        let wal = dir.path().join("orders.db-wal");
        let grown = std::fs::metadata(&wal).unwrap().len();
        assert!(grown > JOURNAL_SIZE_LIMIT as u64, "the WAL grew to {grown}");
        // The next write starts the WAL over after the checkpoint, and cuts it back.
        conn.execute_batch("INSERT INTO big VALUES (x'00')")
            .unwrap();
        let after = std::fs::metadata(&wal).unwrap().len();
        assert!(
            after <= JOURNAL_SIZE_LIMIT as u64,
            "the WAL kept {after} bytes after a checkpoint (it grew to {grown})"
        );
    }

    /// Rows of `sql` as text, one string per row.
    fn texts(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        let columns = stmt.column_count();
        stmt.query_map([], |r| {
            (0..columns)
                .map(|i| {
                    r.get::<_, rusqlite::types::Value>(i)
                        .map(|v| format!("{v:?}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|cells| cells.join("|"))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// What V9 must keep of the tables it rebuilds: every row, every column's declaration
    /// (but the ids' type), the indexes' definitions and the foreign key.
    fn kept(conn: &Connection, tables: &[(&str, &str)]) -> Vec<Vec<String>> {
        let mut kept: Vec<Vec<String>> = tables
            .iter()
            .map(|(t, key)| texts(conn, &format!("SELECT * FROM {t} ORDER BY {key}")))
            .collect();
        for (t, _) in tables {
            let columns = texts(
                conn,
                &format!(
                    "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_xinfo('{t}')"
                ),
            );
            // BIGINT to INTEGER is the change: SQLite's affinity of both is INTEGER.
            kept.push(
                columns
                    .iter()
                    .map(|c| c.replace("\"BIGINT\"", "\"INTEGER\""))
                    .collect(),
            );
        }
        kept.push(
            texts(
                conn,
                "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL
                 ORDER BY name",
            )
            .iter()
            .map(|i| i.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect(),
        );
        kept.push(texts(
            conn,
            "SELECT \"table\", \"from\", \"to\" FROM pragma_foreign_key_list('order_items')",
        ));
        kept
    }

    /// A database file migrated up to `version`, with the folder that holds it.
    fn migrated_to(version: i32) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_write(&dir.path().join("orders.db")).unwrap();
        migrate_to(&mut conn, refinery::Target::Version(version)).unwrap();
        (dir, conn)
    }

    /// The watermarks of what was published (V12), oldest first.
    fn watermarks(conn: &Connection) -> Vec<(i64, i64)> {
        conn.prepare("SELECT upto, at FROM outbox_marks ORDER BY upto")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn sqlites_own_layout_keeps_every_row_key_and_constraint_of_a_v8_database() {
        let (_dir, mut conn) = migrated_to(8);
        // Ids out of step with the rowids SQLite gave the rows before V9.
        conn.execute_batch(
            "INSERT INTO orders VALUES (101, 'u1', 'a@x', 'pending', 1250, 10, 11, 1, NULL,
                                        '[[7,\"Pen\",1,1250,1250]]');
             INSERT INTO orders VALUES (57, 'u2', 'b@x', 'cancelled', 300, 12, 13, 0, 9, NULL);
             INSERT INTO order_items VALUES (101, 1, 7, 'Pen', 1, 1250, 1250);
             INSERT INTO order_items VALUES (57, 1, 8, 'Ink', 2, 100, 200);
             INSERT INTO order_items VALUES (57, 2, 9, 'Nib', 1, 100, 100);
             INSERT INTO outbox VALUES (500, 101, 'order_created', '{}', 10, 20, NULL, 3);
             INSERT INTO outbox VALUES (6, 57, 'order_cancelled', '{}', 13, NULL, 14, 4);
             INSERT INTO order_counts VALUES ('u1', 1), ('u2', 1);
             INSERT INTO stock_ledger VALUES (7, 10, 101, 1), (8, 12, 57, 2);
             INSERT INTO product_cache VALUES (70, 'Pen', 1250, 40, 9), (8, 'Ink', 100, 3, 9);",
        )
        .unwrap();
        let tables = [
            ("orders", "id"),
            ("order_items", "order_id, line_no"),
            ("outbox", "id"),
            ("order_counts", "user_id"),
            ("stock_ledger", "product_id, sold_at, order_id"),
            ("product_cache", "product_id"),
        ];
        let before = kept(&conn, &tables);

        let applied = migrate_to(&mut conn, refinery::Target::Version(9)).unwrap();
        assert_eq!(applied, ["V9__sqlite_row_keys"]);

        assert_eq!(before, kept(&conn, &tables));
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        // The ids are the tables' own row keys: no index beside them.
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM sqlite_master
                 WHERE name IN ('sqlite_autoindex_orders_1', 'sqlite_autoindex_outbox_1',
                                'sqlite_autoindex_product_cache_1')"
            ),
            0
        );
        for (table, id) in [
            ("orders", "id"),
            ("outbox", "id"),
            ("product_cache", "product_id"),
        ] {
            assert_eq!(
                count(&format!("SELECT COUNT(*) FROM {table} WHERE rowid = {id}")),
                2,
                "{table}.{id} is not its row key"
            );
        }
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM pragma_table_list
                 WHERE wr = 1 AND name IN ('order_items', 'order_counts', 'stock_ledger')"
            ),
            3
        );
        assert_eq!(count("SELECT COUNT(*) FROM pragma_foreign_key_check"), 0);
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        // The keys, NOT NULL and the foreign key still hold.
        let refused = |sql: &str| conn.execute(sql, []).is_err();
        for sql in [
            "INSERT INTO orders VALUES (57, 'u3', 'c@x', 'pending', 1, 1, 1, 1, NULL, NULL)",
            "INSERT INTO orders VALUES (58, 'u3', NULL, 'pending', 1, 1, 1, 1, NULL, NULL)",
            "INSERT INTO order_items VALUES (3, 1, 7, 'Pen', 1, 1250, 1250)",
            "INSERT INTO order_items VALUES (101, 1, 7, 'Pen', 1, 1250, 1250)",
            "INSERT INTO order_counts VALUES ('u1', 5)",
            "INSERT INTO outbox VALUES (500, 101, 'order_created', '{}', 10, NULL, NULL, 3)",
            "INSERT INTO product_cache VALUES (70, 'Pen', 1, 1, 1)",
            "INSERT INTO stock_ledger VALUES (7, 10, 101, 5)",
            "DELETE FROM orders WHERE id = 57",
        ] {
            assert!(refused(sql), "V9's tables took {sql}");
        }
    }

    /// An order written before V8 has no lines on its row; V10 gives them before its
    /// index holds them, as `lines::encode` writes them.
    #[test]
    fn the_list_pages_index_comes_after_every_order_has_its_lines() {
        use crate::domain::{Money, OrderItem, ProductId};
        let (_dir, mut conn) = migrated_to(9);
        conn.execute_batch(
            "INSERT INTO orders VALUES (57, 'u2', 'b@x', 'pending', 300, 12, 13, 1, NULL, NULL);
             INSERT INTO order_items VALUES (57, 2, 9, 'Nib \"fine\"', 1, 100, 100);
             INSERT INTO order_items VALUES (57, 1, 8, 'Ink', 2, 100, 200);",
        )
        .unwrap();

        let applied = migrate_to(&mut conn, refinery::Target::Version(10)).unwrap();
        assert_eq!(applied, ["V10__sqlite_list_pages"]);

        let line = |id, name: &str, quantity, cents| OrderItem {
            product_id: ProductId::new(id).unwrap(),
            product_name: name.into(),
            quantity,
            price: Money::from_cents(100),
            subtotal: Money::from_cents(cents),
        };
        let lines: Option<String> = conn
            .query_row("SELECT lines FROM orders WHERE id = 57", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            lines.as_deref(),
            Some(
                crate::store::lines::encode(&[
                    line(8, "Ink", 2, 200),
                    line(9, "Nib \"fine\"", 1, 100)
                ])
                .as_str()
            )
        );
    }

    #[test]
    fn v12_keeps_as_published_the_run_before_the_oldest_pending_event() {
        let (_dir, mut conn) = migrated_to(11);
        // 1-3 published, 4 pending, 5 published out of turn, 6 pending.
        conn.execute_batch(
            r#"WITH n(id, published_at) AS (VALUES (1, 100), (2, 200), (3, 300),
                                                (4, NULL), (5, 500), (6, NULL))
               INSERT INTO outbox (id, order_id, event_type, payload, created_at, published_at)
               SELECT id, id, 'order_created', '{"event_id":"e","source":"s"}', id * 10,
                      published_at FROM n;"#,
        )
        .unwrap();

        let applied = migrate_to(&mut conn, refinery::Target::Version(12)).unwrap();
        assert_eq!(applied, ["V12__outbox_marks"]);

        let marks = watermarks(&conn);
        assert_eq!(marks, [(3, 300)]);
        // The one published out of turn goes out again with those around it: at least once.
        let pending: Vec<i64> = outbox::pending(&conn, 0, 10)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(pending, [4, 5, 6]);
        let stats = outbox::stats(&conn).unwrap();
        assert_eq!((stats.pending, stats.oldest_pending_at), (3, Some(40)));
        assert_eq!(outbox::published_count(&conn).unwrap(), 3);
    }

    #[test]
    fn v12_on_an_outbox_all_pending_or_all_published() {
        for (published_at, marks) in [("NULL", vec![]), ("7", vec![(2i64, 7i64)])] {
            let (_dir, mut conn) = migrated_to(11);
            conn.execute_batch(&format!(
                "INSERT INTO outbox (id, order_id, event_type, payload, created_at, published_at)
                 VALUES (1, 1, 'order_created', '{{}}', 1, {published_at}),
                        (2, 2, 'order_created', '{{}}', 2, {published_at});"
            ))
            .unwrap();
            migrate_to(&mut conn, refinery::Target::Version(12)).unwrap();
            let found = watermarks(&conn);
            assert_eq!(found, marks, "published_at {published_at}");
        }
    }
}
