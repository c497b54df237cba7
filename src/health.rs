//! The health state machine: `rise` consecutive good checks bring a backend up, `fall`
//! consecutive bad ones take it down, and passive ejection takes it down at once.
//!
//! Pure: results are fed in by the checker (`checker.rs`) and the proxy; this module does no I/O
//! and reads no clock. It reports each transition exactly once so the caller logs it once.

/// A change of health state, reported once when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The backend became healthy.
    Up,
    /// The backend became unhealthy.
    Down,
}

/// Per-backend health state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthMachine {
    up: bool,
    rise: u32,
    fall: u32,
    ok_streak: u32,
    fail_streak: u32,
}

impl HealthMachine {
    /// A machine starting in `up` state. `rise` and `fall` are at least 1 (the config enforces it;
    /// 0 is treated as 1).
    pub fn new(up: bool, rise: u32, fall: u32) -> HealthMachine {
        HealthMachine {
            up,
            rise: rise.max(1),
            fall: fall.max(1),
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    /// Whether the backend is currently considered healthy.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Feeds one active check result; returns the transition it caused, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if !self.up && self.ok_streak >= self.rise {
                self.up = true;
                return Some(Transition::Up);
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if self.up && self.fail_streak >= self.fall {
                self.up = false;
                return Some(Transition::Down);
            }
        }
        None
    }

    /// Passive ejection (consecutive connect failures seen by the proxy): down now, and `rise`
    /// good checks are needed to come back.
    pub(crate) fn eject(&mut self) -> Option<Transition> {
        self.ok_streak = 0;
        self.fail_streak = self.fall;
        if self.up {
            self.up = false;
            Some(Transition::Down)
        } else {
            None
        }
    }

    /// Brings an ejected backend back without active checks (ejection time elapsed).
    pub(crate) fn restore(&mut self) -> Option<Transition> {
        self.ok_streak = 0;
        self.fail_streak = 0;
        if self.up {
            None
        } else {
            self.up = true;
            Some(Transition::Up)
        }
    }
}

/// An inclusive range of HTTP status codes that count as a passing check, e.g. `200-399`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest passing status.
    pub lo: u16,
    /// Highest passing status.
    pub hi: u16,
}

impl StatusRange {
    /// Whether `status` passes.
    pub fn contains(&self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }
}

impl std::str::FromStr for StatusRange {
    type Err = String;

    /// Parses `"200"` or `"200-399"`; codes must lie in 100..=599 with `lo <= hi`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let code = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!(
                    "invalid status code {:?} (expected 100 to 599)",
                    t.trim()
                )),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => {
                let c = code(s)?;
                (c, c)
            }
        };
        if lo > hi {
            return Err(format!(
                "status range {s:?} is empty (low end above high end)"
            ));
        }
        Ok(StatusRange { lo, hi })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn it_goes_down_after_exactly_fall_failures() {
        let mut m = HealthMachine::new(true, 2, 3);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), Some(Transition::Down));
        assert!(!m.is_up());
        assert_eq!(m.observe(false), None, "a transition is reported once");
    }

    #[test]
    fn it_comes_up_after_exactly_rise_successes() {
        let mut m = HealthMachine::new(false, 2, 3);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(true), Some(Transition::Up));
        assert_eq!(m.observe(true), None);
        assert!(m.is_up());
    }

    #[test]
    fn an_interrupted_streak_starts_over() {
        let mut m = HealthMachine::new(true, 2, 3);
        m.observe(false);
        m.observe(false);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), Some(Transition::Down));
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(true), Some(Transition::Up));
    }

    #[test]
    fn ejection_is_immediate_and_needs_rise_to_recover() {
        let mut m = HealthMachine::new(true, 3, 5);
        assert_eq!(m.eject(), Some(Transition::Down));
        assert_eq!(m.eject(), None);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(true), Some(Transition::Up));
    }

    #[test]
    fn restore_brings_an_ejected_backend_back_once() {
        let mut m = HealthMachine::new(true, 2, 2);
        m.eject();
        assert_eq!(m.restore(), Some(Transition::Up));
        assert_eq!(m.restore(), None);
    }

    #[test]
    fn status_ranges_parse_and_match() {
        let r: StatusRange = "200-399".parse().unwrap();
        assert!(r.contains(200) && r.contains(399) && !r.contains(400) && !r.contains(199));
        let one: StatusRange = "204".parse().unwrap();
        assert!(one.contains(204) && !one.contains(200));
        for bad in ["", "abc", "99", "600", "400-200", "200-", "-300", "2xx"] {
            assert!(bad.parse::<StatusRange>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// The machine matches a direct model: state flips exactly when the streak of results
        /// opposing the current state reaches its threshold.
        #[test]
        fn it_matches_the_rise_fall_model(rise in 1u32..5, fall in 1u32..5, start in any::<bool>(),
                                          results in proptest::collection::vec(any::<bool>(), 0..100)) {
            let mut m = HealthMachine::new(start, rise, fall);
            let (mut up, mut streak) = (start, 0u32);
            for ok in results {
                if ok != up { streak += 1 } else { streak = 0 }
                let threshold = if up { fall } else { rise };
                let expect = if streak >= threshold {
                    up = !up;
                    streak = 0;
                    Some(if up { Transition::Up } else { Transition::Down })
                } else { None };
                prop_assert_eq!(m.observe(ok), expect);
                prop_assert_eq!(m.is_up(), up);
            }
        }
    }
}
