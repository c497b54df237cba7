//! The sessions a backend served: how many were pinned to it since start, when it last served
//! one, and how many distinct ones it served lately.
//!
//! The last is estimated without a session table: a small HyperLogLog over session nonces (64
//! one-byte registers, about 13% standard error) in two generations. Each generation covers
//! `max_idle`; the estimate is the union of the current and the previous one, so a session seen
//! within the last `max_idle` is always counted and one idle longer is forgotten within
//! `2 * max_idle`.
//!
//! Recording is a few relaxed loads, cheap enough for every request: the pins are per-worker
//! counters ([`Shards`]), the last request time is stored only when the second changes, and a
//! sketch register is written only when it grows (rarely, once the sketch has seen a few
//! sessions), so the request path does no read-modify-write on a line other workers write.
//! Rotation is driven from outside (the maintenance task, [`crate::maintain`]), so this module
//! reads no clock.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use crate::metrics::{Counter, Shards};

const REGISTERS: usize = 64;

/// The sessions one backend served.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Distinct sessions served lately.
    sketch: SessionSketch,
    /// Sessions pinned here (new sessions and re-pins), since start, per worker.
    pins: Shards<Counter>,
    /// Unix time of the last request of a session served here (0: none yet).
    last_request_at: AtomicU64,
}

impl Sessions {
    /// Session state with pin counters for `workers` worker threads.
    pub fn new(workers: usize) -> Sessions {
        Sessions {
            pins: Shards::new(workers),
            ..Sessions::default()
        }
    }

    /// Records a request of session `nonce` served at unix time `now`; `pinned_here` when the
    /// response pins the session here (a new session or a re-pin).
    pub(crate) fn record(&self, nonce: u64, now: u64, pinned_here: bool) {
        self.sketch.record(nonce);
        // Load first: within a second nothing is written, so the line stays shared.
        if self.last_request_at.load(Ordering::Relaxed) != now {
            self.last_request_at.store(now, Ordering::Relaxed);
        }
        if pinned_here {
            self.pins.local().add(|c| c, 1);
        }
    }

    /// Sessions pinned here since start.
    pub fn pins(&self) -> u64 {
        self.pins.sum(|c| c)
    }

    /// Unix time of the last request of a session served here (0: none yet).
    pub fn last_request_at(&self) -> u64 {
        self.last_request_at.load(Ordering::Relaxed)
    }

    /// Distinct sessions served within roughly the last `max_idle` (an estimate).
    pub fn recent(&self) -> u64 {
        self.sketch.estimate()
    }

    /// Starts a new generation of the estimate (every `max_idle`).
    pub(crate) fn rotate(&self) {
        self.sketch.rotate();
    }
}

/// A two-generation distinct-count sketch.
#[derive(Debug)]
struct SessionSketch {
    gens: [[AtomicU8; REGISTERS]; 2],
    /// Index of the current generation.
    current: AtomicUsize,
}

impl Default for SessionSketch {
    fn default() -> SessionSketch {
        SessionSketch {
            gens: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU8::new(0))),
            current: AtomicUsize::new(0),
        }
    }
}

impl SessionSketch {
    /// Records a session by its nonce (already uniformly random: it is drawn from a PRNG).
    fn record(&self, nonce: u64) {
        // Mix anyway: nonces from forged-but-valid tokens cannot exist (the MAC covers them),
        // but a weak generator must not skew the registers.
        let h = mix(nonce);
        let idx = (h & (REGISTERS as u64 - 1)) as usize;
        let rest = h >> 6;
        // Rank: position of the first set bit in the remaining 58 bits, 1-based.
        let rank = (rest.trailing_zeros().min(58) + 1) as u8;
        let g = self.current.load(Ordering::Relaxed) & 1;
        let reg = &self.gens[g][idx];
        // Load first: a register only grows, and rarely once a few sessions were seen, so the
        // common case writes nothing and the line stays shared between workers.
        if reg.load(Ordering::Relaxed) < rank {
            reg.fetch_max(rank, Ordering::Relaxed);
        }
    }

    /// Starts a new generation: the oldest one is forgotten.
    fn rotate(&self) {
        let next = (self.current.load(Ordering::Relaxed) + 1) & 1;
        for r in &self.gens[next] {
            r.store(0, Ordering::Relaxed);
        }
        self.current.store(next, Ordering::Relaxed);
    }

    /// Estimated distinct sessions over both generations.
    fn estimate(&self) -> u64 {
        let regs: [u8; REGISTERS] = std::array::from_fn(|i| {
            self.gens[0][i]
                .load(Ordering::Relaxed)
                .max(self.gens[1][i].load(Ordering::Relaxed))
        });
        estimate(&regs)
    }
}

fn mix(x: u64) -> u64 {
    // splitmix64 finaliser.
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The HyperLogLog estimate of registers `regs`, with the small-range (linear counting)
/// correction.
fn estimate(regs: &[u8; REGISTERS]) -> u64 {
    let m = REGISTERS as f64;
    let zeros = regs.iter().filter(|&&r| r == 0).count();
    if zeros == REGISTERS {
        return 0;
    }
    let sum: f64 = regs.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let alpha = 0.709;
    let raw = alpha * m * m / sum;
    let e = if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    };
    e.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(n: u64, seed: u64) -> SessionSketch {
        let s = SessionSketch::default();
        for i in 0..n {
            s.record(seed.wrapping_mul(1_000_003).wrapping_add(i));
        }
        s
    }

    #[test]
    fn pins_count_only_pinning_responses_and_the_last_request_time_follows() {
        let s = Sessions::default();
        assert_eq!((s.pins(), s.last_request_at(), s.recent()), (0, 0, 0));
        s.record(1, 10, true);
        s.record(1, 11, false);
        s.record(2, 12, true);
        assert_eq!(s.pins(), 2);
        assert_eq!(s.recent(), 2);
        assert_eq!(s.last_request_at(), 12);
        s.rotate();
        s.rotate();
        assert_eq!(s.recent(), 0);
        assert_eq!(s.pins(), 2, "pins are since start");
    }

    #[test]
    fn empty_is_zero_and_one_is_about_one() {
        assert_eq!(SessionSketch::default().estimate(), 0);
        let s = sketch_of(1, 7);
        assert_eq!(s.estimate(), 1);
        // The same session many times is still one.
        for _ in 0..1000 {
            s.record(7 * 1_000_003);
        }
        assert_eq!(s.estimate(), 1);
    }

    #[test]
    fn estimates_are_within_forty_percent_across_scales() {
        // 13% standard error for 64 registers; 40% is three sigma.
        for (n, seed) in [(10, 1), (100, 2), (1_000, 3), (10_000, 4), (100_000, 5)] {
            let e = sketch_of(n, seed).estimate() as f64;
            let err = (e - n as f64).abs() / n as f64;
            assert!(err < 0.4, "{n} sessions estimated as {e}");
        }
    }

    #[test]
    fn sessions_are_forgotten_after_two_rotations() {
        let s = sketch_of(500, 9);
        s.rotate();
        assert!(s.estimate() > 250, "the previous generation still counts");
        s.rotate();
        assert_eq!(s.estimate(), 0, "two generations later it is gone");
        s.record(42);
        assert_eq!(s.estimate(), 1);
    }
}
