//! Idempotent creates, end to end: a key is held while its first request is being
//! processed (a repeat meanwhile gets 409), a repeat of a finished one gets the first
//! answer again, and a key reused with another request is refused. The answer itself is
//! the HTTP layer's, kept opaque.

use super::OrderError;
use crate::domain::{IdempotencyKey, UserId};
use crate::store::IdempotencyRecord;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A create that carries an `Idempotency-Key`.
pub struct Idempotent {
    pub key: IdempotencyKey,
    /// The canonical form of the request: a repeat must match it.
    pub request: String,
    /// The answer to keep for repeats, given the order created.
    pub answer: Box<dyn FnOnce(&crate::domain::Order) -> Answer + Send>,
}

/// An answer as the HTTP layer writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// What an earlier request with the same key says about this one: `Some` answer to give
/// again, `None` if there was none, or an error if the key was used for another request.
pub fn replay(
    seen: Option<IdempotencyRecord>,
    request: &str,
) -> Result<Option<Answer>, OrderError> {
    match seen {
        None => Ok(None),
        Some(seen) if seen.request == request => Ok(Some(Answer {
            status: seen.status,
            body: seen.body,
        })),
        Some(_) => Err(OrderError::IdempotencyKeyReused),
    }
}

/// Keys whose first request is still being processed, in this process.
#[derive(Default, Clone)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
}

/// Holds a key for as long as it lives.
pub struct Claim {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
    entry: (String, String),
}

impl InFlight {
    /// Takes the key for this user, or 409 while another request holds it.
    pub fn claim(&self, user: &UserId, key: &IdempotencyKey) -> Result<Claim, OrderError> {
        let entry = (user.as_str().to_string(), key.as_str().to_string());
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.insert(entry.clone()) {
            Ok(Claim {
                keys: Arc::clone(&self.keys),
                entry,
            })
        } else {
            Err(OrderError::IdempotencyKeyInProgress)
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_until_released() {
        let f = InFlight::default();
        let user = UserId::parse("u").unwrap();
        let key = IdempotencyKey::parse("k").unwrap();
        let claim = f.claim(&user, &key).unwrap();
        assert!(matches!(
            f.claim(&user, &key),
            Err(OrderError::IdempotencyKeyInProgress)
        ));
        assert!(f.claim(&UserId::parse("v").unwrap(), &key).is_ok());
        drop(claim);
        assert!(f.claim(&user, &key).is_ok());
    }

    #[test]
    fn a_repeat_gets_the_first_answer_and_another_request_is_refused() {
        let seen = || {
            Some(IdempotencyRecord {
                request: "r1".into(),
                status: 201,
                body: "{}".into(),
            })
        };
        assert_eq!(replay(None, "r1").unwrap(), None);
        assert_eq!(
            replay(seen(), "r1").unwrap(),
            Some(Answer {
                status: 201,
                body: "{}".into()
            })
        );
        assert!(matches!(
            replay(seen(), "r2"),
            Err(OrderError::IdempotencyKeyReused)
        ));
    }
}
