//! Recovery after a kill: for every backend the scenario kills (or restarts while it was
//! up), the time from the kill to the first response a user got from another backend in its
//! place (seen by the load threads) and to the first request answered with a promoted replica
//! (seen by the backends, `--replicate`).
//!
//! Times are microseconds since the run's epoch. An observation belongs to the latest kill of
//! the backend it names at or before its time (of any backend when it names none: a takeover
//! without a replica does not say whose session it was); only the first one after each kill
//! is kept.

use std::sync::Mutex;

use serde::Serialize;

/// One kill and what followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillMark {
    pub backend: String,
    pub at_us: u64,
    /// First response to a user pinned to the killed backend from another backend.
    pub first_failover_us: Option<u64>,
    /// First request answered with a promoted replica whose old home is the killed backend.
    pub first_takeover_us: Option<u64>,
    /// Takeovers with no replica to promote (sessions whose state was lost), by the backends.
    pub lost_takeovers: u64,
    /// Takeovers that promoted a replica.
    pub promoted_takeovers: u64,
}

/// What an observation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A user pinned to the backend was answered by another one.
    Failover,
    /// A backend promoted the replica of a session whose home was this backend.
    Promoted,
    /// A backend was asked to take over a session of this backend and had no replica.
    Lost,
}

/// Records `seen` about `backend` at `at_us` into the kill it belongs to: the latest kill of
/// `backend` (`None`: of any backend) at or before `at_us`. Returns false when there is none.
pub fn attribute(marks: &mut [KillMark], backend: Option<&str>, at_us: u64, seen: Seen) -> bool {
    let Some(m) = marks
        .iter_mut()
        .filter(|m| backend.is_none_or(|b| m.backend == b) && m.at_us <= at_us)
        .max_by_key(|m| m.at_us)
    else {
        return false;
    };
    let first = |slot: &mut Option<u64>| {
        *slot = Some(slot.map_or(at_us, |t| t.min(at_us)));
    };
    match seen {
        Seen::Failover => first(&mut m.first_failover_us),
        Seen::Promoted => {
            m.promoted_takeovers += 1;
            first(&mut m.first_takeover_us);
        }
        Seen::Lost => m.lost_takeovers += 1,
    }
    true
}

/// The report's row for one kill.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecoveryRow {
    pub backend: String,
    /// Seconds from the start of measurement.
    pub kill_t_s: f64,
    /// Milliseconds from the kill to the first response from another backend.
    pub first_failover_ms: Option<f64>,
    /// Milliseconds from the kill to the first request answered with a promoted replica.
    pub first_takeover_ms: Option<f64>,
    pub promoted_takeovers: u64,
    pub lost_takeovers: u64,
}

/// `mark` as a report row; `measure_us` is the start of measurement.
pub fn row(mark: &KillMark, measure_us: u64) -> RecoveryRow {
    let after = |t: Option<u64>| t.map(|t| t.saturating_sub(mark.at_us) as f64 / 1000.0);
    RecoveryRow {
        backend: mark.backend.clone(),
        kill_t_s: (mark.at_us as f64 - measure_us as f64) / 1e6,
        first_failover_ms: after(mark.first_failover_us),
        first_takeover_ms: after(mark.first_takeover_us),
        promoted_takeovers: mark.promoted_takeovers,
        lost_takeovers: mark.lost_takeovers,
    }
}

/// The kills of a run, shared by the scenario (kills), the load threads (failovers) and the
/// backends (takeovers). Observations are rare (one per moved session), so a lock is cheap.
#[derive(Debug, Default)]
pub struct Recovery {
    marks: Mutex<Vec<KillMark>>,
}

impl Recovery {
    fn marks(&self) -> std::sync::MutexGuard<'_, Vec<KillMark>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `backend` was killed at `at_us`.
    pub fn kill(&self, backend: &str, at_us: u64) {
        self.marks().push(KillMark {
            backend: backend.to_string(),
            at_us,
            first_failover_us: None,
            first_takeover_us: None,
            lost_takeovers: 0,
            promoted_takeovers: 0,
        });
    }

    /// `seen` about `backend` (`None`: unknown) at `at_us`.
    pub fn seen(&self, backend: Option<&str>, at_us: u64, seen: Seen) {
        let mut marks = self.marks();
        if !marks.is_empty() {
            attribute(&mut marks, backend, at_us, seen);
        }
    }

    pub fn rows(&self, measure_us: u64) -> Vec<RecoveryRow> {
        self.marks().iter().map(|m| row(m, measure_us)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(backend: &str, at_us: u64) -> KillMark {
        KillMark {
            backend: backend.into(),
            at_us,
            first_failover_us: None,
            first_takeover_us: None,
            lost_takeovers: 0,
            promoted_takeovers: 0,
        }
    }

    #[test]
    fn observations_go_to_the_latest_kill_of_their_backend_and_keep_the_first() {
        let mut m = vec![
            mark("b2", 3_000_000),
            mark("b3", 4_000_000),
            mark("b2", 8_000_000),
        ];
        assert!(
            !attribute(&mut m, Some("b2"), 2_999_999, Seen::Promoted),
            "before any kill of b2"
        );
        assert!(
            !attribute(&mut m, Some("b1"), 9_000_000, Seen::Promoted),
            "b1 was never killed"
        );
        // Out of order, as threads report: the earliest wins.
        assert!(attribute(&mut m, Some("b2"), 3_020_000, Seen::Promoted));
        assert!(attribute(&mut m, Some("b2"), 3_004_000, Seen::Promoted));
        assert!(attribute(&mut m, Some("b2"), 3_001_000, Seen::Failover));
        assert!(attribute(&mut m, Some("b2"), 3_500_000, Seen::Lost));
        assert!(
            attribute(&mut m, Some("b2"), 8_000_000, Seen::Promoted),
            "at the kill itself"
        );
        assert!(attribute(&mut m, Some("b3"), 7_000_000, Seen::Failover));
        assert_eq!(m[0].first_takeover_us, Some(3_004_000));
        assert_eq!(m[0].first_failover_us, Some(3_001_000));
        assert_eq!((m[0].promoted_takeovers, m[0].lost_takeovers), (2, 1));
        assert_eq!(m[1].first_failover_us, Some(7_000_000));
        assert_eq!(m[1].first_takeover_us, None);
        assert_eq!(m[2].first_takeover_us, Some(8_000_000));
        assert_eq!(m[2].promoted_takeovers, 1);
        // Naming no backend: the latest kill of any backend.
        assert!(attribute(&mut m, None, 5_000_000, Seen::Lost));
        assert_eq!(
            m[1].lost_takeovers, 1,
            "b3's kill at 4 s is the latest before 5 s"
        );
        assert!(
            !attribute(&mut m, None, 2_000_000, Seen::Lost),
            "before any kill"
        );
    }

    #[test]
    fn rows_give_milliseconds_after_the_kill_and_seconds_into_measurement() {
        let mut m = mark("b2", 4_000_000);
        m.first_failover_us = Some(4_000_500);
        m.first_takeover_us = Some(4_012_250);
        m.promoted_takeovers = 7;
        let r = row(&m, 1_000_000);
        assert_eq!(r.kill_t_s, 3.0);
        assert_eq!(r.first_failover_ms, Some(0.5));
        assert_eq!(r.first_takeover_ms, Some(12.25));
        assert_eq!(r.promoted_takeovers, 7);
        let r = row(&mark("b1", 500_000), 1_000_000);
        assert_eq!(r.kill_t_s, -0.5);
        assert_eq!((r.first_failover_ms, r.first_takeover_ms), (None, None));
    }

    #[test]
    fn the_shared_record_ignores_observations_before_any_kill() {
        let r = Recovery::default();
        r.seen(Some("b2"), 5, Seen::Promoted);
        assert!(r.rows(0).is_empty());
        r.kill("b2", 10);
        r.seen(Some("b2"), 15, Seen::Promoted);
        r.seen(Some("b2"), 12, Seen::Failover);
        let rows = r.rows(0);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].first_takeover_ms, Some(0.005));
        assert_eq!(rows[0].first_failover_ms, Some(0.002));
    }
}
