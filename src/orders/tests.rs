//! The rules on an in-memory SQLite database, one transaction per call as the writer
//! would run them; and on PostgreSQL where two of its sessions could get in each
//! other's way.

use super::*;
use crate::domain::{IdempotencyKey, Money, PricedLine, ProductId, Quantity};
use crate::store::{Engine, Reads, SqliteEngine};

const SOURCE: &str = "store-test";

fn alice() -> UserId {
    UserId::parse("alice").unwrap()
}

fn priced(user: UserId) -> PricedOrder {
    PricedOrder {
        user_id: user,
        user_email: Email::parse("alice@example.com").unwrap(),
        priced: Priced::Live {
            lines: vec![PricedLine {
                product_id: ProductId::new(2).unwrap(),
                product_name: "Mouse".into(),
                quantity: Quantity::new(3).unwrap(),
                price: Money::from_cents(1999),
            }],
            at: 900,
        },
        fresh_products: Vec::new(),
    }
}

/// Runs `rule` in one committed transaction (rolled back if it fails).
fn in_tx<T>(
    db: &mut dyn Engine,
    rule: impl FnOnce(&mut dyn crate::store::Tx) -> Result<T, OrderError>,
) -> Result<T, OrderError> {
    db.begin().unwrap();
    let result = rule(db.tx());
    if result.is_ok() {
        db.commit().unwrap();
    } else {
        db.abandon();
    }
    result
}

fn create(db: &mut SqliteEngine, idempotent: Option<Idempotent>) -> Order {
    in_tx(db, |tx| {
        rules::create(tx, SOURCE, priced(alice()), idempotent, 1_000)
    })
    .unwrap()
}

fn keyed(key: &str, claimed_at: i64) -> Option<Idempotent> {
    Some(Idempotent {
        key: IdempotencyKey::parse(key).unwrap(),
        claimed_at,
        answer: Box::new(|order| Answer {
            status: 201,
            body: format!("order {}", order.id),
        }),
    })
}

fn claim(db: &mut SqliteEngine, key: &str, request: &str, now: i64) -> Result<Claimed, OrderError> {
    let key = IdempotencyKey::parse(key).unwrap();
    in_tx(db, |tx| {
        idempotency::claim(tx, &alice(), &key, request, now)
    })
}

fn event_types(db: &SqliteEngine) -> Vec<String> {
    db.pending_events()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

#[test]
fn a_create_stores_the_order_and_its_event_with_exact_money() {
    let mut db = SqliteEngine::in_memory();

    let order = create(&mut db, None);

    assert_eq!(order.id.get(), 1);
    assert_eq!(order.status, Status::Pending);
    assert_eq!(order.total, Money::from_cents(5997));
    assert_eq!(order.items[0].subtotal, Money::from_cents(5997));
    let events = db.pending_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "order_created");
    assert_eq!(events[0].event_id, format!("{SOURCE}:1"));
    let payload: serde_json::Value = serde_json::from_str(&events[0].payload).unwrap();
    assert_eq!(payload["total"].to_string(), "59.97");
    assert_eq!(payload["sequence"], 1);
}

#[test]
fn a_key_is_claimed_once_answered_with_the_order_and_replayed() {
    let mut db = SqliteEngine::in_memory();
    assert_eq!(claim(&mut db, "k", "r1", 1_000).unwrap(), Claimed::Fresh);

    // While the first request holds it, a repeat is refused, whatever its body.
    assert!(matches!(
        claim(&mut db, "k", "r1", 1_001),
        Err(OrderError::IdempotencyKeyInProgress)
    ));
    create(&mut db, keyed("k", 1_000));

    assert_eq!(
        claim(&mut db, "k", "r1", 2_000).unwrap(),
        Claimed::Replay(Answer {
            status: 201,
            body: "order 1".into()
        })
    );
    assert!(matches!(
        claim(&mut db, "k", "r2", 2_000),
        Err(OrderError::IdempotencyKeyReused)
    ));
    assert_eq!(event_types(&db), ["order_created"]);
}

#[test]
fn a_released_or_abandoned_claim_can_be_taken_again() {
    let mut db = SqliteEngine::in_memory();
    claim(&mut db, "k", "r1", 1_000).unwrap();
    in_tx(&mut db, |tx| {
        Ok(tx.release_idempotency(&alice(), "k", 1_000)?)
    })
    .unwrap();
    assert_eq!(claim(&mut db, "k", "r2", 2_000).unwrap(), Claimed::Fresh);

    // A claim whose holder died is taken over once it is older than the timeout.
    let later = 2_000 + idempotency::CLAIM_TIMEOUT_MICROS;
    assert!(claim(&mut db, "k", "r2", later).is_err());
    assert_eq!(
        claim(&mut db, "k", "r2", later + 1).unwrap(),
        Claimed::Fresh
    );
    // Answering a claim that is gone says so: the create then fails and rolls back.
    let late = in_tx(&mut db, |tx| {
        tx.answer_idempotency(&alice(), "other", later + 1, 201, "{}")
            .map_err(OrderError::from)
    });
    assert!(!late.unwrap());
}

#[test]
fn a_claim_taken_over_is_answered_and_released_by_its_new_holder_only() {
    let mut db = SqliteEngine::in_memory();
    claim(&mut db, "k", "r1", 1_000).unwrap();
    // The first request stalls past the timeout; a second one takes the key over.
    let later = 1_001 + idempotency::CLAIM_TIMEOUT_MICROS;
    assert_eq!(claim(&mut db, "k", "r2", later).unwrap(), Claimed::Fresh);

    // The first one's create cannot answer the claim it lost: it rolls back.
    let stale = in_tx(&mut db, |tx| {
        rules::create(tx, SOURCE, priced(alice()), keyed("k", 1_000), 1_000)
    });
    assert!(matches!(stale, Err(OrderError::IdempotencyKeyInProgress)));
    assert!(event_types(&db).is_empty());
    // Nor can its release take the key from the second one.
    in_tx(&mut db, |tx| {
        Ok(tx.release_idempotency(&alice(), "k", 1_000)?)
    })
    .unwrap();
    assert!(matches!(
        claim(&mut db, "k", "r2", later + 1),
        Err(OrderError::IdempotencyKeyInProgress)
    ));

    let order = create(&mut db, keyed("k", later));
    assert_eq!(
        claim(&mut db, "k", "r2", later + 2).unwrap(),
        Claimed::Replay(Answer {
            status: 201,
            body: format!("order {}", order.id)
        })
    );
    assert_eq!(event_types(&db), ["order_created"]);
}

#[test]
fn a_cancel_is_for_the_owner_once_and_follows_the_transitions() {
    let mut db = SqliteEngine::in_memory();
    let order = create(&mut db, None);
    let bob = UserId::parse("bob").unwrap();
    let cancel = |db: &mut SqliteEngine, user: &UserId| {
        let user = user.clone();
        in_tx(db, move |tx| {
            rules::change_status(tx, SOURCE, order.id, Some(&user), Status::Cancelled, 5_000)
        })
    };

    assert!(matches!(cancel(&mut db, &bob), Err(OrderError::NotFound)));
    let cancelled = cancel(&mut db, &alice()).unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    assert_eq!(cancelled.updated_at, 5_000);
    let again = cancel(&mut db, &alice()).unwrap();
    assert_eq!(again.status, Status::Cancelled);
    assert_eq!(event_types(&db), ["order_created", "order_cancelled"]);

    let ship = in_tx(&mut db, |tx| {
        rules::change_status(tx, SOURCE, order.id, None, Status::Shipped, 6_000)
    });
    assert!(matches!(
        ship,
        Err(OrderError::InvalidTransition {
            from: Status::Cancelled,
            to: Status::Shipped
        })
    ));
    assert_eq!(event_types(&db).len(), 2);
}

#[test]
fn a_status_change_records_the_previous_status_and_never_goes_back_in_time() {
    let mut db = SqliteEngine::in_memory();
    create(&mut db, None);
    let id = OrderId::from_trusted(1);

    // A clock behind the order's own time: updated_at does not go backwards.
    let confirmed = in_tx(&mut db, |tx| {
        rules::change_status(tx, SOURCE, id, None, Status::Confirmed, 500)
    })
    .unwrap();

    assert_eq!(confirmed.updated_at, 1_000);
    let events = db.pending_events();
    assert_eq!(events[1].event_type, "order_status_updated");
    let payload: serde_json::Value = serde_json::from_str(&events[1].payload).unwrap();
    assert_eq!(payload["previous_status"], "pending");
    assert_eq!(payload["status"], "confirmed");
    let missing = in_tx(&mut db, |tx| {
        rules::change_status(
            tx,
            SOURCE,
            OrderId::from_trusted(9),
            None,
            Status::Confirmed,
            1,
        )
    });
    assert!(matches!(missing, Err(OrderError::NotFound)));
}

fn offline(quantity: u32, max_age: Duration) -> PricedOrder {
    offline_with_answers(&[(2, quantity)], Vec::new(), max_age)
}

/// An order of one of each of `products` (id, quantity) priced offline, with the rows
/// of the answers its lookups had before the product service failed.
fn offline_with_answers(
    products: &[(i64, u32)],
    answered: Vec<CachedProduct>,
    max_age: Duration,
) -> PricedOrder {
    let items: Vec<_> = products
        .iter()
        .map(|(id, quantity)| serde_json::json!({"product_id": id, "quantity": quantity}))
        .collect();
    let body = serde_json::json!({ "items": items });
    PricedOrder {
        priced: Priced::Offline {
            order: NewOrder::parse(&body).unwrap(),
            max_age,
            outage: Outage("GET x: connection refused".into()),
        },
        fresh_products: answered,
        ..priced(alice())
    }
}

/// A snapshot row of product `id`, as answered at `at`.
fn product_row(id: i64, at: i64) -> CachedProduct {
    CachedProduct {
        product_id: ProductId::new(id).unwrap(),
        name: format!("Product {id}"),
        price: Money::from_cents(999),
        stock: 10,
        fetched_at: at,
    }
}

fn snapshot_mouse(db: &mut dyn Engine, stock: i64, at: i64) {
    in_tx(db, |tx| {
        Ok(tx.upsert_product(&CachedProduct {
            product_id: ProductId::new(2).unwrap(),
            name: "Mouse (snapshot)".into(),
            price: Money::from_cents(2500),
            stock,
            fetched_at: at,
        })?)
    })
    .unwrap();
}

#[test]
fn an_offline_order_is_priced_from_the_snapshot_and_counted_in_the_ledger() {
    let mut db = SqliteEngine::in_memory();
    let hour = Duration::from_secs(3600);
    snapshot_mouse(&mut db, 5, 500);
    let first = in_tx(&mut db, |tx| {
        rules::create(tx, SOURCE, offline(3, hour), None, 1_000)
    })
    .unwrap();
    assert!(!first.stock_verified);
    assert_eq!(first.priced_at, Some(500));
    assert_eq!(first.items[0].product_name, "Mouse (snapshot)");
    assert_eq!(first.total.cents(), 7500);
    let event: serde_json::Value = serde_json::from_str(&db.pending_events()[0].payload).unwrap();
    assert_eq!(event["stock_verified"], false);
    // 5 in the snapshot, 3 sold since: the next 3 are refused, and nothing is written.
    let short = in_tx(&mut db, |tx| {
        rules::create(tx, SOURCE, offline(3, hour), None, 2_000)
    });
    match short {
        Err(OrderError::Pricing(PricingError::InsufficientStock(s))) => {
            assert_eq!(s[0].available, 2)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(db.pending_events().len(), 1);
    // A fresher row of the product starts the count again.
    snapshot_mouse(&mut db, 4, 3_000);
    in_tx(&mut db, |tx| {
        rules::create(tx, SOURCE, offline(4, hour), None, 4_000)
    })
    .unwrap();
}

/// An answer the product service gave before it failed replaces the snapshot's row, and
/// the sales this store made since that answer still count against it: here one sold
/// while the lookup was under way.
#[test]
fn an_offline_order_priced_from_a_fresh_answer_counts_the_sales_since_it() {
    let mut db = SqliteEngine::in_memory();
    let hour = Duration::from_secs(3600);
    snapshot_mouse(&mut db, 5, 500);
    let answered = |stock| PricedOrder {
        fresh_products: vec![CachedProduct {
            product_id: ProductId::new(2).unwrap(),
            name: "Mouse".into(),
            price: Money::from_cents(1999),
            stock,
            fetched_at: 900,
        }],
        ..offline(3, hour)
    };
    // Sold at 1,000, after the answer to come (looked up at 900) had left the service.
    in_tx(&mut db, |tx| {
        rules::create(tx, SOURCE, offline(1, hour), None, 1_000)
    })
    .unwrap();
    let short = in_tx(&mut db, |tx| {
        rules::create(tx, SOURCE, answered(3), None, 1_100)
    });
    match short {
        Err(OrderError::Pricing(PricingError::InsufficientStock(s))) => {
            assert_eq!(s[0].available, 2, "3 answered, 1 sold since")
        }
        other => panic!("{other:?}"),
    }
    let sold = in_tx(&mut db, |tx| {
        rules::create(tx, SOURCE, answered(4), None, 1_200)
    })
    .unwrap();
    assert_eq!(sold.items[0].price.cents(), 1999, "the answer's price");
}

#[test]
fn an_offline_order_needs_a_row_younger_than_the_max_age() {
    let mut db = SqliteEngine::in_memory();
    snapshot_mouse(&mut db, 5, 0);
    let old = in_tx(&mut db, |tx| {
        rules::create(
            tx,
            SOURCE,
            offline(1, Duration::from_micros(999)),
            None,
            1_000,
        )
    });
    assert!(
        matches!(old, Err(OrderError::Pricing(PricingError::Outage(_)))),
        "{old:?}"
    );
    let live = create(&mut db, None);
    assert!(live.stock_verified);
    assert_eq!(live.priced_at, Some(900));
}

/// An offline create locks its products' snapshot rows first and the user's count when
/// its held-back writes go out, at its commit. A create with a key sends its own with its
/// answer: had it locked the count then and the product row only at its commit, each
/// would wait on the other and PostgreSQL would abort one of them.
#[test]
fn a_keyed_create_and_an_offline_one_of_the_same_product_and_user_both_commit() {
    let Some(pg) = crate::store::TestDb::create() else {
        return;
    };
    let (mut first, mut second) = (pg_engine(&pg), pg_engine(&pg));
    let hour = Duration::from_secs(3600);
    snapshot_mouse(first.as_mut(), 5, 500);
    first.begin().unwrap();
    rules::create(first.tx(), SOURCE, offline(1, hour), None, 1_000).unwrap();

    let with_key = std::thread::spawn(move || {
        let key = IdempotencyKey::parse("k-1").unwrap();
        in_tx(second.as_mut(), |tx| {
            idempotency::claim(tx, &alice(), &key, "{}", 1_000)
        })
        .unwrap();
        let order = PricedOrder {
            fresh_products: vec![CachedProduct {
                product_id: ProductId::new(2).unwrap(),
                name: "Mouse".into(),
                price: Money::from_cents(1999),
                stock: 40,
                fetched_at: 1_000,
            }],
            ..priced(alice())
        };
        in_tx(second.as_mut(), |tx| {
            rules::create(tx, SOURCE, order, keyed("k-1", 1_000), 1_000)
        })
    });
    pg.until_a_session_waits_on_a_lock("the keyed create on the product row the offline one holds");
    first
        .commit()
        .expect("the offline create commits: the keyed one holds nothing it needs");
    let with_key = with_key.join().unwrap();
    assert!(
        with_key.is_ok(),
        "the keyed create commits after it: {with_key:?}"
    );
}

/// An online create's sales count against the snapshot, as every sale does. An offline
/// create of the same product in another session while one is being written waits for
/// it and counts it: counting only the sales committed when it looked, the two could
/// sell more than the snapshot's stock.
#[test]
fn an_offline_create_counts_the_sales_of_an_online_create_being_written_meanwhile() {
    let Some(pg) = crate::store::TestDb::create() else {
        return;
    };
    let (mut online, mut offline_session) = (pg_engine(&pg), pg_engine(&pg));
    let hour = Duration::from_secs(3600);
    snapshot_mouse(online.as_mut(), 4, 500);
    // Three Mice sold online, the answer the row already there (nothing to rewrite, so
    // no row lock): written, not yet committed.
    let key = IdempotencyKey::parse("k-1").unwrap();
    in_tx(online.as_mut(), |tx| {
        idempotency::claim(tx, &alice(), &key, "{}", 1_000)
    })
    .unwrap();
    online.begin().unwrap();
    rules::create(
        online.tx(),
        SOURCE,
        priced(alice()),
        keyed("k-1", 1_000),
        1_000,
    )
    .unwrap();

    let two_offline = std::thread::spawn(move || {
        in_tx(offline_session.as_mut(), |tx| {
            rules::create(tx, SOURCE, offline(2, hour), None, 1_100)
        })
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !two_offline.is_finished() && pg.sessions_waiting_on_locks() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "neither sold nor waits"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    online.commit().unwrap();

    let sold = two_offline.join().unwrap();
    assert!(
        matches!(sold, Err(OrderError::Pricing(_))),
        "1 of the 4 left after the online sale: {sold:?}"
    );
}

/// An offline create whose order has a product the snapshot lacks, answered by the
/// product service before it failed, inserts that product's row after it locked the
/// rows the snapshot has. Products' answers kept for a request that failed
/// (`Orders::remember_products`, a statement per product, in product order) insert the
/// same new product first, then rewrite the product the offline create locked.
#[test]
fn an_offline_create_with_a_new_fresh_product_and_products_remembered_meanwhile_both_commit() {
    let Some(pg) = crate::store::TestDb::create() else {
        return;
    };
    let (mut offline_session, mut remembering) = (pg_engine(&pg), pg_engine(&pg));
    let hour = Duration::from_secs(3600);
    // The snapshot has the Mouse (2), not the Cable (1), new in the catalog.
    snapshot_mouse(offline_session.as_mut(), 5, 500);
    // Another request's answers, kept after it failed: the Cable's row written (the
    // Mouse's held back to its next statement), not yet committed.
    remembering.begin().unwrap();
    remembering
        .tx()
        .upsert_product(&product_row(1, 1_000))
        .unwrap();
    remembering
        .tx()
        .upsert_product(&product_row(2, 1_000))
        .unwrap();

    // An order of both whose lookups answered the Cable, then failed on the Mouse.
    let order = offline_with_answers(&[(1, 1), (2, 1)], vec![product_row(1, 1_050)], hour);
    let selling = std::thread::spawn(move || {
        in_tx(offline_session.as_mut(), |tx| {
            rules::create(tx, SOURCE, order, None, 1_100)
        })
    });
    pg.until_a_session_waits_on_a_lock("the offline create on the Cable's new row");
    // The next step of the remembering job sends the Mouse's row, and it commits.
    let remembered = remembering
        .tx()
        .forget_product(ProductId::new(3).unwrap(), 1_000)
        .map_err(OrderError::from)
        .and_then(|()| remembering.commit().map_err(OrderError::from));
    if remembered.is_err() {
        remembering.abandon();
    }
    let sold = selling.join().unwrap();
    assert!(
        sold.is_ok() && remembered.is_ok(),
        "both commit: offline create {sold:?}, products remembered {remembered:?}"
    );
}

/// The same with a catalog page (`refresher.rs`, `write_page`: one statement, its rows
/// in product order): it inserts the new product's row, waits on a row another
/// transaction holds, and then on the row the offline create locked.
#[test]
fn an_offline_create_with_a_new_fresh_product_and_a_catalog_page_meanwhile_both_commit() {
    let Some(pg) = crate::store::TestDb::create() else {
        return;
    };
    let (mut offline_session, mut refreshing) = (pg_engine(&pg), pg_engine(&pg));
    let hour = Duration::from_secs(3600);
    // The snapshot has products 2 and 3, not 1, new in the catalog.
    in_tx(offline_session.as_mut(), |tx| {
        Ok(tx.upsert_products(&[product_row(2, 500), product_row(3, 500)])?)
    })
    .unwrap();
    // Product 2's row held a moment by another writer of the snapshot.
    let mut holder = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    holder
        .batch_execute("BEGIN; SELECT 1 FROM product_cache WHERE product_id = 2 FOR UPDATE")
        .unwrap();
    // A page of the catalog: 1 inserted, then it waits on 2.
    let page = std::thread::spawn(move || {
        in_tx(refreshing.as_mut(), |tx| {
            Ok(tx.upsert_products(&[
                product_row(1, 1_000),
                product_row(2, 1_000),
                product_row(3, 1_000),
            ])?)
        })
    });
    pg.until_sessions_wait_on_locks(1, "the page on product 2's row");
    // An offline order of 1 and 3, whose lookups answered 1 and then failed: it locks
    // 3, then waits on the page's new row 1.
    let order = offline_with_answers(&[(1, 1), (3, 1)], vec![product_row(1, 1_050)], hour);
    let selling = std::thread::spawn(move || {
        in_tx(offline_session.as_mut(), |tx| {
            rules::create(tx, SOURCE, order, None, 1_100)
        })
    });
    pg.until_sessions_wait_on_locks(2, "the offline create too");
    holder.batch_execute("COMMIT").unwrap();
    let (sold, written) = (selling.join().unwrap(), page.join().unwrap());
    assert!(
        sold.is_ok() && written.is_ok(),
        "both commit: offline create {sold:?}, catalog page {written:?}"
    );
}

/// A write session on `pg`'s database, migrated.
fn pg_engine(pg: &crate::store::TestDb) -> Box<dyn Engine> {
    let config =
        crate::config::Config::from_lookup(|name| (name == "DATABASE_URL").then(|| pg.url()))
            .unwrap();
    crate::store::open(&config.database, &crate::store::TestDb::pool())
        .unwrap()
        .engines
        .remove(0)
}

/// A product the service answered unknown is forgotten, unless the snapshot holds an
/// answer newer than that one (a refresh that came in while the lookup was under way).
fn an_unknown_product_is_forgotten_unless_a_newer_answer_is_kept(db: &mut dyn Engine) {
    let mouse = ProductId::new(2).unwrap();
    let rows =
        |db: &mut dyn Engine| in_tx(db, |tx| Ok(tx.snapshot_for_update(&[mouse])?.len())).unwrap();
    snapshot_mouse(db, 5, 2_000);
    in_tx(db, |tx| Ok(tx.forget_product(mouse, 1_000)?)).unwrap();
    assert_eq!(rows(db), 1, "the row fetched after the answer stays");
    in_tx(db, |tx| Ok(tx.forget_product(mouse, 3_000)?)).unwrap();
    assert_eq!(rows(db), 0, "an answer newer than the row forgets it");
}

/// A product answered unknown, or left out of a complete refresh, stays gone for an
/// answer fetched before then that commits after it (a slow lookup); a newer answer
/// brings it back. Gone rows are pruned once old.
fn a_product_gone_does_not_come_back_with_an_older_answer(db: &mut dyn Engine) {
    let mouse = ProductId::new(2).unwrap();
    let rows =
        |db: &mut dyn Engine| in_tx(db, |tx| Ok(tx.snapshot_for_update(&[mouse])?.len())).unwrap();
    let answer = |db: &mut dyn Engine, at| {
        in_tx(db, |tx| Ok(tx.upsert_product(&product_row(2, at))?)).unwrap();
    };
    // Answered unknown at 2,000, with no row before it.
    in_tx(db, |tx| Ok(tx.forget_product(mouse, 2_000)?)).unwrap();
    answer(db, 1_000);
    assert_eq!(
        rows(db),
        0,
        "an answer from before the forget put the product back"
    );
    answer(db, 3_000);
    assert_eq!(rows(db), 1, "a newer answer knows it again");
    // A complete refresh started at 5,000 did not list it.
    in_tx(db, |tx| Ok(tx.finish_refresh(5_000, 0, "list", true)?)).unwrap();
    assert_eq!(rows(db), 0);
    answer(db, 4_000);
    assert_eq!(
        rows(db),
        0,
        "an answer from before the refresh put the product back"
    );
    let pruned = in_tx(db, |tx| Ok(tx.prune_gone_products(5_001, 10)?)).unwrap();
    assert_eq!(pruned, 1);
}

/// A gone row keeps its stamp through the complete refreshes that follow (every 300 s by
/// default), so that the prune, an hour on, takes it: restamped, none ever went.
fn a_gone_row_is_pruned_an_hour_on_whatever_refreshes_came(db: &mut dyn Engine) {
    const SECOND: i64 = 1_000_000;
    let ghost = ProductId::new(424_242).unwrap();
    let t0 = 1_000 * SECOND;
    in_tx(db, |tx| Ok(tx.forget_product(ghost, t0)?)).unwrap();
    let mut at = t0;
    while at < t0 + 7_200 * SECOND {
        at += 300 * SECOND;
        in_tx(db, |tx| Ok(tx.finish_refresh(at, 0, "list", true)?)).unwrap();
    }
    let pruned = in_tx(
        db,
        |tx| Ok(tx.prune_gone_products(at - 3_600 * SECOND, 10)?),
    )
    .unwrap();
    assert_eq!(pruned, 1);
}

#[test]
fn a_gone_row_is_pruned_an_hour_on_whatever_refreshes_came_sqlite() {
    a_gone_row_is_pruned_an_hour_on_whatever_refreshes_came(&mut SqliteEngine::in_memory());
}

#[test]
fn a_gone_row_is_pruned_an_hour_on_whatever_refreshes_came_postgres() {
    let Some(pg) = crate::store::TestDb::create() else {
        return;
    };
    a_gone_row_is_pruned_an_hour_on_whatever_refreshes_came(pg_engine(&pg).as_mut());
}

#[test]
fn a_product_gone_does_not_come_back_with_an_older_answer_sqlite() {
    a_product_gone_does_not_come_back_with_an_older_answer(&mut SqliteEngine::in_memory());
}

#[test]
fn a_product_gone_does_not_come_back_with_an_older_answer_postgres() {
    let Some(pg) = crate::store::TestDb::create() else {
        return;
    };
    a_product_gone_does_not_come_back_with_an_older_answer(pg_engine(&pg).as_mut());
}

#[test]
fn an_unknown_product_is_forgotten_unless_a_newer_answer_is_kept_sqlite() {
    an_unknown_product_is_forgotten_unless_a_newer_answer_is_kept(&mut SqliteEngine::in_memory());
}

#[test]
fn an_unknown_product_is_forgotten_unless_a_newer_answer_is_kept_postgres() {
    let Some(pg) = crate::store::TestDb::create() else {
        return;
    };
    an_unknown_product_is_forgotten_unless_a_newer_answer_is_kept(pg_engine(&pg).as_mut());
}

/// What the relay marked published is the run up to the watermark; pruning takes the
/// events whose mark is older than the retention, never the newest event, and the marks
/// no event is left under, never the watermark.
fn events_are_pruned_by_the_time_of_their_mark(db: &mut dyn Engine, reads: &dyn Reads) {
    let pending = |reads: &dyn Reads| -> Vec<i64> {
        let rows = reads.pending_events(0, 100).unwrap();
        rows.iter().map(|r| r.id).collect()
    };
    for _ in 0..4 {
        in_tx(db, |tx| {
            rules::create(tx, SOURCE, priced(alice()), None, 1_000)
        })
        .unwrap();
    }
    // On PostgreSQL an event waits for every older transaction of the server to end,
    // other tests' included.
    let waited = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut events = pending(reads);
    while events.len() < 4 && std::time::Instant::now() < waited {
        std::thread::sleep(std::time::Duration::from_millis(20));
        events = pending(reads);
    }
    let [e1, e2, e3, e4] = events[..] else {
        panic!("four events: {events:?}")
    };
    let mark = |db: &mut dyn Engine, ids: &[i64], at| {
        in_tx(db, |tx| Ok(tx.mark_published(ids, at)?)).unwrap()
    };
    const S: i64 = 1_000_000;
    assert_eq!(mark(db, &[e1], 100 * S), 1);
    // Within a second of the mark made at 100 s: that mark moves on.
    assert_eq!(mark(db, &[e2], 100 * S + S / 2), 1);
    assert_eq!(mark(db, &[e3], 300 * S), 1);
    assert_eq!(mark(db, &[e2], 400 * S), 0, "a late mark moves nothing");
    assert_eq!(pending(reads), [e4]);
    assert_eq!(reads.published_events().unwrap(), 3);

    let prune =
        |db: &mut dyn Engine, before| in_tx(db, |tx| Ok(tx.prune_outbox(before, 10)?)).unwrap();
    assert_eq!(
        prune(db, 100 * S + 1),
        2,
        "the two under the mark made at 100 s"
    );
    assert_eq!(pending(reads), [e4]);
    assert_eq!(prune(db, 350 * S), 1);
    assert_eq!(
        pending(reads),
        [e4],
        "the watermark stays with its events gone"
    );
    assert_eq!(reads.outbox_stats().unwrap().pending, 1);

    assert_eq!(mark(db, &[e4], 500 * S), 1);
    assert_eq!(prune(db, 600 * S), 0, "the newest event stays");
    assert_eq!(pending(reads), Vec::<i64>::new());
    assert_eq!(reads.published_events().unwrap(), 1);
}

fn opened(database: &crate::config::Database) -> (Box<dyn Engine>, Box<dyn Reads>) {
    let pool = crate::store::TestDb::pool();
    let engine = crate::store::open(database, &pool)
        .unwrap()
        .engines
        .remove(0);
    (engine, crate::store::reads(database, &pool).unwrap())
}

#[test]
fn events_are_pruned_by_the_time_of_their_mark_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reads) = opened(&crate::config::Database::Sqlite(dir.path().join("o.db")));
    events_are_pruned_by_the_time_of_their_mark(db.as_mut(), reads.as_ref());
}

#[test]
fn events_are_pruned_by_the_time_of_their_mark_postgres() {
    let Some(pg) = crate::store::TestDb::create() else {
        return;
    };
    let config =
        crate::config::Config::from_lookup(|name| (name == "DATABASE_URL").then(|| pg.url()))
            .unwrap();
    let (mut db, reads) = opened(&config.database);
    events_are_pruned_by_the_time_of_their_mark(db.as_mut(), reads.as_ref());
}
