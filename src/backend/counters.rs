//! A backend's request counters: in flight now, sent, answered by status class, failed.
//!
//! Written on the request path into the worker's own slot ([`Shards`]: a plain load and store,
//! no read-modify-write shared between workers); read by the admin API, the metrics and the
//! maintenance tick, which sum the slots. In flight is not a counter of its own: it is the
//! requests started less those finished, two counts that only go up, so a request may finish
//! on another thread than the one it started on and the difference is still right. It is only
//! changed through [`super::InFlight`], so it cannot leak.

use crate::metrics::{Counter, Shards};

/// Request counters of one backend, since start.
#[derive(Debug, Default)]
pub struct Counters {
    slots: Shards<Slot>,
}

/// One worker's counts.
#[derive(Debug, Default)]
struct Slot {
    /// Requests started (sent to this backend).
    requests: Counter,
    /// Requests finished (their [`super::InFlight`] dropped).
    finished: Counter,
    /// Responses by status class: index 0 for 1xx .. 4 for 5xx.
    statuses: [Counter; 5],
    /// Requests that got no response from this backend (errors, timeouts).
    failures: Counter,
}

impl Counters {
    /// Counters with slots for `workers` worker threads.
    pub fn new(workers: usize) -> Counters {
        Counters {
            slots: Shards::new(workers),
        }
    }

    /// Requests in flight now (never negative).
    pub fn in_flight(&self) -> i64 {
        // Finished first: a request that finishes between the two reads was started before
        // it, so it is in the second sum too, and the difference errs high, never below 0.
        let finished = self.slots.sum(|s| &s.finished);
        let started = self.slots.sum(|s| &s.requests);
        i64::try_from(started.saturating_sub(finished)).unwrap_or(i64::MAX)
    }

    /// Requests sent to this backend since start.
    pub fn requests(&self) -> u64 {
        self.slots.sum(|s| &s.requests)
    }

    /// Responses received with status class `class` (1 to 5; 0 for any other).
    pub fn responses(&self, class: u16) -> u64 {
        match class {
            1..=5 => self.slots.sum(|s| &s.statuses[usize::from(class - 1)]),
            _ => 0,
        }
    }

    /// Requests that got no response from this backend.
    pub fn failures(&self) -> u64 {
        self.slots.sum(|s| &s.failures)
    }

    /// Errors, as the dashboard counts them: requests with no response, and 5xx responses.
    pub fn errors(&self) -> u64 {
        self.failures() + self.responses(5)
    }

    /// Counts a response with `status` (ignored outside 100..=599).
    pub(crate) fn record_status(&self, status: u16) {
        if let 100..=599 = status {
            let class = usize::from(status / 100 - 1);
            self.slots.local().add(|s| &s.statuses[class], 1);
        }
    }

    /// Counts a request that got no response.
    pub(crate) fn record_failure(&self) {
        self.slots.local().add(|s| &s.failures, 1);
    }

    pub(super) fn start(&self) {
        self.slots.local().add(|s| &s.requests, 1);
    }

    pub(super) fn finish(&self) {
        self.slots.local().add(|s| &s.finished, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::shard::enter_worker;

    #[test]
    fn statuses_are_counted_by_class_and_out_of_range_ones_dropped() {
        let c = Counters::default();
        for s in [200, 204, 302, 404, 503, 99, 600] {
            c.record_status(s);
        }
        assert_eq!([1, 2, 3, 4, 5].map(|k| c.responses(k)), [0, 2, 1, 1, 1]);
        assert_eq!((c.responses(0), c.responses(6)), (0, 0));
        c.record_failure();
        assert_eq!(c.failures(), 1);
    }

    #[test]
    fn requests_started_on_one_worker_and_finished_on_another_leave_nothing_in_flight() {
        let c = Counters::new(2);
        std::thread::scope(|t| {
            t.spawn(|| {
                enter_worker(0);
                for _ in 0..1000 {
                    c.start();
                }
            });
        });
        assert_eq!(c.in_flight(), 1000);
        std::thread::scope(|t| {
            t.spawn(|| {
                enter_worker(1);
                for _ in 0..600 {
                    c.finish();
                }
            });
            t.spawn(|| {
                for _ in 0..400 {
                    c.finish();
                }
            });
        });
        assert_eq!((c.in_flight(), c.requests()), (0, 1000));
    }

    #[test]
    fn every_counter_sums_the_workers_exactly() {
        let c = Counters::new(3);
        std::thread::scope(|t| {
            for w in 0..4usize {
                let c = &c;
                t.spawn(move || {
                    if w < 3 {
                        enter_worker(w);
                    }
                    for n in 0..10_000u16 {
                        c.start();
                        c.record_status(100 + 100 * (n % 5));
                        if n % 10 == 0 {
                            c.record_failure();
                        }
                        c.finish();
                    }
                });
            }
        });
        assert_eq!(c.requests(), 40_000);
        assert_eq!(c.in_flight(), 0);
        assert_eq!([1, 2, 3, 4, 5].map(|k| c.responses(k)), [8_000; 5]);
        assert_eq!(c.failures(), 4_000);
    }
}
