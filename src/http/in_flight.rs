//! Idempotency keys whose first request is still being processed.

use crate::domain::{IdempotencyKey, UserId};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

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
    /// Takes the key for this user, or `None` while another request holds it.
    pub fn claim(&self, user: &UserId, key: &IdempotencyKey) -> Option<Claim> {
        let entry = (user.as_str().to_string(), key.as_str().to_string());
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.insert(entry.clone()).then(|| Claim {
            keys: Arc::clone(&self.keys),
            entry,
        })
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
        assert!(f.claim(&user, &key).is_none());
        assert!(f.claim(&UserId::parse("v").unwrap(), &key).is_some());
        drop(claim);
        assert!(f.claim(&user, &key).is_some());
    }
}
