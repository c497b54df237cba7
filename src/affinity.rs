//! The affinity decision: given what the request's token says, the state of the pool and the
//! time, which backend serves the request and which token (if any) the response sets.
//!
//! Pure: time, randomness and the pool's live state are passed in. The proxy takes the
//! request's affinity input once ([`extract`]: the token or the key, by mode), then calls
//! [`decide`] once per attempt; a retry calls it again with the failed backend excluded, so the
//! token it issues always names the backend that actually served. The [`Route`] says
//! everything the rest of the request needs: the backend, the outcome to count, the token to
//! set, the session to record and whether the response pins it.
//!
//! The house pattern for policy (see also `balance`, `health`, `headers`): plain data in,
//! an explicit outcome out, the pool seen through a small trait ([`PoolView`]) so tests build
//! pools by hand; sentence-named tests for each rule and property tests for the invariants
//! ("the chosen backend is usable whenever one is").

mod input;

use crate::balance;
use crate::token::{Claims, Invalid, NO_BACKUP, Verified};

pub use input::{Input, Rings, Source, extract, peek, read_fields};

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
    /// Backups named per session (`[replication] backups`; 0: replication off). With backups,
    /// a session whose home is lost (down, removed, restarted, handed off) is served by its
    /// first usable backup with a [`Takeover`], and re-pinned there.
    pub backups: u8,
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
    /// A valid token of another pool (one whose requests carry their token the same way):
    /// ignored, and a new session placed.
    OtherPool,
    /// Replication: a valid token whose home restarted (a new incarnation) since the token
    /// was signed: served by its backup, with a takeover.
    Restarted,
    /// Replication: a valid token whose home is being handed off: served by its backup, with a
    /// takeover.
    Handoff,
}

impl Outcome {
    /// Every outcome, in a fixed order (metrics index).
    pub const ALL: [Outcome; 17] = [
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
        Outcome::OtherPool,
        Outcome::Restarted,
        Outcome::Handoff,
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
            Outcome::OtherPool => "other_pool",
            Outcome::Restarted => "restarted",
            Outcome::Handoff => "handoff",
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

/// Why a session is taken over by its backup (replication): the `reason` label of
/// `stickyd_takeovers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Takeover {
    /// Its home is down, disabled, or failed this request.
    Down,
    /// Its home was removed from the config.
    Removed,
    /// Its home restarted (a new incarnation) since the session was last pinned there.
    Restarted,
    /// Its home is being handed off (`POST /backends/{id}/handoff`).
    Handoff,
}

impl Takeover {
    /// Every reason, in a fixed order (metrics index).
    pub const ALL: [Takeover; 4] = [
        Takeover::Down,
        Takeover::Removed,
        Takeover::Restarted,
        Takeover::Handoff,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Takeover::Down => "down",
            Takeover::Removed => "removed",
            Takeover::Restarted => "restarted",
            Takeover::Handoff => "handoff",
        }
    }

    /// Position in [`Takeover::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenInput {
    /// No affinity cookie.
    Absent,
    /// A cookie that is not a valid token.
    Invalid(Invalid),
    /// A token that is valid for another pool, not this one.
    OtherPool,
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
    /// Unix seconds when backend `i` was last seen with a new incarnation (0: never): a
    /// session pinned there before then was pinned to a process that is gone.
    fn restarted_at(&self, i: usize) -> u32;
    /// Whether backend `i` is being handed off (its sessions go to their backups).
    fn handoff(&self, i: usize) -> bool;
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
    /// The session this request belongs to: the issued token's nonce, else the valid token's
    /// (for the backend's distinct-session estimate). `None` for hashed and untracked requests.
    pub session: Option<u64>,
    /// Whether the response pins the session to `backend`: a new pinned session or a move to
    /// the fallback. A refresh re-signs the same pin and does not count; neither does an
    /// unpinned token or a fallback that keeps the token (`on_pinned_down = "return"`).
    pub pins: bool,
    /// Replication: the session is served by its backup because its home was lost; the
    /// backend promotes its replica (`X-Stickyd-Takeover`).
    pub takeover: Option<Takeover>,
    /// Replication: the session's backups for `backend`, named to it and recorded in the token
    /// ([`Route::backups`]); `u32::MAX` past the last (compact: a connection's task holds it).
    pub named: [u32; 2],
}

/// No backup named.
const NONE_NAMED: [u32; 2] = [u32::MAX; 2];

impl Route {
    /// The session's backups named with this route (replication), as indexes in the pool.
    pub fn backups(&self) -> [Option<usize>; 2] {
        self.named
            .map(|b| (b != u32::MAX).then(|| usize::try_from(b).unwrap_or(usize::MAX)))
    }

    /// Whether a valid session was moved for good: served by the fallback and pinned there.
    pub fn repinned(&self) -> bool {
        self.fallback && self.pins
    }

    /// The same backend, but no token, no session and no pin (`mode = "none"`).
    fn untracked(self) -> Route {
        Route {
            issue: None,
            session: None,
            pins: false,
            ..self
        }
    }
}

/// Why no backend can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No usable backend at all.
    AllDown,
    /// The pinned backend is unusable and `on_pinned_down = "fail"`.
    PinnedDown,
}

/// Whether backend `i` takes new pins at `now`: healthy and active, and with replication not
/// seen restarting in this very second (a token pinned to it now would carry the second of the
/// restart, which is taken as the old process's: see [`route`]).
fn pins_at(policy: &Policy, pool: &dyn PoolView, i: usize, now: u32) -> bool {
    pool.healthy(i)
        && pool.admin(i) == AdminState::Active
        && (policy.backups == 0 || pool.restarted_at(i) < now)
}

/// Decides where one attempt goes, from what the request carried ([`input::extract`]): a
/// token ([`route`]), a key to hash ([`route_hashed`]), or nothing (`mode = "none"`: placed as
/// a new session, with no token issued and no session tracked).
#[inline]
pub fn decide(
    policy: &Policy,
    input: Input,
    now: u32,
    pool: &dyn PoolView,
    excluded: &[usize],
    nonce: impl FnOnce() -> u64,
) -> Result<Route, NoRoute> {
    // One call of `route`, so it can be inlined into the request path as it was before.
    let (token, untracked) = match input {
        Input::Token(token) => (token, false),
        Input::Key(key) => return route_hashed(policy, key, pool, excluded),
        Input::Nothing => (TokenInput::Absent, true),
    };
    let route = route(policy, token, now, pool, excluded, nonce)?;
    Ok(if untracked { route.untracked() } else { route })
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
    let r = route_token(policy, token, now, pool, excluded, nonce)?;
    Ok(name_backups(policy, r, token, now, pool, excluded))
}

/// Replication: the backups of the session's route named ([`backups`]) and the first recorded
/// in the token: in the one it issues, or, when it issues none, in a re-issued one if the token
/// recorded another (so a later takeover goes to exactly the backup the app last copied to).
fn name_backups(
    policy: &Policy,
    mut r: Route,
    token: TokenInput,
    now: u32,
    pool: &dyn PoolView,
    excluded: &[usize],
) -> Route {
    if policy.backups == 0 || r.outcome == Outcome::Unpinned {
        return r;
    }
    let Some(nonce) = r.session else {
        return r;
    };
    // A new session left unpinned by sticky_fraction has no home to keep copies for.
    if r.issue
        .is_some_and(|c| c.backend_tag == pool.unpinned_tag(0))
    {
        return r;
    }
    let named = backups(policy, nonce, r.backend, now, pool, excluded);
    r.named = named.map(|b| b.map_or(u32::MAX, |i| u32::try_from(i).unwrap_or(u32::MAX)));
    let tags = named.map(|b| b.map_or(NO_BACKUP, |i| pool.tag(i)));
    match (&mut r.issue, token) {
        (Some(c), _) => [c.backup_tag, c.backup2_tag] = tags,
        (None, TokenInput::Valid(v)) => {
            if recorded_backups(pool, &v) != named {
                r.issue = Some(Claims {
                    backend_tag: pool.tag(r.backend),
                    last_seen: now,
                    backup_tag: tags[0],
                    backup2_tag: tags[1],
                    ..v.claims
                });
                if r.outcome == Outcome::Valid {
                    r.outcome = Outcome::Refreshed;
                }
            }
        }
        (None, _) => {}
    }
    r
}

/// The backups a token recorded (replication), each if it names a backend of the pool.
fn recorded_backups(pool: &dyn PoolView, v: &Verified) -> [Option<usize>; 2] {
    [v.claims.backup_tag, v.claims.backup2_tag].map(|t| {
        (t != NO_BACKUP)
            .then(|| pool.resolve(v.key_index, &t))
            .flatten()
    })
}

/// [`route`] before the backups are named.
fn route_token(
    policy: &Policy,
    token: TokenInput,
    now: u32,
    pool: &dyn PoolView,
    excluded: &[usize],
    nonce: impl FnOnce() -> u64,
) -> Result<Route, NoRoute> {
    let open = |i: usize| !excluded.contains(&i);
    let placeable = |i: usize| open(i) && pins_at(policy, pool, i, now);

    let verified = match token {
        TokenInput::Absent => return place_new(policy, Outcome::New, now, pool, &open, nonce),
        TokenInput::Invalid(why) => {
            return place_new(policy, why.into(), now, pool, &open, nonce);
        }
        TokenInput::OtherPool => {
            return place_new(policy, Outcome::OtherPool, now, pool, &open, nonce);
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
            session: Some(c.nonce),
            pins: false,
            takeover: None,
            named: NONE_NAMED,
        });
    }
    let Some(home) = pool.resolve(verified.key_index, &c.backend_tag) else {
        // Its backend was removed from the pool: the same deterministic fallback as for a dead
        // one (every instance and every parallel request agree), whatever on_pinned_down says,
        // since that backend is not coming back.
        let fallback = takeover_target(policy, pool, &verified, None, &placeable)
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
            session: Some(c.nonce),
            pins: true,
            takeover: (policy.backups > 0).then_some(Takeover::Removed),
            named: NONE_NAMED,
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

    // Replication: a home that restarted since the token was signed, or that is being handed
    // off, no longer holds the session's state: its first usable backup does. Times are whole
    // seconds: a token signed in the second the restart was seen counts as older (it may have
    // been the old process's); if it was the new one's, its state was pushed to the backup with
    // its last change, and the takeover finds it there.
    if policy.backups > 0 {
        let lost = if pool.handoff(home) {
            Some((Takeover::Handoff, Outcome::Handoff))
        } else if c.last_seen <= pool.restarted_at(home) {
            Some((Takeover::Restarted, Outcome::Restarted))
        } else {
            None
        };
        if let Some((why, outcome)) = lost {
            let backup = takeover_target(policy, pool, &verified, Some(home), &placeable)
                .or_else(|| open_fallback(policy, pool, &|i| i != home && open(i)))
                .ok_or(NoRoute::AllDown)?;
            return Ok(Route {
                backend: backup,
                outcome,
                issue: Some(refreshed(backup)),
                fallback: true,
                session: Some(c.nonce),
                pins: true,
                takeover: Some(why),
                named: NONE_NAMED,
            });
        }
    }

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
            session: Some(c.nonce),
            pins: false,
            takeover: None,
            named: NONE_NAMED,
        });
    }

    if policy.on_pinned_down == OnPinnedDown::Fail {
        return Err(NoRoute::PinnedDown);
    }
    let fallback = takeover_target(policy, pool, &verified, Some(home), &placeable)
        .or_else(|| open_fallback(policy, pool, &open))
        .ok_or(NoRoute::AllDown)?;
    let repin = policy.on_pinned_down != OnPinnedDown::Return;
    let issue = if repin {
        Some(refreshed(fallback))
    } else {
        refresh_due.then(|| refreshed(home))
    };
    Ok(Route {
        backend: fallback,
        outcome: Outcome::BackendDown,
        issue,
        fallback: true,
        session: Some(c.nonce),
        pins: repin,
        takeover: (policy.backups > 0 && repin).then_some(Takeover::Down),
        named: NONE_NAMED,
    })
}

/// Where a session whose home is lost goes: with replication, the first backup its token
/// recorded (the ones the app last copied the session to) that is usable, else the first
/// usable backend of its rendezvous ranking (the home left out): the same choice on every
/// instance.
fn takeover_target(
    policy: &Policy,
    pool: &dyn PoolView,
    v: &Verified,
    home: Option<usize>,
    placeable: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let usable = |i: usize| Some(i) != home && placeable(i);
    let recorded = if policy.backups > 0 {
        recorded_backups(pool, v)
            .into_iter()
            .flatten()
            .find(|&b| usable(b))
    } else {
        None
    };
    recorded.or_else(|| balance::rendezvous(v.claims.nonce, pool.hashes(), pool.weights(), usable))
}

/// A session's backups (replication): the first `policy.backups` backends of its rendezvous
/// ranking that are usable (healthy, active, not failed in this request), the backend serving
/// it left out. The first one is the fallback the session gets if `serving` is lost (the same
/// ranking as [`route`]'s), identically on every instance with the same backend ids.
pub fn backups(
    policy: &Policy,
    nonce: u64,
    serving: usize,
    now: u32,
    pool: &dyn PoolView,
    excluded: &[usize],
) -> [Option<usize>; 2] {
    if policy.backups == 0 {
        return [None, None];
    }
    let usable = |i: usize| i != serving && !excluded.contains(&i) && pins_at(policy, pool, i, now);
    let [a, b] = balance::rendezvous_top2(nonce, pool.hashes(), pool.weights(), usable);
    [a, if policy.backups > 1 { b } else { None }]
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
        session: None,
        pins: false,
        takeover: None,
        named: NONE_NAMED,
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
        .next_new(&|i| open(i) && pins_at(policy, pool, i, now))
        .or_else(|| open_fallback(policy, pool, open))
        .ok_or(NoRoute::AllDown)?;
    let nonce = nonce();
    let pins = policy.pins(nonce);
    let backend_tag = if pins {
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
            backup_tag: NO_BACKUP,
            backup2_tag: NO_BACKUP,
        }),
        fallback: false,
        session: Some(nonce),
        pins,
        takeover: None,
        named: NONE_NAMED,
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
mod tests;
