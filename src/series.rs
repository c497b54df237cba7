//! The dashboard's time series: one sample a second of what the counters did in that second,
//! kept in fixed rings of [`SECONDS`] samples, so the memory is bounded by the number of pools
//! and backends whatever the traffic. Pure: the caller reads the live counters (cumulative, as
//! they are kept) into a [`Reading`] with the time, and [`History::record`] turns consecutive
//! readings into per-second deltas.
//!
//! A backend or pool seen for the first time contributes 0 to its first second (its counters
//! are not a second's worth); a counter that went backwards (a backend removed and added again
//! gets new live state) counts as 0. A backend gone from the readings leaves the history; one
//! that appears gets zeros for the seconds before it, so every series of a pool has the length
//! of [`History::t`].

use std::collections::VecDeque;

use crate::affinity::Outcome;
use crate::metrics::LATENCY_BUCKETS;

/// Samples kept: five minutes at one a second.
pub const SECONDS: usize = 300;

/// Latency buckets: one per [`LATENCY_BUCKETS`] bound and a last one for `+Inf`.
pub type Buckets = [u64; LATENCY_BUCKETS.len() + 1];

/// The counters at one instant, cumulative since start.
#[derive(Debug, Clone, Default)]
pub struct Reading<'a> {
    /// The unix second it was taken.
    pub unix: u64,
    /// The latency histogram's cumulative bucket counts (all pools).
    pub latency: Buckets,
    /// Every pool, in snapshot order.
    pub pools: Vec<PoolReading<'a>>,
}

/// One pool's counters at one instant.
#[derive(Debug, Clone, Default)]
pub struct PoolReading<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its imbalance ratio now (a gauge, kept as read).
    pub imbalance: f64,
    /// Sessions moved to another backend.
    pub repins: u64,
    /// Takeovers, all reasons.
    pub takeovers: u64,
    /// Requests by affinity outcome, in [`Outcome::ALL`] order.
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Each backend's id, requests and errors (no response, or a 5xx).
    pub backends: Vec<(&'a str, u64, u64)>,
}

/// A ring of at most [`SECONDS`] values, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ring<T>(VecDeque<T>);

impl<T: Clone> Ring<T> {
    fn push(&mut self, v: T) {
        if self.0.len() == SECONDS {
            self.0.pop_front();
        }
        self.0.push_back(v);
    }

    /// `n` copies of `v` (a series that starts late, aligned with the others).
    fn filled(n: usize, v: T) -> Ring<T> {
        Ring(std::iter::repeat_n(v, n.min(SECONDS)).collect())
    }

    /// The values, oldest first.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &T> {
        self.0.iter()
    }

    /// The newest value.
    pub fn last(&self) -> Option<&T> {
        self.0.back()
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One backend's series.
#[derive(Debug, Clone, Default)]
pub struct BackendSeries {
    /// Its id.
    pub id: String,
    /// Requests in each second.
    pub requests: Ring<u64>,
    /// Errors in each second.
    pub errors: Ring<u64>,
    last: (u64, u64),
}

/// One pool's series.
#[derive(Debug, Clone, Default)]
pub struct PoolSeries {
    /// Its name.
    pub name: String,
    /// The imbalance ratio at each second.
    pub imbalance: Ring<f64>,
    /// Re-pins in each second.
    pub repins: Ring<u64>,
    /// Takeovers in each second.
    pub takeovers: Ring<u64>,
    /// Requests by outcome in each second, in [`Outcome::ALL`] order.
    pub outcomes: Vec<Ring<u64>>,
    /// Its backends, in the reading's order.
    pub backends: Vec<BackendSeries>,
    last: (u64, u64, [u64; Outcome::ALL.len()]),
}

/// The whole history.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The unix second of each sample.
    pub t: Ring<u64>,
    /// Median time to response head in each second, in milliseconds (`None`: no request).
    pub p50: Ring<Option<f64>>,
    /// 99th percentile, in milliseconds.
    pub p99: Ring<Option<f64>>,
    /// Every pool of the latest reading, in its order.
    pub pools: Vec<PoolSeries>,
    last_latency: Option<Buckets>,
}

impl History {
    /// Adds the second that ends with `r`.
    pub fn record(&mut self, r: &Reading<'_>) {
        let before = self.t.len();
        self.t.push(r.unix);
        // The second's growth of each cumulative count, then each bucket's own count.
        let grown: Buckets = match &self.last_latency {
            Some(prev) => std::array::from_fn(|i| r.latency[i].saturating_sub(prev[i])),
            None => [0; LATENCY_BUCKETS.len() + 1],
        };
        let delta: Buckets =
            std::array::from_fn(|i| grown[i].saturating_sub(if i == 0 { 0 } else { grown[i - 1] }));
        self.last_latency = Some(r.latency);
        self.p50.push(quantile(&delta, 0.5));
        self.p99.push(quantile(&delta, 0.99));

        let mut old = std::mem::take(&mut self.pools);
        for p in &r.pools {
            let mut s = match old.iter().position(|o| o.name == p.name) {
                Some(i) => old.swap_remove(i),
                None => PoolSeries {
                    name: p.name.to_string(),
                    imbalance: Ring::filled(before, 0.0),
                    repins: Ring::filled(before, 0),
                    takeovers: Ring::filled(before, 0),
                    outcomes: vec![Ring::filled(before, 0); Outcome::ALL.len()],
                    backends: Vec::new(),
                    last: (p.repins, p.takeovers, p.outcomes),
                },
            };
            let (repins, takeovers, outcomes) = s.last;
            s.imbalance.push(p.imbalance);
            s.repins.push(p.repins.saturating_sub(repins));
            s.takeovers.push(p.takeovers.saturating_sub(takeovers));
            for (i, ring) in s.outcomes.iter_mut().enumerate() {
                ring.push(p.outcomes[i].saturating_sub(outcomes[i]));
            }
            s.last = (p.repins, p.takeovers, p.outcomes);
            let mut old_b = std::mem::take(&mut s.backends);
            for &(id, requests, errors) in &p.backends {
                let mut b = match old_b.iter().position(|o| o.id == id) {
                    Some(i) => old_b.swap_remove(i),
                    None => BackendSeries {
                        id: id.to_string(),
                        requests: Ring::filled(before, 0),
                        errors: Ring::filled(before, 0),
                        last: (requests, errors),
                    },
                };
                b.requests.push(requests.saturating_sub(b.last.0));
                b.errors.push(errors.saturating_sub(b.last.1));
                b.last = (requests, errors);
                s.backends.push(b);
            }
            self.pools.push(s);
        }
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolSeries> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// The `q` quantile, in milliseconds, of one second's latency bucket counts (not cumulative),
/// interpolated linearly within its bucket as Prometheus' `histogram_quantile` does; `None`
/// without a request. A quantile in the `+Inf` bucket is its lower bound.
pub fn quantile(counts: &Buckets, q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let lo = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let Some(&hi) = LATENCY_BUCKETS.get(i) else {
                return Some(lo * 1e3);
            };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lo + (hi - lo) * within) * 1e3);
        }
        below += n;
    }
    LATENCY_BUCKETS.last().map(|&le| le * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reading<'a>(unix: u64, backends: Vec<(&'a str, u64, u64)>) -> Reading<'a> {
        Reading {
            unix,
            latency: [0; LATENCY_BUCKETS.len() + 1],
            pools: vec![PoolReading {
                name: "default",
                backends,
                ..PoolReading::default()
            }],
        }
    }

    fn values<T: Clone>(r: &Ring<T>) -> Vec<T> {
        r.values().cloned().collect()
    }

    #[test]
    fn counters_become_per_second_deltas_from_the_second_reading_on() {
        let mut h = History::default();
        h.record(&reading(100, vec![("a", 50, 1), ("b", 7, 0)]));
        h.record(&reading(101, vec![("a", 60, 1), ("b", 9, 2)]));
        h.record(&reading(102, vec![("a", 60, 4), ("b", 20, 2)]));
        let p = h.pool("default").unwrap();
        assert_eq!(values(&h.t), [100, 101, 102]);
        assert_eq!(values(&p.backends[0].requests), [0, 10, 0]);
        assert_eq!(values(&p.backends[0].errors), [0, 0, 3]);
        assert_eq!(values(&p.backends[1].requests), [0, 2, 11]);
    }

    #[test]
    fn backends_that_come_late_are_aligned_and_those_that_go_leave() {
        let mut h = History::default();
        h.record(&reading(1, vec![("a", 0, 0)]));
        h.record(&reading(2, vec![("a", 5, 0)]));
        h.record(&reading(3, vec![("a", 9, 0), ("b", 100, 0)]));
        h.record(&reading(4, vec![("b", 103, 0)]));
        let p = h.pool("default").unwrap();
        assert_eq!(p.backends.len(), 1);
        assert_eq!(values(&p.backends[0].requests), [0, 0, 0, 3]);
        assert_eq!(p.backends[0].requests.len(), h.t.len());
    }

    #[test]
    fn a_counter_that_went_backwards_counts_zero() {
        let mut h = History::default();
        h.record(&reading(1, vec![("a", 500, 9)]));
        h.record(&reading(2, vec![("a", 3, 0)]));
        h.record(&reading(3, vec![("a", 5, 0)]));
        let p = h.pool("default").unwrap();
        assert_eq!(values(&p.backends[0].requests), [0, 0, 2]);
    }

    #[test]
    fn pool_counters_and_latency_quantiles() {
        let mut h = History::default();
        let mut r = reading(1, vec![]);
        r.pools[0].repins = 4;
        r.pools[0].outcomes[Outcome::New.index()] = 10;
        h.record(&r);
        r.unix = 2;
        r.pools[0].repins = 6;
        r.pools[0].takeovers = 1;
        r.pools[0].imbalance = 1.5;
        r.pools[0].outcomes[Outcome::New.index()] = 13;
        // 100 requests in the 1-2.5 ms bucket (index 2).
        r.latency[2..].fill(100);
        h.record(&r);
        let p = h.pool("default").unwrap();
        assert_eq!(values(&p.repins), [0, 2]);
        assert_eq!(values(&p.takeovers), [0, 1]);
        assert_eq!(values(&p.imbalance), [0.0, 1.5]);
        assert_eq!(values(&p.outcomes[Outcome::New.index()]), [0, 3]);
        assert_eq!(
            h.p50.values().next(),
            Some(&None),
            "no request in the first"
        );
        let p50 = h.p50.last().unwrap().unwrap();
        assert!((p50 - 1.75).abs() < 1e-9, "{p50}");
        let p99 = h.p99.last().unwrap().unwrap();
        assert!((p99 - 2.485).abs() < 1e-9, "{p99}");
    }

    #[test]
    fn quantiles_at_the_edges() {
        let mut c = [0; LATENCY_BUCKETS.len() + 1];
        assert_eq!(quantile(&c, 0.5), None);
        c[LATENCY_BUCKETS.len()] = 3;
        assert_eq!(quantile(&c, 0.99), Some(10_000.0), "+Inf: its lower bound");
        let mut c = [0; LATENCY_BUCKETS.len() + 1];
        c[0] = 2;
        assert_eq!(quantile(&c, 0.5), Some(0.25));
    }

    #[test]
    fn the_rings_never_grow_past_their_size() {
        let mut h = History::default();
        for s in 0..(SECONDS as u64 + 50) {
            h.record(&reading(s, vec![("a", s * 3, 0)]));
        }
        let p = h.pool("default").unwrap();
        assert_eq!(h.t.len(), SECONDS);
        assert_eq!(p.backends[0].requests.len(), SECONDS);
        assert_eq!(p.outcomes[0].len(), SECONDS);
        assert_eq!(h.t.values().next(), Some(&50));
        assert!(p.backends[0].requests.values().all(|&n| n == 3));
    }

    proptest! {
        /// Summed, the per-second deltas of a counter that only grows are its growth since
        /// the first reading, and every series of the pool is as long as `t`.
        #[test]
        fn deltas_add_up_to_the_growth(steps in proptest::collection::vec(0u64..1000, 1..400)) {
            let mut h = History::default();
            let mut total = 0;
            for (s, step) in steps.iter().enumerate() {
                total += step;
                h.record(&reading(s as u64, vec![("a", total, 0)]));
            }
            let p = h.pool("default").unwrap();
            let kept: u64 = p.backends[0].requests.values().sum();
            let n = steps.len();
            let want: u64 = if n <= SECONDS {
                steps[1..].iter().sum()
            } else {
                steps[n - SECONDS..].iter().sum()
            };
            prop_assert_eq!(kept, want);
            prop_assert_eq!(p.backends[0].requests.len(), h.t.len());
            prop_assert_eq!(p.repins.len(), h.t.len());
        }
    }
}
