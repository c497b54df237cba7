//! Slow and greedy clients: many slowloris connections are closed at the header deadline while
//! a normal client keeps being served.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_deadline_and_others_are_served() {
    const ATTACKERS: usize = 300;
    let a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            server: "header_read_timeout = \"500ms\"",
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    let addr = lb.local_addrs()[0];
    // Each attacker sends a partial head and then one byte every 100 ms, never finishing.
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        attackers.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return None;
            };
            let start = Instant::now();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
            let mut buf = [0u8; 256];
            for _ in 0..100 {
                if s.write_all(b"a").await.is_err() {
                    return Some(start.elapsed());
                }
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                    _ => {}
                }
            }
            None
        }));
    }
    // Meanwhile a normal client is served every time.
    let mut user = Browser::new(addr);
    for _ in 0..50 {
        assert_eq!(user.get("/").await.status, 200);
    }
    let mut closed = 0;
    for t in attackers {
        if let Some(after) = t.await.unwrap() {
            assert!(
                after < Duration::from_secs(5),
                "closed only after {after:?}"
            );
            closed += 1;
        }
    }
    assert_eq!(closed, ATTACKERS, "every slowloris connection was closed");
    eventually("their slots to be freed", || lb.connections() <= 1).await;
}
