//! The one place where an error becomes an HTTP status, a code and a JSON body.

use crate::domain::{FieldError, ProductId, Status};
use crate::orders::OrderError;
use crate::products::{PricingError, Shortage};
use crate::store::StoreError;
use serde_json::{json, Value};
use std::fmt;

/// Seconds a client is asked to wait before retrying a 503.
const RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug)]
pub enum ApiError {
    Unauthorized(&'static str),
    Forbidden,
    NotFound,
    MethodNotAllowed(&'static [&'static str]),
    InvalidJson(String),
    Validation(FieldError),
    PayloadTooLarge,
    UnsupportedMediaType,
    UnknownProduct(Vec<ProductId>),
    InsufficientStock(Vec<Shortage>),
    InvalidTransition {
        from: Status,
        to: Status,
    },
    IdempotencyKeyReused,
    IdempotencyKeyInProgress,
    ProductServiceUnavailable(String),
    /// The database could not take or answer the request; the cause is logged, not shown.
    DatabaseUnavailable(String),
    /// A bug: logged with its cause, answered with a generic sentence.
    Internal(String),
    /// The HTTP edge refused the request before any worker saw it: malformed or
    /// ambiguous framing (400), too slow (408), too large (413, 414, 431), an unknown
    /// `Expect` (417), a version other than 1.x (505), or full (503).
    Edge(u16),
    /// The service was stopping when the request came, too late for its last answers.
    Stopping,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidJson(_) | ApiError::Validation(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::InsufficientStock(_)
            | ApiError::InvalidTransition { .. }
            | ApiError::IdempotencyKeyInProgress => 409,
            ApiError::PayloadTooLarge => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::UnknownProduct(_) | ApiError::IdempotencyKeyReused => 422,
            ApiError::Internal(_) => 500,
            ApiError::ProductServiceUnavailable(_)
            | ApiError::DatabaseUnavailable(_)
            | ApiError::Stopping => 503,
            ApiError::Edge(status) => *status,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::Validation(_) => "validation_failed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::UnknownProduct(_) => "unknown_product",
            ApiError::InsufficientStock(_) => "insufficient_stock",
            ApiError::InvalidTransition { .. } => "invalid_transition",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyKeyInProgress => "idempotency_key_in_progress",
            ApiError::ProductServiceUnavailable(_) => "product_service_unavailable",
            ApiError::DatabaseUnavailable(_) => "service_unavailable",
            ApiError::Internal(_) => "internal_error",
            ApiError::Stopping => "service_unavailable",
            ApiError::Edge(413) => "payload_too_large",
            ApiError::Edge(status) => match status {
                400 => "bad_request",
                408 => "request_timeout",
                414 => "uri_too_long",
                417 => "expectation_failed",
                431 => "headers_too_large",
                503 => "too_many_connections",
                505 => "http_version_not_supported",
                _ => "refused",
            },
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::Unauthorized(why) => (*why).to_string(),
            ApiError::Forbidden => "This needs an administrator.".into(),
            ApiError::NotFound => "Not found.".into(),
            ApiError::MethodNotAllowed(allow) => {
                format!("Method not allowed here; allowed: {}.", allow.join(", "))
            }
            ApiError::InvalidJson(why) => format!("The body is not valid JSON: {why}."),
            ApiError::Validation(e) => format!("Invalid field {}: {}.", e.field, e.message),
            ApiError::PayloadTooLarge => {
                format!(
                    "The body is larger than {} bytes.",
                    super::request::MAX_BODY
                )
            }
            ApiError::UnsupportedMediaType => {
                "The body must be JSON (Content-Type: application/json).".into()
            }
            ApiError::UnknownProduct(ids) => format!("Unknown product: {}.", join(ids)),
            ApiError::InsufficientStock(s) => format!(
                "Not enough stock for product {}.",
                join(&s.iter().map(|s| s.product_id).collect::<Vec<_>>())
            ),
            ApiError::InvalidTransition { from, to } => {
                format!("An order that is {from} cannot become {to}.")
            }
            ApiError::IdempotencyKeyReused => {
                "This Idempotency-Key was used with a different request.".into()
            }
            ApiError::IdempotencyKeyInProgress => {
                "A request with this Idempotency-Key is still being processed; retry shortly."
                    .into()
            }
            ApiError::ProductServiceUnavailable(_) => {
                "The product service cannot be reached to verify stock and price; retry later."
                    .into()
            }
            ApiError::DatabaseUnavailable(_) => {
                "The service cannot take this request right now; retry later.".into()
            }
            ApiError::Internal(_) => "Something went wrong on our side.".into(),
            ApiError::Stopping => "The service is stopping; retry shortly.".into(),
            ApiError::Edge(413) => ApiError::PayloadTooLarge.message(),
            ApiError::Edge(status) => match status {
                400 => "The request is malformed or its framing is ambiguous.",
                408 => "The request did not arrive in time.",
                414 => "The request line is too long.",
                417 => "Only Expect: 100-continue is supported.",
                431 => "The request head is too large.",
                503 => "The service is serving as many connections as it can; retry shortly.",
                505 => "Only HTTP/1.0 and HTTP/1.1 are supported.",
                _ => "The request was refused.",
            }
            .into(),
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            ApiError::Validation(e) => Some(json!({ "field": e.field })),
            ApiError::UnknownProduct(ids) => Some(json!({ "product_ids": ids })),
            ApiError::InsufficientStock(s) => Some(json!(s)),
            ApiError::InvalidTransition { from, to } => Some(json!({ "from": from, "to": to })),
            ApiError::MethodNotAllowed(allow) => Some(json!({ "allow": allow })),
            _ => None,
        }
    }

    /// Headers that go with this error (`Allow`, `Retry-After`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::MethodNotAllowed(allow) => vec![("Allow", allow.join(", "))],
            ApiError::ProductServiceUnavailable(_)
            | ApiError::DatabaseUnavailable(_)
            | ApiError::Stopping
            | ApiError::Edge(503) => vec![("Retry-After", RETRY_AFTER_SECS.to_string())],
            _ => Vec::new(),
        }
    }

    pub fn body(&self) -> Value {
        let mut body = json!({ "error": self.message(), "code": self.code() });
        if let Some(d) = self.details() {
            body["details"] = d;
        }
        body
    }

    /// The cause, for the log; 5xx only (a 4xx is the client's and is in the response).
    pub fn cause(&self) -> Option<&str> {
        match self {
            ApiError::ProductServiceUnavailable(c)
            | ApiError::DatabaseUnavailable(c)
            | ApiError::Internal(c) => Some(c),
            _ => None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.code())
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Validation(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => ApiError::DatabaseUnavailable(why),
            e => ApiError::DatabaseUnavailable(e.to_string()),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::NotFound => ApiError::NotFound,
            OrderError::InvalidTransition { from, to } => ApiError::InvalidTransition { from, to },
            OrderError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            OrderError::IdempotencyKeyInProgress => ApiError::IdempotencyKeyInProgress,
            OrderError::Pricing(e) => e.into(),
            OrderError::Store(e) => e.into(),
        }
    }
}

impl From<PricingError> for ApiError {
    fn from(e: PricingError) -> Self {
        match e {
            PricingError::Unknown(ids) => ApiError::UnknownProduct(ids),
            PricingError::InsufficientStock(s) => ApiError::InsufficientStock(s),
            PricingError::Outage(u) => ApiError::ProductServiceUnavailable(u.to_string()),
        }
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
