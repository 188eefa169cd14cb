//! The relay thread: drains the outbox to RabbitMQ with publisher confirms.
//!
//! A row is marked published only after the broker confirmed it, and only as part of an
//! unbroken run from the oldest pending row, so what reaches the queue keeps the outbox
//! order (a row after a failed one is sent again with it: at least once, never reordered
//! by a retry). Without a broker it backs off and tries again; orders keep coming.
//!
//! A broker can also be there and refuse one event (nack or return), for example a queue at
//! its length limit with `reject-publish`. Then that event is sent again alone, so none
//! sent after that reaches the queue first (those already in flight behind it when it was
//! refused are not called back: the queue may take them); after `STUCK_AFTER` refusals
//! it is named once in the log and recorded in the outbox (`outbox status`, /ready and
//! /metrics show it) until it goes through. A refusal is not a lost connection: the link
//! stays up and says so.
//!
//! Nor is a broker short of memory or disk, which blocks what connections publish until
//! its alarm ends: the relay waits on its connection for as long (`await_confirms`).

mod confirms;
mod pace;

use crate::config::RabbitConfig;
use crate::metrics::Metrics;
use crate::store::{BlockedEvent, Lead, OutboxRow, Pending, Reads, WriterHandle};
use crate::threads::{stop_asked, Stoppable};
use amiquip::{
    AmqpProperties, AmqpValue, Auth, Channel, Confirm, Connection,
    ConnectionBlockedNotification as Blocking, ConnectionOptions, ConnectionTuning,
    Error as AmqpError, FieldTable, Publish, QueueDeclareOptions, Return,
};
use confirms::Confirms;
use crossbeam_channel::{after, bounded, never, select, Receiver, RecvTimeoutError};
use pace::{Pacer, PACE};
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows published before waiting for their confirms (the benchmark's ceiling (c) sends
/// batches of this size too).
pub const BATCH: usize = 500;
/// The outbox is read again this often even when nobody wakes the relay.
const POLL: Duration = Duration::from_secs(5);
/// How often an instance that does not relay asks whether it may (PostgreSQL, several
/// instances): the bound on a failover once the relaying instance is gone.
const STANDBY_POLL: Duration = Duration::from_secs(1);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// For the TCP connect and, separately, the AMQP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// AMQP heartbeats notice a dead connection that no call is waiting on.
const HEARTBEAT_SECS: u16 = 10;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Refusals of the same event after which it is declared stuck (about 4 s of backoff).
const STUCK_AFTER: u32 = 5;
/// At shutdown, the relay gets this long to publish what is pending, confirms included.
const LAST_DRAIN: Duration = Duration::from_secs(3);
/// Closing a link waits for the broker's close-ok, which a hung broker never sends; after
/// this long the link is left to its I/O thread (the heartbeat ends it, or the exit does).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `RelayHandle::shutdown` waits for the relay: its last drain and the close,
/// with room for one broker call already under way (a connect is bounded by 2 × 3 s).
pub const STOP_WITHIN: Duration = Duration::from_secs(8);

pub struct RelaySettings {
    pub rabbit: RabbitConfig,
    pub retention: Duration,
}

/// Opens a connection to the broker and a channel on it, the queue made sure of
/// (`ensure_queue`).
pub fn open_channel(rabbit: &RabbitConfig) -> Result<(Connection, Channel), String> {
    let (mut connection, channel) = connect_channel(rabbit)?;
    let channel = ensure_queue(&mut connection, channel, &rabbit.queue)?;
    Ok((connection, channel))
}

/// Opens a connection to the broker and a channel on it. The connection is built from its
/// parts (host, port, user, password), never from a URL: amiquip quotes a URL, password
/// included, in its connect errors, and those end up in the log and on the terminal.
pub fn connect_channel(rabbit: &RabbitConfig) -> Result<(Connection, Channel), String> {
    let at = format!("{}:{}", rabbit.host, rabbit.port);
    let stream =
        tcp_connect(&rabbit.host, rabbit.port).map_err(|e| format!("connect to {at}: {e}"))?;
    let options = ConnectionOptions::default()
        .auth(Auth::Plain {
            username: rabbit.user.clone(),
            password: rabbit.password.expose().to_string(),
        })
        .heartbeat(HEARTBEAT_SECS)
        .connection_timeout(Some(CONNECT_TIMEOUT));
    let mut connection =
        Connection::insecure_open_stream(stream, options, ConnectionTuning::default())
            .map_err(|e| format!("connect to {at}: {e}"))?;
    let channel = connection
        .open_channel(None)
        .map_err(|e| format!("open channel: {e}"))?;
    Ok((connection, channel))
}

/// Makes sure the durable queue `queue` exists, and returns a channel to use.
///
/// A queue that exists is used as it is, with whatever arguments the operator gave it (a
/// length limit, a dead-letter exchange…): declaring it again with other arguments would
/// fail and the relay would never publish. Only a missing queue is created, durable and
/// without arguments. A failed passive declare closes its channel, hence a fresh one.
fn ensure_queue(
    connection: &mut Connection,
    channel: Channel,
    queue: &str,
) -> Result<Channel, String> {
    match channel.queue_declare_passive(queue) {
        Ok(_) => return Ok(channel),
        Err(AmqpError::ServerClosedChannel { code: 404, .. }) => {}
        Err(e) => return Err(format!("look up queue {queue}: {e}")),
    }
    drop(channel);
    let channel = connection
        .open_channel(None)
        .map_err(|e| format!("open channel: {e}"))?;
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue, options)
        .map_err(|e| format!("declare queue {queue}: {e}"))?;
    Ok(channel)
}

/// A TCP connection to the first address of `host` that answers within `CONNECT_TIMEOUT`.
fn tcp_connect(host: &str, port: u16) -> std::io::Result<mio::net::TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return mio::net::TcpStream::from_stream(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the name has no address")))
}

/// The running relay; `shutdown` ends it after a last drain.
pub struct RelayHandle(Stoppable);

impl RelayHandle {
    /// Asks the relay to stop and waits for it up to `within`. False if it is still stuck
    /// in a broker call that does not return: it is then left behind (the process is
    /// about to exit; what it did not mark published goes out again at the next start).
    pub fn shutdown(self, within: Duration) -> bool {
        self.0.stop(within, "relay: still waiting on the broker")
    }
}

pub fn spawn(
    settings: RelaySettings,
    reader: Box<dyn Reads>,
    writer: WriterHandle,
    wake: Receiver<()>,
    metrics: Arc<Metrics>,
) -> std::io::Result<RelayHandle> {
    let thread = Stoppable::spawn("relay", true, move |stop| {
        Relay {
            settings,
            reader,
            writer,
            metrics,
            link: None,
            state: LinkState::Unknown,
            backoff: BACKOFF_MIN,
            jitter: Jitter::seeded(),
            last_prune: None,
            // Read when this instance takes the lead (`lead`).
            refusal: None,
            stop,
            drain_by: None,
            leading: None,
            marking: None,
            found_full_batch: false,
        }
        .run(wake)
    })?;
    Ok(RelayHandle(thread))
}

struct Link {
    // The channel must go before the connection it lives on.
    channel: Channel,
    connection: Connection,
    confirms: Receiver<Confirm>,
    returns: Receiver<Return>,
    /// The broker's word that it stops reading what this connection publishes (a memory
    /// or disk alarm), and that it reads again.
    blocking: Receiver<Blocking>,
    /// Since when the broker blocks this connection.
    blocked_since: Option<Instant>,
    /// What the broker confirmed of what went out on `channel`.
    tally: Confirms,
    /// Rows sent behind the batch being confirmed, in order: the next pass's batch.
    window: Vec<OutboxRow>,
    /// Ids of messages returned as unroutable and not yet settled (the next batch's).
    returned: Vec<String>,
}

impl Link {
    /// Forgets the rows sent behind a batch that did not go through whole: they go out
    /// again after it, and what the broker says of them now concerns nobody.
    fn drop_window(&mut self) {
        self.window.clear();
        self.returned.clear();
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum LinkState {
    Unknown,
    Up,
    Down,
}

struct Relay {
    settings: RelaySettings,
    reader: Box<dyn Reads>,
    writer: WriterHandle,
    metrics: Arc<Metrics>,
    link: Option<Link>,
    state: LinkState,
    backoff: Duration,
    jitter: Jitter,
    last_prune: Option<Instant>,
    /// The oldest pending event, while the broker refuses it.
    refusal: Option<Refusal>,
    stop: Receiver<()>,
    /// Once asked to stop: the end of the last drain.
    drain_by: Option<Instant>,
    /// Whether this instance publishes (one at a time on a shared database); `None`
    /// until first asked.
    leading: Option<bool>,
    /// Confirmed events the writer is marking published while the next rows go out.
    marking: Option<Marking>,
    /// Whether the last pass found a full batch: the next one then starts at once.
    found_full_batch: bool,
}

/// Confirmed events whose marking the writer has not answered yet.
struct Marking {
    /// The newest of them: the rows up to it are left out of the next batch.
    last: i64,
    count: usize,
    answer: Pending<usize>,
}

/// Refusals of one event in a row.
struct Refusal {
    row: i64,
    event_id: String,
    event_type: String,
    count: u32,
    /// First refusal, in microseconds.
    since: i64,
    /// Logged and recorded in the outbox as stuck.
    declared: bool,
}

impl Refusal {
    fn recorded(b: BlockedEvent) -> Refusal {
        Refusal {
            row: b.id,
            event_id: b.event_id,
            event_type: b.event_type,
            count: STUCK_AFTER,
            since: b.since,
            declared: true,
        }
    }
}

/// What one pass over the outbox achieved.
enum Pass {
    /// Another instance relays: ask again soon.
    Standby,
    /// Nothing is pending.
    Idle,
    /// Rows were confirmed; more may be pending.
    Progress,
    /// The broker is away or refused; wait before trying again.
    Failed,
}

impl Relay {
    fn run(mut self, wake: Receiver<()>) {
        let mut pacer = Pacer::new(PACE);
        let unwoken = never();
        loop {
            let paced = pacer.wait(Instant::now());
            if !paced.is_zero() {
                select! {
                    recv(self.stop) -> _ => break,
                    recv(after(paced)) -> _ => {},
                }
            }
            let began = Instant::now();
            self.housekeeping();
            let pass = self.pass();
            pacer.passed(began, self.found_full_batch);
            let wait = match pass {
                _ if self.drain_by.is_some() => break,
                Pass::Progress if stop_asked(&self.stop) => break,
                Pass::Progress => continue,
                Pass::Standby => STANDBY_POLL,
                Pass::Idle => POLL,
                Pass::Failed => self.next_backoff(),
            };
            // A commit's wake ends only an idle wait. After a failure the relay waits for
            // the broker (or the database), not for rows: woken by every commit, an
            // offline store re-read and re-parsed a full batch and dialled the broker at
            // each one, up to 40 times a second. Standing by, it waits for the lock.
            let woken = if matches!(pass, Pass::Idle) {
                &wake
            } else {
                &unwoken
            };
            select! {
                recv(self.stop) -> _ => break,
                recv(woken) -> msg => if msg.is_err() { break },
                recv(after(wait)) -> _ => {},
            }
        }
        self.last_drain();
        self.drop_link();
        self.metrics.set_broker_connected(false);
        log::debug!("relay stopped");
    }

    /// One more try at what is pending, bounded in time, before the process exits.
    fn last_drain(&mut self) {
        let deadline = *self.drain_by.get_or_insert(Instant::now() + LAST_DRAIN);
        while Instant::now() < deadline {
            match self.pass() {
                Pass::Progress => {}
                Pass::Idle | Pass::Standby => return,
                Pass::Failed => break,
            }
        }
        if let Ok(stats) = self.reader.outbox_stats() {
            if stats.pending > 0 {
                log::info!(
                    "{} events stay in the outbox until the next start",
                    stats.pending
                );
            }
        }
    }

    /// Whether this instance may publish now; says so when that changes.
    fn lead(&mut self) -> Option<bool> {
        let lead = match self.reader.lead_relay() {
            Ok(lead) => lead,
            Err(e) => {
                log::error!("relay cannot tell whether it leads: {e}");
                return None;
            }
        };
        let leading = lead != Lead::Elsewhere;
        if leading && (lead == Lead::Taken || self.leading != Some(true)) {
            // A block recorded before, by an earlier run or by an instance that relayed
            // since this one last did, goes on: its event is sent alone until it passes,
            // and none after it goes first. The record is newer than a refusal this
            // instance remembers from before: the event it names may have gone through
            // meanwhile, and another been refused.
            match self.reader.blocked_event() {
                Ok(Some(blocked)) => self.refusal = Some(Refusal::recorded(blocked)),
                Ok(None) => {}
                Err(e) => {
                    log::error!("relay cannot read the outbox: {e}");
                    // Not known to lead yet: the next pass reads the record again.
                    self.leading = None;
                    return None;
                }
            }
        }
        if self.leading != Some(leading) {
            if leading {
                log::info!("relay: this instance publishes the outbox");
            } else {
                log::info!("relay: another instance publishes the outbox; standing by");
                // The broker link is the relaying instance's; this one holds none.
                self.drop_link();
                self.state = LinkState::Unknown;
                self.metrics.set_broker_connected(false);
            }
            self.metrics.set_relay_active(leading);
            self.leading = Some(leading);
        }
        Some(leading)
    }

    /// One pass; the marking of its confirmed rows may still be under way after it when
    /// it made progress (the next pass overlaps it), never after any other outcome.
    fn pass(&mut self) -> Pass {
        let pass = self.publish_pending();
        if matches!(pass, Pass::Progress) {
            return pass;
        }
        if let Some(link) = &mut self.link {
            link.drop_window();
        }
        if self.settle_marking() {
            pass
        } else {
            Pass::Failed
        }
    }

    /// Waits for the marking under way; false if it failed: its events stay pending and
    /// go out again (at least once), as after any failure to mark.
    fn settle_marking(&mut self) -> bool {
        let Some(m) = self.marking.take() else {
            return true;
        };
        match m.answer.wait() {
            Ok(_) => {
                self.metrics.events_published(m.count as u64);
                true
            }
            Err(e) => {
                log::error!("relay cannot mark events published: {e}");
                false
            }
        }
    }

    fn publish_pending(&mut self) -> Pass {
        self.found_full_batch = false;
        match self.lead() {
            Some(true) => {}
            Some(false) => return Pass::Standby,
            None => return Pass::Failed,
        }
        // The rows the last pass sent behind its own, else the oldest pending ones. Rows
        // being marked are still pending in the database: read past them. Nothing beyond
        // them is idle, as nothing at all is: `pass` then waits for the marking.
        let in_flight = self
            .link
            .as_mut()
            .map(|l| std::mem::take(&mut l.window))
            .unwrap_or_default();
        let fresh = in_flight.is_empty();
        let rows = if fresh {
            let after = self.marking.as_ref().map_or(0, |m| m.last);
            match self.reader.pending_events(after, BATCH) {
                Ok(rows) => rows,
                Err(e) => {
                    log::error!("relay cannot read the outbox: {e}");
                    return Pass::Failed;
                }
            }
        } else {
            in_flight
        };
        self.found_full_batch = rows.len() >= BATCH;
        let stopping = self.drain_by.is_some();
        if rows.is_empty() {
            if !stopping {
                self.check_idle_link();
            }
            return Pass::Idle;
        }
        if self.link.is_none() && stopping && self.state == LinkState::Down {
            // Known to be away: a connect could outlast the drain.
            return Pass::Failed;
        }
        if self.link.is_none() {
            match self.connect() {
                Ok(link) => {
                    self.link = Some(link);
                    self.set_state(LinkState::Up, None);
                }
                Err(e) => {
                    self.set_state(LinkState::Down, Some(&e));
                    return Pass::Failed;
                }
            }
        }
        if self.refusal.as_ref().is_some_and(|r| r.row < rows[0].id) {
            self.refusal = None; // published meanwhile
        }
        // While the oldest event is refused it goes alone: nothing after it may reach the
        // queue before it. (Rows in flight follow a batch that went through whole.)
        let alone = fresh && self.refusal.as_ref().is_some_and(|r| r.row == rows[0].id);
        let rows = if alone { &rows[..1] } else { &rows[..] };
        let link = self.link.as_mut().expect("connected above");
        let stop = if stopping { never() } else { self.stop.clone() };
        let queue = &self.settings.rabbit.queue;
        let sent = if fresh {
            link.tally.start_batch();
            send_batch(link, rows, queue)
        } else {
            Sent {
                count: rows.len(),
                error: None,
            }
        };
        // The broker confirms a batch after writing it to disk: meanwhile the next batch
        // goes out, so that it always has one to work on. It counts only once this one
        // went through whole; otherwise it is sent again from the first row that did not.
        let mut next_error = None;
        if sent.error.is_none() && !alone {
            let last = rows.last().expect("not empty").id;
            if let Ok(next) = self.reader.pending_events(last, BATCH) {
                let next_sent = send_batch(link, &next, queue);
                link.window = next;
                link.window.truncate(next_sent.count);
                next_error = next_sent.error;
            }
        }
        let mut outcome = await_confirms(link, rows, sent, &stop, self.drain_by);
        if outcome.link_error.is_none() {
            outcome.link_error = next_error;
        }
        if outcome.confirmed.len() == rows.len()
            && outcome.refused.is_none()
            && !outcome.returned
            && outcome.link_error.is_none()
        {
            link.tally.advance(rows.len());
        } else {
            link.drop_window();
        }
        if outcome.stop_seen {
            self.drain_by.get_or_insert(Instant::now() + LAST_DRAIN);
        }
        // Sent but not confirmed (nack, return, lost connection); rows never sent are not failures.
        let failed = outcome.sent - outcome.confirmed.len();
        if failed > 0 {
            self.metrics.events_failed(failed as u64);
        }
        let progressed = !outcome.confirmed.is_empty();
        if progressed {
            // Marks go in order: the last batch's before this one's.
            if !self.settle_marking() {
                return Pass::Failed;
            }
            let last = *outcome.confirmed.last().expect("progressed");
            match self.writer.mark_published(outcome.confirmed.clone()) {
                Ok(answer) => {
                    self.marking = Some(Marking {
                        last,
                        count: outcome.confirmed.len(),
                        answer,
                    })
                }
                Err(e) => {
                    // Published but not marked: they go out again later (at least once).
                    log::error!("relay cannot mark events published: {e}");
                    return Pass::Failed;
                }
            }
            self.went_through(&outcome.confirmed);
        }
        if let Some((index, why)) = outcome.refused {
            self.refused(&rows[index], why);
        }
        if outcome.returned {
            // Unroutable: the queue may have been deleted; a fresh link declares it again.
            // The broker is there all the same, so the link state does not change.
            self.drop_link();
        }
        match outcome.link_error {
            Some(e) => {
                // Whatever went wrong, a fresh connection and channel start clean.
                self.drop_link();
                self.set_state(LinkState::Down, Some(&e));
            }
            None if outcome.refused.is_none() => {
                self.backoff = BACKOFF_MIN;
                return Pass::Progress;
            }
            None => {}
        }
        if progressed {
            Pass::Progress
        } else {
            Pass::Failed
        }
    }

    /// The broker refused `row` (nack or return) once more.
    fn refused(&mut self, row: &OutboxRow, why: &str) {
        let refusal = match &mut self.refusal {
            Some(r) if r.row == row.id => {
                r.count += 1;
                r
            }
            slot => slot.insert(Refusal {
                row: row.id,
                event_id: row.event_id.clone(),
                event_type: row.event_type.clone(),
                count: 1,
                since: crate::clock::now_micros(),
                declared: false,
            }),
        };
        log::debug!(
            "relay: the broker refused event {} ({}, {why}), {} time(s) in a row",
            refusal.event_id,
            refusal.event_type,
            refusal.count
        );
        if refusal.count < STUCK_AFTER || refusal.declared {
            return;
        }
        log::warn!(
            "relay: the broker refused event {} ({}) {} times in a row ({why}); it is retried \
             alone, and the events after it wait until it goes through",
            refusal.event_id,
            refusal.event_type,
            refusal.count
        );
        match self.writer.mark_blocked(refusal.row, refusal.since) {
            Ok(_) => refusal.declared = true,
            Err(e) => log::error!("relay cannot record the refused event: {e}"),
        }
    }

    /// Ends a refusal whose event the broker has now confirmed.
    fn went_through(&mut self, confirmed: &[i64]) {
        let Some(r) = self.refusal.take_if(|r| confirmed.contains(&r.row)) else {
            return;
        };
        if r.declared {
            let secs = (crate::clock::now_micros() - r.since).max(0) / 1_000_000;
            log::info!(
                "relay: event {} ({}) went through after {secs} s; the events after it follow",
                r.event_id,
                r.event_type
            );
        }
    }

    fn connect(&self) -> Result<Link, String> {
        let (mut connection, channel) = open_channel(&self.settings.rabbit)?;
        let blocking = connection
            .listen_for_connection_blocked()
            .map_err(|e| format!("listen for blocking: {e}"))?;
        let returns = channel
            .listen_for_returns()
            .map_err(|e| format!("listen for returns: {e}"))?;
        let confirms = channel
            .listen_for_publisher_confirms()
            .map_err(|e| format!("listen for confirms: {e}"))?;
        channel
            .enable_publisher_confirms()
            .map_err(|e| format!("enable confirms: {e}"))?;
        Ok(Link {
            channel,
            connection,
            confirms,
            returns,
            blocking,
            blocked_since: None,
            tally: Confirms::new(),
            window: Vec::new(),
            returned: Vec::new(),
        })
    }

    /// With nothing to publish, a dead connection would go unnoticed (and /ready would
    /// say connected) until the next event; a cheap round trip finds out now.
    fn check_idle_link(&mut self) {
        let Some(link) = &self.link else { return };
        if let Err(e) = link
            .channel
            .queue_declare_passive(self.settings.rabbit.queue.as_str())
        {
            self.drop_link();
            self.set_state(LinkState::Down, Some(&format!("idle check: {e}")));
        }
    }

    /// Closes the link, waiting at most `CLOSE_TIMEOUT` for the broker to answer.
    fn drop_link(&mut self) {
        let Some(link) = self.link.take() else { return };
        let (done_tx, done_rx) = bounded::<()>(0);
        let closing = std::thread::Builder::new()
            .name("relay-close".into())
            .spawn(move || {
                let _done = done_tx;
                let _ = link.channel.close();
                let _ = link.connection.close();
            });
        if closing.is_ok()
            && matches!(
                done_rx.recv_timeout(CLOSE_TIMEOUT),
                Err(RecvTimeoutError::Timeout)
            )
        {
            log::debug!("relay: the broker did not answer the close; leaving the link");
        }
    }

    fn set_state(&mut self, state: LinkState, error: Option<&str>) {
        self.metrics.set_broker_connected(state == LinkState::Up);
        if state == self.state {
            return;
        }
        let r = &self.settings.rabbit;
        match state {
            LinkState::Up => log::info!(
                "relay connected to {}:{}, queue {}",
                r.host,
                r.port,
                r.queue
            ),
            _ => log::warn!(
                "relay: broker unavailable ({}); events wait in the outbox, retrying",
                error.unwrap_or("unknown")
            ),
        }
        self.state = state;
    }

    fn next_backoff(&mut self) -> Duration {
        let wait = self.jitter.spread(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }

    fn housekeeping(&mut self) {
        if self.leading != Some(true) || self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY)
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        match self.writer.prune(self.settings.retention) {
            Ok(0) => {}
            Ok(n) => log::info!("pruned {n} published events and expired idempotency keys"),
            Err(e) => log::warn!("pruning failed: {e}"),
        }
    }
}

/// What became of a batch.
struct Outcome {
    sent: usize,
    /// Ids confirmed as an unbroken run from the first row.
    confirmed: Vec<i64>,
    /// The row (index) the run stops at, when the broker refused it: nack or return.
    refused: Option<(usize, &'static str)>,
    /// Some event came back unroutable.
    returned: bool,
    /// The link failed: publish error, no confirm in time, lost connection.
    link_error: Option<String>,
    /// The relay was asked to stop while it waited.
    stop_seen: bool,
}

/// A batch handed to the broker, its confirms not yet waited for.
struct Sent {
    count: usize,
    /// The publish that failed; the rows after it were not sent.
    error: Option<String>,
}

/// Publishes `rows` in order, up to the first that fails, as the batch's next messages.
fn send_batch(link: &mut Link, rows: &[OutboxRow], queue: &str) -> Sent {
    let mut sent = 0;
    let mut error = None;
    for row in rows {
        let properties = AmqpProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(row.event_id.clone())
            .with_type_(row.event_type.clone())
            .with_app_id("order-service".into())
            .with_timestamp((row.created_at / 1_000_000).max(0) as u64)
            .with_headers(headers(row));
        let publish = Publish {
            body: row.payload.as_bytes(),
            routing_key: queue.to_string(),
            mandatory: true,
            immediate: false,
            properties,
        };
        if let Err(e) = link.channel.basic_publish("", publish) {
            error = Some(format!("publish: {e}"));
            break;
        }
        link.tally.published();
        sent += 1;
    }
    Sent { count: sent, error }
}

/// Waits for the confirms of the batch `sent` of `rows`: up to `CONFIRM_TIMEOUT`, and no
/// later than `drain_by`, or `LAST_DRAIN` after `stop` fires. While the broker blocks the
/// connection (a resource alarm) it waits for good, but for a stop: a new connection
/// would be blocked too, and the close of this one would wait for the alarm to end,
/// leaving a connection and its threads behind at each try.
fn await_confirms(
    link: &mut Link,
    rows: &[OutboxRow],
    sent: Sent,
    stop: &Receiver<()>,
    drain_by: Option<Instant>,
) -> Outcome {
    let Sent {
        count: sent,
        mut error,
    } = sent;
    let confirm_by = || {
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        drain_by.map_or(deadline, |by| deadline.min(by))
    };
    let mut deadline = confirm_by();
    let mut stop = stop.clone();
    let mut stop_seen = false;
    while link.tally.waiting_for(sent) {
        let left = deadline.saturating_duration_since(Instant::now());
        let timer = match link.blocked_since {
            Some(_) if !stop_seen && drain_by.is_none() => never(),
            _ => after(left),
        };
        let raw = select! {
            recv(link.confirms) -> c => match c {
                Ok(c) => c,
                Err(_) => {
                    error.get_or_insert_with(|| "the connection was lost".into());
                    break;
                }
            },
            recv(link.blocking) -> b => {
                match b {
                    Ok(Blocking::Blocked(why)) => {
                        log::warn!(
                            "relay: the broker blocks publishing ({why}); events wait in \
                             the outbox until it lifts the alarm"
                        );
                        link.blocked_since.get_or_insert_with(Instant::now);
                    }
                    Ok(Blocking::Unblocked) => {
                        if let Some(since) = link.blocked_since.take() {
                            log::info!(
                                "relay: the broker publishes again after {} s",
                                since.elapsed().as_secs()
                            );
                        }
                        deadline = confirm_by();
                    }
                    // Gone with the connection, which the confirms say too.
                    Err(_) => link.blocking = never(),
                }
                continue;
            },
            recv(stop) -> _ => {
                // Shutting down: what is in flight gets the last drain's time, no more.
                deadline = deadline.min(Instant::now() + LAST_DRAIN);
                stop = never();
                stop_seen = true;
                continue;
            },
            recv(timer) -> _ => {
                error.get_or_insert_with(|| "no confirm from the broker in time".into());
                break;
            },
        };
        link.tally.record(raw);
    }
    // A mandatory message that routed nowhere comes back as a Return and is acked too.
    // Returns of the next batch's messages wait for its own settlement.
    while let Ok(r) = link.returns.try_recv() {
        link.returned.extend(r.properties.message_id().clone());
    }
    let settlement = confirms::settle(rows, link.tally.batch(), &link.returned);
    let before = link.returned.len();
    link.returned
        .retain(|id| !rows.iter().any(|row| &row.event_id == id));
    let returned = link.returned.len() < before;
    if settlement.incomplete {
        error.get_or_insert_with(|| "the broker did not confirm every event".into());
    }
    Outcome {
        sent,
        confirmed: settlement.confirmed,
        refused: settlement.refused,
        returned,
        link_error: error,
        stop_seen,
    }
}

fn headers(row: &OutboxRow) -> FieldTable {
    let mut h = FieldTable::new();
    h.insert("order_id".into(), AmqpValue::LongLongInt(row.order_id));
    h.insert("source".into(), AmqpValue::LongString(row.source.clone()));
    h
}

/// A little randomness for backoff, so that many stores do not retry in step.
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Jitter {
        Jitter(crate::clock::now_micros() as u64 ^ u64::from(std::process::id()) | 1)
    }

    /// `d` scaled by a factor in [0.75, 1.25).
    fn spread(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let factor = 0.75 + (self.0 % 1000) as f64 / 2000.0;
        d.mul_f64(factor)
    }
}
