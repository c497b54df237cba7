//! The request path: read the affinity token, route, rewrite headers, forward through the
//! upstream pool, stream the response back, set the cookie when one is issued.
//!
//! It never fails toward the client: every error becomes a response in one place
//! ([`error_response`]) from the mapping in [`crate::error`]. A request is retried on another
//! backend only when that is safe (see [`ProxyError::retryable`]) and its body has not been
//! read yet.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tracing::{debug, warn};

use crate::affinity::{self, NoRoute, TokenInput};
use crate::backend::InFlight;
pub use crate::body::ProxyBody;
use crate::body::{ClientFailure, Replay, Tracked};
use crate::config::Mode;
use crate::error::ProxyError;
use crate::headers::{self, Forwarded, Found, Framing};
use crate::health::Transition;
use crate::state::{Shared, Snapshot};
use crate::token::Invalid;
use crate::upstream::Upstream;

/// Whatever keeps a client connection counted (its connection-limit slot, the worker's
/// liveness): an upgraded connection's tunnel holds it until it closes.
#[derive(Clone)]
pub struct Hold(pub std::rc::Rc<dyn std::any::Any>);

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

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
    pub hold: Option<Hold>,
}

impl ConnInfo {
    /// What a connection from `peer` carries into each of its requests.
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let ip = peer.ip().to_canonical();
        ConnInfo {
            peer: SocketAddr::new(ip, peer.port()),
            peer_value: HeaderValue::from_str(&ip.to_string())
                .expect("an IP address is a valid header value"),
            tls,
            hold: None,
        }
    }
}

/// The request handler of one worker thread (its upstream pool is the thread's own).
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    upstream: Upstream,
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
        Proxy {
            shared,
            upstream,
            cut,
        }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves one request. Never fails: errors become responses.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let snap = self.shared.load();
        let mut log = self.shared.access.as_ref().map(|l| {
            crate::access::Pending::new(l, &req, conn.peer.ip(), start, SystemTime::now())
        });
        let resp = match self.forward(&snap, req, conn, &mut log).await {
            Ok(resp) => resp,
            Err(e) => {
                let resp = error_response(&e, &snap);
                if let Some(p) = log {
                    p.finish(resp.status().as_u16(), e.body().len() as u64);
                }
                resp
            }
        };
        let m = &self.shared.metrics;
        m.response(resp.status().as_u16());
        m.latency.record(start.elapsed());
        Ok(resp)
    }

    async fn forward(
        &self,
        snap: &Snapshot,
        req: Request<Incoming>,
        conn: &ConnInfo,
        log: &mut Option<crate::access::Pending>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        check_request(&parts)?;
        let close_after = match headers::framing(&parts.method, &parts.headers) {
            Framing::Clear => false,
            Framing::CloseAfter => true,
            Framing::Refuse(why) => return Err(ProxyError::BadRequest(why)),
            Framing::Unsupported(why) => return Err(ProxyError::NotImplemented(why)),
        };
        let client_h1 = parts.version <= Version::HTTP_11;
        // An upgrade (WebSocket) keeps its Connection/Upgrade pair, which the hop-by-hop strip
        // below removes, and the client side's upgrade handle.
        let upgrade = headers::upgrade_protocol(&parts.headers, parts.version)
            .and_then(|p| Some((p, parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?)));

        let (token, keyed) = affinity_input(snap, &mut parts, conn);
        prepare_upstream_head(snap, &mut parts, conn);
        if close_after {
            // The backend may not read the body as this request's: this connection serves
            // nothing after it.
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some((proto, _)) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto.clone());
        }
        let mut upgrade = upgrade.map(|(_, on)| on);

        let idempotent = is_idempotent(&parts.method);
        let body = Replay::new(body, snap.config.server.client_timeout.get());
        let now = unix_now();
        let mut excluded: Vec<usize> = Vec::new();
        let mut retries_left = *snap.config.upstream.retries.get_ref();
        // The failure of the previous attempt: when a retry finds no other backend, that is
        // the answer (a 502 says more than "no backend").
        let mut failed: Option<ProxyError> = None;
        loop {
            let routed = match keyed {
                Some(key) => affinity::route_hashed(&snap.policy, key, snap, &excluded),
                None => affinity::route(&snap.policy, token, now, snap, &excluded, nonce),
            };
            let route = match routed {
                Ok(mut r) => {
                    if snap.config.affinity.mode == Mode::None {
                        r.issue = None;
                    }
                    r
                }
                Err(_) if failed.is_some() => {
                    return Err(failed.take().unwrap_or(ProxyError::NoBackend));
                }
                Err(NoRoute::AllDown) => return Err(ProxyError::NoBackend),
                Err(NoRoute::PinnedDown) => return Err(ProxyError::PinnedDown),
            };
            let backend = &snap.backends[route.backend];
            let may_retry = retries_left > 0 && body.replayable();
            let head = if may_retry {
                clone_parts(&parts)
            } else {
                std::mem::replace(&mut parts, Request::new(()).into_parts().0)
            };
            let up = Request::from_parts(head, body.take());

            let guard = InFlight::start(&backend.live);
            let target = crate::upstream::Target {
                authority: &backend.authority,
                origin: backend.origin.as_ref(),
                // Upgrades (WebSocket) always go over HTTP/1.1.
                h2: backend.h2 && upgrade.is_none(),
            };
            let sent = if upgrade.is_some() {
                self.upstream.send_upgrade(target, up).await
            } else {
                self.upstream.send(target, up, !idempotent).await
            };
            match sent {
                Ok((mut resp, mut lease)) => {
                    if close_after {
                        lease = lease.no_reuse();
                    }
                    backend.live.connect_ok();
                    backend.live.record_status(resp.status().as_u16());
                    let repinned = self.count_route(&route, snap);
                    if let Some(p) = log.as_mut() {
                        p.routed(
                            backend.id.clone(),
                            route.outcome,
                            repinned,
                            resp.status().as_u16(),
                        );
                    }
                    let session = match (route.issue, token) {
                        (Some(c), _) => Some(c.nonce),
                        (None, TokenInput::Valid(v)) => Some(v.claims.nonce),
                        _ => None,
                    };
                    if let Some(nonce) = session {
                        // A refresh re-signs the same pin; anything else issued is a new pin.
                        let pinned_here = route.issue.is_some_and(|c| {
                            c.backend_tag == affinity::PoolView::tag(snap, route.backend)
                        }) && !matches!(
                            route.outcome,
                            affinity::Outcome::Refreshed
                                | affinity::Outcome::Valid
                                | affinity::Outcome::Draining
                        );
                        backend
                            .live
                            .record_session(nonce, u64::from(now), pinned_here);
                    }
                    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                        && let Some(client) = upgrade.take()
                    {
                        let upstream = hyper::upgrade::on(&mut resp);
                        tokio::task::spawn_local(crate::tunnel::serve(
                            client,
                            upstream,
                            snap.config.upstream.tunnel_idle_timeout.get(),
                            self.cut.clone(),
                            guard,
                            conn.hold.clone(),
                        ));
                        drop(lease);
                        if let Some(p) = log.take() {
                            p.finish(101, 0);
                        }
                        return Ok(switching(snap, resp, route.issue, now, conn.tls));
                    }
                    let resp = resp
                        .map(|b| ProxyBody::Upstream(Tracked::new(b, lease, guard, log.take())));
                    let mut resp = respond(snap, resp, route.issue, now, conn.tls);
                    if close_after && client_h1 {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    return Ok(resp);
                }
                Err(_) if body.client_failure().is_some() => {
                    // The client's own body was malformed (bad chunk, cut short) or stalled:
                    // its fault, not the backend's; nothing to retry.
                    drop(guard);
                    return Err(match body.client_failure() {
                        Some(ClientFailure::TimedOut) => ProxyError::ClientTimeout,
                        _ => ProxyError::BadRequest("invalid request body\n"),
                    });
                }
                Err(e) => {
                    drop(guard);
                    backend.live.record_failure();
                    self.shared.metrics.upstream_error(&e);
                    if let ProxyError::Connect(_) = e {
                        let threshold = snap.config.health.passive_failures;
                        if backend.live.connect_failed(threshold, Instant::now())
                            == Some(Transition::Down)
                        {
                            warn!(backend = %backend.id, error = %e, "backend ejected after consecutive connect failures");
                        }
                    }
                    debug!(backend = %backend.id, error = %e, "upstream attempt failed");
                    if may_retry && e.retryable(idempotent) && body.replayable() {
                        self.shared.metrics.retry();
                        excluded.push(route.backend);
                        retries_left -= 1;
                        failed = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Counts the outcome; true when the session was re-pinned to the fallback.
    fn count_route(&self, route: &affinity::Route, snap: &Snapshot) -> bool {
        let m = &self.shared.metrics;
        m.outcome(route.outcome);
        let repinned = route.fallback
            && route
                .issue
                .is_some_and(|c| c.backend_tag == affinity::PoolView::tag(snap, route.backend));
        if repinned {
            m.repin();
        }
        repinned
    }
}

/// The backend's response on its way to the client: hop-by-hop headers out, the cookie in when
/// one is issued.
fn respond(
    snap: &Snapshot,
    mut resp: Response<ProxyBody>,
    issue: Option<crate::token::Claims>,
    now: u32,
    tls: bool,
) -> Response<ProxyBody> {
    let headers = resp.headers_mut();
    headers::strip_hop_by_hop(headers);
    if let Some(claims) = issue {
        let token = snap.ring.sign(&claims);
        let max_age = affinity::cookie_max_age(&snap.policy, &claims, now);
        if snap.config.affinity.mode == Mode::Header {
            if let Ok(v) = HeaderValue::from_str(token.as_str()) {
                headers.insert(snap.token_header.clone(), v);
            }
            // Like a cookie: no shared cache may keep one client's token for others.
            if !headers.contains_key(header::CACHE_CONTROL) {
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
            }
        } else {
            let cookie = headers::set_cookie(&snap.cookie, token.as_str(), max_age, tls);
            headers::add_set_cookie(headers, cookie);
        }
    }
    resp
}

/// The backend's `101` on its way to the client: its Connection/Upgrade pair and protocol
/// headers kept, other hop-by-hop headers out, the cookie in when one is issued, no body.
fn switching(
    snap: &Snapshot,
    resp: Response<Incoming>,
    issue: Option<crate::token::Claims>,
    now: u32,
    tls: bool,
) -> Response<ProxyBody> {
    let keep = (
        resp.headers().get(header::CONNECTION).cloned(),
        resp.headers().get(header::UPGRADE).cloned(),
    );
    let resp = resp.map(|_| ProxyBody::full(Bytes::new()));
    let mut resp = respond(snap, resp, issue, now, tls);
    if let (Some(c), Some(u)) = keep {
        resp.headers_mut().insert(header::CONNECTION, c);
        resp.headers_mut().insert(header::UPGRADE, u);
    }
    resp
}

/// What the request carries for affinity, by mode: a token (cookie, or header in `header`
/// mode; taken out of the request either way), or a key to hash (`ip`, trusted `header`), or
/// nothing (`none`).
fn affinity_input(
    snap: &Snapshot,
    parts: &mut Parts,
    conn: &ConnInfo,
) -> (TokenInput, Option<u64>) {
    let verify = |bytes: &[u8]| match snap.ring.verify(bytes) {
        Ok(v) => TokenInput::Valid(v),
        Err(why) => TokenInput::Invalid(why),
    };
    let a = &snap.config.affinity;
    match a.mode {
        Mode::Cookie => {
            let found = headers::take_cookie(&mut parts.headers, &snap.cookie.name);
            let token = match found {
                Found::Absent => TokenInput::Absent,
                Found::TooLong => TokenInput::Invalid(Invalid::Malformed),
                Found::Value(..) => verify(found.bytes()),
            };
            (token, None)
        }
        Mode::Header => {
            let value = parts.headers.remove(&snap.token_header);
            match value {
                None => (TokenInput::Absent, None),
                Some(v) if a.header_trusted => (
                    TokenInput::Absent,
                    Some(crate::balance::key_hash(v.as_bytes())),
                ),
                Some(v) if v.len() > headers::MAX_COOKIE_VALUE => {
                    (TokenInput::Invalid(Invalid::Malformed), None)
                }
                Some(v) => (verify(v.as_bytes().trim_ascii()), None),
            }
        }
        Mode::Ip => {
            let ip = headers::client_ip(&parts.headers, conn.peer.ip(), |ip| snap.is_trusted(ip));
            let key = match ip {
                std::net::IpAddr::V4(v4) => crate::balance::key_hash(&v4.octets()),
                std::net::IpAddr::V6(v6) => crate::balance::key_hash(&v6.octets()),
            };
            (TokenInput::Absent, Some(key))
        }
        Mode::None => (TokenInput::Absent, None),
    }
}

/// Rejects what cannot be forwarded.
fn check_request(parts: &Parts) -> Result<(), ProxyError> {
    // One lookup for the three Host rules.
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if parts.version == Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("HTTP/1.1 request without Host\n"));
        }
        (Some(_), Some(_)) => {
            return Err(ProxyError::BadRequest("more than one Host header\n"));
        }
        (Some(h), None) if !headers::valid_host(h.as_bytes()) => {
            return Err(ProxyError::BadRequest("invalid Host header\n"));
        }
        _ => {}
    }
    if let Some(a) = parts.uri.authority()
        && !headers::valid_host(a.as_str().as_bytes())
    {
        return Err(ProxyError::BadRequest(
            "invalid authority in the request target\n",
        ));
    }
    if parts.method == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported\n"));
    }
    Ok(())
}

/// Rewrites the request head for the backend: hop-by-hop headers out (before ours go in),
/// Host kept (or taken from the h2 authority), X-Forwarded-*, Via, HTTP/1.1.
fn prepare_upstream_head(snap: &Snapshot, parts: &mut Parts, conn: &ConnInfo) {
    headers::strip_hop_by_hop(&mut parts.headers);
    // An absolute-form target (or h2's :authority) names the host: a Host header that says
    // otherwise is replaced (RFC 9112 section 3.2.2), so the backend reads one host only.
    if let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    let host = parts.headers.get(header::HOST).cloned();
    headers::add_forwarded(
        &mut parts.headers,
        &Forwarded {
            peer: &conn.peer_value,
            trusted: snap.is_trusted(conn.peer.ip()),
            proto: if conn.tls { "https" } else { "http" },
            host: host.as_ref(),
            via: snap.via(parts.version),
        },
    );
    parts.version = Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = origin_form(&parts.uri);
    }
}

/// The origin form (`/path?query`) of an absolute-form or HTTP/2 request target.
fn origin_form(incoming: &Uri) -> Uri {
    match incoming.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq.clone()),
        // `*` (OPTIONS) or an empty path.
        Some(pq) if pq.as_str() == "*" => Uri::from_static("*"),
        _ => Uri::from_static("/"),
    }
}

fn clone_parts(p: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn unix_now() -> u32 {
    u32::try_from(crate::backend::unix_secs()).unwrap_or(u32::MAX)
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

/// The error response: status, short body, Retry-After for pool failures.
pub fn error_response(e: &ProxyError, snap: &Snapshot) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(e.body().as_bytes())));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = e.retry_after(snap.config.balance.retry_after.get()) {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(
        e,
        ProxyError::BadRequest(_) | ProxyError::NotImplemented(_) | ProxyError::ClientTimeout
    ) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        // Debug, not info: a flood of bad requests must not flood the log.
        debug!(error = %e, "request refused");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_target_is_the_origin_form() {
        let u = origin_form(&"http://evil.example/a/b?c=1".parse().unwrap());
        assert_eq!(u, "/a/b?c=1");
        assert_eq!(origin_form(&"http://a.example".parse().unwrap()), "/");
        assert_eq!(origin_form(&"*".parse().unwrap()), "*");
    }

    #[test]
    fn only_idempotent_methods_may_be_replayed_after_a_reset() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }

    #[test]
    fn requests_without_host_or_with_two_are_refused() {
        let parts = |version, hosts: &[&str], method| {
            let mut r = Request::new(());
            *r.version_mut() = version;
            *r.method_mut() = method;
            for h in hosts {
                r.headers_mut()
                    .append(header::HOST, HeaderValue::from_str(h).unwrap());
            }
            r.into_parts().0
        };
        assert!(check_request(&parts(Version::HTTP_11, &["a"], Method::GET)).is_ok());
        assert!(check_request(&parts(Version::HTTP_10, &[], Method::GET)).is_ok());
        assert!(check_request(&parts(Version::HTTP_2, &[], Method::GET)).is_ok());
        assert_eq!(
            check_request(&parts(Version::HTTP_11, &[], Method::GET))
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            check_request(&parts(Version::HTTP_11, &["a", "b"], Method::GET))
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            check_request(&parts(Version::HTTP_11, &["a"], Method::CONNECT))
                .unwrap_err()
                .status(),
            400
        );
    }

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
