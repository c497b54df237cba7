//! `--idle-conns`: open many keep-alive connections (HTTP/1.1, or h2c with `--idle-h2`), one
//! request on each, hold them idle, and read the balancer's RSS; plus the file-descriptor and
//! port budget such a run needs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::client::{Conn, Target, exchange};
use crate::procfs;
use crate::report::IdleReport;
use crate::stats::Failure;
use crate::users::User;

/// The protocol of the idle connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Keep-alive HTTP/1.1 (the harness's own client).
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (hyper's client), `--idle-h2`.
    H2c,
}

impl Protocol {
    /// As the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "HTTP/2 (h2c)",
        }
    }
}

/// One held connection.
enum Held {
    H1(Conn),
    H2(H2Conn),
}

impl Held {
    fn is_closed(&mut self) -> bool {
        match self {
            Held::H1(c) => c.is_closed(),
            Held::H2(c) => c.is_closed(),
        }
    }
}

/// An h2c connection: the handle that sends requests and the task that drives the connection.
/// Dropping it ends the task, and so closes the connection.
struct H2Conn {
    send: SendRequest<Empty<Bytes>>,
    task: JoinHandle<()>,
}

impl H2Conn {
    /// Connects to `target` with HTTP/2 prior knowledge and makes one request to `uri` for
    /// `user` (its cookie, if any; the response's cookies into its jar unless it is
    /// cookieless), reading the response body whole.
    async fn open(target: &Target, uri: &Uri, user: &mut User) -> Result<H2Conn, Failure> {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Io)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut h2 = H2Conn { send, task };
        let mut req = Request::builder()
            .method(target.method.clone())
            .uri(uri.clone())
            .body(Empty::<Bytes>::new())
            .map_err(|_| Failure::Protocol)?;
        if let Some(c) = user.cookie() {
            req.headers_mut().insert(COOKIE, c);
        }
        let resp = h2.send.send_request(req).await.map_err(|_| Failure::Io)?;
        if !user.cookieless {
            for v in resp.headers().get_all(SET_COOKIE) {
                user.jar.store(v.as_bytes());
            }
        }
        resp.into_body().collect().await.map_err(|_| Failure::Io)?;
        Ok(h2)
    }

    fn is_closed(&self) -> bool {
        self.send.is_closed() || self.task.is_finished()
    }
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connections opened at once.
const BATCH: usize = 256;

/// Opens `n` connections to `target` speaking `protocol`, one request each, holds them for
/// `hold`, and samples `pid`'s RSS before and after. Stops early when `interrupted` turns true.
pub async fn hold(
    target: Arc<Target>,
    protocol: Protocol,
    n: usize,
    pid: Option<u32>,
    hold: Duration,
    timeout: Duration,
    mut interrupted: watch::Receiver<bool>,
) -> IdleReport {
    let rss_before = pid.and_then(procfs::rss_kib);
    let mut conns: Vec<Held> = Vec::with_capacity(n);
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut left = n;
    while left > 0 && !*interrupted.borrow() {
        let batch = left.min(BATCH);
        left -= batch;
        let mut set = JoinSet::new();
        for _ in 0..batch {
            let target = target.clone();
            set.spawn(async move {
                tokio::time::timeout(timeout, async {
                    // As with --fresh-only: one request, no cookie sent.
                    let mut user = User::new(1, true);
                    match protocol {
                        Protocol::Http1 => {
                            let mut conn = Conn::open(target.addr).await?;
                            exchange(&mut conn, &target, &mut user).await?;
                            Ok::<Held, Failure>(Held::H1(conn))
                        }
                        Protocol::H2c => {
                            let uri = target.uri.as_ref().ok_or(Failure::Protocol)?;
                            let conn = H2Conn::open(&target, uri, &mut user).await?;
                            Ok(Held::H2(conn))
                        }
                    }
                })
                .await
                .unwrap_or(Err(Failure::Timeout))
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(c)) => conns.push(c),
                Ok(Err(f)) => *failed.entry(failure_name(f).into()).or_default() += 1,
                Err(_) => *failed.entry("task".into()).or_default() += 1,
            }
        }
    }
    let opened = conns.len();
    if !*interrupted.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = interrupted.wait_for(|i| *i) => {}
        }
    }
    let rss_held = pid.and_then(procfs::rss_kib);
    let still_open: usize = conns.iter_mut().map(|c| usize::from(!c.is_closed())).sum();
    drop(conns);
    IdleReport {
        protocol: protocol.name().into(),
        requested: n,
        opened,
        still_open,
        failed,
        hold_s: hold.as_secs_f64(),
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        bytes_per_conn: match (rss_before, rss_held) {
            (Some(b), Some(h)) if opened > 0 => {
                Some((h as f64 - b as f64) * 1024.0 / opened as f64)
            }
            _ => None,
        },
    }
}

fn failure_name(f: Failure) -> &'static str {
    match f {
        Failure::Connect => "connect",
        Failure::Timeout => "timeout",
        Failure::Io => "reset/io",
        Failure::Protocol => "other",
    }
}

/// The local port range of `/proc/sys/net/ipv4/ip_local_port_range` ("32768\t60999"), as the
/// number of ports in it.
pub fn parse_port_range(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>());
    let lo = it.next()?.ok()?;
    let hi = it.next()?.ok()?;
    (hi >= lo).then(|| hi - lo + 1)
}

/// Makes sure this process (and so stickyd, which inherits the limit) may open `needed` files,
/// raising the soft RLIMIT_NOFILE up to the hard one; and that one client address has enough
/// local ports for `conns` connections to one server address.
pub fn ensure_budget(needed: u64, conns: u64) -> Result<(), String> {
    if let Some(ports) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .as_deref()
        .and_then(parse_port_range)
    {
        if conns > ports {
            return Err(format!(
                "{conns} connections to one address need more local ports than the {ports} of net.ipv4.ip_local_port_range"
            ));
        }
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_err(|e| format!("cannot read the open-files limit: {e}"))?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        return Err(format!(
            "this run needs about {needed} open files, but the hard limit (ulimit -Hn) is {hard}: raise it or ask for fewer connections"
        ));
    }
    rlimit::setrlimit(rlimit::Resource::NOFILE, needed, hard)
        .map_err(|e| format!("cannot raise the open-files limit to {needed}: {e}"))
}

#[cfg(test)]
mod tests {
    use http::uri::PathAndQuery;
    use http::{HeaderName, Method};

    use super::*;
    use crate::client::recording_server;

    #[test]
    fn idle_connections_carry_the_targets_host() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let (addr, mut heads) = recording_server().await;
                let target = Target::new(
                    addr,
                    "shop.example.com",
                    &PathAndQuery::from_static("/"),
                    Method::GET,
                    HeaderName::from_static("x-backend"),
                )
                .expect("target");
                let (_tx, rx) = watch::channel(false);
                let r = hold(
                    Arc::new(target),
                    Protocol::Http1,
                    3,
                    None,
                    Duration::ZERO,
                    Duration::from_secs(10),
                    rx,
                )
                .await;
                assert_eq!((r.opened, r.failed.len()), (3, 0));
                assert_eq!(r.protocol, "HTTP/1.1");
                let mut got = Vec::new();
                while let Ok(h) = heads.try_recv() {
                    got.push(String::from_utf8(h).expect("text"));
                }
                assert_eq!(
                    got, ["GET / HTTP/1.1\r\nhost: shop.example.com\r\n\r\n"; 3],
                    "one cookieless request per connection"
                );
            });
    }

    /// What an h2c test server saw of one request.
    #[derive(Debug, PartialEq)]
    struct Seen {
        conn: usize,
        version: http::Version,
        method: Method,
        uri: String,
        cookie: Option<String>,
    }

    /// A loopback h2c server (prior knowledge, 127.0.0.1:0) that answers every request with a
    /// 200 from `b1` setting the cookie `stickyd_shop=t1`, and sends what it saw of each request
    /// on the channel before answering; connections are numbered in accept order.
    async fn recording_h2_server() -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Seen>,
    ) {
        use http_body_util::Full;
        use hyper::body::Incoming;
        use hyper::service::service_fn;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conn = 0;
            while let Ok((s, _)) = listener.accept().await {
                conn += 1;
                let tx = tx.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let _ = tx.send(Seen {
                        conn,
                        version: req.version(),
                        method: req.method().clone(),
                        uri: req.uri().to_string(),
                        cookie: req
                            .headers()
                            .get(COOKIE)
                            .map(|c| c.to_str().expect("text").to_string()),
                    });
                    async {
                        http::Response::builder()
                            .header("x-backend", "b1")
                            .header(SET_COOKIE, "stickyd_shop=t1; Path=/; HttpOnly")
                            .body(Full::new(Bytes::from_static(b"ok")))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc),
                );
            }
        });
        (addr, rx)
    }

    fn shop_target(addr: std::net::SocketAddr) -> Target {
        Target::new(
            addr,
            "shop.example.com",
            &PathAndQuery::from_static("/cart?x=1"),
            Method::GET,
            HeaderName::from_static("x-backend"),
        )
        .expect("target")
    }

    #[test]
    fn idle_h2_connections_are_h2c_with_one_request_each_and_stay_open() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let (addr, mut seen) = recording_h2_server().await;
                let (_tx, rx) = watch::channel(false);
                let r = hold(
                    Arc::new(shop_target(addr)),
                    Protocol::H2c,
                    3,
                    None,
                    Duration::ZERO,
                    Duration::from_secs(10),
                    rx,
                )
                .await;
                assert_eq!((r.opened, r.still_open, r.failed.len()), (3, 3, 0));
                assert_eq!(r.protocol, "HTTP/2 (h2c)");
                let mut got = Vec::new();
                while let Ok(s) = seen.try_recv() {
                    got.push(s);
                }
                got.sort_by_key(|s| s.conn);
                let want: Vec<Seen> = (1..=3)
                    .map(|conn| Seen {
                        conn,
                        version: http::Version::HTTP_2,
                        method: Method::GET,
                        uri: "http://shop.example.com/cart?x=1".into(),
                        cookie: None,
                    })
                    .collect();
                assert_eq!(got, want, "one cookieless request per h2c connection");
            });
    }

    #[test]
    fn an_h2_connection_keeps_and_sends_the_users_cookies() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let (addr, mut seen) = recording_h2_server().await;
                let target = shop_target(addr);
                let uri = target.uri.clone().expect("absolute URI");
                let mut user = User::new(2, false);
                let first = H2Conn::open(&target, &uri, &mut user).await.expect("first");
                let second = H2Conn::open(&target, &uri, &mut user)
                    .await
                    .expect("second");
                assert!(!first.is_closed() && !second.is_closed());
                let cookies: Vec<Option<String>> = [seen.try_recv(), seen.try_recv()]
                    .map(|s| s.expect("seen").cookie)
                    .into();
                assert_eq!(cookies, [None, Some("stickyd_shop=t1".to_string())]);
            });
    }

    #[test]
    fn the_port_range_is_counted_inclusively() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28232));
        assert_eq!(parse_port_range("1024 1024"), Some(1));
        assert_eq!(parse_port_range("9 1"), None);
        assert_eq!(parse_port_range("x y"), None);
        assert_eq!(parse_port_range(""), None);
    }
}
