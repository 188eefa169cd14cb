//! The lookups of one order, shared out over a few long-lived helper threads. The
//! order's own thread takes its products one at a time; helpers idle at that
//! moment join in and take the next ones. A busy pool means fewer hands, never a wait in
//! a queue; and no thread is started per order, whose start and teardown (a stack
//! mapped, unmapped, and every core's TLB flushed) cost more than a lookup on loopback.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Work that any number of threads may take a part of; each part is taken once.
trait Share: Send + Sync {
    /// Takes parts until none are left.
    fn work(&self);
}

#[derive(Clone)]
pub(super) struct Helpers {
    /// Zero capacity: a send succeeds only into a helper waiting for work.
    idle: Sender<Arc<dyn Share>>,
}

impl Helpers {
    /// Starts `threads` helpers, named `{name}-N`; they end when the last handle is
    /// dropped. A helper that cannot be started leaves fewer hands, nothing worse.
    pub(super) fn start(threads: usize, name: &str) -> Helpers {
        let (idle, rx) = crossbeam_channel::bounded::<Arc<dyn Share>>(0);
        for n in 0..threads {
            let rx: Receiver<Arc<dyn Share>> = rx.clone();
            let started = std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    for job in rx {
                        // A panic in one lookup must not cost the pool a thread; its
                        // order misses a result and fails at its deadline.
                        let _ = catch_unwind(AssertUnwindSafe(|| job.work()));
                    }
                });
            if let Err(e) = started {
                log::warn!("{name}: {n} of {threads} helper threads started: {e}");
                break;
            }
        }
        Helpers { idle }
    }

    /// `each(i)` for every `i` in `0..n`, in order of `i`: on this thread, and on up to
    /// `max_helpers` helpers that are idle now. `None` if a result is not in by `deadline`
    /// (a helper's part panicked, or outlived the time `each` was given).
    pub(super) fn map<T, F>(
        &self,
        n: usize,
        max_helpers: usize,
        deadline: Instant,
        each: F,
    ) -> Option<Vec<T>>
    where
        T: Send + 'static,
        F: Fn(usize) -> T + Send + Sync + 'static,
    {
        let (results, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Parts {
            n,
            next: AtomicUsize::new(0),
            each,
            results,
        });
        for _ in 0..max_helpers.min(n.saturating_sub(1)) {
            match self.idle.try_send(shared.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => break,
            }
        }
        shared.work();
        let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
        for _ in 0..n {
            let (i, value) = rx.recv_deadline(deadline).ok()?;
            out[i] = Some(value);
        }
        out.into_iter().collect()
    }
}

struct Parts<T, F> {
    n: usize,
    next: AtomicUsize,
    each: F,
    results: Sender<(usize, T)>,
}

impl<T, F> Share for Parts<T, F>
where
    T: Send,
    F: Fn(usize) -> T + Send + Sync,
{
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // The caller may have given up (its deadline passed): nobody to tell.
            let _ = self.results.send((i, (self.each)(i)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn every_part_is_done_once_and_the_results_come_back_in_order() {
        let helpers = Helpers::start(4, "test-helper");
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let out = helpers
            .map(100, 4, soon(), move |i| {
                counted.fetch_add(1, Ordering::Relaxed);
                i * 2
            })
            .unwrap();
        assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(calls.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn idle_helpers_take_parts_alongside_the_caller() {
        let helpers = Helpers::start(3, "test-helper");
        // Let the helpers reach their wait for work.
        std::thread::sleep(Duration::from_millis(100));
        let threads = Arc::new(Mutex::new(HashSet::new()));
        let seen = threads.clone();
        helpers
            .map(8, 3, soon(), move |_| {
                seen.lock().unwrap().insert(std::thread::current().id());
                std::thread::sleep(Duration::from_millis(50));
            })
            .unwrap();
        assert_eq!(threads.lock().unwrap().len(), 4, "the caller and 3 helpers");
    }

    #[test]
    fn with_every_helper_busy_the_caller_does_it_all_without_waiting() {
        let helpers = Helpers::start(1, "test-helper");
        std::thread::sleep(Duration::from_millis(100));
        let (hold, release) = crossbeam_channel::bounded::<()>(0);
        let busy = {
            let helpers = helpers.clone();
            std::thread::spawn(move || {
                helpers.map(2, 1, soon(), move |i| {
                    if i == 1 {
                        let _ = release.recv();
                    }
                })
            })
        };
        // Wait until the helper holds part 1 of the first map.
        std::thread::sleep(Duration::from_millis(100));
        let caller = std::thread::current().id();
        let out = helpers
            .map(5, 1, soon(), move |i| {
                (i, std::thread::current().id() == caller)
            })
            .unwrap();
        assert!(out.iter().all(|(_, here)| *here), "{out:?}");
        drop(hold);
        assert!(busy.join().unwrap().is_some());
    }

    #[test]
    fn a_part_that_panics_gives_none_at_the_deadline_and_the_helper_stays() {
        let helpers = Helpers::start(1, "test-helper");
        std::thread::sleep(Duration::from_millis(100));
        let caller = std::thread::current().id();
        let out = helpers.map(
            2,
            1,
            Instant::now() + Duration::from_millis(300),
            move |_| {
                if std::thread::current().id() != caller {
                    panic!("a helper's part fails");
                }
                // Give the helper time to take a part.
                std::thread::sleep(Duration::from_millis(50));
            },
        );
        assert!(out.is_none());
        std::thread::sleep(Duration::from_millis(100));
        let threads = Arc::new(Mutex::new(HashSet::new()));
        let seen = threads.clone();
        helpers
            .map(4, 1, soon(), move |_| {
                seen.lock().unwrap().insert(std::thread::current().id());
                std::thread::sleep(Duration::from_millis(50));
            })
            .unwrap();
        assert_eq!(
            threads.lock().unwrap().len(),
            2,
            "the helper is still there"
        );
    }
}
