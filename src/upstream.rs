//! The connection pool to backends, behind one small interface: [`Upstream::send`] takes a
//! backend's address and a request in origin form and returns the response head and a
//! [`Lease`] on the connection, or a classified [`ProxyError`].
//!
//! One pool per worker thread (thread-per-core, DESIGN section 6): HTTP/1.1 keep-alive
//! connections made with hyper's `client::conn::http1`, their connection tasks spawned on the
//! thread's `LocalSet`, idle senders kept per backend in a plain `RefCell`. No lock and no atomic
//! on the way; that was the measured hot spot of hyper-util's shared legacy client.
//!
//! A connection goes back to the pool only when its response body has been read to the end
//! ([`Lease::release`], called by the response body). The most recently used idle connection is
//! taken first (warm, and it lets the others age out). A connection found closed when taken is
//! dropped and the next one tried; a request that a reused connection could not even start to
//! send (hyper hands it back) is sent on another connection, as nothing reached the backend.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;

use crate::body::UpBody;
use crate::config;
use crate::connect::{self, Probe};
use crate::error::ProxyError;
use crate::rt::LocalExec;

pub(crate) mod raw;

/// How often idle connections are swept for age and closure.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The per-thread pool of connections to every backend. Cheap to clone (an `Rc`).
#[derive(Clone)]
pub struct Upstream {
    inner: Rc<Pool>,
}

struct Pool {
    /// Idle connections by backend address: plain ones at index 0, TLS ones at 1.
    idle: RefCell<[HashMap<Box<str>, Vec<Idle>>; 2]>,
    /// The HTTP/2 connection of each HTTP/2 backend, plain at 0, TLS at 1. The slot's lock is
    /// held while connecting, so concurrent first requests share one connection.
    h2: RefCell<[HashMap<Box<str>, H2Slot>; 2]>,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    builder: http1::Builder,
    last_sweep: Cell<Instant>,
}

type H2Slot = Rc<tokio::sync::Mutex<Option<http2::SendRequest<UpBody>>>>;

struct Idle {
    sender: http1::SendRequest<UpBody>,
    /// The socket, to check for a close the connection task has not seen yet.
    probe: Probe,
    since: Instant,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Upstream {
    /// A pool configured from `[upstream]`. `pool_max_idle` applies per backend and per worker.
    pub fn new(cfg: &config::Upstream) -> Upstream {
        let mut builder = http1::Builder::new();
        // Small heads: one flattened write beats a writev of head and body.
        builder.writev(false);
        Upstream {
            inner: Rc::new(Pool {
                idle: RefCell::new([HashMap::new(), HashMap::new()]),
                h2: RefCell::new([HashMap::new(), HashMap::new()]),
                connect_timeout: cfg.connect_timeout,
                response_timeout: cfg.response_timeout,
                idle_timeout: cfg.pool_idle_timeout,
                max_idle: cfg.pool_max_idle,
                builder,
                last_sweep: Cell::new(Instant::now()),
            }),
        }
    }

    /// Idle connections kept now, over all backends.
    pub fn idle_count(&self) -> usize {
        self.inner
            .idle
            .borrow()
            .iter()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum()
    }

    /// Sends `req` (origin form; Host set by the caller) to `backend` and waits, at most the
    /// response timeout, for the response head.
    ///
    /// `careful` is for requests that must not be retried (non-idempotent): an idle connection
    /// is first checked for a close by the backend that its connection task has not seen yet
    /// (a backend's keep-alive timeout racing the reuse). A request written onto such a
    /// connection would be lost with nothing to tell whether the backend read it; the check is a
    /// non-blocking `peek`, one syscall, spared to requests that can be retried anyway.
    pub async fn send(
        &self,
        backend: Target<'_>,
        mut req: Request<UpBody>,
        careful: bool,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let pool = &self.inner;
        if backend.h2 {
            return pool.send_h2(backend, req).await.map(|r| (r, Lease(None)));
        }
        // Idle connections first; each may turn out closed, or hand the request back unsent.
        while let Some((mut sender, probe)) = pool.checkout(backend) {
            if careful && !connect::idle_and_open(&probe) {
                continue;
            }
            // Ready at once unless its connection task has yet to see the last response
            // finished; bounded in case it is still sending an old request body.
            match tokio::time::timeout(pool.connect_timeout, sender.ready()).await {
                Ok(Ok(())) => {}
                _ => continue,
            }
            match pool.exchange(&mut sender, req).await {
                Ok(resp) => return Ok((resp, self.lease(backend, sender, probe))),
                Err(Failed::Unsent(r)) => req = *r,
                Err(Failed::Error(e)) => return Err(e),
            }
        }
        let (mut sender, probe) = pool.connect(backend, false).await?;
        match pool.exchange(&mut sender, req).await {
            Ok(resp) => Ok((resp, self.lease(backend, sender, probe))),
            // A new connection that cannot take a request died at once: nothing was sent.
            Err(Failed::Unsent(_)) => Err(ProxyError::Connect(
                "connection closed before the request was sent".into(),
            )),
            Err(Failed::Error(e)) => Err(e),
        }
    }

    /// Sends an upgrade request (WebSocket and the like) on a new connection of its own, able
    /// to switch protocols: after a `101` the connection is the tunnel's; after any other answer
    /// it can go back to the pool like any other.
    pub async fn send_upgrade(
        &self,
        backend: Target<'_>,
        req: Request<UpBody>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let pool = &self.inner;
        let (mut sender, probe) = pool.connect(backend, true).await?;
        match pool.exchange(&mut sender, req).await {
            Ok(resp) => Ok((resp, self.lease(backend, sender, probe))),
            Err(Failed::Unsent(_)) => Err(ProxyError::Connect(
                "connection closed before the request was sent".into(),
            )),
            Err(Failed::Error(e)) => Err(e),
        }
    }

    fn lease(
        &self,
        backend: Target<'_>,
        sender: http1::SendRequest<UpBody>,
        probe: Probe,
    ) -> Lease {
        Lease(Some(H1Lease {
            pool: self.inner.clone(),
            backend: backend.authority.clone(),
            tls: backend.origin.is_some(),
            sender,
            probe,
        }))
    }
}

/// A backend as the pool reaches it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `host:port`.
    pub authority: &'a Authority,
    /// TLS, when the backend speaks it.
    pub origin: Option<&'a crate::tls::Origin>,
    /// HTTP/2 (one multiplexed connection per worker) rather than HTTP/1.1.
    pub h2: bool,
}

enum Failed {
    /// The connection could not take the request; here it is back, untouched.
    Unsent(Box<Request<UpBody>>),
    Error(ProxyError),
}

impl Pool {
    fn checkout(&self, t: Target<'_>) -> Option<(http1::SendRequest<UpBody>, Probe)> {
        let mut idle = self.idle.borrow_mut();
        let list = idle[usize::from(t.origin.is_some())].get_mut(t.authority.as_str())?;
        while let Some(c) = list.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some((c.sender, c.probe));
            }
        }
        None
    }

    fn checkin(
        &self,
        key: &Authority,
        tls: bool,
        sender: http1::SendRequest<UpBody>,
        probe: Probe,
    ) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        if now.duration_since(self.last_sweep.get()) >= SWEEP_EVERY {
            self.last_sweep.set(now);
            let timeout = self.idle_timeout;
            for m in idle.iter_mut() {
                m.retain(|_, list| {
                    list.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < timeout);
                    !list.is_empty()
                });
            }
        }
        let map = &mut idle[usize::from(tls)];
        let list = match map.get_mut(key.as_str()) {
            Some(l) => l,
            None => map.entry(key.as_str().into()).or_default(),
        };
        if list.len() >= self.max_idle {
            // Keep the warmest: the oldest goes.
            list.remove(0);
        }
        list.push(Idle {
            sender,
            probe,
            since: now,
        });
    }

    /// Sends on the backend's HTTP/2 connection, made (once per worker) when there is none
    /// or it closed. The request goes out in absolute form (`:scheme`, `:authority`).
    async fn send_h2(
        &self,
        t: Target<'_>,
        mut req: Request<UpBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let slot: H2Slot = {
            let mut h2 = self.h2.borrow_mut();
            let map = &mut h2[usize::from(t.origin.is_some())];
            match map.get(t.authority.as_str()) {
                Some(s) => s.clone(),
                None => map.entry(t.authority.as_str().into()).or_default().clone(),
            }
        };
        let mut current = slot.lock().await;
        let mut sender = match current.as_ref().filter(|s| !s.is_closed()) {
            Some(s) => s.clone(),
            None => {
                // One deadline for the connect, the TLS handshake and the HTTP/2 preface.
                let handshake = async {
                    let stream =
                        connect::open(t.authority.as_str(), t.origin, self.connect_timeout)
                            .await
                            .map_err(|e| ProxyError::Connect(e.to_string()))?;
                    let (sender, conn) = http2::Builder::new(LocalExec)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .keep_alive_interval(Some(Duration::from_secs(30)))
                        .handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| {
                            ProxyError::Connect(format!(
                                "h2 handshake with {}: {}",
                                t.authority,
                                chain(&e)
                            ))
                        })?;
                    tokio::task::spawn_local(async move {
                        let _ = conn.await;
                    });
                    Ok::<_, ProxyError>(sender)
                };
                let sender = tokio::time::timeout(self.connect_timeout, handshake)
                    .await
                    .map_err(|_| {
                        ProxyError::Connect(format!(
                            "connect to {} timed out after {:?}",
                            t.authority, self.connect_timeout
                        ))
                    })??;
                *current = Some(sender.clone());
                sender
            }
        };
        drop(current);
        let scheme = if t.origin.is_some() { "https" } else { "http" };
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = format!("{scheme}://{}{pq}", t.authority)
            .parse()
            .map_err(|_| ProxyError::BadRequest("request target not forwardable\n"))?;
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|e| ProxyError::Reset(chain(&e)))?;
            sender.send_request(req).await.map_err(|e| classify(&e))
        };
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => Err(ProxyError::Timeout),
            Ok(r) => r,
        }
    }

    async fn connect(
        &self,
        target: Target<'_>,
        upgrades: bool,
    ) -> Result<(http1::SendRequest<UpBody>, Probe), ProxyError> {
        let backend = target.authority;
        let stream = connect::open(backend.as_str(), target.origin, self.connect_timeout)
            .await
            .map_err(|e| ProxyError::Connect(e.to_string()))?;
        let probe = stream.probe();
        let (sender, conn) = self
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Connect(format!("handshake with {backend}: {}", chain(&e))))?;
        tokio::task::spawn_local(async move {
            // Errors here also reach the request that was in flight; nothing more to do.
            if upgrades {
                let _ = conn.with_upgrades().await;
            } else {
                let _ = conn.await;
            }
        });
        Ok((sender, probe))
    }

    async fn exchange(
        &self,
        sender: &mut http1::SendRequest<UpBody>,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, Failed> {
        match tokio::time::timeout(self.response_timeout, sender.try_send_request(req)).await {
            // Dropping the request future closes the connection (hyper's cancellation).
            Err(_) => Err(Failed::Error(ProxyError::Timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(mut e)) => match e.take_message() {
                Some(req) => Err(Failed::Unsent(Box::new(req))),
                None => Err(Failed::Error(classify(e.error()))),
            },
        }
    }
}

/// The HTTP/1.1 connection a response came on, until its body is done (nothing for HTTP/2,
/// whose connection is shared).
pub struct Lease(Option<H1Lease>);

struct H1Lease {
    pool: Rc<Pool>,
    backend: Authority,
    tls: bool,
    sender: http1::SendRequest<UpBody>,
    probe: Probe,
}

impl Lease {
    /// The connection serves nothing after this response: it closes once the body is done.
    pub fn no_reuse(self) -> Lease {
        Lease(None)
    }

    /// The response body was read to its end: the connection may serve another request.
    pub fn release(self) {
        if let Some(l) = self.0 {
            l.pool.checkin(&l.backend, l.tls, l.sender, l.probe);
        }
    }
}

/// Sorts a failed exchange into "connection lost before any response byte" (reset), "bad
/// response" (protocol) and timeout.
fn classify(e: &hyper::Error) -> ProxyError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return ProxyError::Protocol(chain(e));
    }
    if e.is_timeout() {
        return ProxyError::Timeout;
    }
    ProxyError::Reset(chain(e))
}

/// The error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
