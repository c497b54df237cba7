//! Test support: real HTTP backends on 127.0.0.1:0, raw misbehaving backends, stickyd started
//! in-process on port 0, and a small client that keeps the affinity cookie.
//!
//! The house pattern for end-to-end tests: stickyd started in-process from a TOML string
//! (`stickyd`, `parse_config`), with real backends on 127.0.0.1:0, so a test reads as its config and its
//! requests, binds no fixed port, and needs no file but the ones it writes itself.
#![allow(dead_code)]

pub mod dns;
pub mod replica;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stickyd::config::{self, Config, KeySource};
use stickyd::server::Running;
use stickyd::token::KeyRing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The signing key every test instance uses.
pub const KEY: &[u8] = b"integration-test-key-0123456789abcdef";

/// A second key, which `env:NEW_KEY` resolves to (every other spec resolves to [`KEY`]).
pub const NEW_KEY: &[u8] = b"integration-test-new-key-0123456789abcdef";

/// The key ring stickyd builds from [`KEY`], to forge and check tokens in tests.
pub fn ring() -> KeyRing {
    KeyRing::new(&[KEY], "stickyd")
}

struct TestKeys;

impl KeySource for TestKeys {
    fn file(&self, _: &Path) -> std::io::Result<Vec<u8>> {
        Ok(KEY.to_vec())
    }
    fn env(&self, name: &str) -> Option<Vec<u8>> {
        Some(if name == "NEW_KEY" { NEW_KEY } else { KEY }.to_vec())
    }
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
}

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|n| match n {}).boxed()
}

/// A real HTTP backend answering with its name. Paths: `/healthz` (200, or 503 when marked
/// unhealthy), `/echo` (streams the request body back), `/slow?ms=N`, anything else (its name).
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub healthy: Arc<AtomicBool>,
    pub health_checks: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    /// A backend listening at `addr` (any loopback address; port 0 picks one).
    pub async fn start_at(name: &str, addr: SocketAddr) -> std::io::Result<TestBackend> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::serve(
            name,
            listener,
            Default::default(),
            Arc::new(AtomicBool::new(true)),
            Default::default(),
        ))
    }

    fn serve(
        name: &str,
        listener: TcpListener,
        seen: Arc<Mutex<Vec<Seen>>>,
        healthy: Arc<AtomicBool>,
        health_checks: Arc<AtomicUsize>,
    ) -> TestBackend {
        let addr = listener.local_addr().unwrap();
        let (n, s, h, hc) = (
            name.to_string(),
            seen.clone(),
            healthy.clone(),
            health_checks.clone(),
        );
        let task = http_server(listener, move |req| {
            handle(req, n.clone(), s.clone(), h.clone(), hc.clone())
        });
        TestBackend {
            name: name.into(),
            addr,
            seen,
            healthy,
            health_checks,
            task: Some(task),
        }
    }

    /// Stops listening and closes every connection: connects are refused from now on.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        self.kill().await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let b = Self::serve(
            &self.name,
            listener,
            self.seen.clone(),
            self.healthy.clone(),
            self.health_checks.clone(),
        );
        *self = b;
    }

    /// Requests seen, health checks excluded.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request was seen")
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    healthy: Arc<AtomicBool>,
    health_checks: Arc<AtomicUsize>,
) -> Result<Response<Body>, hyper::Error> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        health_checks.fetch_add(1, Ordering::SeqCst);
        let ok = healthy.load(Ordering::SeqCst);
        let mut r = Response::new(full(if ok { "ok" } else { "sick" }));
        *r.status_mut() = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(r);
    }
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req.headers().clone(),
    });
    let mut resp = match path.as_str() {
        "/echo" => Response::new(req.into_body().boxed()),
        "/slow" => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(name.clone()))
        }
        _ => Response::new(full(name.clone())),
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    Ok(resp)
}

/// Serves HTTP/1.1 on `listener` with `handle`, until the returned task is aborted; the
/// connections' tasks are the accept task's own, so aborting it closes them all (a killed
/// process).
pub fn http_server<F, Fut>(listener: TcpListener, handle: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = service_fn(handle.clone());
            conns.spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// A raw backend that reads one request head and then does `then` with the socket; counts
/// connections that delivered a request.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    /// Connections accepted (health checks included).
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// What a raw backend does after reading a request head.
#[derive(Clone, Copy)]
pub enum Misbehave {
    /// Closes the connection without a response.
    Close,
    /// Sends bytes that are not HTTP.
    Garbage,
    /// Answers `200 ok` and keeps the connection for the next request.
    KeepAlive,
    /// Answers `200 ok` without announcing a close, then closes (a keep-alive timeout racing
    /// the next request).
    AnswerThenClose,
}

impl RawBackend {
    pub async fn start(how: Misbehave) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (count, conns) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        // A request body, if any, by Content-Length.
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        while buf.len() < end + len {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + len);
                        // Health checks are not requests for the purpose of the tests.
                        if head.starts_with("get /healthz") {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                            return;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        match how {
                            Misbehave::Close => return,
                            Misbehave::Garbage => {
                                let _ = s.write_all(b"this is not http\r\n\r\n").await;
                                return;
                            }
                            Misbehave::KeepAlive | Misbehave::AnswerThenClose => {
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if s.write_all(ok).await.is_err() {
                                    return;
                                }
                                if let Misbehave::AnswerThenClose = how {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            requests,
            connections,
            task,
        }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw backend on 127.0.0.1:0 that hands each connection it accepts to `serve`, in a task of
/// its own, for the rest of the test.
pub async fn raw_server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// A backend that records every byte it receives and answers each request head with a small
/// 200 as soon as it has the head (bodies are not parsed: what it records is what a real backend
/// would have to frame; and it answers before reading a body, as an application that refuses
/// an upload early does).
pub async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    let addr = raw_server(move |mut s| {
        let rec = rec.clone();
        async move {
            let mut buf = [0u8; 8192];
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                if chunk.starts_with(b"GET /healthz") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
                rec.lock().unwrap().extend_from_slice(chunk);
                let heads = chunk.windows(4).filter(|w| w == b"\r\n\r\n").count();
                for _ in 0..heads {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            }
        }
    })
    .await;
    (addr, seen)
}

/// Config sections for a test instance; each is the body of its table.
pub struct Cfg {
    pub server: &'static str,
    pub affinity: &'static str,
    pub health: &'static str,
    pub upstream: &'static str,
    pub balance: &'static str,
    /// The `[admin]` section's body (its listener is always 127.0.0.1:0); None: no admin API.
    pub admin: Option<&'static str>,
    /// The `[log]` section's body.
    pub log: &'static str,
}

impl Default for Cfg {
    fn default() -> Cfg {
        Cfg {
            server: "",
            affinity: "",
            // Active checks off by default: tests that want them turn them on.
            health: "enabled = false\neject_time = \"1h\"",
            upstream: "",
            balance: "",
            admin: None,
            log: "",
        }
    }
}

/// The config text for `backends` (id = backend name).
pub fn config_text(cfg: &Cfg, backends: &[(&str, SocketAddr)]) -> String {
    let mut t = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{}\n[affinity]\nkeys = [\"env:KEY\"]\n{}\n[health]\n{}\n[upstream]\n{}\n[balance]\n{}\n",
        cfg.server, cfg.affinity, cfg.health, cfg.upstream, cfg.balance
    );
    if !cfg.log.is_empty() {
        t.push_str(&format!("[log]\n{}\n", cfg.log));
    }
    if let Some(admin) = cfg.admin {
        t.push_str(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n"));
    }
    for (id, addr) in backends {
        t.push_str(&format!(
            "[[backend]]\nid = \"{id}\"\naddress = \"{addr}\"\n"
        ));
    }
    t
}

pub fn parse_config(text: &str) -> Config {
    config::parse(text, "test.toml", Path::new("."), &TestKeys).unwrap()
}

/// Starts stickyd in-process in front of `backends`.
pub async fn stickyd(cfg: &Cfg, backends: &[(&str, SocketAddr)]) -> Running {
    stickyd::server::start(parse_config(&config_text(cfg, backends)))
        .await
        .unwrap()
}

/// `(name, addr)` pairs of test backends.
pub fn pool(b: &[&TestBackend]) -> Vec<(&'static str, SocketAddr)> {
    b.iter()
        .map(|b| (&*b.name.clone().leak(), b.addr))
        .collect()
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Value of the affinity cookie set by this response, if any.
    pub fn set_cookie(&self) -> Option<String> {
        self.headers.get_all("set-cookie").iter().find_map(|v| {
            let v = v.to_str().ok()?;
            v.strip_prefix("stickyd=")
                .map(|rest| rest.split(';').next().unwrap_or_default().to_string())
        })
    }
    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

/// A client with a one-cookie jar for `stickyd`.
pub struct Browser {
    client: Client<HttpConnector, Full<Bytes>>,
    pub base: String,
    pub cookie: Option<String>,
}

impl Browser {
    pub fn new(addr: SocketAddr) -> Browser {
        Browser {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
            cookie: None,
        }
    }

    /// Sends a request with the jar's cookie (plus `extra_cookie` if given) and stores any
    /// affinity cookie the response sets.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
        extra: &[(&str, &str)],
    ) -> Got {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(c) = &self.cookie {
            b = b.header("cookie", format!("stickyd={c}"));
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let resp = self
            .client
            .request(b.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let got = Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        };
        if let Some(c) = got.set_cookie() {
            self.cookie = Some(c);
        }
        got
    }

    pub async fn get(&mut self, path: &str) -> Got {
        self.send("GET", path, Bytes::new(), &[]).await
    }
}

/// A client with a cookie jar of every cookie (not only `stickyd`) that names a Host.
pub struct Jar {
    browser: Browser,
    pub jar: HashMap<String, String>,
}

impl Jar {
    pub fn new(addr: SocketAddr) -> Jar {
        Jar {
            browser: Browser::new(addr),
            jar: HashMap::new(),
        }
    }

    /// `GET path` with `Host: host` and the jar's cookies; keeps every cookie set.
    pub async fn get(&mut self, host: &str, path: &str) -> Got {
        self.send("GET", host, path).await
    }

    /// `method path` with `Host: host` and the jar's cookies; keeps every cookie set.
    pub async fn send(&mut self, method: &str, host: &str, path: &str) -> Got {
        self.send_with(method, host, path, &[]).await
    }

    /// [`Jar::send`] with `headers` added.
    pub async fn send_with(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Got {
        let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let cookie = cookies.join("; ");
        let mut extra = vec![("host", host)];
        extra.extend_from_slice(headers);
        if !cookie.is_empty() {
            extra.push(("cookie", &cookie));
        }
        let got = self.browser.send(method, path, Bytes::new(), &extra).await;
        // The jar here is ours: Browser's own (for `stickyd` only) stays empty.
        self.browser.cookie = None;
        for v in got.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let pair = v.split(';').next().unwrap();
            let (k, val) = pair.split_once('=').unwrap();
            self.jar.insert(k.to_string(), val.to_string());
        }
        got
    }
}

/// Polls `cond` every 10 ms until true; panics after 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Counts by backend name.
pub fn tally<'a>(names: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.to_string()).or_insert(0) += 1;
    }
    m
}

/// A self-signed certificate for `name`, written as `file`.pem and `file`.key in `dir`.
pub struct SelfSigned {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

pub fn self_signed(dir: &Path, file: &str, name: &str) -> SelfSigned {
    self_signed_for(dir, file, &[name])
}

/// [`self_signed`] for several names (wildcards too).
pub fn self_signed_for(dir: &Path, file: &str, names: &[&str]) -> SelfSigned {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    SelfSigned {
        cert: c,
        key: k,
        der: cert.der().clone(),
    }
}

/// A TLS connection to `addr` asking for `sni`, trusting only `trusted`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    trusted: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tls_over(tcp, sni, trusted, alpn).await
}

/// [`tls_connect`] over an already connected `tcp` (after bytes sent in the clear, such as a
/// PROXY header).
pub async fn tls_over(
    tcp: tokio::net::TcpStream,
    sni: &str,
    trusted: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap(),
            tcp,
        )
        .await
}

/// The first `n` lines of the access log at `path`, waiting (10 ms at a time, 5 s at most) for
/// the writer thread to have written them; fewer if it never does.
pub async fn access_lines(path: &Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        lines = text.lines().map(str::to_string).collect::<Vec<_>>();
        if lines.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lines
}
