//! The harness's own backends: real HTTP/1.1 servers (hyper) on 127.0.0.1 that play a small
//! stateful app. Each keeps sessions in memory by its own cookie (`sid`, set on first sight)
//! and answers every request 200 with a short body, `x-backend: <id>` and the session's
//! counter after the request (`x-session-count`), so users can tell when their state was
//! lost. Health checks (`GET /healthz`) are answered with `X-Stickyd-Incarnation`, a random
//! value drawn per start.
//!
//! With replication on (`--replicate`) they implement the app side of stickyd's replication
//! protocol: after each request the session's state is pushed, before answering, to every
//! backup named in `X-Stickyd-Backup` (`PUT /_stickyd/replica/{sid}`); replicas received are
//! kept apart from live sessions, with the id of the backend that pushed them
//! (`X-Replica-From`); a request with `X-Stickyd-Takeover` promotes the replica (none: the
//! session starts over, lost). Pushes, their latency and takeovers are counted, and each
//! takeover is reported to [`Recovery`] against the session's old home: the backend that
//! pushed the replica, else the takeover header's value when it names another backend.
//!
//! A backend can be killed (listener and every connection closed, so connects are refused;
//! its sessions and replicas are gone) and restarted on the same port (empty, with a new
//! incarnation).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_LENGTH, COOKIE, HOST, SET_COOKIE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::recovery::{Recovery, Seen};
use crate::sessions::{
    COUNT_HEADER, MAX_REPLICA_BODY, REPLICA_PREFIX, SESSION_IDLE, SID_COOKIE, Sid, Store, Takeover,
    format_sid, parse_backups, parse_sid, sid_from_cookies,
};
use crate::stats::histogram;

/// Request headers stickyd sends with replication on.
pub const BACKUP_HEADER: &str = "x-stickyd-backup";
pub const TAKEOVER_HEADER: &str = "x-stickyd-takeover";
/// Health-check response header naming the process.
pub const INCARNATION_HEADER: &str = "x-stickyd-incarnation";
/// Replica push header naming the pushing backend.
pub const REPLICA_FROM_HEADER: &str = "x-replica-from";
/// Longest `X-Replica-From` value kept.
const MAX_ID: usize = 64;
/// The health-check path (stickyd's `[health] path` default; the generated config keeps it).
pub const HEALTH_PATH: &str = "/healthz";
/// Time allowed for one replica push (connect included).
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// What all backends of a run share.
#[derive(Debug)]
pub struct Common {
    /// Implement the replication protocol (`--replicate`).
    pub replicate: bool,
    /// Time base of [`Recovery`].
    pub epoch: Instant,
    pub recovery: Arc<Recovery>,
}

impl Common {
    pub fn new(replicate: bool, epoch: Instant, recovery: Arc<Recovery>) -> Arc<Common> {
        Arc::new(Common {
            replicate,
            epoch,
            recovery,
        })
    }
}

/// Replication and session counters of one backend, kept across kills.
#[derive(Debug)]
struct Counters {
    /// Takeovers that promoted a replica.
    promoted: AtomicU64,
    /// Takeovers with no replica: the session started over.
    no_replica: AtomicU64,
    /// Requests with a `sid` this process did not know, without a takeover.
    unknown: AtomicU64,
    /// Of those, ones whose replica was here (not promoted: no takeover header).
    unknown_with_replica: AtomicU64,
    pushes_ok: AtomicU64,
    push_connect: AtomicU64,
    push_timeout: AtomicU64,
    push_status: AtomicU64,
    push_io: AtomicU64,
    /// Requests whose `X-Stickyd-Backup` could not be read (nothing pushed).
    bad_backup_header: AtomicU64,
    /// Replicas received (PUTs stored).
    replicas_received: AtomicU64,
    /// Latency of successful pushes, µs.
    push_latency: Mutex<Histogram<u64>>,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            promoted: AtomicU64::new(0),
            no_replica: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            unknown_with_replica: AtomicU64::new(0),
            pushes_ok: AtomicU64::new(0),
            push_connect: AtomicU64::new(0),
            push_timeout: AtomicU64::new(0),
            push_status: AtomicU64::new(0),
            push_io: AtomicU64::new(0),
            bad_backup_header: AtomicU64::new(0),
            replicas_received: AtomicU64::new(0),
            push_latency: Mutex::new(histogram()),
        }
    }
}

/// A copy of a backend's counters.
#[derive(Debug, Clone)]
pub struct ReplStats {
    pub promoted: u64,
    pub no_replica: u64,
    pub unknown: u64,
    pub unknown_with_replica: u64,
    pub pushes_ok: u64,
    pub push_connect: u64,
    pub push_timeout: u64,
    pub push_status: u64,
    pub push_io: u64,
    pub bad_backup_header: u64,
    pub replicas_received: u64,
    pub push_latency: Histogram<u64>,
    /// Live sessions and replicas held now (0 while killed).
    pub sessions_held: usize,
    pub replicas_held: usize,
}

impl ReplStats {
    pub fn pushes_failed(&self) -> u64 {
        self.push_connect + self.push_timeout + self.push_status + self.push_io
    }
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PushFail {
    Connect,
    Timeout,
    /// The peer answered with a status other than 2xx.
    Status,
    /// The connection failed after the request was sent.
    Io,
}

/// What a backend's connections share, kept across kills.
struct Inner {
    id: String,
    id_value: HeaderValue,
    header: HeaderName,
    body: Bytes,
    /// Requests served, health checks and replica traffic excluded.
    served: AtomicU64,
    /// `GET /healthz` requests (stickyd's active checks).
    checks: AtomicU64,
    counters: Counters,
    common: Arc<Common>,
}

/// One process of a backend: what a kill loses.
struct Process {
    incarnation: HeaderValue,
    store: Store,
    peers: Peers,
}

impl Process {
    fn new() -> Arc<Process> {
        let mut raw = [0u8; 8];
        let value = match getrandom::fill(&mut raw) {
            Ok(()) => u64::from_le_bytes(raw),
            Err(_) => fastrand::u64(..),
        };
        Arc::new(Process {
            incarnation: HeaderValue::from_str(&format!("{value:016x}"))
                .expect("hex is a valid header value"),
            store: Store::new(SESSION_IDLE),
            peers: Peers::default(),
        })
    }
}

/// One backend.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    /// The running process; `None` while killed.
    process: Option<Arc<Process>>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts backend `id` on `addr` (port 0: any free port).
    pub async fn start(id: &str, addr: SocketAddr, common: Arc<Common>) -> io::Result<Backend> {
        let inner = Arc::new(Inner {
            id: id.to_string(),
            id_value: HeaderValue::from_str(id)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad backend id"))?,
            header: HeaderName::from_static("x-backend"),
            body: Bytes::from(format!("hello from {id}\n")),
            served: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            counters: Counters::default(),
            common,
        });
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let process = Process::new();
        Ok(Backend {
            id: id.to_string(),
            addr,
            task: Some(tokio::spawn(serve(
                listener,
                inner.clone(),
                process.clone(),
            ))),
            process: Some(process),
            inner,
        })
    }

    pub fn is_up(&self) -> bool {
        self.task.is_some()
    }

    /// Requests served so far, health checks and replica traffic excluded.
    pub fn served(&self) -> u64 {
        self.inner.served.load(Ordering::Relaxed)
    }

    /// Health checks answered so far.
    pub fn checks(&self) -> u64 {
        self.inner.checks.load(Ordering::Relaxed)
    }

    /// The current process's incarnation (`None` while killed).
    pub fn incarnation(&self) -> Option<String> {
        self.process
            .as_ref()
            .map(|p| String::from_utf8_lossy(p.incarnation.as_bytes()).into_owned())
    }

    /// Replication and session counters since the start or the last [`Backend::reset_stats`].
    pub fn repl_stats(&self) -> ReplStats {
        let c = &self.inner.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (sessions_held, replicas_held) =
            self.process.as_ref().map_or((0, 0), |p| p.store.sizes());
        ReplStats {
            promoted: n(&c.promoted),
            no_replica: n(&c.no_replica),
            unknown: n(&c.unknown),
            unknown_with_replica: n(&c.unknown_with_replica),
            pushes_ok: n(&c.pushes_ok),
            push_connect: n(&c.push_connect),
            push_timeout: n(&c.push_timeout),
            push_status: n(&c.push_status),
            push_io: n(&c.push_io),
            bad_backup_header: n(&c.bad_backup_header),
            replicas_received: n(&c.replicas_received),
            push_latency: lock(&c.push_latency).clone(),
            sessions_held,
            replicas_held,
        }
    }

    /// Zeroes the replication and session counters (at the start of measurement).
    pub fn reset_stats(&self) {
        let c = &self.inner.counters;
        for a in [
            &c.promoted,
            &c.no_replica,
            &c.unknown,
            &c.unknown_with_replica,
            &c.pushes_ok,
            &c.push_connect,
            &c.push_timeout,
            &c.push_status,
            &c.push_io,
            &c.bad_backup_header,
            &c.replicas_received,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        lock(&c.push_latency).reset();
    }

    /// Closes the listener and every open connection: connects are refused from now on, and
    /// the process's sessions and replicas are gone.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        self.process = None;
    }

    /// Listens again on the same address: a new process (empty, new incarnation), counters
    /// kept.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill().await;
        let listener = TcpListener::bind(self.addr).await?;
        let process = Process::new();
        self.task = Some(tokio::spawn(serve(
            listener,
            self.inner.clone(),
            process.clone(),
        )));
        self.process = Some(process);
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The accept loop. Connection tasks live in a set owned by this task, so aborting it closes
/// them all.
async fn serve(listener: TcpListener, inner: Arc<Inner>, process: Arc<Process>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors, or a connection reset before accept: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        let process = process.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let inner = inner.clone();
                let process = process.clone();
                async move { Ok::<_, Infallible>(answer(&inner, &process, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn plain(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

async fn answer(inner: &Inner, process: &Process, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == HEALTH_PATH {
        inner.checks.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(Full::new(inner.body.clone()));
        let h = r.headers_mut();
        h.insert(inner.header.clone(), inner.id_value.clone());
        h.insert(INCARNATION_HEADER, process.incarnation.clone());
        return r;
    }
    if let Some(sid) = path.strip_prefix(REPLICA_PREFIX) {
        let sid = parse_sid(sid.as_bytes());
        return replica(inner, process, sid, req).await;
    }
    inner.served.fetch_add(1, Ordering::Relaxed);
    let c = &inner.counters;
    let common = &inner.common;
    let headers = req.headers();
    let sid = sid_from_cookies(headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes));
    let takeover = if common.replicate {
        headers
            .get(TAKEOVER_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
    } else {
        None
    };
    let adv = process
        .store
        .advance(sid, takeover.is_some(), fastrand::u64(..));
    if adv.unknown {
        c.unknown.fetch_add(1, Ordering::Relaxed);
    }
    if adv.unknown_with_replica {
        c.unknown_with_replica.fetch_add(1, Ordering::Relaxed);
    }
    if common.replicate {
        if let Some(v) = headers.get(BACKUP_HEADER) {
            match parse_backups(v.as_bytes()) {
                Ok(backups) => {
                    let body = Bytes::from(adv.state.encode());
                    let targets: Vec<SocketAddr> = backups
                        .iter()
                        .filter(|b| b.id != inner.id)
                        .map(|b| b.addr)
                        .collect();
                    push_all(inner, process, &targets, adv.sid, &body).await;
                }
                Err(_) => {
                    c.bad_backup_header.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    if let Some(t) = adv.takeover {
        let at_us = common.epoch.elapsed().as_micros() as u64;
        // The note on the protocol has the takeover header name the old home; stickyd may
        // name the serving backend instead. The replica's pusher is the old home either way.
        let named = takeover
            .as_deref()
            .filter(|v| *v != inner.id && !v.is_empty());
        let (seen, old_home) = match &t {
            Takeover::Promoted { from } => {
                c.promoted.fetch_add(1, Ordering::Relaxed);
                (Seen::Promoted, from.as_deref().or(named))
            }
            Takeover::NoReplica => {
                c.no_replica.fetch_add(1, Ordering::Relaxed);
                (Seen::Lost, named)
            }
        };
        common.recovery.seen(old_home, at_us, seen);
    }
    let mut r = Response::new(Full::new(inner.body.clone()));
    let h = r.headers_mut();
    h.insert(inner.header.clone(), inner.id_value.clone());
    h.insert(COUNT_HEADER, HeaderValue::from(adv.state.count));
    if adv.new_cookie {
        let cookie = format!(
            "{SID_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
            format_sid(adv.sid)
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.insert(SET_COOKIE, v);
        }
    }
    r
}

/// `PUT /_stickyd/replica/{sid}` stores a replica (204); `DELETE` forgets it (204).
async fn replica(
    inner: &Inner,
    process: &Process,
    sid: Option<Sid>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(sid) = sid else {
        return plain(StatusCode::NOT_FOUND);
    };
    match *req.method() {
        Method::PUT => {
            let from = req
                .headers()
                .get(REPLICA_FROM_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= MAX_ID)
                .map(Arc::<str>::from);
            let body = match Limited::new(req.into_body(), MAX_REPLICA_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE),
            };
            let Some(state) = crate::sessions::SessionState::decode(&body) else {
                return plain(StatusCode::BAD_REQUEST);
            };
            process.store.put_replica(sid, state, from);
            inner
                .counters
                .replicas_received
                .fetch_add(1, Ordering::Relaxed);
            plain(StatusCode::NO_CONTENT)
        }
        Method::DELETE => {
            process.store.delete_replica(sid);
            plain(StatusCode::NO_CONTENT)
        }
        _ => plain(StatusCode::METHOD_NOT_ALLOWED),
    }
}

/// Pushes `body` as the replica of `sid` to every address in `targets` at once, and waits
/// for all of them; each push is counted and timed.
async fn push_all(
    inner: &Inner,
    process: &Process,
    targets: &[SocketAddr],
    sid: Sid,
    body: &Bytes,
) {
    let one = |addr: SocketAddr| async move {
        let start = Instant::now();
        let r = tokio::time::timeout(
            PUSH_TIMEOUT,
            process.peers.push(&inner.id_value, addr, sid, body.clone()),
        )
        .await
        .unwrap_or(Err(PushFail::Timeout));
        (r, start.elapsed())
    };
    let mut results = Vec::with_capacity(targets.len());
    match targets {
        [] => {}
        [a] => results.push(one(*a).await),
        [a, b] => {
            let (x, y) = tokio::join!(one(*a), one(*b));
            results.extend([x, y]);
        }
        more => {
            for a in more {
                results.push(one(*a).await);
            }
        }
    }
    let c = &inner.counters;
    for (r, took) in results {
        let counter = match r {
            Ok(()) => {
                lock(&c.push_latency).saturating_record((took.as_micros() as u64).max(1));
                &c.pushes_ok
            }
            Err(PushFail::Connect) => &c.push_connect,
            Err(PushFail::Timeout) => &c.push_timeout,
            Err(PushFail::Status) => &c.push_status,
            Err(PushFail::Io) => &c.push_io,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keep-alive HTTP/1.1 connections to other backends, for replica pushes: idle ones by
/// address, one request at a time each.
#[derive(Default)]
struct Peers {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Full<Bytes>>>>>,
}

/// Most idle push connections kept per peer.
const MAX_IDLE_PEER_CONNS: usize = 64;

impl Peers {
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&addr)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, addr: SocketAddr, s: SendRequest<Full<Bytes>>) {
        if s.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PEER_CONNS {
            list.push(s);
        }
    }

    async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, PushFail> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| PushFail::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| PushFail::Connect)?;
        // Ends when the connection closes or its sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// `PUT /_stickyd/replica/{sid}` to `addr`. A reused connection that turns out closed is
    /// replaced by a new one once (a PUT of the whole state may be repeated).
    async fn push(
        &self,
        from: &HeaderValue,
        addr: SocketAddr,
        sid: Sid,
        body: Bytes,
    ) -> Result<(), PushFail> {
        let pooled = self.take(addr);
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            None => Self::connect(addr).await?,
        };
        let mut r = Self::send(&mut sender, from, addr, sid, body.clone()).await;
        if reused && r == Err(PushFail::Io) {
            sender = Self::connect(addr).await?;
            r = Self::send(&mut sender, from, addr, sid, body).await;
        }
        if r.is_ok() {
            self.give_back(addr, sender);
        }
        r
    }

    async fn send(
        sender: &mut SendRequest<Full<Bytes>>,
        from: &HeaderValue,
        addr: SocketAddr,
        sid: Sid,
        body: Bytes,
    ) -> Result<(), PushFail> {
        sender.ready().await.map_err(|_| PushFail::Io)?;
        let len = body.len();
        let req = Request::put(format!("{REPLICA_PREFIX}{}", format_sid(sid)))
            .header(HOST, addr.to_string())
            .header(REPLICA_FROM_HEADER, from.clone())
            .header(CONTENT_LENGTH, len)
            .body(Full::new(body))
            .map_err(|_| PushFail::Io)?;
        let resp = sender.send_request(req).await.map_err(|_| PushFail::Io)?;
        let ok = resp.status().is_success();
        // Read the (empty) body to its end so the connection can be reused.
        resp.into_body().collect().await.map_err(|_| PushFail::Io)?;
        if ok { Ok(()) } else { Err(PushFail::Status) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Target, exchange, ready_conn};
    use crate::users::{SessionCheck, StateSeen, User};
    use http::uri::PathAndQuery;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn any() -> SocketAddr {
        ([127, 0, 0, 1], 0).into()
    }

    /// A raw request to `addr` with `headers` (name, value); the response head and body.
    async fn raw(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> (u16, HashMap<String, String>, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        let text = String::from_utf8(got).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        let mut lines = head.lines();
        let status = lines.next().expect("status line")[9..12]
            .parse()
            .expect("code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    /// Backend `a` serves a session and pushes it to `b`; `a` is killed; `b` takes over with
    /// the replica (the counter goes on), then a session whose replica never reached `b` is
    /// lost. The user's check sees the first as kept and the second as lost.
    #[test]
    fn a_backend_pair_replicates_and_promotes_on_takeover() {
        block_on(async {
            let recovery = Arc::new(Recovery::default());
            let common = Common::new(true, Instant::now(), recovery.clone());
            let mut a = Backend::start("a", any(), common.clone()).await.expect("a");
            let b = Backend::start("b", any(), common.clone()).await.expect("b");
            let backup = format!("b={}", b.addr);

            // Three requests of one user to `a` (home), each naming `b` as backup; the client
            // is the harness's own, so the cookie jar and the counter header are exercised.
            let mk_target = |addr: SocketAddr, extra: &str| {
                Target::with_extra_headers(
                    addr,
                    "x",
                    &PathAndQuery::from_static("/"),
                    Method::GET,
                    HeaderName::from_static("x-backend"),
                    extra,
                )
                .expect("target")
            };
            let to_a = mk_target(
                a.addr,
                &format!("x-stickyd-backend: a\r\nx-stickyd-backup: {backup}\r\n"),
            );
            let mut user = User::new(10, false);
            let mut check = SessionCheck::default();
            let mut slot = None;
            for want in 1..=3 {
                let conn = ready_conn(&mut slot, a.addr).await.expect("connect a");
                let ans = exchange(conn, &to_a, &mut user).await.expect("answer");
                assert_eq!(ans.backend.expect("backend"), "a");
                assert_eq!(ans.session_count, Some(want));
                assert!(!matches!(
                    check.observe(ans.session_count),
                    StateSeen::Lost { .. }
                ));
            }
            let cookie = user
                .jar
                .header()
                .expect("sid set")
                .to_str()
                .expect("ascii")
                .to_string();
            let sid = sid_from_cookies([cookie.as_bytes()]).expect("sid cookie");
            // The push completed before `a` answered: `b` holds the third state already.
            let b_process = b.process.clone().expect("b runs");
            let held = b_process.store.replica(sid).expect("replica on b");
            assert_eq!((held.state.count, held.from.as_deref()), (3, Some("a")));
            let sa = a.repl_stats();
            assert_eq!((sa.pushes_ok, sa.pushes_failed()), (3, 0));
            assert_eq!(sa.push_latency.len(), 3);
            assert_eq!(b.repl_stats().replicas_received, 3);

            recovery.kill("a", common.epoch.elapsed().as_micros() as u64);
            a.kill().await;
            assert_eq!(
                a.repl_stats().sessions_held,
                0,
                "a killed process holds nothing"
            );

            // Takeover on `b`: the replica is promoted, the counter goes on at 4. The header
            // names the serving backend (as stickyd writes it); the kill is found through
            // the replica's pusher.
            let to_b = mk_target(b.addr, "x-stickyd-backend: b\r\nx-stickyd-takeover: b\r\n");
            slot = None;
            let conn = ready_conn(&mut slot, b.addr).await.expect("connect b");
            let ans = exchange(conn, &to_b, &mut user).await.expect("answer");
            assert_eq!(ans.backend.expect("backend"), "b");
            assert_eq!(ans.session_count, Some(4));
            assert_eq!(
                check.observe(ans.session_count),
                StateSeen::Kept { first_check: false }
            );
            let sb = b.repl_stats();
            assert_eq!((sb.promoted, sb.no_replica, sb.unknown), (1, 0, 0));
            assert_eq!(b_process.store.replica(sid), None, "promoted, not copied");
            let rows = recovery.rows(0);
            assert_eq!(rows.len(), 1);
            assert!(rows[0].first_takeover_ms.is_some());
            assert_eq!(rows[0].promoted_takeovers, 1);

            // Another user's session never replicated anywhere: its takeover finds nothing.
            let (status, h, _) = raw(
                b.addr,
                "GET",
                "/",
                &[
                    ("cookie", "sid=00000000000000aa".into()),
                    ("x-stickyd-takeover", "a".into()),
                ],
                "",
            )
            .await;
            assert_eq!(
                (status, h.get(COUNT_HEADER).map(String::as_str)),
                (200, Some("1"))
            );
            assert_eq!(b.repl_stats().no_replica, 1);
            assert_eq!(recovery.rows(0)[0].lost_takeovers, 1);
            // The same when the header names the serving backend: the latest kill is a's.
            let (_, h, _) = raw(
                b.addr,
                "GET",
                "/",
                &[
                    ("cookie", "sid=00000000000000bb".into()),
                    ("x-stickyd-takeover", "b".into()),
                ],
                "",
            )
            .await;
            assert_eq!(h.get(COUNT_HEADER).map(String::as_str), Some("1"));
            assert_eq!(b.repl_stats().no_replica, 2);
            assert_eq!(recovery.rows(0)[0].lost_takeovers, 2);
            let mut lost = SessionCheck::default();
            lost.observe(Some(5));
            assert_eq!(
                lost.observe(Some(1)),
                StateSeen::Lost {
                    first_check: true,
                    first_loss: true
                }
            );

            // A push to the dead backend fails and is counted; the request is still answered.
            let (status, h, _) = raw(
                b.addr,
                "GET",
                "/",
                &[
                    ("cookie", cookie.clone()),
                    ("x-stickyd-backup", format!("a={}", a.addr)),
                ],
                "",
            )
            .await;
            assert_eq!(
                (status, h.get(COUNT_HEADER).map(String::as_str)),
                (200, Some("5"))
            );
            assert_eq!(b.repl_stats().push_connect, 1);
        });
    }

    #[test]
    fn health_checks_carry_an_incarnation_that_a_restart_changes() {
        block_on(async {
            let common = Common::new(false, Instant::now(), Arc::default());
            let mut a = Backend::start("a", any(), common).await.expect("a");
            let (status, h, _) = raw(a.addr, "GET", HEALTH_PATH, &[], "").await;
            assert_eq!(status, 200);
            let first = h.get(INCARNATION_HEADER).cloned().expect("incarnation");
            assert_eq!(Some(first.clone()), a.incarnation());
            assert_eq!(a.checks(), 1);
            // A session, then a restart: the session is gone and the incarnation changed.
            let (_, h, _) = raw(a.addr, "GET", "/", &[], "").await;
            let set = h.get("set-cookie").expect("new session gets a sid");
            let sid = set.split(';').next().expect("pair").to_string();
            let (_, h, _) = raw(a.addr, "GET", "/", &[("cookie", sid.clone())], "").await;
            assert_eq!(h.get(COUNT_HEADER).map(String::as_str), Some("2"));
            a.restart().await.expect("restart");
            let (_, h, _) = raw(a.addr, "GET", HEALTH_PATH, &[], "").await;
            let second = h.get(INCARNATION_HEADER).cloned().expect("incarnation");
            assert_ne!(first, second);
            let (_, h, _) = raw(a.addr, "GET", "/", &[("cookie", sid)], "").await;
            assert_eq!(
                h.get(COUNT_HEADER).map(String::as_str),
                Some("1"),
                "state lost"
            );
            assert!(!h.contains_key("set-cookie"), "the user's sid is kept");
            assert_eq!(a.repl_stats().unknown, 1);
            assert_eq!(a.served(), 3);
        });
    }

    #[test]
    fn without_replication_the_protocol_headers_are_ignored_and_replicas_are_checked() {
        block_on(async {
            let common = Common::new(false, Instant::now(), Arc::default());
            let a = Backend::start("a", any(), common.clone()).await.expect("a");
            let b = Backend::start("b", any(), common).await.expect("b");
            let (_, h, _) = raw(
                a.addr,
                "GET",
                "/",
                &[("x-stickyd-backup", format!("b={}", b.addr))],
                "",
            )
            .await;
            assert_eq!(h.get(COUNT_HEADER).map(String::as_str), Some("1"));
            assert_eq!(a.repl_stats().pushes_ok, 0);
            assert_eq!(b.repl_stats().replicas_received, 0);
            let (s, _, _) = raw(
                a.addr,
                "PUT",
                "/_stickyd/replica/00000000000000aa",
                &[],
                "7",
            )
            .await;
            assert_eq!(s, 204);
            let (s, _, _) = raw(
                a.addr,
                "PUT",
                "/_stickyd/replica/00000000000000aa",
                &[],
                "x",
            )
            .await;
            assert_eq!(s, 400);
            let (s, _, _) = raw(a.addr, "PUT", "/_stickyd/replica/nope", &[], "7").await;
            assert_eq!(s, 404);
            let (s, _, _) = raw(
                a.addr,
                "PUT",
                "/_stickyd/replica/00000000000000aa",
                &[],
                &"1".repeat(MAX_REPLICA_BODY + 1),
            )
            .await;
            assert_eq!(s, 413);
            let (s, _, _) = raw(a.addr, "GET", "/_stickyd/replica/00000000000000aa", &[], "").await;
            assert_eq!(s, 405);
            let (s, _, _) = raw(
                a.addr,
                "DELETE",
                "/_stickyd/replica/00000000000000aa",
                &[],
                "",
            )
            .await;
            assert_eq!(s, 204);
            assert_eq!(a.repl_stats().replicas_received, 1);
            assert_eq!(a.served(), 1, "replica traffic is not served load");
        });
    }
}
