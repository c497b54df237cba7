//! The admin API, on its own listener (`[admin] listen`, loopback unless a bearer token is
//! set), served on the main thread's runtime, away from the workers:
//!
//! | call | answer |
//! |---|---|
//! | `GET /` | the dashboard: one self-contained page that polls `/dashboard.json` ([`dashboard`]) |
//! | `GET /dashboard.json` | JSON: every pool's backends and the last minutes of per-second series |
//! | `GET /healthz` | 200 `ok` while serving (liveness) |
//! | `GET /readyz` | 200 `ready`; 503 while stopping or with no usable backend (readiness) |
//! | `GET /metrics` | Prometheus text exposition (version 0.0.4), written by [`crate::metrics`] |
//! | `GET /backends` | JSON: every backend's health, admin state, in-flight, counters, sessions |
//! | `GET /backends/{id}` | JSON: one backend |
//! | `POST /backends/{id}/drain`, `/enable`, `/disable` | sets the admin state; JSON of the backend |
//! | `POST /reload` | re-reads the config file: 200, or 400 with the error (the old config keeps serving) |
//!
//! Wrong methods get 405 with `Allow`, unknown paths 404, a missing or wrong token 401.
//!
//! # Who may call it
//!
//! The admin API changes what the proxy does, so only the operator may use it. Loopback keeps
//! other machines out, but not web pages open in the operator's browser, which reach 127.0.0.1
//! too:
//! - A page on any site can send a "simple" cross-origin request (a form POST, or `fetch` with
//!   `Content-Type: text/plain`) with no CORS preflight. It cannot read the answer, but
//!   `POST /backends/a/disable` has already acted.
//! - DNS rebinding: a page at `evil.example` makes its own name resolve to 127.0.0.1; its
//!   script is then same-origin with the admin API and reads `/backends` and `/metrics`.
//!
//! So before anything else, [`guard::admit`] refuses:
//! - a request whose `Host` is not this listener (421): the IP literal the client connected to
//!   or `localhost`, with the listener's port, or a name in `[admin] allowed_hosts`. A
//!   rebinding page always sends its own name, never the IP literal.
//! - a state-changing call (any method but GET and HEAD) whose `Origin` is not this listener's,
//!   or whose `Sec-Fetch-Site` is not `same-origin` or `none` (403). Browsers send these and
//!   pages cannot forge them; curl and scripts send neither and are not affected. Reads need no
//!   origin check: the same-origin policy keeps a foreign page from seeing the answer.
//!
//! Both hold with and without the token, and run before it: they need no secret, a refused page
//! never gets a 401-or-200 answer to probe the token with, and the rules behave the same
//! whatever the token configuration. The token still matters off loopback, where the host rule
//! alone cannot tell the operator from anyone else who can reach the port.

mod dashboard;
mod explain;
mod guard;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::affinity::{AdminState, Outcome, Takeover};
use crate::config::Secret;
use crate::metrics::{BackendSample, LookupSample, PoolSample, Readings};
use crate::state::{Backend, BackendSource, HandoffRefused, Shared, Snapshot};

use guard::{Refusal, SEVERAL, Seen};

/// A reload asked for over the admin API; the answer is the new backend count or the error.
pub type ReloadCall = oneshot::Sender<Result<usize, String>>;

/// What the admin API reads and acts on.
pub struct Ctx {
    /// The proxy's shared state.
    pub shared: Arc<Shared>,
    /// Bearer token, if one is required.
    pub token: Option<Secret>,
    /// Where reload calls go (the loop that owns the config path), if anywhere.
    pub reload: Option<mpsc::Sender<ReloadCall>>,
    /// Client connection permits, to report open connections.
    pub conns: Arc<Semaphore>,
    /// The permit total.
    pub max_conns: u32,
    /// True once shutdown began.
    pub stopping: watch::Receiver<bool>,
}

/// Serves the admin API on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The address this client connected to: what its Host must name (see the module doc).
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                debug!(peer = %peer, error = %e, "admin connection without a local address");
                continue;
            }
        };
        let ctx = ctx.clone();
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, local, req).await) }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(peer = %peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

/// Answers one admin call that arrived on a connection whose local address is `local`: the
/// origin rules first, then the token, then the route.
pub async fn handle<B>(ctx: &Ctx, local: SocketAddr, req: Request<B>) -> Resp {
    if let Err(refusal) = admit(ctx, local, &req) {
        debug!(refusal = ?refusal, "admin call refused");
        let mut r = text(refusal.status(), refusal.body());
        r.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        return r;
    }
    // The platform's probes (a kubelet, a cloud balancer) carry no token: alive and ready
    // answer without one, and say nothing else. Their Host is checked like any other: a
    // kubelet names the pod's IP and port, which is the listener's own address.
    // The dashboard's page holds no data (it asks for the token itself): no token either.
    let open = matches!(req.uri().path(), "/healthz" | "/readyz" | "/")
        && matches!(*req.method(), Method::GET | Method::HEAD);
    if !open
        && let Some(t) = &ctx.token
        && !authorized(req.headers().get(header::AUTHORIZATION), &t.0)
    {
        let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (segs.as_slice(), method) {
        // Alive: the process answers (liveness). Draining is not a failure to restart for.
        (["healthz"], Method::GET | Method::HEAD) => text(StatusCode::OK, "ok\n"),
        // Ready for new traffic (readiness): not stopping, and some backend can serve.
        (["readyz"], Method::GET | Method::HEAD) => {
            if *ctx.stopping.borrow() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !ctx
                .shared
                .load()
                .backends
                .iter()
                .any(|b| b.live.health.is_up() && b.admin_state() != AdminState::Disabled)
            {
                text(StatusCode::SERVICE_UNAVAILABLE, "no usable backend\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        ([""], Method::GET | Method::HEAD) => dashboard::page(),
        (["dashboard.json"], Method::GET) => dashboard::data(ctx),
        (["metrics"], Method::GET) => {
            let mut r = Response::new(Full::new(Bytes::from(render_metrics(ctx))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (["backends"], Method::GET) => {
            let snap = ctx.shared.load();
            let (now, quiet) = (crate::clock::unix_secs(), drain_quiet(&snap));
            let all: Vec<BackendView> = snap
                .backends
                .iter()
                .map(|b| BackendView::of(&snap, b, now, quiet))
                .collect();
            json(StatusCode::OK, &all)
        }
        (["pools"], Method::GET) => {
            let snap = ctx.shared.load();
            let all: Vec<PoolView> = (0..snap.pools.len())
                .map(|ix| PoolView::of(&snap, ix))
                .collect();
            json(StatusCode::OK, &all)
        }
        (["backends", id], Method::GET) => backend_json(ctx, id),
        (["backends", id, action @ ("drain" | "enable" | "disable")], Method::POST) => {
            let state = match *action {
                "drain" => AdminState::Draining,
                "enable" => AdminState::Active,
                _ => AdminState::Disabled,
            };
            if !ctx
                .shared
                .set_admin(id, Some(state), crate::clock::unix_secs())
            {
                return text(StatusCode::NOT_FOUND, "no such backend\n");
            }
            info!(backend = %id, state = ?state, "admin state set over the admin API");
            backend_json(ctx, id)
        }
        (["backends", id, "handoff"], Method::POST) => {
            match ctx.shared.handoff(id, crate::clock::unix_secs()) {
                Ok(()) => {
                    info!(backend = %id, "handoff started over the admin API: its sessions go to their backups");
                    backend_json(ctx, id)
                }
                Err(HandoffRefused::NoSuchBackend) => {
                    text(StatusCode::NOT_FOUND, "no such backend\n")
                }
                Err(HandoffRefused::NotReplicated) => text(
                    StatusCode::CONFLICT,
                    "this backend's pool does not replicate sessions ([replication] backups = 0): nothing holds a copy of them; drain it instead\n",
                ),
            }
        }
        (["route"], Method::GET) => route_json(ctx, req.uri().query()),
        (["reload"], Method::POST) => reload(ctx).await,
        (["healthz" | "readyz"], _) => not_allowed("GET, HEAD"),
        (["" | "metrics" | "backends" | "pools" | "route" | "dashboard.json"], _)
        | (["backends", _], _) => not_allowed("GET"),
        (["backends", _, "drain" | "enable" | "disable" | "handoff"], _) | (["reload"], _) => {
            not_allowed("POST")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// [`guard::admit`] on `req`, with the names `[admin] allowed_hosts` lists now.
fn admit<B>(ctx: &Ctx, local: SocketAddr, req: &Request<B>) -> Result<(), Refusal> {
    let one = |name: header::HeaderName| {
        let mut all = req.headers().get_all(name).iter();
        let first = all.next()?.as_bytes();
        Some(if all.next().is_some() { SEVERAL } else { first })
    };
    let snap = ctx.shared.load();
    let allowed: Vec<&str> = snap.config.admin.as_ref().map_or_else(Vec::new, |a| {
        a.allowed_hosts.iter().map(String::as_str).collect()
    });
    let seen = Seen {
        method: req.method(),
        host: one(header::HOST),
        authority: req.uri().authority().map(|a| a.as_str()),
        origin: one(header::ORIGIN),
        fetch_site: one(header::HeaderName::from_static("sec-fetch-site")),
    };
    guard::admit(&seen, local, &allowed)
}

async fn reload(ctx: &Ctx) -> Resp {
    let Some(tx) = &ctx.reload else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload is not available in this process (no config file)\n",
        );
    };
    let (reply, answer) = oneshot::channel();
    if tx.send(reply).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match answer.await {
        Ok(Ok(backends)) => json(
            StatusCode::OK,
            &serde_json::json!({ "status": "reloaded", "backends": backends }),
        ),
        Ok(Err(e)) => {
            warn!(error = %e, "reload over the admin API refused");
            json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e }))
        }
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

/// `GET /route?cookie=VALUE[&pool=NAME]`: what stickyd makes of that token (see `explain`).
/// Without `pool`, the pool "default", else the only pool.
fn route_json(ctx: &Ctx, query: Option<&str>) -> Resp {
    let (mut cookie, mut pool) = (None, None);
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("cookie", v)) => cookie = Some(percent_decoded(v)),
            Some(("pool", v)) => pool = Some(percent_decoded(v)),
            _ => {}
        }
    }
    let Some(cookie) = cookie else {
        return text(
            StatusCode::BAD_REQUEST,
            "give the token: /route?cookie=VALUE (and &pool=NAME with several pools)\n",
        );
    };
    let snap = ctx.shared.load();
    let ix = match pool {
        Some(name) => snap.pool_named(&String::from_utf8_lossy(&name)),
        None => snap
            .pool_named(crate::state::DEFAULT)
            .or_else(|| (snap.pools.len() == 1).then_some(0)),
    };
    let Some(ix) = ix else {
        return text(
            StatusCode::NOT_FOUND,
            "no such pool (name one with &pool=NAME: GET /pools lists them)\n",
        );
    };
    let now = u32::try_from(crate::clock::unix_secs()).unwrap_or(u32::MAX);
    json(StatusCode::OK, &explain::explain(&snap, ix, &cookie, now))
}

/// `%XX` escapes decoded (a token is base64url and needs none, but a client may escape it).
fn percent_decoded(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn backend_json(ctx: &Ctx, id: &str) -> Resp {
    let snap = ctx.shared.load();
    match snap.backend(id) {
        Some(b) => json(
            StatusCode::OK,
            &BackendView::of(&snap, b, crate::clock::unix_secs(), drain_quiet(&snap)),
        ),
        None => text(StatusCode::NOT_FOUND, "no such backend\n"),
    }
}

/// One pool as `GET /pools` shows it.
#[derive(Debug, Serialize)]
pub struct PoolView {
    name: String,
    /// Whether it serves the requests no route matches (the pool "default").
    default: bool,
    /// The routes to it, in config order.
    routes: Vec<RouteView>,
    /// Its backends' ids, in config order.
    backends: Vec<String>,
    /// `[affinity] mode`.
    mode: crate::config::Mode,
    /// Its affinity cookie (also the name its tokens are bound to).
    cookie: String,
    /// `[balance] new_sessions`.
    new_sessions: crate::config::NewSessions,
    /// max/mean of its usable backends' recent request rates.
    imbalance: f64,
    /// Sessions moved to another backend since start.
    repins: u64,
}

/// One route as `GET /pools` shows it.
#[derive(Debug, Serialize)]
struct RouteView {
    /// The host pattern; `null` for any host.
    host: Option<String>,
    path_prefix: String,
}

impl PoolView {
    fn of(snap: &Snapshot, ix: usize) -> PoolView {
        let p = &snap.pools[ix];
        let c = snap.pool_config(ix);
        let routes = &snap.config.routes;
        PoolView {
            name: p.name.to_string(),
            default: routes.default_pool() == Some(ix),
            routes: routes
                .routes()
                .iter()
                .filter(|r| r.pool == ix)
                .map(|r| RouteView {
                    host: (r.host != crate::route::HostPattern::Any).then(|| r.host.to_string()),
                    path_prefix: r.path_prefix.to_string(),
                })
                .collect(),
            backends: p
                .members
                .iter()
                .map(|&g| snap.backends[g].id.to_string())
                .collect(),
            mode: c.affinity.mode,
            cookie: p.cookie.name.clone(),
            new_sessions: c.balance.new_sessions,
            imbalance: p.live.imbalance(),
            repins: p.live.repins(),
        }
    }
}

/// One backend as `GET /backends` shows it.
#[derive(Debug, Serialize)]
pub struct BackendView {
    id: String,
    /// Its pool's name.
    pool: String,
    address: String,
    weight: u32,
    /// "up" or "down".
    health: &'static str,
    /// The admin state in force.
    state: AdminState,
    /// "config", "api" or "dns" (gone from DNS: draining until removed): where the state
    /// comes from.
    state_source: &'static str,
    /// "config" (a `[[backend]]`) or "dns" (a `[[discover]]` entry found it).
    source: &'static str,
    in_flight: i64,
    requests: u64,
    responses: Responses,
    /// Requests that got no response from this backend.
    failures: u64,
    /// Sessions pinned here since start (new sessions and re-pins).
    pins: u64,
    /// Distinct sessions served within about the last `max_idle` (an estimate, ~13%).
    sessions: u64,
    /// Unix time the drain began, when draining.
    draining_since: Option<u64>,
    /// Draining and no request served for `drain_quiet`: safe to stop.
    drained: bool,
    /// A handoff is in progress (replication): its sessions go to their backups.
    handoff: bool,
    /// The process identity its health checks last named (`X-Stickyd-Incarnation`).
    incarnation: Option<String>,
}

#[derive(Debug, Serialize)]
struct Responses {
    #[serde(rename = "1xx")]
    c1: u64,
    #[serde(rename = "2xx")]
    c2: u64,
    #[serde(rename = "3xx")]
    c3: u64,
    #[serde(rename = "4xx")]
    c4: u64,
    #[serde(rename = "5xx")]
    c5: u64,
}

impl BackendView {
    fn of(snap: &Snapshot, b: &Backend, now: u64, quiet: u64) -> BackendView {
        let s = sample(snap, b, now, quiet);
        let [c1, c2, c3, c4, c5] = s.responses;
        BackendView {
            id: b.id.to_string(),
            pool: s.pool.to_string(),
            address: b.authority.to_string(),
            weight: s.weight,
            health: if s.up { "up" } else { "down" },
            state: s.state,
            state_source: if b.live.admin.api_state().is_some() {
                "api"
            } else if b.leaving {
                "dns"
            } else {
                "config"
            },
            source: b.source.label(),
            in_flight: s.in_flight,
            requests: s.requests,
            responses: Responses { c1, c2, c3, c4, c5 },
            failures: s.failures,
            pins: s.pins,
            sessions: s.sessions,
            draining_since: b
                .live
                .admin
                .draining_since()
                .filter(|_| s.state == AdminState::Draining),
            drained: s.drained,
            handoff: b.live.admin.handoff(),
            incarnation: b.live.incarnation.current(),
        }
    }
}

/// `b`'s live values, read once, as both `/backends` and `/metrics` show them.
fn sample<'a>(snap: &'a Snapshot, b: &'a Backend, now: u64, quiet: u64) -> BackendSample<'a> {
    let l = &b.live;
    let state = b.admin_state();
    BackendSample {
        id: &b.id,
        pool: &snap.pools[b.pool].name,
        weight: b.weight,
        up: l.health.is_up(),
        state,
        drained: state == AdminState::Draining && l.drained(now, quiet),
        in_flight: l.counters.in_flight(),
        requests: l.counters.requests(),
        failures: l.counters.failures(),
        responses: [1, 2, 3, 4, 5].map(|class| l.counters.responses(class)),
        pins: l.sessions.pins(),
        sessions: l.sessions.recent(),
    }
}

/// The Prometheus text exposition of every metric, as `GET /metrics` answers it.
pub fn render_metrics(ctx: &Ctx) -> String {
    let snap = ctx.shared.load();
    let (now, quiet) = (crate::clock::unix_secs(), drain_quiet(&snap));
    let backends: Vec<BackendSample<'_>> = snap
        .backends
        .iter()
        .map(|b| sample(&snap, b, now, quiet))
        .collect();
    let pools: Vec<PoolSample<'_>> = snap
        .pools
        .iter()
        .map(|p| PoolSample {
            name: &p.name,
            outcomes: Outcome::ALL.map(|o| p.live.outcomes(o)),
            repins: p.live.repins(),
            takeovers: Takeover::ALL.map(|t| p.live.takeovers(t)),
            imbalance: p.live.imbalance(),
            backends: [BackendSource::Config, BackendSource::Dns].map(|s| {
                p.members
                    .iter()
                    .filter(|&&g| snap.backends[g].source == s)
                    .count()
            }),
        })
        .collect();
    let counts = ctx.shared.lookups();
    let lookups: Vec<LookupSample<'_>> = counts
        .iter()
        .map(|((pool, name), counts)| LookupSample {
            pool,
            name,
            counts: *counts,
        })
        .collect();
    ctx.shared.metrics.render(&Readings {
        connections: ctx.max_conns as usize - ctx.conns.available_permits(),
        backends: &backends,
        pools: &pools,
        lookups: &lookups,
        access_log_dropped: ctx.shared.access.as_ref().map(|a| a.dropped()),
    })
}

/// `[admin] drain_quiet` in seconds (its default when the section is absent).
fn drain_quiet(snap: &Snapshot) -> u64 {
    let quiet = |a: &crate::config::Admin| a.drain_quiet.as_secs();
    snap.config
        .admin
        .as_ref()
        .map_or_else(|| quiet(&Default::default()), quiet)
}

fn authorized(header: Option<&HeaderValue>, token: &[u8]) -> bool {
    let Some(given) = header.and_then(|h| h.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    // Constant time in the content; a length mismatch answers at once (the length is not secret).
    given.trim_ascii().ct_eq(token).into()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, v: &impl Serialize) -> Resp {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn not_allowed(allow: &'static str) -> Resp {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(authorized(Some(&h("Bearer sesame")), b"sesame"));
        assert!(authorized(Some(&h("Bearer  sesame ")), b"sesame"));
        assert!(!authorized(Some(&h("Bearer sesam")), b"sesame"));
        assert!(!authorized(Some(&h("Bearer sesamf")), b"sesame"));
        assert!(!authorized(Some(&h("Basic sesame")), b"sesame"));
        assert!(!authorized(None, b"sesame"));
    }
}
