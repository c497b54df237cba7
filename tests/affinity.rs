//! Affinity across replicas and over a backend's death and return.

mod support;

use support::*;

#[tokio::test]
async fn two_replicas_with_the_same_keys_agree_on_tokens_and_fallbacks() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let mut backends = [a, b, c];
    // The same ids and key, listed in different orders.
    let one = stickyd(
        &Cfg::default(),
        &pool(&[&backends[0], &backends[1], &backends[2]]),
    )
    .await;
    let two = stickyd(
        &Cfg::default(),
        &pool(&[&backends[2], &backends[0], &backends[1]]),
    )
    .await;
    let (r1, r2) = (one.local_addrs()[0], two.local_addrs()[0]);

    // Sessions made on one are honoured by the other, without any new cookie.
    let mut tokens = Vec::new();
    for _ in 0..6 {
        let mut user = Browser::new(r1);
        let home = user.get("/").await.backend();
        let token = user.cookie.clone().unwrap();
        let mut other = Browser::new(r2);
        other.cookie = Some(token.clone());
        let got = other.get("/").await;
        assert_eq!(got.backend(), home);
        assert!(got.set_cookie().is_none());
        tokens.push((token, home));
    }

    // The pinned backend of the first session dies: both replicas pick the same fallback,
    // and so do ten parallel requests carrying the stale token.
    let (token, home) = tokens[0].clone();
    let dead = backends.iter().position(|b| b.name == home).unwrap();
    backends[dead].kill().await;
    let mut fallbacks = Vec::new();
    for addr in [r1, r2, r1, r2] {
        let mut u = Browser::new(addr);
        u.cookie = Some(token.clone());
        let got = u.get("/").await;
        assert_eq!(got.status, 200);
        fallbacks.push(got.backend());
    }
    let mut parallel = Vec::new();
    for i in 0..10 {
        let token = token.clone();
        let addr = if i % 2 == 0 { r1 } else { r2 };
        parallel.push(tokio::spawn(async move {
            let mut u = Browser::new(addr);
            u.cookie = Some(token);
            u.get("/").await.backend()
        }));
    }
    for p in parallel {
        fallbacks.push(p.await.unwrap());
    }
    assert_ne!(fallbacks[0], home);
    assert!(
        fallbacks.iter().all(|f| *f == fallbacks[0]),
        "one fallback for every request and replica: {fallbacks:?}"
    );
}

#[tokio::test]
async fn with_return_a_session_goes_home_when_its_backend_recovers() {
    let mut a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let lb = stickyd(
        &Cfg {
            affinity: "on_pinned_down = \"return\"",
            health: "interval = \"100ms\"\nrise = 1\nfall = 1\ntimeout = \"500ms\"",
            ..Cfg::default()
        },
        &pool(&[&a, &b]),
    )
    .await;
    let addr = lb.local_addrs()[0];
    let mut user = loop {
        let mut u = Browser::new(addr);
        if u.get("/").await.backend() == "a" {
            break u;
        }
    };
    let token = user.cookie.clone().unwrap();
    let a_live = lb.shared().load().backends[0].live.clone();

    a.kill().await;
    eventually("a to be marked down", || !a_live.health.is_up()).await;
    for _ in 0..3 {
        let got = user.get("/").await;
        assert_eq!((got.status, got.backend().as_str()), (200, "b"));
        assert!(got.set_cookie().is_none(), "the token still names a");
    }
    assert_eq!(user.cookie.as_deref(), Some(token.as_str()));

    a.restart().await;
    eventually("a to be back up", || a_live.health.is_up()).await;
    let got = user.get("/").await;
    assert_eq!(got.backend(), "a", "home again");
}

#[tokio::test]
async fn least_loaded_sends_new_sessions_away_from_a_busy_backend() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = stickyd(
        &Cfg {
            balance: "new_sessions = \"least_loaded\"",
            ..Cfg::default()
        },
        &pool(&[&a, &b]),
    )
    .await;
    let addr = lb.local_addrs()[0];
    let on_a = loop {
        let mut u = Browser::new(addr);
        if u.get("/").await.backend() == "a" {
            break u.cookie.unwrap();
        }
    };
    // Twenty slow requests of a's session keep a busy.
    let a_live = lb.shared().load().backends[0].live.clone();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let token = on_a.clone();
        slow.push(tokio::spawn(async move {
            let mut u = Browser::new(addr);
            u.cookie = Some(token);
            u.get("/slow?ms=3000").await.status
        }));
    }
    eventually("a to be busy", || a_live.counters.in_flight() == 20).await;
    let mut names = Vec::new();
    for _ in 0..40 {
        names.push(Browser::new(addr).get("/").await.backend());
    }
    let t = tally(names.iter().map(String::as_str));
    assert!(t.get("a").copied().unwrap_or(0) <= 2, "{t:?}");
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn ip_mode_pins_by_client_address_and_by_x_forwarded_for_behind_a_trusted_proxy() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let lb = stickyd(
        &Cfg {
            affinity: "mode = \"ip\"",
            server: "trusted_proxies = [\"127.0.0.1/32\"]",
            ..Cfg::default()
        },
        &pool(&[&a, &b, &c]),
    )
    .await;
    let addr = lb.local_addrs()[0];
    // The same client: always one backend, and no cookie.
    let mut seen = Vec::new();
    for _ in 0..10 {
        let got = Browser::new(addr).get("/").await;
        assert!(got.set_cookie().is_none());
        seen.push(got.backend());
    }
    assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
    // Behind the trusted proxy (127.0.0.1), the client is the X-Forwarded-For address.
    let mut by_client = std::collections::HashMap::new();
    for round in 0..2 {
        for i in 0..30 {
            let xff = format!("203.0.113.{i}");
            let got = Browser::new(addr)
                .send(
                    "GET",
                    "/",
                    bytes::Bytes::new(),
                    &[("x-forwarded-for", &xff)],
                )
                .await;
            let prev = by_client.insert(xff.clone(), got.backend());
            if round == 1 {
                assert_eq!(prev, Some(got.backend()), "{xff} moved");
            }
        }
    }
    let distinct: std::collections::HashSet<_> = by_client.values().collect();
    assert_eq!(distinct.len(), 3, "clients spread over every backend");
    assert!(lb.shared().outcomes(stickyd::affinity::Outcome::Hashed) >= 70);
}

#[tokio::test]
async fn header_mode_carries_the_signed_token_in_a_header() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = stickyd(
        &Cfg {
            affinity: "mode = \"header\"\nheader = \"x-session\"",
            ..Cfg::default()
        },
        &pool(&[&a, &b]),
    )
    .await;
    let addr = lb.local_addrs()[0];
    let first = Browser::new(addr).get("/").await;
    assert!(first.set_cookie().is_none(), "no cookie in header mode");
    let token = first.headers["x-session"].to_str().unwrap().to_string();
    assert!(ring().verify(token.as_bytes()).is_ok());
    assert_eq!(first.headers["cache-control"], "private");
    let home = first.backend();
    for _ in 0..5 {
        let got = Browser::new(addr)
            .send("GET", "/", bytes::Bytes::new(), &[("x-session", &token)])
            .await;
        assert_eq!(got.backend(), home);
        assert!(got.headers.get("x-session").is_none(), "no refresh due");
    }
    let backend = if home == "a" { &a } else { &b };
    assert!(
        backend.last().headers.get("x-session").is_none(),
        "the token is not forwarded"
    );
    // A forged token is a new session with a new token, never an error.
    let got = Browser::new(addr)
        .send("GET", "/", bytes::Bytes::new(), &[("x-session", "forged")])
        .await;
    assert_eq!(got.status, 200);
    assert!(got.headers.get("x-session").is_some());
}

#[tokio::test]
async fn a_trusted_header_is_hashed_and_none_mode_has_no_affinity() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = stickyd(
        &Cfg {
            affinity: "mode = \"header\"\nheader = \"x-user\"\nheader_trusted = true",
            ..Cfg::default()
        },
        &pool(&[&a, &b]),
    )
    .await;
    let addr = lb.local_addrs()[0];
    let mut homes = std::collections::HashSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let got = Browser::new(addr)
                .send("GET", "/", bytes::Bytes::new(), &[("x-user", user)])
                .await;
            assert!(got.headers.get("x-user").is_none() && got.set_cookie().is_none());
            seen.push(got.backend());
        }
        assert!(seen.iter().all(|s| *s == seen[0]), "{user}: {seen:?}");
        homes.insert(seen[0].clone());
    }
    assert_eq!(homes.len(), 2, "users spread over both backends");

    let none = stickyd(
        &Cfg {
            affinity: "mode = \"none\"",
            ..Cfg::default()
        },
        &pool(&[&a, &b]),
    )
    .await;
    let mut user = Browser::new(none.local_addrs()[0]);
    let mut names = Vec::new();
    for _ in 0..6 {
        let got = user.get("/").await;
        assert!(got.set_cookie().is_none());
        names.push(got.backend());
    }
    assert_eq!(names, ["a", "b", "a", "b", "a", "b"], "plain round robin");
}

#[tokio::test]
async fn sticky_fraction_zero_keeps_new_sessions_unpinned_for_good() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = stickyd(
        &Cfg {
            affinity: "sticky_fraction = 0.0",
            ..Cfg::default()
        },
        &pool(&[&a, &b]),
    )
    .await;
    let mut user = Browser::new(lb.local_addrs()[0]);
    let mut names = Vec::new();
    for _ in 0..8 {
        names.push(user.get("/").await.backend());
    }
    assert!(user.cookie.is_some(), "it holds an (unpinned) token");
    assert!(
        names.contains(&"a".to_string()) && names.contains(&"b".to_string()),
        "{names:?}"
    );
    let m = lb.shared();
    assert_eq!(m.outcomes(stickyd::affinity::Outcome::New), 1);
    assert_eq!(m.outcomes(stickyd::affinity::Outcome::Unpinned), 7);
    let pins: u64 = lb
        .shared()
        .load()
        .backends
        .iter()
        .map(|b| b.live.sessions.pins())
        .sum();
    assert_eq!(pins, 0);
}
