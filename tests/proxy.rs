//! End-to-end behaviour with real backends on loopback: placement, pinning, failover, recovery,
//! hostile cookies, streaming, error statuses, and graceful shutdown.

mod support;

use std::time::Duration;

use bytes::Bytes;
use stickyd::affinity::Outcome;
use stickyd::error::UpstreamKind;
use stickyd::token::{Claims, KeyRing};
use support::*;

fn claims_for(ring: &KeyRing, id: &str, issued_at: u32, last_seen: u32) -> Claims {
    Claims {
        backend_tag: ring.backend_tag(0, id),
        nonce: 77,
        issued_at,
        last_seen,
        backup_tag: [0; 8],
        backup2_tag: [0; 8],
    }
}

fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

#[tokio::test]
async fn new_sessions_are_spread_round_robin() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    // Round robin is exact per worker: one worker, so exact in all.
    let cfg = Cfg {
        server: "worker_threads = 1",
        ..Cfg::default()
    };
    let lb = stickyd(&cfg, &pool(&[&a, &b, &c])).await;
    let mut names = Vec::new();
    for _ in 0..300 {
        let got = Browser::new(lb.local_addrs()[0]).get("/").await;
        assert_eq!(got.status, 200);
        assert!(
            got.set_cookie().is_some(),
            "every new session gets a cookie"
        );
        names.push(got.backend());
    }
    let t = tally(names.iter().map(String::as_str));
    assert_eq!((t["a"], t["b"], t["c"]), (100, 100, 100));
    assert_eq!(lb.shared().outcomes(Outcome::New), 300);
}

#[tokio::test]
async fn with_two_workers_each_backend_is_within_one_of_an_even_split_and_the_counts_add_up() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let cfg = Cfg {
        server: "worker_threads = 2",
        ..Cfg::default()
    };
    let lb = stickyd(&cfg, &pool(&[&a, &b, &c])).await;
    let mut names = Vec::new();
    for _ in 0..300 {
        names.push(Browser::new(lb.local_addrs()[0]).get("/").await.backend());
    }
    // Each worker's sequence is plain round robin, off by less than one from even at any
    // point: two workers, off by less than two in all.
    let t = tally(names.iter().map(String::as_str));
    for id in ["a", "b", "c"] {
        assert!(t[id].abs_diff(100) <= 1, "{t:?}");
    }
    // Each worker counted in its own slot; the sums are whole.
    let m = &lb.shared().metrics;
    assert_eq!(
        (lb.shared().outcomes(Outcome::New), m.responses(2)),
        (300, 300)
    );
    let snap = lb.shared().load();
    let requests: u64 = snap
        .backends
        .iter()
        .map(|b| b.live.counters.requests())
        .sum();
    assert_eq!(requests, 300);
}

#[tokio::test]
async fn a_session_stays_on_its_backend_for_100_requests_and_the_cookie_never_reaches_it() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let lb = stickyd(&Cfg::default(), &pool(&[&a, &b, &c])).await;
    let mut user = Browser::new(lb.local_addrs()[0]);
    let first = user.get("/").await;
    let home = first.backend();
    let cookie = user.cookie.clone().unwrap();
    for i in 0..100 {
        let got = user
            .send(
                "GET",
                "/page",
                Bytes::new(),
                &[("cookie", "theme=dark; lang=fr")],
            )
            .await;
        assert_eq!(
            (got.status, got.backend()),
            (200, home.clone()),
            "request {i}"
        );
        assert_eq!(
            got.set_cookie(),
            None,
            "no Set-Cookie until a refresh is due"
        );
    }
    assert_eq!(user.cookie.as_deref(), Some(cookie.as_str()));
    let backend = [&a, &b, &c].into_iter().find(|x| x.name == home).unwrap();
    assert_eq!(backend.requests(), 101);
    let seen = backend.last();
    let cookies: Vec<_> = seen
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        ["theme=dark; lang=fr"],
        "affinity cookie stripped, others kept"
    );
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["via"], "1.1 stickyd");
    assert_eq!(lb.shared().outcomes(Outcome::Valid), 100);
}

#[tokio::test]
async fn the_first_response_sets_a_well_formed_cookie() {
    let a = TestBackend::start("a").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&a])).await;
    let got = Browser::new(lb.local_addrs()[0]).get("/").await;
    let sc = got.headers["set-cookie"].to_str().unwrap();
    let value = got.set_cookie().unwrap();
    assert_eq!(
        sc,
        format!("stickyd={value}; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax")
    );
    assert_eq!(got.headers["cache-control"], "private");
    let v = ring()
        .verify(value.as_bytes())
        .expect("stickyd signs with the configured key");
    assert_eq!(v.claims.backend_tag, ring().backend_tag(0, "a"));
}

#[tokio::test]
async fn when_the_pinned_backend_dies_gets_keep_succeeding_on_one_new_backend() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let mut backends = [a, b, c];
    let lb = stickyd(&Cfg::default(), &pool(&backends.iter().collect::<Vec<_>>())).await;
    let mut user = Browser::new(lb.local_addrs()[0]);
    let home = user.get("/").await.backend();
    let old_cookie = user.cookie.clone().unwrap();
    backends
        .iter_mut()
        .find(|b| b.name == home)
        .unwrap()
        .kill()
        .await;

    let mut served = Vec::new();
    for _ in 0..20 {
        let got = user.get("/").await;
        assert_eq!(got.status, 200, "no failed GET: {}", got.text());
        served.push(got.backend());
    }
    let t = tally(served.iter().map(String::as_str));
    assert_eq!(t.len(), 1, "one new backend: {t:?}");
    assert!(!t.contains_key(&home));
    assert_ne!(
        user.cookie.as_deref(),
        Some(old_cookie.as_str()),
        "re-pinned with a new cookie"
    );
    let m = &lb.shared().metrics;
    assert_eq!((lb.shared().repins(), m.retries()), (1, 1));
    assert_eq!(lb.shared().outcomes(Outcome::BackendDown), 1);
    // Another client holding the same (old) token lands on the same fallback.
    let mut twin = Browser::new(lb.local_addrs()[0]);
    twin.cookie = Some(old_cookie);
    assert_eq!(twin.get("/").await.backend(), served[0]);
}

#[tokio::test]
async fn a_backend_comes_back_after_rise_good_checks() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let cfg = Cfg {
        health: "interval = \"20ms\"\ntimeout = \"500ms\"\nrise = 3\nfall = 2",
        // Round robin is exact per worker: one worker, so exact in all.
        server: "worker_threads = 1",
        ..Cfg::default()
    };
    let lb = stickyd(&cfg, &pool(&[&a, &b])).await;
    let live_b = lb.shared().load().backends[1].live.clone();
    b.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("b marked down", || !live_b.health.is_up()).await;
    for _ in 0..6 {
        assert_eq!(
            Browser::new(lb.local_addrs()[0]).get("/").await.backend(),
            "a"
        );
    }
    let checks_before = b.health_checks.load(std::sync::atomic::Ordering::SeqCst);
    b.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("b back up", || live_b.health.is_up()).await;
    let checks = b.health_checks.load(std::sync::atomic::Ordering::SeqCst) - checks_before;
    assert!(checks >= 3, "came up after {checks} checks, rise is 3");
    let names: Vec<String> = futures_names(&lb, 4).await;
    assert_eq!(
        tally(names.iter().map(String::as_str))["b"],
        2,
        "b takes new sessions again"
    );
}

async fn futures_names(lb: &stickyd::server::Running, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Browser::new(lb.local_addrs()[0]).get("/").await.backend());
    }
    v
}

#[tokio::test]
async fn hostile_cookies_are_served_200_with_a_fresh_cookie() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = stickyd(&Cfg::default(), &pool(&[&a, &b])).await;
    let ring = ring();
    let t = now();
    let good = ring
        .sign(&claims_for(&ring, "b", t, t))
        .as_str()
        .to_string();
    let mut flipped = good.clone().into_bytes();
    flipped[30] = if flipped[30] == b'A' { b'B' } else { b'A' };
    let other_key = KeyRing::new(
        &[b"some-other-key-that-is-32-bytes-long".as_slice()],
        "stickyd",
    );
    let cases: Vec<(&str, String, Outcome)> = vec![
        (
            "bit flip",
            String::from_utf8(flipped).unwrap(),
            Outcome::BadMac,
        ),
        ("truncated", good[..40].to_string(), Outcome::Malformed),
        ("5 KB", "A".repeat(5000), Outcome::Malformed),
        ("garbage", "%%%<script>".to_string(), Outcome::Malformed),
        ("empty", String::new(), Outcome::Malformed),
        (
            "expired idle",
            ring.sign(&claims_for(&ring, "b", t - 4000, t - 3600))
                .as_str()
                .into(),
            Outcome::ExpiredIdle,
        ),
        (
            "expired life",
            ring.sign(&claims_for(&ring, "b", t - 90_000, t))
                .as_str()
                .into(),
            Outcome::ExpiredLife,
        ),
        (
            "future",
            ring.sign(&claims_for(&ring, "b", t + 3600, t + 3600))
                .as_str()
                .into(),
            Outcome::Future,
        ),
        (
            "unknown key",
            other_key
                .sign(&claims_for(&other_key, "b", t, t))
                .as_str()
                .into(),
            Outcome::UnknownKey,
        ),
        (
            "unknown backend",
            ring.sign(&claims_for(&ring, "gone", t, t)).as_str().into(),
            Outcome::UnknownBackend,
        ),
    ];
    for (what, value, reason) in &cases {
        let mut user = Browser::new(lb.local_addrs()[0]);
        user.cookie = Some(value.clone());
        let got = user.get("/").await;
        assert_eq!(got.status, 200, "{what}");
        let fresh = got
            .set_cookie()
            .unwrap_or_else(|| panic!("{what}: no fresh cookie"));
        let v = ring
            .verify(fresh.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: fresh cookie invalid: {e:?}"));
        if *reason == Outcome::UnknownBackend {
            // A valid session whose backend left the config keeps its session and is re-pinned
            // to the rendezvous fallback (docs/affinity.md, 4b): same nonce and issued_at.
            let old = ring.verify(value.as_bytes()).unwrap().claims;
            assert_eq!(
                (v.claims.nonce, v.claims.issued_at),
                (old.nonce, old.issued_at),
                "{what}: the session is kept"
            );
            assert_ne!(v.claims.backend_tag, old.backend_tag, "{what}: re-pinned");
        } else {
            assert_eq!(
                v.claims.issued_at, v.claims.last_seen,
                "{what}: a new session"
            );
        }
        assert!(
            lb.shared().outcomes(*reason) >= 1,
            "{what} counted as {reason:?}"
        );
    }
    for backend in [&a, &b] {
        for s in backend.seen.lock().unwrap().iter() {
            assert!(
                s.headers.get("cookie").is_none(),
                "no stickyd cookie reaches a backend"
            );
        }
    }
    // The one good token is honoured.
    let mut user = Browser::new(lb.local_addrs()[0]);
    user.cookie = Some(good);
    assert_eq!(user.get("/").await.backend(), "b");
}

#[tokio::test]
async fn a_large_body_streams_both_ways() {
    let a = TestBackend::start("a").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&a])).await;
    let body: Bytes = (0..8 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let got = Browser::new(lb.local_addrs()[0])
        .send("POST", "/echo", body.clone(), &[])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), body.len());
    assert!(got.body == body, "echoed body differs");
    let live = lb.shared().load().backends[0].live.clone();
    eventually("in-flight back to 0", || live.counters.in_flight() == 0).await;
}

#[tokio::test]
async fn a_connection_reset_is_retried_for_get_but_a_post_is_never_replayed() {
    let bad = RawBackend::start(Misbehave::Close).await;
    let good = TestBackend::start("good").await;
    let lb = stickyd(&Cfg::default(), &[("bad", bad.addr), ("good", good.addr)]).await;
    let ring = ring();
    let t = now();
    let pinned_to_bad = ring
        .sign(&claims_for(&ring, "bad", t, t))
        .as_str()
        .to_string();

    let mut user = Browser::new(lb.local_addrs()[0]);
    user.cookie = Some(pinned_to_bad.clone());
    let got = user.get("/").await;
    assert_eq!(
        (got.status, got.backend()),
        (200, "good".to_string()),
        "GET retried elsewhere"
    );
    assert_eq!(bad.requests.load(std::sync::atomic::Ordering::SeqCst), 1);

    let mut poster = Browser::new(lb.local_addrs()[0]);
    poster.cookie = Some(pinned_to_bad);
    let got = poster
        .send("POST", "/order", Bytes::from_static(b"item=1"), &[])
        .await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(bad.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(
        good.seen.lock().unwrap().iter().all(|s| s.method != "POST"),
        "the POST was not replayed"
    );
    assert_eq!(lb.shared().metrics.upstream_errors(UpstreamKind::Reset), 2);
}

#[tokio::test]
async fn a_garbage_response_is_a_502() {
    let bad = RawBackend::start(Misbehave::Garbage).await;
    let lb = stickyd(&Cfg::default(), &[("bad", bad.addr)]).await;
    let got = Browser::new(lb.local_addrs()[0]).get("/").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.text(), "the backend sent an invalid response\n");
    assert_eq!(
        lb.shared().metrics.upstream_errors(UpstreamKind::Protocol),
        1
    );
}

#[tokio::test]
async fn a_refused_connect_with_no_other_backend_is_a_502() {
    let mut a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            upstream: "retries = 0",
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    a.kill().await;
    let got = Browser::new(lb.local_addrs()[0]).get("/").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.text(), "could not connect to the backend\n");
}

#[tokio::test]
async fn no_usable_backend_is_a_503_with_retry_after() {
    let a = TestBackend::start("a").await;
    let cfg = Cfg {
        health: "initial = \"down\"\ninterval = \"1h\"",
        ..Cfg::default()
    };
    let lb = stickyd(&cfg, &pool(&[&a])).await;
    let got = Browser::new(lb.local_addrs()[0]).get("/").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.headers["retry-after"], "5");
    assert_eq!(got.text(), "no backend is available\n");
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn all_down_open_still_tries_a_backend() {
    let a = TestBackend::start("a").await;
    let cfg = Cfg {
        health: "initial = \"down\"\ninterval = \"1h\"",
        balance: "all_down = \"open\"",
        ..Cfg::default()
    };
    let lb = stickyd(&cfg, &pool(&[&a])).await;
    assert_eq!(Browser::new(lb.local_addrs()[0]).get("/").await.status, 200);
}

#[tokio::test]
async fn a_slow_backend_is_a_504_at_the_response_timeout() {
    let a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            upstream: "response_timeout = \"200ms\"",
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    let got = Browser::new(lb.local_addrs()[0]).get("/slow?ms=3000").await;
    assert_eq!(got.status, 504);
    assert_eq!(
        lb.shared().metrics.upstream_errors(UpstreamKind::Timeout),
        1
    );
}

#[tokio::test]
async fn fail_mode_answers_503_when_the_pinned_backend_is_down() {
    let (mut a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let cfg = Cfg {
        affinity: "on_pinned_down = \"fail\"",
        upstream: "retries = 0",
        health: "passive_failures = 1\nenabled = false\neject_time = \"1h\"",
        ..Cfg::default()
    };
    let lb = stickyd(&cfg, &pool(&[&a, &b])).await;
    let ring = ring();
    let t = now();
    let mut user = Browser::new(lb.local_addrs()[0]);
    user.cookie = Some(ring.sign(&claims_for(&ring, "a", t, t)).as_str().into());
    a.kill().await;
    assert_eq!(
        user.get("/").await.status,
        502,
        "the failed connect ejects a"
    );
    let got = user.get("/").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.text(), "the session's backend is unavailable\n");
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_and_stops_accepting() {
    let a = TestBackend::start("a").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&a])).await;
    let addr = lb.local_addrs()[0];
    let slow = tokio::spawn(async move { Browser::new(addr).get("/slow?ms=400").await });
    eventually("request reached the backend", || a.requests() == 1).await;
    let cut = lb.shutdown(Duration::from_secs(10)).await;
    assert_eq!(cut, 0);
    let got = slow.await.unwrap();
    assert_eq!((got.status, got.text()), (200, "a".to_string()));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn shutdown_cuts_what_outlives_the_grace_period() {
    let a = TestBackend::start("a").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&a])).await;
    let addr = lb.local_addrs()[0];
    let slow = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
        client
            .get(format!("http://{addr}/slow?ms=5000").parse().unwrap())
            .await
    });
    eventually("request reached the backend", || a.requests() == 1).await;
    assert_eq!(lb.shutdown(Duration::from_millis(100)).await, 1);
    assert!(
        slow.await.unwrap().is_err(),
        "the cut request fails rather than hanging"
    );
}

#[tokio::test]
async fn http11_without_host_is_400_and_oversized_heads_are_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            server: "max_header_bytes = 8192",
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    let addr = lb.local_addrs()[0];
    let raw = |req: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let no_host = raw(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let mut big = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    big.extend_from_slice(b"\r\n\r\n");
    let too_big = raw(big).await;
    assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big}");
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_and_pinned() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&a, &b])).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<Bytes>>();
    let url: http::Uri = format!("http://{}/", lb.local_addrs()[0]).parse().unwrap();
    let first = client.get(url.clone()).await.unwrap();
    assert_eq!(first.version(), http::Version::HTTP_2);
    let cookie = first.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let home = first.headers()["x-backend"].clone();
    for _ in 0..5 {
        let req = http::Request::get(url.clone())
            .header("cookie", &cookie)
            .body(http_body_util::Empty::new())
            .unwrap();
        let r = client.request(req).await.unwrap();
        assert_eq!(r.headers()["x-backend"], home);
    }
    let backend = if home == "a" { &a } else { &b };
    assert_eq!(backend.last().headers["via"], "2 stickyd");
    assert!(
        backend.last().headers.get("host").is_some(),
        "Host derived from :authority"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_closed_at_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            server: "header_read_timeout = \"200ms\"",
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    let mut slow = tokio::net::TcpStream::connect(lb.local_addrs()[0])
        .await
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was closed by stickyd");
    assert_eq!(a.requests(), 0);
    // Others are served meanwhile and after.
    assert_eq!(Browser::new(lb.local_addrs()[0]).get("/").await.status, 200);
}

#[tokio::test]
async fn above_max_connections_new_clients_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            server: "max_connections = 1",
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    let addr = lb.local_addrs()[0];
    let req = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    first.write_all(req).await.unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        first.read(&mut buf).await.unwrap() > 0,
        "the first client is served"
    );
    // The kernel completes the second handshake, but stickyd does not take the connection.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second.write_all(req).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "second client served while the first is open"
    );
    assert_eq!(lb.connections(), 1);
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn sequential_requests_reuse_one_backend_connection() {
    let (b, _lb, mut browser) = one_worker_before(Misbehave::KeepAlive).await;
    for _ in 0..20 {
        let got = browser.get("/").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body, "ok");
    }
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 20);
    assert_eq!(
        b.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled connection carried every request"
    );
}

#[tokio::test]
async fn a_post_is_never_lost_to_a_pooled_connection_the_backend_closed() {
    let (b, _lb, mut browser) = one_worker_before(Misbehave::AnswerThenClose).await;
    for i in 0..20 {
        let got = browser
            .send("POST", "/", Bytes::from(format!("order {i}")), &[])
            .await;
        assert_eq!(got.status, 200, "POST {i}: {:?}", got.body);
    }
    // Each POST reached the backend exactly once, each on a connection of its own.
    assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 20);
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 20);
}

/// A raw backend behind a one-worker stickyd (so one upstream pool), and a client.
async fn one_worker_before(how: Misbehave) -> (RawBackend, stickyd::server::Running, Browser) {
    let b = RawBackend::start(how).await;
    let lb = stickyd(
        &Cfg {
            server: "worker_threads = 1",
            ..Cfg::default()
        },
        &[("a", b.addr)],
    )
    .await;
    let browser = Browser::new(lb.local_addrs()[0]);
    (b, lb, browser)
}

#[tokio::test]
async fn an_h2_stream_reset_by_the_client_cancels_its_upstream_request() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let a = TestBackend::start("a").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&a])).await;
    let tcp = tokio::net::TcpStream::connect(lb.local_addrs()[0])
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let live = lb.shared().load().backends[0].live.clone();
    let slow = http::Request::get("http://x/slow?ms=20000")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let pending = tokio::spawn(send.send_request(slow));
    eventually("the slow request to reach the backend", || {
        live.counters.in_flight() == 1
    })
    .await;
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    pending.abort();
    eventually("the upstream request to be cancelled", || {
        live.counters.in_flight() == 0
    })
    .await;
    // The connection keeps serving other streams.
    let ok = send
        .send_request(http::Request::get("http://x/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn an_h2_backend_gets_one_multiplexed_connection_and_h2_health_checks() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    // An HTTP/2-only backend (prior knowledge): answers with the version it saw, and records
    // which of its connections carried non-health requests.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns_used = Arc::new(Mutex::new(HashSet::new()));
    let next_id = Arc::new(AtomicUsize::new(0));
    let used = conns_used.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let id = next_id.fetch_add(1, Ordering::SeqCst);
            let used = used.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let probe = req
                        .headers()
                        .get("user-agent")
                        .is_some_and(|v| v == "stickyd-health");
                    if !probe {
                        used.lock().unwrap().insert(id);
                    }
                    let body = format!("{:?} {}", req.version(), req.uri().path());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    }
                });
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    let cfg = Cfg {
        server: "worker_threads = 1",
        health: "interval = \"100ms\"\nrise = 1\ninitial = \"down\"",
        ..Cfg::default()
    };
    let text = config_text(&cfg, &[("h2", addr)]).replace(
        &format!("address = \"{addr}\"\n"),
        &format!("address = \"{addr}\"\nprotocol = \"h2\"\n"),
    );
    let lb = stickyd::server::start(parse_config(&text)).await.unwrap();
    let live = lb.shared().load().backends[0].live.clone();
    eventually("the h2 backend to pass an h2 health check", || {
        live.health.is_up()
    })
    .await;
    // Several clients at once: their requests share the worker's one HTTP/2 connection.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = lb.local_addrs()[0];
        tasks.push(tokio::spawn(async move {
            let got = Browser::new(addr).get(&format!("/p{i}")).await;
            (got.status, got.text())
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, text) = t.await.unwrap();
        assert_eq!((status, text), (200, format!("HTTP/2.0 /p{i}")));
    }
    assert_eq!(
        conns_used.lock().unwrap().len(),
        1,
        "one multiplexed connection"
    );
}
