//! Upgraded connections (WebSocket): routed by the affinity cookie, tunnelled after the
//! backend's 101, counted in flight while open; `Upgrade: h2c` never tunnelled.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers an upgrade with 101, greets with its name and echoes; anything else
/// gets 200 with its name and whether an Upgrade header reached it.
async fn ws_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let svc = service_fn(move |mut req: Request<Incoming>| async move {
                let mut resp = Response::new(Full::new(Bytes::new()));
                if req
                    .headers()
                    .get("upgrade")
                    .is_some_and(|v| v == "websocket")
                {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(up) = on.await else { return };
                        let mut io = TokioIo::new(up);
                        let _ = io
                            .write_all(format!("hello from {name}\n").as_bytes())
                            .await;
                        let mut buf = [0u8; 1024];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if io.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut()
                        .insert("connection", "upgrade".parse().unwrap());
                    resp.headers_mut()
                        .insert("upgrade", "websocket".parse().unwrap());
                    resp.headers_mut()
                        .insert("sec-websocket-accept", "test-accept".parse().unwrap());
                } else {
                    let saw = req.headers().get("upgrade").is_some();
                    *resp.body_mut() = Full::new(Bytes::from(format!("{name} upgrade={saw}")));
                }
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Opens a WebSocket through stickyd; returns the stream, the response head and the greeting.
async fn open_ws(lb: SocketAddr, cookie: Option<&str>) -> (TcpStream, String, String) {
    let mut s = TcpStream::connect(lb).await.unwrap();
    let cookie = cookie.map_or(String::new(), |c| format!("cookie: stickyd={c}\r\n"));
    s.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nhost: ws.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{cookie}\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed during the head"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let mut greeting = Vec::new();
    while !greeting.ends_with(b"\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed before the greeting"
        );
        greeting.push(byte[0]);
    }
    (s, head, String::from_utf8(greeting).unwrap())
}

/// The affinity cookie a response head sets (header names in any case; the value as sent).
fn cookie_of(head: &str) -> Option<String> {
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: stickyd="))
        .map(|l| {
            l["set-cookie: stickyd=".len()..]
                .split(';')
                .next()
                .unwrap()
                .to_string()
        })
}

#[tokio::test]
async fn a_websocket_is_tunnelled_stays_on_its_backend_and_counts_in_flight() {
    let (a, b) = (ws_backend("a").await, ws_backend("b").await);
    let lb = stickyd(&Cfg::default(), &[("a", a), ("b", b)]).await;
    let addr = lb.local_addrs()[0];

    let (mut ws, head, greeting) = open_ws(addr, None).await;
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 101"), "{head}");
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: test-accept"),
        "{head}"
    );
    let home = greeting
        .trim()
        .strip_prefix("hello from ")
        .unwrap()
        .to_string();
    let token = cookie_of(&head).expect("the 101 carries the new session's cookie");
    assert!(ring().verify(token.as_bytes()).is_ok());
    // The cookie from the 101 pins the next WebSocket of this session.
    let (again, _, greeting) = open_ws(addr, Some(&token)).await;
    assert_eq!(greeting.trim(), format!("hello from {home}"));

    // Bytes both ways.
    ws.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    ws.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // In flight on its backend while open, released when closed.
    let snap = lb.shared().load();
    let live = &snap.backends.iter().find(|x| *x.id == *home).unwrap().live;
    assert_eq!(
        live.counters.in_flight(),
        2,
        "this tunnel and the second one"
    );
    drop(again);
    eventually("the second tunnel to be released", || {
        live.counters.in_flight() == 1
    })
    .await;
    drop(ws);
    eventually("the tunnel to be released", || {
        live.counters.in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn websockets_of_one_session_all_reach_its_backend() {
    let (a, b) = (ws_backend("a").await, ws_backend("b").await);
    let lb = stickyd(&Cfg::default(), &[("a", a), ("b", b)]).await;
    let addr = lb.local_addrs()[0];
    // A session pinned by a plain request first (the cookie's case matters: take it raw).
    let mut user = Browser::new(addr);
    let first = user.get("/").await;
    let home = first.text().split(' ').next().unwrap().to_string();
    let token = user.cookie.clone().unwrap();
    for _ in 0..6 {
        let (_ws, head, greeting) = open_ws(addr, Some(&token)).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(greeting.trim(), format!("hello from {home}"));
        assert!(
            cookie_of(&head).is_none(),
            "no new cookie for a pinned session"
        );
    }
}

#[tokio::test]
async fn upgrade_h2c_is_stripped_and_served_as_a_plain_request() {
    let a = ws_backend("a").await;
    let lb = stickyd(&Cfg::default(), &[("a", a)]).await;
    let mut s = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n\
          http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with("a upgrade=false"),
        "the backend never saw Upgrade: {out}"
    );
}

#[tokio::test]
async fn an_open_websocket_is_closed_when_the_shutdown_grace_is_over() {
    let a = ws_backend("a").await;
    let lb = stickyd(&Cfg::default(), &[("a", a)]).await;
    let (mut ws, _, _) = open_ws(lb.local_addrs()[0], None).await;
    // The tunnel holds its connection's slot, so shutdown waits for it, then cuts it.
    let cut = lb.shutdown(std::time::Duration::from_millis(300)).await;
    assert_eq!(cut, 1);
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), ws.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
