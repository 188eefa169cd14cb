//! Gets by id from all the reading sessions of a process, combined: while `IN_FLIGHT`
//! queries for orders by id run (started within `PATIENCE`), the gets that arrive wait,
//! and the next query reads them all at once.
//!
//! A get reads one row by its key, and most of what it costs PostgreSQL is the query
//! itself: its backend woken, the protocol, the executor started and ended. On the two
//! cores `pgbench` ran 38,000 queries/s of one id, and 32,000/s of four ids: three times
//! the rows. No get waits on a timer: one that finds a place free sends its own query at
//! once.
//!
//! A get that waits holds no thread: it leaves what to do with its order (`Then`: on the
//! HTTP side, write the answer) and its worker goes on to the next request. The query
//! that holds a place answers its own get first, then reads every get waiting by then in
//! one more query, and so on until none waits: each waiting get costs one thread woken
//! less, and more of them share a query. A connection's thread, which has no session,
//! leaves its get to a query running now (`join`, from http/mod.rs), so no worker is
//! woken for it at all; when none runs, the get goes to a worker, whose session reads it.
//!
//! A query that fails leaves each get it took to be read alone, on the same session (a
//! new one if it was lost): a row that does not read fails its own get only. A query
//! running longer than `PATIENCE` no longer holds its place, and the gets it took go
//! back to the queue: the next query to start reads them again, and each get is answered
//! once, by whichever query reads it first. So a hung session (a stopped server process,
//! a proxy that keeps the connection open) holds up no get for much longer than
//! `PATIENCE` while others arrive; it costs its own statement's timeout (the watchdog's)
//! only when none does.

use super::conn::Conn;
use super::reads::{order_of, orders_from, orders_where};
use crate::domain::Order;
use crate::store::{StoreError, Then};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Queries by id running at once in a process. Every get that arrives meanwhile waits,
/// so fewer means more ids per query: one at a time gave more gets a second than two,
/// with a shorter p99, and four fewer (README, *Gets that wait hold no thread*).
const IN_FLIGHT: usize = 1;
/// Ids one query reads at most.
const MAX_IDS: usize = 64;
/// How long a query keeps its place and the gets it took. A query by ids takes well
/// under a millisecond; one that takes this long is stuck, or its session is.
const PATIENCE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Combined {
    state: Mutex<State>,
    /// Queries sent and gets they read.
    #[cfg(test)]
    counts: Mutex<(u64, u64)>,
    /// Run by each query on its ids before it reads them: a test's panic, as a read's.
    #[cfg(test)]
    before_read: Mutex<Option<Arc<BeforeRead>>>,
}

#[cfg(test)]
type BeforeRead = dyn Fn(&[i64]) + Send + Sync;

#[derive(Default)]
struct State {
    /// The running queries' places. A place is freed when its session finds no get
    /// waiting, even one no longer counted.
    running: Vec<Place>,
    waiting: VecDeque<Get>,
    tickets: u64,
}

/// A running query's place.
struct Place {
    ticket: u64,
    /// When its query started.
    at: Instant,
    /// The gets its query took, until it has read them or they go back to the queue.
    taken: Vec<Get>,
}

impl State {
    /// Places whose query started within `PATIENCE`.
    fn counted(&self, now: Instant) -> usize {
        self.running
            .iter()
            .filter(|p| now.duration_since(p.at) < PATIENCE)
            .count()
    }

    /// Takes a place for a query starting now, if fewer than `IN_FLIGHT` count.
    fn take_place(&mut self, now: Instant) -> Option<u64> {
        (self.counted(now) < IN_FLIGHT).then(|| {
            self.tickets += 1;
            self.running.push(Place {
                ticket: self.tickets,
                at: now,
                taken: Vec::new(),
            });
            self.tickets
        })
    }

    /// Puts the unanswered gets of queries running past `PATIENCE` back at the head of
    /// the queue, for the next query to read again.
    fn take_back(&mut self, now: Instant) {
        for place in &mut self.running {
            if now.duration_since(place.at) >= PATIENCE && !place.taken.is_empty() {
                for get in place.taken.drain(..).rev() {
                    if !get.answered() {
                        self.waiting.push_front(get);
                    }
                }
            }
        }
    }

    fn place(&mut self, ticket: u64) -> usize {
        let place = self.running.iter().position(|p| p.ticket == ticket);
        place.expect("a place is freed by its own session only")
    }
}

/// A place, given back if its session's thread unwinds (a `Then` that panics does not
/// unwind it: `Waiter::give` catches that).
struct Held<'a>(&'a Combined, u64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let ticket = self.1;
        self.0.state().running.retain(|p| p.ticket != ticket);
    }
}

/// A get, shared by the queue and the queries that take it.
type Get = Arc<Waiter>;

/// A get waiting for a query: the order's id, and what to do with it, which the first
/// query to read the order takes.
struct Waiter {
    id: i64,
    then: Mutex<Option<Then>>,
}

impl Waiter {
    fn new(id: i64, then: Then) -> Get {
        Arc::new(Waiter {
            id,
            then: Mutex::new(Some(then)),
        })
    }

    fn answered(&self) -> bool {
        self.then.lock().map_or(true, |t| t.is_none())
    }

    /// Gives the get its order, unless another query did; a `Then` that panics takes no
    /// other get's answer with it.
    fn give(&self, read: Result<Option<Order>, StoreError>) {
        let then = self.then.lock().ok().and_then(|mut t| t.take());
        if let Some(then) = then {
            let _ = catch_unwind(AssertUnwindSafe(move || then(read)));
        }
    }
}

impl Combined {
    /// Order `id`, given to `then`: read now by this session, which then reads the gets
    /// waiting meanwhile too, or later by the session of a query running now.
    pub fn order_then(&self, conn: &mut Conn, id: i64, then: Then) {
        let mut state = self.state();
        let now = Instant::now();
        state.take_back(now);
        let Some(ticket) = state.take_place(now) else {
            state.waiting.push_back(Waiter::new(id, then));
            return;
        };
        let held = Held(self, ticket);
        let mut batch = vec![Waiter::new(id, then)];
        loop {
            let take = state.waiting.len().min(MAX_IDS - batch.len());
            batch.extend(state.waiting.drain(..take));
            let place = state.place(ticket);
            state.running[place].taken.clone_from(&batch);
            drop(state);
            #[cfg(test)]
            {
                let mut counts = self.counts.lock().unwrap();
                counts.0 += 1;
                counts.1 += batch.len() as u64;
            }
            // A read that panics fails the gets it took (`give` does nothing for one
            // answered already) and goes on as any other does: its place is freed under
            // the lock, or kept for the gets that joined meanwhile, which else would wait
            // for a place nobody holds.
            let reading = || {
                #[cfg(test)]
                {
                    let before = self.before_read.lock().unwrap().clone();
                    if let Some(before) = before {
                        before(&batch.iter().map(|w| w.id).collect::<Vec<_>>());
                    }
                }
                read(conn, &batch)
            };
            if catch_unwind(AssertUnwindSafe(reading)).is_err() {
                for w in &batch {
                    w.give(Err(StoreError::Unavailable(
                        "reading orders by id panicked".into(),
                    )));
                }
            }
            batch.clear();
            state = self.state();
            let now = Instant::now();
            let place = state.place(ticket);
            state.running[place].taken.clear();
            state.take_back(now);
            if state.waiting.is_empty() {
                // Under the same lock as the look: a get that finds this place counted
                // has been taken.
                state.running.swap_remove(place);
                std::mem::forget(held);
                return;
            }
            // Counted again, for the next query.
            state.running[place].at = now;
        }
    }

    /// Order `id`, for the query running now to read next, if one counts; else nothing,
    /// and a session must read it (`order_then`). `then` makes the get's `Then`, called
    /// only if the get joins. Under the lock a query frees its place under, so a get that
    /// joins is read.
    pub fn join(&self, id: i64, then: &mut dyn FnMut() -> Then) -> bool {
        let mut state = self.state();
        let now = Instant::now();
        state.take_back(now);
        if state.counted(now) < IN_FLIGHT {
            return false;
        }
        state.waiting.push_back(Waiter::new(id, then()));
        true
    }

    /// Order `id`, read by this session's query or by another's: the calling thread waits.
    pub fn order(&self, conn: &mut Conn, id: i64) -> Result<Option<Order>, StoreError> {
        let (give, given) = mpsc::sync_channel(1);
        self.order_then(
            conn,
            id,
            Box::new(move |read| {
                let _ = give.send(read);
            }),
        );
        given.recv().unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the query that took a get ended without its order".into(),
            ))
        })
    }

    /// Queries by id sent (not counting the reads alone after one failed) and the gets
    /// they took, since the start.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64) {
        *self.counts.lock().unwrap()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the orders of `batch`'s gets not yet answered in one query and gives each its
/// own; if that fails, reads each alone.
fn read(conn: &mut Conn, batch: &[Get]) {
    let ids: Vec<i64> = batch
        .iter()
        .filter(|w| !w.answered())
        .map(|w| w.id)
        .collect();
    let orders = match ids.as_slice() {
        [] => return,
        // One id: the statement of one row, as simple a plan as there is.
        [id] => alone(conn, *id).map(|o| o.into_iter().collect()),
        _ => read_many(conn, &ids),
    };
    match orders {
        Ok(orders) => {
            for w in batch {
                let order = orders.iter().find(|o| o.id.get() == w.id).cloned();
                w.give(Ok(order));
            }
        }
        Err(e) if ids.len() == 1 => {
            if let Some(w) = batch.iter().find(|w| !w.answered()) {
                w.give(Err(e));
            }
        }
        Err(_) => {
            for w in batch.iter().filter(|w| !w.answered()) {
                w.give(alone(conn, w.id));
            }
        }
    }
}

fn alone(conn: &mut Conn, id: i64) -> Result<Option<Order>, StoreError> {
    let rows = conn.query(orders_where!("id = $1"), &[&id])?;
    order_of(conn, &rows)
}

fn read_many(conn: &mut Conn, ids: &[i64]) -> Result<Vec<Order>, StoreError> {
    let rows = conn.query(orders_where!("id = ANY($1)"), &[&ids])?;
    Ok(orders_from(conn, &rows, rows.len())?.0)
}

#[cfg(test)]
mod tests {
    use super::super::conn::Conn;
    use super::super::reads::PgReader;
    use super::super::test_db::TestDb;
    use super::super::{migrate, reader, Connector};
    use super::{IN_FLIGHT, PATIENCE};
    use crate::domain::{Order, OrderId};
    use crate::store::{Reads, StoreError, Then};
    use postgres::{Client, NoTls};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Orders 1 to 5 of users `user-1` to `user-5`, one line each; order 6 of `user-6`
    /// written without `lines` (an older instance's), its two items in `order_items`.
    fn orders(db: &TestDb) -> Connector {
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        run(
            db,
            "INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at,
                   updated_at, lines)
                 SELECT i, 'user-' || i, 'user' || i || '@example.com', 'pending', 1000 * i,
                   i, i, '[[' || i || ',\"Product ' || i || '\",1,' || 1000 * i || ',' || 1000 * i || ']]'
                 FROM generate_series(1, 5) i;
                 INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at,
                   updated_at)
                 VALUES (6, 'user-6', 'user6@example.com', 'shipped', 3500, 6, 6);
                 INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity,
                   price_cents, subtotal_cents)
                 VALUES (6, 1, 7, 'Product 7', 1, 1500, 1500), (6, 2, 8, 'Product 8', 2, 1000, 2000);",
        );
        connector
    }

    /// `orders`, but a query that reads order 6 panics.
    fn orders_with_one_that_panics(db: &TestDb) -> Connector {
        let connector = orders(db);
        *connector.gets.before_read.lock().unwrap() = Some(Arc::new(|ids| {
            assert!(!ids.contains(&6), "a read of order 6 panics");
        }));
        connector
    }

    /// Runs `sql` on a session of the test's own.
    fn run(db: &TestDb, sql: &str) {
        Client::connect(&db.url(), NoTls)
            .unwrap()
            .batch_execute(sql)
            .unwrap();
    }

    fn id(n: i64) -> OrderId {
        OrderId::parse(&n.to_string()).unwrap()
    }

    type Got = Result<Option<Order>, StoreError>;

    /// Order `n`, got on a thread of `reader`'s own.
    fn get(reader: PgReader, n: i64) -> mpsc::Receiver<Got> {
        let (got, answer) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = got.send(reader.order(id(n)));
        });
        answer
    }

    /// What a get answered; a get left waiting fails the test rather than hang it.
    fn answer(getting: mpsc::Receiver<Got>) -> Got {
        getting
            .recv_timeout(Duration::from_secs(10))
            .expect("a get answered within 10 s")
    }

    /// Order `n`, got on a thread of `reader`'s own, once that get waits in the queue
    /// behind the ones there before it.
    fn queued(connector: &Connector, reader: PgReader, n: i64) -> mpsc::Receiver<Got> {
        let behind = connector.gets.state().waiting.len();
        let getting = get(reader, n);
        let deadline = Instant::now() + Duration::from_secs(10);
        while connector.gets.state().waiting.len() <= behind {
            assert!(Instant::now() < deadline, "the get of {n} never waited");
            std::thread::sleep(Duration::from_millis(5));
        }
        getting
    }

    /// Waits until a running query has taken `n` gets.
    fn until_a_query_takes(connector: &Connector, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !connector
            .gets
            .state()
            .running
            .iter()
            .any(|p| p.taken.len() == n)
        {
            assert!(Instant::now() < deadline, "no query took {n} gets");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every place held by a query that started `ago`, as if running still; their
    /// tickets, to free them with `free`.
    fn hold_places(connector: &Connector, ago: Duration) -> Vec<u64> {
        let at = Instant::now()
            .checked_sub(ago)
            .expect("the clock is past `ago`");
        (0..IN_FLIGHT)
            .map(|_| {
                let mut state = connector.gets.state();
                state.tickets += 1;
                let ticket = state.tickets;
                state.running.push(super::Place {
                    ticket,
                    at,
                    taken: Vec::new(),
                });
                ticket
            })
            .collect()
    }

    /// Frees a place taken by `hold_places`, as its query's end would, but reading nothing.
    fn free(connector: &Connector, ticket: u64) {
        connector
            .gets
            .state()
            .running
            .retain(|p| p.ticket != ticket);
    }

    /// Gets of `ids` waiting behind every place, then one place freed: the next get
    /// leads, and its query takes them. The other places stay held.
    fn waiting_for_a_leader<const N: usize>(
        connector: &Connector,
        ids: [i64; N],
    ) -> Vec<mpsc::Receiver<Got>> {
        let places = hold_places(connector, Duration::ZERO);
        let waiting = ids
            .into_iter()
            .map(|id| queued(connector, reader(connector), id))
            .collect();
        free(connector, places[0]);
        waiting
    }

    fn check(order: &Order, id: i64) {
        assert_eq!(order.id.get(), id);
        assert_eq!(order.user_id.as_str(), format!("user-{id}"));
        let items: Vec<(i64, u32, i64)> = order
            .items
            .iter()
            .map(|i| (i.product_id.get(), i.quantity, i.price.cents()))
            .collect();
        let expected = match id {
            6 => vec![(7, 1, 1500), (8, 2, 1000)],
            _ => vec![(id, 1, 1000 * id)],
        };
        assert_eq!(items, expected, "order {id}'s items");
    }

    #[test]
    fn gets_that_wait_are_read_by_the_next_query_in_one() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        check(&reader(&connector).order(id(1)).unwrap().unwrap(), 1);
        assert_eq!(
            connector.gets.counts(),
            (1, 1),
            "a get alone, its own query"
        );

        // Every place taken: every get now waits.
        let places = hold_places(&connector, Duration::ZERO);
        let ids = [2, 6, 99, 3, 2];
        let getting: Vec<_> = ids
            .into_iter()
            .map(|id| queued(&connector, reader(&connector), id))
            .collect();
        // A place comes free: the next get takes it and reads them all with its own.
        free(&connector, places[0]);
        check(&answer(get(reader(&connector), 4)).unwrap().unwrap(), 4);
        for (id, handle) in ids.into_iter().zip(getting) {
            match answer(handle).unwrap() {
                Some(order) => check(&order, id),
                None => assert_eq!(id, 99, "order {id} not found"),
            }
        }
        assert_eq!(connector.gets.counts(), (2, 7), "six gets, one query");
        let state = connector.gets.state();
        assert_eq!(
            (state.running.len(), state.waiting.len()),
            (IN_FLIGHT - 1, 0),
            "the place freed once none waited"
        );
    }

    #[test]
    fn a_get_that_waits_holds_no_thread_and_is_answered_by_the_query_that_reads_it() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        let places = hold_places(&connector, Duration::ZERO);
        let (give, given) = mpsc::channel();
        reader(&connector).order_then(
            id(2),
            Box::new(move |read| {
                let _ = give.send((read, std::thread::current().id()));
            }),
        );
        // Back at once, on this thread, with nothing read yet.
        assert!(given.try_recv().is_err(), "answered before any query");
        assert_eq!(connector.gets.state().waiting.len(), 1);

        free(&connector, places[0]);
        let (got, own) = mpsc::channel();
        let reading = reader(&connector);
        std::thread::spawn(move || {
            let read = reading.order(id(3));
            let _ = got.send((read, std::thread::current().id()));
        });
        let (own, leading) = own.recv_timeout(Duration::from_secs(10)).unwrap();
        check(&own.unwrap().unwrap(), 3);
        let (read, answered_on) = given.recv_timeout(Duration::from_secs(10)).unwrap();
        check(&read.unwrap().unwrap(), 2);
        assert_eq!(
            answered_on, leading,
            "given its order by the reading thread"
        );
        assert_eq!(connector.gets.counts(), (1, 2), "one query for both");
    }

    #[test]
    fn a_get_joins_only_a_query_running_now_which_reads_it() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        let join = connector.join_get();
        let (give, given) = mpsc::channel();
        let then = |give: mpsc::Sender<Got>| -> Then {
            Box::new(move |read| {
                let _ = give.send(read);
            })
        };

        // No query runs: the get does not join, and its `Then` is never made.
        let mut made = false;
        assert!(!join(id(2), &mut || {
            made = true;
            then(give.clone())
        }));
        assert!(!made, "a get that does not join makes no `Then`");
        assert!(connector.gets.state().waiting.is_empty());

        // Every place held: the get joins, waits, and the next query reads it.
        let places = hold_places(&connector, Duration::ZERO);
        assert!(join(id(2), &mut || then(give.clone())));
        assert_eq!(connector.gets.state().waiting.len(), 1);
        assert!(given.try_recv().is_err(), "answered before any query");
        free(&connector, places[0]);
        check(&answer(get(reader(&connector), 3)).unwrap().unwrap(), 3);
        check(&answer(given).unwrap().unwrap(), 2);
        assert_eq!(connector.gets.counts(), (1, 2), "one query for both");

        // A place held past the patience counts no more: nothing to join.
        let stuck = hold_places(&connector, PATIENCE);
        assert!(!join(id(4), &mut || unreachable!("not joined")));
        for ticket in stuck {
            free(&connector, ticket);
        }
    }

    #[test]
    fn a_row_that_does_not_read_fails_its_own_get_only() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        run(
            &db,
            "INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at,
               updated_at, lines)
             VALUES (7, 'user-7', 'user7@example.com', 'pending', 100, 7, 7, 'damaged')",
        );
        fails_alone_in_its_query(&connector, 7);
    }

    #[test]
    fn a_column_that_no_longer_reads_as_this_build_expects_fails_its_own_get_only() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        // As a later migration might: order 6's items (in `order_items`) no longer read.
        run(
            &db,
            "ALTER TABLE order_items ALTER COLUMN quantity TYPE bigint",
        );
        fails_alone_in_its_query(&connector, 6);
    }

    /// Gets of order 1 and of `bad`, which does not read, waiting for the get of order 3
    /// to lead: one query takes all three, and only the get of `bad` fails.
    fn fails_alone_in_its_query(connector: &Connector, bad: i64) {
        let [first, failing]: [_; 2] = waiting_for_a_leader(connector, [1, bad])
            .try_into()
            .expect("two gets");

        check(
            &answer(get(reader(connector), 3)).unwrap().expect("found"),
            3,
        );
        check(&answer(first).unwrap().expect("found"), 1);
        assert!(answer(failing).is_err(), "order {bad} does not read");
        assert_eq!(connector.gets.counts(), (1, 3), "one query took all three");
    }

    #[test]
    fn gets_taken_by_a_session_that_cannot_connect_are_answered_with_its_error() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        let gone = Connector::new(&format!("{}_gone", db.url()), &TestDb::pool()).unwrap();
        let waiting = waiting_for_a_leader(&connector, [2, 6]);
        // The next get leads, on a session that cannot connect.
        let broken = PgReader::new(gone.generic_plans(), connector.gets.clone());
        assert!(answer(get(broken, 1)).is_err(), "its own get");
        for w in waiting {
            assert!(answer(w).is_err(), "answered, with the error");
        }
        assert_eq!(connector.gets.counts(), (1, 3));
        let state = connector.gets.state();
        assert_eq!(
            (state.running.len(), state.waiting.len()),
            (IN_FLIGHT - 1, 0)
        );
    }

    #[test]
    fn a_read_that_panics_gives_its_place_back_and_fails_the_gets_it_took() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders_with_one_that_panics(&db);
        let waiting = waiting_for_a_leader(&connector, [2]).remove(0);
        assert!(
            answer(get(reader(&connector), 6)).is_err(),
            "the get of 6 fails"
        );
        assert!(answer(waiting).is_err(), "the get it took fails too");
        {
            let state = connector.gets.state();
            assert_eq!(
                (state.running.len(), state.waiting.len()),
                (IN_FLIGHT - 1, 0),
                "its place given back"
            );
        }
        check(&reader(&connector).order(id(1)).unwrap().unwrap(), 1);
        assert_eq!(connector.gets.counts(), (2, 3));
    }

    #[test]
    fn a_get_that_joins_a_query_which_then_panics_is_read_by_the_next_query() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        // The query that reads order 6 waits for the test's word, then panics.
        let (go, word) = mpsc::channel::<()>();
        let word = Mutex::new(word);
        *connector.gets.before_read.lock().unwrap() = Some(Arc::new(move |ids| {
            if ids.contains(&6) {
                let _ = word.lock().unwrap().recv_timeout(Duration::from_secs(10));
                panic!("a read of order 6 panics");
            }
        }));
        let panicking = get(reader(&connector), 6);
        until_a_query_takes(&connector, 1);
        // A connection's thread joins it (http/mod.rs, `direct`).
        let (give, given) = mpsc::channel::<Got>();
        assert!(connector.join_get()(id(2), &mut || {
            let give = give.clone();
            Box::new(move |read| {
                let _ = give.send(read);
            })
        }));
        go.send(()).unwrap();

        // However the get of 6 ends (the test above says how), the get that joined is
        // read without another get arriving to lead a query.
        let _ = panicking.recv_timeout(Duration::from_secs(10));
        check(&answer(given).unwrap().unwrap(), 2);
        let state = connector.gets.state();
        assert_eq!((state.running.len(), state.waiting.len()), (0, 0));
    }

    #[test]
    fn queries_running_past_the_patience_no_longer_hold_their_places() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        // Every place held by queries near the end of their patience.
        let margin = Duration::from_millis(300);
        let stuck = hold_places(&connector, PATIENCE - margin);
        let waiting = queued(&connector, reader(&connector), 2);
        std::thread::sleep(margin);
        // Past it now: a get that arrives takes a new place, and the get waiting too.
        let started = Instant::now();
        check(&answer(get(reader(&connector), 3)).unwrap().unwrap(), 3);
        check(&answer(waiting).unwrap().unwrap(), 2);
        assert!(started.elapsed() < PATIENCE, "read at once");
        assert_eq!(connector.gets.counts(), (1, 2), "in one query");
        assert_eq!(
            connector.gets.state().running.len(),
            IN_FLIGHT,
            "the stuck queries keep their places until they end"
        );
        for ticket in stuck {
            free(&connector, ticket);
        }
    }

    /// A session's server process, stopped (`SIGSTOP`) until this is dropped: the
    /// session's next statement waits for good, as on a hung server.
    struct Stopped(libc::pid_t);

    impl Stopped {
        fn new(conn: &mut Conn) -> Stopped {
            let pid: i32 = conn
                .query_one("SELECT pg_backend_pid()", &[])
                .unwrap()
                .get(0);
            // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
            let stopped = unsafe { libc::kill(pid, libc::SIGSTOP) };
            assert_eq!(stopped, 0, "stopping PostgreSQL's process {pid} (as root)");
            Stopped(pid)
        }
    }

    impl Drop for Stopped {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }

    #[test]
    fn gets_taken_by_a_query_that_hangs_are_read_again_by_the_next_query_past_the_patience() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        let mut conn = connector.generic_plans();
        let stopped = Stopped::new(&mut conn);
        let waiting = waiting_for_a_leader(&connector, [2, 6]);
        // The next get leads, on the stopped session: its query takes the two waiting
        // gets and hangs.
        let (give, given) = mpsc::channel();
        let gets = connector.gets.clone();
        let hung = std::thread::spawn(move || {
            gets.order_then(
                &mut conn,
                1,
                Box::new(move |read| {
                    let _ = give.send(read);
                }),
            );
        });
        until_a_query_takes(&connector, 3);
        assert!(connector.gets.state().waiting.is_empty());

        std::thread::sleep(PATIENCE);
        // Past it: the next get's query reads the hung one's gets again with its own.
        let started = Instant::now();
        check(&answer(get(reader(&connector), 3)).unwrap().unwrap(), 3);
        for (id, getting) in [2, 6].into_iter().zip(waiting) {
            check(&answer(getting).unwrap().expect("found"), id);
        }
        let first = given.recv_timeout(Duration::from_secs(10));
        check(&first.expect("answered").unwrap().expect("found"), 1);
        assert!(started.elapsed() < PATIENCE, "read again at once");
        assert_eq!(
            connector.gets.counts(),
            (2, 7),
            "the hung query's three again"
        );

        // Its server process going on, the hung query ends, finds its gets answered and
        // gives back its place.
        drop(stopped);
        hung.join().expect("the hung query ended");
        let state = connector.gets.state();
        assert_eq!(
            (state.running.len(), state.waiting.len()),
            (IN_FLIGHT - 1, 0),
            "only the place still held by the test"
        );
    }

    #[test]
    fn many_gets_at_once_each_read_their_own_order_and_the_places_come_back() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let reader = reader(&connector);
                std::thread::spawn(move || {
                    for k in 0..200 {
                        let n: i64 = [1, 2, 3, 4, 5, 6, 99][(t + k) % 7];
                        match reader.order(id(n)).unwrap() {
                            Some(order) => check(&order, n),
                            None => assert_eq!(n, 99, "order {n} not found"),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("every get read its own order");
        }
        let (queries, gets) = connector.gets.counts();
        assert!(
            queries <= gets && gets == 1600,
            "{queries} queries took {gets} gets"
        );
        let state = connector.gets.state();
        assert_eq!(
            (state.running.len(), state.waiting.len()),
            (0, 0),
            "all idle"
        );
    }
}
