//! The HTTP/1 engine's own safety rules, from raw client bytes to what a raw backend received:
//! regression tests for the request-smuggling CVEs of Pingora's hand-written HTTP/1 code, and
//! the framing refusals the engine adds to hyper's (both Content-Length and Transfer-Encoding,
//! a repeated Content-Length).

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `s` until it closes or 5 s pass.
async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_response_before_the_whole_request_body_ends_the_connection() {
    // Pingora CVE-2025-4366: the backend answers while most of the body is still to come. The
    // rest of the body must never be read as a request of its own.
    let (backend, seen) = recorder().await;
    let lb = stickyd(&Cfg::default(), &[("a", backend)]).await;
    let mut s = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 200\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = s.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    // What would be the rest of the body, shaped as a request.
    let smuggled = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let _ = s.write_all(smuggled).await;
    let rest = read_all(&mut s).await;
    assert!(!rest.contains("HTTP/1.1"), "no second response: {rest}");
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(got.starts_with("POST /upload HTTP/1.1\r\n"), "{got}");
    assert!(!got.contains("/smuggled"), "{got}");
}

#[tokio::test]
async fn an_http10_request_without_content_length_has_no_body() {
    // Pingora CVE-2026-2836: an HTTP/1.0 request body is never delimited by the connection's
    // close. Without Content-Length the request has no body, and the bytes after its head are
    // the next request, parsed and forwarded as one (with stickyd's headers).
    let (backend, seen) = recorder().await;
    let lb = stickyd(&Cfg::default(), &[("a", backend)]).await;
    let mut s = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    s.write_all(
        b"POST /a HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let out = read_all(&mut s).await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    let a = got.find("post /a http/1.1\r\n").expect("the first request");
    let b = got
        .find("get /b http/1.1\r\n")
        .expect("the second, as a request");
    assert!(
        !got[a..b].contains("content-length") && !got[a..b].contains("transfer-encoding"),
        "no body framing on the first: {got}"
    );
    assert!(got[b..].contains("via: 1.1 stickyd\r\n"), "{got}");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_or_twice_is_refused_before_any_backend() {
    // Pingora CVE-2026-2835 and its neighbours: hyper lets these through (normalising them to
    // one framing); the engine refuses them, so no backend can read them another way.
    let (backend, seen) = recorder().await;
    let lb = stickyd(&Cfg::default(), &[("a", backend)]).await;
    for raw in [
        &b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5, 5\r\n\r\nhello",
    ] {
        let mut s = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
        s.write_all(raw).await.unwrap();
        let out = read_all(&mut s).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the backend"
    );
}

#[tokio::test]
async fn a_response_to_head_and_a_304_carry_no_body_and_keep_the_connection() {
    let addr = raw_server(|mut s| async move {
        let mut buf = [0u8; 4096];
        let mut n = 0;
        loop {
            let Ok(m) = s.read(&mut buf[n..]).await else {
                return;
            };
            if m == 0 {
                return;
            }
            n += m;
            while let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let reply: &[u8] = if head.starts_with("HEAD") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
                } else {
                    b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1234\r\netag: \"x\"\r\n\r\n"
                };
                let _ = s.write_all(reply).await;
                buf.copy_within(end + 4..n, 0);
                n -= end + 4;
            }
        }
    })
    .await;
    let lb = stickyd(&Cfg::default(), &[("a", addr)]).await;
    let mut s = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    s.write_all(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nGET /g HTTP/1.1\r\nhost: x\r\n\r\nGET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = read_all(&mut s).await.to_ascii_lowercase();
    assert!(out.starts_with("http/1.1 200"), "{out}");
    assert_eq!(
        out.matches("http/1.1 ").count(),
        3,
        "three heads, no body: {out}"
    );
    assert_eq!(out.matches("content-length: 1234").count(), 3, "{out}");
    assert!(out.ends_with("\r\n\r\n"), "{out}");
}

#[tokio::test]
async fn a_request_answered_with_an_error_is_sent_once_and_answered_once() {
    // A 502 on a kept connection: the next request is the one behind it, never the failed one
    // again (the engine once parsed the same head twice after an error response).
    let addr = raw_server(|mut s| async move {
        let mut buf = [0u8; 4096];
        if let Ok(n) = s.read(&mut buf).await
            && n > 0
        {
            let _ = s.write_all(b"this is not http\r\n\r\n").await;
        }
    })
    .await;
    let lb = stickyd(
        &Cfg {
            upstream: "retries = 0",
            ..Cfg::default()
        },
        &[("bad", addr)],
    )
    .await;
    let mut s = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 4096];
    let n = s.read(&mut got).await.unwrap();
    let first = String::from_utf8_lossy(&got[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 502"), "{first}");
    s.write_all(b"GET /two HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = read_all(&mut s).await;
    let all = format!("{first}{rest}");
    assert_eq!(
        all.matches("HTTP/1.1 502").count(),
        2,
        "one answer per request: {all}"
    );
    let m = &lb.shared().metrics;
    assert_eq!(m.upstream_errors(stickyd::error::UpstreamKind::Protocol), 2);
}

#[tokio::test]
async fn a_request_the_backend_acknowledged_with_a_1xx_is_never_sent_again() {
    // The backend read the POST (it sent 102) and closed before a final answer, on a reused
    // connection: that close must not look like one that never reached the backend.
    let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = posts.clone();
    let backend = raw_server(move |mut s| {
        let seen = seen.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let post = buf.starts_with(b"POST");
                buf.drain(..end);
                if post {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = s.write_all(b"HTTP/1.1 102 Processing\r\n\r\n").await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    let lb = stickyd(
        &Cfg {
            server: "worker_threads = 1",
            ..Cfg::default()
        },
        &[("a", backend)],
    )
    .await;
    let mut s = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    s.write_all(b"GET /warm HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    let n = s.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "a pooled connection to reuse"
    );
    s.write_all(
        b"POST /order HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let out = read_all(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert_eq!(
        posts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the POST reached the backend once"
    );
}
