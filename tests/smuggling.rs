//! Request framing and smuggling: raw bytes from a client through stickyd to a raw backend
//! that records exactly what it received. Every case asserts on what the client got and on
//! what reached the backend.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` on a fresh connection and reads until the connection closes or 2 s pass.
async fn exchange(lb: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

struct Case {
    name: &'static str,
    raw: &'static [u8],
}

const SEVERE: &[Case] = &[
    Case {
        name: "two different Content-Lengths",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 40\r\n\r\nabcd",
    },
    Case {
        name: "Content-Length list",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4, 40\r\n\r\nabcd",
    },
    Case {
        name: "negative Content-Length",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
    },
    Case {
        name: "Content-Length with a plus",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +4\r\n\r\nabcd",
    },
    Case {
        name: "TE not ending in chunked",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    },
    Case {
        name: "TE with a space before the colon",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n",
    },
    Case {
        name: "obs-fold",
        raw: b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n",
    },
    Case {
        name: "NUL in a value",
        raw: b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x00b\r\n\r\n",
    },
    Case {
        name: "bare CR in a value",
        raw: b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\rb\r\n\r\n",
    },
    Case {
        name: "bad chunk size",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
    },
    Case {
        name: "no Host in HTTP/1.1",
        raw: b"GET / HTTP/1.1\r\n\r\n",
    },
    Case {
        name: "two Hosts",
        raw: b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
    },
    Case {
        name: "space in a header name",
        raw: b"GET / HTTP/1.1\r\nhost: x\r\nx a: 1\r\n\r\n",
    },
];

/// Sends each case on a fresh connection: each must be answered 400 with 0 bytes reaching the
/// backend.
async fn assert_refused(cases: &[Case]) {
    let (backend, seen) = recorder().await;
    let lb = stickyd(&Cfg::default(), &[("r", backend)]).await;
    let addr = lb.local_addrs()[0];
    let mut report = Vec::new();
    for case in cases {
        seen.lock().unwrap().clear();
        let out = exchange(addr, case.raw).await;
        let status = out.get(..12).unwrap_or("").to_string();
        let reached = seen.lock().unwrap().len();
        let ok = status.starts_with("HTTP/1.1 400") && reached == 0;
        report.push(format!(
            "{} {:40} {:14} backend bytes {}",
            if ok { "ok    " } else { "FAILED" },
            case.name,
            status,
            reached
        ));
    }
    let text = report.join("\n");
    assert!(!text.contains("FAILED"), "\n{text}");
}

#[tokio::test]
async fn severe_framing_cases_are_400_closed_and_reach_no_backend() {
    assert_refused(SEVERE).await;
}

#[tokio::test]
async fn content_length_with_chunked_is_400_closed_and_reaches_no_backend() {
    // RFC 9112 section 6.1 lets a server drop Content-Length and read the chunks; stickyd
    // refuses the message instead (as Pingora's CVE-2026-2835 fix does), so no backend is left
    // to choose between the two, and nothing pipelined behind it is read.
    let (backend, seen) = recorder().await;
    let lb = stickyd(&Cfg::default(), &[("r", backend)]).await;
    let out = exchange(
        lb.local_addrs()[0],
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "one response, then closed: {out}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the backend"
    );
}

#[tokio::test]
async fn a_valid_request_pipelined_behind_another_gets_its_own_response() {
    let (backend, seen) = recorder().await;
    let lb = stickyd(&Cfg::default(), &[("r", backend)]).await;
    let out = exchange(
        lb.local_addrs()[0],
        b"GET /one HTTP/1.1\r\nhost: x\r\n\r\nGET /two HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(
        got.contains("GET /one") && got.contains("GET /two"),
        "{got}"
    );
}

#[tokio::test]
async fn connection_cannot_strip_the_headers_stickyd_adds_and_hop_by_hop_never_reach_a_backend() {
    let (backend, seen) = recorder().await;
    let lb = stickyd(&Cfg::default(), &[("r", backend)]).await;
    let out = exchange(
        lb.local_addrs()[0],
        b"GET /h HTTP/1.1\r\nhost: x\r\nconnection: close, x-forwarded-for, x-forwarded-proto, via, x-secret\r\nx-secret: 1\r\nx-forwarded-for: 6.6.6.6\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nte: trailers\r\nupgrade: h2c\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    assert!(
        got.contains("x-forwarded-for: 127.0.0.1\r\n"),
        "ours, not the client's: {got}"
    );
    assert!(!got.contains("6.6.6.6"), "{got}");
    assert!(got.contains("x-forwarded-proto: http\r\n"), "{got}");
    assert!(got.contains("via: 1.1 stickyd\r\n"), "{got}");
    for gone in [
        "x-secret",
        "keep-alive:",
        "proxy-connection",
        "te:",
        "upgrade",
        "connection: close",
    ] {
        assert!(!got.contains(gone), "{gone} reached the backend: {got}");
    }
}

/// Backend responses whose framing no parser could agree on: each must reach the client as a
/// 502, and the upstream connection it came on must never carry another request.
const BROKEN_RESPONSES: &[(&str, &[u8])] = &[
    (
        "two different Content-Lengths",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 20\r\n\r\nok",
    ),
    (
        "Content-Length not a number",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok",
    ),
    (
        "negative Content-Length",
        b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
    ),
    (
        "not a status line",
        b"HTTP/1.1 OK 200\r\ncontent-length: 2\r\n\r\nok",
    ),
    ("no status code", b"HTTP/1.1\r\ncontent-length: 2\r\n\r\nok"),
    (
        "space before the colon",
        b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok",
    ),
    (
        "NUL in a header",
        b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
    ),
    (
        "bare LF in a header name",
        b"HTTP/1.1 200 OK\r\nx\na: 1\r\ncontent-length: 2\r\n\r\nok",
    ),
    ("not HTTP at all", b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
];

/// A backend that answers the first request on each connection with `reply` and counts
/// requests that arrive on an already used connection (answered with a plain 200).
async fn broken_backend(reply: &'static [u8]) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let reused = Arc::new(AtomicUsize::new(0));
    let count = reused.clone();
    let addr = raw_server(move |mut s| {
        let count = count.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut served = 0;
            loop {
                while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..i + 4);
                    served += 1;
                    let out: &[u8] = if served == 1 {
                        reply
                    } else {
                        count.fetch_add(1, Ordering::SeqCst);
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if s.write_all(out).await.is_err() {
                        return;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    })
    .await;
    (addr, reused)
}

#[tokio::test]
async fn a_backend_response_with_broken_framing_is_a_502_and_its_connection_is_not_reused() {
    use std::sync::atomic::Ordering;
    let mut report = Vec::new();
    for (name, reply) in BROKEN_RESPONSES {
        let (backend, reused) = broken_backend(reply).await;
        let lb = stickyd(&Cfg::default(), &[("b", backend)]).await;
        let addr = lb.local_addrs()[0];
        // Three requests, one after another on one client connection.
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let out = exchange(
                addr,
                b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await;
            statuses.push(out.get(9..12).unwrap_or("---").to_string());
        }
        let reused = reused.load(Ordering::SeqCst);
        let ok = statuses.iter().all(|s| s == "502") && reused == 0;
        report.push(format!(
            "{} {name:32} client got {statuses:?}, requests on a reused upstream connection: {reused}",
            if ok { "ok    " } else { "FAILED" }
        ));
    }
    let text = report.join("\n");
    assert!(!text.contains("FAILED"), "\n{text}");
}

const MORE_SEVERE: &[Case] = &[
    Case {
        name: "Transfer-Encoding in HTTP/1.0",
        raw: b"POST / HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    },
    Case {
        name: "chunked, chunked",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    },
    Case {
        name: "Transfer-Encoding twice",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    },
    Case {
        name: "Content_Length",
        raw: b"POST / HTTP/1.1\r\nhost: x\r\ncontent_length: 4\r\n\r\nabcd",
    },
    Case {
        name: "Host with a bad port",
        raw: b"GET / HTTP/1.1\r\nhost: x:abc\r\n\r\n",
    },
    Case {
        name: "Host with a port out of range",
        raw: b"GET / HTTP/1.1\r\nhost: x:70000\r\n\r\n",
    },
    Case {
        name: "Host with userinfo",
        raw: b"GET / HTTP/1.1\r\nhost: user@x\r\n\r\n",
    },
    Case {
        name: "Host with a path",
        raw: b"GET / HTTP/1.1\r\nhost: x/admin\r\n\r\n",
    },
    Case {
        name: "absolute-form with a bad authority",
        raw: b"GET http://x:abc/ HTTP/1.1\r\nhost: x\r\n\r\n",
    },
    Case {
        name: "LF-only line endings with a bare CR",
        raw: b"GET / HTTP/1.1\nhost: x\nx-a: a\rb\n\n",
    },
];

#[tokio::test]
async fn more_severe_cases_are_400_closed_and_reach_no_backend() {
    assert_refused(MORE_SEVERE).await;
}

#[tokio::test]
async fn an_absolute_form_target_names_the_host_the_backend_sees() {
    let (backend, seen) = recorder().await;
    let lb = stickyd(&Cfg::default(), &[("r", backend)]).await;
    let out = exchange(
        lb.local_addrs()[0],
        b"GET http://real.example:8080/p?q=1 HTTP/1.1\r\nhost: spoofed.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    assert!(got.starts_with("get /p?q=1 http/1.1\r\n"), "{got}");
    assert!(got.contains("host: real.example:8080\r\n"), "{got}");
    assert!(!got.contains("spoofed"), "{got}");
}

#[tokio::test]
async fn an_upgrade_the_backend_refuses_is_not_tunnelled() {
    // The backend answers 200, not 101: the connection stays HTTP, so what the client sends
    // next is parsed and forwarded as a request of its own (with stickyd's headers), not
    // passed through raw.
    let (backend, seen) = recorder().await;
    let lb = stickyd(&Cfg::default(), &[("r", backend)]).await;
    let addr = lb.local_addrs()[0];
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    s.write_all(b"GET /after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    let after = &got[got
        .find("get /after")
        .expect("the second request reached the backend")..];
    assert!(
        after.contains("via: 1.1 stickyd\r\n"),
        "parsed and forwarded: {after}"
    );
}
