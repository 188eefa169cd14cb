//! How soon the relay reads the outbox again while orders keep coming.
//!
//! A pass costs about the same whatever it carries: a read of the outbox, a round of
//! confirms from the broker, a write marking its rows published. Right after every commit,
//! under a steady stream of orders, a pass carries a handful of events, and RabbitMQ
//! spends a fifth more CPU per message than on fuller batches, on the same two cores as
//! the orders. So after a pass that found less than a full batch (or none), the next one
//! starts no sooner than `PACE` after it began: a stream goes out in batches of that many
//! milliseconds' worth. A full batch (a backlog) is followed at once, and an event
//! committed `PACE` or more after the last pass began goes out at once.

use std::time::{Duration, Instant};

/// How long after a pass that found less than a full batch the next one may start: what
/// an event waits for the relay at most, beyond a pass already under way.
pub const PACE: Duration = Duration::from_millis(25);

pub struct Pacer {
    pace: Duration,
    not_before: Option<Instant>,
}

impl Pacer {
    pub fn new(pace: Duration) -> Pacer {
        Pacer {
            pace,
            not_before: None,
        }
    }

    /// Records a pass that began at `began`; `full` if it found a full batch.
    pub fn passed(&mut self, began: Instant, full: bool) {
        self.not_before = if full { None } else { Some(began + self.pace) };
    }

    /// How long the next pass waits, from `now`.
    pub fn wait(&self, now: Instant) -> Duration {
        self.not_before
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(25);

    #[test]
    fn the_first_pass_does_not_wait() {
        assert_eq!(Pacer::new(P).wait(Instant::now()), Duration::ZERO);
    }

    #[test]
    fn after_a_partial_batch_the_next_pass_starts_a_pace_after_the_last_began() {
        let mut pacer = Pacer::new(P);
        let began = Instant::now();
        pacer.passed(began, false);
        assert_eq!(
            pacer.wait(began + Duration::from_millis(5)),
            Duration::from_millis(20)
        );
        assert_eq!(pacer.wait(began + P), Duration::ZERO);
    }

    #[test]
    fn after_a_full_batch_the_next_pass_starts_at_once() {
        let mut pacer = Pacer::new(P);
        let began = Instant::now();
        pacer.passed(began, false);
        pacer.passed(began + Duration::from_millis(1), true);
        assert_eq!(pacer.wait(began + Duration::from_millis(2)), Duration::ZERO);
    }

    #[test]
    fn an_event_after_a_quiet_spell_goes_out_at_once() {
        let mut pacer = Pacer::new(P);
        let began = Instant::now();
        pacer.passed(began, false);
        assert_eq!(pacer.wait(began + Duration::from_secs(3)), Duration::ZERO);
    }
}
