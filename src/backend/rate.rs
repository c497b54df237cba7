//! The arithmetic that keeps load estimates current: exponentially weighted moving averages of
//! request rates, and exponential decay by half-life.
//!
//! Pure: plain numbers, no atomics, no clock. The elapsed time comes in as an argument and the
//! weights are worked out from it, so the results do not depend on how often the caller ticks
//! (a tick twice as long weighs twice as much).

use std::time::Duration;

/// Time constant of the fast rate, the one least_loaded weighs: it follows a backend that just
/// took heavy users within a fraction of a second. At a 100 ms tick it weighs the newest tick
/// 0.30.
pub const FAST_RATE_TIME_CONSTANT: Duration = Duration::from_millis(280);

/// Time constant of the slow rate, the input of the imbalance ratio: steady over seconds. At a
/// 100 ms tick it weighs the newest tick 0.01.
pub const SLOW_RATE_TIME_CONSTANT: Duration = Duration::from_secs(10);

/// The factor that decays a quantity with half-life `half_life` over `elapsed`: 0.5 after one
/// half-life, 0.25 after two, 1 after none.
pub fn decay_factor(elapsed: Duration, half_life: Duration) -> f64 {
    if half_life.is_zero() {
        return 0.0;
    }
    0.5f64.powf(elapsed.as_secs_f64() / half_life.as_secs_f64())
}

/// An exponentially weighted moving average of an event rate (events per second) with a time
/// constant: a step change in the rate is followed to 63% after one time constant, whatever the
/// lengths of the observations in between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    time_constant: f64,
    value: f64,
}

impl Ewma {
    /// An average at 0 with time constant `time_constant` (seconds, at least 1 µs).
    pub fn new(time_constant: Duration) -> Ewma {
        Ewma {
            time_constant: time_constant.as_secs_f64().max(1e-6),
            value: 0.0,
        }
    }

    /// Folds in `count` events seen over the last `elapsed`. Nothing happens for a zero
    /// `elapsed` (the caller keeps the count for the next observation).
    pub fn observe(&mut self, count: u64, elapsed: Duration) {
        let dt = elapsed.as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let sample = count as f64 / dt;
        let weight = 1.0 - (-dt / self.time_constant).exp();
        self.value += weight * (sample - self.value);
    }

    /// The average rate, in events per second.
    pub fn value(&self) -> f64 {
        self.value
    }
}

/// A backend's request rate from its running request total, fast and slow.
#[derive(Debug, Clone, PartialEq)]
pub struct RateEstimator {
    last_total: u64,
    fast: Ewma,
    slow: Ewma,
}

impl RateEstimator {
    /// An estimator that starts counting from `total` requests (at rate 0).
    pub fn new(total: u64) -> RateEstimator {
        RateEstimator {
            last_total: total,
            fast: Ewma::new(FAST_RATE_TIME_CONSTANT),
            slow: Ewma::new(SLOW_RATE_TIME_CONSTANT),
        }
    }

    /// Takes the request total `total` seen `elapsed` after the previous one. A total below the
    /// previous one counts as no requests.
    pub fn observe(&mut self, total: u64, elapsed: Duration) {
        if elapsed.is_zero() {
            return;
        }
        let n = total.saturating_sub(self.last_total);
        self.last_total = total;
        self.fast.observe(n, elapsed);
        self.slow.observe(n, elapsed);
    }

    /// Requests per second over about the last [`FAST_RATE_TIME_CONSTANT`].
    pub fn fast(&self) -> f64 {
        self.fast.value()
    }

    /// Requests per second over about the last [`SLOW_RATE_TIME_CONSTANT`].
    pub fn slow(&self) -> f64 {
        self.slow.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TICK: Duration = Duration::from_millis(100);

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn decay_halves_once_per_half_life_whatever_the_steps() {
        let hl = Duration::from_secs(1);
        assert_eq!(decay_factor(Duration::ZERO, hl), 1.0);
        assert_eq!(decay_factor(hl, hl), 0.5);
        assert_eq!(decay_factor(2 * hl, hl), 0.25);
        let ten_ticks = (0..10).fold(1.0, |v, _| v * decay_factor(TICK, hl));
        assert!(close(ten_ticks, 0.5), "ten 100 ms ticks halve: {ten_ticks}");
        assert_eq!(decay_factor(TICK, Duration::ZERO), 0.0);
    }

    #[test]
    fn at_a_100ms_tick_the_weights_are_the_ones_tuned_by_the_skew_runs() {
        // The README's skew runs tuned these as per-tick weights 0.3 and 0.01.
        let mut fast = Ewma::new(FAST_RATE_TIME_CONSTANT);
        fast.observe(100, TICK);
        assert!(
            (fast.value() / 1000.0 - 0.3).abs() < 0.001,
            "{}",
            fast.value()
        );
        let mut slow = Ewma::new(SLOW_RATE_TIME_CONSTANT);
        slow.observe(100, TICK);
        assert!(
            (slow.value() / 1000.0 - 0.01).abs() < 0.0001,
            "{}",
            slow.value()
        );
    }

    #[test]
    fn a_steady_rate_is_reached_and_an_idle_backend_falls_to_zero() {
        let mut r = RateEstimator::new(5_000);
        let mut total = 5_000;
        // Two minutes: twelve slow time constants.
        for _ in 0..1_200 {
            total += 50;
            r.observe(total, TICK);
        }
        assert!((r.fast() - 500.0).abs() < 0.01, "fast {}", r.fast());
        assert!((r.slow() - 500.0).abs() < 1.0, "slow {}", r.slow());
        for _ in 0..40 {
            r.observe(total, TICK);
        }
        assert!(r.fast() < 0.01, "fast follows within seconds: {}", r.fast());
        assert!(r.slow() > 300.0, "slow does not: {}", r.slow());
    }

    #[test]
    fn a_zero_interval_keeps_its_requests_for_the_next_observation() {
        let mut a = RateEstimator::new(0);
        a.observe(30, Duration::ZERO);
        a.observe(60, TICK);
        let mut b = RateEstimator::new(0);
        b.observe(60, TICK);
        assert_eq!(a, b);
    }

    #[test]
    fn a_total_that_goes_backwards_counts_as_no_requests() {
        let mut r = RateEstimator::new(100);
        r.observe(40, TICK);
        assert_eq!(r.fast(), 0.0);
        r.observe(140, TICK);
        assert!(r.fast() > 0.0, "counting resumes from the lower total");
    }

    proptest! {
        #[test]
        fn at_a_steady_rate_the_tick_length_does_not_matter(
            start in 0u64..5_000,
            per_tick in 0u64..10_000,
            ms in 1u64..1_000,
            split in 2u32..10,
        ) {
            // `split` ticks of `ms` with `per_tick` requests each, or one tick as long as all of
            // them with all the requests: the same rate, so the same average.
            let tick = Duration::from_millis(ms);
            let mut warm = Ewma::new(FAST_RATE_TIME_CONSTANT);
            warm.observe(start, Duration::from_secs(1));
            let (mut many, mut one) = (warm, warm);
            for _ in 0..split {
                many.observe(per_tick, tick);
            }
            one.observe(per_tick * u64::from(split), tick * split);
            let scale = many.value().abs().max(one.value().abs()).max(1.0);
            prop_assert!((many.value() - one.value()).abs() <= 1e-9 * scale,
                "{} vs {}", many.value(), one.value());
        }

        #[test]
        fn decay_over_a_whole_equals_decay_over_its_parts(
            a in 0u64..10_000, b in 0u64..10_000, hl in 1u64..10_000,
        ) {
            let hl = Duration::from_millis(hl);
            let (a, b) = (Duration::from_millis(a), Duration::from_millis(b));
            let parts = decay_factor(a, hl) * decay_factor(b, hl);
            let whole = decay_factor(a + b, hl);
            prop_assert!((parts - whole).abs() <= 1e-12);
            prop_assert!((0.0..=1.0).contains(&whole));
        }
    }
}
