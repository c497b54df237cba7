//! What least_loaded weighs besides the requests in flight: the sessions pinned to a backend
//! lately and its recent request rate.
//!
//! Pins are counted on the request path by the backend's per-worker pin counters
//! ([`super::Sessions::pins`]); this estimate keeps only what the maintenance task
//! ([`crate::maintain`]) sets at each tick: the decayed recent pins and the pin total they
//! include, and the rate. A reading adds the pins counted since the tick, undecayed, so a new
//! pin weighs at once and no update is ever lost. Reads no clock: the elapsed time comes in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::rate::decay_factor;

/// Half-life of the recent pins: a session pinned this long ago weighs half as much as one
/// pinned now.
///
/// Short on purpose: the pins only bridge the moment between a new session's placement and its
/// first requests showing in the rate (about 0.3 s). In the README's skew runs (2026-12-01, seeds
/// 1-3, two passes, on a loaded machine) a 100 ms half-life kept requests within 1.006-1.029 of
/// even, a 1 s one within 1.026-1.112, round robin 1.095-1.136: held for a second, the pins
/// outweigh the rate, and least_loaded evens out sessions rather than requests.
pub const PIN_HALF_LIFE: Duration = Duration::from_millis(100);

/// Load per recent pin: a new session is worth a quarter of a request in flight.
const PIN_LOAD: f64 = 0.25;

/// Load per request per second of recent rate.
const PER_RATE: f64 = 0.01;

/// The load estimate of one backend, apart from in flight.
#[derive(Debug)]
pub struct LoadEstimate {
    /// Sessions pinned here lately, decayed with [`PIN_HALF_LIFE`] up to the last tick, as
    /// `f64` bits.
    decayed_pins: AtomicU64,
    /// The pin total `decayed_pins` includes.
    pins_at_tick: AtomicU64,
    /// Requests per second over about the last 0.3 s
    /// ([`super::rate::FAST_RATE_TIME_CONSTANT`]).
    rate: AtomicU64,
}

impl Default for LoadEstimate {
    fn default() -> LoadEstimate {
        LoadEstimate {
            decayed_pins: AtomicU64::new(0f64.to_bits()),
            pins_at_tick: AtomicU64::new(0),
            rate: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl LoadEstimate {
    /// The load least_loaded weighs, given the requests in flight and the backend's pin total
    /// since start: in flight, plus a quarter of the recent pins, plus one per hundred requests
    /// a second of recent rate. In flight sees slow and stuck work at once; the rate sees the
    /// sessions already pinned here (heavy users) that in flight, at a moment, hardly shows
    /// when responses are fast; the pins see a burst of new sessions before their requests
    /// come.
    pub fn load(&self, in_flight: i64, pins_total: u64) -> f64 {
        in_flight.max(0) as f64 + PIN_LOAD * self.recent_pins(pins_total) + PER_RATE * self.rate()
    }

    /// Sessions pinned here lately (decayed), given the pin total since start: the pins
    /// decayed up to the last tick plus those counted since.
    pub fn recent_pins(&self, pins_total: u64) -> f64 {
        // A reading racing a tick may pair one tick's decayed value with the other tick's
        // total: a tick's new pins then count twice or not at all, for a moment.
        let since = pins_total.saturating_sub(self.pins_at_tick.load(Ordering::Relaxed));
        f64::from_bits(self.decayed_pins.load(Ordering::Relaxed)) + since as f64
    }

    /// At a tick: folds in the pins counted since the last one (`pins_total` is the total now)
    /// and decays the lot over `elapsed` by [`PIN_HALF_LIFE`].
    pub(crate) fn decay_pins(&self, pins_total: u64, elapsed: Duration) {
        let v = self.recent_pins(pins_total) * decay_factor(elapsed, PIN_HALF_LIFE);
        self.decayed_pins.store(v.to_bits(), Ordering::Relaxed);
        self.pins_at_tick.store(pins_total, Ordering::Relaxed);
    }

    /// Sets the recent request rate (requests per second).
    pub(crate) fn set_rate(&self, r: f64) {
        self.rate.store(r.to_bits(), Ordering::Relaxed);
    }

    /// The recent request rate (requests per second).
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_in_flight_plus_a_quarter_of_recent_pins_plus_a_hundredth_of_the_rate() {
        let l = LoadEstimate::default();
        assert_eq!(l.load(0, 0), 0.0);
        assert_eq!(
            l.load(-1, 0),
            0.0,
            "a transiently negative in flight counts as none"
        );
        assert_eq!(l.load(1, 4), 2.0, "four pins since start, none decayed yet");
        l.set_rate(300.0);
        assert_eq!(l.load(1, 4), 5.0);
    }

    #[test]
    fn pins_halve_once_per_half_life_in_one_step_or_many() {
        let l = LoadEstimate::default();
        l.decay_pins(8, PIN_HALF_LIFE);
        assert_eq!(l.recent_pins(8), 4.0);
        for _ in 0..4 {
            l.decay_pins(8, PIN_HALF_LIFE / 4);
        }
        assert!(
            (l.recent_pins(8) - 2.0).abs() < 1e-12,
            "{}",
            l.recent_pins(8)
        );
        l.decay_pins(8, Duration::ZERO);
        assert!((l.recent_pins(8) - 2.0).abs() < 1e-12, "no time, no decay");
    }

    #[test]
    fn pins_since_the_last_tick_count_whole_and_decay_from_the_next() {
        let l = LoadEstimate::default();
        l.decay_pins(10, PIN_HALF_LIFE);
        assert_eq!(l.recent_pins(10), 5.0);
        assert_eq!(l.recent_pins(13), 8.0, "three new pins weigh at once");
        l.decay_pins(13, PIN_HALF_LIFE);
        assert_eq!(l.recent_pins(13), 4.0);
        assert_eq!(
            l.recent_pins(12),
            4.0,
            "a total below the tick's adds nothing"
        );
    }
}
