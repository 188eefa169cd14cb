use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

enum Control<T> {
    Elem(T),
    Unblock,
}

pub struct MessagesQueue<T>
where
    T: Send,
{
    queue: Mutex<VecDeque<Control<T>>>,
    condvar: Condvar,
    /// Set by `release`: `pop_until_released` no longer waits (local patch, PATCHES.md 18).
    released: AtomicBool,
}

impl<T> MessagesQueue<T>
where
    T: Send,
{
    pub fn with_capacity(capacity: usize) -> Arc<MessagesQueue<T>> {
        Arc::new(MessagesQueue {
            queue: Mutex::new(VecDeque::with_capacity(capacity)),
            condvar: Condvar::new(),
            released: AtomicBool::new(false),
        })
    }

    /// Pushes an element to the queue.
    pub fn push(&self, value: T) {
        let mut queue = self.queue.lock().unwrap();
        queue.push_back(Control::Elem(value));
        self.condvar.notify_one();
    }

    /// Unblock one thread stuck in pop loop.
    pub fn unblock(&self) {
        let mut queue = self.queue.lock().unwrap();
        queue.push_back(Control::Unblock);
        self.condvar.notify_one();
    }

    /// Wakes every thread in `pop_until_released`, now and from now on, to return once
    /// nothing is queued. The other pops are unchanged.
    pub fn release(&self) {
        let _queue = self.queue.lock().unwrap();
        self.released.store(true, SeqCst);
        self.condvar.notify_all();
    }

    /// Like `pop_timeout`, but returns `None` at once, while nothing is queued, after
    /// `release`.
    pub fn pop_until_released(&self, timeout: Duration) -> Option<T> {
        self.pop_within(Some(timeout), true)
    }

    /// The queue's first element, waiting up to `timeout` (`None`: for good) for one;
    /// `None` on `unblock`, and with `released_ends`, while nothing is queued, once
    /// `release` was called.
    fn pop_within(&self, timeout: Option<Duration>, released_ends: bool) -> Option<T> {
        // A timeout past what an `Instant` can hold waits for good, as upstream's did.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut queue = self.queue.lock().unwrap();
        loop {
            match queue.pop_front() {
                Some(Control::Elem(value)) => return Some(value),
                Some(Control::Unblock) => return None,
                None => (),
            }
            if released_ends && self.released.load(SeqCst) {
                return None;
            }
            queue = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.condvar.wait_timeout(queue, deadline - now).unwrap().0
                }
                None => self.condvar.wait(queue).unwrap(),
            };
        }
    }

    /// Pops an element. Blocks until one is available.
    /// Returns None in case unblock() was issued.
    pub fn pop(&self) -> Option<T> {
        self.pop_within(None, false)
    }

    /// Tries to pop an element without blocking.
    pub fn try_pop(&self) -> Option<T> {
        let mut queue = self.queue.lock().unwrap();
        match queue.pop_front() {
            Some(Control::Elem(value)) => Some(value),
            Some(Control::Unblock) | None => None,
        }
    }

    /// Tries to pop an element without blocking
    /// more than the specified timeout duration
    /// or unblock() was issued
    pub fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        // Local (PATCHES.md, 18): upstream waited the whole timeout again after a wake-up
        // that found nothing, and returned without looking at the queue again when less
        // than a millisecond was left after a wake-up (an element pushed then waited).
        self.pop_within(Some(timeout), false)
    }
}

#[cfg(test)]
mod tests {
    use super::MessagesQueue;
    use std::thread;
    use std::time::{Duration, Instant};

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn a_release_wakes_every_waiting_thread_and_keeps_them_from_waiting_again() {
        let queue = MessagesQueue::<u32>::with_capacity(4);
        let started = Instant::now();
        let waiting: Vec<_> = (0..4)
            .map(|_| {
                let queue = queue.clone();
                thread::spawn(move || queue.pop_until_released(LONG))
            })
            .collect();
        thread::sleep(Duration::from_millis(50));
        queue.release();
        for w in waiting {
            assert_eq!(w.join().unwrap(), None);
        }
        assert!(started.elapsed() < LONG / 2, "{:?}", started.elapsed());
        assert_eq!(queue.pop_until_released(LONG), None);
        assert!(started.elapsed() < LONG / 2, "{:?}", started.elapsed());
    }

    #[test]
    fn after_a_release_what_is_queued_is_still_popped_and_other_pops_still_wait() {
        let queue = MessagesQueue::<u32>::with_capacity(4);
        queue.release();
        queue.push(1);
        queue.push(2);
        assert_eq!(queue.pop_until_released(LONG), Some(1));
        assert_eq!(queue.pop_timeout(LONG), Some(2));
        let started = Instant::now();
        assert_eq!(queue.pop_timeout(Duration::from_millis(200)), None);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn a_wake_up_with_nothing_queued_does_not_start_the_timeout_over() {
        let queue = MessagesQueue::<u32>::with_capacity(4);
        let started = Instant::now();
        let waiting = {
            let queue = queue.clone();
            thread::spawn(move || queue.pop_timeout(Duration::from_secs(2)))
        };
        thread::sleep(Duration::from_millis(1500));
        queue.release();
        assert_eq!(waiting.join().unwrap(), None);
        // Upstream waited the whole timeout again: 3.5 s.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
