//! Pools of a snapshot: what their tokens are bound to, which other pools' rings they know,
//! their local indexes, per-pool placement, and the live state that follows a pool by name and
//! a backend by id across reloads.

use super::*;
use crate::affinity::{Input, PoolView, TokenInput, extract};
use crate::backend::BackendLive;
use crate::config::Config;
use crate::state::{Shared, Snapshot};
use crate::token::{Claims, Invalid};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

/// The secret `env:K` resolves to in `config::parse_for_tests` (every env key is this).
const SECRET: [u8; 32] = [b'k'; 32];

/// A pool for [`config`]: its name ("default": the top-level `[[backend]]`s and
/// `[affinity]`), lines for its `[affinity]` section, and its backends as `"id"` or
/// `"id*weight"`.
type PoolSpec<'a> = (&'a str, &'a str, &'a [&'a str]);

/// A config of `pools`, keys `env:K` at the top level (inherited by every pool), with counter
/// slots for two workers. Backend addresses are distinct.
fn config(pools: &[PoolSpec<'_>]) -> Config {
    let mut port = 0;
    let mut backends = |out: &mut String, table: &str, ids: &[&str]| {
        for spec in ids {
            let (id, weight) = spec.split_once('*').unwrap_or((spec, "1"));
            port += 1;
            out.push_str(&format!(
                "[[{table}]]\nid = \"{id}\"\naddress = \"h:{port}\"\nweight = {weight}\n"
            ));
        }
    };
    let mut text = String::from("[server]\nworker_threads = 2\n[affinity]\nkeys = [\"env:K\"]\n");
    if let Some((_, affinity, ids)) = pools.iter().find(|p| p.0 == DEFAULT) {
        text.push_str(affinity);
        text.push('\n');
        backends(&mut text, "backend", ids);
    }
    for (name, affinity, ids) in pools.iter().filter(|p| p.0 != DEFAULT) {
        text.push_str(&format!(
            "[[pool]]\nname = \"{name}\"\n[pool.affinity]\n{affinity}\n"
        ));
        backends(&mut text, "pool.backend", ids);
    }
    crate::config::parse_for_tests(&text)
}

/// Default (a, b) and shop (c, d, e).
fn two_pools() -> Config {
    config(&[("default", "", &["a", "b"]), ("shop", "", &["c", "d", "e"])])
}

fn claims(tag: [u8; 8]) -> Claims {
    Claims {
        backend_tag: tag,
        nonce: 7,
        issued_at: 1_000,
        last_seen: 1_000,
        backup_tag: [0; 8],
        backup2_tag: [0; 8],
    }
}

/// A token of `pool` pinned to its member `local`, as the pool itself would issue it.
fn token_of(snap: &Snapshot, pool: usize, local: usize) -> String {
    let p = &snap.pools[pool];
    let tag = p.view(&snap.backends).tag(local);
    p.rings.own.sign(&claims(tag)).as_str().to_string()
}

/// What `pool` makes of a request carrying `token` the way that pool's tokens come (its cookie
/// or its header), through the request path's [`extract`].
fn input_in(snap: &Snapshot, pool: usize, carrier: &str, token: &str) -> Input {
    let p = &snap.pools[pool];
    let mut h = HeaderMap::new();
    let (name, value) = match carrier.strip_prefix("header:") {
        Some(header) => (header.to_string(), token.to_string()),
        None => ("cookie".to_string(), format!("{carrier}={token}")),
    };
    h.insert(
        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_str(&value).unwrap(),
    );
    let peer = std::net::IpAddr::from([127, 0, 0, 1]);
    extract(&p.source, &p.rings, &mut h, peer, |_| false)
}

#[test]
fn the_default_pool_binds_to_the_cookie_alone_and_others_to_the_cookie_and_their_name() {
    assert_eq!(binding(DEFAULT, "stickyd"), "stickyd");
    assert_eq!(binding("shop", "stickyd_shop"), "stickyd_shop\0shop");
    assert_ne!(binding("shop", "c"), binding("shpo", "c"));

    let snap = Shared::new(two_pools()).load();
    let default = &snap.pools[0];
    assert_eq!(&*default.name, DEFAULT);
    // A token as stickyd signed it before pools: the key ring bound to the cookie name.
    let before = KeyRing::new(&[SECRET], "stickyd");
    let tag_b = default.view(&snap.backends).tag(1);
    assert_eq!(tag_b, before.backend_tag(0, "b"), "tags are not pool-bound");
    let old = before.sign(&claims(tag_b));
    let v = default
        .rings
        .own
        .verify(old.as_str().as_bytes())
        .expect("a pre-pools token verifies in the default pool");
    assert_eq!(v.claims, claims(tag_b));
    assert_eq!(
        default.view(&snap.backends).resolve(v.key_index, &tag_b),
        Some(1)
    );
    // And the default pool's own tokens are exactly the old format.
    assert_eq!(
        before
            .verify(token_of(&snap, 0, 1).as_bytes())
            .map(|v| v.claims),
        Ok(claims(tag_b))
    );
    // Through the request path: a valid token, served by its backend.
    let got = input_in(&snap, 0, "stickyd", old.as_str());
    let Input::Token(t @ TokenInput::Valid(_)) = got else {
        panic!("{got:?}");
    };
    let r = crate::affinity::route(
        &default.policy,
        t,
        1_000,
        &default.view(&snap.backends),
        &[],
        || 1,
    )
    .unwrap();
    assert_eq!((r.backend, r.outcome), (1, crate::affinity::Outcome::Valid));

    // The pool shop binds to its cookie and its name: neither ring alone verifies its tokens.
    let shop = &snap.pools[1];
    let tok = token_of(&snap, 1, 0);
    assert!(shop.rings.own.verify(tok.as_bytes()).is_ok());
    let by_cookie = KeyRing::new(&[SECRET], "stickyd_shop");
    assert_eq!(by_cookie.verify(tok.as_bytes()), Err(Invalid::BadMac));
    let bound = KeyRing::new(&[SECRET], &binding("shop", "stickyd_shop"));
    assert!(bound.verify(tok.as_bytes()).is_ok());
    assert_eq!(
        shop.rings.own.verify(old.as_str().as_bytes()),
        Err(Invalid::BadMac)
    );
}

#[test]
fn pools_sharing_a_cookie_and_keys_refuse_each_others_tokens_but_know_them() {
    let c = config(&[
        ("default", "cookie = \"sess\"", &["a"]),
        ("shop", "cookie = \"sess\"", &["b"]),
        ("blog", "cookie = \"sess\"", &["c"]),
        ("api", "cookie = \"other\"", &["d"]),
    ]);
    let bytes: Vec<Vec<Vec<u8>>> = c
        .pools
        .iter()
        .map(|p| p.affinity.secrets.iter().map(|s| s.0.clone()).collect())
        .collect();
    assert!(
        bytes.iter().all(|b| *b == [SECRET.to_vec()]),
        "the same keys everywhere"
    );
    let snap = Shared::new(c).load();
    let others: Vec<usize> = snap.pools.iter().map(|p| p.rings.others.len()).collect();
    assert_eq!(
        others,
        [2, 2, 2, 0],
        "the pools on \"sess\" know each other, api nobody"
    );
    for from in 0..3 {
        let tok = token_of(&snap, from, 0);
        for to in 0..3 {
            let p = &snap.pools[to];
            let own = p.rings.own.verify(tok.as_bytes());
            let got = input_in(&snap, to, "sess", &tok);
            if from == to {
                assert!(own.is_ok(), "{from} in itself");
                assert!(matches!(got, Input::Token(TokenInput::Valid(_))), "{got:?}");
            } else {
                assert_eq!(own, Err(Invalid::BadMac), "{from} in {to}");
                let knowing = p
                    .rings
                    .others
                    .iter()
                    .filter(|r| r.verify(tok.as_bytes()).is_ok());
                assert_eq!(
                    knowing.count(),
                    1,
                    "exactly one other ring of {to} takes {from}'s"
                );
                assert_eq!(got, Input::Token(TokenInput::OtherPool), "{from} in {to}");
            }
        }
        // A pool on another cookie never sees it as another pool's: a forgery at most.
        assert_eq!(
            input_in(&snap, 3, "other", &tok),
            Input::Token(TokenInput::Invalid(Invalid::BadMac))
        );
    }
    // Another pool's token is served as a new session of this pool, counted as other_pool, and
    // the token issued is this pool's.
    let blog = &snap.pools[2];
    let view = blog.view(&snap.backends);
    let r = crate::affinity::route(&blog.policy, TokenInput::OtherPool, 1_000, &view, &[], || 9)
        .unwrap();
    assert_eq!(r.outcome, crate::affinity::Outcome::OtherPool);
    let issued = blog.rings.own.sign(&r.issue.expect("a new token"));
    let tok = issued.as_str();
    assert!(matches!(
        input_in(&snap, 2, "sess", tok),
        Input::Token(TokenInput::Valid(_))
    ));
    assert_eq!(
        input_in(&snap, 1, "sess", tok),
        Input::Token(TokenInput::OtherPool)
    );
}

#[test]
fn pools_on_different_cookies_or_without_a_token_carrier_know_no_other_ring() {
    let snap = Shared::new(config(&[
        ("default", "", &["a"]),
        ("shop", "", &["b"]),
        ("blog", "cookie = \"blog\"", &["c"]),
    ]))
    .load();
    assert!(snap.pools.iter().all(|p| p.rings.others.is_empty()));
    // shop's token in shop's cookie name but presented to default (under default's cookie):
    // not recognised, so a forgery.
    let tok = token_of(&snap, 1, 0);
    assert_eq!(
        input_in(&snap, 0, "stickyd", &tok),
        Input::Token(TokenInput::Invalid(Invalid::BadMac))
    );
    assert_eq!(
        input_in(&snap, 0, "stickyd_shop", &tok),
        Input::Token(TokenInput::Absent)
    );

    // ip and none pools carry no token, whatever their cookie says.
    let snap = Shared::new(config(&[
        ("default", "", &["a"]),
        ("ips", "mode = \"ip\"\ncookie = \"stickyd\"", &["b"]),
        ("ips2", "mode = \"ip\"\ncookie = \"stickyd\"", &["c"]),
        ("plain", "mode = \"none\"\ncookie = \"stickyd\"", &["d"]),
        ("plain2", "mode = \"none\"\ncookie = \"stickyd\"", &["e"]),
    ]))
    .load();
    let others: Vec<usize> = snap.pools.iter().map(|p| p.rings.others.len()).collect();
    assert_eq!(others, [0; 5]);
    assert_eq!(snap.pools[1].source, crate::affinity::Source::Ip);
    assert_eq!(snap.pools[3].source, crate::affinity::Source::None);
}

#[test]
fn header_mode_pools_sharing_a_header_know_each_other_and_no_one_else() {
    let snap = Shared::new(config(&[
        ("default", "mode = \"header\"", &["a"]),
        ("shop", "", &["b"]),
        ("api", "header = \"x-api\"", &["c"]),
        ("gw", "header_trusted = true", &["d"]),
        (
            "web",
            "mode = \"cookie\"\ncookie = \"x-stickyd-session\"",
            &["e"],
        ),
    ]))
    .load();
    let header = "header:x-stickyd-session";
    assert!(
        matches!(
            snap.pools[1].source,
            crate::affinity::Source::Header { trusted: false, .. }
        ),
        "shop inherits header mode: {:?}",
        snap.pools[1].source
    );
    let others: Vec<usize> = snap.pools.iter().map(|p| p.rings.others.len()).collect();
    assert_eq!(others, [1, 1, 0, 0, 0]);
    let tok = token_of(&snap, 1, 0);
    assert_eq!(
        input_in(&snap, 0, header, &tok),
        Input::Token(TokenInput::OtherPool)
    );
    assert!(matches!(
        input_in(&snap, 1, header, &tok),
        Input::Token(TokenInput::Valid(_))
    ));
    let tok = token_of(&snap, 0, 0);
    assert_eq!(
        input_in(&snap, 1, header, &tok),
        Input::Token(TokenInput::OtherPool)
    );
    assert_eq!(
        input_in(&snap, 2, "header:x-api", &tok),
        Input::Token(TokenInput::Invalid(Invalid::BadMac))
    );
    assert!(
        matches!(input_in(&snap, 3, header, &tok), Input::Key(_)),
        "hashed, not verified"
    );
}

#[test]
fn members_are_global_indexes_and_tags_resolve_only_within_their_pool() {
    let snap = Shared::new(two_pools()).load();
    let ids = |p: &Pool| -> Vec<String> {
        p.members
            .iter()
            .map(|&g| snap.backends[g].id.to_string())
            .collect()
    };
    assert_eq!(snap.pools[0].members, [0, 1]);
    assert_eq!(snap.pools[1].members, [2, 3, 4]);
    assert_eq!(ids(&snap.pools[1]), ["c", "d", "e"]);
    assert_eq!(snap.pool_named("shop"), Some(1));
    for (ix, p) in snap.pools.iter().enumerate() {
        let view = p.view(&snap.backends);
        assert_eq!(view.weights().len(), p.members.len());
        for (i, &g) in p.members.iter().enumerate() {
            assert_eq!(p.global(i), g);
            assert_eq!(snap.backends[g].pool, ix, "{}", snap.backends[g].id);
            assert_eq!(view.resolve(0, &view.tag(i)), Some(i));
            assert_eq!(
                view.tag(i),
                p.rings.own.backend_tag(0, &snap.backends[g].id)
            );
        }
    }
    let expect_pool = [0, 0, 1, 1, 1];
    let got: Vec<usize> = snap.backends.iter().map(|b| b.pool).collect();
    assert_eq!(got, expect_pool);
    // A backend of the other pool has no tag here, even though the rings hold the same key.
    let (d, s) = (
        snap.pools[0].view(&snap.backends),
        snap.pools[1].view(&snap.backends),
    );
    for i in 0..3 {
        assert_eq!(d.resolve(0, &s.tag(i)), None, "shop's {i} in default");
    }
    for i in 0..2 {
        assert_eq!(s.resolve(0, &d.tag(i)), None, "default's {i} in shop");
    }
    // The unpinned tag is no member's.
    assert_eq!(s.resolve(0, &s.unpinned_tag(0)), None);
}

#[test]
fn each_pool_places_on_its_own_members_in_its_own_smooth_wrr_order() {
    let snap = Shared::new(config(&[
        ("default", "", &["a*3", "b*1"]),
        ("shop", "", &["c*1", "d*2", "e*5"]),
    ]))
    .load();
    let (d, s) = (
        snap.pools[0].view(&snap.backends),
        snap.pools[1].view(&snap.backends),
    );
    let (mut wd, mut ws) = (SmoothWrr::new(2), SmoothWrr::new(3));
    let (weights_d, weights_s) = ([3, 1], [1, 2, 5]);
    assert_eq!(d.weights(), weights_d);
    assert_eq!(s.weights(), weights_s);
    // Uneven interleaving: shop is asked more often, and default's sequence must not notice.
    let mut seen = [[0u32; 3]; 2];
    for n in 0..160 {
        let on_shop = n % 3 != 0;
        let (view, wrr, w, ix): (&View<'_>, &mut SmoothWrr, &[u32], usize) = if on_shop {
            (&s, &mut ws, &weights_s, 1)
        } else {
            (&d, &mut wd, &weights_d, 0)
        };
        let got = view.next_new(&|_| true).unwrap();
        assert!(got < snap.pools[ix].members.len(), "a local index: {got}");
        assert_eq!(
            Some(got),
            wrr.next(w, |_| true),
            "placement {n} on pool {ix}"
        );
        seen[ix][got] += 1;
    }
    assert!(
        seen[1][2] > seen[1][1] && seen[1][1] > seen[1][0],
        "{seen:?}"
    );
    // With a member ineligible, only the others are picked.
    for _ in 0..20 {
        let got = s.next_new(&|i| i != 2).unwrap();
        assert!(got < 2);
        assert_eq!(Some(got), ws.next(&weights_s, |i| i != 2));
    }
    assert_eq!(s.next_new(&|_| false), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Placements interleaved over twelve pools, in any order: each pool's placements are
    /// exactly its own smooth WRR sequence over its own members.
    #[test]
    fn interleaved_placements_over_many_pools_keep_each_pools_exact_sequence(
        weights in prop::collection::vec(prop::collection::vec(1u32..6, 1..5), 12),
        schedule in prop::collection::vec((0usize..12, any::<u8>()), 0..400),
    ) {
        let names: Vec<String> = (0..12)
            .map(|p| if p == 0 { DEFAULT.to_string() } else { format!("p{p}") })
            .collect();
        let ids: Vec<Vec<String>> = weights
            .iter()
            .enumerate()
            .map(|(p, ws)| ws.iter().enumerate().map(|(i, w)| format!("b{p}-{i}*{w}")).collect())
            .collect();
        let refs: Vec<Vec<&str>> = ids.iter().map(|v| v.iter().map(|s| s.as_str()).collect()).collect();
        let specs: Vec<PoolSpec<'_>> = (0..12).map(|p| (names[p].as_str(), "", &refs[p][..])).collect();
        let snap = Shared::new(config(&specs)).load();
        prop_assert_eq!(snap.pools.len(), 12);
        let views: Vec<View<'_>> = snap.pools.iter().map(|p| p.view(&snap.backends)).collect();
        let mut alone: Vec<SmoothWrr> = weights.iter().map(|w| SmoothWrr::new(w.len())).collect();
        for (p, skip) in schedule {
            let n = weights[p].len();
            // Sometimes one member is ineligible (never all of them).
            let skip = if n > 1 && skip % 3 == 0 { usize::from(skip) % n } else { usize::MAX };
            let got = views[p].next_new(&|i| i != skip);
            let want = alone[p].next(&weights[p], |i| i != skip);
            prop_assert_eq!(got, want, "pool {}", p);
            let got = got.unwrap();
            prop_assert!(got < snap.pools[p].members.len());
            prop_assert_eq!(snap.backends[snap.pools[p].global(got)].pool, p);
        }
    }
}

#[test]
fn pool_counters_sum_the_slots_of_every_worker_and_of_other_threads() {
    use crate::affinity::Outcome;
    use crate::metrics::shard::enter_worker;
    let shared = Shared::new(two_pools());
    let snap = shared.load();
    let shop = &snap.pools[1].live;
    // Workers 0 and 1 in their own slots; a thread that is no worker and a worker beyond the
    // slots (there are two) in the shared one.
    std::thread::scope(|t| {
        for w in [Some(0), Some(1), None, Some(5)] {
            t.spawn(move || {
                if let Some(w) = w {
                    enter_worker(w);
                }
                for n in 0..3_000u32 {
                    shop.outcome(if n % 3 == 0 {
                        Outcome::OtherPool
                    } else {
                        Outcome::New
                    });
                    if n % 10 == 0 {
                        shop.repin();
                    }
                }
            });
        }
    });
    assert_eq!(shop.outcomes(Outcome::OtherPool), 4_000);
    assert_eq!(shop.outcomes(Outcome::New), 8_000);
    assert_eq!(shop.outcomes(Outcome::Valid), 0);
    assert_eq!(shop.repins(), 1_200);
    let default = &snap.pools[0].live;
    assert_eq!(default.outcomes(Outcome::New), 0, "another pool's counters");
    default.outcome(Outcome::New);
    default.outcome(Outcome::Valid);
    default.repin();
    assert_eq!(shared.outcomes(Outcome::New), 8_001, "summed over pools");
    assert_eq!(shared.outcomes(Outcome::Valid), 1);
    assert_eq!(shared.outcomes(Outcome::OtherPool), 4_000);
    assert_eq!(shared.repins(), 1_201);
}

#[test]
fn pool_counters_survive_a_reload_that_keeps_the_name_and_a_renamed_pool_starts_at_zero() {
    use crate::affinity::Outcome;
    let shared = Shared::new(config(&[
        ("default", "", &["a"]),
        ("shop", "", &["b"]),
        ("blog", "", &["c"]),
    ]));
    let old = shared.load();
    for (ix, n) in [(0, 1), (1, 10), (2, 100)] {
        for _ in 0..n {
            old.pools[ix].live.outcome(Outcome::New);
        }
        old.pools[ix].live.repin();
    }
    assert_eq!(shared.outcomes(Outcome::New), 111);
    // shop changes (a backend more, another cookie); blog is renamed; the order changes too.
    let new = shared.apply(config(&[
        ("default", "", &["a"]),
        ("journal", "", &["c"]),
        ("shop", "cookie = \"s\"", &["b", "x"]),
    ]));
    let names: Vec<&str> = new.pools.iter().map(|p| &*p.name).collect();
    assert_eq!(names, ["default", "journal", "shop"]);
    assert!(Arc::ptr_eq(&old.pools[0].live, &new.pools[0].live));
    assert!(
        Arc::ptr_eq(&old.pools[1].live, &new.pools[2].live),
        "shop by name"
    );
    assert!(!Arc::ptr_eq(&old.pools[2].live, &new.pools[1].live));
    assert_eq!(new.pools[2].live.outcomes(Outcome::New), 10);
    assert_eq!(new.pools[2].live.repins(), 1);
    assert_eq!(
        new.pools[1].live.outcomes(Outcome::New),
        0,
        "journal starts at zero"
    );
    assert_eq!(new.pools[1].live.repins(), 0);
    assert_eq!(shared.outcomes(Outcome::New), 11, "blog's are gone with it");
    assert_eq!(shared.repins(), 2);
    assert_eq!(shared.live.lock().unwrap().pools.len(), 3);
    // Counting after the reload, on either snapshot, lands in the same counters.
    old.pools[1].live.outcome(Outcome::New);
    new.pools[2].live.outcome(Outcome::New);
    assert_eq!(new.pools[2].live.outcomes(Outcome::New), 12);
    // blog back: its old counters were dropped, it starts again.
    let back = shared.apply(config(&[("default", "", &["a"]), ("blog", "", &["c"])]));
    assert_eq!(back.pools[1].live.outcomes(Outcome::New), 0);
    assert!(!Arc::ptr_eq(&back.pools[1].live, &old.pools[2].live));
    assert_eq!(shared.outcomes(Outcome::New), 1);
}

#[test]
fn a_backend_that_moves_to_another_pool_keeps_its_live_state() {
    let shared = Shared::new(config(&[
        ("default", "", &["a", "b"]),
        ("shop", "", &["c"]),
    ]));
    let old = shared.load();
    let b: &Arc<BackendLive> = &old.backends[1].live;
    assert_eq!(b.id(), "b");
    b.health.connect_failed(1, std::time::Instant::now());
    assert!(!b.health.is_up());
    drop(crate::backend::InFlight::start(b));
    drop(crate::backend::InFlight::start(b));
    assert_eq!(b.counters.requests(), 2);

    let new = shared.apply(config(&[
        ("default", "", &["a"]),
        ("shop", "", &["b", "c"]),
    ]));
    let g = new.backends.iter().position(|x| &*x.id == "b").unwrap();
    let moved = &new.backends[g];
    assert!(Arc::ptr_eq(&moved.live, b), "the same live state");
    assert_eq!(moved.pool, 1);
    assert!(
        !moved.live.health.is_up(),
        "still down: a move is no new backend"
    );
    assert_eq!(moved.live.counters.requests(), 2);
    assert_eq!(new.pools[1].members, [g, g + 1]);
    assert_eq!(new.pools[1].global(0), g);
    // Now a member of shop: its tag resolves there and no longer in default.
    let (d, s) = (
        new.pools[0].view(&new.backends),
        new.pools[1].view(&new.backends),
    );
    let tag = s.tag(0);
    assert_eq!(s.resolve(0, &tag), Some(0));
    assert_eq!(d.resolve(0, &tag), None);
    assert!(!s.healthy(0), "the pool sees its health");
    // The backends that did not move keep theirs too.
    assert!(Arc::ptr_eq(&old.backends[0].live, &new.backends[0].live));
    assert!(Arc::ptr_eq(
        &old.backends[2].live,
        &new.pools[1].view(&new.backends).backend(1).live
    ));
    assert_eq!(shared.live.lock().unwrap().backends.len(), 3);
}
