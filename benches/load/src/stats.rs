//! What a load thread records (latency histograms, errors by kind, per-backend requests and
//! sessions, affinity outcomes, sessions whose state was lost, per-second series), how
//! threads' records are merged, and the report math on them (percentiles, imbalance, the
//! closed-loop correction interval).
//!
//! Pure: no I/O, no clock. Times come in as microseconds and second indexes.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::users::{Served, StateSeen};

/// Highest latency the run histograms track exactly (1 h); longer ones saturate there.
pub const HIGH_US: u64 = 3_600_000_000;
/// Highest latency the per-second histograms track (60 s); they keep 2 significant digits so a
/// long run's series stays small.
const SECOND_HIGH_US: u64 = 60_000_000;
/// Most distinct backend names a thread tells apart; a target that sends more is counted as
/// "unknown" past it.
pub const MAX_BACKENDS: usize = 1024;

/// A run histogram: 1 µs to 1 h, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGH_US, 3).expect("constant bounds are valid")
}

fn second_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, SECOND_HIGH_US, 2).expect("constant bounds are valid")
}

/// A request that got no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connect failed (refused, unreachable, out of ports).
    Connect,
    /// No complete response within --timeout.
    Timeout,
    /// The connection was reset or closed, or another I/O error, after the request was sent.
    Io,
    /// The peer sent something that is not HTTP.
    Protocol,
}

/// Errors by kind. Responses with status >= 400 are errors too, kept by code.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    pub io: u64,
    pub other: u64,
    /// Responses with a 4xx or 5xx status, by code.
    pub status: BTreeMap<u16, u64>,
}

impl ErrorCounts {
    pub fn add_failure(&mut self, f: Failure) {
        match f {
            Failure::Connect => self.connect += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Io => self.io += 1,
            Failure::Protocol => self.other += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.io + self.other + self.status.values().sum::<u64>()
    }

    pub fn status_4xx(&self) -> u64 {
        self.status.range(400..500).map(|(_, n)| n).sum()
    }

    pub fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.io += o.io;
        self.other += o.other;
        for (code, n) in &o.status {
            *self.status.entry(*code).or_default() += n;
        }
    }
}

/// One second of the measurement.
#[derive(Debug, Clone)]
pub struct Second {
    /// HTTP responses (any status).
    pub responses: u64,
    /// Responses with status < 400.
    pub ok: u64,
    /// Failures plus responses >= 400.
    pub errors: u64,
    pub latency: Histogram<u32>,
    /// Responses by backend index (of the owning table).
    pub backends: Vec<u64>,
    /// Sessions whose state was first seen lost in this second.
    pub state_lost: u64,
}

impl Second {
    fn new() -> Second {
        Second {
            responses: 0,
            ok: 0,
            errors: 0,
            latency: second_histogram(),
            backends: Vec::new(),
            state_lost: 0,
        }
    }
}

/// Backend names seen by one thread (or, merged, by all), with their counts.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub names: Vec<String>,
    pub requests: Vec<u64>,
    pub sessions: Vec<u64>,
    pub unknown_requests: u64,
    pub unknown_sessions: u64,
}

impl Tally {
    /// A table that already knows `names`, in that order.
    pub fn with_names(names: &[String]) -> Tally {
        Tally {
            names: names.to_vec(),
            requests: vec![0; names.len()],
            sessions: vec![0; names.len()],
            ..Tally::default()
        }
    }

    /// The index of the backend named by a response header value, adding it when new. `None`
    /// past [`MAX_BACKENDS`] names, or for a value that is not UTF-8.
    pub fn index(&mut self, value: &[u8]) -> Option<u16> {
        if let Some(i) = self.names.iter().position(|n| n.as_bytes() == value) {
            return Some(i as u16);
        }
        if self.names.len() >= MAX_BACKENDS {
            return None;
        }
        let name = std::str::from_utf8(value).ok()?;
        self.names.push(name.to_string());
        self.requests.push(0);
        self.sessions.push(0);
        Some((self.names.len() - 1) as u16)
    }
}

/// Everything one load thread records. Second indexes count from the start of measurement.
#[derive(Debug, Clone)]
pub struct ThreadStats {
    /// Latency of every response: from the actual send (closed loop) or the intended send
    /// time (open loop).
    pub latency: Histogram<u64>,
    /// Open loop: from the actual send (the service time).
    pub service: Histogram<u64>,
    /// Open loop: how late requests were sent after their intended time.
    pub lag: Histogram<u64>,
    pub seconds: Vec<Second>,
    pub tally: Tally,
    pub errors: ErrorCounts,
    pub responses: u64,
    pub ok: u64,
    /// Users whose first request was sent during measurement.
    pub users_started: u64,
    /// Users whose first response came during measurement (a session each).
    pub sessions: u64,
    /// Responses from the user's pinned backend.
    pub stayed: u64,
    /// Responses from another backend than the pinned one, violations included.
    pub repins: u64,
    /// Re-pins while the pinned backend was usable.
    pub violations: u64,
    /// Open loop: scheduled requests never sent (the in-flight cap held them past the end).
    pub unsent: u64,
    /// Sessions whose counter was compared at least once (a second response with one).
    pub state_checked: u64,
    /// Sessions whose state was lost (counted once each).
    pub state_lost: u64,
    /// Responses whose counter showed the state lost (a session may lose it more than once).
    pub state_losses: u64,
}

impl ThreadStats {
    /// Empty records for a `seconds`-long measurement, knowing backend `names`.
    pub fn new(seconds: usize, names: &[String]) -> ThreadStats {
        ThreadStats {
            latency: histogram(),
            service: histogram(),
            lag: histogram(),
            seconds: (0..seconds.max(1)).map(|_| Second::new()).collect(),
            tally: Tally::with_names(names),
            errors: ErrorCounts::default(),
            responses: 0,
            ok: 0,
            users_started: 0,
            sessions: 0,
            stayed: 0,
            repins: 0,
            violations: 0,
            unsent: 0,
            state_checked: 0,
            state_lost: 0,
            state_losses: 0,
        }
    }

    fn second(&mut self, sec: usize) -> &mut Second {
        let last = self.seconds.len() - 1;
        &mut self.seconds[sec.min(last)]
    }

    /// Records an HTTP response sent in second `sec`. `first` is the user's first response;
    /// `served` its affinity outcome.
    pub fn response(
        &mut self,
        sec: usize,
        latency_us: u64,
        status: u16,
        backend: Option<u16>,
        first: bool,
        served: Served,
    ) {
        self.responses += 1;
        let ok = status < 400;
        if ok {
            self.ok += 1;
        } else {
            *self.errors.status.entry(status).or_default() += 1;
        }
        self.latency.saturating_record(latency_us.max(1));
        match backend {
            Some(b) => {
                let b = usize::from(b);
                self.tally.requests[b] += 1;
                if first {
                    self.tally.sessions[b] += 1;
                }
            }
            None => {
                self.tally.unknown_requests += 1;
                if first {
                    self.tally.unknown_sessions += 1;
                }
            }
        }
        if first {
            self.sessions += 1;
        }
        match served {
            Served::Stayed => self.stayed += 1,
            Served::Repinned { violation } => {
                self.repins += 1;
                self.violations += u64::from(violation);
            }
            Served::Pinned | Served::NoBackend => {}
        }
        let s = self.second(sec);
        s.responses += 1;
        if ok {
            s.ok += 1;
        } else {
            s.errors += 1;
        }
        s.latency
            .saturating_record(latency_us.clamp(1, SECOND_HIGH_US));
        if let Some(b) = backend {
            let b = usize::from(b);
            if s.backends.len() <= b {
                s.backends.resize(b + 1, 0);
            }
            s.backends[b] += 1;
        }
    }

    /// Records what a response sent in second `sec` said about its session's state.
    pub fn state(&mut self, sec: usize, seen: StateSeen) {
        match seen {
            StateSeen::Untracked | StateSeen::First => {}
            StateSeen::Kept { first_check } => self.state_checked += u64::from(first_check),
            StateSeen::Lost {
                first_check,
                first_loss,
            } => {
                self.state_checked += u64::from(first_check);
                self.state_losses += 1;
                if first_loss {
                    self.state_lost += 1;
                    self.second(sec).state_lost += 1;
                }
            }
        }
    }

    /// Records a request sent in second `sec` that got no response.
    pub fn failure(&mut self, sec: usize, f: Failure) {
        self.errors.add_failure(f);
        self.second(sec).errors += 1;
    }
}

/// Merges threads' records; backend indexes are renumbered: `order` first, then the other
/// names seen, sorted.
pub fn merge(threads: Vec<ThreadStats>, order: &[String]) -> ThreadStats {
    let seconds = threads.iter().map(|t| t.seconds.len()).max().unwrap_or(1);
    let mut names: Vec<String> = order.to_vec();
    let mut extra: Vec<String> = threads
        .iter()
        .flat_map(|t| t.tally.names.iter())
        .filter(|n| !order.contains(n))
        .cloned()
        .collect();
    extra.sort();
    extra.dedup();
    names.extend(extra);
    let mut m = ThreadStats::new(seconds, &names);
    for t in threads {
        let map: Vec<usize> = t
            .tally
            .names
            .iter()
            .map(|n| {
                names
                    .iter()
                    .position(|x| x == n)
                    .expect("every name was collected")
            })
            .collect();
        // Histograms of one kind share bounds, so adding cannot fail.
        let _ = m.latency.add(&t.latency);
        let _ = m.service.add(&t.service);
        let _ = m.lag.add(&t.lag);
        for (i, s) in t.seconds.iter().enumerate() {
            let d = &mut m.seconds[i];
            d.responses += s.responses;
            d.ok += s.ok;
            d.errors += s.errors;
            d.state_lost += s.state_lost;
            let _ = d.latency.add(&s.latency);
            if d.backends.len() < names.len() {
                d.backends.resize(names.len(), 0);
            }
            for (b, n) in s.backends.iter().enumerate() {
                d.backends[map[b]] += n;
            }
        }
        for (b, &g) in map.iter().enumerate() {
            m.tally.requests[g] += t.tally.requests[b];
            m.tally.sessions[g] += t.tally.sessions[b];
        }
        m.tally.unknown_requests += t.tally.unknown_requests;
        m.tally.unknown_sessions += t.tally.unknown_sessions;
        m.errors.merge(&t.errors);
        m.responses += t.responses;
        m.ok += t.ok;
        m.users_started += t.users_started;
        m.sessions += t.sessions;
        m.stayed += t.stayed;
        m.repins += t.repins;
        m.violations += t.violations;
        m.unsent += t.unsent;
        m.state_checked += t.state_checked;
        m.state_lost += t.state_lost;
        m.state_losses += t.state_losses;
    }
    for s in &mut m.seconds {
        s.backends.resize(names.len(), 0);
    }
    m
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of<T: hdrhistogram::Counter>(h: &Histogram<T>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                mean: 0.0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// max / mean of `counts`; `None` when there is nothing to compare.
pub fn imbalance(counts: &[u64]) -> Option<f64> {
    let sum: u64 = counts.iter().sum();
    if counts.is_empty() || sum == 0 {
        return None;
    }
    let max = *counts.iter().max().unwrap_or(&0);
    Some(max as f64 * counts.len() as f64 / sum as f64)
}

/// The expected interval between a closed-loop connection's requests, as wrk computes it for
/// its coordinated-omission correction: the run time divided by the requests per connection.
/// `None` when each connection made less than one request.
pub fn closed_loop_interval_us(measured_us: u64, responses: u64, connections: u64) -> Option<u64> {
    let per_conn = responses.checked_div(connections)?;
    if per_conn == 0 {
        return None;
    }
    Some((measured_us / per_conn).max(1))
}

/// `part` of `whole` in percent (0 when `whole` is 0).
pub fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imbalance_is_max_over_mean() {
        assert_eq!(imbalance(&[]), None);
        assert_eq!(imbalance(&[0, 0]), None);
        assert_eq!(imbalance(&[10, 10, 10]), Some(1.0));
        assert_eq!(imbalance(&[30, 10, 20]), Some(1.5));
        assert_eq!(imbalance(&[5, 0, 0, 0, 0]), Some(5.0));
    }

    #[test]
    fn the_correction_interval_is_run_time_over_requests_per_connection() {
        assert_eq!(closed_loop_interval_us(10_000_000, 6400, 64), Some(100_000));
        assert_eq!(closed_loop_interval_us(10_000_000, 63, 64), None);
        assert_eq!(closed_loop_interval_us(10_000_000, 10, 0), None);
        assert_eq!(closed_loop_interval_us(1, 1_000_000, 1), Some(1));
    }

    #[test]
    fn percentiles_of_a_known_histogram() {
        let mut h = histogram();
        for v in 1..=1000 {
            h.saturating_record(v);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500);
        assert_eq!(p.p90, 900);
        assert_eq!(p.p99, 990);
        assert_eq!(p.p999, 999);
        assert_eq!(p.max, 1000);
        assert!((p.mean - 500.5).abs() < 0.5);
        assert_eq!(Percentiles::of(&histogram()).count, 0);
    }

    #[test]
    fn a_huge_latency_saturates_instead_of_failing() {
        let mut t = ThreadStats::new(1, &[]);
        t.response(0, u64::MAX, 200, None, true, Served::NoBackend);
        assert_eq!(t.latency.len(), 1);
        assert!(t.latency.max() >= HIGH_US);
        t.response(99, 5, 200, None, false, Served::NoBackend);
        assert_eq!(
            t.seconds[0].responses, 2,
            "late seconds land in the last one"
        );
    }

    #[test]
    fn responses_failures_sessions_and_repins_are_counted() {
        let names = vec!["b1".to_string(), "b2".to_string()];
        let mut t = ThreadStats::new(2, &names);
        let b1 = t.tally.index(b"b1");
        let b2 = t.tally.index(b"b2");
        assert_eq!((b1, b2), (Some(0), Some(1)));
        t.response(0, 100, 200, b1, true, Served::Pinned);
        t.response(0, 100, 200, b1, false, Served::Stayed);
        t.response(
            1,
            100,
            200,
            b2,
            false,
            Served::Repinned { violation: false },
        );
        t.response(1, 100, 200, b1, false, Served::Repinned { violation: true });
        t.response(1, 100, 503, None, true, Served::NoBackend);
        t.failure(1, Failure::Connect);
        t.failure(1, Failure::Timeout);
        t.failure(0, Failure::Io);
        t.failure(0, Failure::Protocol);
        assert_eq!((t.responses, t.ok, t.sessions), (5, 4, 2));
        assert_eq!((t.stayed, t.repins, t.violations), (1, 2, 1));
        assert_eq!(t.tally.requests, [3, 1]);
        assert_eq!(t.tally.sessions, [1, 0]);
        assert_eq!((t.tally.unknown_requests, t.tally.unknown_sessions), (1, 1));
        assert_eq!(t.errors.total(), 5);
        assert_eq!(t.errors.status.get(&503), Some(&1));
        assert_eq!(t.errors.status_4xx(), 0);
        assert_eq!((t.seconds[0].responses, t.seconds[0].errors), (2, 2));
        assert_eq!((t.seconds[1].responses, t.seconds[1].errors), (3, 3));
        assert_eq!(t.seconds[0].backends, [2]);
        assert_eq!(t.seconds[1].backends, [1, 1]);
    }

    #[test]
    fn merging_renumbers_backends_by_name() {
        let order = vec!["b1".to_string(), "b2".to_string()];
        let mut a = ThreadStats::new(2, &[]);
        let x = a.tally.index(b"b2");
        let y = a.tally.index(b"zz");
        a.response(0, 10, 200, x, true, Served::Pinned);
        a.response(1, 20, 200, y, false, Served::Repinned { violation: false });
        let mut b = ThreadStats::new(3, &order);
        let z = b.tally.index(b"b1");
        let w = b.tally.index(b"aa");
        b.response(2, 30, 200, z, true, Served::Pinned);
        b.response(2, 40, 404, w, false, Served::Repinned { violation: true });
        b.failure(0, Failure::Timeout);
        let m = merge(vec![a, b], &order);
        assert_eq!(m.tally.names, ["b1", "b2", "aa", "zz"]);
        assert_eq!(m.tally.requests, [1, 1, 1, 1]);
        assert_eq!(m.tally.sessions, [1, 1, 0, 0]);
        assert_eq!(m.seconds.len(), 3);
        assert_eq!(m.seconds[0].backends, [0, 1, 0, 0]);
        assert_eq!(m.seconds[1].backends, [0, 0, 0, 1]);
        assert_eq!(m.seconds[2].backends, [1, 0, 1, 0]);
        assert_eq!((m.responses, m.ok, m.repins, m.violations), (4, 3, 2, 1));
        assert_eq!(m.errors.status_4xx(), 1);
        assert_eq!(m.errors.timeout, 1);
        assert_eq!(m.latency.len(), 4);
        assert_eq!(m.seconds[2].latency.len(), 2);
    }

    #[test]
    fn lost_state_is_counted_once_per_session_and_merged() {
        let lost = |first_check, first_loss| StateSeen::Lost {
            first_check,
            first_loss,
        };
        let mut a = ThreadStats::new(2, &[]);
        a.state(0, StateSeen::Untracked);
        a.state(0, StateSeen::First);
        a.state(0, StateSeen::Kept { first_check: true });
        a.state(0, StateSeen::Kept { first_check: false });
        a.state(1, lost(false, true));
        a.state(1, lost(false, false));
        let mut b = ThreadStats::new(2, &[]);
        b.state(0, lost(true, true));
        assert_eq!((a.state_checked, a.state_lost, a.state_losses), (1, 1, 2));
        assert_eq!(a.seconds[1].state_lost, 1);
        let m = merge(vec![a, b], &[]);
        assert_eq!((m.state_checked, m.state_lost, m.state_losses), (2, 2, 3));
        assert_eq!((m.seconds[0].state_lost, m.seconds[1].state_lost), (1, 1));
    }

    #[test]
    fn the_tally_is_bounded_and_refuses_non_utf8_names() {
        let mut t = Tally::default();
        assert_eq!(t.index(&[0xff, 0xfe]), None);
        for i in 0..MAX_BACKENDS {
            assert!(t.index(format!("n{i}").as_bytes()).is_some());
        }
        assert_eq!(t.index(b"one-too-many"), None);
        assert_eq!(t.index(b"n5"), Some(5));
    }

    #[test]
    fn shares_are_percentages() {
        assert_eq!(share(1, 4), 25.0);
        assert_eq!(share(3, 0), 0.0);
    }
}
