//! The relay against a real RabbitMQ on 127.0.0.1:5672: what reaches the queue, in which
//! order and with which properties; nothing is lost through a broker outage or a crash; a
//! large backlog drains; /ready, /metrics and `outbox status` tell the truth.
//!
//! Every test uses its own durable queue, deleted at the end. Without a broker the tests
//! say loudly that they were skipped (and fail under CI).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::broker::*;
use crate::support::*;

/// A service that publishes to the real broker, into `queue`.
fn app_on_broker(queue: &TestQueue) -> TestApp {
    TestApp::builder()
        .env("RABBITMQ_PORT", &BROKER_PORT.to_string())
        .env("RABBITMQ_QUEUE", queue.name())
        .spawn()
}

/// Outbox rows not yet published, straight from the database.
fn pending(app: &TestApp) -> i64 {
    outbox_rows_where(
        app,
        "id > (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
    )
}

/// Outbox rows the broker confirmed, straight from the database.
fn published(app: &TestApp) -> i64 {
    outbox_rows_where(
        app,
        "id <= (SELECT COALESCE(MAX(upto), 0) FROM outbox_marks)",
    )
}

fn outbox_rows_where(app: &TestApp, condition: &str) -> i64 {
    app.query_one(
        &format!("SELECT COUNT(*) FROM outbox WHERE {condition}"),
        &[],
    )
}

fn event_id(row_id: i64) -> String {
    format!("test-store:{row_id}")
}

/// The event ids of every outbox row, oldest first.
fn outbox_event_ids(app: &TestApp) -> Vec<String> {
    app.outbox_rows().iter().map(|r| event_id(r.id)).collect()
}

/// Polls /ready until `condition` holds for its body; returns the last body seen.
fn ready_until(app: &TestApp, timeout: Duration, condition: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until(timeout, || {
        let response = app.ready();
        response.assert_status(200);
        last = response.json();
        condition(&last)
    });
    last
}

/// Checks what must hold for every message, whatever the test: the body is JSON whose
/// event_id is the message_id.
#[track_caller]
fn assert_message_ids_match_bodies(received: &[Received]) {
    for m in received {
        assert_eq!(
            m.json()["event_id"].as_str(),
            m.message_id.as_deref(),
            "message_id must be the body's event_id: {m:?}"
        );
    }
}

/// The first arrival of each message id keeps the outbox order (ids ascending).
#[track_caller]
fn assert_first_arrivals_in_outbox_order(received: &[Received]) {
    let mut seen = BTreeSet::new();
    let firsts: Vec<i64> = received
        .iter()
        .filter(|m| seen.insert(m.id()))
        .map(|m| {
            m.id()
                .strip_prefix("test-store:")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected message_id {:?}", m.id()))
        })
        .collect();
    let mut sorted = firsts.clone();
    sorted.sort();
    assert_eq!(
        firsts, sorted,
        "events must reach the queue in outbox order (first arrivals)"
    );
}

/// Every duplicate of a message id carries the same body.
#[track_caller]
fn assert_duplicates_identical(received: &[Received]) {
    let mut bodies: HashMap<String, &[u8]> = HashMap::new();
    for m in received {
        let previous = bodies.entry(m.id()).or_insert(&m.body);
        assert_eq!(
            *previous,
            &m.body[..],
            "a repeated message_id {} must carry the same event",
            m.id()
        );
    }
}

fn message_id_set(received: &[Received]) -> BTreeSet<String> {
    received.iter().map(Received::id).collect()
}

#[test]
fn events_reach_the_queue_in_order_with_their_properties() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let consumer = QueueConsumer::start(&queue);
    let app = app_on_broker(&queue);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let first = app.place_order(&ALICE, &[(LAPTOP, 1), (MOUSE, 2)]);
    let first_id = first["id"].as_i64().unwrap();
    let cancelled = app.cancel(&ALICE, first_id);
    cancelled.assert_status(200);
    let cancelled = cancelled.json();
    let second = app.place_order(&BOB, &[(CABLE, 3)]);
    let second_id = second["id"].as_i64().unwrap();
    let mut states = Vec::new();
    for status in ["confirmed", "shipped", "delivered"] {
        let response = app.set_status_as_admin(second_id, status);
        response.assert_status(200);
        states.push(response.json());
    }

    let rows = app.outbox_rows();
    assert_eq!(rows.len(), 6, "one event per change: {rows:?}");
    // (order after the change, event type, previous status)
    let expected: Vec<(&Value, &str, Value)> = vec![
        (&first, "order_created", Value::Null),
        (&cancelled, "order_cancelled", json!("pending")),
        (&second, "order_created", Value::Null),
        (&states[0], "order_status_updated", json!("pending")),
        (&states[1], "order_status_updated", json!("confirmed")),
        (&states[2], "order_status_updated", json!("shipped")),
    ];

    assert!(
        consumer.wait_for(Duration::from_secs(20), |r| r.len() >= rows.len()),
        "expected {} messages, got {:?}",
        rows.len(),
        consumer.received()
    );
    assert!(
        wait_until(Duration::from_secs(10), || pending(&app) == 0),
        "every outbox row must end up published (under the watermark); {} pending",
        pending(&app)
    );
    let received = consumer.received();
    let arrival: Vec<String> = received.iter().map(Received::id).collect();
    let outbox_order: Vec<String> = rows.iter().map(|r| event_id(r.id)).collect();
    assert_eq!(
        arrival, outbox_order,
        "arrival order must be the outbox id order"
    );

    for ((message, row), (order, event_type, previous)) in received.iter().zip(&rows).zip(&expected)
    {
        let body = message.json();
        assert_eq!(body, row.payload, "the body is the outbox payload");
        assert_eq!(row.event_type, *event_type);
        assert_eq!(body["event_id"], event_id(row.id).as_str());
        assert_eq!(body["event_type"], *event_type, "{body}");
        assert_eq!(body["source"], "test-store", "{body}");
        assert_eq!(body["order_id"], order["id"], "{body}");
        assert_eq!(body["user_id"], order["user_id"], "{body}");
        assert_eq!(body["user_email"], order["user_email"], "{body}");
        assert_eq!(body["total"], order["total"], "{body}");
        assert_eq!(body["items"], order["items"], "{body}");
        assert_eq!(body["status"], order["status"], "{body}");
        assert_eq!(body["previous_status"], *previous, "{body}");
        assert_utc_rfc3339(&body["occurred_at"]);

        assert_eq!(message.delivery_mode, Some(2), "persistent: {message:?}");
        assert_eq!(
            message.content_type.as_deref(),
            Some("application/json"),
            "{message:?}"
        );
        assert_eq!(
            message.message_id.as_deref(),
            Some(event_id(row.id).as_str()),
            "{message:?}"
        );
        assert_eq!(message.type_.as_deref(), Some(*event_type), "{message:?}");
        assert!(
            message.app_id.as_deref().is_some_and(|a| !a.is_empty()),
            "app_id set: {message:?}"
        );
        let timestamp = message
            .timestamp
            .unwrap_or_else(|| panic!("timestamp set: {message:?}"));
        assert!(
            timestamp + 60 >= started && timestamp <= started + 3600,
            "timestamp {timestamp} is the event's time (test started at {started})"
        );
        assert_eq!(message.exchange, "", "the default exchange: {message:?}");
        assert_eq!(message.routing_key, queue.name(), "{message:?}");
    }
    drop(consumer);
    drop(app);
}

#[test]
fn an_outage_loses_nothing() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let consumer = QueueConsumer::start(&queue);
    let proxy = broker_proxy();
    let app = TestApp::builder()
        .env("RABBITMQ_PORT", &proxy.port().to_string())
        .env("RABBITMQ_QUEUE", queue.name())
        .spawn();

    const BEFORE: usize = 5;
    const DURING: usize = 10;
    for _ in 0..BEFORE {
        app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
            .assert_status(201);
    }
    let ready = ready_until(&app, Duration::from_secs(10), |r| {
        r["broker"] == "connected" && r["outbox"]["pending"] == 0
    });
    assert!(
        ready["broker"] == "connected" && ready["outbox"]["pending"] == 0,
        "before the outage the relay is connected and caught up: {ready}"
    );
    assert!(
        consumer.wait_for(Duration::from_secs(10), |r| r.len() >= BEFORE),
        "the first {BEFORE} events arrive before the outage"
    );

    proxy.cut();
    for _ in 0..DURING {
        app.create_order(&BOB, &items(&[(CABLE, 2)]))
            .assert_status(201);
    }
    let ready = ready_until(&app, Duration::from_secs(15), |r| {
        r["broker"] == "disconnected"
    });
    assert_eq!(
        ready["broker"], "disconnected",
        "/ready must show the broker away during the outage: {ready}"
    );
    let ready = app.ready();
    ready.assert_status(200);
    let ready = ready.json();
    assert_eq!(
        ready["outbox"]["pending"], DURING,
        "the outbox holds the events created during the outage: {ready}"
    );
    assert!(
        ready["outbox"]["oldest_pending_age_seconds"].is_number(),
        "{ready}"
    );
    assert_eq!(pending(&app), DURING as i64);
    // Orders keep coming while the relay retries in the background.
    app.create_order(&CAROL, &items(&[(ADAPTER, 1)]))
        .assert_status(201);
    let total = BEFORE + DURING + 1;

    let restored_at = Instant::now();
    proxy.restore();
    let expected: BTreeSet<String> = outbox_event_ids(&app).into_iter().collect();
    assert_eq!(expected.len(), total, "one event per order");
    let all_arrived = consumer.wait_for(Duration::from_secs(30), |r| {
        r.iter()
            .map(|m| m.message_id.clone().unwrap_or_default())
            .collect::<BTreeSet<_>>()
            == expected
    });
    let received = consumer.received();
    assert!(
        all_arrived,
        "within 30 s of the broker's return every event arrives; missing: {:?}, unexpected: {:?}",
        expected
            .difference(&message_id_set(&received))
            .collect::<Vec<_>>(),
        message_id_set(&received)
            .difference(&expected)
            .collect::<Vec<_>>()
    );
    let ready = ready_until(&app, Duration::from_secs(10), |r| {
        r["outbox"]["pending"] == 0 && r["broker"] == "connected"
    });
    assert!(
        ready["outbox"]["pending"] == 0 && ready["broker"] == "connected",
        "after the outage: pending back to 0, broker connected: {ready}"
    );
    eprintln!(
        "outage: {} events ({} messages) delivered {:.2} s after the broker came back",
        expected.len(),
        received.len(),
        restored_at.elapsed().as_secs_f64()
    );
    assert_eq!(message_id_set(&received), expected);
    assert_message_ids_match_bodies(&received);
    assert_duplicates_identical(&received);
    assert_first_arrivals_in_outbox_order(&received);
    assert!(
        proxy.piped() >= 2,
        "the relay reconnected through the proxy"
    );
    drop(consumer);
    drop(app);
}

/// POST /api/orders on a fresh connection that tolerates the service dying mid-request.
fn try_create(
    agent: &ureq::Agent,
    address: &str,
    user: &User,
    body: &Value,
) -> Result<(u16, Value), String> {
    let response = agent
        .post(format!("{address}/api/orders"))
        .header("X-User-Id", user.id)
        .header("X-User-Email", user.email)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    Ok((status, json))
}

#[test]
fn a_crash_loses_nothing() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let consumer = QueueConsumer::start(&queue);
    let catalog = temp_dir();
    let mut app = TestApp::builder()
        .env("PRODUCT_SERVICE_URL", &catalog_file(&catalog))
        .env("RABBITMQ_PORT", &BROKER_PORT.to_string())
        .env("RABBITMQ_QUEUE", queue.name())
        .spawn();
    let address = app.address();
    const CLIENTS: usize = 4;
    const KILL_AFTER: usize = 60;

    let created: Mutex<Vec<(User, i64, Value)>> = Mutex::new(Vec::new());
    let unexpected: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let count = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (address, created, unexpected, done, count) =
                (&address, &created, &unexpected, &done, &count);
            s.spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .new_agent();
                let user = [ALICE, BOB, CAROL][c % 3];
                let mut n = 0i64;
                // Until the service dies under us (or far too long).
                while !done.load(Ordering::SeqCst) && n < 10_000 {
                    n += 1;
                    let body = items(&[(MOUSE, 1 + n % 3), (CABLE, 1)]);
                    match try_create(&agent, address, &user, &body) {
                        Ok((201, order)) => {
                            let id = order["id"].as_i64().expect("an id");
                            created.lock().unwrap().push((user, id, order));
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((status, body)) => {
                            unexpected.lock().unwrap().push(format!("{status} {body}"));
                        }
                        Err(_) => break,
                    }
                }
            });
        }
        let reached = wait_until(Duration::from_secs(60), || {
            count.load(Ordering::SeqCst) >= KILL_AFTER
        });
        app.kill();
        done.store(true, Ordering::SeqCst);
        assert!(reached, "{KILL_AFTER} creates did not succeed within 60 s");
    });
    let unexpected = unexpected.into_inner().unwrap();
    assert!(
        unexpected.is_empty(),
        "creates before the kill answer 201: {unexpected:?}"
    );
    let created = created.into_inner().unwrap();
    let published_before_restart = published(&app);

    app.restart();

    for (user, id, order) in &created {
        let response = app.get_order(user, *id);
        response.assert_status(200);
        assert_eq!(
            &response.json(),
            order,
            "order {id} answered 201 before the crash and must be in the database unchanged"
        );
    }
    let rows = app.outbox_rows();
    let created_events: HashMap<i64, String> = rows
        .iter()
        .filter(|r| r.event_type == "order_created")
        .map(|r| (r.order_id, event_id(r.id)))
        .collect();
    for (_, id, _) in &created {
        assert!(
            created_events.contains_key(id),
            "order {id} has its order_created event in the outbox"
        );
    }
    let expected: BTreeSet<String> = rows.iter().map(|r| event_id(r.id)).collect();
    let all_arrived = consumer.wait_for(Duration::from_secs(30), |r| {
        let got: BTreeSet<String> = r
            .iter()
            .map(|m| m.message_id.clone().unwrap_or_default())
            .collect();
        expected.is_subset(&got)
    });
    let received = consumer.received();
    let got = message_id_set(&received);
    let missing: Vec<_> = created
        .iter()
        .filter(|(_, id, _)| !got.contains(&created_events[id]))
        .map(|(_, id, _)| *id)
        .collect();
    assert!(
        all_arrived && missing.is_empty(),
        "every event reaches the queue after the crash; orders whose event is missing: {missing:?}; \
         other missing events: {:?}",
        expected.difference(&got).collect::<Vec<_>>()
    );
    assert!(
        wait_until(Duration::from_secs(10), || pending(&app) == 0),
        "the outbox drains after the restart"
    );
    assert_eq!(got, expected, "no message that is not an outbox event");
    assert_message_ids_match_bodies(&received);
    assert_duplicates_identical(&received);
    assert_first_arrivals_in_outbox_order(&received);
    eprintln!(
        "crash: {} orders answered 201 before the kill ({} in the database, {} events published \
         before the kill); {} messages for {} events after the restart",
        created.len(),
        app.count_orders(),
        published_before_restart,
        received.len(),
        expected.len()
    );
    drop(consumer);
    drop(app);
}

#[test]
fn a_backlog_of_10000_events_drains() {
    if !require_broker() {
        return;
    }
    const ORDERS: usize = 10_000;
    const CLIENTS: usize = 16;
    let queue = TestQueue::declare();
    let catalog = temp_dir();
    // The default RABBITMQ_PORT=1: nothing is published while the backlog builds.
    let mut app = TestApp::builder()
        .env("PRODUCT_SERVICE_URL", &catalog_file(&catalog))
        .env("RABBITMQ_QUEUE", queue.name())
        .spawn();

    let creating = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let app = &app;
                s.spawn(move || {
                    let user = [ALICE, BOB, CAROL][t % 3];
                    let mut failures = Vec::new();
                    for n in (t..ORDERS).step_by(CLIENTS) {
                        let response =
                            app.create_order(&user, &items(&[(WIDGET, 1 + (n % 5) as i64)]));
                        if response.status != 201 {
                            failures.push(format!("{response:?}"));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let creation = creating.elapsed();
    assert!(
        failures.is_empty(),
        "{} creates failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(pending(&app), ORDERS as i64, "the backlog is in the outbox");
    assert_eq!(queue.message_count(), 0, "nothing published yet");

    let draining = Instant::now();
    app.restart_with_env("RABBITMQ_PORT", &BROKER_PORT.to_string());
    let healthy_after = draining.elapsed();
    let mut in_queue = 0;
    let drained = wait_until(Duration::from_secs(120), || {
        if pending(&app) != 0 {
            return false;
        }
        in_queue = queue.message_count();
        in_queue as usize >= ORDERS
    });
    let drain = draining.elapsed();
    eprintln!(
        "backlog: {ORDERS} orders created through the API by {CLIENTS} clients in {:.2} s ({:.0}/s)",
        creation.as_secs_f64(),
        ORDERS as f64 / creation.as_secs_f64()
    );
    eprintln!(
        "backlog: {ORDERS} events drained in {:.2} s (from the restart; the service was healthy \
         after {:.2} s)",
        drain.as_secs_f64(),
        healthy_after.as_secs_f64()
    );
    assert!(
        drained,
        "within 120 s: pending {} (want 0), queue holds {in_queue} (want {ORDERS})",
        pending(&app)
    );
    assert_eq!(in_queue as usize, ORDERS, "one message per event");
    assert_eq!(published(&app), ORDERS as i64);

    // The messages are the outbox events, in order.
    let consumer = QueueConsumer::start(&queue);
    assert!(
        consumer.wait_for(Duration::from_secs(60), |r| r.len() >= ORDERS),
        "consumed only {} of {ORDERS}",
        consumer.count()
    );
    let received = consumer.received();
    let arrival: Vec<String> = received.iter().map(Received::id).collect();
    assert_eq!(
        arrival,
        outbox_event_ids(&app),
        "the backlog arrives in outbox order"
    );
    let ready = ready_until(&app, Duration::from_secs(5), |r| {
        r["outbox"]["pending"] == 0
    });
    assert_eq!(ready["outbox"]["pending"], 0, "{ready}");
    drop(consumer);
    drop(app);
}

/// The relay sends a batch while the broker confirms the one before: a queue that fills
/// up in the middle of the second batch refuses the rest of it, and what it took is
/// marked, the rest waits, and all of it arrives in order once the queue has room.
#[test]
fn a_queue_that_fills_up_mid_backlog_takes_the_rest_in_order_once_it_has_room() {
    if !require_broker() {
        return;
    }
    const ORDERS: usize = 1_200;
    const ROOM: u32 = 700;
    let mut arguments = amiquip::FieldTable::new();
    arguments.insert(
        "x-max-length".into(),
        amiquip::AmqpValue::LongLongInt(ROOM as i64),
    );
    arguments.insert(
        "x-overflow".into(),
        amiquip::AmqpValue::LongString("reject-publish".into()),
    );
    let queue = TestQueue::declare_with(arguments);
    let catalog = temp_dir();
    // The default RABBITMQ_PORT=1: nothing is published while the backlog builds.
    let mut app = TestApp::builder()
        .env("PRODUCT_SERVICE_URL", &catalog_file(&catalog))
        .env("RABBITMQ_QUEUE", queue.name())
        .spawn();
    std::thread::scope(|s| {
        for t in 0..8 {
            let app = &app;
            s.spawn(move || {
                for _ in (t..ORDERS).step_by(8) {
                    app.create_order(&ALICE, &items(&[(WIDGET, 1)]))
                        .assert_status(201);
                }
            });
        }
    });
    assert_eq!(pending(&app), ORDERS as i64);

    app.restart_with_env("RABBITMQ_PORT", &BROKER_PORT.to_string());
    let full = wait_until(Duration::from_secs(30), || {
        queue.message_count() == ROOM && published(&app) == ROOM as i64
    });
    assert!(
        full,
        "the queue holds {} (want {ROOM}), {} marked published",
        queue.message_count(),
        published(&app)
    );
    // Refusals leave the rest pending, whatever went out behind them.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        published(&app),
        ROOM as i64,
        "only what the queue took is marked"
    );
    assert_eq!(pending(&app), (ORDERS as u32 - ROOM) as i64);

    let consumer = QueueConsumer::start(&queue);
    let expected = outbox_event_ids(&app);
    let all = consumer.wait_for(Duration::from_secs(60), |r| {
        message_id_set(r).len() >= ORDERS
    });
    assert!(
        all,
        "consumed {} distinct of {ORDERS}",
        message_id_set(&consumer.received()).len()
    );
    let received = consumer.received();
    assert_message_ids_match_bodies(&received);
    assert_first_arrivals_in_outbox_order(&received);
    assert_duplicates_identical(&received);
    assert_eq!(
        message_id_set(&received),
        expected.iter().cloned().collect::<BTreeSet<_>>(),
        "every event arrived"
    );
    assert!(wait_until(Duration::from_secs(10), || pending(&app) == 0));
    drop(consumer);
    drop(app);
}

#[test]
fn ready_and_metrics_show_the_broker() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let up = app_on_broker(&queue);
    let down = spawn_app(); // RABBITMQ_PORT=1

    // Broker reachable.
    up.place_order_id(&ALICE, MOUSE, 1);
    let ready = ready_until(&up, Duration::from_secs(10), |r| {
        r["broker"] == "connected" && r["outbox"]["pending"] == 0
    });
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["broker"], "connected", "{ready}");
    assert_eq!(ready["outbox"]["pending"], 0, "{ready}");
    // The counter moves just after the row is marked in the database: poll it too.
    let mut metrics = up.metrics();
    wait_until(Duration::from_secs(5), || {
        metrics = up.metrics();
        metric(&metrics.body, "order_service_outbox_published_total").is_some_and(|n| n >= 1.0)
    });
    metrics.assert_status(200);
    assert_eq!(
        metric(&metrics.body, "order_service_broker_connected"),
        Some(1.0),
        "{}",
        metrics.body
    );
    assert!(
        metric(&metrics.body, "order_service_outbox_published_total").is_some_and(|n| n >= 1.0),
        "{}",
        metrics.body
    );
    assert_eq!(
        metric(&metrics.body, "order_service_outbox_pending"),
        Some(0.0),
        "{}",
        metrics.body
    );

    // Broker unreachable.
    down.place_order_id(&ALICE, MOUSE, 1);
    let ready = ready_until(&down, Duration::from_secs(10), |r| {
        r["broker"] == "disconnected"
    });
    assert_eq!(
        ready["status"], "ready",
        "the service is ready without a broker: {ready}"
    );
    assert_eq!(ready["broker"], "disconnected", "{ready}");
    assert!(
        ready["outbox"]["pending"].as_i64().is_some_and(|n| n >= 1),
        "{ready}"
    );
    assert!(
        ready["outbox"]["oldest_pending_age_seconds"].is_number(),
        "{ready}"
    );
    let metrics = down.metrics();
    metrics.assert_status(200);
    assert_eq!(
        metric(&metrics.body, "order_service_broker_connected"),
        Some(0.0),
        "{}",
        metrics.body
    );
    assert!(
        metric(&metrics.body, "order_service_outbox_pending").is_some_and(|n| n >= 1.0),
        "{}",
        metrics.body
    );
    drop(up);
}

/// `order-service outbox status` against the app's database: (pending, published, stdout).
fn outbox_status(app: &TestApp) -> (i64, i64, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["outbox", "status"])
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("DATABASE_URL", app.database_url())
        .output()
        .expect("run order-service outbox status");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "outbox status failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once(": ")).collect();
    let number = |key: &str| -> i64 {
        lines
            .get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{key}: N` line in:\n{stdout}"))
    };
    (number("pending"), number("published"), stdout.clone())
}

#[test]
fn outbox_status_command_reports_from_the_file() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let mut app = app_on_broker(&queue);
    for _ in 0..2 {
        app.place_order_id(&ALICE, MOUSE, 1);
    }
    assert!(
        wait_until(Duration::from_secs(10), || published(&app) == 2),
        "the first two events are published"
    );
    // Without a broker from now on: these stay pending.
    app.restart_with_env("RABBITMQ_PORT", "1");
    for _ in 0..3 {
        app.place_order_id(&BOB, CABLE, 1);
    }

    for phase in ["while the service runs", "after it was killed"] {
        let before = (pending(&app), published(&app));
        let (p, d, stdout) = outbox_status(&app);
        let after = (pending(&app), published(&app));
        assert_eq!(before, after, "the outbox must hold still for this check");
        assert_eq!(
            (p, d),
            before,
            "{phase}: `outbox status` must report the database's counts; it printed:\n{stdout}"
        );
        assert_eq!((p, d), (3, 2), "{phase}: {stdout}");
        app.kill();
    }
}

#[test]
fn a_dead_connection_shows_while_the_outbox_is_idle() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let proxy = broker_proxy();
    let app = TestApp::builder()
        .env("RABBITMQ_PORT", &proxy.port().to_string())
        .env("RABBITMQ_QUEUE", queue.name())
        .spawn();
    app.create_order(&ALICE, &items(&[(MOUSE, 1)]))
        .assert_status(201);
    let ready = ready_until(&app, Duration::from_secs(10), |r| {
        r["broker"] == "connected" && r["outbox"]["pending"] == 0
    });
    assert_eq!(ready["broker"], "connected", "{ready}");

    // No event is waiting: only the relay's idle check can notice the link is gone.
    proxy.cut();
    let ready = ready_until(&app, Duration::from_secs(15), |r| {
        r["broker"] == "disconnected"
    });
    assert_eq!(
        ready["broker"], "disconnected",
        "/ready must not report a dead connection as connected: {ready}"
    );
}

#[test]
fn events_keep_the_id_they_were_written_with() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let consumer = QueueConsumer::start(&queue);
    let mut app = TestApp::builder()
        .env("RABBITMQ_QUEUE", queue.name())
        .spawn();
    let id = app.place_order_id(&ALICE, MOUSE, 1);

    // Renamed before the event could leave: it still goes out under the name it was
    // written with, and carries its place in the outbox.
    app.restart_with_env("STORE_ID", "renamed-store");
    app.restart_with_env("RABBITMQ_PORT", &BROKER_PORT.to_string());

    assert!(
        consumer.wait_for(Duration::from_secs(15), |r| !r.is_empty()),
        "the waiting event is published after the restart"
    );
    let first = &consumer.received()[0];
    let body = first.json();
    assert_eq!(first.id(), event_id(1));
    assert_eq!(body["event_id"], event_id(1));
    assert_eq!(body["source"], "test-store");
    assert_eq!(body["order_id"], id);
    assert_eq!(body["sequence"], 1);
}

/// `order-service queue peek` on the test queue, as (succeeded, stdout and stderr).
fn queue_peek(queue: &str) -> (bool, String) {
    let dir = temp_dir();
    let port = BROKER_PORT.to_string();
    let out = command(
        dir.path(),
        &["queue", "peek", "5"],
        &[("RABBITMQ_PORT", port.as_str()), ("RABBITMQ_QUEUE", queue)],
    )
    .output()
    .expect("run order-service queue peek");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn queue_peek_shows_what_waits_and_leaves_consumed_and_missing_queues_alone() {
    if !require_broker() {
        return;
    }
    let queue = TestQueue::declare();
    let app = app_on_broker(&queue);
    app.place_order_id(&ALICE, MOUSE, 1);
    assert!(
        wait_until(Duration::from_secs(10), || queue.message_count() == 1),
        "the event reaches the queue"
    );

    let (ok, shown) = queue_peek(queue.name());
    assert!(ok, "{shown}");
    assert!(
        shown.contains(&format!("queue {}: 1 message(s)", queue.name())),
        "{shown}"
    );
    assert!(shown.contains("type=order_created"), "{shown}");
    assert_eq!(
        queue.message_count(),
        1,
        "still in the queue after the peek"
    );

    // With a consumer attached, the messages a peek holds would reach it after later ones.
    let consumer = QueueConsumer::start(&queue);
    assert!(consumer.wait_for(Duration::from_secs(10), |r| r.len() == 1));
    let (ok, refused) = queue_peek(queue.name());
    assert!(!ok && refused.contains("1 consumer(s)"), "{refused}");
    drop(consumer);

    // A queue that is not there is not made by looking.
    let missing = format!("{}-missing", queue.name());
    let (ok, refused) = queue_peek(&missing);
    assert!(!ok && refused.contains("look up queue"), "{refused}");
    let mut broker = amiquip::Connection::insecure_open(AMQP_URL).unwrap();
    let channel = broker.open_channel(None).unwrap();
    assert!(
        channel.queue_declare_passive(missing.as_str()).is_err(),
        "queue {missing} was made"
    );
}
