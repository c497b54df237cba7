//! A backend's request counters: in flight now, sent, answered by status class, failed.
//!
//! Written on the request path, one relaxed atomic add each; read by the admin API and the
//! metrics. In flight is only changed through [`super::InFlight`], so it cannot leak.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Request counters of one backend, since start.
#[derive(Debug, Default)]
pub struct Counters {
    in_flight: AtomicI64,
    requests: AtomicU64,
    /// Responses by status class: index 0 for 1xx .. 4 for 5xx.
    statuses: [AtomicU64; 5],
    /// Requests that got no response from this backend (errors, timeouts).
    failures: AtomicU64,
}

impl Counters {
    /// Requests in flight now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Responses received with status class `class` (1 to 5; 0 for any other).
    pub fn responses(&self, class: u16) -> u64 {
        match class {
            1..=5 => self.statuses[usize::from(class - 1)].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Requests that got no response from this backend.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Counts a response with `status` (ignored outside 100..=599).
    pub(crate) fn record_status(&self, status: u16) {
        if let 100..=599 = status {
            self.statuses[usize::from(status / 100 - 1)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request that got no response.
    pub(crate) fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn finish(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
