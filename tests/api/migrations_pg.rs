//! The migrations are portable SQL: every file in `migrations/` applies, in version order,
//! to a fresh PostgreSQL database (created and dropped here) with `psql`.

use std::path::{Path, PathBuf};

use crate::support::{loud_skip, psql, PostgresDatabase};

const TABLES: [&str; 5] = [
    "idempotency_keys",
    "order_items",
    "orders",
    "outbox",
    "product_cache",
];

#[test]
fn every_migration_applies_to_a_fresh_postgresql_database() {
    if let Err(why) = psql("postgres", &["-c", "SELECT 1"]) {
        if std::env::var_os("CI").is_some() {
            panic!("PostgreSQL must be reachable in CI: {why}");
        }
        loud_skip(&format!(
            "PostgreSQL not reachable (psql -h 127.0.0.1 -U postgres), migrations not tried on it: {why}"
        ));
        return;
    }
    let migrations = migration_files();
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
