//! The PostgreSQL engine: for a shop that outgrows one box, several instances of the
//! service on one database. The schema is the same migration files as SQLite's (but for
//! SQLite's own layouts, `migrations()`); ids come from two sequences (SQLite's single
//! writer needs none), made here at start-up.
//!
//! Several instances stay correct because the database decides: ids from sequences, a
//! row lock on every status change (`order_for_update`), idempotency keys claimed under
//! their unique key, and one relay at a time under an advisory lock (`Reads::lead_relay`).

mod combined;
mod conn;
mod deferred;
mod engine;
mod gets;
mod import;
mod reads;
#[cfg(test)]
pub(crate) mod test_db;
mod watchdog;

pub use engine::PgEngine;
pub use import::{import_sqlite, ImportReport};
pub use reads::PgReader;

use crate::config::PostgresPool;
use crate::store::{embedded, sqlite_only, StoreError};
use conn::Conn;
use gets::Combined;
use std::sync::Arc;
use std::time::Duration;
use watchdog::Watchdog;

/// The migrations PostgreSQL runs: every file but SQLite's own (`sqlite_only`:
/// `migrations/V9__sqlite_row_keys.sql`, `migrations/V10__sqlite_list_pages.sql`).
fn migrations() -> Vec<refinery::Migration> {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .filter(|m| !sqlite_only(m.name()))
        .cloned()
        .collect()
}

/// Held while migrating, so that instances starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6f72_6465_7273_0001;
/// Held for the instant an event id and its transaction's id are taken together.
const EVENT_ID_LOCK: i64 = 0x6f72_6465_7273_0003;
/// Held by the relaying instance for as long as its session lives.
pub(crate) const RELAY_LOCK: i64 = 0x6f72_6465_7273_0002;
/// Shared by every transaction that records sales or writes snapshot rows, until it
/// ends, before any of those rows' locks; held alone by an offline create from before
/// it locks its snapshot rows: it counts the sales of the creates being written too, and
/// the rows it inserts (answers it had before the outage) are in no one's way
/// (`combined::push_sales`, `combined::push_products`, `PgEngine::snapshot_for_update`).
pub(crate) const SALES_LOCK: i64 = 0x6f72_6465_7273_0004;
/// The keys of the locks above, and room for more. An order's changes lock its id in the
/// same key space (`order_for_update`), so an id among these is no order's: locked, a
/// client's request for it would wait on the relay's lock for as long as the relay runs,
/// holding a writing session, or hold up every instance's event ids. Ids count up from 1.
pub(crate) const SERVICE_LOCKS: std::ops::RangeInclusive<i64> =
    0x6f72_6465_7273_0000..=0x6f72_6465_7273_ffff;

/// The server's side of the keepalives the client sets (`Connector::new`).
const SERVER_KEEPALIVES: &str = "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 5; \
     SET tcp_keepalives_count = 3; SET tcp_user_timeout = 10000";

/// How to connect: the URL's settings and the connect timeout. The reading sessions it
/// makes combine their gets by id (gets.rs). Its sessions' waits on the server are timed
/// by one watchdog (watchdog.rs).
#[derive(Clone)]
pub struct Connector {
    config: postgres::Config,
    gets: Arc<Combined>,
    dog: Arc<Watchdog>,
}

impl Connector {
    pub fn new(url: &str, pool: &PostgresPool) -> Result<Connector, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|_| StoreError::Unavailable("not a valid PostgreSQL URL".into()))?;
        config
            .connect_timeout(pool.connect_timeout)
            .application_name("order-service")
            // A server that vanished (power cut, cable) is noticed within a minute
            // rather than after the kernel's two hours; one that stops acknowledging what
            // is sent to it, within 10 s, after which the request gets 503 instead of
            // waiting on it.
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));
        Ok(Connector {
            config,
            gets: Arc::default(),
            dog: Watchdog::new(pool.answer_timeout, pool.connect_timeout),
        })
    }

    /// What every session asks of the server first: to notice a client gone as soon as
    /// the client notices a server gone (above), rather than after the kernel's two hours.
    /// Until then a lost session's locks stay held: the relay's, which kept every instance
    /// standing by, and a transaction's row locks. A timed session (`timed`) also has its
    /// lock waits end a second before `DATABASE_TIMEOUT`, cancelled by the server: the
    /// session stays, where the watchdog, a second later, would end it and leave its
    /// server process waiting on the lock with the locks it holds. Its statements end
    /// half a second before it: a create is one statement that commits by itself, and
    /// one the watchdog cut (after several lock waits, each shorter than the lock
    /// timeout) went on in its server process and committed, answered 503 all the same.
    /// A statement the server ends is rolled back. Settings the URL's own `options` give
    /// are the operator's choice, and stay.
    fn setup(&self, generic_plans: bool, timed: bool) -> String {
        let chosen = self.config.get_options().unwrap_or("");
        let mut sets = Vec::new();
        if !["tcp_keepalives", "tcp_user_timeout"]
            .iter()
            .any(|name| chosen.contains(name))
        {
            sets.push(SERVER_KEEPALIVES.to_string());
        }
        if generic_plans && !chosen.contains("plan_cache_mode") {
            sets.push("SET plan_cache_mode = force_generic_plan".into());
        }
        let timeouts = [
            ("lock_timeout", self.dog.lock_timeout()),
            ("statement_timeout", self.dog.statement_timeout()),
        ];
        for (setting, after) in timeouts {
            if timed && !chosen.contains(setting) {
                sets.push(format!("SET {setting} = {}", after.as_millis()));
            }
        }
        sets.join("; ")
    }

    /// A session made on first use, whose statements each keep one generic plan. A list
    /// page's plan does not depend on its user or its bounds (the user's index, in
    /// order), but PostgreSQL's estimate for a `LIMIT` and `OFFSET` it cannot see can make
    /// the generic plan look dearer than a custom one (51 against 30 on a benchmark's
    /// 50,000 orders). By default it then planned the page anew on every request: half
    /// of its CPU for list pages. A `SET` once connected rather than a startup option,
    /// which a connection pooler in between may refuse. A plan mode the URL's own
    /// `options` give is the operator's choice, and stays.
    fn generic_plans(&self) -> Conn {
        self.conn(true, true)
    }

    /// Joins a get to its reading sessions' query by id running now (gets.rs).
    pub fn join_get(&self) -> crate::store::JoinGet {
        let gets = self.gets.clone();
        Arc::new(move |id, then| gets.join(id.get(), then))
    }

    fn connected(&self) -> Result<Conn, StoreError> {
        self.on_first_use().connected()
    }

    /// A write session made on first use.
    fn on_first_use(&self) -> Conn {
        self.conn(false, true)
    }

    /// A session for the migrations or an import, whose statements may rightly take long
    /// (or wait on another instance's migrations): not timed.
    fn maintenance(&self) -> Result<Conn, StoreError> {
        self.conn(false, false).connected()
    }

    fn conn(&self, generic_plans: bool, timed: bool) -> Conn {
        let setup = self.setup(generic_plans, timed);
        Conn::with_setup(self.config.clone(), self.dog.clone(), timed, setup)
    }
}

/// Applies the migrations the database has not seen and makes the id sequences; returns
/// the migrations applied. Instances starting together take turns.
pub fn migrate(connector: &Connector) -> Result<Vec<String>, String> {
    let mut conn = connector.maintenance().map_err(|e| e.to_string())?;
    migrate_on(&mut conn)
}

/// The migrations (`migrate`) and the write sessions (`engines`). The first write
/// session connects while the migrations run on theirs: a connect starts a server
/// process (5 to 10 ms on two busy cores), and on an empty database start-up waited for
/// it after the migrations' 60 ms. Connects still take turns: it starts once the
/// migrations' session is made.
pub fn open(
    connector: &Connector,
    pool: &PostgresPool,
) -> Result<(Vec<String>, Vec<PgEngine>), String> {
    let mut conn = connector.maintenance().map_err(|e| e.to_string())?;
    let (applied, first) = std::thread::scope(|s| {
        let first = s.spawn(|| connector.connected());
        let applied = migrate_on(&mut conn);
        let first = first
            .join()
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the connect panicked".into())));
        (applied, first)
    });
    let applied = applied?;
    let engines = engines_from(first.map_err(|e| e.to_string())?, connector, pool);
    Ok((applied, engines))
}

fn migrate_on(conn: &mut Conn) -> Result<Vec<String>, String> {
    conn.batch(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .map_err(|e| e.to_string())?;
    let applied = (|| {
        let client = conn.raw().map_err(|e| e.to_string())?;
        let report = refinery::Runner::new(&migrations())
            .set_grouped(true)
            .run(client)
            .map_err(|e| format!("migrations: {e}"))?;
        // A sequence is moved past the largest id only when it is behind it, which happens
        // only to a database filled by `import-sqlite`: a running instance's ids come from
        // the sequence, so it is never behind, and a `setval` then could hand out an id
        // twice.
        conn.batch(
            "CREATE SEQUENCE IF NOT EXISTS order_ids;
             CREATE SEQUENCE IF NOT EXISTS outbox_ids;
             SELECT setval('order_ids', m) FROM (SELECT MAX(id) AS m FROM orders) t
               WHERE m > (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM order_ids);
             SELECT setval('outbox_ids', m) FROM (SELECT MAX(id) AS m FROM outbox) t
               WHERE m > (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_ids);",
        )
        .map_err(|e| format!("sequences: {e}"))?;
        // A pending event whose transaction id is ahead of this server's was written on
        // another server: a dump restored here. Its transaction ended there; waiting for
        // this server's ids to pass it (`pending_events`) would hold it back for good, and
        // let later events overtake it. No other transaction's row matches: one with a
        // higher id than this statement's began after its snapshot.
        conn.batch(
            "UPDATE outbox SET tx = NULL
             WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)
               AND tx >= pg_current_xact_id()::text::bigint",
        )
        .map_err(|e| format!("outbox: {e}"))?;
        // Event ids are taken in the order of their transactions' ids (a transaction
        // gets its id here, with its event id, before its first write: engine.rs,
        // `take_event`; a transaction that has an id already is refused): then "every
        // transaction older than this event's has ended" means every lower event id is
        // committed or never will be, and the relay keeps the outbox's order (reads.rs,
        // `pending_events`). The lock is held for microseconds, not until the commit.
        // Creates written together take theirs at once, in a row (combined.rs);
        // `order_service_next_event()`, which older instances on the same database call
        // too, is the same function asked for one.
        conn.batch(&format!(
            "CREATE OR REPLACE FUNCTION order_service_next_events(n INTEGER)
               RETURNS TABLE (id BIGINT, tx BIGINT)
             LANGUAGE plpgsql AS $$
             BEGIN
               IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
                 RAISE EXCEPTION 'an event id taken after the transaction''s first write';
               END IF;
               PERFORM pg_advisory_lock({EVENT_ID_LOCK});
               tx := pg_current_xact_id()::text::bigint;
               FOR i IN 1..n LOOP
                 id := nextval('outbox_ids');
                 RETURN NEXT;
               END LOOP;
               PERFORM pg_advisory_unlock({EVENT_ID_LOCK});
             END $$;
             CREATE OR REPLACE FUNCTION order_service_next_event() RETURNS TABLE (id BIGINT, tx BIGINT)
             LANGUAGE sql AS $$ SELECT * FROM order_service_next_events(1) $$;"
        ))
        .map_err(|e| format!("event ids: {e}"))?;
        Ok(report
            .applied_migrations()
            .iter()
            .map(|m| m.to_string())
            .collect())
    })();
    let _ = conn.batch(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
    applied
}

/// The write sessions as `open` makes them, on a migrated database, for the tests.
#[cfg(test)]
pub fn engines(connector: &Connector, pool: &PostgresPool) -> Result<Vec<PgEngine>, StoreError> {
    Ok(engines_from(connector.connected()?, connector, pool))
}

/// `pool.writers` write sessions, `first` connected already, so that a wrong URL or an
/// absent server shows at start-up; it tries whether a create can be one statement here,
/// for all of them. The others connect on their first transaction: connects take turns
/// (the watchdog tells their sockets apart), each a new server process, and start-up
/// waited for all of them (eight by default): a quarter of its time on an empty database.
fn engines_from(first: Conn, connector: &Connector, pool: &PostgresPool) -> Vec<PgEngine> {
    let mut first = PgEngine::new(first);
    let one_statement = first.main_query_first();
    let mut engines = vec![first];
    engines.extend((1..pool.writers).map(|_| PgEngine::new(connector.on_first_use())));
    for engine in &mut engines {
        engine.set_one_statement(one_statement);
    }
    engines
}

/// A reading session; it connects on first use and again after a loss. Every statement
/// on it keeps a generic plan (reads.rs says what that asks of them).
pub fn reader(connector: &Connector) -> PgReader {
    PgReader::new(connector.generic_plans(), connector.gets.clone())
}

#[cfg(test)]
mod tests {
    use super::test_db::TestDb;
    use super::*;
    use crate::config::PostgresPool;
    use crate::domain::OrderId;
    use crate::store::Reads;
    use postgres::{Client, NoTls};

    #[test]
    fn a_server_on_the_same_machine_is_reached_through_its_socket() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let Some(url) = db.socket_url() else {
            return;
        };
        let connector = Connector::new(&url, &TestDb::pool()).unwrap();
        let applied = migrate(&connector).unwrap();
        assert_eq!(applied.len(), migrations().len(), "{applied:?}");
        let mut conn = connector.connected().unwrap();
        let server: Option<String> = conn
            .query_one("SELECT inet_server_addr()::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(server, None, "a session over TCP has the server's address");
        assert!(engines(&connector, &TestDb::pool()).is_ok());
        let order = reader(&connector).order(OrderId::parse("1").unwrap());
        assert!(order.unwrap().is_none());
    }

    #[test]
    fn start_up_connects_one_write_session_and_the_others_on_their_first_transaction() {
        use crate::store::Engine;
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        let mut watching = connector.maintenance().unwrap();
        let mut sessions_become = |n: i64| {
            // A closed session's server process leaves the list a moment later.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
            loop {
                let now: i64 = watching
                    .query_one(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()
                           AND application_name = 'order-service' AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                if now == n {
                    return;
                }
                assert!(
                    std::time::Instant::now() < until,
                    "{now} write sessions, not {n}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        let pool = PostgresPool {
            writers: 3,
            ..TestDb::pool()
        };
        let mut engines = engines(&connector, &pool).unwrap();
        assert_eq!(engines.len(), 3);
        sessions_become(1);
        engines[2].begin().unwrap();
        engines[2].tx().heartbeat(1).unwrap();
        engines[2].commit().unwrap();
        sessions_become(2);
    }

    #[test]
    fn the_first_write_session_connects_while_the_migrations_wait_their_turn() {
        let Some(db) = TestDb::create() else {
            return;
        };
        // Another instance migrating: the migrations wait on its lock.
        let mut other = Client::connect(&db.url(), NoTls).unwrap();
        other
            .batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .unwrap();
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        let opening = std::thread::spawn(move || {
            open(&connector, &TestDb::pool())
                .map(|(applied, engines)| (applied.len(), engines.len()))
        });
        let sessions = |other: &mut Client, waiting: bool| -> i64 {
            other
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()
                       AND application_name = 'order-service'
                       AND (wait_event_type = 'Lock') = $1",
                    &[&waiting],
                )
                .unwrap()
                .get(0)
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sessions(&mut other, true) == 0 || sessions(&mut other, false) == 0 {
            assert!(
                std::time::Instant::now() < until,
                "no write session beside the migrations waiting on the lock: {} waiting, {} not",
                sessions(&mut other, true),
                sessions(&mut other, false)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        other
            .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .unwrap();
        let (applied, engines) = opening.join().unwrap().unwrap();
        assert_eq!(applied, migrations().len());
        assert_eq!(engines, TestDb::pool().writers);
    }

    /// The settings a session shows, by name.
    fn shown(conn: &mut Conn, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .map(|n| conn.query_one(&format!("SHOW {n}"), &[]).unwrap().get(0))
            .collect()
    }

    #[test]
    fn every_session_asks_the_server_to_notice_a_lost_client_within_a_minute() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let names = [
            "tcp_keepalives_idle",
            "tcp_keepalives_interval",
            "tcp_keepalives_count",
            "tcp_user_timeout",
        ];
        let asked = ["30", "5", "3", "10000"];
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        // A write session, as `engines` makes them, and a reading one (the relay's too).
        let mut writing = connector.connected().unwrap();
        assert_eq!(shown(&mut writing, &names), asked);
        let mut reading = connector.generic_plans();
        assert_eq!(shown(&mut reading, &names), asked);
        assert_eq!(
            shown(&mut reading, &["plan_cache_mode"]),
            ["force_generic_plan"]
        );
        // Keepalives the URL sets are the operator's.
        let url = format!("{}?options=-c%20tcp_keepalives_idle%3D77", db.url());
        let connector = Connector::new(&url, &TestDb::pool()).unwrap();
        let mut reading = connector.generic_plans();
        assert_eq!(shown(&mut reading, &names[..1]), ["77"]);
        assert_eq!(
            shown(&mut reading, &["plan_cache_mode"]),
            ["force_generic_plan"]
        );
    }

    #[test]
    fn a_lock_wait_past_its_time_is_ended_by_the_server_and_the_session_stays() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let (connector, _) = db.migrated_answering_within(Duration::from_secs(2));
        let mut holder = connector.connected().unwrap();
        holder.begin().unwrap();
        holder.batch("SELECT pg_advisory_xact_lock(42)").unwrap();

        let mut waiter = connector.connected().unwrap();
        assert_eq!(
            shown(&mut waiter, &["lock_timeout", "statement_timeout"]),
            ["1s", "1500ms"]
        );
        let session = waiter.generation();
        let started = std::time::Instant::now();
        let waited = waiter.batch("SELECT pg_advisory_lock(42)");
        let took = started.elapsed();
        let e = waited.unwrap_err().to_string();
        assert!(e.contains("55P03"), "the server's lock timeout: {e}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1900),
            "after 1 s, before the watchdog's 2 s: {took:?}"
        );
        waiter.check().unwrap();
        assert_eq!(
            waiter.generation(),
            session,
            "the same session, still usable"
        );
        // A maintenance session (the migrations') has no lock timeout of its own.
        let mut maintenance = connector.maintenance().unwrap();
        assert_eq!(
            shown(&mut maintenance, &["lock_timeout", "statement_timeout"]),
            ["0", "0"]
        );
        holder.rollback();
    }

    #[test]
    fn a_pending_event_restored_from_another_server_goes_out() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        // As a dump of a server whose transaction ids ran far ahead of this one's leaves
        // it, beside an event this server wrote (committed: that a running transaction's
        // row is left alone rests on the statement's snapshot, migrate says why).
        let mut conn = connector.connected().unwrap();
        let payload = |n: i64| format!(r#"{{"event_id":"s:{n}","source":"s"}}"#);
        for (id, tx) in [
            (1_i64, "9000000000000"),
            (2, "pg_current_xact_id()::text::bigint"),
        ] {
            conn.batch(&format!(
                "INSERT INTO outbox (id, order_id, event_type, payload, created_at, tx)
                 VALUES ({id}, {id}, 'order_created', '{}', 0, {tx})",
                payload(id)
            ))
            .unwrap();
        }
        let pending = |connector: &Connector| -> Vec<i64> {
            let rows = reader(connector).pending_events(0, 10).unwrap();
            rows.iter().map(|r| r.id).collect()
        };
        // Event 2 would go once every transaction older than its own has ended, those of
        // other databases on the server too (tests run side by side).
        let mut check = connector.connected().unwrap();
        let started = std::time::Instant::now();
        let past = |check: &mut Conn| -> bool {
            check
                .query_one(
                    "SELECT tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                     FROM outbox WHERE id = 2",
                    &[],
                )
                .unwrap()
                .get(0)
        };
        while !past(&mut check) && started.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(past(&mut check));
        // Not before the restored one: published past it, the watermark would leave it
        // behind for good.
        assert_eq!(
            pending(&connector),
            Vec::<i64>::new(),
            "the restored one holds it"
        );
        migrate(&connector).unwrap();
        assert_eq!(pending(&connector), [1, 2], "after a start, in id order");
    }

    #[test]
    fn postgresql_runs_every_migration_but_sqlites_own_layouts() {
        let all: Vec<String> = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        let run: Vec<String> = migrations().iter().map(|m| m.name().to_string()).collect();
        assert!(all.iter().any(|m| m == "sqlite_row_keys"), "{all:?}");
        for name in &all {
            assert_eq!(
                run.contains(name),
                !sqlite_only(name),
                "{name}: run on PostgreSQL {:?}",
                run.contains(name)
            );
        }
    }
}
