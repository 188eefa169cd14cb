//! Routing and the handlers: each a plain function from a request to a reply.

use super::error::ApiError;
use super::request::{header, json_body, query_number};
use super::{Reply, Shared};
use crate::domain::{Email, IdempotencyKey, NewOrder, OrderId, Status, UserId};
use crate::store::{Created, NewOrderRecord, Reader};
use serde_json::json;
use std::time::Duration;

/// A route: its pattern (the metrics label) and the methods it takes.
pub struct Route {
    pub pattern: &'static str,
    pub allow: &'static [&'static str],
    /// The `:id` segment, as written.
    pub id: Option<String>,
}

/// Every route the server knows, as (pattern, methods).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/health", &["GET"]),
    ("/ready", &["GET"]),
    ("/metrics", &["GET"]),
    ("/openapi.json", &["GET"]),
    ("/api/orders", &["GET", "POST"]),
    ("/api/orders/:id", &["GET"]),
    ("/api/orders/:id/cancel", &["PATCH"]),
    ("/api/orders/:id/status", &["PATCH"]),
];

pub fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (pattern, id) = match segments.as_slice() {
        ["health"] => ("/health", None),
        ["ready"] => ("/ready", None),
        ["metrics"] => ("/metrics", None),
        ["openapi.json"] => ("/openapi.json", None),
        ["api", "orders"] => ("/api/orders", None),
        ["api", "orders", id] => ("/api/orders/:id", Some(*id)),
        ["api", "orders", id, "cancel"] => ("/api/orders/:id/cancel", Some(*id)),
        ["api", "orders", id, "status"] => ("/api/orders/:id/status", Some(*id)),
        _ => return None,
    };
    let allow = ROUTES
        .iter()
        .find(|(p, _)| *p == pattern)
        .map(|(_, m)| *m)?;
    Some(Route {
        pattern,
        allow,
        id: id.map(str::to_string),
    })
}

pub fn handle(
    shared: &Shared,
    reader: &Reader,
    req: &mut tiny_http::Request,
    route: &Route,
    query: &[(&str, &str)],
) -> Result<Reply, ApiError> {
    let method = req.method().as_str().to_ascii_uppercase();
    if !route.allow.contains(&method.as_str()) {
        return Err(ApiError::MethodNotAllowed(route.allow));
    }
    match (route.pattern, method.as_str()) {
        ("/health", _) => Ok(Reply::json(200, &json!({"status": "ok"}))),
        ("/ready", _) => Ok(ready(shared, reader)),
        ("/metrics", _) => Ok(Reply::text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(
                reader.outbox_stats().ok().as_ref(),
                reader.blocked_event().ok().flatten().as_ref(),
            ),
        )),
        ("/openapi.json", _) => Ok(Reply::raw_json(200, super::OPENAPI.to_string())),
        (_, _) => {
            check_gateway(shared, req)?;
            let user = user_id(req)?;
            let id = route
                .id
                .as_deref()
                .map(|raw| OrderId::parse(raw).ok_or(ApiError::NotFound));
            match (route.pattern, method.as_str()) {
                ("/api/orders", "GET") => list(reader, &user, query),
                ("/api/orders", "POST") => create(shared, reader, req, user),
                ("/api/orders/:id", _) => {
                    let admin = is_admin(shared, req);
                    let order = reader
                        .order(id.expect("route has an id")?)?
                        .filter(|o| admin || o.user_id == user)
                        .ok_or(ApiError::NotFound)?;
                    Ok(Reply::json(200, &order))
                }
                ("/api/orders/:id/cancel", _) => {
                    let order = shared.writer.cancel(id.expect("route has an id")?, user)?;
                    Ok(Reply::json(200, &order))
                }
                ("/api/orders/:id/status", _) => {
                    if !is_admin(shared, req) {
                        return Err(ApiError::Forbidden);
                    }
                    let status = parse_status(&json_body(req)?)?;
                    let order = shared
                        .writer
                        .set_status(id.expect("route has an id")?, status)?;
                    Ok(Reply::json(200, &order))
                }
                _ => Err(ApiError::MethodNotAllowed(route.allow)),
            }
        }
    }
}

fn list(reader: &Reader, user: &UserId, query: &[(&str, &str)]) -> Result<Reply, ApiError> {
    let page = query_number(query, "page", 1, 1..=u32::MAX)?;
    let per_page = query_number(query, "per_page", 10, 1..=100)?;
    let (orders, total) = reader.orders_of(user, page, per_page)?;
    let pages = (total + i64::from(per_page) - 1) / i64::from(per_page);
    Ok(Reply::json(
        200,
        &OrderPage {
            orders,
            page,
            per_page,
            total,
            pages,
        },
    ))
}

#[derive(serde::Serialize)]
struct OrderPage {
    orders: Vec<crate::domain::Order>,
    page: u32,
    per_page: u32,
    total: i64,
    pages: i64,
}

fn create(
    shared: &Shared,
    reader: &Reader,
    req: &mut tiny_http::Request,
    user: UserId,
) -> Result<Reply, ApiError> {
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

    // Held until this request is answered: a repeat that arrives meanwhile gets 409.
    let _claim = match &key {
        None => None,
        Some(key) => {
            let claim = shared
                .in_flight
                .claim(&user, key)
                .ok_or(ApiError::IdempotencyKeyInProgress)?;
            if let Some(seen) = reader.idempotency_record(&user, key.as_str())? {
                return if seen.request == request {
                    Ok(replay(seen.status, seen.body))
                } else {
                    Err(ApiError::IdempotencyKeyReused)
                };
            }
            Some(claim)
        }
    };

    let pricing = shared.catalog.price(&order, |ids| {
        reader.cached_products(ids).unwrap_or_else(|e| {
            log::warn!("product cache unreadable: {e}");
            Vec::new()
        })
    });
    let lines = match pricing.outcome {
        Ok(lines) => lines,
        Err(e) => {
            shared
                .writer
                .remember_products(pricing.fresh, pricing.unknown);
            return Err(e.into());
        }
    };
    let created = shared.writer.create(NewOrderRecord {
        user_id: user,
        user_email: email,
        lines,
        idempotency: key.map(|k| (k, request)),
        fresh_products: pricing.fresh,
    })?;
    match created {
        Created::New(order) => {
            shared.metrics.order_created();
            let location = format!("/api/orders/{}", order.id);
            Ok(Reply::json(201, &order).with_header("Location", location))
        }
        Created::Replayed { status, body } => Ok(replay(status, body)),
    }
}

fn replay(status: u16, body: String) -> Reply {
    let location = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_i64()))
        .map(|id| format!("/api/orders/{id}"));
    let reply = Reply::raw_json(status, body).with_header("Idempotent-Replayed", "true".into());
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

fn ready(shared: &Shared, reader: &Reader) -> Reply {
    let database = shared.writer.ping(Duration::from_secs(2));
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
    let body = json!({
        "status": if db_ok { "ready" } else { "unavailable" },
        "database": db_text,
        "broker": if shared.metrics.broker_connected() { "connected" } else { "disconnected" },
        "outbox": {
            "pending": outbox.as_ref().map(|o| o.pending),
            "oldest_pending_age_seconds": outbox.as_ref().and_then(|o| o.oldest_pending_age_seconds()),
            "blocked_event_id": blocked.map(|b| &b.event_id),
            "blocked_event_type": blocked.map(|b| &b.event_type),
            "blocked_since": blocked.map(|b| crate::clock::rfc3339(b.since)),
        },
    });
    if db_ok {
        Reply::json(200, &body)
    } else {
        log::warn!("not ready: {db_text}");
        Reply::json(503, &body).with_header("Retry-After", "5".into())
    }
}

fn check_gateway(shared: &Shared, req: &tiny_http::Request) -> Result<(), ApiError> {
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

fn user_id(req: &tiny_http::Request) -> Result<UserId, ApiError> {
    header(req, "X-User-Id")
        .and_then(|raw| UserId::parse(raw.trim()))
        .ok_or(ApiError::Unauthorized("X-User-Id is missing or invalid."))
}

fn is_admin(shared: &Shared, req: &tiny_http::Request) -> bool {
    if header(req, "X-User-Role").is_some_and(|r| r.trim().eq_ignore_ascii_case("admin")) {
        return true;
    }
    match (&shared.admin_token, header(req, "Authorization")) {
        (Some(token), Some(auth)) => auth.strip_prefix("Bearer ").is_some_and(|given| {
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
        assert_eq!(
            route("/api/orders/12/cancel").unwrap().pattern,
            "/api/orders/:id/cancel"
        );
        assert_eq!(route("/api/orders/12").unwrap().id.as_deref(), Some("12"));
        assert_eq!(route("/api/orders/").unwrap().pattern, "/api/orders");
        assert!(route("/api/orders/1/2/3").is_none());
        assert!(route("/nope").is_none());
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
