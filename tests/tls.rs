//! TLS termination end to end: SNI picks the certificate, ALPN h2 and HTTP/1.1 reach the
//! backend, the cookie is Secure, X-Forwarded-Proto is https, and a reload swaps certificates.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Site = SelfSigned;

/// A self-signed certificate for `name`, written to `dir`.
fn site(dir: &Path, file: &str, name: &str) -> Site {
    self_signed(dir, file, name)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stickyd-tls-e2e-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The config: TLS only, with `sites` in order.
fn tls_config(sites: &[&Site], backends: &[(&str, SocketAddr)]) -> stickyd::config::Config {
    let mut text = config_text(&Cfg::default(), backends).replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = []\nlisten_tls = [\"127.0.0.1:0\"]",
    );
    let certs: Vec<String> = sites
        .iter()
        .map(|s| format!("{{ cert = {:?}, key = {:?} }}", s.cert, s.key))
        .collect();
    text.push_str(&format!(
        "[tls]\ncerts = [{}]\nhandshake_timeout = \"300ms\"\n",
        certs.join(", ")
    ));
    parse_config(&text)
}

/// A TLS connection to `addr` asking for `sni`, trusting only `trusted`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    sni: &str,
    trusted: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect(addr, sni, trusted, alpn).await
}

/// One HTTP/1.1 GET over `tls`: status, Set-Cookie, body.
async fn get_h1(tls: TlsStream<TcpStream>, host: &str) -> (u16, String, String) {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, cookie, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_http1_gets_a_secure_cookie_and_https_forwarded() {
    let dir = temp_dir("sni");
    let (a_site, b_site) = (site(&dir, "a", "a.test"), site(&dir, "b", "b.test"));
    let backend = TestBackend::start("app").await;
    let lb = stickyd::server::start(tls_config(&[&a_site, &b_site], &pool(&[&backend])))
        .await
        .unwrap();
    let addr = lb.local_addrs()[0];

    // Each name gets its own certificate: trusting only b's, b.test verifies and a.test does not.
    assert!(connect(addr, "b.test", &b_site.der, &[]).await.is_ok());
    assert!(connect(addr, "a.test", &b_site.der, &[]).await.is_err());
    // An unknown name gets the first (default) certificate.
    assert!(connect(addr, "a.test", &a_site.der, &[]).await.is_ok());

    let tls = connect(addr, "b.test", &b_site.der, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, cookie, body) = get_h1(tls, "b.test").await;
    assert_eq!((status, body.as_str()), (200, "app"));
    assert!(cookie.starts_with("stickyd="), "{cookie}");
    assert!(
        cookie.ends_with("; Secure"),
        "Secure on TLS by default: {cookie}"
    );
    let seen = backend.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn alpn_h2_is_served_through_to_the_backend() {
    let dir = temp_dir("h2");
    let a_site = site(&dir, "a", "a.test");
    let backend = TestBackend::start("app").await;
    let lb = stickyd::server::start(tls_config(&[&a_site], &pool(&[&backend])))
        .await
        .unwrap();
    let tls = connect(
        lb.local_addrs()[0],
        "a.test",
        &a_site.der,
        &[b"h2", b"http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("https://a.test/x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "app");
    }
    let seen = backend.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        seen.headers["host"], "a.test",
        "the h2 authority becomes Host"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_reload_swaps_certificates_for_new_connections() {
    let dir = temp_dir("reload");
    let old = site(&dir, "a", "a.test");
    let backend = TestBackend::start("app").await;
    let mut lb = stickyd::server::start(tls_config(&[&old], &pool(&[&backend])))
        .await
        .unwrap();
    let addr = lb.local_addrs()[0];
    let kept = connect(addr, "a.test", &old.der, &[b"http/1.1"])
        .await
        .unwrap();
    // New certificate and key in the same files, then a reload.
    let new = site(&dir, "a", "a.test");
    lb.reload(tls_config(&[&new], &pool(&[&backend]))).unwrap();
    assert!(connect(addr, "a.test", &new.der, &[]).await.is_ok());
    assert!(connect(addr, "a.test", &old.der, &[]).await.is_err());
    // A connection made before the reload keeps working.
    let (status, _, _) = get_h1(kept, "a.test").await;
    assert_eq!(status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_closed_at_the_deadline() {
    use tokio::io::AsyncReadExt;
    let dir = temp_dir("slow");
    let a_site = site(&dir, "a", "a.test");
    let backend = TestBackend::start("app").await;
    let lb = stickyd::server::start(tls_config(&[&a_site], &pool(&[&backend])))
        .await
        .unwrap();
    // Connects and says nothing: stickyd closes it after handshake_timeout (300 ms here).
    let mut idle = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed before the test's own deadline")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    // The listener still serves others.
    assert!(
        connect(lb.local_addrs()[0], "a.test", &a_site.der, &[])
            .await
            .is_ok()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A backend that speaks only TLS, with `site`'s certificate; answers its name and which
/// path it saw, and counts requests.
async fn tls_backend(site: &Site) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let cert = stickyd::tls::load(&site.cert, &site.key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        stickyd::tls::server_config(
            &[cert],
            &[stickyd::tls::Version::Tls12, stickyd::tls::Version::Tls13],
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    // Requests only: the health checks of a balancer still running would race
                    // a test comparing counts.
                    if req.uri().path() != "/healthz" {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let body = format!("secure backend {}", req.uri().path());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// Plain listener, one TLS backend with `extra` backend keys.
fn to_tls_backend(addr: SocketAddr, extra: &str, health: &'static str) -> stickyd::config::Config {
    let cfg = Cfg {
        health,
        ..Cfg::default()
    };
    let text = config_text(&cfg, &[("secure", addr)]).replace(
        &format!("address = \"{addr}\"\n"),
        &format!("address = \"{addr}\"\ntls = true\n{extra}\n"),
    );
    parse_config(&text)
}

#[tokio::test]
async fn backends_can_be_reached_over_tls_verified_by_their_ca_and_name() {
    let dir = temp_dir("upstream");
    let site = site(&dir, "backend", "backend.test");
    let (addr, hits) = tls_backend(&site).await;
    let ca = format!("tls_ca = {:?}\nserver_name = \"backend.test\"", site.cert);
    // Active health checks on, over TLS as well.
    let lb = stickyd::server::start(to_tls_backend(
        addr,
        &ca,
        "interval = \"100ms\"\nrise = 1\ninitial = \"down\"",
    ))
    .await
    .unwrap();
    let live = lb.shared().load().backends[0].live.clone();
    eventually("the TLS backend to pass its health check", || {
        live.health.is_up()
    })
    .await;
    let mut user = Browser::new(lb.local_addrs()[0]);
    for _ in 0..3 {
        let got = user.get("/over-tls").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "secure backend /over-tls");
    }
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 3);

    // The wrong name: the handshake fails and nothing is sent (502, not a hang).
    let wrong = format!("tls_ca = {:?}\nserver_name = \"other.test\"", site.cert);
    let lb2 = stickyd::server::start(to_tls_backend(addr, &wrong, "enabled = false"))
        .await
        .unwrap();
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let got = Browser::new(lb2.local_addrs()[0]).get("/x").await;
    assert_eq!(got.status, 502);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before);
    let _ = std::fs::remove_dir_all(&dir);
}
