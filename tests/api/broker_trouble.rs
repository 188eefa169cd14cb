//! The broker on a bad day: it cannot be reached (and no password is printed while it is
//! not, and orders coming in do not make the relay retry sooner), it refuses one event forever (the event is named and the ones after it wait), it
//! stops answering mid-conversation (shutdown stays bounded, a second signal ends it now).

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::broker::*;
use crate::support::*;

// ---------------------------------------------------------------------------------------
// Secrets never printed
// ---------------------------------------------------------------------------------------

/// A password no test output would contain by chance.
const CANARY: &str = "canary-pw-5f0c2e91";

/// A host name that fails inside the resolver: a label over 63 bytes cannot be put in a
/// DNS query, so no query leaves the machine.
fn unresolvable_host() -> String {
    format!("{}.invalid", "x".repeat(70))
}

#[track_caller]
fn assert_no_canary(what: &str, text: &str) {
    assert!(
        !text.contains(CANARY),
        "{what} shows the password:\n{}",
        text.lines()
            .filter(|l| l.contains(CANARY))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Runs the binary with `env` (and every log line on), in `dir`; stdout and stderr together.
fn run_cli(dir: &Path, env: &[(&str, String)], args: &[&str]) -> String {
    let Output { stdout, stderr, .. } = clean_command(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "trace")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run order-service {args:?}: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    )
}

/// A service whose broker password and product-service credentials are the canary, with
/// every log line on; one order waits in the outbox, so the relay keeps trying the broker,
/// and one order failed on the product service, so its error is logged.
fn app_with_canary(host: &str, port: u16) -> TestApp {
    let products = ProductStandIn::with_default_catalog();
    let product_url = products
        .url()
        .replace("http://", &format!("http://shop:{CANARY}@"));
    let app = TestApp::builder()
        .products(products)
        .env("PRODUCT_SERVICE_URL", &product_url)
        .env("RABBITMQ_HOST", host)
        .env("RABBITMQ_PORT", &port.to_string())
        .env("RABBITMQ_PASSWORD", CANARY)
        .env("RUST_LOG", "trace")
        .spawn();
    app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_status(201);
    app.products.set(CABLE, Behaviour::Status(500));
    app.create_order(&ALICE, &items(&[(CABLE, 1)]))
        .assert_error(503, "product_service_unavailable");
    app
}

/// Everything the service and its commands print, with the broker unreachable (nothing
/// listens), unresolvable, or refusing the password: no line holds the password.
#[test]
fn no_log_line_or_command_output_shows_a_password() {
    let mut brokers = vec![("127.0.0.1".to_string(), 1, "connect to 127.0.0.1:1")];
    brokers.push((unresolvable_host(), BROKER_PORT, "connect to xxxx"));
    if require_broker() {
        // The real broker, which refuses the canary password.
        brokers.push((
            BROKER_HOST.to_string(),
            BROKER_PORT,
            "connect to 127.0.0.1:5672",
        ));
    }
    for (host, port, failure) in brokers {
        let app = app_with_canary(&host, port);
        app.wait_for_log(
            "broker unavailable",
            Duration::from_secs(10),
            &format!("the relay did not report the broker unavailable ({host}:{port})"),
        );
        // A few more tries, each of them logged at debug or trace.
        std::thread::sleep(Duration::from_millis(800));
        let stderr = app.stderr();
        assert_no_canary(&format!("the service's log ({host}:{port})"), &stderr);
        assert!(
            stderr.contains(failure),
            "the log names the broker it tried ({failure}):\n{stderr}"
        );
        assert!(
            stderr.contains("GET http://***@127.0.0.1:"),
            "the product-service failure is logged with its URL, credentials hidden:\n{stderr}"
        );
        assert_no_canary("GET /ready", &app.ready().body);
        assert_no_canary("GET /metrics", &app.metrics().body);

        let dir = temp_dir();
        let env = [
            ("DATABASE_URL", app.database_url()),
            ("RABBITMQ_HOST", host.clone()),
            ("RABBITMQ_PORT", port.to_string()),
            ("RABBITMQ_PASSWORD", CANARY.to_string()),
            ("STORE_ID", "test-store".to_string()),
        ];
        let peek = run_cli(dir.path(), &env, &["queue", "peek"]);
        assert!(
            peek.contains(failure),
            "queue peek says why it failed ({failure}):\n{peek}"
        );
        assert_no_canary("queue peek", &peek);
        for args in [
            &["outbox", "status"][..],
            &["migrate"],
            &["--help"],
            &["queue", "peek", "x"],
        ] {
            assert_no_canary(&format!("{args:?}"), &run_cli(dir.path(), &env, args));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Retries keep their backoff
// ---------------------------------------------------------------------------------------

/// While the broker is away, the relay retries on its backoff (a quarter of a second,
/// doubling, give or take a quarter), however many orders come in: an order a twentieth
/// of a second for three seconds dials the broker at most five times by the backoff, not
/// once an order. Each order still commits, and its event waits in the outbox.
#[test]
fn orders_taken_while_the_broker_is_away_do_not_hurry_its_retries() {
    // The broker's port hangs up on every connection (a balancer in front of a broker
    // that is down); the proxy counts the connections.
    let proxy = broker_proxy();
    proxy.cut();
    let app = TestApp::builder()
        .env("RABBITMQ_PORT", &proxy.port().to_string())
        .spawn();
    let started = Instant::now();
    let mut orders = 0;
    while started.elapsed() < Duration::from_secs(3) {
        app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
            .assert_status(201);
        orders += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let dials = proxy.refused();
    // Enough orders to tell a dial per order from the backoff's five, even on a busy
    // machine where each takes longer.
    assert!(orders >= 15, "only {orders} orders in 3 s");
    assert!(dials >= 1, "the relay never dialled the broker's port");
    assert!(
        dials <= 8,
        "{orders} orders in 3 s made the relay dial the broker {dials} times; \
         its backoff allows five"
    );
    assert_eq!(pending(&app), orders as i64, "every order's event waits");
}

// ---------------------------------------------------------------------------------------
// A stuck event is named
// ---------------------------------------------------------------------------------------

fn pending(app: &TestApp) -> i64 {
    app.query_one(
        "SELECT COUNT(*) FROM outbox WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
        &[],
    )
}

/// The event id and sequence of the `order_created` event of the order `created` answered.
fn created_event(app: &TestApp, created: &TestResponse) -> (String, i64) {
    let order = created.json()["id"].as_i64().expect("an order id");
    let rows = app.outbox_rows_for(order);
    let payload = &rows.first().expect("the order's event").payload;
    (
        payload["event_id"].as_str().unwrap().to_string(),
        payload["sequence"].as_i64().unwrap(),
    )
}

/// `order-service outbox status` on the service's database, while it runs.
fn outbox_status(app: &TestApp) -> String {
    let dir = temp_dir();
    run_cli(
        dir.path(),
        &[("DATABASE_URL", app.database_url())],
        &["outbox", "status"],
    )
}

/// Products 10..20 with names of 500 characters: an order of all ten makes an event of
/// about 6 KB, where an order of one mouse makes one of about 500 bytes.
fn long_named_products(products: &ProductStandIn) -> Vec<(i64, i64)> {
    (10..20)
        .map(|id| {
            products.set(
                id,
                product(&format!("{id:03}{}", "n".repeat(497)), "1.00", 100),
            );
            (id, 1)
        })
        .collect()
}

/// The queue takes at most 4,000 bytes and refuses (`reject-publish`) what would not fit:
/// the 6 KB event is refused forever, small events would still fit. The relay names the
/// refused event once, in the log, /ready, /metrics and `outbox status`; the events after
/// it do not reach the queue; the broker shows as connected all along. Once the queue is
/// gone (the relay declares a plain one again), the event goes through, then the rest, in
/// order, and the block is cleared everywhere.
/// A queue that refuses what would take it past 4,000 bytes (`reject-publish`).
fn small_queue() -> TestQueue {
    let mut arguments = amiquip::FieldTable::new();
    arguments.insert(
        "x-max-length-bytes".into(),
        amiquip::AmqpValue::LongLongInt(4000),
    );
    arguments.insert(
        "x-overflow".into(),
        amiquip::AmqpValue::LongString("reject-publish".into()),
    );
    TestQueue::declare_with(arguments)
}

/// Event 1, which fits `small_queue`, published; then event 2, `big_order`'s, which
/// never will, until /ready names it as blocked. Event 2's id and sequence (read back: on
/// PostgreSQL ids may have gaps).
fn one_event_published_and_one_blocked(app: &TestApp, big_order: &[(i64, i64)]) -> (String, i64) {
    app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_status(201);
    assert!(
        wait_until(Duration::from_secs(10), || pending(app) == 0),
        "the first event was not published into the queue that has its own arguments:\n{}",
        app.stderr()
    );
    let second = app.create_order(&ALICE, &items(big_order));
    second.assert_status(201);
    let (event_2, sequence_2) = created_event(app, &second);
    let mut ready = serde_json::Value::Null;
    let named = wait_until(Duration::from_secs(20), || {
        ready = app.ready().json();
        ready["outbox"]["blocked_event_id"] == event_2.as_str()
    });
    assert!(
        named,
        "/ready does not name the refused event: {ready}\n{}",
        app.stderr()
    );
    (event_2, sequence_2)
}

#[test]
fn an_event_the_broker_keeps_refusing_is_named_and_the_events_after_it_wait() {
    if !require_broker() {
        return;
    }
    let queue = small_queue();
    let products = ProductStandIn::with_default_catalog();
    let big_order = long_named_products(&products);
    let app = TestApp::builder()
        .products(products)
        .env("RABBITMQ_PORT", &BROKER_PORT.to_string())
        .env("RABBITMQ_QUEUE", queue.name())
        .env("RUST_LOG", "info")
        .spawn();

    let (event_2, sequence_2) = one_event_published_and_one_blocked(&app, &big_order);
    let ready = app.ready().json();
    assert_eq!(
        ready["outbox"]["blocked_event_type"], "order_created",
        "{ready}"
    );
    assert_utc_rfc3339(&ready["outbox"]["blocked_since"]);
    assert_eq!(ready["broker"], "connected", "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");

    // Event 3 would fit, but waits behind event 2.
    let third = app.create_order(&ALICE, &items(&[(MOUSE, 1)]));
    third.assert_status(201);
    let (event_3, _) = created_event(&app, &third);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        queue.message_count(),
        1,
        "only event 1 is in the queue; event 3 must not overtake event 2"
    );
    assert_eq!(pending(&app), 2);
    let metrics = app.metrics().body;
    assert_eq!(
        metric(&metrics, "order_service_outbox_blocked_event_sequence"),
        Some(sequence_2 as f64),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "order_service_outbox_blocked_seconds").is_some_and(|s| s >= 3.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "order_service_broker_connected"),
        Some(1.0)
    );
    let status = outbox_status(&app);
    assert!(
        status.contains("pending: 2")
            && status.contains(&format!(
                "blocked_event: {event_2} order_created refused by the broker since "
            )),
        "outbox status:\n{status}"
    );
    let log = app.stderr();
    let named_lines = log
        .lines()
        .filter(|l| l.contains(&format!("refused event {event_2} (order_created)")))
        .count();
    assert_eq!(named_lines, 1, "the event is named once in the log:\n{log}");
    assert_eq!(
        log.matches("relay connected").count(),
        1,
        "a refusal is not a reconnect:\n{log}"
    );
    assert!(
        !log.contains("broker unavailable"),
        "the broker was there all along; the log must not say otherwise:\n{log}"
    );

    // A restart keeps the block, and still sends nothing past it.
    let mut app = app;
    app.restart();
    let ready = app.ready().json();
    assert_eq!(
        ready["outbox"]["blocked_event_id"],
        event_2.as_str(),
        "{ready}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        queue.message_count(),
        1,
        "event 3 overtook event 2 after a restart"
    );

    // Without the limit, event 2 goes through, then event 3.
    queue.delete();
    assert!(
        wait_until(Duration::from_secs(20), || pending(&app) == 0),
        "the events did not go out once the queue took them:\n{}",
        app.stderr()
    );
    let consumer = QueueConsumer::start(&queue);
    assert!(consumer.wait_for(Duration::from_secs(10), |r| r.len() >= 2));
    let ids: Vec<String> = consumer.received().iter().map(|m| m.id()).collect();
    assert_eq!(ids, [event_2.as_str(), event_3.as_str()]);
    let ready = app.ready().json();
    assert!(
        ready["outbox"]["blocked_event_id"].is_null(),
        "the block is over: {ready}"
    );
    assert_eq!(
        metric(
            &app.metrics().body,
            "order_service_outbox_blocked_event_sequence"
        ),
        Some(0.0)
    );
    assert!(outbox_status(&app).contains("blocked_event: none"));
    assert!(
        app.stderr()
            .contains(&format!("event {event_2} (order_created) went through")),
        "{}",
        app.stderr()
    );
}

/// An instance of several on one PostgreSQL database, publishing to `queue`.
fn instance_on(builder: AppBuilder, queue: &TestQueue) -> AppBuilder {
    builder
        .postgres_only()
        .env("RABBITMQ_PORT", &BROKER_PORT.to_string())
        .env("RABBITMQ_QUEUE", queue.name())
        .env("RUST_LOG", "info")
}

/// On PostgreSQL, an instance standing by that takes over the relay keeps the block the
/// one before it recorded meanwhile: the refused event is sent alone, and the event behind
/// it, which would fit, does not overtake it.
#[test]
fn a_block_recorded_by_the_relaying_instance_goes_on_after_another_takes_over() {
    if !require_broker() || !require_postgres() {
        return;
    }
    let queue = small_queue();
    let products = ProductStandIn::with_default_catalog();
    let big_order = long_named_products(&products);
    let broker = |builder: AppBuilder| instance_on(builder, &queue);
    let mut first = broker(TestApp::builder().products(products)).spawn();
    // Another instance, standing by from before the block.
    let other = broker(TestApp::builder().on_database_of(&first)).spawn();
    one_event_published_and_one_blocked(&first, &big_order);
    first
        .create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_status(201);

    // The other instance takes over from the first.
    assert_eq!(other.ready().json()["relay"], "standby");
    first.kill();
    relays_and_keeps_the_block(&other, &queue);
    queue.delete();
}

/// `app` takes the relay, and the queue, holding one event, gets none of the two pending:
/// the first is refused, and the second, which would fit, waits behind it.
fn relays_and_keeps_the_block(app: &TestApp, queue: &TestQueue) {
    assert!(
        wait_until(Duration::from_secs(20), || {
            app.ready().json()["relay"] == "active"
        }),
        "the instance did not take the relay:\n{}",
        app.stderr()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        queue.message_count(),
        1,
        "an event overtook the refused one once this instance took the relay:\n{}",
        app.stderr()
    );
    assert_eq!(pending(app), 2);
}

/// Ends the session that holds the relay's lock on `app`'s database (the one exclusive
/// advisory lock held between requests), as a restarted server or a cut connection
/// would; the process that held it does not know yet.
fn end_relay_session(app: &TestApp) {
    let ended: Vec<bool> = app.query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[],
    );
    assert_eq!(ended, [true], "one session holds the relay's lock");
}

/// The bytes of each pending event's payload, oldest first.
fn pending_sizes(app: &TestApp) -> Vec<i64> {
    app.query(
        "SELECT octet_length(payload) FROM outbox WHERE id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks) ORDER BY id",
        &[],
    )
}

/// On PostgreSQL, an instance that takes the relay back goes by the block recorded while
/// another relayed, not by a refusal it remembers from before: the event it remembers
/// went through meanwhile, and the one refused since is sent alone, so that an event
/// behind it that would fit does not overtake it.
#[test]
fn an_instance_taking_the_relay_back_goes_by_the_block_recorded_meanwhile() {
    taking_the_relay_back(Meanwhile::StandsBy);
}

/// The same when the instance saw nothing of the other's turn (stopped all along): it
/// finds its lock's session gone and takes the lock again.
#[test]
fn an_instance_that_lost_its_session_goes_by_the_block_recorded_meanwhile() {
    taking_the_relay_back(Meanwhile::Stopped);
}

/// An order of `lines` placed on `app`, whose event the relaying instance (`app`) records
/// as blocked.
fn refused_and_recorded(app: &TestApp, lines: &[(i64, i64)]) {
    let created = app.create_order(&ALICE, &items(lines));
    created.assert_status(201);
    let (event, _) = created_event(app, &created);
    assert!(
        wait_until(Duration::from_secs(20), || {
            app.ready().json()["outbox"]["blocked_event_id"] == event.as_str()
        }),
        "event {event} is not recorded as blocked:\n{}",
        app.stderr()
    );
}

/// What the first instance does while the second relays.
#[derive(PartialEq)]
enum Meanwhile {
    StandsBy,
    Stopped,
}

fn taking_the_relay_back(meanwhile: Meanwhile) {
    if !require_broker() || !require_postgres() {
        return;
    }
    let queue = small_queue();
    let broker = |builder: AppBuilder| instance_on(builder, &queue);
    // Events of about 3.3 KB: one fits the empty queue, two do not.
    let (products, other_products) = (
        ProductStandIn::with_default_catalog(),
        ProductStandIn::with_default_catalog(),
    );
    let medium = long_named_products(&products)[..5].to_vec();
    long_named_products(&other_products);
    let first = broker(TestApp::builder().products(products)).spawn();
    let mut second = broker(
        TestApp::builder()
            .products(other_products)
            .on_database_of(&first),
    )
    .spawn();
    assert!(
        wait_until(Duration::from_secs(10), || {
            first.ready().json()["relay"] == "active" && second.ready().json()["relay"] == "standby"
        }),
        "the first instance relays, the second stands by"
    );

    // Two small events in the queue; the first instance's refused event 3 after them.
    for _ in 0..2 {
        first
            .create_order(&ALICE, &items(&[(MOUSE, 1)]))
            .assert_status(201);
    }
    assert!(
        wait_until(Duration::from_secs(10), || pending(&first) == 0),
        "{}",
        first.stderr()
    );
    refused_and_recorded(&first, &medium);

    // The second instance takes over while the first is stopped.
    first.signal("STOP");
    end_relay_session(&first);
    let took_over = wait_until(Duration::from_secs(20), || {
        second.ready().json()["relay"] == "active"
    });
    if meanwhile == Meanwhile::StandsBy {
        first.signal("CONT");
    }
    assert!(
        took_over,
        "the second instance did not take over:\n{}",
        second.stderr()
    );
    if meanwhile == Meanwhile::StandsBy {
        assert!(
            wait_until(Duration::from_secs(20), || {
                first.ready().json()["relay"] == "standby"
            }),
            "the first instance does not stand by:\n{}",
            first.stderr()
        );
    }

    // With the queue emptied, event 3 goes through; event 4, as large, is refused and
    // recorded by the second instance; event 5, small, would fit beside event 3.
    queue.purge();
    assert!(
        wait_until(Duration::from_secs(20), || pending(&second) == 0),
        "event 3 did not go through into the emptied queue:\n{}",
        second.stderr()
    );
    refused_and_recorded(&second, &medium);
    second
        .create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_status(201);
    let sizes = pending_sizes(&second);
    assert!(
        sizes.len() == 2 && sizes[0] * 2 > 4000 && sizes[0] + sizes[1] <= 4000,
        "events 4 and 5 as this test needs them: {sizes:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(queue.message_count(), 1, "event 5 waits behind event 4");

    // The first instance takes the relay back.
    second.kill();
    if meanwhile == Meanwhile::Stopped {
        first.signal("CONT");
    }
    relays_and_keeps_the_block(&first, &queue);
    queue.delete();
}

// ---------------------------------------------------------------------------------------
// Bounded shutdown
// ---------------------------------------------------------------------------------------

/// A service publishing through `proxy` into `queue`, with one event already published
/// (so the relay holds a live link through the proxy).
fn app_through(proxy: &TcpProxy, queue: &TestQueue) -> TestApp {
    let app = TestApp::builder()
        .env("RABBITMQ_PORT", &proxy.port().to_string())
        .env("RABBITMQ_QUEUE", queue.name())
        .env("RUST_LOG", "info")
        .spawn();
    app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_status(201);
    assert!(
        wait_until(Duration::from_secs(10), || pending(&app) == 0),
        "the first event did not go out through the proxy:\n{}",
        app.stderr()
    );
    app
}

/// Three more orders while the broker hangs: the relay publishes them and waits for
/// confirms that never come.
fn orders_into_a_hung_broker(app: &TestApp, proxy: &TcpProxy) {
    proxy.black_hole();
    for _ in 0..3 {
        app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
            .assert_status(201);
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// What the service acknowledged is in the database after it exited.
#[track_caller]
fn assert_acknowledged_orders_kept(app: &TestApp, orders: i64) {
    assert_eq!(app.count_orders(), orders, "an acknowledged order was lost");
    assert_eq!(
        app.count_outbox(),
        orders,
        "an acknowledged order lost its event"
    );
}

/// The broker stops answering while the relay waits for confirms: SIGTERM still ends the
/// process well inside systemd's 30 s, with status 0, and the unconfirmed events stay in
/// the outbox for the next start.
#[test]
fn a_hung_broker_does_not_hold_up_shutdown() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let proxy = broker_proxy();
    let mut app = app_through(&proxy, &queue);
    orders_into_a_hung_broker(&app, &proxy);

    let (status, took) = terminate(&mut app, "with a hung broker");
    assert!(
        took < Duration::from_secs(10),
        "the service took {took:?} to exit after SIGTERM with a hung broker:\n{}",
        app.stderr()
    );
    assert!(status.success(), "exit status {status}:\n{}", app.stderr());
    assert_acknowledged_orders_kept(&app, 4);
    assert_eq!(pending(&app), 3, "unconfirmed events stay in the outbox");
}

/// The broker hangs while the relay is idle (its link check waits on it): SIGTERM leaves
/// the stuck relay behind after `STOP_WITHIN` (8 s) and still exits 0.
#[test]
fn a_broker_that_hangs_while_the_relay_is_idle_does_not_hold_up_shutdown() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let proxy = broker_proxy();
    let mut app = app_through(&proxy, &queue);
    proxy.black_hole();
    // The idle relay checks its link every 5 s; by now a check waits on the broker.
    std::thread::sleep(Duration::from_secs(6));

    let (status, took) = terminate(&mut app, "with a hung broker, relay idle");
    assert!(
        took < Duration::from_secs(12),
        "the service took {took:?} to exit after SIGTERM:\n{}",
        app.stderr()
    );
    assert!(status.success(), "exit status {status}:\n{}", app.stderr());
    assert_acknowledged_orders_kept(&app, 1);
}

/// A second SIGTERM during a shutdown that waits on a hung broker (more than half a
/// second after the first) ends the process at once, killed by the signal; every order it
/// acknowledged is in the database.
#[test]
fn a_second_sigterm_exits_at_once() {
    use std::os::unix::process::ExitStatusExt;
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let proxy = broker_proxy();
    let mut app = app_through(&proxy, &queue);
    orders_into_a_hung_broker(&app, &proxy);

    app.signal("TERM");
    // Two signals that come before the first is handled count as one.
    app.wait_for_log(
        "shutting down",
        Duration::from_secs(10),
        "the first SIGTERM was not taken",
    );
    assert!(
        app.wait_exit(Duration::ZERO).is_none(),
        "the first SIGTERM should still be waiting on the broker"
    );
    // Past the half second within which the same signal again is taken as the first,
    // sent twice (operations::the_same_sigterm_sent_twice_at_once_is_one_graceful_stop).
    std::thread::sleep(Duration::from_millis(700));
    let (status, took) = terminate(&mut app, "(the second)");
    // The graceful path would wait out the broker for 8 s.
    assert!(
        took < Duration::from_secs(3),
        "the second SIGTERM took {took:?} to end the process:\n{}",
        app.stderr()
    );
    assert_eq!(status.signal(), Some(15), "killed by SIGTERM: {status}");
    assert_acknowledged_orders_kept(&app, 4);
}

/// Sends SIGTERM and waits for the exit (40 s at most): its status, and how long after the
/// signal it came (printed, `when` saying which case).
fn terminate(app: &mut TestApp, when: &str) -> (std::process::ExitStatus, Duration) {
    let asked = std::time::Instant::now();
    app.signal("TERM");
    let status = app
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("the service did not exit within 40 s of SIGTERM {when}"));
    let took = asked.elapsed();
    eprintln!("exit {took:.1?} after SIGTERM {when}");
    (status, took)
}
