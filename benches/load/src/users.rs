//! Simulated users: a seeded random source, the skewed number of requests a user makes, the
//! user's cookie jar, the affinity accounting of the user's responses (pin, re-pin,
//! violation), and the check of the session counter the harness's backends return (state
//! kept or lost).
//!
//! Pure: no I/O, no clock. Whether a pinned backend was usable is passed in by the caller.

use bytes::Bytes;
use http::HeaderValue;

/// A seeded generator (fastrand's wyrand). Not for secrets: it only has to make runs
/// reproducible.
#[derive(Debug, Clone)]
pub struct Rng(fastrand::Rng);

impl Rng {
    /// The generator for `stream` (a connection or thread index) of run `seed`: distinct streams
    /// of one seed are independent, and the same (seed, stream) always gives the same sequence.
    pub fn new(seed: u64, stream: u64) -> Rng {
        // One wyrand seed from the pair, mixed by wyrand's own output function: the pairs must
        // not share a starting point, as `seed ^ stream` would give (0, 1) and (1, 0).
        let scatter = |x: u64| fastrand::Rng::with_seed(x).u64(..);
        Rng(fastrand::Rng::with_seed(scatter(scatter(seed) ^ stream)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.u64(..)
    }

    /// A uniform value in (0, 1]: never 0, so it can be raised to a negative power.
    pub fn unit_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// How many requests a user makes: a Pareto (type I) distribution with scale `min` and shape
/// `alpha`, rounded down and capped at `max`. P(n >= x) = (min / x)^alpha, so with min 2 and
/// alpha 1.2 most users make 2 or 3 requests and about 1 in 110 makes 100 or more.
#[derive(Debug, Clone, Copy)]
pub struct RequestCount {
    min: u32,
    max: u32,
    alpha: f64,
}

impl RequestCount {
    /// Checks the parameters: 1 <= min <= max, alpha finite and > 0.
    pub fn pareto(min: u32, max: u32, alpha: f64) -> Result<RequestCount, String> {
        if min == 0 {
            return Err("--min-requests must be at least 1".into());
        }
        if max < min {
            return Err(format!(
                "--max-requests ({max}) must be at least --min-requests ({min})"
            ));
        }
        if !alpha.is_finite() || alpha <= 0.0 {
            return Err(format!(
                "--pareto-alpha must be a number greater than 0, not {alpha}"
            ));
        }
        Ok(RequestCount { min, max, alpha })
    }

    /// Every user makes exactly `n` requests.
    pub fn fixed(n: u32) -> RequestCount {
        RequestCount {
            min: n,
            max: n,
            alpha: 1.0,
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> u32 {
        if self.min == self.max {
            return self.min;
        }
        let x = f64::from(self.min) * rng.unit_open().powf(-1.0 / self.alpha);
        if x.is_finite() && x < f64::from(self.max) {
            (x as u32).clamp(self.min, self.max)
        } else {
            self.max
        }
    }
}

/// Most cookies a user keeps; a target that sets more only replaces the ones it already set.
pub const MAX_COOKIES: usize = 32;

/// A user's cookie jar: every `Set-Cookie` name=value is kept (attributes other than a
/// `Max-Age` of zero or less, which deletes, are ignored) and all are sent back in one `Cookie`
/// header. The header value is built once per change, not per request.
#[derive(Debug, Default, Clone)]
pub struct CookieJar {
    pairs: Vec<(Bytes, Bytes)>,
    header: Option<HeaderValue>,
}

impl CookieJar {
    /// Stores one `Set-Cookie` header value. Returns false when it has no `name=value`.
    pub fn store(&mut self, set_cookie: &[u8]) -> bool {
        let mut parts = set_cookie.split(|&b| b == b';');
        let Some(pair) = parts.next() else {
            return false;
        };
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return false;
        };
        let name = pair[..eq].trim_ascii();
        let value = pair[eq + 1..].trim_ascii();
        if name.is_empty() {
            return false;
        }
        let delete = parts.any(|attr| {
            let attr = attr.trim_ascii();
            attr.len() > 8
                && attr[..8].eq_ignore_ascii_case(b"max-age=")
                && matches!(std::str::from_utf8(&attr[8..]).ok().and_then(|v| v.parse::<i64>().ok()), Some(v) if v <= 0)
        });
        let at = self.pairs.iter().position(|(n, _)| n.as_ref() == name);
        match (at, delete) {
            (Some(i), true) => {
                self.pairs.remove(i);
            }
            (None, true) => return true,
            (Some(i), false) => {
                if self.pairs[i].1.as_ref() == value {
                    return true;
                }
                self.pairs[i].1 = Bytes::copy_from_slice(value);
            }
            (None, false) => {
                if self.pairs.len() >= MAX_COOKIES {
                    return true;
                }
                self.pairs
                    .push((Bytes::copy_from_slice(name), Bytes::copy_from_slice(value)));
            }
        }
        self.header = None;
        true
    }

    /// The `Cookie` header to send, or `None` when the jar is empty.
    pub fn header(&mut self) -> Option<HeaderValue> {
        if self.pairs.is_empty() {
            return None;
        }
        if self.header.is_none() {
            let mut buf =
                Vec::with_capacity(self.pairs.iter().map(|(n, v)| n.len() + v.len() + 3).sum());
            for (i, (n, v)) in self.pairs.iter().enumerate() {
                if i > 0 {
                    buf.extend_from_slice(b"; ");
                }
                buf.extend_from_slice(n);
                buf.push(b'=');
                buf.extend_from_slice(v);
            }
            // Bytes that came in a header value are valid in one, but a target may send
            // anything: an invalid value is simply not sent.
            self.header = HeaderValue::from_maybe_shared(Bytes::from(buf)).ok();
        }
        self.header.clone()
    }
}

/// What one response meant for the user's affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The response named no backend: the pin is unchanged.
    NoBackend,
    /// The user held no pin; it now holds this backend.
    Pinned,
    /// The user's pinned backend answered.
    Stayed,
    /// Another backend answered; `violation` when the pinned one was usable all along.
    Repinned { violation: bool },
}

/// Updates `pin` (the backend of the user's previous response) with the backend that `served`
/// this request. `pinned_usable(b)` tells whether backend `b` was usable for the whole request;
/// it is asked only when another backend answered.
pub fn observe<B: Copy + PartialEq>(
    pin: &mut Option<B>,
    served: Option<B>,
    pinned_usable: impl FnOnce(B) -> bool,
) -> Served {
    let Some(now) = served else {
        return Served::NoBackend;
    };
    let outcome = match *pin {
        None => Served::Pinned,
        Some(p) if p == now => Served::Stayed,
        Some(p) => Served::Repinned {
            violation: pinned_usable(p),
        },
    };
    *pin = Some(now);
    outcome
}

/// What one response's session counter (`x-session-count`) said about the session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateSeen {
    /// The response carried no counter: nothing to check.
    Untracked,
    /// The session's first counter: nothing to compare with yet.
    First,
    /// The counter went up: the state was kept. `first_check` on the session's first
    /// comparison.
    Kept { first_check: bool },
    /// The counter did not go up: the backend that answered did not have the session's
    /// state. `first_loss` the first time for this session.
    Lost { first_check: bool, first_loss: bool },
}

/// The last session counter a user saw. Requests of one user go one after another, so each
/// response's counter must be above the previous one's: one more, or more than one when a
/// request failed after the backend counted it (its response never came). Equal or lower
/// means the state was lost: the session started over on a backend that did not have it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCheck {
    last: Option<u64>,
    checked: bool,
    lost: bool,
}

impl SessionCheck {
    pub fn observe(&mut self, count: Option<u64>) -> StateSeen {
        let Some(now) = count else {
            return StateSeen::Untracked;
        };
        let Some(last) = self.last.replace(now) else {
            return StateSeen::First;
        };
        let first_check = !self.checked;
        self.checked = true;
        if now > last {
            StateSeen::Kept { first_check }
        } else {
            let first_loss = !self.lost;
            self.lost = true;
            StateSeen::Lost {
                first_check,
                first_loss,
            }
        }
    }
}

/// One simulated user.
#[derive(Debug)]
pub struct User {
    /// Requests still to make.
    pub remaining: u32,
    pub jar: CookieJar,
    /// Backend (thread-local index) of the previous response that named one.
    pub pin: Option<u16>,
    /// Whether a request was sent: the first one starts the user.
    pub started: bool,
    /// Whether a response was seen: the first one decides the session's backend.
    pub answered: bool,
    /// Never send cookies (`--fresh-only`).
    pub cookieless: bool,
    /// The session counter check.
    pub state: SessionCheck,
    /// When the previous response that named a backend arrived (µs since the run's epoch).
    pub answered_us: u64,
}

impl User {
    pub fn new(requests: u32, cookieless: bool) -> User {
        User {
            remaining: requests,
            jar: CookieJar::default(),
            pin: None,
            started: false,
            answered: false,
            cookieless,
            state: SessionCheck::default(),
            answered_us: 0,
        }
    }

    /// The `Cookie` header for the next request.
    pub fn cookie(&mut self) -> Option<HeaderValue> {
        if self.cookieless {
            None
        } else {
            self.jar.header()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_and_stream_give_the_same_sequence_and_streams_differ() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(7, 3), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(7, 3), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..5)
            .scan(Rng::new(7, 4), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut r = Rng::new(0, 0);
        for _ in 0..100_000 {
            let u = r.unit_open();
            assert!(u > 0.0 && u <= 1.0);
        }
    }

    #[test]
    fn neighbouring_streams_and_seeds_do_not_overlap() {
        // Distinct (seed, stream) pairs start far apart on wyrand's one cycle of 2^64 states.
        let mut seen = std::collections::HashSet::new();
        for (seed, stream) in (0..4).flat_map(|seed| (0..64).map(move |stream| (seed, stream))) {
            let mut r = Rng::new(seed, stream);
            for _ in 0..1000 {
                assert!(seen.insert(r.next_u64()), "seed {seed} stream {stream}");
            }
        }
    }

    #[test]
    fn pareto_samples_stay_within_min_and_max_and_are_skewed() {
        let d = RequestCount::pareto(2, 1000, 1.2).expect("valid");
        let mut r = Rng::new(1, 0);
        let n = 200_000;
        let s: Vec<u32> = (0..n).map(|_| d.sample(&mut r)).collect();
        assert!(s.iter().all(|&x| (2..=1000).contains(&x)));
        let twos = s.iter().filter(|&&x| x == 2).count() as f64 / n as f64;
        let big = s.iter().filter(|&&x| x >= 100).count() as f64 / n as f64;
        // P(n < 3) = 1 - (2/3)^1.2 = 0.385; P(n >= 100) = (2/100)^1.2 = 0.0091.
        assert!((twos - 0.385).abs() < 0.01, "{twos}");
        assert!((big - 0.0091).abs() < 0.002, "{big}");
        assert!(s.contains(&1000), "the cap is reached by the tail");
    }

    #[test]
    fn pareto_parameters_are_checked() {
        assert!(RequestCount::pareto(0, 10, 1.2).is_err());
        assert!(RequestCount::pareto(5, 4, 1.2).is_err());
        assert!(RequestCount::pareto(2, 4, 0.0).is_err());
        assert!(RequestCount::pareto(2, 4, f64::NAN).is_err());
        assert!(RequestCount::pareto(2, 4, f64::INFINITY).is_err());
        let d = RequestCount::pareto(3, 3, 0.5).expect("valid");
        assert_eq!(d.sample(&mut Rng::new(1, 1)), 3);
        assert_eq!(RequestCount::fixed(1).sample(&mut Rng::new(1, 1)), 1);
    }

    #[test]
    fn a_tiny_alpha_saturates_at_the_cap_instead_of_overflowing() {
        let d = RequestCount::pareto(1, 50, 0.01).expect("valid");
        let mut r = Rng::new(9, 9);
        assert!((0..10_000).all(|_| (1..=50).contains(&d.sample(&mut r))));
    }

    #[test]
    fn the_jar_keeps_every_cookie_and_sends_them_in_one_header() {
        let mut j = CookieJar::default();
        assert_eq!(j.header(), None);
        assert!(j.store(b"stickyd=abc; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400"));
        assert!(j.store(b" app = 1 "));
        assert_eq!(j.header().expect("set"), "stickyd=abc; app=1");
        assert!(j.store(b"stickyd=def; Path=/"));
        assert_eq!(j.header().expect("set"), "stickyd=def; app=1");
        assert!(j.store(b"app=; Max-Age=0"));
        assert_eq!(j.header().expect("set"), "stickyd=def");
        assert!(!j.store(b"no-equals-sign"));
        assert!(!j.store(b"=value"));
        assert_eq!(j.pairs.len(), 1);
    }

    #[test]
    fn the_jar_is_bounded() {
        let mut j = CookieJar::default();
        for i in 0..100 {
            assert!(j.store(format!("c{i}=v").as_bytes()));
        }
        assert_eq!(j.pairs.len(), MAX_COOKIES);
    }

    #[test]
    fn a_cookieless_user_never_sends_its_jar() {
        let mut u = User::new(1, true);
        u.jar.store(b"a=b");
        assert_eq!(u.cookie(), None);
        let mut u = User::new(1, false);
        u.jar.store(b"a=b");
        assert_eq!(u.cookie().expect("set"), "a=b");
    }

    #[test]
    fn a_counter_that_does_not_go_up_is_lost_state_counted_once_per_session() {
        let mut c = SessionCheck::default();
        assert_eq!(c.observe(None), StateSeen::Untracked);
        assert_eq!(c.observe(Some(1)), StateSeen::First);
        assert_eq!(
            c.observe(None),
            StateSeen::Untracked,
            "a 502 has no counter"
        );
        assert_eq!(c.observe(Some(2)), StateSeen::Kept { first_check: true });
        // A request the backend counted but whose response was lost: a gap is not a loss.
        assert_eq!(c.observe(Some(4)), StateSeen::Kept { first_check: false });
        // The session started over elsewhere.
        assert_eq!(
            c.observe(Some(1)),
            StateSeen::Lost {
                first_check: false,
                first_loss: true
            }
        );
        assert_eq!(c.observe(Some(2)), StateSeen::Kept { first_check: false });
        // Lost again (a second failover): counted as a loss, not as another lost session.
        assert_eq!(
            c.observe(Some(2)),
            StateSeen::Lost {
                first_check: false,
                first_loss: false
            }
        );
        // Lost at the first comparison.
        let mut c = SessionCheck::default();
        c.observe(Some(3));
        assert_eq!(
            c.observe(Some(1)),
            StateSeen::Lost {
                first_check: true,
                first_loss: true
            }
        );
    }

    #[test]
    fn repins_are_violations_only_while_the_pinned_backend_was_usable() {
        let mut pin = None;
        assert_eq!(observe(&mut pin, None, |_: u16| true), Served::NoBackend);
        assert_eq!(pin, None);
        assert_eq!(
            observe(&mut pin, Some(1), |_| panic!("not asked")),
            Served::Pinned
        );
        assert_eq!(
            observe(&mut pin, Some(1), |_| panic!("not asked")),
            Served::Stayed
        );
        assert_eq!(observe(&mut pin, None, |_| true), Served::NoBackend);
        assert_eq!(pin, Some(1), "a response without a backend keeps the pin");
        assert_eq!(
            observe(&mut pin, Some(2), |b| {
                assert_eq!(b, 1, "asked about the pinned backend");
                false
            }),
            Served::Repinned { violation: false }
        );
        assert_eq!(pin, Some(2));
        assert_eq!(
            observe(&mut pin, Some(3), |_| true),
            Served::Repinned { violation: true }
        );
        assert_eq!(pin, Some(3));
    }
}
