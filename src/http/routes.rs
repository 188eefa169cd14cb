//! Routing and the handlers: each a plain function from a request to a response.

use super::error::ApiError;
use super::request::{header, json_body, query_number, query_value};
use super::{Response, Shared};
use crate::domain::{
    Cursor, Email, IdempotencyKey, NewOrder, Order, OrderId, Page, Status, UserId,
};
use crate::orders::{Answer, Claimed, Priced, PricedOrder};
use crate::products::PricingError;
use crate::store::{Reads, StoreError};
use serde_json::json;
use std::time::Duration;

/// A request's path, parsed once. An `:id` that is not an order id is kept as `None`:
/// such a path answers 404 like a missing order, after the method and identity checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Metrics,
    OpenApi,
    Orders,
    Order(Option<OrderId>),
    Cancel(Option<OrderId>),
    Status(Option<OrderId>),
}

/// Every route the server knows, as (pattern, methods): for the OpenAPI check.
pub const ROUTES: &[(&str, &[&str])] = &[
    Route::Health.entry(),
    Route::Ready.entry(),
    Route::Metrics.entry(),
    Route::OpenApi.entry(),
    Route::Orders.entry(),
    Route::Order(None).entry(),
    Route::Cancel(None).entry(),
    Route::Status(None).entry(),
];

impl Route {
    pub fn parse(path: &str) -> Option<Route> {
        // The edge hands on only targets that start with `/` (tiny_http's wire.rs); what
        // else reached here would not be what the gateway check read.
        let path = path.strip_prefix('/')?;
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        Some(match segments.as_slice() {
            ["health"] => Route::Health,
            ["ready"] => Route::Ready,
            ["metrics"] => Route::Metrics,
            ["openapi.json"] => Route::OpenApi,
            ["api", "orders"] => Route::Orders,
            ["api", "orders", id] => Route::Order(OrderId::parse(id)),
            ["api", "orders", id, "cancel"] => Route::Cancel(OrderId::parse(id)),
            ["api", "orders", id, "status"] => Route::Status(OrderId::parse(id)),
            _ => return None,
        })
    }

    /// The pattern, as the metrics label it.
    pub const fn pattern(&self) -> &'static str {
        match self {
            Route::Health => "/health",
            Route::Ready => "/ready",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Orders => "/api/orders",
            Route::Order(_) => "/api/orders/:id",
            Route::Cancel(_) => "/api/orders/:id/cancel",
            Route::Status(_) => "/api/orders/:id/status",
        }
    }

    /// The methods it takes (`Allow` of a 405).
    pub const fn allow(&self) -> &'static [&'static str] {
        match self {
            Route::Orders => &["GET", "POST"],
            Route::Cancel(_) | Route::Status(_) => &["PATCH"],
            _ => &["GET"],
        }
    }

    /// Whether this route with `method` creates an order: the request `create` serves.
    pub fn is_create(&self, method: &str) -> bool {
        matches!(self, Route::Orders) && method == "POST"
    }

    /// The order this route with `method` (`served_as`) gets by its id, if it is such a
    /// get: the request `get` serves (mod.rs).
    pub fn get_by_id(&self, method: &str) -> Option<OrderId> {
        match self {
            Route::Order(Some(id)) if served_as(method) == "GET" => Some(*id),
            _ => None,
        }
    }

    const fn entry(self) -> (&'static str, &'static [&'static str]) {
        (self.pattern(), self.allow())
    }
}

/// The method a request is served as: HEAD as GET, whose answer tiny_http sends without
/// its body (RFC 9110, 9.3.2). Method names are case-sensitive (RFC 9110, 9.1): `post` is
/// none of ours, and a rule a gateway keys on `POST` is not got round by writing it so.
pub fn served_as(method: &str) -> &str {
    if method == "HEAD" {
        "GET"
    } else {
        method
    }
}

pub fn handle(
    shared: &Shared,
    reader: &dyn Reads,
    req: &mut tiny_http::Request,
    route: Route,
    query: &[(&str, &str)],
) -> Result<Response, ApiError> {
    let method = served_as(req.method().as_str()).to_string();
    if !route.allow().contains(&method.as_str()) {
        return Err(ApiError::MethodNotAllowed(route.allow()));
    }
    // The gateway's token and the user's id were checked for every /api/ path before
    // routing (mod.rs).
    let api = user_id;
    let found = |id: Option<OrderId>| id.ok_or(ApiError::NotFound);
    match route {
        Route::Health => Ok(Response::json(200, &json!({"status": "ok"}))),
        Route::Ready => Ok(ready(shared, reader, req)),
        Route::Metrics => Ok(Response::text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(
                reader.outbox_stats().ok().as_ref(),
                reader.blocked_event().ok().flatten().as_ref(),
                catalog_stats(shared, reader).as_ref(),
            ),
        )),
        Route::OpenApi => Ok(Response::raw_json(200, super::OPENAPI.to_string())),
        Route::Orders if method == "GET" => list(reader, &api(req)?, query),
        Route::Orders => create(shared, req),
        Route::Order(id) => {
            let (user, admin) = reader_of(shared, req)?;
            order(reader.order(found(id)?), &user, admin)
        }
        Route::Cancel(id) => {
            let user = api(req)?;
            let order = shared.orders.cancel(found(id)?, user)?;
            Ok(Response::json(200, &order))
        }
        Route::Status(id) => {
            api(req)?;
            if !is_admin(shared, req) {
                return Err(ApiError::Forbidden);
            }
            let status = parse_status(&json_body(req)?)?;
            let order = shared.orders.set_status(found(id)?, status)?;
            Ok(Response::json(200, &order))
        }
    }
}

/// Who asks for an order, and whether as an admin.
pub(super) fn reader_of(
    shared: &Shared,
    req: &tiny_http::Request,
) -> Result<(UserId, bool), ApiError> {
    Ok((user_id(req)?, is_admin(shared, req)))
}

/// The answer to a get by id: the order if it is the asker's, or the asker is an admin.
pub(super) fn order(
    read: Result<Option<Order>, StoreError>,
    user: &UserId,
    admin: bool,
) -> Result<Response, ApiError> {
    let order = read?
        .filter(|o| admin || o.user_id == *user)
        .ok_or(ApiError::NotFound)?;
    Ok(Response::json(200, &order))
}

fn list(reader: &dyn Reads, user: &UserId, query: &[(&str, &str)]) -> Result<Response, ApiError> {
    let per_page = query_number(query, "per_page", 10, 1..=100)?;
    let after = query_value(query, "after")?;
    let (page, number) = match after {
        None => {
            let number = query_number(query, "page", 1, 1..=u32::MAX)?;
            (Page::Number(number), Some(number))
        }
        // Which of the two was meant is a guess.
        Some(_) if query_value(query, "page")?.is_some() => {
            return Err(ApiError::Validation(crate::domain::FieldError::new(
                "page",
                "must not be given with after",
            )))
        }
        Some(raw) => {
            let cursor = Cursor::parse(raw).ok_or_else(|| {
                ApiError::Validation(crate::domain::FieldError::new(
                    "after",
                    "must be a cursor from an earlier page's next",
                ))
            })?;
            (Page::After(cursor), None)
        }
    };
    let list = reader.orders_of(user, page, per_page)?;
    let pages = (list.total + i64::from(per_page) - 1) / i64::from(per_page);
    let next = list
        .more
        .then(|| list.orders.last().map(|o| Cursor::after(o).to_string()))
        .flatten();
    Ok(Response::json(
        200,
        &OrderPage {
            orders: list.orders,
            page: number,
            per_page,
            total: list.total,
            pages,
            next,
        },
    ))
}

#[derive(serde::Serialize)]
struct OrderPage {
    orders: Vec<crate::domain::Order>,
    /// The page's number; `null` for a page asked for with `after`.
    page: Option<u32>,
    per_page: u32,
    total: i64,
    pages: i64,
    /// The `after` of the next page, while older orders follow.
    next: Option<String>,
}

/// `POST /api/orders`, its method checked: it needs no reading session, and is served
/// on its connection's thread (mod.rs).
pub fn create(shared: &Shared, req: &mut tiny_http::Request) -> Result<Response, ApiError> {
    let user = user_id(req)?;
    // Product answers must come from requests sent after this (single-flight may share).
    let arrived = std::time::Instant::now();
    let email = match header(req, "X-User-Email") {
        None => {
            return Err(ApiError::Unauthorized(
                "X-User-Email is required to place an order.",
            ))
        }
        Some(raw) => Email::parse(raw.trim()).ok_or_else(|| {
            ApiError::Validation(crate::domain::FieldError::new(
                "X-User-Email",
                "must be an e-mail address of at most 200 characters",
            ))
        })?,
    };
    let key = header(req, "Idempotency-Key")
        .map(IdempotencyKey::parse)
        .transpose()?;
    let order = NewOrder::parse(&json_body(req)?)?;
    let request = order.canonical();

    // A fresh claim is released if this request fails before its order commits.
    let claim = match &key {
        None => None,
        Some(key) => match shared.orders.claim(&user, key, &request)? {
            (Claimed::Replay(answer), _) => return Ok(replay(answer)),
            (Claimed::Fresh, guard) => guard,
        },
    };

    let pricing = shared.catalog.price(&order, arrived);
    let priced = match (pricing.outcome, shared.catalog.offline_max_age()) {
        (Ok(lines), _) => Priced::Live {
            lines,
            at: pricing.priced_at,
        },
        // The offline policy: priced from the snapshot in the order's transaction.
        (Err(PricingError::Outage(outage)), Some(max_age)) => Priced::Offline {
            order,
            max_age,
            outage,
        },
        (Err(e), _) => {
            shared
                .orders
                .remember_products(pricing.fresh, pricing.unknown, pricing.priced_at);
            return Err(e.into());
        }
    };
    let idempotent = claim.as_ref().map(|claim| {
        claim.idempotent(Box::new(|order| Answer {
            status: 201,
            body: serde_json::to_string(order).expect("an order always serializes"),
        }))
    });
    let priced = PricedOrder {
        user_id: user,
        user_email: email,
        priced,
        fresh_products: pricing.fresh,
    };
    let order = shared.orders.create(priced, idempotent)?;
    if let Some(claim) = claim {
        claim.answered();
    }
    shared.metrics.order_created();
    if !order.stock_verified {
        shared.catalog.sold_offline();
    }
    let location = format!("/api/orders/{}", order.id);
    Ok(Response::json(201, &order).with_header("Location", location))
}

/// A repeat of an idempotent create: the first answer, marked as a replay.
fn replay(Answer { status, body }: Answer) -> Response {
    let location = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_i64()))
        .map(|id| format!("/api/orders/{id}"));
    let reply = Response::raw_json(status, body).with_header("Idempotent-Replayed", "true".into());
    match location {
        Some(l) if status == 201 => reply.with_header("Location", l),
        _ => reply,
    }
}

fn parse_status(body: &serde_json::Value) -> Result<Status, ApiError> {
    body.get("status")
        .and_then(|s| s.as_str())
        .and_then(Status::parse)
        .ok_or_else(|| {
            ApiError::Validation(crate::domain::FieldError::new(
                "status",
                "must be one of pending, confirmed, shipped, delivered, cancelled",
            ))
        })
}

/// Ready, or 503: the database does not take a write, or the server is stopping (the
/// last request of a kept-alive connection, such as a load balancer's probe).
fn ready(shared: &Shared, reader: &dyn Reads, req: &tiny_http::Request) -> Response {
    let database = shared.writer.probe(Duration::from_secs(2));
    let outbox = reader.outbox_stats();
    let db_ok = database.is_ok() && outbox.is_ok();
    let db_text = match (&database, &outbox) {
        (Ok(()), Ok(_)) => "ok".to_string(),
        (Err(e), _) => e.to_string(),
        (_, Err(e)) => e.to_string(),
    };
    let outbox = outbox.ok();
    let blocked = reader.blocked_event().ok().flatten();
    let blocked = blocked.as_ref();
    let stopping = req.server_stopping();
    let body = json!({
        "status": if stopping { "stopping" } else if db_ok { "ready" } else { "unavailable" },
        "database": db_text,
        "broker": if shared.metrics.broker_connected() { "connected" } else { "disconnected" },
        "relay": if shared.metrics.relay_active() { "active" } else { "standby" },
        "outbox": {
            "pending": outbox.as_ref().map(|o| o.pending),
            "oldest_pending_age_seconds": outbox.as_ref().and_then(|o| o.oldest_pending_age_seconds()),
            "blocked_event_id": blocked.map(|b| &b.event_id),
            "blocked_event_type": blocked.map(|b| &b.event_type),
            "blocked_since": blocked.map(|b| crate::clock::rfc3339(b.since)),
        },
        "product_service": product_service(shared),
        "catalog": catalog_stats(shared, reader).map(|c| json!({
            "products": c.products,
            "fresh_products": c.fresh,
            "refreshed_at": c.refreshed_at.map(crate::clock::rfc3339),
            "age_seconds": c.age_seconds(),
            "source": c.source,
        })),
    });
    if stopping {
        // Not "try again later": this instance is going away.
        Response::json(503, &body)
    } else if db_ok {
        Response::json(200, &body)
    } else {
        log::warn!("not ready: {db_text}");
        Response::json(503, &body).with_header("Retry-After", "5".into())
    }
}

/// The product-service link as `/ready` shows it: whether it answers, whether orders
/// are taken offline while it does not, and how many were since it was last lost.
fn product_service(shared: &Shared) -> serde_json::Value {
    let (link, since) = shared.metrics.product_link();
    let max_age = shared.catalog.offline_max_age();
    json!({
        "link": link,
        "since": since.map(crate::clock::rfc3339),
        "offline_sales": if max_age.is_some() { "on" } else { "off" },
        "offline_max_age_seconds": max_age.map_or(0, |a| a.as_secs()),
        "offline_orders": shared.metrics.offline_orders(),
    })
}

/// The snapshot's size and age; `fresh` counts what may be sold offline now.
fn catalog_stats(shared: &Shared, reader: &dyn Reads) -> Option<crate::store::CatalogStats> {
    let max_age = shared.catalog.offline_max_age().unwrap_or_default();
    let fresh_after = crate::clock::now_micros()
        .saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX));
    reader
        .catalog_stats(fresh_after)
        .map_err(|e| log::warn!("catalog snapshot unreadable: {e}"))
        .ok()
}

pub(super) fn check_gateway(shared: &Shared, req: &tiny_http::Request) -> Result<(), ApiError> {
    match &shared.gateway_token {
        None => Ok(()),
        Some(token) => match header(req, "X-Gateway-Token") {
            Some(given) if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) => Ok(()),
            _ => Err(ApiError::Unauthorized(
                "A valid X-Gateway-Token is required.",
            )),
        },
    }
}

pub(super) fn user_id(req: &tiny_http::Request) -> Result<UserId, ApiError> {
    header(req, "X-User-Id")
        .and_then(|raw| UserId::parse(raw.trim()))
        .ok_or(ApiError::Unauthorized("X-User-Id is missing or invalid."))
}

fn is_admin(shared: &Shared, req: &tiny_http::Request) -> bool {
    if header(req, "X-User-Role").is_some_and(|r| r.trim().eq_ignore_ascii_case("admin")) {
        return true;
    }
    match (&shared.admin_token, header(req, "Authorization")) {
        // The scheme in any case (RFC 9110, 11.1).
        (Some(token), Some(auth)) => auth
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
            .is_some_and(|(_, given)| {
                constant_time_eq(given.trim().as_bytes(), token.expose().as_bytes())
            }),
        _ => false,
    }
}

/// Compares secrets without an early exit, so timing tells nothing of the content.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_pattern() {
        let id = OrderId::parse("12");
        assert_eq!(
            Route::parse("/api/orders/12/cancel"),
            Some(Route::Cancel(id))
        );
        assert_eq!(Route::parse("/api/orders/12"), Some(Route::Order(id)));
        assert_eq!(Route::parse("/api/orders/abc"), Some(Route::Order(None)));
        assert_eq!(Route::parse("/api/orders/"), Some(Route::Orders));
        assert_eq!(
            Route::parse("/api/orders/x/status").unwrap().pattern(),
            "/api/orders/:id/status"
        );
        assert!(Route::parse("/api/orders/1/2/3").is_none());
        assert!(Route::parse("/nope").is_none());
        assert!(
            Route::parse("x/api/orders").is_none(),
            "a path without its /"
        );
        assert_eq!(ROUTES.len(), 8);
        assert_eq!(ROUTES[4], ("/api/orders", &["GET", "POST"][..]));
    }

    #[test]
    fn a_get_by_id_is_a_get_or_a_head_in_capitals_as_the_handlers_take_it() {
        let order = Route::parse("/api/orders/12").unwrap();
        for method in ["GET", "HEAD"] {
            assert_eq!(order.get_by_id(method), OrderId::parse("12"), "{method}");
        }
        for method in ["get", "Get", "POST"] {
            assert_eq!(order.get_by_id(method), None, "{method}");
        }
        assert_eq!(
            Route::parse("/api/orders/abc").unwrap().get_by_id("GET"),
            None
        );
        assert_eq!(Route::Orders.get_by_id("GET"), None);
    }

    #[test]
    fn compares_tokens_fully() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
