//! Idempotent creates, end to end: a key is claimed by the request that brings it first
//! (a row without an answer, in its own small transaction), so a repeat meanwhile gets
//! 409 whichever instance it reaches; the claim gets the first request's answer in the
//! create's own transaction, so a repeat of a finished one gets that answer again; a key
//! reused with another request is refused; a request that fails releases its claim, so
//! the key can be tried again. The answer itself is the HTTP layer's, kept opaque.

use super::OrderError;
use crate::domain::{IdempotencyKey, Order, UserId};
use crate::store::{IdempotencyRecord, Tx};

/// A claim that never got its answer this long after it was made is taken over: its
/// holder died (a request takes seconds at most: `PRODUCT_TIMEOUT_MS`, then a commit).
pub const CLAIM_TIMEOUT_MICROS: i64 = 60 * 1_000_000;

/// A create that carries an `Idempotency-Key`, already claimed.
pub struct Idempotent {
    pub key: IdempotencyKey,
    /// When this request claimed the key (`claim`'s `now`): what tells its claim from one
    /// that took it over after `CLAIM_TIMEOUT_MICROS`.
    pub claimed_at: i64,
    /// The answer to keep for repeats, given the order created.
    pub answer: Box<dyn FnOnce(&Order) -> Answer + Send>,
}

/// An answer as the HTTP layer writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// What claiming a key came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// This request holds the key: go on, then answer or release it.
    Fresh,
    /// A finished request with the same key and body: its answer, again.
    Replay(Answer),
}

/// Claims `key` for `request`, or says what an earlier request with it decides.
pub fn claim(
    tx: &mut dyn Tx,
    user: &UserId,
    key: &IdempotencyKey,
    request: &str,
    now: i64,
) -> Result<Claimed, OrderError> {
    if tx.claim_idempotency(user, key.as_str(), request, now)? {
        return Ok(Claimed::Fresh);
    }
    match tx.idempotency(user, key.as_str())? {
        // Released between the two statements: the key is free again, but was not ours.
        None => Err(OrderError::IdempotencyKeyInProgress),
        Some(seen) if seen.status == 0 => {
            let stale_before = now - CLAIM_TIMEOUT_MICROS;
            if seen.created_at < stale_before
                && tx.retake_idempotency(user, key.as_str(), request, now, stale_before)?
            {
                Ok(Claimed::Fresh)
            } else {
                Err(OrderError::IdempotencyKeyInProgress)
            }
        }
        Some(seen) => replay(seen, request).map(Claimed::Replay),
    }
}

/// The first answer, if `seen` answered the same request.
fn replay(seen: IdempotencyRecord, request: &str) -> Result<Answer, OrderError> {
    if seen.request == request {
        Ok(Answer {
            status: seen.status,
            body: seen.body,
        })
    } else {
        Err(OrderError::IdempotencyKeyReused)
    }
}

/// Stores the answer on the claim, in the create's transaction.
pub fn answer(
    tx: &mut dyn Tx,
    user: &UserId,
    idempotent: Idempotent,
    order: &Order,
) -> Result<(), OrderError> {
    let Answer { status, body } = (idempotent.answer)(order);
    let key = idempotent.key.as_str();
    if tx.answer_idempotency(user, key, idempotent.claimed_at, status, &body)? {
        Ok(())
    } else {
        // Taken over after `CLAIM_TIMEOUT_MICROS`: the other request answers it.
        Err(OrderError::IdempotencyKeyInProgress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(request: &str, status: u16) -> IdempotencyRecord {
        IdempotencyRecord {
            request: request.into(),
            status,
            body: "{}".into(),
            created_at: 0,
        }
    }

    #[test]
    fn a_repeat_gets_the_first_answer_and_another_request_is_refused() {
        assert_eq!(
            replay(record("r1", 201), "r1").unwrap(),
            Answer {
                status: 201,
                body: "{}".into()
            }
        );
        assert!(matches!(
            replay(record("r1", 201), "r2"),
            Err(OrderError::IdempotencyKeyReused)
        ));
    }
}
