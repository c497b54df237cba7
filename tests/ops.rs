//! Operations under traffic: reloads while clients are being served.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let c = TestBackend::start("c").await;
    let two = pool(&[&a, &b]);
    let three = pool(&[&a, &b, &c]);
    let cfg = Cfg::default();
    let mut lb = stickyd(&cfg, &two).await;
    let addr = lb.local_addrs()[0];

    // Eight users, each on its own keep-alive connection, until the reloads are over; every
    // fifth request starts a new session.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut users = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        users.push(tokio::spawn(async move {
            let mut user = Browser::new(addr);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if n % 5 == 0 {
                    user.cookie = None;
                }
                let got = user.get("/").await;
                if got.status == 200 && !got.backend().is_empty() {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Reload 100 times, backend c coming and going, each time after some traffic went through.
    for i in 0..100 {
        let before = ok.load(Ordering::Relaxed);
        let backends = if i % 2 == 0 { &three } else { &two };
        lb.reload(parse_config(&config_text(&cfg, backends)))
            .unwrap();
        eventually("traffic after a reload", || {
            ok.load(Ordering::Relaxed) >= before + 8
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for u in users {
        u.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok >= 800, "{ok} requests served");
    assert_eq!(lb.shared().load().backends.len(), 2);
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_with_backend_and_affinity() {
    let dir = std::env::temp_dir().join(format!("stickyd-access-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    let log: &'static str = Box::leak(
        format!("access = \"json\"\naccess_file = \"{}\"", path.display()).into_boxed_str(),
    );
    let a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            log,
            ..Cfg::default()
        },
        &[("a", a.addr)],
    )
    .await;
    let addr = lb.local_addrs()[0];
    let mut user = Browser::new(addr);
    assert_eq!(user.get("/first?x=1").await.status, 200);
    assert_eq!(user.get("/second").await.status, 200);
    // A forged token naming no backend: served, as a new session with the reason.
    let mut forger = Browser::new(addr);
    forger.cookie = Some("A".repeat(56));
    assert_eq!(forger.get("/forged").await.status, 200);
    drop(lb);

    let lines = access_lines(&path, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v[0]["path"], "/first?x=1");
    assert_eq!(v[0]["pool"], "default");
    assert_eq!(v[0]["method"], "GET");
    assert_eq!(v[0]["status"], 200);
    assert_eq!(v[0]["backend"], "a");
    assert_eq!(v[0]["affinity"], "new");
    assert_eq!(v[0]["bytes"], a.name.len() as u64);
    assert_eq!(v[0]["client"], "127.0.0.1");
    assert!(v[0]["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v[1]["affinity"], "valid");
    assert_eq!(v[2]["affinity"], "new");
    assert_eq!(v[2]["reason"], "malformed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_backend_added_by_a_reload_ramps_up_under_slow_start() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    // An hour-long ramp: in the seconds this test lasts, b's weight is about 1/1000 of a's.
    // Round robin is exact per worker: one worker, so exact in all.
    let one = Cfg {
        server: "worker_threads = 1",
        ..Cfg::default()
    };
    let slow = Cfg {
        balance: "slow_start = \"1h\"",
        ..one
    };
    let mut lb = stickyd(&slow, &pool(&[&a])).await;
    let addr = lb.local_addrs()[0];
    lb.reload(parse_config(&config_text(&slow, &pool(&[&a, &b]))))
        .unwrap();
    let mut names = Vec::new();
    for _ in 0..200 {
        names.push(Browser::new(addr).get("/").await.backend());
    }
    let t = tally(names.iter().map(String::as_str));
    assert!(t.get("b").copied().unwrap_or(0) <= 2, "{t:?}");
    assert!(t["a"] >= 198, "{t:?}");
    // A pinned session on b is still served by b: slow start only shapes new sessions.
    let mut on_b = loop {
        let mut u = Browser::new(addr);
        if u.get("/").await.backend() == "b" {
            break u;
        }
    };
    assert_eq!(on_b.get("/").await.backend(), "b");
    // Slow start off: b gets its full share at once.
    lb.reload(parse_config(&config_text(&one, &pool(&[&a, &b]))))
        .unwrap();
    let mut names = Vec::new();
    for _ in 0..200 {
        names.push(Browser::new(addr).get("/").await.backend());
    }
    let t = tally(names.iter().map(String::as_str));
    assert_eq!((t["a"], t["b"]), (100, 100), "{t:?}");
}

/// The config for `backends` listening on `listen` (TOML array body).
fn listening(listen: &str, backends: &[(&str, std::net::SocketAddr)]) -> stickyd::config::Config {
    let text = config_text(&Cfg::default(), backends).replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [{listen}]"),
    );
    parse_config(&text)
}

#[tokio::test]
async fn reload_opens_and_closes_listeners_and_keeps_the_unchanged_one() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let mut lb = stickyd(&Cfg::default(), &pool(&[&a])).await;
    let first = lb.local_addrs()[0];
    let mut kept = Browser::new(first);
    assert_eq!(kept.get("/").await.status, 200);

    // Added: 127.0.0.2 (all of 127/8 is loopback on Linux); the first stays where it was.
    lb.reload(listening(r#""127.0.0.1:0", "127.0.0.2:0""#, &pool(&[&a])))
        .unwrap();
    let addrs = lb.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0], first, "an unchanged listener stays bound");
    let second = addrs[1];
    assert_eq!(Browser::new(second).get("/").await.status, 200);

    // A reload that cannot bind is refused whole: listeners and pool unchanged.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!(r#""127.0.0.2:0", "{}""#, taken.local_addr().unwrap());
    let err = lb.reload(listening(&busy, &pool(&[&a, &b]))).unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    assert_eq!(lb.local_addrs(), &addrs[..]);
    assert_eq!(
        lb.shared().load().backends.len(),
        1,
        "the pool did not change"
    );

    // Removed: the first listener stops accepting; its open connection keeps being served.
    lb.reload(listening(r#""127.0.0.2:0""#, &pool(&[&a])))
        .unwrap();
    assert_eq!(lb.local_addrs(), &[second]);
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(first).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(refused, "the removed listener still accepts");
    assert_eq!(kept.get("/").await.status, 200, "its connection stays");
    assert_eq!(Browser::new(second).get("/").await.status, 200);
}

/// The config for `backends` signed with the key ring `keys` (TOML array body).
fn keyed(keys: &str, backends: &[(&str, std::net::SocketAddr)]) -> stickyd::config::Config {
    let text = config_text(&Cfg::default(), backends)
        .replace("keys = [\"env:KEY\"]", &format!("keys = [{keys}]"));
    parse_config(&text)
}

#[tokio::test]
async fn a_key_rotation_by_reload_signs_with_the_new_key_and_still_honours_the_old() {
    use stickyd::token::KeyRing;
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let mut lb = stickyd(&Cfg::default(), &pool(&[&a, &b])).await;
    let addr = lb.local_addrs()[0];
    let mut user = Browser::new(addr);
    let home = user.get("/").await.backend();
    let old_token = user.cookie.clone().unwrap();
    assert!(ring().verify(old_token.as_bytes()).is_ok());

    // New key first, old key still listed: the old cookie keeps its backend and is re-signed.
    lb.reload(keyed(r#""env:NEW_KEY", "env:KEY""#, &pool(&[&a, &b])))
        .unwrap();
    let new_ring = KeyRing::new(&[NEW_KEY], "stickyd");
    let got = user.get("/").await;
    assert_eq!(got.backend(), home);
    let resigned = got.set_cookie().expect("re-signed with the new key");
    assert!(new_ring.verify(resigned.as_bytes()).is_ok());
    let fresh = Browser::new(addr).get("/").await.set_cookie().unwrap();
    assert!(new_ring.verify(fresh.as_bytes()).is_ok());
    assert!(ring().verify(fresh.as_bytes()).is_err());

    // Old key dropped: a cookie it signed is a new session (unknown key), still served.
    lb.reload(keyed(r#""env:NEW_KEY""#, &pool(&[&a, &b])))
        .unwrap();
    let mut late = Browser::new(addr);
    late.cookie = Some(old_token);
    let got = late.get("/").await;
    assert_eq!(got.status, 200);
    assert!(got.set_cookie().is_some());
    assert_eq!(
        lb.shared().outcomes(stickyd::affinity::Outcome::UnknownKey),
        1
    );
}

#[tokio::test]
async fn sessions_of_a_backend_removed_by_reload_take_the_same_fallback() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let c = TestBackend::start("c").await;
    let mut lb = stickyd(&Cfg::default(), &pool(&[&a, &b, &c])).await;
    let addr = lb.local_addrs()[0];
    let mut on_c = loop {
        let mut u = Browser::new(addr);
        if u.get("/").await.backend() == "c" {
            break u;
        }
    };
    let token = on_c.cookie.clone().unwrap();
    lb.reload(parse_config(&config_text(
        &Cfg::default(),
        &pool(&[&a, &b]),
    )))
    .unwrap();
    let got = on_c.get("/").await;
    assert_eq!(got.status, 200);
    let fallback = got.backend();
    assert!(fallback == "a" || fallback == "b", "{fallback}");
    assert!(got.set_cookie().is_some(), "re-pinned");
    // Another client holding the same old token lands on the same fallback.
    let mut twin = Browser::new(addr);
    twin.cookie = Some(token);
    assert_eq!(twin.get("/").await.backend(), fallback);
    // And the re-pinned client stays there.
    assert_eq!(on_c.get("/").await.backend(), fallback);
    assert_eq!(
        lb.shared()
            .outcomes(stickyd::affinity::Outcome::UnknownBackend),
        2
    );
}
