//! Step 2 of the request path: the attempt loop. Each attempt asks affinity where to go (with
//! the backends that already failed this request excluded), sends the request there through
//! the worker's upstream pool, and returns the backend's answer. A failed attempt is counted
//! against its backend (and may eject it); the request goes to another backend only when that
//! is safe: nothing was sent, or the method is idempotent and the connection dropped before
//! any response byte, and the client's body has not been read ([`ProxyError::retryable`]).

use http::Request;
use http::header::HeaderValue;
use http::request::Parts;
use hyper::body::Incoming;
use tracing::{debug, warn};

use super::request::{Plan, clone_parts};
use super::{Proxy, nonce};
use crate::affinity::{self, Input, NoRoute, Route};
use crate::backend::InFlight;
use crate::body::{ClientFailure, Replay};
use crate::clock::Now;
use crate::error::ProxyError;
use crate::h1::write::Replica;
use crate::health::Transition;
use crate::state::{Backend, Snapshot};
use crate::upstream::{Lease, Target};

/// A backend's answer to the attempt that got one.
pub(super) struct Answer {
    /// Where the attempt went, and what affinity decided.
    pub route: Route,
    /// The response head (and its body, still to be read).
    pub resp: http::Response<Incoming>,
    /// The connection it came on, until the body is done.
    pub lease: Lease,
    /// The backend's in-flight count, held until the body is done.
    pub guard: InFlight,
}

impl Proxy {
    /// Runs attempts until a backend answers or no safe retry is left. `parts` is the rewritten
    /// head; `body` keeps the client's body for as long as a retry may send it again.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempts(
        &self,
        snap: &Snapshot,
        pool: usize,
        mut parts: Parts,
        body: &Replay,
        input: Input,
        plan: &Plan,
        now: &Now,
    ) -> Result<Answer, ProxyError> {
        let mut tries = Retries::new(snap, pool);
        loop {
            let route = tries.route(snap, input, now)?;
            let backend = &snap.backends[route.backend];
            let may_retry = tries.left() && body.replayable();
            let head = if may_retry {
                clone_parts(&parts)
            } else {
                std::mem::replace(&mut parts, Request::new(()).into_parts().0)
            };
            let mut head = head;
            if let Some(r) = tries.replica(snap, &route) {
                set_replica(&mut head.headers, &r);
            }
            let guard = InFlight::start(&backend.live);
            let req = Request::from_parts(head, body.take());
            // An upgrade goes on a connection of its own (always HTTP/1.1); anything else on
            // the pool's. A request that must not be retried is sent with care (an idle
            // connection is checked for a close first; see `Upstream::send`). Awaited here,
            // not in a helper: one future less to move per request.
            let target = Target {
                authority: &backend.authority,
                origin: backend.origin.as_ref(),
                h2: backend.h2 && plan.upgrade.is_none(),
            };
            let sent = if plan.upgrade.is_some() {
                self.upstream.send_upgrade(target, req).await
            } else {
                self.upstream.send(target, req, !plan.idempotent).await
            };
            let e = match sent {
                Ok((resp, lease)) => {
                    return Ok(Answer {
                        route,
                        resp,
                        lease,
                        guard,
                    });
                }
                Err(e) => e,
            };
            drop(guard);
            // The client's own body was malformed (bad chunk, cut short) or stalled: its
            // fault, not the backend's; nothing to count against the backend or retry.
            match body.client_failure() {
                Some(ClientFailure::TimedOut) => return Err(ProxyError::ClientTimeout),
                Some(ClientFailure::Malformed) => {
                    return Err(ProxyError::BadRequest("invalid request body\n"));
                }
                None => {}
            }
            let retry = may_retry && e.retryable(plan.idempotent) && body.replayable();
            tries.failed(self, snap, route.backend, e, retry)?;
        }
    }

    /// Counts a failed attempt against its backend; consecutive connect failures eject it
    /// (passive health, logged once per ejection).
    pub(super) fn attempt_failed(&self, snap: &Snapshot, backend: &Backend, e: &ProxyError) {
        backend.live.counters.record_failure();
        self.shared.metrics.upstream_error(e);
        if let ProxyError::Connect(_) = e {
            let threshold = snap.pool_config(backend.pool).health.passive_failures;
            // Dated when the failure is known, not when the request came: a connect may take
            // up to connect_timeout, and `eject_time` counts from the ejection.
            let at = std::time::Instant::now();
            if backend.live.health.connect_failed(threshold, at) == Some(Transition::Down) {
                warn!(backend = %backend.id, error = %e, "backend ejected after consecutive connect failures");
            }
        }
        debug!(backend = %backend.id, error = %e, "upstream attempt failed");
    }
}

/// Sets replication's fields on a hyper request head (the header map's twin of
/// `h1::write::replica_fields`).
fn set_replica(h: &mut http::HeaderMap, r: &Replica<'_>) {
    use crate::headers::{X_STICKYD_BACKEND, X_STICKYD_BACKUP, X_STICKYD_TAKEOVER};
    let Ok(backend) = HeaderValue::from_bytes(r.backend) else {
        return;
    };
    if let Some(first) = r.backups[0] {
        let mut v = first.to_vec();
        if let Some(second) = r.backups[1] {
            v.extend_from_slice(b", ");
            v.extend_from_slice(second);
        }
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            h.insert(X_STICKYD_BACKUP.clone(), v);
        }
    }
    if r.takeover {
        h.insert(X_STICKYD_TAKEOVER.clone(), backend.clone());
    }
    h.insert(X_STICKYD_BACKEND.clone(), backend);
}

/// One request's attempts, for both request paths (hyper's and the HTTP/1 engine's): its pool,
/// the backends that failed it, the retries left, and the last failure.
pub(super) struct Retries {
    /// The request's pool, by index in the snapshot.
    pool: usize,
    /// The pool's backends that failed this request, by the pool's local index.
    excluded: Vec<usize>,
    /// The local index of the backend of the last route.
    last: usize,
    left: u32,
    /// The failure of the previous attempt: when a retry finds no other backend, that is the
    /// answer (a 502 says more than "no backend").
    failed: Option<ProxyError>,
}

impl Retries {
    /// No attempt yet on `pool`; `[upstream] retries` left.
    pub fn new(snap: &Snapshot, pool: usize) -> Retries {
        Retries {
            pool,
            excluded: Vec::new(),
            last: 0,
            left: snap.config.upstream.retries,
            failed: None,
        }
    }

    /// Whether a retry is left.
    pub fn left(&self) -> bool {
        self.left > 0
    }

    /// What the backend of `route` is told under replication: itself (always, so an app can
    /// tell a request stickyd forwarded), the session's backups recorded in its token, and
    /// whether it takes the session over. `None` with replication off.
    pub fn replica<'s>(&self, snap: &'s Snapshot, route: &Route) -> Option<Replica<'s>> {
        let pool = &snap.pools[self.pool];
        if pool.policy.backups == 0 {
            return None;
        }
        // The backups affinity recorded in the token: the header names the same ones.
        Some(Replica {
            backend: snap.backends[route.backend].id.as_bytes(),
            backups: route
                .backups()
                .map(|b| b.map(|local| pool.replica_name(local))),
            takeover: route.takeover.is_some(),
        })
    }

    /// Where the next attempt goes, the backends that failed excluded. The route's backend is
    /// the snapshot's index (affinity decides on the pool's own indexes).
    pub fn route(&mut self, snap: &Snapshot, input: Input, now: &Now) -> Result<Route, ProxyError> {
        let pool = &snap.pools[self.pool];
        match affinity::decide(
            &pool.policy,
            input,
            now.unix_u32(),
            &pool.view(&snap.backends),
            &self.excluded,
            nonce,
        ) {
            Ok(mut r) => {
                self.last = r.backend;
                r.backend = pool.global(r.backend);
                Ok(r)
            }
            Err(_) if self.failed.is_some() => {
                Err(self.failed.take().unwrap_or(ProxyError::NoBackend))
            }
            Err(NoRoute::AllDown) => Err(ProxyError::NoBackend),
            Err(NoRoute::PinnedDown) => Err(ProxyError::PinnedDown),
        }
    }

    /// The attempt on `backend` failed with `e`: counted against it; `Ok` when another backend
    /// is to be tried (`retry`, decided by the caller with [`ProxyError::retryable`]), else the
    /// error to answer with.
    pub fn failed(
        &mut self,
        proxy: &Proxy,
        snap: &Snapshot,
        backend: usize,
        e: ProxyError,
        retry: bool,
    ) -> Result<(), ProxyError> {
        proxy.attempt_failed(snap, &snap.backends[backend], &e);
        if !retry {
            return Err(e);
        }
        proxy.shared.metrics.retry();
        self.excluded.push(self.last);
        self.left -= 1;
        self.failed = Some(e);
        Ok(())
    }
}
