//! Publisher-confirm bookkeeping: which outbox rows of a batch may be marked published,
//! given the delivery tags they went out under, the broker's acks and nacks, and the
//! messages it returned. No I/O: the relay thread feeds in what the channel delivers.
//!
//! A row may be marked only as part of an unbroken run of acked tags from the batch's
//! first; the run ends at the first nack, the first returned message or the first tag
//! without a confirm, whatever the broker says about later tags.

use crate::store::OutboxRow;
use amiquip::Confirm;
use std::collections::BTreeMap;

/// The confirm state of one channel and of the batch in flight on it.
///
/// It takes the confirms as the broker sends them (out of order, `multiple`) and puts
/// them in tag order itself; that state belongs to the channel and spans batches. A batch
/// cut short by a nack leaves tags in flight; their late confirms come first and the next
/// batch's queue behind them.
///
/// A `multiple` confirm covers only the tags still open up to its own: one the broker
/// confirmed on its own before keeps that answer. RabbitMQ nacks a message it refuses
/// (a full queue's `reject-publish`) at once, and acks the ones before it later, after
/// their write, in one `multiple` ack past it. amiquip's `ConfirmSmoother` turned that
/// ack into an ack of the nacked tag too, and its row was marked published unsent.
pub(super) struct Confirms {
    /// Every tag up to this one has its confirm.
    settled_upto: u64,
    /// Confirms of single tags past `settled_upto + 1`, until the gap before them fills:
    /// whether each is an ack.
    ahead: BTreeMap<u64, bool>,
    /// The tag of the next message published on the channel.
    next_tag: u64,
    batch: Batch,
}

/// What the broker said so far about one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Batch {
    /// The tag of the batch's first message.
    first_tag: u64,
    /// Messages published: tags `first_tag .. first_tag + sent`.
    sent: u64,
    /// The last tag of an unbroken run of acks from `first_tag` (`first_tag - 1`: none).
    acked_upto: u64,
    /// The first tag of the batch the broker refused.
    nacked: Option<u64>,
}

/// What may be done with a batch's rows once the confirms are in (or the wait is over).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Settlement {
    /// Ids confirmed as an unbroken run from the first row: these may be marked published.
    pub confirmed: Vec<i64>,
    /// The row (index) the run stops at, when the broker refused it: nack or return.
    pub refused: Option<(usize, &'static str)>,
    /// The run stops short of the last row and not at a refusal: a row was not sent, or
    /// not confirmed in time.
    pub incomplete: bool,
}

impl Confirms {
    /// For a channel on which confirms were just enabled: its first tag is 1.
    pub fn new() -> Confirms {
        Confirms {
            settled_upto: 0,
            ahead: BTreeMap::new(),
            next_tag: 1,
            batch: Batch::starting_at(1),
        }
    }

    /// A batch starts: its first message gets the channel's next tag.
    pub fn start_batch(&mut self) {
        self.batch = Batch::starting_at(self.next_tag);
    }

    /// One more message of the batch went out.
    pub fn published(&mut self) {
        self.next_tag += 1;
        self.batch.sent += 1;
    }

    /// A confirm as the channel delivered it.
    pub fn record(&mut self, raw: Confirm) {
        let (payload, ack) = match raw {
            Confirm::Ack(p) => (p, true),
            Confirm::Nack(p) => (p, false),
        };
        let tag = payload.delivery_tag;
        if tag <= self.settled_upto {
            return;
        }
        if payload.multiple {
            for open in self.settled_upto + 1..=tag {
                let ack = self.ahead.remove(&open).unwrap_or(ack);
                self.batch.settle(open, ack);
            }
            self.settled_upto = tag;
        } else {
            self.ahead.insert(tag, ack);
        }
        while let Some(ack) = self.ahead.remove(&(self.settled_upto + 1)) {
            self.settled_upto += 1;
            self.batch.settle(self.settled_upto, ack);
        }
    }

    /// Whether a confirm still to come could lengthen the run: a refusal ends it at once.
    #[cfg(test)]
    pub fn waiting(&self) -> bool {
        self.waiting_for(self.batch.sent as usize)
    }

    /// `waiting`, for the batch's first `n` messages only: those of the next batch, sent
    /// behind them, are not waited for.
    pub fn waiting_for(&self, n: usize) -> bool {
        let b = &self.batch;
        let n = (n as u64).min(b.sent);
        n > 0 && b.acked_upto < b.first_tag + n - 1 && b.nacked.is_none()
    }

    /// The batch's first `n` messages, all acked, are settled: what was sent after them
    /// is the batch now, with what the broker already said of it.
    pub fn advance(&mut self, n: usize) {
        let b = &mut self.batch;
        let n = (n as u64).min(b.sent);
        debug_assert!(b.acked_upto >= b.first_tag + n - 1 || n == 0);
        b.first_tag += n;
        b.sent -= n;
        b.acked_upto = b.acked_upto.max(b.first_tag - 1);
    }

    pub fn batch(&self) -> Batch {
        self.batch
    }
}

impl Batch {
    fn starting_at(first_tag: u64) -> Batch {
        Batch {
            first_tag,
            sent: 0,
            acked_upto: first_tag - 1,
            nacked: None,
        }
    }

    /// The broker's answer for `tag`, the tags before it answered already.
    fn settle(&mut self, tag: u64, ack: bool) {
        // Late confirms of an earlier batch, cut short by a refusal, are not ours.
        if tag < self.first_tag {
            return;
        }
        if !ack {
            self.nacked.get_or_insert(tag);
        } else if self.nacked.is_none() {
            self.acked_upto = self.acked_upto.max(tag);
        }
    }
}

/// Which of `rows` (published in order from `batch.first_tag`, possibly not all of them)
/// may be marked published, given what the broker confirmed and the message ids of what
/// it returned as unroutable (a returned mandatory message is acked all the same).
pub(super) fn settle(rows: &[OutboxRow], batch: Batch, returned: &[String]) -> Settlement {
    let mut acked_upto = batch.acked_upto;
    if let Some(tag) = batch.nacked {
        acked_upto = acked_upto.min(tag - 1);
    }
    let mut confirmed = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let tag = batch.first_tag + i as u64;
        if tag > acked_upto || returned.contains(&row.event_id) {
            break;
        }
        confirmed.push(row.id);
    }
    let refused = rows.get(confirmed.len()).and_then(|row| {
        if batch.nacked == Some(batch.first_tag + confirmed.len() as u64) {
            Some((confirmed.len(), "nack"))
        } else if returned.contains(&row.event_id) {
            Some((confirmed.len(), "returned as unroutable"))
        } else {
            None
        }
    });
    let incomplete = confirmed.len() < rows.len() && refused.is_none();
    Settlement {
        confirmed,
        refused,
        incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amiquip::ConfirmPayload;

    fn ack(tag: u64) -> Confirm {
        Confirm::Ack(ConfirmPayload {
            delivery_tag: tag,
            multiple: false,
        })
    }

    fn ack_upto(tag: u64) -> Confirm {
        Confirm::Ack(ConfirmPayload {
            delivery_tag: tag,
            multiple: true,
        })
    }

    fn nack(tag: u64) -> Confirm {
        Confirm::Nack(ConfirmPayload {
            delivery_tag: tag,
            multiple: false,
        })
    }

    /// Outbox rows with ids `ids`; event ids `s:<id>`.
    fn rows(ids: std::ops::RangeInclusive<i64>) -> Vec<OutboxRow> {
        ids.map(|id| OutboxRow {
            id,
            order_id: 1,
            event_type: "order.created".into(),
            payload: "{}".into(),
            created_at: 0,
            event_id: format!("s:{id}"),
            source: "s".into(),
        })
        .collect()
    }

    /// A channel with a batch of `n` messages published on it.
    fn batch_of(confirms: &mut Confirms, n: usize) {
        confirms.start_batch();
        for _ in 0..n {
            confirms.published();
        }
    }

    fn settled(
        ids: &[i64],
        refused: Option<(usize, &'static str)>,
        incomplete: bool,
    ) -> Settlement {
        Settlement {
            confirmed: ids.to_vec(),
            refused,
            incomplete,
        }
    }

    #[test]
    fn a_batch_acked_one_by_one_is_marked_whole() {
        let mut c = Confirms::new();
        batch_of(&mut c, 3);
        for tag in 1..=3 {
            assert!(c.waiting());
            c.record(ack(tag));
        }
        assert!(!c.waiting());
        let s = settle(&rows(10..=12), c.batch(), &[]);
        assert_eq!(s, settled(&[10, 11, 12], None, false));
    }

    #[test]
    fn a_nack_before_a_multiple_ack_past_it_stays_a_refusal() {
        let mut c = Confirms::new();
        batch_of(&mut c, 4);
        // As RabbitMQ answers a full queue's reject-publish: the refusal at once, the
        // acks of the messages before it after their write, in one.
        c.record(nack(3));
        assert!(c.waiting(), "tags 1 and 2 are still unconfirmed");
        c.record(ack_upto(4));
        assert!(!c.waiting());
        assert_eq!(
            settle(&rows(1..=4), c.batch(), &[]),
            settled(&[1, 2], Some((2, "nack")), false)
        );
    }

    #[test]
    fn a_multiple_ack_covers_every_tag_up_to_its_own() {
        let mut c = Confirms::new();
        batch_of(&mut c, 5);
        c.record(ack_upto(3));
        assert!(c.waiting());
        assert_eq!(settle(&rows(1..=5), c.batch(), &[]).confirmed, [1, 2, 3]);
        c.record(ack_upto(5));
        assert!(!c.waiting());
        assert_eq!(
            settle(&rows(1..=5), c.batch(), &[]),
            settled(&[1, 2, 3, 4, 5], None, false)
        );
    }

    #[test]
    fn acks_out_of_order_count_once_the_gap_is_filled() {
        let mut c = Confirms::new();
        batch_of(&mut c, 3);
        c.record(ack(3));
        c.record(ack(1));
        assert!(c.waiting(), "tag 2 is still unconfirmed");
        assert_eq!(settle(&rows(1..=3), c.batch(), &[]).confirmed, [1]);
        c.record(ack(2));
        assert!(!c.waiting());
        assert_eq!(
            settle(&rows(1..=3), c.batch(), &[]),
            settled(&[1, 2, 3], None, false)
        );
    }

    #[test]
    fn a_nack_mid_batch_stops_the_run_even_if_later_tags_are_acked() {
        let mut c = Confirms::new();
        batch_of(&mut c, 4);
        c.record(ack(1));
        c.record(nack(2));
        assert!(!c.waiting(), "a refusal ends the wait");
        c.record(ack(3));
        c.record(ack(4));
        assert_eq!(
            settle(&rows(1..=4), c.batch(), &[]),
            settled(&[1], Some((1, "nack")), false)
        );
    }

    #[test]
    fn a_nack_received_before_the_acks_of_earlier_tags_waits_for_them() {
        let mut c = Confirms::new();
        batch_of(&mut c, 4);
        c.record(ack(4));
        c.record(nack(3));
        assert!(c.waiting(), "tags 1 and 2 are still unconfirmed");
        c.record(ack_upto(2));
        assert!(!c.waiting());
        assert_eq!(
            settle(&rows(1..=4), c.batch(), &[]),
            settled(&[1, 2], Some((2, "nack")), false)
        );
    }

    #[test]
    fn a_nack_of_the_first_row_marks_nothing() {
        let mut c = Confirms::new();
        batch_of(&mut c, 1);
        c.record(nack(1));
        assert!(!c.waiting());
        assert_eq!(
            settle(&rows(7..=7), c.batch(), &[]),
            settled(&[], Some((0, "nack")), false)
        );
    }

    #[test]
    fn a_returned_message_mid_batch_stops_the_run_though_acked() {
        let mut c = Confirms::new();
        batch_of(&mut c, 3);
        c.record(ack_upto(3));
        let returned = ["s:2".to_string()];
        assert_eq!(
            settle(&rows(1..=3), c.batch(), &returned),
            settled(&[1], Some((1, "returned as unroutable")), false)
        );
    }

    #[test]
    fn a_return_after_a_nack_leaves_the_nack_as_the_refusal() {
        let mut c = Confirms::new();
        batch_of(&mut c, 3);
        c.record(ack(1));
        c.record(nack(2));
        let returned = ["s:3".to_string()];
        assert_eq!(
            settle(&rows(1..=3), c.batch(), &returned),
            settled(&[1], Some((1, "nack")), false)
        );
    }

    #[test]
    fn a_timeout_with_tags_unconfirmed_marks_the_run_so_far() {
        let mut c = Confirms::new();
        batch_of(&mut c, 4);
        c.record(ack(1));
        c.record(ack(2));
        c.record(ack(4));
        // The relay's deadline passes here, with tag 3 unconfirmed.
        assert!(c.waiting());
        assert_eq!(
            settle(&rows(1..=4), c.batch(), &[]),
            settled(&[1, 2], None, true)
        );
    }

    #[test]
    fn rows_never_sent_are_not_marked_and_leave_the_batch_incomplete() {
        let mut c = Confirms::new();
        batch_of(&mut c, 2); // a publish error stopped the third
        c.record(ack_upto(2));
        assert!(!c.waiting());
        assert_eq!(
            settle(&rows(1..=3), c.batch(), &[]),
            settled(&[1, 2], None, true)
        );
    }

    #[test]
    fn late_confirms_of_an_earlier_batch_are_ignored() {
        let mut c = Confirms::new();
        batch_of(&mut c, 3);
        c.record(ack(1));
        c.record(nack(2));
        assert!(!c.waiting());
        // The next batch goes out on the same channel, tags 4 and 5, while tag 3 is still
        // in flight; its confirm comes late, after the next batch's.
        batch_of(&mut c, 2);
        c.record(ack(4));
        c.record(ack(5));
        assert!(c.waiting(), "confirms are taken in tag order, tag 3 first");
        c.record(nack(3));
        assert!(!c.waiting());
        assert_eq!(
            settle(&rows(21..=22), c.batch(), &[]),
            settled(&[21, 22], None, false)
        );
    }

    #[test]
    fn a_late_multiple_ack_spanning_both_batches_counts_for_the_new_one() {
        let mut c = Confirms::new();
        batch_of(&mut c, 2);
        c.record(nack(1));
        batch_of(&mut c, 2);
        c.record(ack_upto(4));
        assert!(!c.waiting());
        assert_eq!(
            settle(&rows(31..=32), c.batch(), &[]),
            settled(&[31, 32], None, false)
        );
    }

    #[test]
    fn the_first_rows_settle_while_the_next_batch_is_still_unconfirmed() {
        let mut c = Confirms::new();
        batch_of(&mut c, 5); // 3 rows, then 2 of the next batch behind them
        c.record(ack_upto(3));
        assert!(!c.waiting_for(3));
        assert!(c.waiting(), "the next batch is not confirmed yet");
        assert_eq!(
            settle(&rows(1..=3), c.batch(), &[]),
            settled(&[1, 2, 3], None, false)
        );

        c.advance(3);
        assert!(c.waiting_for(2));
        c.record(ack(4));
        c.record(ack(5));
        assert!(!c.waiting_for(2));
        assert_eq!(
            settle(&rows(4..=5), c.batch(), &[]),
            settled(&[4, 5], None, false)
        );
    }

    #[test]
    fn confirms_of_the_next_batch_received_early_still_count_after_advancing() {
        let mut c = Confirms::new();
        batch_of(&mut c, 4);
        c.record(ack_upto(4));
        c.advance(2);
        assert!(!c.waiting_for(2));
        assert_eq!(
            settle(&rows(3..=4), c.batch(), &[]),
            settled(&[3, 4], None, false)
        );
    }

    #[test]
    fn a_nack_in_the_next_batch_refuses_that_row_and_not_the_first_batch() {
        let mut c = Confirms::new();
        batch_of(&mut c, 4);
        c.record(ack_upto(2));
        c.record(nack(3));
        assert!(!c.waiting_for(2));
        assert_eq!(
            settle(&rows(1..=2), c.batch(), &[]),
            settled(&[1, 2], None, false)
        );
        c.advance(2);
        assert!(!c.waiting_for(2), "a refusal ends the wait");
        assert_eq!(
            settle(&rows(3..=4), c.batch(), &[]),
            settled(&[], Some((0, "nack")), false)
        );
    }

    #[test]
    fn an_empty_batch_waits_for_nothing_and_marks_nothing() {
        let mut c = Confirms::new();
        batch_of(&mut c, 0);
        assert!(!c.waiting());
        assert_eq!(settle(&[], c.batch(), &[]), settled(&[], None, false));
    }

    #[test]
    fn a_batch_none_of_which_was_sent_is_incomplete() {
        let mut c = Confirms::new();
        batch_of(&mut c, 0); // the first publish failed
        assert!(!c.waiting());
        assert_eq!(
            settle(&rows(1..=2), c.batch(), &[]),
            settled(&[], None, true)
        );
    }
}
