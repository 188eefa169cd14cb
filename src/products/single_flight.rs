//! Lookups of the same product at the same moment share one request to the product
//! service: under load many orders ask for the same few products, and each of them
//! waiting for an answer already on its way is cheaper, for both services, than a request
//! of its own. A lookup joins only a request sent after its order arrived: the answer then
//! verifies stock and price as of after the order came in, as its own request would.
//! A request runs within its first order's time: a failure that came when that time ran
//! out says nothing of a lookup with time left, which then looks again (the lookups doing
//! so share one request too).

use super::{Outage, Product};
use crate::domain::ProductId;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Answer = Result<Option<Product>, Outage>;

#[derive(Default)]
pub struct Flights {
    in_flight: Mutex<HashMap<ProductId, Arc<Flight>>>,
}

/// How close to its deadline a failed request counts as cut short by it (ureq's own
/// timeout ends a request at about its deadline).
const CUT_SHORT: Duration = Duration::from_millis(50);

struct Flight {
    launched: Instant,
    /// The end of the time its request was given: its order's deadline.
    deadline: Instant,
    /// The answer, and when it came.
    answer: Mutex<Option<(Answer, Instant)>>,
    landed: Condvar,
}

impl Flights {
    /// The answer for `id`, for an order that arrived at `since`: from a request sent
    /// since then and still in flight, else from `fetch` (whose answer the lookups that
    /// come meanwhile may share). A lookup that joins waits no later than `deadline`. If
    /// the request it joined failed when its own, earlier, deadline came, it looks again:
    /// it joins a request with at least its own time, or sends one that others may join.
    pub fn fetch(
        &self,
        id: ProductId,
        since: Instant,
        deadline: Instant,
        fetch: impl FnOnce() -> Answer,
    ) -> Answer {
        let mut fetch = Some(fetch);
        let mut looked_again = false;
        loop {
            let (flight, leader) = {
                let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                match in_flight.get(&id) {
                    Some(flight)
                        if flight.launched >= since
                            && (!looked_again || flight.deadline + CUT_SHORT >= deadline) =>
                    {
                        (flight.clone(), false)
                    }
                    // None, or one sent before this order arrived (or with less time than
                    // this lookup, looking again): a request of its own, which the
                    // lookups that come next may join.
                    _ => {
                        let flight = Arc::new(Flight {
                            launched: Instant::now(),
                            deadline,
                            answer: Mutex::new(None),
                            landed: Condvar::new(),
                        });
                        in_flight.insert(id, flight.clone());
                        (flight, true)
                    }
                }
            };
            if leader {
                let fetch = fetch
                    .take()
                    .expect("a lookup leads once at most: it returns");
                let mut landing = Landing {
                    flights: self,
                    id,
                    flight: &flight,
                    answer: None,
                };
                let answer = fetch();
                landing.answer = Some(answer.clone());
                return answer;
            }
            match wait(&flight, deadline) {
                // Only a request with less time than this lookup is cut short before it
                // is, and one joined on looking again has at least as much.
                Some((_, true))
                    if flight.deadline + CUT_SHORT < deadline && Instant::now() < deadline =>
                {
                    looked_again = true;
                }
                Some((answer, _)) => return answer,
                None => return Err(Outage("out of time for this order".into())),
            }
        }
    }
}

/// Lands a leader's flight when it ends, with its answer, or with a failure if its
/// request ended without one (its lookup panicked): the lookups that joined it are
/// answered then, not at their deadlines, and the next ones send a request of their own.
struct Landing<'a> {
    flights: &'a Flights,
    id: ProductId,
    flight: &'a Arc<Flight>,
    answer: Option<Answer>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let answer = self
            .answer
            .take()
            .unwrap_or_else(|| Err(Outage("the lookup of this product failed".into())));
        {
            let mut in_flight = self
                .flights
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if in_flight
                .get(&self.id)
                .is_some_and(|f| Arc::ptr_eq(f, self.flight))
            {
                in_flight.remove(&self.id);
            }
        }
        *self.flight.answer.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((answer, Instant::now()));
        self.flight.landed.notify_all();
    }
}

/// The answer of `flight`, waited for no later than `deadline` (`None` if it did not
/// come by then), and whether it is a failure that came when the flight's own deadline
/// did (within `CUT_SHORT`): cut short by it rather than the product service's answer.
fn wait(flight: &Flight, deadline: Instant) -> Option<(Answer, bool)> {
    let mut answer = flight.answer.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some((a, at)) = answer.as_ref() {
            let cut_short = a.is_err() && *at + CUT_SHORT >= flight.deadline;
            return Some((a.clone(), cut_short));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        answer = flight
            .landed
            .wait_timeout(answer, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn lookups_at_the_same_moment_share_one_request_and_later_ones_make_their_own() {
        let flights = Flights::default();
        let requests = AtomicUsize::new(0);
        let id = ProductId::new(7).unwrap();
        let since = Instant::now();
        let deadline = since + Duration::from_secs(5);
        let answers: Vec<Answer> = std::thread::scope(|s| {
            let lookups: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        flights.fetch(id, since, deadline, || {
                            requests.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(200));
                            Ok(None)
                        })
                    })
                })
                .collect();
            lookups.into_iter().map(|l| l.join().unwrap()).collect()
        });
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|a| matches!(a, Ok(None))));

        let again = flights.fetch(id, since, deadline, || {
            requests.fetch_add(1, Ordering::SeqCst);
            Err(Outage("down".into()))
        });
        assert!(again.is_err());
        assert_eq!(
            requests.load(Ordering::SeqCst),
            2,
            "a landed answer is not reused"
        );
    }

    #[test]
    fn a_joining_lookup_waits_no_longer_than_its_own_deadline() {
        let flights = Flights::default();
        let id = ProductId::new(7).unwrap();
        let since = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                flights.fetch(id, since, since + Duration::from_secs(5), || {
                    std::thread::sleep(Duration::from_millis(500));
                    Ok(None)
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            let started = Instant::now();
            let joined = flights.fetch(id, since, started + Duration::from_millis(100), || {
                panic!("a second request while one is in flight")
            });
            assert!(joined.is_err());
            assert!(started.elapsed() < Duration::from_millis(400));
        });
    }

    #[test]
    fn a_request_whose_lookup_panics_fails_the_lookups_that_joined_it_at_once() {
        let flights = Flights::default();
        let id = ProductId::new(7).unwrap();
        let since = Instant::now();
        let deadline = since + Duration::from_secs(5);
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                flights.fetch(id, since, deadline, || {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!("a lookup that fails in the service itself")
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            let started = Instant::now();
            let joined = flights.fetch(id, since, deadline, || {
                panic!("a second request while one is in flight")
            });
            assert!(joined.is_err());
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "answered when the request ended, not at its deadline: {:?}",
                started.elapsed()
            );
            assert!(leader.join().is_err(), "the leader's own panic goes on");
        });
        // The next lookup sends a request of its own.
        let next = flights.fetch(id, Instant::now(), deadline, || Ok(None));
        assert_eq!(next, Ok(None));
    }

    #[test]
    fn an_order_never_shares_a_request_sent_before_it_arrived() {
        let flights = Flights::default();
        let id = ProductId::new(7).unwrap();
        let requests = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let since = Instant::now();
                flights.fetch(id, since, since + Duration::from_secs(5), || {
                    requests.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(400));
                    Ok(None)
                })
            });
            std::thread::sleep(Duration::from_millis(100));
            // Arrived after the first request was sent: a request of its own.
            let since = Instant::now();
            let own = flights.fetch(id, since, since + Duration::from_secs(5), || {
                requests.fetch_add(1, Ordering::SeqCst);
                Err(Outage("its own answer".into()))
            });
            assert_eq!(own, Err(Outage("its own answer".into())));
        });
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_lookup_with_time_left_asks_again_when_the_request_it_joined_ran_out_of_time() {
        let flights = Flights::default();
        let id = ProductId::new(7).unwrap();
        let requests = AtomicUsize::new(0);
        let since = Instant::now();
        let out_of_time = Err(Outage("timed out".into()));
        std::thread::scope(|s| {
            // A request given 300 ms (its order's time left), cut short by it.
            s.spawn(|| {
                flights.fetch(id, since, since + Duration::from_millis(300), || {
                    requests.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(300));
                    out_of_time.clone()
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            // One with 5 s joins it, and asks again when it fails.
            let with_time = flights.fetch(id, since, since + Duration::from_secs(5), || {
                requests.fetch_add(1, Ordering::SeqCst);
                Ok(None)
            });
            assert_eq!(with_time, Ok(None));
            // One with no more time than the request had shares its failure.
            let since = Instant::now();
            let deadline = since + Duration::from_millis(300);
            let flights = &flights;
            s.spawn(move || {
                flights.fetch(id, since, deadline, || {
                    std::thread::sleep(Duration::from_millis(300));
                    Err(Outage("timed out".into()))
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            let no_more_time =
                flights.fetch(id, since, deadline + Duration::from_millis(20), || {
                    panic!("a second request for a lookup with no more time")
                });
            assert_eq!(no_more_time, Err(Outage("timed out".into())));
        });
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn lookups_that_ask_again_share_one_request() {
        let flights = Flights::default();
        let id = ProductId::new(7).unwrap();
        let requests = AtomicUsize::new(0);
        let since = Instant::now();
        let answers: Vec<Answer> = std::thread::scope(|s| {
            s.spawn(|| {
                flights.fetch(id, since, since + Duration::from_millis(300), || {
                    requests.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(300));
                    Err(Outage("timed out".into()))
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            let lookups: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        flights.fetch(id, since, since + Duration::from_secs(5), || {
                            requests.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                            Ok(None)
                        })
                    })
                })
                .collect();
            lookups.into_iter().map(|l| l.join().unwrap()).collect()
        });
        assert!(answers.iter().all(|a| a == &Ok(None)), "{answers:?}");
        assert_eq!(
            requests.load(Ordering::SeqCst),
            2,
            "the first, then one more"
        );
    }

    #[test]
    fn a_failure_well_before_the_request_s_deadline_is_shared() {
        let flights = Flights::default();
        let id = ProductId::new(7).unwrap();
        let since = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                flights.fetch(id, since, since + Duration::from_secs(3), || {
                    std::thread::sleep(Duration::from_millis(200));
                    Err(Outage("503 from the product service".into()))
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            let joined = flights.fetch(id, since, since + Duration::from_secs(5), || {
                panic!("a second request after the service answered")
            });
            assert_eq!(joined, Err(Outage("503 from the product service".into())));
        });
    }
}
