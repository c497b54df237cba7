//! `GET /route?cookie=VALUE[&pool=NAME]`: what stickyd makes of one session's token, for app
//! developers debugging replication and for support. Whether the token is valid (or why not),
//! the session's home and backups, and what its next request would get, and why.
//!
//! Pure over a snapshot: it decides with the request path's own rule (`affinity::route`) and
//! changes nothing (no placement is drawn: a request that would be a new session says so).

use serde::Serialize;

use crate::affinity::{self, AdminState, Outcome, PoolView, Route, TokenInput};
use crate::state::{Snapshot, View};

/// The answer.
#[derive(Debug, Serialize)]
pub struct Explained {
    /// The pool the token was read for.
    pool: String,
    /// "valid", or why the token is not: "malformed", "bad_mac", "unknown_key", "other_pool",
    /// "expired_idle", "expired_life", "future".
    token: &'static str,
    /// The session, when the token is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<Session>,
    /// What the session's next request would get.
    next: Next,
}

#[derive(Debug, Serialize)]
struct Session {
    /// The session nonce, hex.
    id: String,
    issued_at: u32,
    last_seen: u32,
    /// The backend the token pins, `null` when it names none in this pool (removed, or an
    /// unpinned session).
    home: Option<Member>,
    /// The session's backups with replication on, in order (the home left out), as the next
    /// request would name them.
    backups: Vec<Member>,
    /// The backups the cookie recorded (the app was last told to copy there), in order.
    recorded_backups: Vec<Member>,
}

#[derive(Debug, Serialize)]
struct Member {
    id: String,
    /// "up" or "down".
    health: &'static str,
    state: AdminState,
    /// A handoff is in progress.
    handoff: bool,
    /// Unix time of its last new incarnation (0: none seen).
    restarted_at: u32,
}

#[derive(Debug, Serialize)]
struct Next {
    /// The backend that would serve it; `null` for a new session (placed when it comes) or
    /// when nothing can serve it.
    backend: Option<String>,
    /// The affinity outcome it would be counted as.
    outcome: &'static str,
    /// Replication: the reason of the takeover it would carry.
    takeover: Option<&'static str>,
    /// Whether the response would set a new cookie.
    new_cookie: bool,
    /// In words.
    why: String,
}

/// What `value` is as a token of pool `ix` at unix time `now`.
pub fn explain(snap: &Snapshot, ix: usize, value: &[u8], now: u32) -> Explained {
    let pool = &snap.pools[ix];
    let view = pool.view(&snap.backends);
    let name = pool.name.to_string();
    let input = pool.rings.verify(value);
    let verified = match input {
        TokenInput::Valid(v) => v,
        TokenInput::Absent => return new_session(name, "absent"),
        TokenInput::OtherPool => return new_session(name, "other_pool"),
        TokenInput::Invalid(why) => return new_session(name, Outcome::from(why).as_str()),
    };
    let c = verified.claims;
    let member = |local: usize| member(&view, snap, pool.global(local), local);
    let home = view.resolve(verified.key_index, &c.backend_tag);
    let excluded: [usize; 0] = [];
    let decided = affinity::route(&pool.policy, input, now, &Explain(&view), &excluded, || 0);
    let outcome = decided.as_ref().map(|r| r.outcome);
    let expired = matches!(
        outcome,
        Ok(Outcome::ExpiredIdle | Outcome::ExpiredLife | Outcome::Future)
    );
    let token = match outcome {
        Ok(o) if expired => o.as_str(),
        _ => "valid",
    };
    let serving = decided.as_ref().ok().map(|r| r.backend);
    let backups = match (serving.or(home), expired) {
        (Some(s), false) => affinity::backups(&pool.policy, c.nonce, s, now, &view, &excluded)
            .into_iter()
            .flatten()
            .map(member)
            .collect(),
        _ => Vec::new(),
    };
    let next = match decided {
        Ok(r) if !expired && r.outcome != Outcome::Unpinned => {
            next(snap, pool.global(r.backend), &r, home)
        }
        Ok(r) => Next {
            backend: None,
            outcome: r.outcome.as_str(),
            takeover: None,
            new_cookie: r.issue.is_some(),
            why: if expired {
                "the token has expired: the next request starts a new session, placed then".into()
            } else {
                "an unpinned session (sticky_fraction): placed anew on every request".into()
            },
        },
        Err(e) => Next {
            backend: None,
            outcome: "none",
            takeover: None,
            new_cookie: false,
            why: match e {
                affinity::NoRoute::AllDown => "no backend of the pool can serve it: 503".into(),
                affinity::NoRoute::PinnedDown => {
                    "its home is unusable and on_pinned_down = \"fail\": 503".into()
                }
            },
        },
    };
    Explained {
        pool: name,
        token,
        session: Some(Session {
            id: format!("{:016x}", c.nonce),
            issued_at: c.issued_at,
            last_seen: c.last_seen,
            home: home.map(member),
            backups,
            recorded_backups: [c.backup_tag, c.backup2_tag]
                .into_iter()
                .filter(|t| *t != crate::token::NO_BACKUP)
                .filter_map(|t| view.resolve(verified.key_index, &t))
                .map(member)
                .collect(),
        }),
        next,
    }
}

/// A verified token's route, told.
fn next(snap: &Snapshot, global: usize, r: &Route, home: Option<usize>) -> Next {
    let id = snap.backends[global].id.to_string();
    let why = match (r.outcome, r.takeover) {
        (Outcome::Valid, _) => format!("its home {id} is up: served there"),
        (Outcome::Refreshed, _) => {
            format!("its home {id} is up: served there, the cookie refreshed")
        }
        (Outcome::Draining, _) => format!("its home {id} is draining and keeps its sessions"),
        (_, Some(t)) => format!(
            "its home is {}: {id}, its first usable backup, takes it over (X-Stickyd-Takeover) and it is re-pinned there",
            match t {
                affinity::Takeover::Down => "down or disabled",
                affinity::Takeover::Removed => "no longer in the pool",
                affinity::Takeover::Restarted =>
                    "a restarted process (a new incarnation since the cookie was signed)",
                affinity::Takeover::Handoff => "being handed off",
            }
        ),
        (Outcome::UnknownBackend, None) => {
            format!(
                "its home is no longer in the pool: the fallback {id} serves it and it is re-pinned there"
            )
        }
        (Outcome::BackendDown, None) if r.pins => {
            format!(
                "its home is down or disabled: the fallback {id} serves it and it is re-pinned there"
            )
        }
        (Outcome::BackendDown, None) => format!(
            "its home is down or disabled: the fallback {id} serves it, and it goes home when {} recovers",
            if home.is_some() { "that backend" } else { "it" }
        ),
        (o, None) => format!("{}: served by {id}", o.as_str()),
    };
    Next {
        backend: Some(id),
        outcome: r.outcome.as_str(),
        takeover: r.takeover.map(affinity::Takeover::as_str),
        new_cookie: r.issue.is_some(),
        why,
    }
}

fn member(view: &View<'_>, snap: &Snapshot, global: usize, local: usize) -> Member {
    let b = &snap.backends[global];
    Member {
        id: b.id.to_string(),
        health: if view.healthy(local) { "up" } else { "down" },
        state: view.admin(local),
        handoff: view.handoff(local),
        restarted_at: view.restarted_at(local),
    }
}

fn new_session(pool: String, token: &'static str) -> Explained {
    Explained {
        pool,
        token,
        session: None,
        next: Next {
            backend: None,
            outcome: token,
            takeover: None,
            new_cookie: true,
            why:
                "not a valid token of this pool: the next request starts a new session, placed then"
                    .into(),
        },
    }
}

/// The pool as the decision sees it, but advancing no placement: a route that would place a
/// new session gets the first eligible backend (the answer then says "placed then", not
/// which), and no round robin moves.
struct Explain<'a>(&'a View<'a>);

impl PoolView for Explain<'_> {
    fn weights(&self) -> &[u32] {
        self.0.weights()
    }
    fn hashes(&self) -> &[u64] {
        self.0.hashes()
    }
    fn healthy(&self, i: usize) -> bool {
        self.0.healthy(i)
    }
    fn admin(&self, i: usize) -> AdminState {
        self.0.admin(i)
    }
    fn resolve(&self, key_index: usize, tag: &[u8; 8]) -> Option<usize> {
        self.0.resolve(key_index, tag)
    }
    fn tag(&self, i: usize) -> [u8; 8] {
        self.0.tag(i)
    }
    fn unpinned_tag(&self, k: usize) -> [u8; 8] {
        self.0.unpinned_tag(k)
    }
    fn next_new(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        (0..self.0.weights().len()).find(|&i| eligible(i))
    }
    fn restarted_at(&self, i: usize) -> u32 {
        self.0.restarted_at(i)
    }
    fn handoff(&self, i: usize) -> bool {
        self.0.handoff(i)
    }
}
