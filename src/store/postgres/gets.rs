//! Gets by id from all the reading sessions of a process, combined: while `IN_FLIGHT`
//! queries for orders by id run (started within `PATIENCE`), the gets that arrive wait,
//! and the next query to start reads them all at once.
//!
//! A get reads one row by its key, and most of what it costs PostgreSQL is the query
//! itself: its backend woken, the protocol, the executor started and ended. On the two
//! cores `pgbench` ran 38,000 queries/s of one id, and 32,000/s of four ids: three times
//! the rows. No get waits on a timer: one that finds a place free sends its own query at
//! once. When a query ends, the first waiting get takes its place and reads every get
//! then waiting in one query, which sees every change committed before they arrived.
//!
//! A query that fails leaves each get it took to read alone, on its own session (its own
//! get too, unless its session was lost). A get that has waited `PATIENCE`, queued or
//! taken by a query that has not answered, reads alone too. A query running longer than
//! `PATIENCE` no longer holds its place: the gets that arrive after it take new places,
//! so a hung session costs the gets already waiting one `PATIENCE`, and the rest nothing.

use super::conn::Conn;
use super::reads::{order_of, orders_from, orders_where};
use crate::domain::Order;
use crate::store::StoreError;
use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Queries by id running at once in a process. Every get that arrives meanwhile waits,
/// so fewer means more ids per query; one query at a time was no faster here than two.
const IN_FLIGHT: usize = 2;
/// Ids one query reads at most.
const MAX_IDS: usize = 64;
/// How long a get waits on other sessions' queries before it reads alone, and how long a
/// query keeps its place. A query by ids takes well under a millisecond; one that takes
/// this long is stuck, or its session is.
const PATIENCE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Combined {
    state: Mutex<State>,
    /// Queries sent and gets they read.
    #[cfg(test)]
    counts: Mutex<(u64, u64)>,
}

#[derive(Default)]
struct State {
    /// The running queries' places: ticket and start. A place is freed when its query
    /// ends, even one no longer counted.
    running: Vec<(u64, Instant)>,
    waiting: VecDeque<Waiter>,
    tickets: u64,
}

impl State {
    fn ticket(&mut self) -> u64 {
        self.tickets += 1;
        self.tickets
    }

    /// Places other than `but`'s whose query started within `PATIENCE`.
    fn counted(&self, now: Instant, but: Option<u64>) -> usize {
        self.running
            .iter()
            .filter(|(t, at)| Some(*t) != but && now.duration_since(*at) < PATIENCE)
            .count()
    }

    /// Takes a place for a query starting now, if fewer than `IN_FLIGHT` count.
    fn take_place(&mut self, now: Instant) -> Option<u64> {
        (self.counted(now, None) < IN_FLIGHT).then(|| {
            let ticket = self.ticket();
            self.running.push((ticket, now));
            ticket
        })
    }
}

struct Waiter {
    ticket: u64,
    id: i64,
    turn: mpsc::SyncSender<Turn>,
}

enum Turn {
    /// Read by another session's query.
    Read(Option<Order>),
    /// The query that took it failed, or it waited too long: read it alone.
    Alone,
    /// A query ended and handed its place over (this ticket's): lead the next.
    Lead(u64),
}

/// A running query's place, by its ticket: handed to the first waiting get when the
/// query ends (or the thread unwinds), or else given back. A place that no longer
/// counted is given back when `IN_FLIGHT` others count: handed over, it would count again.
struct Place<'a>(&'a Combined, u64);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        let Some(at) = state.running.iter().position(|(t, _)| *t == self.1) else {
            return;
        };
        let now = Instant::now();
        if state.counted(now, Some(self.1)) < IN_FLIGHT {
            while let Some(next) = state.waiting.pop_front() {
                if next.turn.send(Turn::Lead(self.1)).is_ok() {
                    state.running[at].1 = now;
                    return;
                }
            }
        }
        state.running.swap_remove(at);
    }
}

impl Combined {
    /// Order `id`, read by this session's query or by another's.
    pub fn order(&self, conn: &mut Conn, id: i64) -> Result<Option<Order>, StoreError> {
        let mut state = self.state();
        let place = match state.take_place(Instant::now()) {
            Some(ticket) => Place(self, ticket),
            None => {
                let ticket = state.ticket();
                let (turn, told) = mpsc::sync_channel(1);
                state.waiting.push_back(Waiter { ticket, id, turn });
                drop(state);
                let place = match self.wait(&told, ticket) {
                    Turn::Read(order) => return Ok(order),
                    Turn::Alone => return alone(conn, id),
                    Turn::Lead(place) => Place(self, place),
                };
                state = self.state();
                place
            }
        };
        let take = state.waiting.len().min(MAX_IDS - 1);
        let others: Vec<Waiter> = state.waiting.drain(..take).collect();
        drop(state);
        #[cfg(test)]
        {
            let mut counts = self.counts.lock().unwrap();
            counts.0 += 1;
            counts.1 += 1 + others.len() as u64;
        }
        if others.is_empty() {
            // One id: the statement of one row, as simple a plan as there is.
            let read = alone(conn, id);
            drop(place);
            return read;
        }
        let ids: Vec<i64> = std::iter::once(id)
            .chain(others.iter().map(|w| w.id))
            .collect();
        let read = read_many(conn, &ids);
        drop(place);
        match read {
            Ok(orders) => {
                let find = |id: i64| orders.iter().find(|o| o.id.get() == id).cloned();
                for w in others {
                    let _ = w.turn.send(Turn::Read(find(w.id)));
                }
                Ok(find(id))
            }
            Err(e) => {
                for w in others {
                    let _ = w.turn.send(Turn::Alone);
                }
                // Another get's row that does not read fails the query, not this get.
                if conn.is_open() {
                    alone(conn, id)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// What the get holding `ticket` does next: what it was told within `PATIENCE`, or
    /// else to read alone. A place handed over is taken all the same: it was sent under
    /// the lock, so it is there once the get is no longer waiting.
    fn wait(&self, told: &Receiver<Turn>, ticket: u64) -> Turn {
        match told.recv_timeout(PATIENCE) {
            Ok(turn) => return turn,
            Err(RecvTimeoutError::Disconnected) => return Turn::Alone,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let mut state = self.state();
        if let Some(at) = state.waiting.iter().position(|w| w.ticket == ticket) {
            state.waiting.remove(at);
            return Turn::Alone;
        }
        // A query took it and has not answered yet, unless it just did.
        told.try_recv().unwrap_or(Turn::Alone)
    }

    /// Queries sent and gets they read, since the start.
    #[cfg(test)]
    pub fn counts(&self) -> (u64, u64) {
        *self.counts.lock().unwrap()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
    use super::super::reads::PgReader;
    use super::super::test_db::TestDb;
    use super::super::{migrate, reader, Connector};
    use super::{Place, IN_FLIGHT, PATIENCE};
    use crate::domain::{Order, OrderId};
    use crate::store::{Reads, StoreError};
    use postgres::{Client, NoTls};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Orders 1 to 5 of users `user-1` to `user-5`, one line each; order 6 of `user-6`
    /// written without `lines` (an older instance's), its two items in `order_items`.
    fn orders(db: &TestDb) -> Connector {
        let connector = Connector::new(&db.url(), &TestDb::pool()).unwrap();
        migrate(&connector).unwrap();
        let mut client = Client::connect(&db.url(), NoTls).unwrap();
        client
            .batch_execute(
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
            )
            .unwrap();
        connector
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

    /// Every place held by a query that started `ago`, as if running still; their
    /// tickets, to end them with `Place`.
    fn hold_places(connector: &Connector, ago: Duration) -> Vec<u64> {
        let at = Instant::now()
            .checked_sub(ago)
            .expect("the clock is past `ago`");
        let mut state = connector.gets.state();
        (0..IN_FLIGHT)
            .map(|_| {
                let ticket = state.ticket();
                state.running.push((ticket, at));
                ticket
            })
            .collect()
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

        // Both places taken: every get now waits.
        let places = hold_places(&connector, Duration::ZERO);
        let ids = [2, 6, 99, 3, 2];
        let getting: Vec<_> = ids
            .into_iter()
            .map(|id| queued(&connector, reader(&connector), id))
            .collect();
        // A query ends: the first waiting get takes its place and reads them all.
        drop(Place(&connector.gets, places[0]));
        for (id, handle) in ids.into_iter().zip(getting) {
            match answer(handle).unwrap() {
                Some(order) => check(&order, id),
                None => assert_eq!(id, 99, "order {id} not found"),
            }
        }
        assert_eq!(connector.gets.counts(), (2, 6), "five gets, one query");
        assert_eq!(
            connector.gets.state().running.len(),
            IN_FLIGHT - 1,
            "the place given back once the query ended"
        );
    }

    #[test]
    fn a_query_that_fails_leaves_each_get_it_took_to_its_own_session() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        let gone = Connector::new(&format!("{}_gone", db.url()), &TestDb::pool()).unwrap();
        let places = hold_places(&connector, Duration::ZERO);
        // The first to wait leads the query, on a session that cannot connect.
        let broken = PgReader::new(gone.generic_plans(), connector.gets.clone());
        let mut getting = vec![queued(&connector, broken, 1)];
        for id in [2, 3, 6] {
            getting.push(queued(&connector, reader(&connector), id));
        }
        drop(Place(&connector.gets, places[0]));

        let mut results = getting.into_iter().map(answer);
        let failed = results.next().unwrap();
        assert!(failed.is_err(), "the broken session's own get: {failed:?}");
        for (id, read) in [2, 3, 6].into_iter().zip(results) {
            check(&read.unwrap().expect("found"), id);
        }
        assert_eq!(
            connector.gets.counts(),
            (1, 4),
            "the broken session's query took the three others"
        );
        assert_eq!(connector.gets.state().running.len(), IN_FLIGHT - 1);
    }

    #[test]
    fn a_row_that_does_not_read_fails_its_own_get_only() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        Client::connect(&db.url(), NoTls)
            .unwrap()
            .batch_execute(
                "INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at,
                   updated_at, lines)
                 VALUES (7, 'user-7', 'user7@example.com', 'pending', 100, 7, 7, 'damaged')",
            )
            .unwrap();
        let places = hold_places(&connector, Duration::ZERO);
        let first = queued(&connector, reader(&connector), 1);
        let damaged = queued(&connector, reader(&connector), 7);
        drop(Place(&connector.gets, places[0]));

        check(&answer(first).unwrap().expect("found"), 1);
        assert!(answer(damaged).is_err(), "order 7's lines do not read");
        assert_eq!(connector.gets.counts(), (1, 2), "one query took both");
    }

    #[test]
    fn queries_stuck_past_the_patience_hold_the_gets_waiting_then_and_none_after() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        // Both places held by queries that never end.
        let stuck = hold_places(&connector, Duration::ZERO);
        let started = Instant::now();
        check(&answer(get(reader(&connector), 2)).unwrap().unwrap(), 2);
        assert!(started.elapsed() >= PATIENCE, "a get then waited first");
        {
            let state = connector.gets.state();
            assert!(state.waiting.is_empty(), "no longer waiting");
            assert_eq!(
                state.running.len(),
                IN_FLIGHT,
                "the stuck queries keep their places"
            );
        }

        // They have run for `PATIENCE` now: a get that arrives takes a new place.
        let started = Instant::now();
        check(&answer(get(reader(&connector), 3)).unwrap().unwrap(), 3);
        assert!(
            started.elapsed() < PATIENCE,
            "a get after them read at once"
        );
        assert_eq!(connector.gets.counts(), (1, 1), "with a query of its own");

        // A stuck query ends at last: its place is freed too.
        drop(Place(&connector.gets, stuck[0]));
        assert_eq!(connector.gets.state().running.len(), IN_FLIGHT - 1);
    }

    #[test]
    fn a_stuck_query_that_ends_late_gives_its_place_back_when_two_others_count() {
        let Some(db) = TestDb::create() else {
            return;
        };
        let connector = orders(&db);
        let stuck = hold_places(&connector, PATIENCE);
        let running = hold_places(&connector, Duration::ZERO);
        let waiting = queued(&connector, reader(&connector), 2);
        // A stuck query ends: the two counted places stay the only ones.
        drop(Place(&connector.gets, stuck[0]));
        {
            let state = connector.gets.state();
            assert_eq!(
                state.waiting.len(),
                1,
                "the get still waits for a counted place"
            );
            assert_eq!(
                state.running.len(),
                2 * IN_FLIGHT - 1,
                "the stuck place freed"
            );
        }
        // A counted one ends: its place goes to the waiting get.
        drop(Place(&connector.gets, running[0]));
        check(&answer(waiting).unwrap().unwrap(), 2);
        assert_eq!(
            connector.gets.counts(),
            (1, 1),
            "read by the query that took the place"
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
            queries <= gets && gets <= 1600,
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
