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

#[tokio::test]
async fn a_request_body_that_stalls_is_a_408_at_the_client_timeout() {
    let a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            server: "client_timeout = \"300ms\"",
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    let mut s = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    // 10 bytes of a 1000-byte body, then nothing.
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the connection is closed")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    // The backend may have started its response (it echoes as it reads): then the client
    // gets a cut response, never a complete one; else the 408.
    assert!(
        text.starts_with("HTTP/1.1 408") || (text.starts_with("HTTP/1.1 200") && out.len() < 1000),
        "{text}"
    );
    eventually("the connection slot to be freed", || lb.connections() == 0).await;
}

/// A backend whose responses never end: it writes until the connection is closed, then
/// reports how many bytes it got out.
async fn endless() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = raw_server(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut buf = [0u8; 4096];
            let Ok(n) = s.read(&mut buf).await else {
                return;
            };
            if buf[..n].starts_with(b"GET /healthz") {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000000\r\n\r\n")
                .await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while s.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            let _ = tx.send(sent);
        }
    })
    .await;
    (addr, rx)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_client_timeout_and_its_backend_released() {
    let (backend, mut released) = endless().await;
    let lb = stickyd(
        &Cfg {
            server: "client_timeout = \"300ms\"",
            ..Cfg::default()
        },
        &[("endless", backend)],
    )
    .await;
    let mut reader = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    reader
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Reads the head and a little, then stops reading for good.
    let mut buf = [0u8; 1024];
    let n = reader.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The backend's connection is closed once stickyd gives up on the client: what it sent is
    // what the socket buffers held, not an unbounded amount.
    let sent = tokio::time::timeout(Duration::from_secs(10), released.recv())
        .await
        .expect("the backend connection is released")
        .unwrap();
    assert!(
        sent < 64 << 20,
        "{sent} bytes buffered for a client that reads nothing"
    );
    eventually("the client connection to be closed", || {
        lb.connections() == 0
    })
    .await;
    drop(reader);
}
