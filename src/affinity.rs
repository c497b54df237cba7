//! The affinity decision: given what the request's token says, the state of the pool and the
//! time, which backend serves the request and which token (if any) the response sets.
//!
//! Pure: time, randomness and the pool's live state are passed in. The proxy calls [`route`]
//! once per attempt; a retry calls it again with the failed backend excluded, so the token it
//! issues always names the backend that actually served.

use crate::balance;
use crate::token::{Claims, Invalid, Verified};

/// What stickyd does with a valid token whose backend cannot take the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPinnedDown {
    /// Serve from the deterministic fallback and pin the session there (new token).
    Repin,
    /// Serve from the fallback but keep the token, so the client returns home on recovery.
    Return,
    /// Answer 503.
    Fail,
}

/// What stickyd does when no backend is usable for a new placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllDown {
    /// 503 with Retry-After.
    Fail,
    /// Try any backend that is not disabled, ignoring health.
    Open,
}

/// Lifetime and fallback policy, all times in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Sliding idle limit since `last_seen`.
    pub max_idle: u32,
    /// Absolute limit since `issued_at`.
    pub max_life: u32,
    /// A valid token older than this since `last_seen` is re-issued with a new `last_seen`.
    pub refresh_after: u32,
    /// Allowed clock skew for tokens dated in the future.
    pub skew: u32,
    /// See [`OnPinnedDown`].
    pub on_pinned_down: OnPinnedDown,
    /// See [`AllDown`].
    pub all_down: AllDown,
    /// New sessions are pinned when the hash of their nonce is below this (`u64::MAX`: all of
    /// them); the others get an unpinned token and are placed anew on every request.
    pub sticky_below: u64,
}

impl Policy {
    /// Whether a new session with this nonce is pinned (see `sticky_below`).
    pub fn pins(&self, nonce: u64) -> bool {
        self.sticky_below == u64::MAX || balance::key_hash(&nonce.to_le_bytes()) < self.sticky_below
    }
}

/// The affinity outcome of a request, counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A valid token, served by its backend, no refresh due.
    Valid,
    /// No token: a new session.
    New,
    /// A valid token, served by its backend, re-issued with a new `last_seen` (or new key).
    Refreshed,
    /// Idle longer than `max_idle`.
    ExpiredIdle,
    /// Older than `max_life`.
    ExpiredLife,
    /// Dated in the future beyond the skew allowance.
    Future,
    /// Not a token at all (length, encoding, version).
    Malformed,
    /// MAC mismatch.
    BadMac,
    /// Signed by a key that is not in the ring.
    UnknownKey,
    /// Valid, but its backend tag matches no configured backend.
    UnknownBackend,
    /// Valid, but its backend cannot take the request: served by the fallback.
    BackendDown,
    /// Valid, served by its backend, which is draining.
    Draining,
    /// No token: placed by a hash of the client address or a header (`ip` and trusted
    /// `header` modes).
    Hashed,
    /// A session left unpinned by `sticky_fraction`: placed anew on every request.
    Unpinned,
}

impl Outcome {
    /// Every outcome, in a fixed order (metrics index).
    pub const ALL: [Outcome; 14] = [
        Outcome::Valid,
        Outcome::New,
        Outcome::Refreshed,
        Outcome::ExpiredIdle,
        Outcome::ExpiredLife,
        Outcome::Future,
        Outcome::Malformed,
        Outcome::BadMac,
        Outcome::UnknownKey,
        Outcome::UnknownBackend,
        Outcome::BackendDown,
        Outcome::Draining,
        Outcome::Hashed,
        Outcome::Unpinned,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::New => "new",
            Outcome::Refreshed => "refreshed",
            Outcome::ExpiredIdle => "expired_idle",
            Outcome::ExpiredLife => "expired_life",
            Outcome::Future => "future",
            Outcome::Malformed => "malformed",
            Outcome::BadMac => "bad_mac",
            Outcome::UnknownKey => "unknown_key",
            Outcome::UnknownBackend => "unknown_backend",
            Outcome::BackendDown => "backend_down",
            Outcome::Draining => "draining",
            Outcome::Hashed => "hashed",
            Outcome::Unpinned => "unpinned",
        }
    }

    /// Position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl From<Invalid> for Outcome {
    fn from(i: Invalid) -> Outcome {
        match i {
            Invalid::Malformed => Outcome::Malformed,
            Invalid::UnknownKey => Outcome::UnknownKey,
            Invalid::BadMac => Outcome::BadMac,
        }
    }
}

/// What the request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenInput {
    /// No affinity cookie.
    Absent,
    /// A cookie that is not a valid token.
    Invalid(Invalid),
    /// A token whose MAC verified.
    Valid(Verified),
}

/// A backend's admin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new and pinned sessions.
    Active,
    /// Keeps its pinned sessions, takes no new ones.
    Draining,
    /// Takes nothing; its sessions fall back.
    Disabled,
}

/// The pool as the decision sees it. Indexes are positions in the current snapshot.
pub trait PoolView {
    /// Weights, one per backend.
    fn weights(&self) -> &[u32];
    /// Stable id hashes, one per backend (see [`balance::id_hash`]).
    fn hashes(&self) -> &[u64];
    /// Whether backend `i` passes health checks now.
    fn healthy(&self, i: usize) -> bool;
    /// Admin state of backend `i`.
    fn admin(&self, i: usize) -> AdminState;
    /// The backend whose tag under key `key_index` is `tag`.
    fn resolve(&self, key_index: usize, tag: &[u8; 8]) -> Option<usize>;
    /// Tag of backend `i` under the signing key.
    fn tag(&self, i: usize) -> [u8; 8];
    /// The tag an unpinned session's token carries under key `key_index` (it names no backend).
    fn unpinned_tag(&self, key_index: usize) -> [u8; 8];
    /// Next backend for a new session among those `eligible` says yes to (stateful).
    fn next_new(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// The decision for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index of the backend to send to.
    pub backend: usize,
    /// The outcome to count.
    pub outcome: Outcome,
    /// Claims of the token to set on the response, if one is issued.
    pub issue: Option<Claims>,
    /// True when a valid session was moved to (or served by) a backend other than its own.
    pub fallback: bool,
}

/// Why no backend can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No usable backend at all.
    AllDown,
    /// The pinned backend is unusable and `on_pinned_down = "fail"`.
    PinnedDown,
}

/// Decides where one attempt goes. `excluded` lists backends that already failed this request;
/// `nonce` draws a fresh session nonce and is only called when a new session is issued.
pub fn route(
    policy: &Policy,
    token: TokenInput,
    now: u32,
    pool: &dyn PoolView,
    excluded: &[usize],
    nonce: impl FnOnce() -> u64,
) -> Result<Route, NoRoute> {
    let open = |i: usize| !excluded.contains(&i);
    let placeable = |i: usize| open(i) && pool.healthy(i) && pool.admin(i) == AdminState::Active;

    let verified = match token {
        TokenInput::Absent => return place_new(policy, Outcome::New, now, pool, &open, nonce),
        TokenInput::Invalid(why) => {
            return place_new(policy, why.into(), now, pool, &open, nonce);
        }
        TokenInput::Valid(v) => v,
    };
    let c = verified.claims;
    let expired = if c.issued_at > now.saturating_add(policy.skew)
        || c.last_seen > now.saturating_add(policy.skew)
    {
        Some(Outcome::Future)
    } else if now.saturating_sub(c.issued_at) >= policy.max_life {
        Some(Outcome::ExpiredLife)
    } else if now.saturating_sub(c.last_seen) > policy.max_idle {
        Some(Outcome::ExpiredIdle)
    } else {
        None
    };
    if let Some(why) = expired {
        return place_new(policy, why, now, pool, &open, nonce);
    }
    if c.backend_tag == pool.unpinned_tag(verified.key_index) {
        // Unpinned by sticky_fraction: placed anew, the token kept (re-signed when due).
        let refresh_due =
            now.saturating_sub(c.last_seen) >= policy.refresh_after || verified.key_index != 0;
        let backend = pool
            .next_new(&placeable)
            .or_else(|| open_fallback(policy, pool, &open))
            .ok_or(NoRoute::AllDown)?;
        return Ok(Route {
            backend,
            outcome: Outcome::Unpinned,
            issue: refresh_due.then(|| Claims {
                backend_tag: pool.unpinned_tag(0),
                last_seen: now,
                ..c
            }),
            fallback: false,
        });
    }
    let Some(home) = pool.resolve(verified.key_index, &c.backend_tag) else {
        // Its backend was removed from the pool: the same deterministic fallback as for a dead
        // one (every instance and every parallel request agree), whatever on_pinned_down says,
        // since that backend is not coming back.
        let fallback = balance::rendezvous(c.nonce, pool.hashes(), pool.weights(), placeable)
            .or_else(|| open_fallback(policy, pool, &open))
            .ok_or(NoRoute::AllDown)?;
        return Ok(Route {
            backend: fallback,
            outcome: Outcome::UnknownBackend,
            issue: Some(Claims {
                backend_tag: pool.tag(fallback),
                last_seen: now,
                ..c
            }),
            fallback: true,
        });
    };
    // A token signed by an older key is re-signed by the current one as soon as it is seen.
    let refresh_due =
        now.saturating_sub(c.last_seen) >= policy.refresh_after || verified.key_index != 0;
    let refreshed = |backend: usize| Claims {
        backend_tag: pool.tag(backend),
        last_seen: now,
        ..c
    };

    let admin = pool.admin(home);
    if open(home) && pool.healthy(home) && admin != AdminState::Disabled {
        let outcome = match (admin, refresh_due) {
            (AdminState::Draining, _) => Outcome::Draining,
            (_, true) => Outcome::Refreshed,
            (_, false) => Outcome::Valid,
        };
        return Ok(Route {
            backend: home,
            outcome,
            issue: refresh_due.then(|| refreshed(home)),
            fallback: false,
        });
    }

    if policy.on_pinned_down == OnPinnedDown::Fail {
        return Err(NoRoute::PinnedDown);
    }
    let fallback = balance::rendezvous(c.nonce, pool.hashes(), pool.weights(), placeable)
        .or_else(|| open_fallback(policy, pool, &open))
        .ok_or(NoRoute::AllDown)?;
    let issue = match policy.on_pinned_down {
        OnPinnedDown::Return => refresh_due.then(|| refreshed(home)),
        _ => Some(refreshed(fallback)),
    };
    Ok(Route {
        backend: fallback,
        outcome: Outcome::BackendDown,
        issue,
        fallback: true,
    })
}

/// Placement by a key instead of a token (`ip` mode, trusted `header` mode): the weighted
/// rendezvous choice among usable backends, so every instance agrees and a key moves only when
/// its backend becomes unusable. No token is issued.
pub fn route_hashed(
    policy: &Policy,
    key: u64,
    pool: &dyn PoolView,
    excluded: &[usize],
) -> Result<Route, NoRoute> {
    let open = |i: usize| !excluded.contains(&i);
    let placeable = |i: usize| open(i) && pool.healthy(i) && pool.admin(i) == AdminState::Active;
    let backend = balance::rendezvous(key, pool.hashes(), pool.weights(), placeable)
        .or_else(|| open_fallback(policy, pool, &open))
        .ok_or(NoRoute::AllDown)?;
    Ok(Route {
        backend,
        outcome: Outcome::Hashed,
        issue: None,
        fallback: false,
    })
}

/// With `all_down = "open"`, any backend that is not disabled or excluded, ignoring health.
fn open_fallback(
    policy: &Policy,
    pool: &dyn PoolView,
    open: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    if policy.all_down != AllDown::Open {
        return None;
    }
    pool.next_new(&|i| open(i) && pool.admin(i) != AdminState::Disabled)
}

fn place_new(
    policy: &Policy,
    outcome: Outcome,
    now: u32,
    pool: &dyn PoolView,
    open: &dyn Fn(usize) -> bool,
    nonce: impl FnOnce() -> u64,
) -> Result<Route, NoRoute> {
    let backend = pool
        .next_new(&|i| open(i) && pool.healthy(i) && pool.admin(i) == AdminState::Active)
        .or_else(|| open_fallback(policy, pool, open))
        .ok_or(NoRoute::AllDown)?;
    let nonce = nonce();
    let backend_tag = if policy.pins(nonce) {
        pool.tag(backend)
    } else {
        pool.unpinned_tag(0)
    };
    Ok(Route {
        backend,
        outcome,
        issue: Some(Claims {
            backend_tag,
            nonce,
            issued_at: now,
            last_seen: now,
        }),
        fallback: false,
    })
}

/// Seconds the cookie may live in the browser: what is left of `max_life`.
pub fn cookie_max_age(policy: &Policy, claims: &Claims, now: u32) -> u32 {
    claims
        .issued_at
        .saturating_add(policy.max_life)
        .saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{SmoothWrr, id_hash};
    use crate::token::KeyRing;
    use proptest::prelude::*;
    use std::cell::RefCell;

    const KEY: &[u8] = b"an-affinity-test-key-of-32-bytes-or-more";
    const NOW: u32 = 1_800_000_000;

    struct Pool {
        ids: Vec<String>,
        weights: Vec<u32>,
        hashes: Vec<u64>,
        healthy: Vec<bool>,
        admin: Vec<AdminState>,
        ring: KeyRing,
        rr: RefCell<SmoothWrr>,
    }

    impl Pool {
        fn new(n: usize) -> Pool {
            let ids: Vec<String> = (1..=n).map(|i| format!("app-{i}")).collect();
            Pool {
                hashes: ids.iter().map(|s| id_hash(s)).collect(),
                weights: vec![1; n],
                healthy: vec![true; n],
                admin: vec![AdminState::Active; n],
                ring: KeyRing::new(&[KEY], "stickyd"),
                rr: RefCell::new(SmoothWrr::new(n)),
                ids,
            }
        }
        fn token(&self, backend: usize, nonce: u64, issued_at: u32, last_seen: u32) -> TokenInput {
            TokenInput::Valid(Verified {
                key_index: 0,
                claims: Claims {
                    backend_tag: self.tag(backend),
                    nonce,
                    issued_at,
                    last_seen,
                },
            })
        }
    }

    impl PoolView for Pool {
        fn weights(&self) -> &[u32] {
            &self.weights
        }
        fn hashes(&self) -> &[u64] {
            &self.hashes
        }
        fn healthy(&self, i: usize) -> bool {
            self.healthy[i]
        }
        fn admin(&self, i: usize) -> AdminState {
            self.admin[i]
        }
        fn resolve(&self, key_index: usize, tag: &[u8; 8]) -> Option<usize> {
            (0..self.ids.len()).find(|&i| self.ring.backend_tag(key_index, &self.ids[i]) == *tag)
        }
        fn unpinned_tag(&self, k: usize) -> [u8; 8] {
            self.ring.backend_tag(k, "\0unpinned")
        }
        fn tag(&self, i: usize) -> [u8; 8] {
            self.ring.backend_tag(0, &self.ids[i])
        }
        fn next_new(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
            self.rr.borrow_mut().next(&self.weights, eligible)
        }
    }

    fn policy() -> Policy {
        Policy {
            max_idle: 1800,
            max_life: 86_400,
            refresh_after: 450,
            skew: 30,
            on_pinned_down: OnPinnedDown::Repin,
            all_down: AllDown::Fail,
            sticky_below: u64::MAX,
        }
    }

    fn go(p: &Policy, pool: &Pool, t: TokenInput) -> Result<Route, NoRoute> {
        route(p, t, NOW, pool, &[], || 42)
    }

    #[test]
    fn no_token_places_round_robin_and_issues_a_fresh_session() {
        let pool = Pool::new(3);
        let picks: Vec<usize> = (0..6)
            .map(|_| go(&policy(), &pool, TokenInput::Absent).unwrap().backend)
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let r = go(&policy(), &pool, TokenInput::Absent).unwrap();
        assert_eq!(r.outcome, Outcome::New);
        let c = r.issue.unwrap();
        assert_eq!((c.nonce, c.issued_at, c.last_seen), (42, NOW, NOW));
        assert_eq!(c.backend_tag, pool.tag(r.backend));
    }

    #[test]
    fn a_fresh_valid_token_is_served_by_its_backend_without_a_cookie() {
        let pool = Pool::new(3);
        let r = go(&policy(), &pool, pool.token(2, 7, NOW - 100, NOW - 10)).unwrap();
        assert_eq!(
            (r.backend, r.outcome, r.issue, r.fallback),
            (2, Outcome::Valid, None, false)
        );
    }

    #[test]
    fn a_token_past_the_refresh_point_is_reissued_with_a_new_last_seen() {
        let pool = Pool::new(3);
        let r = go(&policy(), &pool, pool.token(1, 7, NOW - 1000, NOW - 450)).unwrap();
        assert_eq!((r.backend, r.outcome), (1, Outcome::Refreshed));
        let c = r.issue.unwrap();
        assert_eq!((c.nonce, c.issued_at, c.last_seen), (7, NOW - 1000, NOW));
    }

    #[test]
    fn expiry_and_future_dates_are_treated_as_no_token() {
        let p = policy();
        let pool = Pool::new(2);
        let cases = [
            (
                pool.token(1, 7, NOW - 2000, NOW - 1801),
                Outcome::ExpiredIdle,
            ),
            (pool.token(1, 7, NOW - 2000, NOW - 1800), Outcome::Refreshed),
            (pool.token(1, 7, NOW - 86_400, NOW), Outcome::ExpiredLife),
            (pool.token(1, 7, NOW - 86_399, NOW), Outcome::Valid),
            (pool.token(1, 7, NOW + 31, NOW), Outcome::Future),
            (pool.token(1, 7, NOW, NOW + 31), Outcome::Future),
            (pool.token(1, 7, NOW + 30, NOW + 30), Outcome::Valid),
        ];
        for (t, want) in cases {
            let r = go(&p, &pool, t).unwrap();
            assert_eq!(r.outcome, want, "{t:?}");
            if matches!(want, Outcome::Valid | Outcome::Refreshed) {
                assert_eq!(r.backend, 1);
            } else {
                assert_eq!(r.issue.unwrap().nonce, 42, "a new session is issued");
            }
        }
    }

    #[test]
    fn invalid_tokens_are_served_as_new_sessions_counted_by_reason() {
        let pool = Pool::new(2);
        for (why, want) in [
            (Invalid::Malformed, Outcome::Malformed),
            (Invalid::BadMac, Outcome::BadMac),
            (Invalid::UnknownKey, Outcome::UnknownKey),
        ] {
            let r = go(&policy(), &pool, TokenInput::Invalid(why)).unwrap();
            assert_eq!(r.outcome, want);
            assert!(r.issue.is_some());
        }
    }

    #[test]
    fn sticky_fraction_leaves_some_sessions_unpinned_and_they_stay_unpinned() {
        let pool = Pool::new(3);
        let half = Policy {
            sticky_below: u64::MAX / 2,
            ..policy()
        };
        let mut pinned = 0;
        for n in 0..1000u64 {
            let r = route(&half, TokenInput::Absent, NOW, &pool, &[], || n).unwrap();
            let c = r.issue.unwrap();
            if c.backend_tag == pool.tag(r.backend) {
                pinned += 1;
            } else {
                assert_eq!(c.backend_tag, pool.unpinned_tag(0));
                // Its next requests are placed anew, keeping the token.
                let t = TokenInput::Valid(Verified {
                    key_index: 0,
                    claims: c,
                });
                let next = route(&half, t, NOW + 1, &pool, &[], || 7).unwrap();
                assert_eq!((next.outcome, next.issue), (Outcome::Unpinned, None));
            }
        }
        assert!(
            (400..600).contains(&pinned),
            "{pinned} of 1000 pinned at 0.5"
        );
        let none = Policy {
            sticky_below: 0,
            ..policy()
        };
        assert!(!(0..100u64).any(|n| none.pins(n)));
        assert!((0..100u64).all(|n| policy().pins(n)));
    }

    #[test]
    fn hashed_placement_is_stable_and_moves_only_keys_of_an_unusable_backend() {
        let mut pool = Pool::new(4);
        let before: Vec<usize> = (0..200u64)
            .map(|k| route_hashed(&policy(), k, &pool, &[]).unwrap().backend)
            .collect();
        let again: Vec<usize> = (0..200u64)
            .map(|k| route_hashed(&policy(), k, &pool, &[]).unwrap().backend)
            .collect();
        assert_eq!(before, again);
        assert!((0..4).all(|b| before.contains(&b)), "spread over all");
        pool.healthy[1] = false;
        for (k, &was) in before.iter().enumerate() {
            let r = route_hashed(&policy(), k as u64, &pool, &[]).unwrap();
            assert_eq!((r.outcome, r.issue), (Outcome::Hashed, None));
            if was != 1 {
                assert_eq!(r.backend, was, "key {k} moved without cause");
            } else {
                assert_ne!(r.backend, 1);
            }
        }
        pool.healthy = vec![false; 4];
        assert_eq!(
            route_hashed(&policy(), 1, &pool, &[]).unwrap_err(),
            NoRoute::AllDown
        );
    }

    #[test]
    fn a_removed_backends_sessions_take_the_deterministic_fallback() {
        let pool = Pool::new(4);
        let mut t = pool.token(0, 7, NOW - 10, NOW - 10);
        if let TokenInput::Valid(v) = &mut t {
            v.claims.backend_tag = [9; 8];
        }
        let want = balance::rendezvous(7, &pool.hashes, &pool.weights, |_| true).unwrap();
        // Even with on_pinned_down = fail: a removed backend is not coming back.
        for p in [
            policy(),
            Policy {
                on_pinned_down: OnPinnedDown::Fail,
                ..policy()
            },
        ] {
            let r = go(&p, &pool, t).unwrap();
            assert_eq!(
                (r.backend, r.outcome, r.fallback),
                (want, Outcome::UnknownBackend, true)
            );
            let c = r.issue.unwrap();
            assert_eq!(
                (c.backend_tag, c.nonce, c.issued_at, c.last_seen),
                (pool.tag(want), 7, NOW - 10, NOW)
            );
        }
    }

    #[test]
    fn a_token_from_an_older_key_is_resigned_at_once() {
        let mut pool = Pool::new(2);
        let old = b"the-previous-key-also-32-bytes-long!!".to_vec();
        pool.ring = KeyRing::new(&[KEY.to_vec(), old], "stickyd");
        let t = TokenInput::Valid(Verified {
            key_index: 1,
            claims: Claims {
                backend_tag: pool.ring.backend_tag(1, "app-2"),
                nonce: 5,
                issued_at: NOW - 10,
                last_seen: NOW - 10,
            },
        });
        let r = go(&policy(), &pool, t).unwrap();
        assert_eq!((r.backend, r.outcome), (1, Outcome::Refreshed));
        assert_eq!(
            r.issue.unwrap().backend_tag,
            pool.ring.backend_tag(0, "app-2")
        );
    }

    #[test]
    fn a_dead_pinned_backend_repins_to_the_rendezvous_fallback() {
        let mut pool = Pool::new(4);
        pool.healthy[2] = false;
        let r = go(&policy(), &pool, pool.token(2, 99, NOW - 10, NOW - 10)).unwrap();
        let want = balance::rendezvous(99, &pool.hashes, &pool.weights, |i| i != 2).unwrap();
        assert_eq!(
            (r.backend, r.outcome, r.fallback),
            (want, Outcome::BackendDown, true)
        );
        let c = r.issue.unwrap();
        assert_eq!(
            (c.backend_tag, c.nonce, c.issued_at),
            (pool.tag(want), 99, NOW - 10)
        );
        // Every parallel request of that session picks the same fallback.
        for _ in 0..10 {
            assert_eq!(
                go(&policy(), &pool, pool.token(2, 99, NOW - 10, NOW - 10))
                    .unwrap()
                    .backend,
                want
            );
        }
    }

    #[test]
    fn return_mode_serves_the_fallback_but_keeps_the_token() {
        let mut pool = Pool::new(3);
        pool.healthy[0] = false;
        let p = Policy {
            on_pinned_down: OnPinnedDown::Return,
            ..policy()
        };
        let r = go(&p, &pool, pool.token(0, 3, NOW - 10, NOW - 10)).unwrap();
        assert_ne!(r.backend, 0);
        assert_eq!((r.outcome, r.issue), (Outcome::BackendDown, None));
        // A refresh that falls due while away keeps the home backend's tag.
        let r = go(&p, &pool, pool.token(0, 3, NOW - 1000, NOW - 1000)).unwrap();
        assert_eq!(r.issue.unwrap().backend_tag, pool.tag(0));
        // Home again once it recovers.
        pool.healthy[0] = true;
        assert_eq!(
            go(&p, &pool, pool.token(0, 3, NOW - 10, NOW - 10))
                .unwrap()
                .backend,
            0
        );
    }

    #[test]
    fn fail_mode_refuses_when_the_pinned_backend_is_down() {
        let mut pool = Pool::new(3);
        pool.healthy[1] = false;
        let p = Policy {
            on_pinned_down: OnPinnedDown::Fail,
            ..policy()
        };
        assert_eq!(
            go(&p, &pool, pool.token(1, 3, NOW, NOW)),
            Err(NoRoute::PinnedDown)
        );
    }

    #[test]
    fn draining_keeps_pinned_sessions_and_takes_no_new_ones() {
        let mut pool = Pool::new(2);
        pool.admin[0] = AdminState::Draining;
        let r = go(&policy(), &pool, pool.token(0, 3, NOW, NOW)).unwrap();
        assert_eq!((r.backend, r.outcome), (0, Outcome::Draining));
        for _ in 0..5 {
            assert_eq!(go(&policy(), &pool, TokenInput::Absent).unwrap().backend, 1);
        }
    }

    #[test]
    fn a_disabled_backend_takes_nothing_and_its_sessions_fall_back() {
        let mut pool = Pool::new(2);
        pool.admin[0] = AdminState::Disabled;
        let r = go(&policy(), &pool, pool.token(0, 3, NOW, NOW)).unwrap();
        assert_eq!((r.backend, r.outcome), (1, Outcome::BackendDown));
    }

    #[test]
    fn an_excluded_backend_is_routed_around_like_a_dead_one() {
        let pool = Pool::new(3);
        let r = route(
            &policy(),
            pool.token(1, 5, NOW, NOW),
            NOW,
            &pool,
            &[1],
            || 0,
        )
        .unwrap();
        assert_ne!(r.backend, 1);
        assert!(r.fallback);
        assert_eq!(r.issue.unwrap().backend_tag, pool.tag(r.backend));
        let r = route(&policy(), TokenInput::Absent, NOW, &pool, &[0, 1], || 0).unwrap();
        assert_eq!(r.backend, 2);
    }

    #[test]
    fn all_down_fails_or_opens() {
        let mut pool = Pool::new(2);
        pool.healthy = vec![false, false];
        assert_eq!(
            go(&policy(), &pool, TokenInput::Absent),
            Err(NoRoute::AllDown)
        );
        assert_eq!(
            go(&policy(), &pool, pool.token(0, 1, NOW, NOW)),
            Err(NoRoute::AllDown)
        );
        let p = Policy {
            all_down: AllDown::Open,
            ..policy()
        };
        assert!(go(&p, &pool, TokenInput::Absent).is_ok());
        pool.admin = vec![AdminState::Disabled, AdminState::Active];
        for _ in 0..4 {
            assert_eq!(go(&p, &pool, TokenInput::Absent).unwrap().backend, 1);
        }
        pool.admin = vec![AdminState::Disabled; 2];
        assert_eq!(go(&p, &pool, TokenInput::Absent), Err(NoRoute::AllDown));
    }

    #[test]
    fn cookie_max_age_is_the_rest_of_max_life() {
        let c = Claims {
            backend_tag: [0; 8],
            nonce: 0,
            issued_at: NOW - 100,
            last_seen: NOW,
        };
        assert_eq!(cookie_max_age(&policy(), &c, NOW), 86_300);
        assert_eq!(cookie_max_age(&policy(), &c, NOW + 100_000), 0);
    }

    proptest! {
        #[test]
        fn the_chosen_backend_is_usable_whenever_one_is(
            healthy in proptest::collection::vec(any::<bool>(), 1..12),
            admin in proptest::collection::vec(0u8..3, 12),
            home in 0usize..12,
            nonce in any::<u64>(),
            absent in any::<bool>(),
        ) {
            let n = healthy.len();
            let mut pool = Pool::new(n);
            pool.healthy = healthy;
            pool.admin = admin[..n].iter().map(|a| [AdminState::Active, AdminState::Draining, AdminState::Disabled][*a as usize]).collect();
            let home = home % n;
            let t = if absent { TokenInput::Absent } else { pool.token(home, nonce, NOW, NOW) };
            let placeable = |i: usize| pool.healthy[i] && pool.admin[i] == AdminState::Active;
            let any_placeable = (0..n).any(placeable);
            let home_ok = !absent && pool.healthy[home] && pool.admin[home] != AdminState::Disabled;
            match go(&policy(), &pool, t) {
                Ok(r) => {
                    prop_assert!(r.backend == home && home_ok || placeable(r.backend));
                    if let Some(c) = r.issue { prop_assert_eq!(c.backend_tag, pool.tag(r.backend)); }
                }
                Err(e) => {
                    prop_assert_eq!(e, NoRoute::AllDown);
                    prop_assert!(!any_placeable && !home_ok);
                }
            }
        }
    }
}
