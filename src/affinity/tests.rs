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
    restarted: Vec<u32>,
    handoff: Vec<bool>,
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
            restarted: vec![0; n],
            handoff: vec![false; n],
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
                backup_tag: [0; 8],
                backup2_tag: [0; 8],
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
    fn restarted_at(&self, i: usize) -> u32 {
        self.restarted[i]
    }
    fn handoff(&self, i: usize) -> bool {
        self.handoff[i]
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
        backups: 0,
    }
}

fn replicated(n: u8) -> Policy {
    Policy {
        backups: n,
        ..policy()
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
            backup_tag: [0; 8],
            backup2_tag: [0; 8],
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
        backup_tag: [0; 8],
        backup2_tag: [0; 8],
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

#[test]
fn a_new_session_is_tracked_and_pinned_where_it_was_placed() {
    let pool = Pool::new(3);
    let r = go(&policy(), &pool, TokenInput::Absent).unwrap();
    assert_eq!((r.session, r.pins, r.repinned()), (Some(42), true, false));
}

#[test]
fn serving_or_refreshing_a_pin_at_home_is_not_a_new_pin() {
    let pool = Pool::new(3);
    for t in [
        pool.token(1, 7, NOW - 100, NOW - 10),
        pool.token(1, 7, NOW - 1000, NOW - 450),
    ] {
        let r = go(&policy(), &pool, t).unwrap();
        assert_eq!((r.backend, r.session, r.pins), (1, Some(7), false), "{t:?}");
    }
}

#[test]
fn a_move_to_the_fallback_pins_there_unless_the_token_is_kept() {
    let mut pool = Pool::new(3);
    pool.healthy[0] = false;
    let r = go(&policy(), &pool, pool.token(0, 3, NOW - 10, NOW - 10)).unwrap();
    assert_eq!((r.session, r.pins, r.repinned()), (Some(3), true, true));
    let keep = Policy {
        on_pinned_down: OnPinnedDown::Return,
        ..policy()
    };
    let r = go(&keep, &pool, pool.token(0, 3, NOW - 10, NOW - 10)).unwrap();
    assert_eq!((r.session, r.pins, r.repinned()), (Some(3), false, false));
}

#[test]
fn an_unpinned_session_is_tracked_but_never_pinned() {
    let pool = Pool::new(3);
    let p = Policy {
        sticky_below: 0,
        ..policy()
    };
    let r = go(&p, &pool, TokenInput::Absent).unwrap();
    assert_eq!((r.session, r.pins), (Some(42), false));
}

#[test]
fn decide_routes_by_what_the_request_carried() {
    let pool = Pool::new(3);
    let by_key = decide(&policy(), Input::Key(5), NOW, &pool, &[], || 42).unwrap();
    assert_eq!(
        (by_key.outcome, by_key.issue, by_key.session, by_key.pins),
        (Outcome::Hashed, None, None, false)
    );
    let token = pool.token(2, 7, NOW - 100, NOW - 10);
    let by_token = decide(&policy(), Input::Token(token), NOW, &pool, &[], || 42).unwrap();
    assert_eq!((by_token.backend, by_token.outcome), (2, Outcome::Valid));
    // mode = "none": placed like a new session, but nothing issued, tracked or pinned.
    let nothing = decide(&policy(), Input::Nothing, NOW, &pool, &[], || 42).unwrap();
    assert_eq!(
        (
            nothing.outcome,
            nothing.issue,
            nothing.session,
            nothing.pins
        ),
        (Outcome::New, None, None, false)
    );
}

proptest! {
    #[test]
    fn a_pin_always_names_the_serving_backend_and_a_repin_is_a_fallback(
        healthy in proptest::collection::vec(any::<bool>(), 1..8),
        home in 0usize..8,
        nonce in any::<u64>(),
        age in 0u32..3000,
        mode in 0u8..3,
    ) {
        let n = healthy.len();
        let mut pool = Pool::new(n);
        pool.healthy = healthy;
        let p = Policy {
            on_pinned_down: [OnPinnedDown::Repin, OnPinnedDown::Return, OnPinnedDown::Fail][mode as usize],
            ..policy()
        };
        let t = pool.token(home % n, nonce, NOW - age, NOW - age);
        if let Ok(r) = go(&p, &pool, t) {
            if r.pins {
                prop_assert_eq!(r.issue.map(|c| c.backend_tag), Some(pool.tag(r.backend)));
            }
            prop_assert!(!r.repinned() || r.fallback);
            prop_assert!(r.session.is_some());
        }
    }
}

// Replication (issue 15).

/// The session's home in `pool` for `nonce` if it were placed by rendezvous, and its first
/// two backups: the ranking over every backend.
fn ranking(pool: &Pool, nonce: u64) -> Vec<usize> {
    let mut left: Vec<usize> = (0..pool.ids.len()).collect();
    let mut out = Vec::new();
    while let Some(b) =
        crate::balance::rendezvous(nonce, &pool.hashes, &pool.weights, |i| left.contains(&i))
    {
        out.push(b);
        left.retain(|&i| i != b);
    }
    out
}

#[test]
fn backups_are_the_ranking_without_the_serving_backend_and_unusable_ones() {
    let mut pool = Pool::new(5);
    let nonce = 99;
    let rank = ranking(&pool, nonce);
    let home = rank[2];
    let expect: Vec<usize> = rank
        .iter()
        .copied()
        .filter(|&i| i != home)
        .take(2)
        .collect();
    assert_eq!(
        backups(&replicated(2), nonce, home, NOW, &pool, &[]),
        [Some(expect[0]), Some(expect[1])]
    );
    assert_eq!(
        backups(&replicated(1), nonce, home, NOW, &pool, &[]),
        [Some(expect[0]), None]
    );
    assert_eq!(
        backups(&policy(), nonce, home, NOW, &pool, &[]),
        [None, None]
    );
    // The first backup goes down, another is draining: they are skipped, in ranking order.
    pool.healthy[expect[0]] = false;
    pool.admin[expect[1]] = AdminState::Draining;
    let usable: Vec<usize> = rank
        .iter()
        .copied()
        .filter(|&i| i != home && i != expect[0] && i != expect[1])
        .collect();
    assert_eq!(
        backups(&replicated(2), nonce, home, NOW, &pool, &[]),
        [Some(usable[0]), Some(usable[1])]
    );
    // Excluded (failed in this request) too.
    assert_eq!(
        backups(&replicated(1), nonce, home, NOW, &pool, &[usable[0]]),
        [Some(usable[1]), None]
    );
}

#[test]
fn a_lost_home_goes_to_the_backup_named_before_the_loss_with_a_takeover() {
    for nonce in 0..200u64 {
        let mut pool = Pool::new(4);
        let home = (nonce % 4) as usize;
        let named = backups(&replicated(1), nonce, home, NOW, &pool, &[])[0].unwrap();
        let t = pool.token(home, nonce, NOW - 100, NOW - 10);
        // Down.
        pool.healthy[home] = false;
        let r = go(&replicated(1), &pool, t).unwrap();
        assert_eq!(
            (r.backend, r.outcome, r.takeover, r.pins),
            (named, Outcome::BackendDown, Some(Takeover::Down), true)
        );
        assert_eq!(r.issue.unwrap().backend_tag, pool.tag(named), "re-pinned");
        assert_eq!(r.issue.unwrap().nonce, nonce, "the same session");
        pool.healthy[home] = true;
        // Handed off.
        pool.handoff[home] = true;
        pool.admin[home] = AdminState::Draining;
        let r = go(&replicated(1), &pool, t).unwrap();
        assert_eq!(
            (r.backend, r.outcome, r.takeover),
            (named, Outcome::Handoff, Some(Takeover::Handoff))
        );
        pool.handoff[home] = false;
        pool.admin[home] = AdminState::Active;
        // Restarted after the token was signed (at NOW - 10), healthy again.
        pool.restarted[home] = NOW - 5;
        let r = go(&replicated(1), &pool, t).unwrap();
        assert_eq!(
            (r.backend, r.outcome, r.takeover),
            (named, Outcome::Restarted, Some(Takeover::Restarted))
        );
        // A token signed after the restart is the new process's: served at home.
        let fresh = pool.token(home, nonce, NOW - 100, NOW - 4);
        let same_second = pool.token(home, nonce, NOW - 100, NOW - 5);
        assert_eq!(
            go(&replicated(1), &pool, same_second).unwrap().takeover,
            Some(Takeover::Restarted),
            "signed in the second of the restart: taken as the old process's"
        );
        let r = go(&replicated(1), &pool, fresh).unwrap();
        assert_eq!((r.backend, r.takeover), (home, None));
        // Without replication a restart is not noticed and a handoff is a drain.
        let r = go(&policy(), &pool, t).unwrap();
        assert_eq!((r.backend, r.takeover), (home, None));
    }
}

#[test]
fn when_the_first_backup_is_lost_too_the_next_one_takes_over() {
    let mut pool = Pool::new(5);
    let nonce = 7;
    let home = 0;
    let [first, second] = backups(&replicated(2), nonce, home, NOW, &pool, &[]);
    let (first, second) = (first.unwrap(), second.unwrap());
    let t = pool.token(home, nonce, NOW - 100, NOW - 10);
    pool.healthy[home] = false;
    pool.healthy[first] = false;
    let r = go(&replicated(2), &pool, t).unwrap();
    assert_eq!((r.backend, r.takeover), (second, Some(Takeover::Down)));
    // A retry after the second failed too: the next usable in the ranking, still a takeover.
    let r = route(&replicated(2), t, NOW, &pool, &[second], || 1).unwrap();
    assert!(![home, first, second].contains(&r.backend));
    assert_eq!(r.takeover, Some(Takeover::Down));
}

#[test]
fn a_removed_home_is_a_takeover_with_replication_only() {
    let pool = Pool::new(3);
    let mut gone = Pool::new(4);
    gone.ids[3] = "app-gone".into();
    let t = TokenInput::Valid(Verified {
        key_index: 0,
        claims: Claims {
            backend_tag: gone.tag(3),
            nonce: 5,
            issued_at: NOW - 100,
            last_seen: NOW - 10,
            backup_tag: [0; 8],
            backup2_tag: [0; 8],
        },
    });
    let r = go(&replicated(1), &pool, t).unwrap();
    assert_eq!(
        (r.outcome, r.takeover),
        (Outcome::UnknownBackend, Some(Takeover::Removed))
    );
    assert_eq!(go(&policy(), &pool, t).unwrap().takeover, None);
}

proptest! {
    /// Two instances that list the same backend ids in any order name the same backups and,
    /// when the home is lost, take over on the same backend.
    #[test]
    fn instances_agree_on_backups_and_takeovers_whatever_the_order(
        n in 3usize..8, nonce in any::<u64>(), home in 0usize..8, down in any::<u8>(), rot in 0usize..8,
    ) {
        let home = home % n;
        let mut a = Pool::new(n);
        let mut b = Pool::new(n);
        // b lists the same ids rotated.
        b.ids.rotate_left(rot % n);
        b.hashes = b.ids.iter().map(|s| id_hash(s)).collect();
        let order: Vec<usize> = (0..n)
            .map(|i| b.ids.iter().position(|id| *id == a.ids[i]).unwrap())
            .collect();
        let to_b = |i: usize| order[i];
        for i in 0..n {
            if i != home && down & (1 << i) != 0 {
                a.healthy[i] = false;
                b.healthy[to_b(i)] = false;
            }
        }
        let ba = backups(&replicated(2), nonce, home, NOW, &a, &[]);
        let bb = backups(&replicated(2), nonce, to_b(home), NOW, &b, &[]);
        prop_assert_eq!(ba.map(|x| x.map(to_b)), bb);
        a.healthy[home] = false;
        b.healthy[to_b(home)] = false;
        let ra = go(&replicated(2), &a, a.token(home, nonce, NOW - 100, NOW - 10));
        let rb = go(&replicated(2), &b, b.token(to_b(home), nonce, NOW - 100, NOW - 10));
        match (ra, rb) {
            (Ok(ra), Ok(rb)) => {
                prop_assert_eq!(to_b(ra.backend), rb.backend);
                prop_assert_eq!(Some(ra.backend), ba[0], "the first backup named before");
                prop_assert_eq!(ra.takeover, Some(Takeover::Down));
            }
            (Err(_), Err(_)) => prop_assert_eq!(ba[0], None),
            _ => prop_assert!(false, "the instances disagree"),
        }
    }

    /// Backups never include the serving backend or an unusable one, and are distinct.
    #[test]
    fn backups_never_name_the_server_or_an_unusable_backend(
        n in 1usize..9, nonce in any::<u64>(), serving in 0usize..9, down in any::<u16>(), k in 0u8..3,
    ) {
        let mut pool = Pool::new(n);
        let serving = serving % n;
        for i in 0..n {
            pool.healthy[i] = down & (1 << i) == 0;
            if down & (1 << (i + 8)) != 0 {
                pool.admin[i] = AdminState::Draining;
            }
        }
        let got = backups(&replicated(k), nonce, serving, NOW, &pool, &[]);
        let named: Vec<usize> = got.iter().flatten().copied().collect();
        prop_assert!(named.len() <= usize::from(k));
        for &b in &named {
            prop_assert!(b != serving && pool.healthy[b] && pool.admin[b] == AdminState::Active);
        }
        if let [x, y] = named[..] {
            prop_assert_ne!(x, y);
        }
        if got[0].is_none() {
            prop_assert_eq!(got[1], None);
        }
    }
}

#[test]
fn a_backend_seen_restarting_this_second_takes_no_new_pin_until_the_next() {
    let mut pool = Pool::new(3);
    pool.restarted[1] = NOW;
    // New sessions skip it for the rest of the second; without replication nothing changes.
    for _ in 0..6 {
        assert_ne!(
            go(&replicated(1), &pool, TokenInput::Absent)
                .unwrap()
                .backend,
            1
        );
    }
    let picks: Vec<usize> = (0..6)
        .map(|_| go(&policy(), &pool, TokenInput::Absent).unwrap().backend)
        .collect();
    assert!(picks.contains(&1));
    // Nor is it a takeover target or named as a backup in that second.
    for nonce in 0..50 {
        let named = backups(&replicated(2), nonce, 0, NOW, &pool, &[]);
        assert!(!named.contains(&Some(1)), "{named:?}");
        assert!(
            backups(&replicated(2), nonce, 0, NOW + 1, &pool, &[])
                .iter()
                .flatten()
                .count()
                == 2
        );
    }
    // From the next second on it takes pins again.
    let r = route(
        &replicated(1),
        TokenInput::Absent,
        NOW + 1,
        &pool,
        &[],
        || 3,
    )
    .unwrap();
    let _ = r;
    let later: Vec<usize> = (0..6)
        .map(|_| {
            route(
                &replicated(1),
                TokenInput::Absent,
                NOW + 1,
                &pool,
                &[],
                || 3,
            )
            .unwrap()
            .backend
        })
        .collect();
    assert!(later.contains(&1));
}

/// `t` (a token) with `backup` recorded as its backup.
fn with_backup(pool: &Pool, t: TokenInput, backup: usize) -> TokenInput {
    match t {
        TokenInput::Valid(mut v) => {
            v.claims.backup_tag = pool.tag(backup);
            TokenInput::Valid(v)
        }
        other => other,
    }
}

#[test]
fn the_token_records_the_backup_named_and_is_reissued_when_it_changes() {
    let mut pool = Pool::new(4);
    let nonce = 11;
    let rank = ranking(&pool, nonce);
    let home = rank[3];
    let (first, second) = (rank[0], rank[1]);
    // A new session's token records its first backup.
    let r = route(&replicated(1), TokenInput::Absent, NOW, &pool, &[], || {
        nonce
    })
    .unwrap();
    let named = backups(&replicated(1), nonce, r.backend, NOW, &pool, &[])[0].unwrap();
    assert_eq!(r.issue.unwrap().backup_tag, pool.tag(named));
    // Served at home with the backup it recorded: no cookie.
    let t = with_backup(&pool, pool.token(home, nonce, NOW - 100, NOW - 10), first);
    let r = go(&replicated(1), &pool, t).unwrap();
    assert_eq!(
        (r.backend, r.issue, r.outcome),
        (home, None, Outcome::Valid)
    );
    // The first backup goes down: the session names the second, and its cookie says so.
    pool.healthy[first] = false;
    let r = go(&replicated(1), &pool, t).unwrap();
    assert_eq!((r.backend, r.outcome), (home, Outcome::Refreshed));
    let c = r.issue.unwrap();
    assert_eq!(
        (c.backup_tag, c.backend_tag),
        (pool.tag(second), pool.tag(home))
    );
    assert_eq!((c.nonce, c.issued_at, c.last_seen), (nonce, NOW - 100, NOW));
    // A token from before replication (no backup) gets one on its next request.
    pool.healthy[first] = true;
    let old = pool.token(home, nonce, NOW - 100, NOW - 10);
    let r = go(&replicated(1), &pool, old).unwrap();
    assert_eq!(r.issue.unwrap().backup_tag, pool.tag(first));
    // Without replication no backup is recorded, and tokens stay version 1.
    let r = go(&policy(), &pool, TokenInput::Absent).unwrap();
    assert_eq!(r.issue.unwrap().backup_tag, crate::token::NO_BACKUP);
}

#[test]
fn a_takeover_goes_to_the_recorded_backup_even_after_a_better_ranked_one_recovers() {
    // The demo's case: the session was copied to the second of its ranking while the first was
    // down; the first recovers; the session makes no request; then its home is lost.
    let mut pool = Pool::new(4);
    let nonce = 23;
    let rank = ranking(&pool, nonce);
    let home = rank[3];
    let (first, second) = (rank[0], rank[1]);
    let t = with_backup(&pool, pool.token(home, nonce, NOW - 100, NOW - 10), second);
    pool.healthy[home] = false;
    let r = go(&replicated(1), &pool, t).unwrap();
    assert_eq!(
        (r.backend, r.takeover),
        (second, Some(Takeover::Down)),
        "the backup holding the copy, not the recovered {first}"
    );
    // Re-pinned there, the token records the new home's own first backup.
    let c = r.issue.unwrap();
    assert_eq!(c.backend_tag, pool.tag(second));
    let next = backups(&replicated(1), nonce, second, NOW, &pool, &[])[0].unwrap();
    assert_eq!(c.backup_tag, pool.tag(next));
    // The recorded backup lost too: the ranking's first usable takes over.
    pool.healthy[second] = false;
    let r = go(&replicated(1), &pool, t).unwrap();
    assert_eq!((r.backend, r.takeover), (first, Some(Takeover::Down)));
    // The same for a handoff and a restart of the home.
    pool.healthy[second] = true;
    pool.healthy[home] = true;
    pool.handoff[home] = true;
    pool.admin[home] = AdminState::Draining;
    assert_eq!(go(&replicated(1), &pool, t).unwrap().backend, second);
    pool.handoff[home] = false;
    pool.admin[home] = AdminState::Active;
    pool.restarted[home] = NOW - 5;
    assert_eq!(go(&replicated(1), &pool, t).unwrap().backend, second);
}

#[test]
fn with_two_backups_the_second_recorded_takes_over_when_the_first_is_lost_too() {
    let mut pool = Pool::new(5);
    let nonce = 23;
    let rank = ranking(&pool, nonce);
    let home = rank[4];
    // Named while the ranking's first was down: [r1, r2], both recorded.
    pool.healthy[rank[0]] = false;
    let r = go(
        &replicated(2),
        &pool,
        pool.token(home, nonce, NOW - 100, NOW - 10),
    )
    .unwrap();
    let c = r.issue.expect("the backups are recorded");
    assert_eq!(
        (c.backup_tag, c.backup2_tag),
        (pool.tag(rank[1]), pool.tag(rank[2]))
    );
    assert_eq!(r.backups(), [Some(rank[1]), Some(rank[2])]);
    let t = TokenInput::Valid(Verified {
        key_index: 0,
        claims: c,
    });
    // r0 recovers while the session is quiet; the home and the first backup are lost.
    pool.healthy[rank[0]] = true;
    pool.healthy[home] = false;
    pool.healthy[rank[1]] = false;
    let r = go(&replicated(2), &pool, t).unwrap();
    assert_eq!(
        (r.backend, r.takeover),
        (rank[2], Some(Takeover::Down)),
        "the second backup named before, not the recovered r0"
    );
}
