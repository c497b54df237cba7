//! Process-wide counters that are not per backend: affinity outcomes by reason, re-pins,
//! retries, upstream errors by kind. Plain atomics; the admin issue renders them.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl Metrics {
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
    fn every_outcome_has_its_own_slot() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }
}
