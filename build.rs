//! Rebuilds when a migration is added, so `embed_migrations!` sees it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
