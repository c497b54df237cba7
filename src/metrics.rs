//! Process-wide counters that are neither per backend nor per pool (retries, upstream errors
//! by kind, responses by status class, the latency histogram), and the exposition of every metric: each family's name, type and help text
//! is declared here once ([`FAMILIES`]), and `Metrics::render` writes the Prometheus text.
//!
//! Per-worker counters ([`shard`]): each worker thread bumps its own slot with a plain load and
//! store, no lock and no read-modify-write shared between workers; reading sums the slots.
//! This module never reads live state itself: per-backend values and gauges owned elsewhere come in as plain values
//! (`Readings`), read once by the caller, so the exposition is a pure function of its input.
//! The names, labels and types are fixed interface (dashboards and alerts match on them).

mod exposition;
pub mod shard;

use std::time::Duration;

use crate::error::{ProxyError, UpstreamKind};

pub(crate) use exposition::{BackendSample, LookupSample, PoolSample, Readings};
pub use shard::{Counter, Shards};

/// Counters of every request, per worker ([`Shards`]); the accessors return sums.
#[derive(Debug, Default)]
pub struct Metrics {
    counts: Shards<Counts>,
    /// Time from a request's arrival to its response head.
    pub latency: Histogram,
}

/// One worker's slot of [`Metrics`].
#[derive(Debug, Default)]
struct Counts {
    retries: Counter,
    upstream_errors: [Counter; UpstreamKind::ALL.len()],
    /// Responses to clients by status class (index 0 for 1xx .. 4 for 5xx), errors included.
    responses: [Counter; 5],
}

/// A metric type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Only ever goes up (until restart).
    Counter,
    /// A value now.
    Gauge,
    /// Cumulative `_bucket{le}` counts plus `_sum` and `_count`.
    Histogram,
}

impl Type {
    /// The `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// One metric family as the exposition announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// The metric name (`stickyd_` prefixed; fixed interface).
    pub name: &'static str,
    /// Its type.
    pub kind: Type,
    /// The `# HELP` text: one line, no backslash.
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Type, help: &'static str) -> Family {
    Family { name, kind, help }
}

/// `{version}`, always 1.
pub const BUILD_INFO: Family = family(
    "stickyd_build_info",
    Type::Gauge,
    "Version of the running stickyd.",
);
/// Client connections open now.
pub const CONNECTIONS: Family = family(
    "stickyd_connections",
    Type::Gauge,
    "Client connections open now.",
);
/// `{backend, class}`.
pub const BACKEND_RESPONSES: Family = family(
    "stickyd_backend_responses_total",
    Type::Counter,
    "Responses from each backend by status class.",
);
/// `{backend}`.
pub const BACKEND_REQUESTS: Family = family(
    "stickyd_backend_requests_total",
    Type::Counter,
    "Requests sent to each backend (attempts, retries included).",
);
/// `{backend}`.
pub const BACKEND_FAILURES: Family = family(
    "stickyd_backend_failures_total",
    Type::Counter,
    "Requests that got no response from the backend.",
);
/// `{backend}`.
pub const BACKEND_IN_FLIGHT: Family = family(
    "stickyd_backend_in_flight",
    Type::Gauge,
    "Requests in flight on each backend.",
);
/// `{backend}`: 1 or 0.
pub const BACKEND_UP: Family = family(
    "stickyd_backend_up",
    Type::Gauge,
    "1 if the backend passes health checks.",
);
/// `{backend}`.
pub const BACKEND_WEIGHT: Family = family(
    "stickyd_backend_weight",
    Type::Gauge,
    "Configured weight of each backend.",
);
/// `{backend}`.
pub const BACKEND_PINS: Family = family(
    "stickyd_backend_pins_total",
    Type::Counter,
    "Sessions pinned to each backend (new sessions and re-pins).",
);
/// `{backend}`.
pub const BACKEND_SESSIONS: Family = family(
    "stickyd_backend_sessions",
    Type::Gauge,
    "Distinct sessions served within about the last max_idle (estimate).",
);
/// `{backend}`: 1 or 0.
pub const BACKEND_DRAINED: Family = family(
    "stickyd_backend_drained",
    Type::Gauge,
    "1 if the backend is draining and served nothing for drain_quiet.",
);
/// `{backend, state}`: 1 for the state in force, 0 for the others.
pub const BACKEND_ADMIN_STATE: Family = family(
    "stickyd_backend_admin_state",
    Type::Gauge,
    "Admin state of each backend (1 for the state in force).",
);
/// `{class}`.
pub const RESPONSES: Family = family(
    "stickyd_responses_total",
    Type::Counter,
    "Responses to clients by status class, stickyd's own errors included.",
);
/// `_bucket{le}` over [`LATENCY_BUCKETS`], `_sum`, `_count`.
pub const REQUEST_DURATION: Family = family(
    "stickyd_request_duration_seconds",
    Type::Histogram,
    "Time from a request's arrival to its response head.",
);
/// `{pool, outcome}`, one per pool and [`Outcome`].
pub const AFFINITY: Family = family(
    "stickyd_affinity_total",
    Type::Counter,
    "Requests by affinity outcome (valid, new, refreshed, or why a token was not honoured).",
);
/// `{pool}`.
pub const REPINS: Family = family(
    "stickyd_repins_total",
    Type::Counter,
    "Sessions moved to another backend because theirs could not serve.",
);
/// No labels.
pub const RETRIES: Family = family(
    "stickyd_retries_total",
    Type::Counter,
    "Requests retried on another backend.",
);
/// `{kind}`, one per [`UpstreamKind`].
pub const UPSTREAM_ERRORS: Family = family(
    "stickyd_upstream_errors_total",
    Type::Counter,
    "Failed upstream attempts by kind.",
);
/// `{pool, reason}`, one per pool and [`crate::affinity::Takeover`].
pub const TAKEOVERS: Family = family(
    "stickyd_takeovers_total",
    Type::Counter,
    "Sessions served by their backup with a takeover (replication), by why their home was lost.",
);
/// `{pool}`.
pub const IMBALANCE: Family = family(
    "stickyd_imbalance_ratio",
    Type::Gauge,
    "max/mean of each pool's usable backends' request rates over about the last 10 s (1 is even; 0 without traffic).",
);
/// No labels; only while the access log is on.
pub const ACCESS_LOG_DROPPED: Family = family(
    "stickyd_access_log_dropped_total",
    Type::Counter,
    "Access log lines dropped because the writer fell behind.",
);

/// `{pool, source}`: `source` is "config" or "dns".
pub const BACKENDS: Family = family(
    "stickyd_backends",
    Type::Gauge,
    "Backends of each pool, by where they come from: the config file or DNS discovery.",
);
/// `{pool, name, outcome}`: `name` is the `[[discover]]` entry (`dns:NAME:PORT` or `srv:NAME`),
/// `outcome` "ok", "empty" or "failed".
pub const DISCOVERY_LOOKUPS: Family = family(
    "stickyd_discovery_lookups_total",
    Type::Counter,
    "DNS lookups of each [[discover]] entry, by outcome (empty and failed ones keep the last good set).",
);

/// Every family, in the order `Metrics::render` writes them.
pub const FAMILIES: [Family; 23] = [
    BUILD_INFO,
    CONNECTIONS,
    BACKEND_RESPONSES,
    BACKEND_REQUESTS,
    BACKEND_FAILURES,
    BACKEND_IN_FLIGHT,
    BACKEND_UP,
    BACKEND_WEIGHT,
    BACKEND_PINS,
    BACKEND_SESSIONS,
    BACKEND_DRAINED,
    BACKEND_ADMIN_STATE,
    RESPONSES,
    REQUEST_DURATION,
    AFFINITY,
    REPINS,
    TAKEOVERS,
    RETRIES,
    UPSTREAM_ERRORS,
    IMBALANCE,
    BACKENDS,
    DISCOVERY_LOOKUPS,
    ACCESS_LOG_DROPPED,
];

/// Upper bounds of the latency histogram's buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations (non-cumulative counts per worker; rendered
/// cumulative over all of them).
#[derive(Debug, Default)]
pub struct Histogram {
    slots: Shards<Buckets>,
}

/// One worker's slot of a [`Histogram`].
#[derive(Debug, Default)]
struct Buckets {
    counts: [Counter; LATENCY_BUCKETS.len() + 1],
    sum_micros: Counter,
}

impl Histogram {
    /// A histogram with slots for `workers` worker threads.
    pub fn new(workers: usize) -> Histogram {
        Histogram {
            slots: Shards::new(workers),
        }
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = self.slots.local();
        // `i` is at most `LATENCY_BUCKETS.len()`, the last index of `counts`.
        slot.add(|b| &b.counts[i], 1);
        slot.add(|b| &b.sum_micros, micros);
    }

    /// Cumulative counts, one per bucket of [`LATENCY_BUCKETS`] and a last one for `+Inf`.
    pub fn cumulative(&self) -> [u64; LATENCY_BUCKETS.len() + 1] {
        let mut acc = 0u64;
        std::array::from_fn(|i| {
            acc = acc.wrapping_add(self.slots.sum(|b| &b.counts[i]));
            acc
        })
    }

    /// Sum of the recorded durations in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.slots.sum(|b| &b.sum_micros) as f64 / 1e6
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
    /// Counters with slots for `workers` worker threads (see [`shard::enter_worker`]).
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            counts: Shards::new(workers),
            latency: Histogram::new(workers),
        }
    }

    /// Counts a response to a client with `status`.
    pub fn response(&self, status: u16) {
        if let 100..=599 = status {
            let class = usize::from(status / 100 - 1);
            self.counts.local().add(|c| &c.responses[class], 1);
        }
    }

    /// Responses to clients with status class `class` (1 to 5).
    pub fn responses(&self, class: u16) -> u64 {
        match class {
            1..=5 => self.counts.sum(|c| &c.responses[usize::from(class - 1)]),
            _ => 0,
        }
    }

    /// Counts a retry on another backend.
    pub fn retry(&self) {
        self.counts.local().add(|c| &c.retries, 1);
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.counts.sum(|c| &c.retries)
    }

    /// Counts an upstream error (errors that are not upstream are ignored).
    pub(crate) fn upstream_error(&self, e: &ProxyError) {
        if let Some(k) = e.upstream_kind() {
            self.counts
                .local()
                .add(|c| &c.upstream_errors[k.index()], 1);
        }
    }

    /// Upstream errors of `kind` so far.
    pub fn upstream_errors(&self, kind: UpstreamKind) -> u64 {
        self.counts.sum(|c| &c.upstream_errors[kind.index()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_by_label() {
        let m = Metrics::default();
        m.upstream_error(&ProxyError::Timeout);
        m.upstream_error(&ProxyError::NoBackend);
        assert_eq!(m.upstream_errors(UpstreamKind::Timeout), 1);
        assert_eq!(m.upstream_errors(UpstreamKind::Connect), 0);
        m.retry();
        assert_eq!(m.retries(), 1);
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
    fn every_counter_sums_the_slots_of_all_workers() {
        use shard::enter_worker;
        let m = Metrics::new(2);
        // Workers 0 and 1 in their own slots, and two threads that are no worker, sharing one.
        std::thread::scope(|t| {
            for w in 0..4usize {
                let m = &m;
                t.spawn(move || {
                    if w < 2 {
                        enter_worker(w);
                    }
                    for n in 0..5_000u64 {
                        m.response(200 + 300 * u16::from(n % 2 == 0));
                        m.latency.record(Duration::from_micros(n % 3 * 1_000));
                        if n % 5 == 0 {
                            m.retry();
                            m.upstream_error(&ProxyError::Timeout);
                        }
                    }
                });
            }
        });
        assert_eq!((m.responses(2), m.responses(5)), (10_000, 10_000));
        assert_eq!(m.retries(), 4_000);
        assert_eq!(m.upstream_errors(UpstreamKind::Timeout), 4_000);
        let c = m.latency.cumulative();
        assert_eq!(c[0], 4 * 1_667, "the 0 us ones");
        assert_eq!(c[1], 4 * (1_667 + 1_667), "and the 1 ms ones");
        assert_eq!(c[LATENCY_BUCKETS.len()], 20_000);
        let micros = 4 * (1_667 + 2 * 1_666) * 1_000;
        assert!((m.latency.sum_secs() - micros as f64 / 1e6).abs() < 1e-9);
    }

    #[test]
    fn every_outcome_has_its_own_slot() {
        for (i, o) in crate::affinity::Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }
}
