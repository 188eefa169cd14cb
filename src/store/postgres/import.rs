//! `import-sqlite`: copies an SQLite store into an empty PostgreSQL database, every row
//! with its id, in one transaction.
//!
//! The SQLite file is read in one read transaction, so the copy is one consistent moment
//! of it even while an SQLite service still writes. The PostgreSQL side is filled with
//! `COPY … FROM STDIN BINARY`, streamed row by row (no table is held in memory), after
//! the tables were locked against writers and found empty; the id sequences are moved
//! past the copied ids in the same transaction.

use super::Connector;
use crate::store::{sqlite_only, StoreError};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::Transaction;
use rusqlite::Connection;
use std::path::Path;
use std::time::{Duration, Instant};

/// What an import copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    pub orders: u64,
    pub items: u64,
    /// Outbox rows, published ones included.
    pub events: u64,
    /// Of `events`, those the relay has still to publish.
    pub pending: u64,
    pub idempotency_keys: u64,
    pub products: u64,
    pub elapsed: Duration,
}

/// One table as both engines hold it (the same columns from the same migrations): its
/// columns with their PostgreSQL types, and the order it is read in.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Type)],
    key: &'static str,
}

/// In foreign-key order: an item's order is there before the item.
const TABLES: [Table; 8] = [
    Table {
        name: "orders",
        columns: &[
            ("id", Type::INT8),
            ("user_id", Type::VARCHAR),
            ("user_email", Type::VARCHAR),
            ("status", Type::VARCHAR),
            ("total_cents", Type::INT8),
            ("created_at", Type::INT8),
            ("updated_at", Type::INT8),
            ("stock_verified", Type::INT4),
            ("priced_at", Type::INT8),
            ("lines", Type::TEXT),
        ],
        key: "id",
    },
    Table {
        name: "order_items",
        columns: &[
            ("order_id", Type::INT8),
            ("line_no", Type::INT4),
            ("product_id", Type::INT8),
            ("product_name", Type::VARCHAR),
            ("quantity", Type::INT4),
            ("price_cents", Type::INT8),
            ("subtotal_cents", Type::INT8),
        ],
        key: "order_id, line_no",
    },
    // Every row, published ones too: `outbox_ids` then never hands out a copied id
    // again, and the pending rows keep their ids, which are the order the relay
    // publishes them in.
    Table {
        name: "outbox",
        columns: &[
            ("id", Type::INT8),
            ("order_id", Type::INT8),
            ("event_type", Type::VARCHAR),
            ("payload", Type::TEXT),
            ("created_at", Type::INT8),
            ("blocked_since", Type::INT8),
        ],
        key: "id",
    },
    // What the relay published of them (V12).
    Table {
        name: "outbox_marks",
        columns: &[("upto", Type::INT8), ("at", Type::INT8)],
        key: "upto",
    },
    Table {
        name: "idempotency_keys",
        columns: &[
            ("user_id", Type::VARCHAR),
            ("idem_key", Type::VARCHAR),
            ("request", Type::TEXT),
            ("response_status", Type::INT4),
            ("response_body", Type::TEXT),
            ("created_at", Type::INT8),
        ],
        key: "user_id, idem_key",
    },
    Table {
        name: "product_cache",
        columns: &[
            ("product_id", Type::INT8),
            ("name", Type::VARCHAR),
            ("price_cents", Type::INT8),
            ("stock", Type::INT8),
            ("fetched_at", Type::INT8),
            ("gone", Type::INT4),
        ],
        key: "product_id",
    },
    // What the store sold since its snapshot rows were fetched: offline stock checks go on
    // counting it after the move.
    Table {
        name: "stock_ledger",
        columns: &[
            ("product_id", Type::INT8),
            ("sold_at", Type::INT8),
            ("order_id", Type::INT8),
            ("quantity", Type::INT4),
        ],
        key: "product_id, sold_at, order_id",
    },
    Table {
        name: "catalog_refresh",
        columns: &[
            ("id", Type::INT4),
            ("refreshed_at", Type::INT8),
            ("products", Type::INT8),
            ("source", Type::VARCHAR),
        ],
        key: "id",
    },
];

/// Copies the SQLite store at `file` into the database `connector` reaches, which must
/// be migrated already and hold no order, event, idempotency key or cached product.
/// `target` names that database in messages. Nothing is kept unless all of it is.
pub fn import_sqlite(
    file: &Path,
    connector: &Connector,
    target: &str,
) -> Result<ImportReport, String> {
    let started = Instant::now();
    let source = file.display();
    let sqlite = crate::store::open_read(file).map_err(|e| format!("{source}: {e}"))?;
    // Every read below sees this one moment of the file, whatever a running service
    // commits meanwhile.
    sqlite
        .execute_batch("BEGIN")
        .map_err(|e| format!("{source}: {e}"))?;
    same_schema(&sqlite).map_err(|e| format!("{source}: {e}"))?;

    let mut conn = connector.maintenance().map_err(|e| failed(target, e))?;
    let client = conn.raw().map_err(|e| failed(target, e))?;
    let pg_failed = |e: postgres::Error| format!("{target}: {}", explain(&e));
    let mut tx = client.transaction().map_err(pg_failed)?;
    // A service started on the target meanwhile, or a second import, waits until this
    // one ends (and then finds the rows), rather than mixing its rows with these.
    tx.batch_execute(
        "LOCK TABLE orders, order_items, outbox, outbox_marks, idempotency_keys, product_cache,
           order_counts, stock_ledger, catalog_refresh
           IN EXCLUSIVE MODE",
    )
    .map_err(pg_failed)?;
    let found = rows_present(&mut tx).map_err(pg_failed)?;
    if !found.is_empty() {
        return Err(format!(
            "{target} is not empty ({}); import-sqlite fills only an empty database, nothing was copied",
            found.join(", ")
        ));
    }

    let mut copied = [0u64; TABLES.len()];
    for (table, count) in TABLES.iter().zip(copied.iter_mut()) {
        *count = copy_table(&sqlite, &mut tx, table).map_err(|e| match e {
            CopyError::Read(e) => format!("{source}: reading {}: {e}", table.name),
            CopyError::Write(e) => format!("{target}: writing {}: {}", table.name, explain(&e)),
        })?;
    }
    let pending: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM outbox
             WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
            &[],
        )
        .map_err(pg_failed)?
        .get(0);
    // As at start-up (`migrate`), a sequence only ever moves forward; `setval` is not
    // undone by a rollback, which leaves at most a gap in the ids.
    // Each user's order count, which the list's total reads (V6), from the copied orders.
    tx.batch_execute(
        "DELETE FROM order_counts;
         INSERT INTO order_counts (user_id, orders)
           SELECT user_id, COUNT(*) FROM orders GROUP BY user_id;
         SELECT setval('order_ids', m) FROM (SELECT MAX(id) AS m FROM orders) t
           WHERE m > (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM order_ids);
         SELECT setval('outbox_ids', m) FROM (SELECT MAX(id) AS m FROM outbox) t
           WHERE m > (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_ids);",
    )
    .map_err(pg_failed)?;
    tx.commit().map_err(pg_failed)?;
    let [orders, items, events, _marks, idempotency_keys, products, _ledger, _refresh] = copied;
    Ok(ImportReport {
        orders,
        items,
        events,
        pending: pending as u64,
        idempotency_keys,
        products,
        elapsed: started.elapsed(),
    })
}

enum CopyError {
    Read(rusqlite::Error),
    Write(postgres::Error),
}

/// One value as read from SQLite, typed as its PostgreSQL column wants it.
enum Cell {
    Big(Option<i64>),
    Int(Option<i32>),
    Text(Option<String>),
}

impl Cell {
    fn read(row: &rusqlite::Row<'_>, i: usize, ty: &Type) -> rusqlite::Result<Cell> {
        Ok(match *ty {
            Type::INT8 => Cell::Big(row.get(i)?),
            Type::INT4 => Cell::Int(row.get(i)?),
            _ => Cell::Text(row.get(i)?),
        })
    }

    fn value(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Big(v) => v,
            Cell::Int(v) => v,
            Cell::Text(v) => v,
        }
    }
}

/// Streams every row of `table` from SQLite into PostgreSQL; how many rows it copied.
fn copy_table(
    sqlite: &Connection,
    tx: &mut Transaction<'_>,
    table: &Table,
) -> Result<u64, CopyError> {
    let columns: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let columns = columns.join(", ");
    let types: Vec<Type> = table.columns.iter().map(|(_, ty)| ty.clone()).collect();
    let mut select = sqlite
        .prepare(&format!(
            "SELECT {columns} FROM {} ORDER BY {}",
            table.name, table.key
        ))
        .map_err(CopyError::Read)?;
    let sink = tx
        .copy_in(&format!(
            "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
            table.name
        ))
        .map_err(CopyError::Write)?;
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    let mut rows = select.query([]).map_err(CopyError::Read)?;
    let mut cells = Vec::with_capacity(types.len());
    while let Some(row) = rows.next().map_err(CopyError::Read)? {
        cells.clear();
        for (i, ty) in types.iter().enumerate() {
            cells.push(Cell::read(row, i, ty).map_err(CopyError::Read)?);
        }
        let values: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::value).collect();
        writer.write(&values).map_err(CopyError::Write)?;
    }
    writer.finish().map_err(CopyError::Write)
}

/// The file must be an order-service database migrated exactly as far as this binary
/// migrates PostgreSQL, or its columns would not be the target's. SQLite's own layouts
/// (`sqlite_only`) change no column, so a file with or without them is the same to the
/// copy.
fn same_schema(sqlite: &Connection) -> Result<(), String> {
    let known = super::migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0);
    let history: Vec<(i64, String)> = sqlite
        .prepare("SELECT version, name FROM refinery_schema_history")
        .and_then(|mut rows| {
            rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(|e| format!("not an order-service database ({e})"))?;
    let applied = history
        .into_iter()
        .filter(|(_, name)| !sqlite_only(name))
        .map(|(version, _)| version)
        .max();
    match applied {
        Some(v) if v == known => Ok(()),
        Some(v) if v < known => Err(format!(
            "migrated to V{v}, this binary expects V{known}: run `order-service migrate` on it first (DATABASE_URL set to the file)"
        )),
        Some(v) => Err(format!(
            "migrated to V{v} by a newer order-service; this binary knows up to V{known}"
        )),
        None => Err("not an order-service database (no migration applied)".into()),
    }
}

/// The tables that hold rows already, with how many: "3 orders, 7 outbox rows".
fn rows_present(tx: &mut Transaction<'_>) -> Result<Vec<String>, postgres::Error> {
    let row = tx.query_one(
        "SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM outbox),
                (SELECT COUNT(*) FROM outbox_marks),
                (SELECT COUNT(*) FROM idempotency_keys), (SELECT COUNT(*) FROM product_cache)",
        &[],
    )?;
    let named = [
        "orders",
        "outbox rows",
        "publication marks",
        "idempotency keys",
        "cached products",
    ];
    Ok(named
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let n: i64 = row.get(i);
            (n > 0).then(|| format!("{n} {name}"))
        })
        .collect())
}

fn failed(target: &str, e: StoreError) -> String {
    match e {
        StoreError::Postgres(e) => format!("{target}: {}", explain(&e)),
        e => format!("{target}: {e}"),
    }
}

/// The server's own words (a key that exists, a value out of range) in one line: the
/// driver's `Display` says only "db error".
fn explain(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded;
    use crate::store::sqlite::migrate_to;

    /// An SQLite file migrated up to `version`.
    fn migrated_to(version: i32) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, refinery::Target::Version(version)).unwrap();
        conn
    }

    #[test]
    fn a_file_with_or_without_sqlites_own_layouts_is_the_same_schema() {
        let portable = super::super::migrations()
            .iter()
            .map(|m| m.version())
            .max()
            .unwrap();
        let newest = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| m.version())
            .max()
            .unwrap();
        let file = migrated_to(newest);
        assert_eq!(same_schema(&file), Ok(()));
        // As a file of the release before SQLite's layouts: the same columns.
        let mut removed = 0;
        for m in embedded::migrations::runner().get_migrations() {
            if sqlite_only(m.name()) {
                removed += file
                    .execute(
                        "DELETE FROM refinery_schema_history WHERE version = ?1",
                        [m.version()],
                    )
                    .unwrap();
            }
        }
        assert!(removed > 0, "no SQLite layout among the migrations");
        assert_eq!(same_schema(&file), Ok(()));

        let older = same_schema(&migrated_to(portable - 1)).unwrap_err();
        assert!(older.contains("run `order-service migrate`"), "{older}");
        file.execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (?1, 'later', '', '0')",
            [newest + 1],
        )
        .unwrap();
        let newer = same_schema(&file).unwrap_err();
        assert!(newer.contains("newer order-service"), "{newer}");
    }
}
