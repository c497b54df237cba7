//! Backend selection algorithms: smooth weighted round robin for new sessions and weighted
//! rendezvous hashing for the deterministic fallback of a pinned session.
//!
//! Pure: the caller says which backends are eligible; nothing here reads health, time or I/O.
//! The hash is fixed (FNV-1a + splitmix64), never randomly seeded, because every stickyd
//! instance must compute the same fallback for the same session.

/// Stable 64-bit hash of a backend id, the same on every instance and every build.
pub fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h)
}

/// The splitmix64 finaliser: a bijective mix with full avalanche.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Weighted rendezvous (highest random weight) choice of one eligible backend for `key`.
///
/// Each backend scores `weight / -ln(u)` with `u` uniform in (0, 1] derived from `(key, hash)`;
/// the highest score wins. When a backend leaves, only the keys it won move, and they spread
/// over the rest in proportion to weight. Returns `None` when nothing is eligible.
pub fn rendezvous(
    key: u64,
    hashes: &[u64],
    weights: &[u32],
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (&h, &w)) in hashes.iter().zip(weights).enumerate() {
        if w == 0 || !eligible(i) {
            continue;
        }
        let x = splitmix64(key ^ splitmix64(h));
        // 53 random bits mapped to (0, 1]: never 0, so ln is finite.
        let u = ((x >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let score = f64::from(w) / -u.ln();
        // `u == 1` gives -ln(u) == 0 and an infinite score: still a total order via `>`.
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// Smooth weighted round robin (the nginx algorithm): over any window of `sum(weights)` picks
/// each backend is chosen `weight` times, interleaved rather than in bursts.
#[derive(Debug, Clone, Default)]
pub struct SmoothWrr {
    current: Vec<i64>,
}

impl SmoothWrr {
    /// A selector for `n` backends.
    pub fn new(n: usize) -> SmoothWrr {
        SmoothWrr {
            current: vec![0; n],
        }
    }

    /// Picks the next eligible backend. Ineligible backends neither gain nor lose credit, so the
    /// eligible ones keep their relative weights. Returns `None` when nothing is eligible.
    pub fn next(&mut self, weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.current.len() != weights.len() {
            self.current = vec![0; weights.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 || !eligible(i) {
                continue;
            }
            let w = i64::from(w);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

/// Scale of [`ramp_weight`]: a backend out of slow start weighs `weight * RAMP_SCALE`.
pub const RAMP_SCALE: u32 = 1000;

/// The weight for new sessions of a backend `elapsed_ms` into a slow start of `slow_start_ms`:
/// a linear ramp from 1 to `weight * RAMP_SCALE` (never 0, so a recovering backend still gets
/// an occasional new session). Out of slow start (or with it off) the full scaled weight.
pub fn ramp_weight(weight: u32, elapsed_ms: Option<u64>, slow_start_ms: u64) -> u32 {
    let full = u64::from(weight) * u64::from(RAMP_SCALE);
    let w = match elapsed_ms {
        Some(e) if slow_start_ms > 0 && e < slow_start_ms => (full * e / slow_start_ms).max(1),
        _ => full,
    };
    u32::try_from(w).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slow_start_ramps_linearly_from_one_to_full() {
        assert_eq!(ramp_weight(3, None, 10_000), 3000);
        assert_eq!(ramp_weight(3, Some(0), 10_000), 1);
        assert_eq!(ramp_weight(3, Some(5_000), 10_000), 1500);
        assert_eq!(ramp_weight(3, Some(10_000), 10_000), 3000);
        assert_eq!(ramp_weight(3, Some(99_999), 10_000), 3000);
        assert_eq!(ramp_weight(3, Some(5), 0), 3000, "off");
    }

    #[test]
    fn a_ramping_backend_gets_its_share_of_new_sessions() {
        // b recovers at t = 0 with slow start 10 s: over the first second it gets about 5% of
        // what a (same weight) gets, halfway about half.
        let mut rr = SmoothWrr::new(2);
        let share = |rr: &mut SmoothWrr, elapsed: u64| {
            let w = [
                ramp_weight(1, None, 10_000),
                ramp_weight(1, Some(elapsed), 10_000),
            ];
            let picks: Vec<usize> = (0..2000).filter_map(|_| rr.next(&w, |_| true)).collect();
            picks.iter().filter(|&&i| i == 1).count() as f64 / picks.len() as f64
        };
        let early = share(&mut rr, 500);
        let half = share(&mut rr, 5_000);
        let done = share(&mut rr, 10_000);
        assert!(early < 0.06, "{early}");
        assert!((half - 1.0 / 3.0).abs() < 0.01, "{half}");
        assert!((done - 0.5).abs() < 0.01, "{done}");
    }

    proptest! {
        #[test]
        fn ramps_never_decrease_never_vanish_and_never_exceed_full(
            w in 1u32..=1000, ss in 1u64..3_600_000, a in 0u64..4_000_000, b in 0u64..4_000_000
        ) {
            let (lo, hi) = (a.min(b), a.max(b));
            let (x, y) = (ramp_weight(w, Some(lo), ss), ramp_weight(w, Some(hi), ss));
            prop_assert!(x >= 1 && x <= y && y <= w * RAMP_SCALE);
        }
    }

    fn hashes(n: usize) -> Vec<u64> {
        (0..n).map(|i| id_hash(&format!("app-{i}"))).collect()
    }

    #[test]
    fn wrr_follows_the_nginx_smooth_order() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        let mut s = SmoothWrr::new(3);
        let picks: Vec<usize> = (0..7)
            .map(|_| s.next(&[5, 1, 1], |_| true).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn wrr_equal_weights_is_plain_round_robin() {
        let mut s = SmoothWrr::new(3);
        let picks: Vec<usize> = (0..6)
            .map(|_| s.next(&[1, 1, 1], |_| true).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn wrr_skips_ineligible_and_keeps_the_rest_in_proportion() {
        let mut s = SmoothWrr::new(3);
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[s.next(&[3, 1, 5], |i| i != 2).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100, 0]);
    }

    #[test]
    fn wrr_returns_none_when_nothing_is_eligible() {
        let mut s = SmoothWrr::new(2);
        assert_eq!(s.next(&[1, 1], |_| false), None);
        assert_eq!(s.next(&[0, 0], |_| true), None);
    }

    #[test]
    fn rendezvous_is_deterministic_and_order_independent() {
        let h = hashes(5);
        let w = [1u32; 5];
        let mut rev_h = h.clone();
        rev_h.reverse();
        for key in 0..1000u64 {
            let a = rendezvous(key, &h, &w, |_| true).unwrap();
            let b = rendezvous(key, &rev_h, &w, |_| true).unwrap();
            assert_eq!(h[a], rev_h[b], "key {key}");
        }
    }

    #[test]
    fn rendezvous_spreads_evenly() {
        let h = hashes(4);
        let w = [1u32; 4];
        let mut counts = [0u32; 4];
        let n = 40_000u64;
        for key in 0..n {
            counts[rendezvous(splitmix64(key), &h, &w, |_| true).unwrap()] += 1;
        }
        for c in counts {
            // 10k expected each; 5 sigma is about 430.
            assert!((9_500..=10_500).contains(&c), "counts {counts:?}");
        }
    }

    #[test]
    fn rendezvous_honours_weights() {
        let h = hashes(2);
        let mut counts = [0u32; 2];
        for key in 0..30_000u64 {
            counts[rendezvous(splitmix64(key), &h, &[1, 2], |_| true).unwrap()] += 1;
        }
        // Expected 10k / 20k.
        assert!((9_400..=10_600).contains(&counts[0]), "counts {counts:?}");
    }

    #[test]
    fn rendezvous_moves_only_the_keys_of_a_backend_that_leaves() {
        let h = hashes(5);
        let w = [1u32; 5];
        let mut moved_to = [0u32; 5];
        for key in 0..20_000u64 {
            let key = splitmix64(key);
            let before = rendezvous(key, &h, &w, |_| true).unwrap();
            let after = rendezvous(key, &h, &w, |i| i != 2).unwrap();
            if before != 2 {
                assert_eq!(before, after, "a key not on the leaving backend moved");
            } else {
                moved_to[after] += 1;
            }
        }
        assert_eq!(moved_to[2], 0);
        let moved: u32 = moved_to.iter().sum();
        for (i, c) in moved_to.iter().enumerate() {
            if i != 2 {
                // The leaving backend's ~4000 keys spread about evenly over the other four.
                assert!(
                    *c * 4 > moved * 3 / 4 && *c * 4 < moved * 5 / 4,
                    "{moved_to:?}"
                );
            }
        }
    }

    #[test]
    fn rendezvous_returns_none_when_nothing_is_eligible() {
        assert_eq!(rendezvous(7, &hashes(3), &[1, 1, 1], |_| false), None);
        assert_eq!(rendezvous(7, &[], &[], |_| true), None);
    }

    #[test]
    fn id_hash_is_stable_across_builds() {
        // Pinned values: changing the hash would move every fallback in a mixed-version fleet.
        assert_eq!(id_hash("app-1"), id_hash("app-1"));
        assert_ne!(id_hash("app-1"), id_hash("app-2"));
        assert_eq!(id_hash(""), splitmix64(0xcbf2_9ce4_8422_2325));
    }

    proptest! {
        #[test]
        fn selection_never_returns_an_ineligible_backend_while_one_is_eligible(
            weights in proptest::collection::vec(1u32..10, 1..40),
            mask in any::<u64>(),
            key in any::<u64>(),
            rounds in 1usize..50,
        ) {
            let n = weights.len();
            let eligible = |i: usize| mask & (1 << (i % 64)) != 0;
            let any_eligible = (0..n).any(eligible);
            let h = hashes(n);
            let r = rendezvous(key, &h, &weights, eligible);
            prop_assert_eq!(r.is_some(), any_eligible);
            if let Some(i) = r { prop_assert!(eligible(i)); }
            let mut s = SmoothWrr::new(n);
            for _ in 0..rounds {
                let p = s.next(&weights, eligible);
                prop_assert_eq!(p.is_some(), any_eligible);
                if let Some(i) = p { prop_assert!(eligible(i)); }
            }
        }

        #[test]
        fn wrr_gives_each_backend_exactly_its_weight_per_cycle(
            weights in proptest::collection::vec(1u32..8, 1..12),
        ) {
            let total: u32 = weights.iter().sum();
            let mut s = SmoothWrr::new(weights.len());
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..total {
                counts[s.next(&weights, |_| true).unwrap()] += 1;
            }
            prop_assert_eq!(counts, weights);
        }
    }
}
