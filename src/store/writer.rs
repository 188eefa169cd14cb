//! The writer thread: the one write connection, fed by a channel.
//!
//! It takes whatever commands are queued (up to `MAX_BATCH`), runs each in a savepoint
//! of ONE transaction and answers every caller only after COMMIT: one fsync for many
//! orders (group commit), and a command that fails rolls back alone.

use super::outbox;
use super::reads::{load_idempotency, load_order, CachedProduct};
use super::writes;
use super::StoreError;
use crate::clock::now_micros;
use crate::domain::{
    Email, IdempotencyKey, Money, Order, OrderId, OrderItem, PricedLine, ProductId, Status, UserId,
};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use rusqlite::{Connection, TransactionBehavior};
use std::thread::JoinHandle;
use std::time::Duration;

const MAX_BATCH: usize = 128;
/// Rows of each table one pruning step deletes, in a transaction of its own: a few
/// milliseconds that queued orders wait at most.
const PRUNE_STEP_ROWS: usize = 1000;
/// How long one `prune` call keeps deleting; what is left waits for the next call.
const PRUNE_BUDGET: Duration = Duration::from_secs(2);
/// Idempotency records are kept a little over the 24 h the contract promises.
const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(25 * 3600);

/// An order ready to be stored: priced, with what the product service answered.
#[derive(Debug, Clone)]
pub struct NewOrderRecord {
    pub user_id: UserId,
    pub user_email: Email,
    pub lines: Vec<PricedLine>,
    /// The key and the canonical request it answers.
    pub idempotency: Option<(IdempotencyKey, String)>,
    /// Fresh product answers, kept for the offline policy.
    pub fresh_products: Vec<CachedProduct>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New(Order),
    /// The key was used before with the same request: its first answer.
    Replayed {
        status: u16,
        body: String,
    },
}

type Reply<T> = Sender<Result<T, StoreError>>;

enum Command {
    Create(Box<NewOrderRecord>, Reply<Created>),
    Cancel(OrderId, UserId, Reply<Order>),
    SetStatus(OrderId, Status, Reply<Order>),
    MarkPublished(Vec<i64>, Reply<usize>),
    MarkBlocked {
        id: i64,
        since: i64,
        reply: Reply<usize>,
    },
    /// One bounded step of pruning; run alone, never in a batch of orders.
    PruneStep {
        outbox_before: i64,
        idempotency_before: i64,
        reply: Reply<usize>,
    },
    RememberProducts(Vec<CachedProduct>, Vec<ProductId>, Reply<()>),
    Ping(Reply<()>),
}

/// Sends commands to the writer and waits for their answers. Cheap to clone.
#[derive(Clone)]
pub struct WriterHandle {
    commands: Sender<Command>,
}

impl WriterHandle {
    pub fn create(&self, record: NewOrderRecord) -> Result<Created, StoreError> {
        self.call(|r| Command::Create(Box::new(record), r))
    }

    /// Cancels the caller's own order; another user's order is `NotFound`.
    pub fn cancel(&self, id: OrderId, user: UserId) -> Result<Order, StoreError> {
        self.call(|r| Command::Cancel(id, user, r))
    }

    pub fn set_status(&self, id: OrderId, status: Status) -> Result<Order, StoreError> {
        self.call(|r| Command::SetStatus(id, status, r))
    }

    pub fn mark_published(&self, ids: Vec<i64>) -> Result<usize, StoreError> {
        self.call(|r| Command::MarkPublished(ids, r))
    }

    /// Records that the broker keeps refusing pending event `id`, since `since` (µs).
    pub fn mark_blocked(&self, id: i64, since: i64) -> Result<usize, StoreError> {
        self.call(|reply| Command::MarkBlocked { id, since, reply })
    }

    /// Deletes events published longer ago than `outbox_retention`, and idempotency
    /// records past theirs, in steps of at most `PRUNE_STEP_ROWS` rows each in its own
    /// transaction, for up to `PRUNE_BUDGET`. Returns how many rows went.
    pub fn prune(&self, outbox_retention: Duration) -> Result<usize, StoreError> {
        let now = now_micros();
        let ago =
            |d: Duration| now.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let (outbox_before, idempotency_before) =
            (ago(outbox_retention), ago(IDEMPOTENCY_RETENTION));
        let started = std::time::Instant::now();
        let mut total = 0;
        loop {
            let deleted = self.call(|reply| Command::PruneStep {
                outbox_before,
                idempotency_before,
                reply,
            })?;
            total += deleted;
            if deleted == 0 || started.elapsed() > PRUNE_BUDGET {
                return Ok(total);
            }
        }
    }

    /// Keeps the product service's latest answers (and forgets products it no longer
    /// knows) without waiting: the caller's request has failed and must not wait on it.
    pub fn remember_products(&self, fresh: Vec<CachedProduct>, unknown: Vec<ProductId>) {
        if fresh.is_empty() && unknown.is_empty() {
            return;
        }
        let (tx, _) = bounded(1);
        let _ = self
            .commands
            .send(Command::RememberProducts(fresh, unknown, tx));
    }

    /// Proves the database takes a write, within `timeout`.
    pub fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let (tx, rx) = bounded(1);
        self.commands
            .send(Command::Ping(tx))
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.recv_timeout(timeout)
            .map_err(|_| StoreError::Unavailable("writer did not answer in time".into()))?
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (tx, rx) = bounded(1);
        self.commands
            .send(make(tx))
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        // No timeout: the writer always answers, and giving up early could report a
        // failure for a change that then commits.
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the change was not committed".into()))?
    }
}

pub struct Writer {
    conn: Connection,
    source: String,
    next_order_id: i64,
    next_event_id: i64,
    wake_relay: Sender<()>,
}

impl Writer {
    /// Starts the writer on `conn`; it stops when every handle is dropped.
    pub fn spawn(
        conn: Connection,
        source: String,
        wake_relay: Sender<()>,
    ) -> Result<(WriterHandle, JoinHandle<()>), StoreError> {
        let mut writer = Writer {
            conn,
            source,
            next_order_id: 0,
            next_event_id: 0,
            wake_relay,
        };
        writer.reload_ids()?;
        let (tx, rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || crate::app::exit_on_panic("writer", move || writer.run(rx)))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer: {e}")))?;
        Ok((WriterHandle { commands: tx }, thread))
    }

    fn reload_ids(&mut self) -> rusqlite::Result<()> {
        self.next_order_id = writes::max_order_id(&self.conn)? + 1;
        self.next_event_id = outbox::max_id(&self.conn)? + 1;
        Ok(())
    }

    fn run(mut self, commands: Receiver<Command>) {
        let mut held = None;
        loop {
            let first = match held.take() {
                Some(cmd) => cmd,
                None => match commands.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => break,
                },
            };
            let mut batch = vec![first];
            // Housekeeping commits on its own, so orders never wait on it in their
            // transaction (nor roll back with it).
            if !batch[0].runs_alone() {
                while batch.len() < MAX_BATCH {
                    match commands.try_recv() {
                        Ok(cmd) if cmd.runs_alone() => {
                            held = Some(cmd);
                            break;
                        }
                        Ok(cmd) => batch.push(cmd),
                        Err(_) => break,
                    }
                }
            }
            self.run_batch(batch);
        }
        log::debug!("writer: all handles dropped, stopping");
    }

    fn run_batch(&mut self, batch: Vec<Command>) {
        let events_before = self.next_event_id;
        let outcome = (|| {
            let mut tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut answers = Vec::with_capacity(batch.len());
            for cmd in batch {
                let mut sp = tx.savepoint()?;
                let answer = apply(
                    &mut Ids {
                        order: &mut self.next_order_id,
                        event: &mut self.next_event_id,
                        source: &self.source,
                    },
                    &sp,
                    cmd,
                );
                if answer.succeeded() {
                    sp.commit()?;
                } else {
                    sp.rollback()?;
                }
                answers.push(answer);
            }
            tx.commit()?;
            Ok::<_, rusqlite::Error>(answers)
        })();
        match outcome {
            Ok(answers) => {
                for a in answers {
                    a.send();
                }
                if self.next_event_id != events_before {
                    let _ = self.wake_relay.try_send(());
                }
            }
            Err(e) => {
                log::error!("writer: transaction failed, nothing of this batch was kept: {e}");
                if let Err(e) = self.reload_ids() {
                    log::error!("writer: cannot read ids back: {e}");
                }
                // The commands are gone with the failed transaction; their callers were
                // handed their channels inside `answers`, dropped here, so each call sees
                // a disconnected reply and reports the database unavailable.
            }
        }
    }
}

impl Command {
    fn runs_alone(&self) -> bool {
        matches!(self, Command::PruneStep { .. })
    }
}

struct Ids<'a> {
    order: &'a mut i64,
    event: &'a mut i64,
    source: &'a str,
}

impl Ids<'_> {
    fn record_event(
        &mut self,
        conn: &Connection,
        order: &Order,
        previous: Option<Status>,
        at: i64,
    ) -> rusqlite::Result<()> {
        let id = *self.event;
        *self.event += 1;
        let payload = outbox::payload(id, self.source, order, previous, at);
        outbox::insert(
            conn,
            id,
            order.id.get(),
            outbox::event_type(previous, order.status),
            &payload,
            at,
        )
    }
}

/// A command's result, held until the transaction commits.
enum Answer {
    Created(Reply<Created>, Result<Created, StoreError>),
    Order(Reply<Order>, Result<Order, StoreError>),
    Count(Reply<usize>, Result<usize, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
}

impl Answer {
    fn succeeded(&self) -> bool {
        match self {
            Answer::Created(_, r) => r.is_ok(),
            Answer::Order(_, r) => r.is_ok(),
            Answer::Count(_, r) => r.is_ok(),
            Answer::Unit(_, r) => r.is_ok(),
        }
    }

    fn send(self) {
        // A caller that went away no longer needs its answer.
        let _ = match self {
            Answer::Created(tx, r) => tx.send(r).is_ok(),
            Answer::Order(tx, r) => tx.send(r).is_ok(),
            Answer::Count(tx, r) => tx.send(r).is_ok(),
            Answer::Unit(tx, r) => tx.send(r).is_ok(),
        };
    }
}

fn apply(ids: &mut Ids<'_>, tx: &Connection, cmd: Command) -> Answer {
    match cmd {
        Command::Create(record, reply) => Answer::Created(reply, create(ids, tx, *record)),
        Command::Cancel(id, user, reply) => Answer::Order(
            reply,
            change_status(ids, tx, id, Some(&user), Status::Cancelled),
        ),
        Command::SetStatus(id, status, reply) => {
            Answer::Order(reply, change_status(ids, tx, id, None, status))
        }
        Command::MarkPublished(event_ids, reply) => Answer::Count(
            reply,
            outbox::mark_published(tx, &event_ids, now_micros()).map_err(StoreError::from),
        ),
        Command::MarkBlocked { id, since, reply } => Answer::Count(
            reply,
            outbox::mark_blocked(tx, id, since).map_err(StoreError::from),
        ),
        Command::PruneStep {
            outbox_before,
            idempotency_before,
            reply,
        } => Answer::Count(
            reply,
            (|| {
                Ok(outbox::prune(tx, outbox_before, PRUNE_STEP_ROWS)?
                    + writes::prune_idempotency(tx, idempotency_before, PRUNE_STEP_ROWS)?)
            })(),
        ),
        Command::RememberProducts(fresh, unknown, reply) => Answer::Unit(
            reply,
            (|| {
                for p in &fresh {
                    writes::upsert_product(tx, p)?;
                }
                for id in &unknown {
                    writes::forget_product(tx, *id)?;
                }
                Ok(())
            })(),
        ),
        Command::Ping(reply) => Answer::Unit(
            reply,
            writes::heartbeat(tx, now_micros()).map_err(StoreError::from),
        ),
    }
}

fn create(ids: &mut Ids<'_>, tx: &Connection, r: NewOrderRecord) -> Result<Created, StoreError> {
    if let Some((key, request)) = &r.idempotency {
        if let Some(seen) = load_idempotency(tx, &r.user_id, key.as_str())? {
            return if &seen.request == request {
                Ok(Created::Replayed {
                    status: seen.status,
                    body: seen.body,
                })
            } else {
                Err(StoreError::IdempotencyKeyReused)
            };
        }
    }
    let now = now_micros();
    let items: Vec<OrderItem> = r
        .lines
        .iter()
        .map(|l| OrderItem {
            product_id: l.product_id,
            product_name: l.product_name.clone(),
            quantity: l.quantity.get(),
            price: l.price,
            subtotal: l.subtotal(),
        })
        .collect();
    let total = items
        .iter()
        .try_fold(Money::ZERO, |sum, i| sum.plus(i.subtotal))
        .expect("totals are bounded by the item and quantity limits");
    let order = Order {
        id: OrderId::from_trusted(*ids.order),
        user_id: r.user_id.clone(),
        user_email: r.user_email,
        items,
        total,
        status: Status::Pending,
        created_at: now,
        updated_at: now,
    };
    *ids.order += 1;
    writes::insert_order(tx, &order)?;
    ids.record_event(tx, &order, None, now)?;
    if let Some((key, request)) = &r.idempotency {
        let body = serde_json::to_string(&order).expect("an order always serializes");
        writes::insert_idempotency(
            tx,
            r.user_id.as_str(),
            key.as_str(),
            request,
            201,
            &body,
            now,
        )?;
    }
    for p in &r.fresh_products {
        writes::upsert_product(tx, p)?;
    }
    Ok(Created::New(order))
}

/// Moves an order to `to` if the contract allows it; the same status is a no-op
/// (no event). With `owner`, only that user's order is visible.
fn change_status(
    ids: &mut Ids<'_>,
    tx: &Connection,
    id: OrderId,
    owner: Option<&UserId>,
    to: Status,
) -> Result<Order, StoreError> {
    let mut order = load_order(tx, id)?
        .filter(|o| owner.is_none_or(|u| &o.user_id == u))
        .ok_or(StoreError::NotFound)?;
    let from = order.status;
    if from == to {
        return Ok(order);
    }
    if !from.can_become(to) {
        return Err(StoreError::InvalidTransition { from, to });
    }
    let now = now_micros().max(order.updated_at);
    writes::update_status(tx, id.get(), to, now)?;
    order.status = to;
    order.updated_at = now;
    ids.record_event(tx, &order, Some(from), now)?;
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A migrated database in a fresh folder, removed on drop.
    struct TempDb(std::path::PathBuf);

    impl TempDb {
        fn new() -> TempDb {
            let dir = std::env::temp_dir().join(format!(
                "order-service-writer-{}-{}",
                std::process::id(),
                now_micros()
            ));
            TempDb(dir.join("orders.db"))
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    #[test]
    fn pruning_goes_in_small_steps_that_writes_get_between() {
        let db = TempDb::new();
        let mut conn = super::super::open_write(&db.0).unwrap();
        super::super::migrate(&mut conn).unwrap();
        let old_rows: i64 = 300_000;
        // All published long ago; the newest must stay all the same.
        conn.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?1)
             INSERT INTO outbox (id, order_id, event_type, payload, created_at, published_at)
             SELECT x, x, 'order_created', hex(randomblob(100)), 1, 1 FROM n",
            [old_rows],
        )
        .unwrap();
        conn.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000)
             INSERT INTO idempotency_keys
               (user_id, idem_key, request, response_status, response_body, created_at)
             SELECT 'u', 'k' || x, '{}', 201, '{}', 1 FROM n",
            [],
        )
        .unwrap();
        let (wake, _woken) = bounded(1);
        let (handle, thread) = Writer::spawn(conn, "unit".into(), wake).unwrap();

        let stop = std::sync::atomic::AtomicBool::new(false);
        let (pruned, slowest) = std::thread::scope(|s| {
            let pings = s.spawn(|| {
                let mut slowest = Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let started = Instant::now();
                    handle.ping(Duration::from_secs(30)).unwrap();
                    slowest = slowest.max(started.elapsed());
                    std::thread::sleep(Duration::from_millis(2));
                }
                slowest
            });
            std::thread::sleep(Duration::from_millis(50));
            let mut pruned = 0;
            // As the relay calls it, hourly: each call may leave some for the next.
            loop {
                let n = handle.prune(Duration::from_secs(1)).unwrap();
                if n == 0 {
                    break;
                }
                pruned += n;
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            (pruned, pings.join().unwrap())
        });
        eprintln!("pruned {pruned} rows; the slowest write meanwhile took {slowest:?}");
        assert_eq!(pruned, old_rows as usize - 1 + 5000);
        assert!(
            slowest < Duration::from_millis(250),
            "a write waited {slowest:?} while pruning"
        );
        drop(handle);
        thread.join().unwrap();
        let conn = super::super::open_read(&db.0).unwrap();
        let left: Vec<i64> = conn
            .prepare("SELECT id FROM outbox")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, vec![old_rows], "the newest row stays");
    }
}
