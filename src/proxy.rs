//! The request path, read top-down as its steps:
//!
//! 1. `request`: refuse what cannot be forwarded (framing, Host: 400/501), and plan what the
//!    later steps need (upgrade, close after, idempotent); then the pool is picked by host and
//!    path ([`pick_pool`]: 404 without one, 421 for a host the TLS connection's certificate
//!    does not cover), the affinity input is taken out of the request ([`affinity::extract`])
//!    and the head rewritten for the backend.
//! 2. `attempt`: route and send, retrying on another backend when that is safe.
//! 3. `Proxy::record`: the backend answered; count it (backend, affinity outcome, re-pin),
//!    note the session, tell the access log.
//! 4. `response`: shape the response (hop-by-hop out, the token in), or hand an upgraded
//!    connection to a [`tunnel`](crate::tunnel).
//!
//! It never fails toward the client: every error becomes a response in one place
//! ([`error_response`]) from the mapping in [`crate::error`].

mod attempt;
mod bare;
mod bridge;
mod engine;
mod request;
mod response;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::access::Pending;
use crate::affinity;
use crate::body::Replay;
use crate::clock::Now;
use crate::error::ProxyError;
use crate::state::{Shared, Snapshot};
use crate::upstream::Upstream;

use attempt::Answer;
pub(crate) use engine::{ClientIo, Ended};
pub use response::{ProxyBody, error_response};

/// What the proxy knows of the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The peer's address as a header value (for X-Forwarded-For), made once per connection.
    pub peer_value: HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// What a tunnel made from this connection must keep alive.
    pub hold: Option<crate::tunnel::Hold>,
    /// On TLS connections, the names of the certificate the connection was served with: a
    /// request for a host it does not cover gets 421.
    pub cert: Option<crate::tls::Covered>,
}

impl ConnInfo {
    /// What a connection from `peer` carries into each of its requests.
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let ip = peer.ip().to_canonical();
        ConnInfo {
            peer: SocketAddr::new(ip, peer.port()),
            peer_value: crate::headers::ip_value(ip),
            tls,
            hold: None,
            cert: None,
        }
    }
}

/// The request handler of one worker thread (its upstream pool is the thread's own).
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    upstream: Upstream,
    /// The HTTP/1 engine's idle backend connections (also HTTP/2 requests': `bridge`).
    pool: std::rc::Rc<crate::upstream::raw::Pool>,
    /// Turns true when shutdown's grace period is over: tunnels close.
    cut: tokio::sync::watch::Receiver<bool>,
}

impl Proxy {
    /// A proxy over `shared` state, forwarding through `upstream`; tunnels close when `cut`
    /// turns true.
    pub fn new(
        shared: Arc<Shared>,
        upstream: Upstream,
        cut: tokio::sync::watch::Receiver<bool>,
    ) -> Proxy {
        let snap = shared.load();
        let cfg = &snap.config.upstream;
        let pool = std::rc::Rc::new(crate::upstream::raw::Pool::new(
            cfg.pool_max_idle,
            cfg.pool_idle_timeout,
        ));
        drop(snap);
        Proxy {
            shared,
            upstream,
            pool,
            cut,
        }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves one request. Never fails: errors become responses. The clocks are read here,
    /// once, and the snapshot loaded once: every step of the request sees the same.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let now = Now::read();
        let snap = self.shared.load();
        let mut log = self
            .shared
            .access
            .as_ref()
            .map(|l| Pending::new(l, &req, conn.peer.ip(), now.mono, now.wall));
        let mut pool = None;
        let resp = match self
            .forward(&snap, req, conn, &now, &mut log, &mut pool)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                let ix = pool.unwrap_or(0);
                let resp = error_response(&e, snap.pool_config(ix).balance.retry_after);
                if let Some(p) = log {
                    p.finish(resp.status().as_u16(), e.body().len() as u64);
                }
                resp
            }
        };
        let m = &self.shared.metrics;
        m.response(resp.status().as_u16());
        m.latency.record(now.mono.elapsed());
        Ok(resp)
    }

    /// The steps, in order (see the module documentation). `picked` is set to the pool once
    /// it is known.
    async fn forward(
        &self,
        snap: &Snapshot,
        req: Request<Incoming>,
        conn: &ConnInfo,
        now: &Now,
        log: &mut Option<Pending>,
        picked: &mut Option<usize>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let mut plan = request::check(&mut parts)?;
        let host = match parts.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
        };
        let ix = pick_pool(snap, host, parts.uri.path().as_bytes(), conn)?;
        *picked = Some(ix);
        let pool = &snap.pools[ix];
        if let Some(p) = log.as_mut() {
            p.pool(pool.name.clone());
        }
        if plan.upgrade.is_none()
            && !plan.close_after
            && hyper::body::Body::is_end_stream(&body)
            && !pool.has_h2
        {
            let input = affinity::peek(
                &pool.source,
                &pool.rings,
                &parts.headers,
                conn.peer.ip(),
                |ip| snap.is_trusted(ip),
            );
            // No body to stream: the HTTP/1 engine's backend connections, the head written
            // straight from the request as `request::rewrite` would rewrite it (see `bridge`).
            drop(body);
            let bridge::Answer { route, got, guard } = self
                .attempts_bare(snap, ix, &mut parts, conn, input, plan.idempotent, now)
                .await?;
            let backend = &snap.backends[route.backend];
            let ready = match got.prepare() {
                Ok(r) => r,
                Err(e) => {
                    // The backend's answer cannot be carried: its failure, not a response.
                    drop(guard);
                    self.attempt_failed(snap, backend, &e);
                    return Err(e);
                }
            };
            self.record(snap, ix, &route, ready.status(), now, log);
            let resp = ready.into_response(self, route.backend, backend, guard, log, now);
            return Ok(response::with_token(
                pool,
                resp,
                route.issue,
                now.unix_u32(),
                conn.tls,
            ));
        }
        let input = affinity::extract(
            &pool.source,
            &pool.rings,
            &mut parts.headers,
            conn.peer.ip(),
            |ip| snap.is_trusted(ip),
        );
        if !pool.other_cookies.is_empty() {
            crate::headers::drop_cookies(&mut parts.headers, &pool.other_cookies);
        }
        request::rewrite(snap, &mut parts, conn, &plan);
        let body = Replay::new(body, snap.config.server.client_timeout);

        let Answer {
            route,
            mut resp,
            mut lease,
            guard,
        } = self
            .attempts(snap, ix, parts, &body, input, &plan, now)
            .await?;
        if plan.close_after {
            lease = lease.no_reuse();
        }
        self.record(snap, ix, &route, resp.status().as_u16(), now, log);

        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
            && let Some((_, client)) = plan.upgrade.take()
        {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::task::spawn_local(crate::tunnel::serve(
                client,
                upstream,
                snap.config.upstream.tunnel_idle_timeout,
                self.cut.clone(),
                guard,
                conn.hold.clone(),
            ));
            drop(lease);
            if let Some(p) = log.take() {
                p.finish(101, 0);
            }
            return Ok(response::switching(
                pool,
                resp,
                route.issue,
                now.unix_u32(),
                conn.tls,
            ));
        }
        let resp = resp.map(|b| response::tracked(b, lease, guard, log.take()));
        let mut resp = response::respond(pool, resp, route.issue, now.unix_u32(), conn.tls);
        if plan.close_after && plan.client_h1 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(resp)
    }

    /// The backend answered `status`: counted for the backend and the affinity metrics, the
    /// session noted in the backend's estimate (and as a pin when the response pins it there),
    /// and the access log told where the request went.
    fn record(
        &self,
        snap: &Snapshot,
        pool: usize,
        route: &affinity::Route,
        status: u16,
        now: &Now,
        log: &mut Option<Pending>,
    ) {
        let backend = &snap.backends[route.backend];
        backend.live.health.connect_ok();
        backend.live.counters.record_status(status);
        let live = &snap.pools[pool].live;
        live.outcome(route.outcome);
        let repinned = route.repinned();
        if repinned {
            live.repin();
        }
        if let Some(why) = route.takeover {
            live.takeover(why);
        }
        if let Some(p) = log.as_mut() {
            p.routed(backend.id.clone(), route.outcome, repinned, status);
        }
        if let Some(nonce) = route.session {
            backend
                .live
                .record_session(nonce, now.unix_secs(), route.pins);
        }
    }
}

/// The pool a request goes to, by its `host` (the Host header's value, or the authority of an
/// absolute-form or HTTP/2 target) and `path`: the route table's pick, 404 when there is none.
/// With routes, a request on a TLS connection whose certificate does not cover its host gets
/// 421: the host chooses the pool, and no site's pool may be reached through another site's
/// certificate. Without routes every request goes to the one pool whatever its host, as before
/// pools existed (clients and health checkers that name an address keep working).
fn pick_pool(
    snap: &Snapshot,
    host: Option<&[u8]>,
    path: &[u8],
    conn: &ConnInfo,
) -> Result<usize, ProxyError> {
    let routes = &snap.config.routes;
    if let Some(cert) = &conn.cert
        && !routes.routes().is_empty()
        && !cert.covers(host)
    {
        return Err(ProxyError::Misdirected);
    }
    routes.pick(host, path).ok_or(ProxyError::NoRoute)
}

/// A fresh session nonce: a per-thread wyrand stream seeded from std's OS-seeded `RandomState`.
/// Nonces need to be unique and well spread (they key the fallback hash), not secret: the MAC
/// protects them.
fn nonce() -> u64 {
    use std::hash::BuildHasher;
    thread_local! {
        // Not fastrand's own thread-local generator, which is seeded from the clock and the
        // thread id through a fixed-key hash: RandomState brings the OS's randomness.
        static RNG: std::cell::RefCell<fastrand::Rng> = std::cell::RefCell::new(
            fastrand::Rng::with_seed(std::collections::hash_map::RandomState::new().hash_one(0u8)),
        );
    }
    RNG.with_borrow_mut(|r| r.u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_written_plainly_and_mapped_v4_is_v4() {
        let c = ConnInfo::new("[::1]:4000".parse().unwrap(), false);
        assert_eq!(c.peer_value, "::1");
        let c = ConnInfo::new("[::ffff:192.0.2.9]:4000".parse().unwrap(), false);
        assert_eq!(c.peer_value, "192.0.2.9");
        assert_eq!(c.peer, "192.0.2.9:4000".parse().unwrap());
        let c = ConnInfo::new("10.1.2.3:5".parse().unwrap(), true);
        assert_eq!(c.peer_value, "10.1.2.3");
    }

    #[test]
    fn nonces_differ() {
        let a: Vec<u64> = (0..1000).map(|_| nonce()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }
}
