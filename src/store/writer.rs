//! The writer thread: one write session, fed with jobs by a channel (group commit).
//!
//! It takes whatever jobs are queued (up to `MAX_BATCH`), runs each in a savepoint of ONE
//! transaction and answers every caller only after COMMIT: one fsync for many orders,
//! and a job that fails rolls back alone. A job is a closure over `Tx`, so a new kind of
//! write needs no change here. If the COMMIT fails, every caller of the batch is told so.
//!
//! An online create needs no savepoint where the engine counts its changes (SQLite): it
//! can fail only before its first write, or with the engine itself. Its savepoint was a
//! copy of every page it wrote. One that fails having written fails its whole batch,
//! and so does any job after which the engine's transaction is gone (SQLite ends it
//! itself on a full disk or an I/O error).

use super::{StoreError, Tx};
use crate::clock::now_micros;
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Rows of each table one pruning step deletes, in a transaction of its own: a few
/// milliseconds that queued orders wait at most.
const PRUNE_STEP_ROWS: usize = 1000;
/// How long one `prune` call keeps deleting; what is left waits for the next call.
const PRUNE_BUDGET: Duration = Duration::from_secs(2);
/// Orders one step of the lines' fill takes, in a transaction of its own.
const FILL_STEP_ROWS: usize = 1000;
/// Idempotency records are kept a little over the 24 h the contract promises.
const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(25 * 3600);
/// How long a gone product's snapshot row stays (V11): longer than any answer about it
/// (a lookup, a catalog page, each stamped when its request started) takes to commit.
const GONE_RETENTION: Duration = Duration::from_secs(3600);

/// A database engine as the writer drives it: transactions, savepoints, and the `Tx`
/// inside them.
pub trait Engine: Send + 'static {
    /// Jobs one transaction may hold.
    fn max_batch(&self) -> usize;
    /// Online creates (`WriterHandle::create`) one transaction may write together, on
    /// the writers that take them first (`spawn`); 0 if they are jobs like any other.
    fn combines(&self) -> usize {
        0
    }
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Begins a transaction for `creates` online creates written together.
    fn begin_combined(&mut self, creates: usize) -> Result<(), StoreError> {
        let _ = creates;
        self.begin()
    }
    fn savepoint(&mut self) -> Result<(), StoreError>;
    /// Keeps what the job since the savepoint did.
    fn release(&mut self) -> Result<(), StoreError>;
    /// Undoes what the job since the savepoint did.
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Ends the transaction, keeping nothing: its one job failed.
    fn rollback(&mut self);
    /// After a failure of the engine itself: nothing of the batch is kept.
    fn abandon(&mut self);
    fn tx(&mut self) -> &mut dyn Tx;
    /// Whether the transaction committed last wrote an event (the relay is then woken).
    fn wrote_events(&mut self) -> bool;
    /// Rows changed on the session so far, where the engine counts them: a job that
    /// runs without a savepoint is checked with it.
    fn changes(&mut self) -> Option<u64> {
        None
    }
    /// Whether the transaction begun is still open. SQLite ends it by itself when a
    /// statement fails on a full disk or an I/O error (without a statement journal, as
    /// a one-row insert has none): nothing before is kept, and what ran after it would
    /// commit statement by statement.
    fn in_transaction(&mut self) -> bool {
        true
    }
}

/// A job's result held until COMMIT, and how to deliver it: `None` if the batch
/// committed, else why it did not.
struct Settled {
    ok: bool,
    deliver: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

/// A job's work over the batch's transaction.
type Work = Box<dyn FnOnce(&mut dyn Tx) -> Settled + Send>;

struct Job {
    work: Work,
    /// Answers the caller when the job never ran (its batch failed first).
    refuse: Box<dyn FnOnce(StoreError) + Send>,
    kind: Kind,
}

/// How a job shares a transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// In a savepoint of its batch's transaction.
    Batched,
    /// In its batch's transaction without a savepoint where the engine counts changes:
    /// it fails only before its first write, or with the engine (`WriterHandle::create`).
    Bare,
    /// Housekeeping, which commits on its own: orders never wait on it in their
    /// transaction (nor roll back with it).
    Alone,
}

/// A job sent to the writer, its answer still to come.
pub struct Pending<T, E = StoreError>(mpsc::Receiver<Result<T, E>>);

impl<T, E: From<StoreError>> Pending<T, E> {
    /// The job's result, once its batch committed. No timeout: the writer always
    /// answers, and giving up early could report a failure for a change that then
    /// commits.
    pub fn wait(self) -> Result<T, E> {
        self.0.recv().map_err(|_| stopped())?
    }
}

/// Sends jobs to the writer and waits for their answers. Cheap to clone.
#[derive(Clone)]
pub struct WriterHandle {
    jobs: Sender<Job>,
    /// Online creates: to the writers that combine them, or with the other jobs.
    creates: Sender<Job>,
    /// The probe's heartbeat in flight, which every probe meanwhile waits for.
    probe: Arc<Mutex<Option<Arc<Probe>>>>,
}

/// One heartbeat's answer, for every probe waiting on it.
#[derive(Default)]
struct Probe {
    answer: Mutex<Option<Result<(), String>>>,
    answered: Condvar,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WriterHandle {
    /// Runs `work` in the next batch and returns its result once the batch committed.
    /// An `Err` from `work` undoes what it wrote; the rest of the batch goes on.
    pub fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
    {
        self.send(work, Kind::Batched)?.wait()
    }

    /// Runs `work`, an online create without an idempotency key, as `run` does; where the
    /// engine combines such creates (`Engine::combines`), it may be written in one
    /// statement with others that queued meanwhile. `work` must write only the order,
    /// its sales, its event and its fresh product rows: anything else fails it when it
    /// is combined. It may fail only before its first write, or with the engine: where
    /// the engine counts changes, it runs without a savepoint, and a failure after a
    /// write fails its whole batch.
    pub fn create<T, E, F>(&self, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
    {
        self.send_to(&self.creates, work, Kind::Bare)?.wait()
    }

    /// Marks events published once the broker confirmed them, without waiting: the
    /// relay publishes the next rows meanwhile. `Pending::wait` says how many were.
    pub fn mark_published(&self, ids: Vec<i64>) -> Result<Pending<usize>, StoreError> {
        self.send(
            move |tx| tx.mark_published(&ids, now_micros()),
            Kind::Batched,
        )
    }

    /// Records that the broker keeps refusing event `id`, since `since`.
    pub fn mark_blocked(&self, id: i64, since: i64) -> Result<usize, StoreError> {
        self.run(move |tx| tx.mark_blocked(id, since))
    }

    /// Deletes events published longer ago than `outbox_retention`, and idempotency
    /// records and gone products' snapshot rows past theirs, in steps of at most `PRUNE_STEP_ROWS` rows each in its own
    /// transaction, for up to `PRUNE_BUDGET`. Returns how many rows went.
    pub fn prune(&self, outbox_retention: Duration) -> Result<usize, StoreError> {
        let now = now_micros();
        let ago =
            |d: Duration| now.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let (outbox_before, idempotency_before, gone_before) = (
            ago(outbox_retention),
            ago(IDEMPOTENCY_RETENTION),
            ago(GONE_RETENTION),
        );
        let started = std::time::Instant::now();
        let mut total = 0;
        loop {
            let deleted = self
                .send(
                    move |tx| -> Result<usize, StoreError> {
                        Ok(tx.prune_outbox(outbox_before, PRUNE_STEP_ROWS)?
                            + tx.prune_idempotency(idempotency_before, PRUNE_STEP_ROWS)?
                            + tx.prune_gone_products(gone_before, PRUNE_STEP_ROWS)?)
                    },
                    Kind::Alone,
                )?
                .wait()?;
            total += deleted;
            if deleted == 0 || started.elapsed() > PRUNE_BUDGET {
                return Ok(total);
            }
        }
    }

    /// Gives the orders without `lines` (V8) their lines, `FILL_STEP_ROWS` in id order per
    /// transaction, until a step finds fewer (none left above the last id taken: an older
    /// instance's later orders wait for the next start) or `stop` fires or is dropped.
    /// Returns how many. Orders queued meanwhile wait for one step at most.
    pub fn fill_lines(&self, stop: &Receiver<()>) -> Result<usize, StoreError> {
        let (mut after, mut total) = (0, 0);
        while !crate::threads::stop_asked(stop) {
            let step = self
                .send(move |tx| tx.fill_lines(after, FILL_STEP_ROWS), Kind::Alone)?
                .wait()?;
            let Some((last, filled)) = step else { break };
            (after, total) = (last, total + filled);
            if filled < FILL_STEP_ROWS {
                break;
            }
        }
        Ok(total)
    }

    /// Proves the database takes a write, within `timeout`, for `/ready`: probes at the
    /// same time share one heartbeat, so that however often they come (a probe needs no
    /// identity) at most one is queued, and a probe that gave up leaves nothing more
    /// behind. Unlike `ping`, it may be answered before a job queued just before it. With
    /// several writing sessions (PostgreSQL), a session stuck on the shared heartbeat
    /// fails the probes until it fails itself (its connection's timeouts), where a probe
    /// of its own could have gone to another session: a stuck session is worth a 503.
    pub fn probe(&self, timeout: Duration) -> Result<(), StoreError> {
        let flight = {
            let mut slot = locked(&self.probe);
            match &*slot {
                Some(flight) => flight.clone(),
                None => {
                    let flight = Arc::new(Probe::default());
                    let (slot_ref, done) = (self.probe.clone(), flight.clone());
                    self.send_with(
                        &self.jobs,
                        |tx| tx.heartbeat(now_micros()),
                        Kind::Batched,
                        move |result: Result<(), StoreError>| {
                            // Probes from now on need a heartbeat of their own.
                            locked(&slot_ref).take();
                            // Given again to each probe as `Unavailable`, said once.
                            let why = |e| match e {
                                StoreError::Unavailable(why) => why,
                                other => other.to_string(),
                            };
                            *locked(&done.answer) = Some(result.map_err(why));
                            done.answered.notify_all();
                        },
                    )?;
                    *slot = Some(flight.clone());
                    flight
                }
            }
        };
        let answer = locked(&flight.answer);
        let (answer, _) = flight
            .answered
            .wait_timeout_while(answer, timeout, |a| a.is_none())
            .unwrap_or_else(|e| e.into_inner());
        match answer.as_ref() {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(StoreError::Unavailable(why.clone())),
            None => Err(StoreError::Unavailable(
                "the writer did not answer in time".into(),
            )),
        }
    }

    /// Proves the database takes a write, within `timeout`. A ping is answered once
    /// everything queued before it is committed.
    pub fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        self.send(|tx| tx.heartbeat(now_micros()), Kind::Batched)?
            .0
            .recv_timeout(timeout)
            .map_err(|_| StoreError::Unavailable("the writer did not answer in time".into()))?
    }

    /// The answer comes back over std's channel, which parks its waiter at once: a
    /// caller waits a whole commit (an fsync), and crossbeam's receive would first spin
    /// and yield the core a few times, a context switch each on a busy machine.
    fn send<T, E, F>(&self, work: F, kind: Kind) -> Result<Pending<T, E>, StoreError>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
    {
        self.send_to(&self.jobs, work, kind)
    }

    fn send_to<T, E, F>(
        &self,
        queue: &Sender<Job>,
        work: F,
        kind: Kind,
    ) -> Result<Pending<T, E>, StoreError>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
    {
        let (answer, answered) = mpsc::sync_channel(1);
        self.send_with(queue, work, kind, move |result| {
            // A caller that went away no longer needs its answer.
            let _ = answer.send(result);
        })?;
        Ok(Pending(answered))
    }

    /// Queues `work`; `answer` gets its result once its batch committed, or why it did
    /// not: the job is either refused (its batch failed before it ran) or delivered, so
    /// `answer` is called once.
    fn send_with<T, E, F, A>(
        &self,
        queue: &Sender<Job>,
        work: F,
        kind: Kind,
        answer: A,
    ) -> Result<(), StoreError>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, E> + Send + 'static,
        A: Fn(Result<T, E>) + Send + Sync + 'static,
    {
        let answer = Arc::new(answer);
        let refused = answer.clone();
        let refuse = Box::new(move |e: StoreError| refused(Err(e.into())));
        let work = Box::new(move |tx: &mut dyn Tx| {
            let result = work(tx);
            Settled {
                ok: result.is_ok(),
                deliver: Box::new(move |failed: Option<StoreError>| {
                    answer(match failed {
                        None => result,
                        Some(e) => Err(e.into()),
                    })
                }),
            }
        });
        queue
            .send(Job { work, refuse, kind })
            .map_err(|_| stopped())
    }
}

/// Writers that take online creates, where the engine combines them: while both write,
/// the creates that arrive queue, and the next to finish writes them together.
const COMBINING_WRITERS: usize = 2;

/// Starts a writer thread on each engine, all taking jobs from one queue; they stop when
/// every handle is dropped. `wake_relay` is signalled after each commit that wrote an
/// event. Where the engines combine online creates and there are more than two, those
/// creates have a queue of their own, which the first two take first (`run_combining`);
/// the first of them takes other jobs too when no create waits, and the second only
/// creates, so that creates never wait behind other jobs.
pub fn spawn(
    engines: Vec<Box<dyn Engine>>,
    wake_relay: Sender<()>,
) -> Result<(WriterHandle, Vec<JoinHandle<()>>), StoreError> {
    let (jobs, queue) = unbounded();
    let combining = match engines.first() {
        Some(e) if e.combines() > 1 && engines.len() > COMBINING_WRITERS => COMBINING_WRITERS,
        _ => 0,
    };
    let (creates, created) = if combining > 0 {
        unbounded()
    } else {
        (jobs.clone(), queue.clone())
    };
    let mut threads = Vec::with_capacity(engines.len());
    for (i, engine) in engines.into_iter().enumerate() {
        let wake_relay = wake_relay.clone();
        let thread = if i < combining {
            let created = created.clone();
            let queue = (i == 0).then(|| queue.clone());
            crate::threads::spawn_critical("writer", move || {
                run_combining(engine, created, queue, wake_relay)
            })
        } else {
            let queue = queue.clone();
            crate::threads::spawn_critical("writer", move || run(engine, queue, wake_relay))
        };
        threads.push(
            thread.map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?,
        );
    }
    Ok((
        WriterHandle {
            jobs,
            creates,
            probe: Arc::default(),
        },
        threads,
    ))
}

fn run(mut engine: Box<dyn Engine>, queue: Receiver<Job>, wake_relay: Sender<()>) {
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let mut batch = vec![first];
        if batch[0].kind != Kind::Alone {
            while batch.len() < engine.max_batch() {
                match queue.try_recv() {
                    Ok(job) if job.kind == Kind::Alone => {
                        held = Some(job);
                        break;
                    }
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        run_batch(engine.as_mut(), batch, &wake_relay, false);
    }
    log::debug!("writer: all handles dropped, stopping");
}

/// Takes online creates: one alone as any job, and all that queued meanwhile together,
/// up to `Engine::combines`. With `jobs` and no create queued, it takes the other jobs
/// too, one at a time (`max_batch` 1 wherever creates are combined).
fn run_combining(
    mut engine: Box<dyn Engine>,
    creates: Receiver<Job>,
    jobs: Option<Receiver<Job>>,
    wake_relay: Sender<()>,
) {
    loop {
        // (whether a create, the job); none once every handle is dropped.
        let next = match (creates.try_recv(), &jobs) {
            (Ok(job), _) => Some((true, job)),
            (Err(_), None) => creates.recv().ok().map(|j| (true, j)),
            (Err(_), Some(jobs)) => crossbeam_channel::select! {
                recv(creates) -> job => job.ok().map(|j| (true, j)),
                recv(jobs) -> job => job.ok().map(|j| (false, j)),
            },
        };
        let first = match next {
            Some((true, create)) => create,
            Some((false, job)) => {
                run_batch(engine.as_mut(), vec![job], &wake_relay, false);
                continue;
            }
            None => break,
        };
        let mut batch = vec![first];
        while batch.len() < engine.combines() {
            match creates.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(engine.as_mut(), batch, &wake_relay, true);
    }
    log::debug!("writer: all handles dropped, stopping");
}

fn run_batch(
    engine: &mut dyn Engine,
    mut batch: Vec<Job>,
    wake_relay: &Sender<()>,
    combined: bool,
) {
    if batch.len() == 1 {
        return run_one(engine, batch.remove(0), wake_relay);
    }
    let mut settled = Vec::with_capacity(batch.len());
    let mut waiting = batch.into_iter();
    let creates = waiting.len();
    let outcome = (|| {
        if combined {
            engine.begin_combined(creates)?;
        } else {
            engine.begin()?;
        }
        for job in waiting.by_ref() {
            // Rows changed before a job that runs without a savepoint.
            let bare = match job.kind {
                Kind::Bare => engine.changes(),
                _ => None,
            };
            if bare.is_none() {
                if let Err(e) = engine.savepoint() {
                    (job.refuse)(not_committed());
                    return Err(e);
                }
            }
            let done = (job.work)(engine.tx());
            let ok = done.ok;
            settled.push(done);
            if !engine.in_transaction() {
                return Err(transaction_lost());
            }
            match bare {
                None if ok => engine.release()?,
                None => engine.rollback_to_savepoint()?,
                Some(_) if ok => {}
                Some(before) if engine.changes() == Some(before) => {}
                Some(_) => {
                    return Err(StoreError::Unavailable(
                        "a job failed having written, without a savepoint to undo it alone".into(),
                    ))
                }
            }
        }
        engine.commit()
    })();
    match outcome {
        Ok(()) => {
            for s in settled {
                (s.deliver)(None);
            }
            if engine.wrote_events() {
                let _ = wake_relay.try_send(());
            }
        }
        Err(e) => {
            log::error!("writer: transaction failed, nothing of this batch was kept: {e}");
            engine.abandon();
            for s in settled {
                (s.deliver)(Some(not_committed()));
            }
            for job in waiting {
                (job.refuse)(not_committed());
            }
        }
    }
}

/// One job, one transaction: no savepoint needed.
fn run_one(engine: &mut dyn Engine, job: Job, wake_relay: &Sender<()>) {
    if let Err(e) = engine.begin() {
        log::error!("writer: cannot begin a transaction: {e}");
        engine.abandon();
        return (job.refuse)(not_committed());
    }
    let done = (job.work)(engine.tx());
    if !done.ok {
        engine.rollback();
        return (done.deliver)(None);
    }
    match engine.commit() {
        Ok(()) => {
            (done.deliver)(None);
            if engine.wrote_events() {
                let _ = wake_relay.try_send(());
            }
        }
        Err(e) => {
            log::error!("writer: transaction failed, nothing of it was kept: {e}");
            engine.abandon();
            (done.deliver)(Some(not_committed()));
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the writer stopped".into())
}

fn transaction_lost() -> StoreError {
    StoreError::Unavailable("the database ended the transaction when a job failed".into())
}

fn not_committed() -> StoreError {
    StoreError::Unavailable("the change was not committed".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Money, ProductId};
    use crate::store::CachedProduct;
    use crossbeam_channel::bounded;
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

        /// A new database with the migrations applied, and its write connection.
        fn migrated() -> (TempDb, rusqlite::Connection) {
            let db = TempDb::new();
            let mut conn = crate::store::open_write(&db.0).unwrap();
            crate::store::migrate(&mut conn).unwrap();
            (db, conn)
        }
    }

    impl TempDb {
        /// The ids `sql` selects, read on a connection of its own.
        fn ids(&self, sql: &str) -> Vec<i64> {
            let conn = crate::store::open_read(&self.0).unwrap();
            let mut st = conn.prepare(sql).unwrap();
            let ids = st.query_map([], |r| r.get(0)).unwrap();
            ids.collect::<Result<_, _>>().unwrap()
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    /// A writer thread on `conn` (migrated), and the receiver of its relay wake-ups.
    fn sqlite_writer(conn: rusqlite::Connection) -> (WriterHandle, JoinHandle<()>, Receiver<()>) {
        let (wake, woken) = bounded(1);
        let engine = crate::store::SqliteEngine::new(conn).unwrap();
        let (handle, mut threads) = spawn(vec![Box::new(engine)], wake).unwrap();
        (handle, threads.remove(0), woken)
    }

    /// Holds the writer with a job that runs until `release` is sent (or dropped); returns
    /// once the job runs, so that what is sent after it stays queued.
    fn hold(handle: &WriterHandle) -> (crossbeam_channel::Sender<()>, Pending<()>) {
        let (release, held) = bounded::<()>(0);
        let (running, started) = bounded::<()>(1);
        let blocker = handle
            .send(
                move |_tx| -> Result<(), StoreError> {
                    running.send(()).unwrap();
                    let _ = held.recv();
                    Ok(())
                },
                Kind::Batched,
            )
            .unwrap();
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        (release, blocker)
    }

    #[test]
    fn pruning_goes_in_small_steps_that_writes_get_between() {
        let (db, conn) = TempDb::migrated();
        let old_rows: i64 = 300_000;
        // All published long ago; the newest must stay all the same.
        conn.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?1)
             INSERT INTO outbox (id, order_id, event_type, payload, created_at)
             SELECT x, x, 'order_created', hex(randomblob(100)), 1 FROM n",
            [old_rows],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO outbox_marks (upto, at) VALUES (?1, 1)",
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
        let (handle, thread, _woken) = sqlite_writer(conn);

        let stop = std::sync::atomic::AtomicBool::new(false);
        let (pruned, took, (pings, slowest)) = std::thread::scope(|s| {
            let pings = s.spawn(|| {
                let (mut pings, mut slowest) = (0, Duration::ZERO);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let started = Instant::now();
                    handle.ping(Duration::from_secs(30)).unwrap();
                    slowest = slowest.max(started.elapsed());
                    pings += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                (pings, slowest)
            });
            std::thread::sleep(Duration::from_millis(50));
            let started = Instant::now();
            let mut pruned = 0;
            // As the relay calls it, hourly: each call may leave some for the next.
            loop {
                let n = handle.prune(Duration::from_secs(1)).unwrap();
                if n == 0 {
                    break;
                }
                pruned += n;
            }
            let took = started.elapsed();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            (pruned, took, pings.join().unwrap())
        });
        eprintln!(
            "pruned {pruned} rows in {took:?}; {pings} writes meanwhile, the slowest {slowest:?}"
        );
        assert_eq!(pruned, old_rows as usize - 1 + 5000);
        // Pruned in one transaction, a write would wait about as long as the whole; in
        // steps, it waits for one step. Relative, since a step's time is the disk's.
        assert!(
            slowest * 4 < took && pings >= 20,
            "{pings} writes while pruning took {took:?}, the slowest {slowest:?}"
        );
        drop(handle);
        thread.join().unwrap();
        let left = db.ids("SELECT id FROM outbox");
        assert_eq!(left, vec![old_rows], "the newest row stays");
    }

    #[test]
    fn probes_at_the_same_time_queue_one_heartbeat_and_all_get_its_answer() {
        let (_db, conn) = TempDb::migrated();
        let (handle, thread, _woken) = sqlite_writer(conn);

        // Holds the writer, so that what the probes send stays queued.
        let (release, blocker) = hold(&handle);
        // A flood of probes, each giving up after 100 ms, as /ready's do after 2 s.
        let gave_up = std::thread::scope(|s| {
            let probes: Vec<_> = (0..50)
                .map(|_| s.spawn(|| handle.probe(Duration::from_millis(100))))
                .collect();
            probes
                .into_iter()
                .map(|p| p.join().unwrap())
                .filter(Result::is_err)
                .count()
        });
        assert_eq!(gave_up, 50, "the writer is held: no probe is answered");
        assert_eq!(handle.jobs.len(), 1, "one heartbeat queued for the fifty");

        // Probes that come while it is still queued wait for the same one.
        let waiting = std::thread::scope(|s| {
            let probes: Vec<_> = (0..10)
                .map(|_| s.spawn(|| handle.probe(Duration::from_secs(10))))
                .collect();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(handle.jobs.len(), 1, "still one heartbeat queued");
            release.send(()).unwrap();
            probes
                .into_iter()
                .map(|p| p.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert!(waiting.iter().all(Result::is_ok), "{waiting:?}");
        blocker.wait().unwrap();
        // Once answered, the next probe needs a heartbeat of its own: it waits for it.
        let (release, blocker) = hold(&handle);
        assert!(
            handle.probe(Duration::from_millis(100)).is_err(),
            "not answered by the heartbeat before"
        );
        assert_eq!(handle.jobs.len(), 1, "a new heartbeat queued");
        release.send(()).unwrap();
        blocker.wait().unwrap();
        handle.probe(Duration::from_secs(10)).unwrap();
        assert_eq!(handle.jobs.len(), 0);
        drop(handle);
        thread.join().unwrap();
    }

    /// A job that writes product `id`, then fails (before or after writing) or not.
    fn product_job(
        id: i64,
        fails: Option<bool>,
    ) -> impl FnOnce(&mut dyn Tx) -> Result<(), StoreError> + Send + 'static {
        move |tx| {
            if fails == Some(false) {
                return Err(StoreError::Unavailable(format!("job {id} fails first")));
            }
            tx.upsert_product(&CachedProduct {
                product_id: ProductId::new(id).unwrap(),
                name: format!("p{id}"),
                price: Money::from_cents(100),
                stock: 1,
                fetched_at: 1,
            })?;
            match fails {
                Some(true) => Err(StoreError::Unavailable(format!("job {id} fails"))),
                _ => Ok(()),
            }
        }
    }

    fn products_kept(db: &TempDb) -> Vec<i64> {
        db.ids("SELECT product_id FROM product_cache ORDER BY product_id")
    }

    #[test]
    fn online_creates_go_without_savepoints_and_one_that_fails_having_written_fails_its_batch() {
        let (db, conn) = TempDb::migrated();
        let (handle, thread, _woken) = sqlite_writer(conn);
        let bare = |id, fails| {
            handle
                .send_to(&handle.creates, product_job(id, fails), Kind::Bare)
                .unwrap()
        };

        // One batch: a job failing before it writes is left out, the others are kept.
        let (release, blocker) = hold(&handle);
        let answers = [bare(1, None), bare(2, Some(false)), bare(3, None)];
        drop(release);
        blocker.wait().unwrap();
        let answers: Vec<_> = answers.into_iter().map(Pending::wait).collect();
        assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
        assert!(
            matches!(&answers[1], Err(StoreError::Unavailable(why)) if why == "job 2 fails first")
        );
        assert_eq!(products_kept(&db), [1, 3]);

        // One batch: a job failing after it wrote cannot be undone alone. Nothing of the
        // batch is kept, and every caller is told, those before it and a job with a
        // savepoint too.
        let (release, blocker) = hold(&handle);
        let answers = [
            bare(4, None),
            handle.send(product_job(5, None), Kind::Batched).unwrap(),
            bare(6, Some(true)),
            bare(7, None),
        ];
        drop(release);
        blocker.wait().unwrap();
        for answer in answers {
            let answer = answer.wait();
            assert!(
                matches!(&answer, Err(StoreError::Unavailable(why)) if why == "the change was not committed"),
                "{answer:?}"
            );
        }
        assert_eq!(products_kept(&db), [1, 3], "nothing of that batch");

        // The writer goes on.
        bare(8, None).wait().unwrap();
        assert_eq!(products_kept(&db), [1, 3, 8]);
        drop(handle);
        thread.join().unwrap();
    }

    #[test]
    fn in_one_batch_each_failed_job_is_undone_alone_and_the_others_commit() {
        let (db, conn) = TempDb::migrated();
        let (handle, thread, _woken) = sqlite_writer(conn);

        // Holds the writer, so the jobs below queue up and go in one batch.
        let (release, blocker) = hold(&handle);
        // Each job writes its product, then fails or not: the first fails (no other job
        // in the transaction yet), then two pass around another failure, then the last
        // fails (after jobs were kept).
        let fails = [true, true, false, true, false, true];
        let answers: Vec<_> = (fails.iter().enumerate())
            .map(|(i, fail)| {
                let job = product_job(i as i64 + 1, fail.then_some(true));
                handle.send(job, Kind::Batched).unwrap()
            })
            .collect();
        drop(release);
        blocker.wait().unwrap();
        for (i, (answer, fail)) in answers.into_iter().zip(fails).enumerate() {
            let answer = answer.wait();
            match (fail, answer) {
                (true, Err(StoreError::Unavailable(why))) => {
                    assert_eq!(why, format!("job {} fails", i + 1))
                }
                (false, Ok(())) => {}
                (fail, answer) => panic!("job {i} (fails: {fail}) answered {answer:?}"),
            }
        }
        drop(handle);
        thread.join().unwrap();
        let kept = products_kept(&db);
        assert_eq!(kept, vec![3, 5], "only the jobs that passed");
    }

    #[test]
    fn the_lines_fill_fills_every_order_without_lines_keeps_the_rest_and_takes_no_step_once_stopped(
    ) {
        let (db, conn) = TempDb::migrated();
        // 2,500 orders of two lines, every third already with (other) lines of its own.
        conn.execute_batch(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2500)
             INSERT INTO orders (id, user_id, user_email, status, total_cents, created_at,
               updated_at, lines)
             SELECT x, 'u', 'u@example.com', 'pending', 300, x, x,
               CASE WHEN x % 3 = 0 THEN '[[9,\"kept\",1,1,1]]' END FROM n;
             INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity,
               price_cents, subtotal_cents)
             SELECT id, 2, 7, 'Mug \"blue\"', 2, 100, 200 FROM orders;
             INSERT INTO order_items (order_id, line_no, product_id, product_name, quantity,
               price_cents, subtotal_cents)
             SELECT id, 1, 3, 'Tea', 1, 100, 100 FROM orders;",
        )
        .unwrap();
        let (handle, thread, _woken) = sqlite_writer(conn);

        let (stop, stopped) = bounded::<()>(0);
        drop(stop);
        assert_eq!(
            handle.fill_lines(&stopped).unwrap(),
            0,
            "a stopped fill takes no step"
        );
        let (_stop, running) = bounded::<()>(0);
        assert_eq!(handle.fill_lines(&running).unwrap(), 2500 - 833);
        assert_eq!(handle.fill_lines(&running).unwrap(), 0, "nothing left");

        drop(handle);
        thread.join().unwrap();
        let conn = crate::store::open_read(&db.0).unwrap();
        let lines = |id: i64| -> String {
            conn.query_row("SELECT lines FROM orders WHERE id = ?1", [id], |r| r.get(0))
                .unwrap()
        };
        let filled = crate::store::lines::decode(&lines(2500)).unwrap();
        let names: Vec<&str> = filled.iter().map(|i| i.product_name.as_str()).collect();
        assert_eq!(names, ["Tea", "Mug \"blue\""], "{filled:?}");
        assert_eq!(filled[1].subtotal.cents(), 200);
        assert_eq!(
            lines(2499),
            r#"[[9,"kept",1,1,1]]"#,
            "lines already there stay"
        );
        let missing: i64 = conn
            .query_row("SELECT COUNT(*) FROM orders WHERE lines IS NULL", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(missing, 0);
    }

    /// An order of `lines` lines with long names: many pages of the tables and indexes.
    fn big_order(id: i64, lines: i64) -> crate::domain::Order {
        let mut order = crate::domain::Order::example(id, "u-full", "x");
        order.items = (1..=lines)
            .map(|p| crate::domain::OrderItem {
                product_id: ProductId::new(p).unwrap(),
                product_name: format!("{p:03}{}", "n".repeat(490)),
                quantity: 1,
                price: Money::from_cents(100),
                subtotal: Money::from_cents(100),
            })
            .collect();
        order.total = Money::from_cents(100 * lines);
        order
    }

    /// Three online creates (as `WriterHandle::create` sends them, without a savepoint)
    /// of orders 1, 2 and 3 of `lines` lines each, in one batch, on a database that may
    /// grow by `room` pages, as on a disk that fills up. Returns the ids answered as
    /// committed, the orders on disk and the lines of order 3 on disk.
    fn three_creates_on_a_full_disk(room: i64, lines: [i64; 3]) -> (Vec<i64>, Vec<i64>, i64) {
        let (db, conn) = TempDb::migrated();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let cap: i64 = conn
            .query_row(
                &format!("PRAGMA max_page_count = {}", pages + room),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(cap, pages + room);
        let (handle, thread, _woken) = sqlite_writer(conn);
        let (release, blocker) = hold(&handle);
        let answers: Vec<_> = (1..=3)
            .map(|id| {
                let order = big_order(id, lines[id as usize - 1]);
                let job = move |tx: &mut dyn Tx| -> Result<i64, StoreError> {
                    tx.insert_order(&order)?;
                    Ok(order.id.get())
                };
                handle.send_to(&handle.creates, job, Kind::Bare).unwrap()
            })
            .collect();
        drop(release);
        blocker.wait().unwrap();
        let committed = answers.into_iter().filter_map(|a| a.wait().ok()).collect();
        drop(handle);
        thread.join().unwrap();

        let kept = db.ids("SELECT id FROM orders ORDER BY id");
        let conn = crate::store::open_read(&db.0).unwrap();
        let lines_of_3 = conn
            .query_row(
                "SELECT COUNT(*) FROM order_items WHERE order_id = 3",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (committed, kept, lines_of_3)
    }

    #[test]
    fn a_full_disk_that_ends_the_transaction_keeps_no_create_after_it_unanswered() {
        // Create 1 fits; create 2 fails on its first statement, which ends SQLite's whole
        // transaction; create 3 would then be written outside any transaction.
        let (committed, kept, _) = three_creates_on_a_full_disk(40, [100, 100, 100]);
        assert_eq!(
            kept, committed,
            "on disk exactly the creates answered as committed"
        );
    }

    #[test]
    fn a_full_disk_that_ends_the_transaction_leaves_no_half_written_order() {
        // The same, with create 3 running out of room half-way through its lines.
        let (committed, kept, lines_of_3) = three_creates_on_a_full_disk(24, [40, 100, 100]);
        assert_eq!(
            kept, committed,
            "on disk exactly the creates answered as committed"
        );
        assert!(
            [0, 100].contains(&lines_of_3),
            "order 3 has {lines_of_3} of its 100 lines"
        );
    }
}
