//! PROXY protocol on listeners (issue 16, point 2): the client its header names is the client
//! everywhere, and a connection without a valid header from an allowed peer is closed unread.
//! Raw bytes on the client side; the backend records what it was sent.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(backend: &TestBackend, from: &str, extra: &str) -> String {
    config_text(&Cfg::default(), &pool(&[backend])).replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!(
            "listen = [\"127.0.0.1:0\"]\nproxy_protocol = true\nproxy_protocol_from = [{from}]\nheader_read_timeout = \"2s\"\n{extra}"
        ),
    )
}

/// Sends `bytes` on a new connection and reads until the peer closes (or 5 s): what came back.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

const GET: &[u8] = b"GET /pp HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

fn v2(cmd: u8, fam: u8, addr: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | cmd);
    h.push(fam);
    h.extend_from_slice(&(addr.len() as u16).to_be_bytes());
    h.extend_from_slice(addr);
    h
}

#[tokio::test]
async fn the_client_a_header_names_is_the_client() {
    let a = TestBackend::start("a").await;
    let lb = stickyd::server::start(parse_config(&config(&a, "\"127.0.0.0/8\"", "")))
        .await
        .unwrap();
    let addr = lb.local_addrs()[0];
    // Version 1.
    let mut req = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 80\r\n".to_vec();
    req.extend_from_slice(GET);
    let out = exchange(addr, &req).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(a.last().headers["x-forwarded-for"], "192.0.2.7");
    // Version 2, IPv6, split across two writes.
    let mut ip6 = [0u8; 36];
    ip6[..16].copy_from_slice(
        &"2001:db8::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    ip6[32..34].copy_from_slice(&4000u16.to_be_bytes());
    let h = v2(1, 0x21, &ip6);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&h[..10]).await.unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(&h[10..]).await.unwrap();
    s.write_all(GET).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(a.last().headers["x-forwarded-for"], "2001:db8::9");
    // LOCAL (a balancer's own check): the peer is the client.
    let mut req = v2(0, 0x00, &[]);
    req.extend_from_slice(GET);
    let out = exchange(addr, &req).await;
    assert!(out.starts_with(b"HTTP/1.1 200"));
    assert_eq!(a.last().headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(a.requests(), 3);
}

#[tokio::test]
async fn connections_without_a_valid_header_or_from_other_peers_are_closed_unread() {
    let a = TestBackend::start("a").await;
    let lb = stickyd::server::start(parse_config(&config(&a, "\"127.0.0.0/8\"", "")))
        .await
        .unwrap();
    let addr = lb.local_addrs()[0];
    let mut oversized = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x04\x00".to_vec();
    oversized.extend_from_slice(&[0u8; 1024]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("missing", GET.to_vec()),
        (
            "malformed v1",
            [&b"PROXY TCP4 192.0.2.7 nope 1 2\r\n"[..], GET].concat(),
        ),
        (
            "malformed v2",
            [v2(1, 0x11, &[1, 2, 3]), GET.to_vec()].concat(),
        ),
        ("oversized v2", oversized),
        (
            "oversized v1",
            [
                format!("PROXY TCP4 {}\r\n", "9".repeat(120)).as_bytes(),
                GET,
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let out = exchange(addr, &bytes).await;
        assert!(out.is_empty(), "{what}: {}", String::from_utf8_lossy(&out));
    }
    assert_eq!(a.requests(), 0, "nothing reached the backend");

    // A valid header from a peer that may not send one.
    let b = TestBackend::start("b").await;
    let strict = stickyd::server::start(parse_config(&config(&b, "\"10.0.0.0/8\"", "")))
        .await
        .unwrap();
    let req = [&b"PROXY TCP4 192.0.2.7 10.0.0.1 1 80\r\n"[..], GET].concat();
    assert!(exchange(strict.local_addrs()[0], &req).await.is_empty());
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn a_tls_listener_reads_the_header_before_the_handshake() {
    let dir = std::env::temp_dir().join(format!("stickyd-pp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let site = self_signed(&dir, "pp", "pp.test");
    let a = TestBackend::start("a").await;
    let mut text = config(&a, "\"127.0.0.0/8\"", "").replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = []\nlisten_tls = [\"127.0.0.1:0\"]",
    );
    text.push_str(&format!(
        "[tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
        site.cert, site.key
    ));
    let lb = stickyd::server::start(parse_config(&text)).await.unwrap();
    let addr = lb.local_addrs()[0];
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.4 10.0.0.1 5555 443\r\n")
        .await
        .unwrap();
    let tls = tls_over(tcp, "pp.test", &site.der, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    w.write_all(GET).await.unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(a.last().headers["x-forwarded-for"], "198.51.100.4");
    assert_eq!(a.last().headers["x-forwarded-proto"], "https");
    let _ = std::fs::remove_dir_all(&dir);
}
