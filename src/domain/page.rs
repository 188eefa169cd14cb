//! Which page of a user's orders, newest first: by number, or after a cursor.

use super::{Order, OrderId};
use std::fmt;

/// Where a list page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The n-th page (from 1): simple, but the database skips every order before it.
    Number(u32),
    /// The orders after (older than) this one: as fast on page 10,000 as on page 1.
    After(Cursor),
}

/// A position in a user's list: an order's creation time and id, which order the list.
/// Opaque to clients: they pass back what `next` gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: OrderId,
}

impl Cursor {
    /// Just after `order`.
    pub fn after(order: &Order) -> Cursor {
        Cursor {
            created_at: order.created_at,
            id: order.id,
        }
    }

    pub fn parse(raw: &str) -> Option<Cursor> {
        let (time, id) = raw.split_once('.')?;
        let hex = |s: &str| {
            (!s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
                .and_then(|n| i64::try_from(n).ok())
        };
        let id = hex(id).filter(|&n| n >= 1)?;
        Some(Cursor {
            created_at: hex(time)?,
            id: OrderId::from_trusted(id),
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{:x}", self.created_at, self.id.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_nothing_else() {
        let c = Cursor {
            created_at: 1_764_316_800_123_456,
            id: OrderId::from_trusted(42),
        };
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1.0",
            "x.1",
            "1.1.1",
            "-1.1",
            "10000000000000000.1",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }
}
