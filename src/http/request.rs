//! Reading a request: headers, query, and a JSON body within the limits.

use super::error::ApiError;
use crate::domain::FieldError;
use serde_json::Value;
use std::io::Read;

/// The largest body accepted: 64 KiB.
pub const MAX_BODY: usize = 64 * 1024;

pub fn header<'a>(req: &'a tiny_http::Request, name: &str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Splits `/api/orders?page=2` into the path and its `key=value` pairs.
pub fn split_url(url: &str) -> (&str, Vec<(&str, &str)>) {
    match url.split_once('?') {
        None => (url, Vec::new()),
        Some((path, query)) => (
            path,
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect(),
        ),
    }
}

/// A positive integer query parameter within `range`, or its default when absent.
pub fn query_number(
    query: &[(&str, &str)],
    name: &str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    match query.iter().rev().find(|(k, _)| *k == name) {
        None => Ok(default),
        Some((_, v)) => v
            .parse::<u32>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ApiError::Validation(FieldError::new(
                    name,
                    format!(
                        "must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                ))
            }),
    }
}

/// Reads the body as JSON: 415 for another media type, 413 over [`MAX_BODY`]
/// (refused before reading when Content-Length says so), 400 when it does not parse.
pub fn json_body(req: &mut tiny_http::Request) -> Result<Value, ApiError> {
    if let Some(ct) = header(req, "Content-Type") {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/json"
            && !(media.starts_with("application/") && media.ends_with("+json"))
        {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    if req.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut body = Vec::with_capacity(req.body_length().unwrap_or(1024).min(MAX_BODY));
    req.as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::InvalidJson(format!("the body could not be read: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(ApiError::PayloadTooLarge);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_queries() {
        let (path, q) = split_url("/api/orders?page=2&per_page=&x");
        assert_eq!(path, "/api/orders");
        assert_eq!(q, vec![("page", "2"), ("per_page", ""), ("x", "")]);
    }

    #[test]
    fn bounds_query_numbers() {
        let q = vec![("per_page", "100"), ("page", "0")];
        assert_eq!(query_number(&q, "per_page", 10, 1..=100).unwrap(), 100);
        assert!(query_number(&q, "page", 1, 1..=u32::MAX).is_err());
        assert_eq!(query_number(&[], "page", 1, 1..=u32::MAX).unwrap(), 1);
        assert!(query_number(&[("per_page", "abc")], "per_page", 10, 1..=100).is_err());
    }
}
