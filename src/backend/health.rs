//! A backend's live health: whether it is up now, and the evidence behind it (the rise/fall
//! machine, consecutive connect failures, when it was ejected, when it last became usable).
//!
//! Requests read one atomic flag ([`Health::is_up`]); only checks and ejections take the mutex
//! around the machine. Reads no clock: every time comes in as an argument.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crate::health::{HealthMachine, Transition};

#[derive(Debug)]
struct Cell {
    machine: HealthMachine,
    ejected_at: Option<Instant>,
}

/// Live health of one backend.
#[derive(Debug)]
pub struct Health {
    /// The machine's state, mirrored for lock-free reads on the request path.
    up: AtomicBool,
    cell: Mutex<Cell>,
    connect_failures: AtomicU32,
    /// When it last became usable (`crate::clock::epoch_ms`; 0: since start), for slow start.
    up_since_ms: AtomicU64,
}

impl Health {
    /// Health starting up or down, with the machine's `rise` and `fall`.
    pub fn new(up: bool, rise: u32, fall: u32) -> Health {
        Health {
            up: AtomicBool::new(up),
            cell: Mutex::new(Cell {
                machine: HealthMachine::new(up, rise, fall),
                ejected_at: None,
            }),
            connect_failures: AtomicU32::new(0),
            up_since_ms: AtomicU64::new(0),
        }
    }

    /// Whether the backend is healthy now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn with_cell<T>(&self, f: impl FnOnce(&mut Cell) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of plain data; the
        // machine is still consistent, so keep going.
        let mut cell = self.cell.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut cell);
        self.up.store(cell.machine.is_up(), Ordering::Release);
        out
    }

    /// Feeds an active check result; `now_ms` (`clock::epoch_ms`) starts slow start if the
    /// backend comes up.
    pub fn check_result(&self, ok: bool, now_ms: u64) -> Option<Transition> {
        self.with_cell(|c| {
            let t = c.machine.observe(ok);
            if t == Some(Transition::Up) {
                c.ejected_at = None;
                self.connect_failures.store(0, Ordering::Relaxed);
                self.mark_up(now_ms);
            }
            t
        })
    }

    /// Records a failed connect at `now`; ejects the backend at `threshold` consecutive
    /// failures (0 never ejects).
    pub(crate) fn connect_failed(&self, threshold: u32, now: Instant) -> Option<Transition> {
        let n = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || n < threshold {
            return None;
        }
        self.with_cell(|c| {
            let t = c.machine.eject();
            if t.is_some() {
                c.ejected_at = Some(now);
            }
            t
        })
    }

    /// Records a successful exchange: the consecutive connect-failure count starts over.
    pub(crate) fn connect_ok(&self) {
        // Load first: the common case (no failures) then writes nothing, so the cache line
        // stays shared between workers.
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
    }

    /// With active checks off: brings back a backend ejected at or before `cutoff`; `now_ms`
    /// starts slow start.
    pub(crate) fn restore_if_ejected_before(
        &self,
        cutoff: Instant,
        now_ms: u64,
    ) -> Option<Transition> {
        self.with_cell(|c| match c.ejected_at {
            Some(at) if at <= cutoff => {
                c.ejected_at = None;
                self.connect_failures.store(0, Ordering::Relaxed);
                self.mark_up(now_ms);
                c.machine.restore()
            }
            _ => None,
        })
    }

    /// Notes that the backend became usable at `now_ms` (recovered, or added by a reload):
    /// slow start counts from then.
    pub(crate) fn mark_up(&self, now_ms: u64) {
        self.up_since_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// Milliseconds from when the backend last became usable to `now_ms`, if it did after
    /// start.
    pub fn up_for_ms(&self, now_ms: u64) -> Option<u64> {
        match self.up_since_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(now_ms.saturating_sub(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn passive_ejection_needs_consecutive_failures() {
        let h = Health::new(true, 2, 3);
        let now = Instant::now();
        assert_eq!(h.connect_failed(3, now), None);
        assert_eq!(h.connect_failed(3, now), None);
        h.connect_ok();
        assert_eq!(h.connect_failed(3, now), None);
        assert_eq!(h.connect_failed(3, now), None);
        assert_eq!(h.connect_failed(3, now), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.connect_failed(3, now), None, "logged once");
    }

    #[test]
    fn zero_threshold_never_ejects() {
        let h = Health::new(true, 1, 1);
        for _ in 0..10 {
            assert_eq!(h.connect_failed(0, Instant::now()), None);
        }
        assert!(h.is_up());
    }

    #[test]
    fn an_ejected_backend_returns_after_rise_checks_or_the_ejection_time() {
        let h = Health::new(true, 2, 3);
        let t0 = Instant::now();
        h.connect_failed(1, t0);
        assert_eq!(
            h.restore_if_ejected_before(t0 - Duration::from_millis(1), 50),
            None
        );
        assert_eq!(h.restore_if_ejected_before(t0, 50), Some(Transition::Up));
        h.connect_failed(1, t0);
        assert_eq!(h.check_result(true, 60), None);
        assert_eq!(h.check_result(true, 70), Some(Transition::Up));
        assert!(h.is_up());
        assert_eq!(
            h.restore_if_ejected_before(t0, 80),
            None,
            "a recovered backend is not ejected"
        );
    }

    #[test]
    fn slow_start_counts_from_the_last_time_it_came_up() {
        let h = Health::new(false, 1, 1);
        assert_eq!(h.up_for_ms(1_000), None, "up since start: no ramp");
        assert_eq!(h.check_result(true, 400), Some(Transition::Up));
        assert_eq!(h.up_for_ms(1_000), Some(600));
        h.connect_failed(1, Instant::now());
        assert_eq!(h.check_result(true, 900), Some(Transition::Up));
        assert_eq!(h.up_for_ms(1_000), Some(100));
        h.mark_up(1_000);
        assert_eq!(h.up_for_ms(999), Some(0), "never negative");
    }
}
