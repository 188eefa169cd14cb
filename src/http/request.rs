//! Reading a request: headers, query, and a JSON body within the limits.

use super::error::ApiError;
use crate::domain::FieldError;
use serde_json::Value;
use std::borrow::Cow;
use std::io::Read;

/// The largest body accepted: 64 KiB.
pub const MAX_BODY: usize = 64 * 1024;

pub fn header<'a>(req: &'a tiny_http::Request, name: &str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Headers that say who the caller is or what the request means or holds: one value
/// each, never a guess between two.
const SINGLE_HEADERS: &[&str] = &[
    "X-User-Id",
    "X-User-Email",
    "X-User-Role",
    "X-Gateway-Token",
    "Authorization",
    "Idempotency-Key",
    "Content-Type",
];

/// 400 when one of [`SINGLE_HEADERS`] comes more than once.
pub fn refuse_ambiguous_headers(req: &tiny_http::Request) -> Result<(), ApiError> {
    for name in SINGLE_HEADERS {
        let count = req
            .headers()
            .iter()
            .filter(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .count();
        if count > 1 {
            return Err(ApiError::Validation(FieldError::new(
                *name,
                "must be sent once",
            )));
        }
    }
    Ok(())
}

/// The path of `/api/orders?page=2`, without parsing the query.
pub fn path_of(url: &str) -> &str {
    url.split_once('?').map_or(url, |(path, _)| path)
}

/// A query's `key=value`, decoded.
pub type QueryPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Splits `/api/orders?page=2` into the path and its `key=value` pairs, each decoded as
/// a form's (`%XX`, `+` for a space): `per%5Fpage` is `per_page`, which a proxy that
/// decodes would read too, so that giving it twice so spelt is refused like any other.
pub fn split_url(url: &str) -> (&str, Vec<QueryPair<'_>>) {
    match url.split_once('?') {
        None => (url, Vec::new()),
        Some((path, query)) => (
            path,
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .map(|(k, v)| (form_decoded(k), form_decoded(v)))
                .collect(),
        ),
    }
}

/// `text` with its `+` and `%XX` escapes decoded (a malformed escape stays as written);
/// as given when what it decodes to is not UTF-8 (it then names no parameter and parses
/// as no value: a 400 where one is read).
fn form_decoded(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let spaced = text.replace('+', " ");
    match percent_encoding::percent_decode_str(&spaced).decode_utf8() {
        Ok(decoded) => Cow::Owned(decoded.into_owned()),
        Err(_) => Cow::Borrowed(text),
    }
}

/// The query parameter `name`, if given; given more than once, it is ambiguous (400).
pub fn query_value<'q>(query: &[(&str, &'q str)], name: &str) -> Result<Option<&'q str>, ApiError> {
    let mut given = query.iter().filter(|(k, _)| *k == name).map(|(_, v)| *v);
    match (given.next(), given.next()) {
        (Some(_), Some(_)) => Err(ApiError::Validation(FieldError::new(
            name,
            "must be given once",
        ))),
        (value, _) => Ok(value),
    }
}

/// A positive integer query parameter within `range`, or its default when absent.
pub fn query_number(
    query: &[(&str, &str)],
    name: &str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    match query_value(query, name)? {
        None => Ok(default),
        Some(v) => v
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
    serde_json::from_slice::<NoDuplicateKeys>(&body)
        .and_then(|_| serde_json::from_slice(&body))
        .map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// A JSON value in which no object names a key twice: `{"a":1,"a":2}` has no one meaning
/// (serde_json keeps the last), so it is refused rather than guessed.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_key_named_twice_at_any_depth() {
        let parse = |text: &str| serde_json::from_str::<NoDuplicateKeys>(text).is_ok();
        assert!(parse(
            r#"{"items":[{"product_id":1,"quantity":2}],"x":{"a":null}}"#
        ));
        assert!(!parse(r#"{"items":[],"items":[]}"#));
        assert!(!parse(
            r#"{"items":[{"product_id":1,"product_id":2,"quantity":1}]}"#
        ));
        assert!(!parse(r#"[{"a":{"b":1,"b":1}}]"#));
        assert!(parse(r#"[{"a":1},{"a":1}]"#));
    }

    #[test]
    fn splits_queries() {
        let (path, q) = split_url("/api/orders?page=2&per_page=&x");
        assert_eq!(path, "/api/orders");
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        assert_eq!(q, vec![("page", "2"), ("per_page", ""), ("x", "")]);
    }

    #[test]
    fn decodes_queries_as_a_form_and_leaves_what_does_not_decode() {
        let (_, q) = split_url("/x?per%5Fpage=%31%30&a+b=%e2%82%ac&c=%zz&d=%4&e=%ff&f=+%2B");
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        assert_eq!(
            q,
            [
                ("per_page", "10"),
                ("a b", "\u{20ac}"),
                ("c", "%zz"),
                ("d", "%4"),
                ("e", "%ff"),
                ("f", " +")
            ]
        );
    }

    #[test]
    fn bounds_query_numbers() {
        let q = vec![("per_page", "100"), ("page", "0")];
        assert_eq!(query_number(&q, "per_page", 10, 1..=100).unwrap(), 100);
        assert!(query_number(&q, "page", 1, 1..=u32::MAX).is_err());
        assert_eq!(query_number(&[], "page", 1, 1..=u32::MAX).unwrap(), 1);
        assert!(query_number(&[("per_page", "abc")], "per_page", 10, 1..=100).is_err());
        let twice = [("page", "1"), ("page", "1")];
        assert!(query_number(&twice, "page", 1, 1..=u32::MAX).is_err());
    }
}
