//! Many clients at once: every create commits with its event, ids stay unique, and racing
//! changes of one order write one event.

use std::collections::HashSet;

use crate::support::*;

const DAVE: User = User {
    id: "dave",
    email: "dave@example.com",
};

#[test]
fn two_hundred_concurrent_creates_from_16_clients_all_commit_with_their_events() {
    let app = spawn_app();
    let users = [ALICE, BOB, CAROL, DAVE];
    const THREADS: usize = 16;
    const ORDERS: usize = 200;

    let responses: Vec<TestResponse> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (app, users) = (&app, &users);
                s.spawn(move || {
                    (t..ORDERS)
                        .step_by(THREADS)
                        .map(|n| {
                            app.create_order(
                                &users[n % users.len()],
                                &items(&[(MOUSE, 1 + (n % 3) as i64)]),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    assert_eq!(responses.len(), ORDERS);
    let failed: Vec<_> = responses.iter().filter(|r| r.status != 201).collect();
    assert!(
        failed.is_empty(),
        "{} of {ORDERS} creates failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let ids: HashSet<i64> = responses
        .iter()
        .map(|r| r.json()["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), ORDERS, "unique order ids");
    assert_eq!(app.count_orders(), ORDERS as i64);
    assert_eq!(app.count_items(), ORDERS as i64);
    let rows = app.outbox_rows();
    assert_eq!(rows.len(), ORDERS, "one event per order");
    let outbox_ids: HashSet<i64> = rows.iter().map(|r| r.id).collect();
    assert_eq!(outbox_ids.len(), ORDERS, "unique outbox ids");
    let event_orders: HashSet<i64> = rows.iter().map(|r| r.order_id).collect();
    assert_eq!(event_orders, ids, "every order has its order_created event");
    let event_ids: HashSet<String> = rows
        .iter()
        .map(|r| r.payload["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(event_ids.len(), ORDERS, "unique event ids");
    let listed: i64 = users
        .iter()
        .map(|u| app.list_orders(u, "").json()["total"].as_i64().unwrap())
        .sum();
    assert_eq!(listed, ORDERS as i64);
}

/// On PostgreSQL, gets that arrive while another's query runs are left to it by the
/// connections' threads (store/postgres/gets.rs, `join`): under load most of them are.
#[test]
fn gets_from_16_clients_at_once_each_answer_their_own_order_or_their_own_error() {
    let app = spawn_app();
    let users = [ALICE, BOB, CAROL, DAVE];
    let created: Vec<(i64, serde_json::Value)> = users
        .iter()
        .map(|user| {
            let response = app.create_order(user, &items(&[(MOUSE, 1)]));
            response.assert_status(201);
            (response.json()["id"].as_i64().unwrap(), response.json())
        })
        .collect();
    const THREADS: usize = 16;
    const GETS: usize = 150;

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (app, users, created) = (&app, &users, &created);
            s.spawn(move || {
                for n in 0..GETS {
                    let u = (t + n) % users.len();
                    let (own, body) = &created[u];
                    let (foreign, _) = &created[(u + 1) % users.len()];
                    match n % 4 {
                        0 | 1 => {
                            let response = app.get_order(&users[u], *own);
                            response.assert_status(200);
                            assert_eq!(&response.json(), body, "{}'s order", users[u].id);
                        }
                        2 => {
                            app.get_order(&users[u], *foreign)
                                .assert_error(404, "not_found");
                        }
                        _ => {
                            app.request("GET", &format!("/api/orders/{own}"), &[], None)
                                .assert_error(401, "unauthorized");
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn lists_and_gets_from_16_clients_at_once_each_answer_the_askers_own_page() {
    let app = spawn_app();
    let users = [ALICE, BOB, CAROL, DAVE];
    // Each user a different number of orders: 1, 2, 3 and 4.
    let mut ids = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for _ in 0..=u {
            let response = app.create_order(user, &items(&[(MOUSE, 1 + u as i64)]));
            response.assert_status(201);
            ids.push((u, response.json()["id"].as_i64().unwrap()));
        }
    }
    // Each page as one client alone is answered it: the first, the second, the one after
    // the first page's `next` (the second again), and one past the last.
    let expected: Vec<Vec<(String, serde_json::Value)>> = (0..users.len())
        .map(|u| {
            let page = |q: String| {
                let response = app.list_orders(&users[u], &q);
                response.assert_status(200);
                (q, response.json())
            };
            let first = page("per_page=2".to_string());
            let mut pages = vec![page("per_page=2&page=2".to_string())];
            if let Some(next) = first.1["next"].as_str() {
                pages.push(page(format!("per_page=2&after={next}")));
            }
            pages.push(page("per_page=2&page=9".to_string()));
            pages.insert(0, first);
            pages
        })
        .collect();
    for (u, pages) in expected.iter().enumerate() {
        assert_eq!(
            pages[0].1["total"],
            (u + 1) as i64,
            "{}'s count",
            users[u].id
        );
    }
    const THREADS: usize = 16;
    const READS: usize = 120;

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (app, users, expected, ids) = (&app, &users, &expected, &ids);
            s.spawn(move || {
                for n in 0..READS {
                    let u = (t + n) % users.len();
                    if n % 5 == 4 {
                        // A get between the pages: the asker's own order.
                        let (_, id) = ids.iter().find(|(o, _)| *o == u).unwrap();
                        app.get_order(&users[u], *id).assert_status(200);
                        continue;
                    }
                    let pages = &expected[u];
                    let (query, body) = &pages[n % pages.len()];
                    let response = app.list_orders(&users[u], query);
                    response.assert_status(200);
                    assert_eq!(&response.json(), body, "{}'s page {query}", users[u].id);
                }
            });
        }
    });
}

#[test]
fn racing_cancels_of_one_order_all_succeed_and_write_one_event() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    let responses: Vec<TestResponse> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| app.cancel(&ALICE, id))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for response in &responses {
        response.assert_status(200);
        assert_eq!(response.json()["status"], "cancelled");
    }
    let events: Vec<String> = app
        .outbox_rows_for(id)
        .into_iter()
        .map(|r| r.event_type)
        .collect();
    assert_eq!(events, ["order_created", "order_cancelled"]);
}

#[test]
fn racing_confirms_of_one_order_write_one_event() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);

    let responses: Vec<TestResponse> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| app.set_status_as_admin(id, "confirmed")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // The first confirms, the rest find it already confirmed.
    for response in &responses {
        response.assert_status(200);
        assert_eq!(response.json()["status"], "confirmed");
    }
    let events: Vec<String> = app
        .outbox_rows_for(id)
        .into_iter()
        .map(|r| r.event_type)
        .collect();
    assert_eq!(events, ["order_created", "order_status_updated"]);
}

#[test]
fn a_cancel_racing_a_ship_leaves_one_consistent_outcome() {
    let app = spawn_app();
    let id = app.place_order_id(&ALICE, LAPTOP, 1);
    app.bring_to(id, "confirmed");

    let (cancel, ship) = std::thread::scope(|s| {
        let cancel = s.spawn(|| app.cancel(&ALICE, id));
        let ship = s.spawn(|| app.set_status_as_admin(id, "shipped"));
        (cancel.join().unwrap(), ship.join().unwrap())
    });

    let final_status = app.get_order(&ALICE, id).json()["status"].clone();
    let events: Vec<String> = app
        .outbox_rows_for(id)
        .into_iter()
        .map(|r| r.event_type)
        .collect();
    match (cancel.status, ship.status) {
        (200, 409) => {
            assert_eq!(final_status, "cancelled");
            assert_eq!(
                events,
                ["order_created", "order_status_updated", "order_cancelled"]
            );
        }
        (409, 200) => {
            assert_eq!(final_status, "shipped");
            assert_eq!(
                events,
                [
                    "order_created",
                    "order_status_updated",
                    "order_status_updated"
                ]
            );
        }
        other => panic!("exactly one of cancel and ship wins, got {other:?}: {cancel:?} {ship:?}"),
    }
}

#[test]
fn racing_repeats_of_one_idempotency_key_make_one_order() {
    let app = spawn_app();
    let body = items(&[(LAPTOP, 1)]);

    let responses: Vec<TestResponse> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| app.create_order_with_key(&ALICE, "same", &body)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let created: Vec<&TestResponse> = responses.iter().filter(|r| r.status == 201).collect();
    assert!(!created.is_empty(), "{responses:?}");
    assert!(
        created.iter().all(|r| r.body == created[0].body),
        "every 201 is the same stored response"
    );
    for r in responses.iter().filter(|r| r.status != 201) {
        r.assert_error(409, "idempotency_key_in_progress");
    }
    assert_eq!(app.count_orders(), 1);
    assert_eq!(app.count_outbox(), 1);
}

#[test]
fn a_burst_of_new_connections_is_answered_promptly() {
    // Clients that connect at the same moment (a gateway opening its pool, a retry storm)
    // and keep their connections open, as HTTP/1.1 clients do.
    const CONNECTIONS: usize = 48;
    for burst in 0..3 {
        let app = spawn_app();
        let start = std::sync::Barrier::new(CONNECTIONS);
        let done = std::sync::Barrier::new(CONNECTIONS);
        let answered: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..CONNECTIONS)
                .map(|_| {
                    let (start, done, port) = (&start, &done, app.port());
                    s.spawn(move || {
                        start.wait();
                        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                        stream
                            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                            .unwrap();
                        std::io::Write::write_all(
                            &mut stream,
                            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                        )
                        .unwrap();
                        let mut buf = [0u8; 64];
                        let answered = std::io::Read::read(&mut stream, &mut buf)
                            .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"));
                        // Hold the connection until every client has its answer (or gave up).
                        done.wait();
                        answered
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unanswered = answered.iter().filter(|a| !**a).count();
        assert_eq!(
            unanswered, 0,
            "burst {burst}: {unanswered} of {CONNECTIONS} simultaneous connections got no answer to GET /health within 2 s"
        );
    }
}
