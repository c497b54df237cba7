//! The maintenance task: ten times a second it brings every backend's load estimate up to date
//! (the request rate, fast for least_loaded and slow for the imbalance ratio, and the decay of
//! recent pins), sets the imbalance ratio of the usable backends, and every `max_idle` starts a
//! new generation of every backend's session estimate.
//!
//! [`Maintenance::tick`] does one round for an elapsed time it is given; [`run`] is the only
//! place here that reads the clock. It runs on the control runtime, never on a worker, and
//! takes no lock a request takes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::affinity::{AdminState, Outcome, Takeover};
use crate::backend::rate::RateEstimator;
use crate::series::{PoolReading, Reading};
use crate::state::{Shared, Snapshot};

/// How often [`run`] ticks: least_loaded needs a rate that follows heavy users within a
/// fraction of a second. The estimates do not depend on it (each step weighs its elapsed time).
pub const TICK: Duration = Duration::from_millis(100);

/// The maintenance task's own state: a rate estimator per backend id, and the time since the
/// session estimates last rotated.
#[derive(Debug, Default)]
pub struct Maintenance {
    rates: HashMap<Arc<str>, RateEstimator>,
    /// Time since each pool's session estimates last rotated, by pool name.
    since_rotation: HashMap<Arc<str>, Duration>,
    /// The slow rate of each backend of the snapshot this round (`None`: not usable).
    slow: Vec<Option<f64>>,
    /// The slow rates of one pool's usable backends, kept to reuse the allocation.
    usable: Vec<f64>,
}

impl Maintenance {
    /// One round over the backends of `snap`, `elapsed` after the previous one: updates each
    /// backend's rate and decays its pins, rotates a pool's session estimates once its
    /// `max_idle` has passed since their last rotation, and returns each pool's imbalance ratio
    /// of its usable backends' slow rates ([`crate::metrics::imbalance_ratio`]), in the
    /// snapshot's pool order.
    pub fn tick(&mut self, snap: &Snapshot, elapsed: Duration) -> Vec<f64> {
        self.slow.clear();
        for b in &snap.backends {
            let live = &b.live;
            live.decay_pins(elapsed);
            let total = live.counters.requests();
            let rate = self
                .rates
                .entry(b.id.clone())
                .or_insert_with(|| RateEstimator::new(total));
            rate.observe(total, elapsed);
            live.load.set_rate(rate.fast());
            let usable = live.health.is_up() && b.admin_state() == AdminState::Active;
            self.slow.push(usable.then(|| rate.slow()));
        }
        // Backends removed by a reload: their estimators go with them.
        self.rates
            .retain(|id, _| snap.backends.iter().any(|b| b.id == *id));
        self.since_rotation
            .retain(|name, _| snap.pools.iter().any(|p| p.name == *name));
        let mut ratios = Vec::with_capacity(snap.pools.len());
        for (ix, pool) in snap.pools.iter().enumerate() {
            let since = self.since_rotation.entry(pool.name.clone()).or_default();
            *since += elapsed;
            if *since >= snap.pool_config(ix).affinity.max_idle {
                *since = Duration::ZERO;
                for &g in &pool.members {
                    snap.backends[g].live.sessions.rotate();
                }
            }
            self.usable.clear();
            self.usable
                .extend(pool.members.iter().filter_map(|&g| self.slow[g]));
            ratios.push(crate::metrics::imbalance_ratio(&self.usable));
        }
        ratios
    }
}

/// How often the dashboard's series get a sample.
pub const SAMPLE: Duration = Duration::from_secs(1);

/// What the counters of `snap` and `metrics` read now, for the dashboard's series.
pub fn reading<'a>(
    snap: &'a Snapshot,
    metrics: &crate::metrics::Metrics,
    unix: u64,
) -> Reading<'a> {
    Reading {
        unix,
        latency: metrics.latency.cumulative(),
        pools: snap
            .pools
            .iter()
            .map(|p| PoolReading {
                name: &p.name,
                imbalance: p.live.imbalance(),
                repins: p.live.repins(),
                takeovers: Takeover::ALL.iter().map(|&t| p.live.takeovers(t)).sum(),
                outcomes: Outcome::ALL.map(|o| p.live.outcomes(o)),
                backends: p
                    .members
                    .iter()
                    .map(|&g| {
                        let b = &snap.backends[g];
                        let c = &b.live.counters;
                        (&*b.id, c.requests(), c.errors())
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Runs [`Maintenance::tick`] every [`TICK`] on the current snapshot, for ever, with the time
/// that actually passed (a late tick weighs more), and publishes each pool's imbalance ratio;
/// every [`SAMPLE`], adds a sample to the dashboard's series.
pub async fn run(shared: Arc<Shared>) {
    let mut m = Maintenance::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let mut next_sample = last;
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let snap = shared.load();
        let ratios = m.tick(&snap, now - last);
        last = now;
        for (pool, r) in snap.pools.iter().zip(ratios) {
            pool.live.set_imbalance(r);
        }
        if now >= next_sample {
            next_sample += SAMPLE;
            if next_sample < now {
                next_sample = now + SAMPLE;
            }
            let r = reading(&snap, &shared.metrics, crate::clock::unix_secs());
            let mut h = shared.history.lock().unwrap_or_else(|p| p.into_inner());
            h.record(&r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{InFlight, PIN_HALF_LIFE};
    use crate::config::{self, Config};

    fn config(ids: &[&str]) -> Config {
        let mut text = String::from("[affinity]\nkeys = [\"env:K\"]\nmax_idle = \"1s\"\n");
        for (n, id) in ids.iter().enumerate() {
            text.push_str(&format!(
                "[[backend]]\nid = \"{id}\"\naddress = \"127.0.0.1:{}\"\n",
                n + 1
            ));
        }
        config::parse_for_tests(&text)
    }

    fn requests(snap: &Snapshot, backend: usize, n: usize) {
        for _ in 0..n {
            drop(InFlight::start(&snap.backends[backend].live));
        }
    }

    #[test]
    fn the_fast_rate_follows_requests_and_the_imbalance_uses_the_slow_one() {
        let shared = Shared::new(config(&["a", "b"]));
        let snap = shared.load();
        let mut m = Maintenance::default();
        assert_eq!(m.tick(&snap, Duration::ZERO), [0.0], "no traffic yet");
        requests(&snap, 0, 30);
        requests(&snap, 1, 10);
        let imbalance = m.tick(&snap, TICK)[0];
        let (a, b) = (
            snap.backends[0].live.load.rate(),
            snap.backends[1].live.load.rate(),
        );
        // 300 and 100 requests a second, a 0.3 step toward each.
        assert!((a - 90.0).abs() < 0.5, "a {a}");
        assert!((b - 30.0).abs() < 0.5, "b {b}");
        assert!(
            (imbalance - 1.5).abs() < 1e-9,
            "max/mean of 3:1 is 1.5: {imbalance}"
        );
        for _ in 0..30 {
            m.tick(&snap, TICK);
        }
        assert!(snap.backends[0].live.load.rate() < 0.1, "idle for 3 s");
    }

    #[test]
    fn only_usable_backends_count_toward_the_imbalance() {
        let shared = Shared::new(config(&["a", "b", "c"]));
        let snap = shared.load();
        let mut m = Maintenance::default();
        m.tick(&snap, Duration::ZERO);
        requests(&snap, 0, 10);
        requests(&snap, 1, 10);
        requests(&snap, 2, 40);
        assert!(shared.set_admin("c", Some(AdminState::Draining), 1));
        assert!((m.tick(&snap, TICK)[0] - 1.0).abs() < 1e-9, "c is draining");
        assert!(shared.set_admin("c", None, 2));
        snap.backends[0]
            .live
            .health
            .connect_failed(1, std::time::Instant::now());
        requests(&snap, 1, 10);
        requests(&snap, 2, 10);
        let r = m.tick(&snap, TICK)[0];
        assert!(r > 1.0 && r < 2.0, "a is down; b and c count: {r}");
    }

    #[test]
    fn pins_decay_by_their_half_life_whatever_the_tick() {
        let shared = Shared::new(config(&["a"]));
        let snap = shared.load();
        let live = &snap.backends[0].live;
        for n in 0..8 {
            live.record_session(n, 1, true);
        }
        let mut m = Maintenance::default();
        let steps = (PIN_HALF_LIFE.as_millis() / 10).max(1) as u32;
        for _ in 0..steps {
            m.tick(&snap, PIN_HALF_LIFE / steps);
        }
        assert!(
            (live.recent_pins() - 4.0).abs() < 1e-9,
            "{}",
            live.recent_pins()
        );
        m.tick(&snap, PIN_HALF_LIFE);
        assert!((live.recent_pins() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn session_estimates_rotate_every_max_idle() {
        let shared = Shared::new(config(&["a"]));
        let snap = shared.load();
        let live = &snap.backends[0].live;
        live.record_session(1, 1, true);
        let mut m = Maintenance::default();
        for _ in 0..9 {
            m.tick(&snap, TICK);
        }
        assert_eq!(live.sessions.recent(), 1, "0.9 s: no rotation yet");
        m.tick(&snap, TICK);
        assert_eq!(
            live.sessions.recent(),
            1,
            "rotated once: the previous generation counts"
        );
        for _ in 0..10 {
            m.tick(&snap, TICK);
        }
        assert_eq!(live.sessions.recent(), 0, "rotated twice: forgotten");
    }

    #[test]
    fn a_reload_drops_the_estimators_of_removed_backends_and_starts_new_ones_at_zero() {
        let shared = Shared::new(config(&["a", "b"]));
        let mut m = Maintenance::default();
        m.tick(&shared.load(), TICK);
        assert_eq!(m.rates.len(), 2);
        let snap = shared.apply(config(&["b", "c"]));
        requests(&snap, 1, 50);
        m.tick(&snap, TICK);
        assert_eq!(m.rates.len(), 2);
        assert!(!m.rates.contains_key("a"));
        assert_eq!(
            snap.backends[1].live.load.rate(),
            0.0,
            "requests before c's first round are not a rate"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_publishes_rates_and_the_imbalance_as_time_passes() {
        let shared = Arc::new(Shared::new(config(&["a", "b"])));
        let task = tokio::spawn(run(shared.clone()));
        // Let the first (immediate) tick happen so the estimators start from the totals now.
        tokio::time::sleep(TICK / 2).await;
        let snap = shared.load();
        for _ in 0..20 {
            requests(&snap, 0, 20);
            requests(&snap, 1, 10);
            tokio::time::sleep(TICK).await;
        }
        let (a, b) = (
            snap.backends[0].live.load.rate(),
            snap.backends[1].live.load.rate(),
        );
        // 200 and 100 requests a second for 2 s: the fast rates have settled.
        assert!((a - 200.0).abs() < 5.0, "a {a}");
        assert!((b - 100.0).abs() < 5.0, "b {b}");
        let imbalance = shared.load().pools[0].live.imbalance();
        assert!((imbalance - 4.0 / 3.0).abs() < 0.01, "{imbalance}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            snap.backends[0].live.load.rate() < 0.01,
            "idle: the rate falls"
        );
        task.abort();
    }
}
