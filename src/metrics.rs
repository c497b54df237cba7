//! Process-wide counters that are not per backend: affinity outcomes by reason, re-pins,
//! retries, upstream errors by kind, responses by status class, the latency histogram and the
//! imbalance ratio. Plain atomics; [`crate::admin`] renders them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::affinity::Outcome;
use crate::error::ProxyError;

/// Upstream error kinds counted, in a fixed order.
pub const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "reset", "protocol", "timeout"];

/// Counters shared by every request.
#[derive(Debug, Default)]
pub struct Metrics {
    affinity: [AtomicU64; Outcome::ALL.len()],
    repins: AtomicU64,
    retries: AtomicU64,
    upstream_errors: [AtomicU64; UPSTREAM_ERROR_KINDS.len()],
    /// Responses to clients by status class (index 0 for 1xx .. 4 for 5xx), errors included.
    responses: [AtomicU64; 5],
    /// Time from a request's arrival to its response head.
    pub latency: Histogram,
    /// max/mean of the backends' recent request rates, as `f64` bits.
    imbalance: AtomicU64,
}

/// Upper bounds of the latency histogram's buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations (non-cumulative counts; rendered cumulative).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Cumulative counts, one per bucket of [`LATENCY_BUCKETS`] and a last one for `+Inf`.
    pub fn cumulative(&self) -> [u64; LATENCY_BUCKETS.len() + 1] {
        let mut acc = 0;
        std::array::from_fn(|i| {
            acc += self.buckets[i].load(Ordering::Relaxed);
            acc
        })
    }

    /// Sum of the recorded durations in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// max/mean of `rates`, or 0 when there is no traffic. 1.0 is perfect balance.
pub fn imbalance_ratio(rates: &[f64]) -> f64 {
    if rates.is_empty() {
        return 0.0;
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    if mean <= 0.0 {
        return 0.0;
    }
    rates.iter().copied().fold(0.0, f64::max) / mean
}

impl Metrics {
    /// Counts a response to a client with `status`.
    pub fn response(&self, status: u16) {
        if let 100..=599 = status {
            self.responses[usize::from(status / 100 - 1)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Responses to clients with status class `class` (1 to 5).
    pub fn responses(&self, class: u16) -> u64 {
        match class {
            1..=5 => self.responses[usize::from(class - 1)].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Sets the imbalance ratio (see [`imbalance_ratio`]).
    pub fn set_imbalance(&self, r: f64) {
        self.imbalance.store(r.to_bits(), Ordering::Relaxed);
    }

    /// The last imbalance ratio computed.
    pub fn imbalance(&self) -> f64 {
        f64::from_bits(self.imbalance.load(Ordering::Relaxed))
    }

    /// Counts one affinity outcome.
    pub fn outcome(&self, o: Outcome) {
        self.affinity[o.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests with outcome `o` so far.
    pub fn outcomes(&self, o: Outcome) -> u64 {
        self.affinity[o.index()].load(Ordering::Relaxed)
    }

    /// Counts a session moved to a new backend (a new token naming the fallback).
    pub fn repin(&self) {
        self.repins.fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions re-pinned so far.
    pub fn repins(&self) -> u64 {
        self.repins.load(Ordering::Relaxed)
    }

    /// Counts a retry on another backend.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Counts an upstream error (errors that are not upstream are ignored).
    pub fn upstream_error(&self, e: &ProxyError) {
        if let Some(i) = UPSTREAM_ERROR_KINDS.iter().position(|k| *k == e.kind()) {
            self.upstream_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Upstream errors of `kind` (one of [`UPSTREAM_ERROR_KINDS`]) so far.
    pub fn upstream_errors(&self, kind: &str) -> u64 {
        UPSTREAM_ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.upstream_errors[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_by_label() {
        let m = Metrics::default();
        m.outcome(Outcome::BadMac);
        m.outcome(Outcome::BadMac);
        m.outcome(Outcome::New);
        assert_eq!(
            (
                m.outcomes(Outcome::BadMac),
                m.outcomes(Outcome::New),
                m.outcomes(Outcome::Valid)
            ),
            (2, 1, 0)
        );
        m.upstream_error(&ProxyError::Timeout);
        m.upstream_error(&ProxyError::NoBackend);
        assert_eq!(m.upstream_errors("timeout"), 1);
        assert_eq!(m.upstream_errors("connect"), 0);
        m.repin();
        m.retry();
        assert_eq!((m.repins(), m.retries()), (1, 1));
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let h = Histogram::default();
        h.record(Duration::from_micros(300));
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let c = h.cumulative();
        assert_eq!(c[0], 2, "le 0.0005 holds 300us and exactly 500us");
        assert_eq!(c[3], 3, "le 0.005 adds 3ms");
        assert_eq!(
            c[LATENCY_BUCKETS.len() - 1],
            3,
            "60 s is above the last bound"
        );
        assert_eq!(c[LATENCY_BUCKETS.len()], 4, "+Inf counts everything");
        assert!((h.sum_secs() - 60.0038).abs() < 1e-9);
    }

    #[test]
    fn imbalance_is_max_over_mean() {
        assert_eq!(imbalance_ratio(&[]), 0.0);
        assert_eq!(imbalance_ratio(&[0.0, 0.0]), 0.0);
        assert_eq!(imbalance_ratio(&[10.0, 10.0, 10.0]), 1.0);
        assert_eq!(imbalance_ratio(&[30.0, 10.0, 10.0, 10.0]), 2.0);
    }

    #[test]
    fn responses_count_by_class() {
        let m = Metrics::default();
        for s in [200, 204, 502, 503, 99, 700] {
            m.response(s);
        }
        assert_eq!((m.responses(2), m.responses(5), m.responses(1)), (2, 2, 0));
    }

    #[test]
    fn every_outcome_has_its_own_slot() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }
}
