//! Backend selection algorithms: smooth weighted round robin for new sessions and weighted
//! rendezvous hashing for the deterministic fallback of a pinned session.
//!
//! Pure: the caller says which backends are eligible; nothing here reads health, time or I/O.
//! The hash is fixed (FNV-1a + splitmix64), never randomly seeded, because every stickyd
//! instance must compute the same fallback for the same session.

/// Stable 64-bit hash of a backend id, the same on every instance and every build.
pub fn id_hash(id: &str) -> u64 {
    key_hash(id.as_bytes())
}

/// Stable 64-bit hash of any key (a client address, a header value), the same on every
/// instance and every build.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
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
        let score = score(key, h, w);
        // `u == 1` gives -ln(u) == 0 and an infinite score: still a total order via `>`.
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// The first two eligible backends of `key`'s weighted rendezvous ranking, best first: the
/// first is [`rendezvous`]'s choice, the second is its choice with the first left out. A
/// session's backups (replication) are these, its home left out: identical on every instance
/// that knows the same ids and weights, and a lost backend's sessions spread over the rest in
/// proportion to weight.
pub fn rendezvous_top2(
    key: u64,
    hashes: &[u64],
    weights: &[u32],
    eligible: impl Fn(usize) -> bool,
) -> [Option<usize>; 2] {
    let mut best: [Option<(usize, f64)>; 2] = [None, None];
    for (i, (&h, &w)) in hashes.iter().zip(weights).enumerate() {
        if w == 0 || !eligible(i) {
            continue;
        }
        let score = score(key, h, w);
        // Ties keep the earlier index first, as `rendezvous` does.
        if best[0].is_none_or(|(_, s)| score > s) {
            best[1] = best[0];
            best[0] = Some((i, score));
        } else if best[1].is_none_or(|(_, s)| score > s) {
            best[1] = Some((i, score));
        }
    }
    best.map(|b| b.map(|(i, _)| i))
}

/// Backend `hash`'s weighted rendezvous score for `key` (`weight / -ln(u)`, see
/// [`rendezvous`]).
#[inline]
fn score(key: u64, hash: u64, weight: u32) -> f64 {
    let x = splitmix64(key ^ splitmix64(hash));
    // 53 random bits mapped to (0, 1]: never 0, so ln is finite.
    let u = ((x >> 11) + 1) as f64 / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
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

/// Least-loaded placement of a new session: weighted power of two choices with a bounded-load
/// cap. Two eligible backends are drawn with probability proportional to their weight (from
/// `rand`, two independent 32-bit halves), and the one with the lower load per unit of weight
/// wins, unless it is above its cap, `c` times its weighted share of the total load (plus the
/// session being placed); then the other, and if both are above, the least loaded of all
/// eligible backends under their cap, or else of all.
///
/// `loads[i]` is what backend `i` carries now (in-flight requests plus recent pins).
pub fn least_loaded(
    weights: &[u32],
    loads: &[f64],
    eligible: impl Fn(usize) -> bool,
    rand: u64,
    c: f64,
) -> Option<usize> {
    let cands: Vec<usize> = (0..weights.len())
        .filter(|&i| weights[i] > 0 && eligible(i))
        .collect();
    match cands.len() {
        0 => return None,
        1 => return Some(cands[0]),
        _ => {}
    }
    let total_w: f64 = cands.iter().map(|&i| f64::from(weights[i])).sum();
    let total_load: f64 = cands.iter().map(|&i| loads[i].max(0.0)).sum();
    let ratio = |i: usize| loads[i].max(0.0) / f64::from(weights[i]);
    let cap = |i: usize| c * (total_load + 1.0) * f64::from(weights[i]) / total_w;
    let under = |i: usize| loads[i].max(0.0) + 1.0 <= cap(i);
    // Draw by weight: a point in [0, total_w) from each half of `rand`.
    let draw = |r: u32| {
        let mut x = f64::from(r) / (f64::from(u32::MAX) + 1.0) * total_w;
        for &i in &cands {
            x -= f64::from(weights[i]);
            if x < 0.0 {
                return i;
            }
        }
        cands[cands.len() - 1]
    };
    let a = draw(rand as u32);
    let mut b = draw((rand >> 32) as u32);
    if b == a {
        // Another one, deterministically: the next eligible backend.
        let pos = cands.iter().position(|&i| i == a).unwrap_or(0);
        b = cands[(pos + 1) % cands.len()];
    }
    let (best, other) = if ratio(b) < ratio(a) { (b, a) } else { (a, b) };
    if under(best) {
        return Some(best);
    }
    if under(other) {
        return Some(other);
    }
    let least =
        |pool: &mut dyn Iterator<Item = usize>| pool.min_by(|&x, &y| ratio(x).total_cmp(&ratio(y)));
    least(&mut cands.iter().copied().filter(|&i| under(i)))
        .or_else(|| least(&mut cands.iter().copied()))
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
    fn least_loaded_avoids_a_busy_backend_and_respects_the_cap() {
        let w = [1, 1, 1];
        // Backend 0 is busy: it is never chosen while the others are idle.
        let loads = [50.0, 0.0, 0.0];
        for r in 0..200u64 {
            let rand = r.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_ne!(least_loaded(&w, &loads, |_| true, rand, 1.25), Some(0));
        }
        // Nothing eligible, one eligible.
        assert_eq!(least_loaded(&w, &loads, |_| false, 1, 1.25), None);
        assert_eq!(least_loaded(&w, &loads, |i| i == 0, 1, 1.25), Some(0));
    }

    #[test]
    fn least_loaded_spreads_like_the_weights_when_loads_follow_placements() {
        // Each placement adds one unit of load: the result tracks the weights closely.
        let w = [1, 2, 3, 2];
        let mut loads = [0.0; 4];
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..8000 {
            let i = least_loaded(&w, &loads, |_| true, rng.u64(..), 1.25).unwrap();
            loads[i] += 1.0;
        }
        for (i, &wi) in w.iter().enumerate() {
            let want = 8000.0 * f64::from(wi) / 8.0;
            assert!((loads[i] - want).abs() / want < 0.05, "{loads:?}");
        }
    }

    proptest! {
        #[test]
        fn least_loaded_picks_an_eligible_backend_under_its_cap_when_one_exists(
            loads in proptest::collection::vec(0.0f64..100.0, 1..12),
            mask in any::<u16>(),
            rand in any::<u64>(),
        ) {
            let n = loads.len();
            let w: Vec<u32> = (0..n).map(|i| 1 + (i as u32 % 3)).collect();
            let eligible = |i: usize| mask & (1 << i) != 0;
            let got = least_loaded(&w, &loads, eligible, rand, 1.25);
            let any = (0..n).any(eligible);
            prop_assert_eq!(got.is_some(), any);
            if let Some(i) = got {
                prop_assert!(eligible(i));
                let cands: Vec<usize> = (0..n).filter(|&i| eligible(i)).collect();
                let tw: f64 = cands.iter().map(|&i| f64::from(w[i])).sum();
                let tl: f64 = cands.iter().map(|&i| loads[i]).sum();
                let under = |j: usize| loads[j] + 1.0 <= 1.25 * (tl + 1.0) * f64::from(w[j]) / tw;
                if cands.iter().any(|&j| under(j)) {
                    prop_assert!(under(i), "picked {} over its cap", i);
                }
            }
        }
    }

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

    proptest! {
        /// The top two are rendezvous's choice, then its choice without the first: so a
        /// session's first backup is exactly the fallback it gets when its home is lost.
        #[test]
        fn the_top_two_are_rendezvous_then_rendezvous_without_the_first(
            key in any::<u64>(),
            weights in prop::collection::vec(0u32..5, 0..9),
            out in any::<u16>(),
        ) {
            let h = hashes(weights.len());
            let eligible = |i: usize| out & (1 << i) == 0;
            let [a, b] = rendezvous_top2(key, &h, &weights, eligible);
            prop_assert_eq!(a, rendezvous(key, &h, &weights, eligible));
            let without = |i: usize| eligible(i) && Some(i) != a;
            prop_assert_eq!(b, a.and_then(|_| rendezvous(key, &h, &weights, without)));
        }
    }

    #[test]
    fn a_lost_backends_first_backups_spread_evenly_over_the_rest() {
        // 6 equal backends; the sessions whose top choice is backend 0 take as first backup
        // (their fallback when 0 is lost) each of the other five about equally.
        let h = hashes(6);
        let w = [1u32; 6];
        let mut counts = [0usize; 6];
        let mut homed = 0;
        for key in 0..60_000u64 {
            let [first, second] = rendezvous_top2(key, &h, &w, |_| true);
            if first == Some(0) {
                homed += 1;
                counts[second.unwrap()] += 1;
            }
        }
        assert_eq!(counts[0], 0);
        let mean = homed as f64 / 5.0;
        for &c in &counts[1..] {
            assert!((c as f64 - mean).abs() < mean * 0.1, "{counts:?}");
        }
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
        fn workers_with_a_smooth_wrr_each_stay_within_two_picks_per_worker_of_the_weights(
            weights in proptest::collection::vec(1u32..8, 1..12),
            workers in 1usize..5,
            schedule in proptest::collection::vec(any::<u8>(), 1..400),
        ) {
            // Each worker runs its own selector, in any interleaving: after every pick, each
            // backend's process-wide count is within 2 * workers picks of its weighted share
            // (one sequence strays by at most about one pick: 1.12 in a search over these
            // weights), and within `workers` when the weights are equal.
            let total = i64::from(weights.iter().sum::<u32>());
            let mut sel: Vec<SmoothWrr> = (0..workers).map(|_| SmoothWrr::new(weights.len())).collect();
            let mut counts = vec![0i64; weights.len()];
            let equal = weights.iter().all(|&w| w == weights[0]);
            let bound = if equal { workers } else { 2 * workers } as i64;
            for (t, &who) in schedule.iter().enumerate() {
                let i = sel[usize::from(who) % workers].next(&weights, |_| true).unwrap();
                counts[i] += 1;
                let picks = t as i64 + 1;
                for (c, &w) in counts.iter().zip(&weights) {
                    let off = (c * total - picks * i64::from(w)).abs();
                    prop_assert!(off < bound * total, "{counts:?} after {picks} picks");
                }
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
