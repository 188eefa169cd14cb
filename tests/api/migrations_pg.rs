//! The migrations are portable SQL: every file in `migrations/` but SQLite's own table
//! layouts (named `sqlite_`) applies, in version order, to a fresh PostgreSQL database
//! (created and dropped here) with `psql`.

use std::path::{Path, PathBuf};

use crate::support::{loud_skip, psql, temp_dir, PostgresDatabase, TestDatabase};

const TABLES: [&str; 5] = [
    "idempotency_keys",
    "order_items",
    "orders",
    "outbox",
    "product_cache",
];

#[test]
fn every_migration_applies_to_a_fresh_postgresql_database() {
    if !postgres_reachable("migrations not tried on it") {
        return;
    }
    let migrations: Vec<_> = migration_files()
        .into_iter()
        .filter(|(_, file)| !sqlite_only(file))
        .collect();
    assert!(
        !migrations.is_empty(),
        "no V<n>__*.sql files in migrations/"
    );
    let db = PostgresDatabase::create();

    for (version, file) in &migrations {
        let file = file.display().to_string();
        if let Err(why) = psql(&db.name, &["-f", &file]) {
            panic!("migration V{version} ({file}) failed on PostgreSQL: {why}");
        }
    }

    let tables = psql(
        &db.name,
        &["-tA", "-c", "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"],
    )
    .unwrap();
    let tables: Vec<&str> = tables
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for table in TABLES {
        assert!(
            tables.contains(&table),
            "table {table} missing after the migrations; found {tables:?}"
        );
    }
}

#[test]
fn migration_files_are_named_by_unique_versions() {
    let migrations = migration_files();
    let mut versions: Vec<u64> = migrations.iter().map(|(v, _)| *v).collect();
    versions.dedup();
    assert_eq!(
        versions.len(),
        migrations.len(),
        "two migrations share a version: {migrations:?}"
    );
    assert_eq!(
        migrations.first().map(|(v, _)| *v),
        Some(1),
        "versions start at V1"
    );
}

/// The harness's reads (`TestApp::query`) give the same rows from SQLite and PostgreSQL:
/// columns in their order, NULL, integers, text with a quote, parameters.
#[test]
fn the_harness_reads_sqlite_and_postgresql_alike() {
    if !postgres_reachable("the harness's PostgreSQL reads not checked") {
        return;
    }
    let schema = "CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL, published_at BIGINT);
                  INSERT INTO t VALUES (1, 'it''s', NULL), (2, 'two', 42), (3, 'three', 7);";
    let dir = temp_dir();
    let path = dir.path().join("reads.db");
    rusqlite::Connection::open(&path)
        .and_then(|conn| conn.execute_batch(schema))
        .unwrap();
    let postgres = PostgresDatabase::create();
    psql(&postgres.name, &["-c", schema]).unwrap();

    for db in [TestDatabase::Sqlite(path), TestDatabase::Postgres(postgres)] {
        let backend = db.backend();
        let rows: Vec<(String, i64, Option<i64>)> =
            db.query("SELECT name, id, published_at FROM t ORDER BY id DESC", &[]);
        assert_eq!(
            rows,
            [
                ("three".to_string(), 3, Some(7)),
                ("two".to_string(), 2, Some(42)),
                ("it's".to_string(), 1, None),
            ],
            "{backend:?}"
        );
        let name: String = db.query_one(
            "SELECT name FROM t WHERE id > ?1 AND name <> ?2 AND id < ?10",
            &[
                1.into(),
                "it's".into(),
                0.into(),
                0.into(),
                0.into(),
                0.into(),
                0.into(),
                0.into(),
                0.into(),
                3.into(),
            ],
        );
        assert_eq!(name, "two", "{backend:?}");
        let id: i64 = db.query_one("SELECT id FROM t WHERE name = ?1", &["it's".into()]);
        assert_eq!(id, 1, "{backend:?}");
        let pending: i64 = db.query_one("SELECT COUNT(*) FROM t WHERE published_at IS NULL", &[]);
        assert_eq!(pending, 1, "{backend:?}");
        let none: Vec<i64> = db.query("SELECT id FROM t WHERE id > ?1", &[10.into()]);
        assert!(none.is_empty(), "{backend:?}: {none:?}");
    }
}

/// PostgreSQL on 127.0.0.1:5432 answers; in CI it must, elsewhere a loud note says what
/// was `not_tried`.
fn postgres_reachable(not_tried: &str) -> bool {
    let Err(why) = psql("postgres", &["-c", "SELECT 1"]) else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("PostgreSQL must be reachable in CI: {why}");
    }
    loud_skip(&format!(
        "PostgreSQL not reachable (psql -h 127.0.0.1 -U postgres), {not_tried}: {why}"
    ));
    false
}

/// A migration of SQLite's own layout, which PostgreSQL leaves out.
fn sqlite_only(file: &Path) -> bool {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    name.split_once("__")
        .is_some_and(|(_, rest)| order_service::store::sqlite_only(rest))
}

/// `migrations/V<n>__*.sql`, sorted by n as a number (V10 after V9).
fn migration_files() -> Vec<(u64, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_string();
            let version = name.strip_prefix('V')?.split_once("__")?.0.parse().ok()?;
            name.ends_with(".sql").then_some((version, path))
        })
        .collect();
    files.sort();
    files
}
