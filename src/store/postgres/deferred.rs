//! Writes whose outcome nothing reads before the commit, held back and sent together as
//! one statement (data-modifying CTEs): a create's order, count, lines, ledger, event and
//! snapshot rows cost one round trip instead of five, and a status change's update and
//! event one instead of two.
//!
//! The parts of one statement all see the database as it was before it, and PostgreSQL's
//! documentation does not say in which order they run (its executor runs the main query
//! first, and the parts in `WITH` it does not read at the end, the last written first:
//! `push_main` relies on the first where the server passed a trial, engine.rs, and the
//! order in which a create's row locks are taken on the second, orders/rules.rs). So a
//! part never reads what another writes, and each writes a table of its own: a second
//! write to a table sends what is held first, as does anything that reads (a query, a
//! savepoint, the commit). That also bounds a statement to one part per table, however
//! many products a catalog refresh upserts.

use super::conn::Conn;
use crate::store::StoreError;
use postgres::types::ToSql;
use std::fmt::Write;

pub type Param = Box<dyn ToSql + Sync + Send>;

#[derive(Default)]
pub struct Deferred {
    /// Each write's SQL, its placeholders already numbered after the earlier writes'.
    parts: Vec<String>,
    /// The table each part writes.
    tables: Vec<&'static str>,
    params: Vec<Param>,
    /// The part that is the statement's main query, whatever its place among the parts.
    main: Option<usize>,
}

impl Deferred {
    /// Whether a write held back writes `table`: it must go out before another does.
    pub fn holds(&self, table: &str) -> bool {
        self.tables.contains(&table)
    }

    /// Holds back `sql`, a write to `table` with its placeholders numbered from `$1` for
    /// `params`.
    pub fn push(&mut self, table: &'static str, sql: &str, params: Vec<Param>) {
        debug_assert!(!self.holds(table), "one write per table in a statement");
        self.parts.push(renumber(sql, self.params.len()));
        self.tables.push(table);
        self.params.extend(params);
    }

    /// Holds back `sql` as `push` does, as the statement's main query, which PostgreSQL's
    /// executor runs before the parts in `WITH` that it does not read (those run to
    /// completion at the end of the statement). A write that must come before the others
    /// goes here, once the server was seen to do so (`PgEngine::main_query_first`).
    pub fn push_main(&mut self, table: &'static str, sql: &str, params: Vec<Param>) {
        debug_assert!(self.main.is_none(), "one main query in a statement");
        self.main = Some(self.parts.len());
        self.push(table, sql, params);
    }

    /// Forgets what is held: its transaction (or savepoint) is being undone.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.tables.clear();
        self.params.clear();
        self.main = None;
    }

    /// Sends what is held, as one statement, in the transaction `conn` is in (or as a
    /// transaction of its own: one statement is atomic).
    pub fn flush(&mut self, conn: &mut Conn) -> Result<(), StoreError> {
        if self.parts.is_empty() {
            return Ok(());
        }
        let sql = self.statement();
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let done = conn.execute(&sql, &params);
        self.clear();
        done.map(|_| ())
    }

    /// `WITH w0 AS (first), w1 AS (second), … main`, the main query the part pushed so or
    /// else the last: the same text for the same writes, so the connection's prepared
    /// statement serves each kind of change.
    fn statement(&self) -> String {
        let main = self.main.unwrap_or(self.parts.len() - 1);
        let last = &self.parts[main];
        let rest = self.parts.iter().enumerate().filter(|(i, _)| *i != main);
        let mut sql = String::new();
        for (i, (_, part)) in rest.enumerate() {
            let _ = write!(
                sql,
                "{} w{i} AS ({part})",
                if i == 0 { "WITH" } else { "," }
            );
        }
        if !sql.is_empty() {
            sql.push(' ');
        }
        sql.push_str(last);
        sql
    }
}

/// `sql` with every placeholder `$n` made `$(n + by)`. The parts are the engine's own SQL,
/// which has no `$` in a literal, identifier or dollar quote.
fn renumber(sql: &str, by: usize) -> String {
    if by == 0 {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<usize>() {
            let _ = write!(out, "{}", n + by);
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_after_the_earlier_parts() {
        assert_eq!(
            renumber("VALUES ($1, $2::bigint[], $10)", 3),
            "VALUES ($4, $5::bigint[], $13)"
        );
        assert_eq!(renumber("SELECT $1", 0), "SELECT $1");
        assert_eq!(renumber("no placeholders", 5), "no placeholders");
    }

    #[test]
    fn several_writes_become_one_statement_and_one_stays_as_it_is() {
        let mut d = Deferred::default();
        d.push("a", "INSERT INTO a VALUES ($1)", vec![Box::new(1_i64)]);
        assert_eq!(d.statement(), "INSERT INTO a VALUES ($1)");
        d.push(
            "b",
            "INSERT INTO b VALUES ($1, $2)",
            vec![Box::new(2_i64), Box::new(3_i64)],
        );
        d.push("c", "UPDATE c SET x = $1", vec![Box::new(4_i64)]);
        assert_eq!(
            d.statement(),
            "WITH w0 AS (INSERT INTO a VALUES ($1)), w1 AS (INSERT INTO b VALUES ($2, $3)) \
             UPDATE c SET x = $4"
        );
        assert_eq!(d.params.len(), 4);
        d.clear();
        assert!(d.parts.is_empty() && d.tables.is_empty() && d.params.is_empty());
    }

    #[test]
    fn the_main_part_is_the_main_query_wherever_it_was_pushed() {
        let mut d = Deferred::default();
        d.push("a", "INSERT INTO a VALUES ($1)", vec![Box::new(1_i64)]);
        d.push_main("b", "INSERT INTO b SELECT $1", vec![Box::new(2_i64)]);
        d.push("c", "UPDATE c SET x = $1", vec![Box::new(3_i64)]);
        assert_eq!(
            d.statement(),
            "WITH w0 AS (INSERT INTO a VALUES ($1)), w1 AS (UPDATE c SET x = $3) \
             INSERT INTO b SELECT $2"
        );
        d.clear();
        d.push("a", "INSERT INTO a VALUES ($1)", vec![Box::new(1_i64)]);
        d.push("c", "UPDATE c SET x = $1", vec![Box::new(3_i64)]);
        assert_eq!(
            d.statement(),
            "WITH w0 AS (INSERT INTO a VALUES ($1)) UPDATE c SET x = $2",
            "without a main part, the last"
        );
    }
}
