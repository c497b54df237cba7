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
        lb.reload(parse_config(&config_text(&cfg, backends)));
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
