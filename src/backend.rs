//! Live per-backend state that outlives config snapshots: health, passive-failure count,
//! in-flight and request counters. Keyed by backend id in [`crate::state::Shared`], so a reload
//! neither resets health nor counters of a backend that stays.
//!
//! Reads on the request path are single atomic loads; the health machine sits behind a mutex
//! that only checks and ejections take.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::affinity::AdminState;
use crate::health::{HealthMachine, Transition};
use crate::sessions::SessionSketch;

struct HealthCell {
    machine: HealthMachine,
    ejected_at: Option<Instant>,
}

/// Live state of one backend.
pub struct BackendLive {
    id: Arc<str>,
    healthy: AtomicBool,
    health: Mutex<HealthCell>,
    connect_failures: AtomicU32,
    in_flight: AtomicI64,
    requests: AtomicU64,
    /// Responses by status class: index 0 for 1xx .. 4 for 5xx.
    statuses: [AtomicU64; 5],
    /// Requests that got no response from this backend (errors, timeouts).
    failures: AtomicU64,
    /// Admin state set through the admin API (0: none, the config's applies).
    admin_override: AtomicU8,
    /// Sessions pinned to this backend (new sessions and re-pins), since start.
    pins: AtomicU64,
    /// Distinct sessions served lately.
    sessions: SessionSketch,
    /// Unix time of the last request served (0: none yet).
    last_request_at: AtomicU64,
    /// Unix time this backend started draining (0: not draining).
    draining_since: AtomicU64,
    /// When it last became usable ([`epoch_ms`]; 0: since start), for slow start.
    up_since_ms: AtomicU64,
    /// Sessions pinned here lately, halving every second (`f64` bits), for least_loaded.
    recent_pins: AtomicU64,
    /// Requests per second over about the last 0.3 s (`f64` bits), set by the ticker.
    rate: AtomicU64,
}

/// Seconds since the Unix epoch on the wall clock (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds on a monotonic clock that starts with the process (never 0 once read).
pub fn epoch_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let e = EPOCH.get_or_init(Instant::now);
    u64::try_from(e.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

impl std::fmt::Debug for BackendLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLive")
            .field("id", &self.id)
            .field("healthy", &self.is_healthy())
            .field("in_flight", &self.in_flight())
            .field("requests", &self.requests())
            .finish()
    }
}

impl BackendLive {
    /// New live state for backend `id`, starting healthy or not.
    pub fn new(id: &str, up: bool, rise: u32, fall: u32) -> BackendLive {
        BackendLive {
            id: id.into(),
            healthy: AtomicBool::new(up),
            health: Mutex::new(HealthCell {
                machine: HealthMachine::new(up, rise, fall),
                ejected_at: None,
            }),
            connect_failures: AtomicU32::new(0),
            in_flight: AtomicI64::new(0),
            requests: AtomicU64::new(0),
            statuses: Default::default(),
            failures: AtomicU64::new(0),
            admin_override: AtomicU8::new(0),
            pins: AtomicU64::new(0),
            sessions: SessionSketch::default(),
            last_request_at: AtomicU64::new(0),
            draining_since: AtomicU64::new(0),
            up_since_ms: AtomicU64::new(0),
            recent_pins: AtomicU64::new(0f64.to_bits()),
            rate: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Sets the recent request rate (requests per second, smoothed over about 0.3 s).
    pub fn set_rate(&self, r: f64) {
        self.rate.store(r.to_bits(), Ordering::Relaxed);
    }

    /// The recent request rate.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    /// The load least_loaded weighs: requests in flight, plus a quarter of the recent pins,
    /// plus one per hundred requests a second of recent rate. In flight sees slow and stuck
    /// work at once; the rate sees the sessions already pinned here (heavy users) that in
    /// flight, at a moment, hardly shows when responses are fast; the pins see a burst of new
    /// sessions before their requests come.
    pub fn load(&self) -> f64 {
        const PIN_LOAD: f64 = 0.25;
        const PER_RATE: f64 = 0.01;
        self.in_flight().max(0) as f64
            + PIN_LOAD * f64::from_bits(self.recent_pins.load(Ordering::Relaxed))
            + PER_RATE * self.rate()
    }

    /// Halves the recent pins (once a second).
    pub fn decay_pins(&self) {
        let v = f64::from_bits(self.recent_pins.load(Ordering::Relaxed));
        self.recent_pins
            .store((v * 0.5).to_bits(), Ordering::Relaxed);
    }

    fn add_recent_pin(&self) {
        // Only this backend's requests add, on their worker threads; a lost update under a race
        // only makes the estimate a little low.
        let v = f64::from_bits(self.recent_pins.load(Ordering::Relaxed));
        self.recent_pins
            .store((v + 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Notes that the backend just became usable (recovered, or added by a reload): slow start
    /// counts from now.
    pub fn mark_up(&self) {
        self.up_since_ms.store(epoch_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the backend last became usable, if it did after start.
    pub fn up_for_ms(&self, now_ms: u64) -> Option<u64> {
        match self.up_since_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(now_ms.saturating_sub(t)),
        }
    }

    /// The admin state set through the admin API, if any.
    pub fn admin_override(&self) -> Option<AdminState> {
        match self.admin_override.load(Ordering::Relaxed) {
            1 => Some(AdminState::Active),
            2 => Some(AdminState::Draining),
            3 => Some(AdminState::Disabled),
            _ => None,
        }
    }

    /// Sets (or with `None` clears) the admin API's state for this backend.
    pub fn set_admin_override(&self, state: Option<AdminState>) {
        let v = match state {
            None => 0,
            Some(AdminState::Active) => 1,
            Some(AdminState::Draining) => 2,
            Some(AdminState::Disabled) => 3,
        };
        self.admin_override.store(v, Ordering::Relaxed);
    }

    /// Notes the effective admin state at unix time `now`: starts or ends the drain clock.
    pub fn note_admin_state(&self, state: AdminState, now: u64) {
        if state == AdminState::Draining {
            let _ = self.draining_since.compare_exchange(
                0,
                now.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.draining_since.store(0, Ordering::Relaxed);
        }
    }

    /// Unix time the drain started, if draining.
    pub fn draining_since(&self) -> Option<u64> {
        match self.draining_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Whether a draining backend has served nothing for `quiet` seconds up to unix time
    /// `now` (counted from the start of the drain at the earliest).
    pub fn drained(&self, now: u64, quiet: u64) -> bool {
        self.draining_since().is_some_and(|since| {
            let last = self.last_request_at.load(Ordering::Relaxed).max(since);
            now.saturating_sub(last) >= quiet
        })
    }

    /// Records a request of session `nonce` served at unix time `now`; `pinned_here` when the
    /// response pins the session here (a new session or a re-pin).
    pub fn record_session(&self, nonce: u64, now: u64, pinned_here: bool) {
        self.sessions.record(nonce);
        if self.last_request_at.load(Ordering::Relaxed) != now {
            self.last_request_at.store(now, Ordering::Relaxed);
        }
        if pinned_here {
            self.pins.fetch_add(1, Ordering::Relaxed);
            self.add_recent_pin();
        }
    }

    /// Sessions pinned here since start.
    pub fn pins(&self) -> u64 {
        self.pins.load(Ordering::Relaxed)
    }

    /// Distinct sessions served within roughly the last `max_idle` (an estimate).
    pub fn recent_sessions(&self) -> u64 {
        self.sessions.estimate()
    }

    /// Starts a new generation of the session estimate (every `max_idle`).
    pub fn rotate_sessions(&self) {
        self.sessions.rotate();
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the backend is healthy now.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn with_health<T>(&self, f: impl FnOnce(&mut HealthCell) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of plain data; the
        // machine is still consistent, so keep going.
        let mut cell = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut cell);
        self.healthy.store(cell.machine.is_up(), Ordering::Release);
        out
    }

    /// Feeds an active check result.
    pub fn check_result(&self, ok: bool) -> Option<Transition> {
        self.with_health(|c| {
            let t = c.machine.observe(ok);
            if t == Some(Transition::Up) {
                c.ejected_at = None;
                self.connect_failures.store(0, Ordering::Relaxed);
                self.mark_up();
            }
            t
        })
    }

    /// Records a failed connect; ejects the backend at `threshold` consecutive failures
    /// (0 never ejects).
    pub fn connect_failed(&self, threshold: u32, now: Instant) -> Option<Transition> {
        let n = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || n < threshold {
            return None;
        }
        self.with_health(|c| {
            let t = c.machine.eject();
            if t.is_some() {
                c.ejected_at = Some(now);
            }
            t
        })
    }

    /// Records a successful exchange: the consecutive connect-failure count starts over.
    pub fn connect_ok(&self) {
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
    }

    /// With active checks off: brings an ejected backend back once `after` has passed.
    pub fn restore_if_ejected_before(&self, cutoff: Instant) -> Option<Transition> {
        self.with_health(|c| match c.ejected_at {
            Some(at) if at <= cutoff => {
                c.ejected_at = None;
                self.connect_failures.store(0, Ordering::Relaxed);
                self.mark_up();
                c.machine.restore()
            }
            _ => None,
        })
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Responses received with status class `class` (1 to 5).
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

    /// Counts a response with `status`.
    pub fn record_status(&self, status: u16) {
        if let 100..=599 = status {
            self.statuses[usize::from(status / 100 - 1)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request that got no response.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Holds one in-flight request on a backend; released on drop (when the response body is done
/// or abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<BackendLive>);

impl InFlight {
    /// Starts a request on `live`.
    pub fn start(live: &Arc<BackendLive>) -> InFlight {
        live.in_flight.fetch_add(1, Ordering::Relaxed);
        live.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(live.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn drain_clock_and_drained_flag() {
        let b = BackendLive::new("a", true, 2, 3);
        assert!(!b.drained(1000, 60), "not draining");
        b.note_admin_state(AdminState::Draining, 1000);
        b.note_admin_state(AdminState::Draining, 1050);
        assert_eq!(b.draining_since(), Some(1000), "the clock starts once");
        assert!(!b.drained(1059, 60));
        assert!(b.drained(1060, 60));
        b.record_session(7, 1070, false);
        assert!(!b.drained(1100, 60), "a session came back");
        assert!(b.drained(1130, 60));
        b.note_admin_state(AdminState::Active, 1200);
        assert_eq!(b.draining_since(), None);
        assert!(!b.drained(5000, 60));
    }

    #[test]
    fn load_is_in_flight_plus_a_quarter_of_recent_pins_which_decay() {
        let b = Arc::new(BackendLive::new("a", true, 2, 3));
        let _g = InFlight::start(&b);
        for n in 0..4 {
            b.record_session(n, 10, true);
        }
        assert_eq!(b.load(), 2.0);
        b.decay_pins();
        assert_eq!(b.load(), 1.5);
        b.record_session(9, 11, false);
        assert_eq!(
            b.load(),
            1.5,
            "a request of a pinned session is not a new pin"
        );
    }

    #[test]
    fn admin_override_round_trips() {
        let b = BackendLive::new("a", true, 2, 3);
        assert_eq!(b.admin_override(), None);
        for s in [
            AdminState::Active,
            AdminState::Draining,
            AdminState::Disabled,
        ] {
            b.set_admin_override(Some(s));
            assert_eq!(b.admin_override(), Some(s));
        }
        b.set_admin_override(None);
        assert_eq!(b.admin_override(), None);
    }

    #[test]
    fn pins_count_only_pinning_responses() {
        let b = BackendLive::new("a", true, 2, 3);
        b.record_session(1, 10, true);
        b.record_session(1, 11, false);
        b.record_session(2, 12, true);
        assert_eq!(b.pins(), 2);
        assert_eq!(b.recent_sessions(), 2);
    }

    #[test]
    fn passive_ejection_needs_consecutive_failures() {
        let b = BackendLive::new("a", true, 2, 3);
        let now = Instant::now();
        assert_eq!(b.connect_failed(3, now), None);
        assert_eq!(b.connect_failed(3, now), None);
        b.connect_ok();
        assert_eq!(b.connect_failed(3, now), None);
        assert_eq!(b.connect_failed(3, now), None);
        assert_eq!(b.connect_failed(3, now), Some(Transition::Down));
        assert!(!b.is_healthy());
        assert_eq!(b.connect_failed(3, now), None, "logged once");
    }

    #[test]
    fn zero_threshold_never_ejects() {
        let b = BackendLive::new("a", true, 1, 1);
        for _ in 0..10 {
            assert_eq!(b.connect_failed(0, Instant::now()), None);
        }
        assert!(b.is_healthy());
    }

    #[test]
    fn an_ejected_backend_returns_after_rise_checks_or_the_ejection_time() {
        let b = BackendLive::new("a", true, 2, 3);
        let t0 = Instant::now();
        b.connect_failed(1, t0);
        assert_eq!(
            b.restore_if_ejected_before(t0 - Duration::from_millis(1)),
            None
        );
        assert_eq!(b.restore_if_ejected_before(t0), Some(Transition::Up));
        b.connect_failed(1, t0);
        assert_eq!(b.check_result(true), None);
        assert_eq!(b.check_result(true), Some(Transition::Up));
        assert!(b.is_healthy());
        assert_eq!(
            b.restore_if_ejected_before(t0),
            None,
            "a recovered backend is not ejected"
        );
    }

    #[test]
    fn in_flight_follows_guards_and_statuses_are_counted_by_class() {
        let b = Arc::new(BackendLive::new("a", true, 1, 1));
        let g1 = InFlight::start(&b);
        let g2 = InFlight::start(&b);
        assert_eq!(b.in_flight(), 2);
        drop(g1);
        assert_eq!(b.in_flight(), 1);
        drop(g2);
        assert_eq!((b.in_flight(), b.requests()), (0, 2));
        for s in [200, 204, 302, 404, 503, 99, 600] {
            b.record_status(s);
        }
        assert_eq!([1, 2, 3, 4, 5].map(|c| b.responses(c)), [0, 2, 1, 1, 1]);
    }
}
