//! The admin API, on its own listener (`[admin] listen`, loopback unless a bearer token is
//! set), served on the main thread's runtime, away from the workers:
//!
//! | call | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while serving, 503 `draining` once shutdown began |
//! | `GET /metrics` | Prometheus text exposition (version 0.0.4) |
//! | `GET /backends` | JSON: every backend's health, admin state, in-flight, counters, sessions |
//! | `GET /backends/{id}` | JSON: one backend |
//! | `POST /backends/{id}/drain`, `/enable`, `/disable` | sets the admin state; JSON of the backend |
//! | `POST /reload` | re-reads the config file: 200, or 400 with the error (the old config keeps serving) |
//!
//! Wrong methods get 405 with `Allow`, unknown paths 404, a missing or wrong token 401.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::affinity::{AdminState, Outcome};
use crate::config::Secret;
use crate::metrics::{LATENCY_BUCKETS, UPSTREAM_ERROR_KINDS};
use crate::state::{Backend, Shared, Snapshot};

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
        let ctx = ctx.clone();
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
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

/// Routes one admin call.
pub async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Resp {
    if let Some(t) = &ctx.token
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
        (["healthz"], Method::GET | Method::HEAD) => {
            if *ctx.stopping.borrow() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
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
            let now = crate::backend::unix_secs();
            let all: Vec<BackendView> = snap
                .backends
                .iter()
                .map(|b| BackendView::of(b, &snap, now))
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
                .set_admin(id, Some(state), crate::backend::unix_secs())
            {
                return text(StatusCode::NOT_FOUND, "no such backend\n");
            }
            info!(backend = %id, state = ?state, "admin state set over the admin API");
            backend_json(ctx, id)
        }
        (["reload"], Method::POST) => reload(ctx).await,
        (["healthz"], _) => not_allowed("GET, HEAD"),
        (["metrics" | "backends"], _) | (["backends", _], _) => not_allowed("GET"),
        (["backends", _, "drain" | "enable" | "disable"], _) | (["reload"], _) => {
            not_allowed("POST")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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

fn backend_json(ctx: &Ctx, id: &str) -> Resp {
    let snap = ctx.shared.load();
    match snap.backends.iter().find(|b| &*b.id == id) {
        Some(b) => json(
            StatusCode::OK,
            &BackendView::of(b, &snap, crate::backend::unix_secs()),
        ),
        None => text(StatusCode::NOT_FOUND, "no such backend\n"),
    }
}

/// One backend as `GET /backends` shows it.
#[derive(Debug, Serialize)]
pub struct BackendView {
    id: String,
    address: String,
    weight: u32,
    /// "up" or "down".
    health: &'static str,
    /// The admin state in force.
    state: AdminState,
    /// "config" or "api": where the state comes from.
    state_source: &'static str,
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
    fn of(b: &Backend, snap: &Snapshot, now: u64) -> BackendView {
        let l = &b.live;
        let state = b.admin_state();
        let quiet = drain_quiet(snap);
        BackendView {
            id: b.id.to_string(),
            address: b.authority.to_string(),
            weight: b.weight,
            health: if l.health.is_up() { "up" } else { "down" },
            state,
            state_source: if l.admin.api_state().is_some() {
                "api"
            } else {
                "config"
            },
            in_flight: l.counters.in_flight(),
            requests: l.counters.requests(),
            responses: Responses {
                c1: l.counters.responses(1),
                c2: l.counters.responses(2),
                c3: l.counters.responses(3),
                c4: l.counters.responses(4),
                c5: l.counters.responses(5),
            },
            failures: l.counters.failures(),
            pins: l.sessions.pins(),
            sessions: l.sessions.recent(),
            draining_since: l
                .admin
                .draining_since()
                .filter(|_| state == AdminState::Draining),
            drained: state == AdminState::Draining && l.drained(now, quiet),
        }
    }
}

/// The Prometheus text exposition of every metric.
pub fn render_metrics(ctx: &Ctx) -> String {
    let snap = ctx.shared.load();
    let m = &ctx.shared.metrics;
    let now = crate::backend::unix_secs();
    let quiet = drain_quiet(&snap);
    let mut o = String::with_capacity(8192);
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

    family(
        &mut o,
        "stickyd_build_info",
        "gauge",
        "Version of the running stickyd.",
    );
    let _ = writeln!(
        o,
        "stickyd_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut o,
        "stickyd_connections",
        "gauge",
        "Client connections open now.",
    );
    let open = ctx.max_conns as usize - ctx.conns.available_permits();
    let _ = writeln!(o, "stickyd_connections {open}");

    let per_backend =
        |o: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&Backend) -> String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for b in &snap.backends {
                let _ = writeln!(o, "{name}{{backend=\"{}\"}} {}", escape(&b.id), f(b));
            }
        };
    let _ = writeln!(
        o,
        "# HELP stickyd_backend_responses_total Responses from each backend by status class.\n# TYPE stickyd_backend_responses_total counter"
    );
    for b in &snap.backends {
        for class in 1..=5u16 {
            let _ = writeln!(
                o,
                "stickyd_backend_responses_total{{backend=\"{}\",class=\"{class}xx\"}} {}",
                escape(&b.id),
                b.live.counters.responses(class)
            );
        }
    }
    per_backend(
        &mut o,
        "stickyd_backend_requests_total",
        "counter",
        "Requests sent to each backend (attempts, retries included).",
        &|b| b.live.counters.requests().to_string(),
    );
    per_backend(
        &mut o,
        "stickyd_backend_failures_total",
        "counter",
        "Requests that got no response from the backend.",
        &|b| b.live.counters.failures().to_string(),
    );
    per_backend(
        &mut o,
        "stickyd_backend_in_flight",
        "gauge",
        "Requests in flight on each backend.",
        &|b| b.live.counters.in_flight().to_string(),
    );
    per_backend(
        &mut o,
        "stickyd_backend_up",
        "gauge",
        "1 if the backend passes health checks.",
        &|b| u8::from(b.live.health.is_up()).to_string(),
    );
    per_backend(
        &mut o,
        "stickyd_backend_weight",
        "gauge",
        "Configured weight of each backend.",
        &|b| b.weight.to_string(),
    );
    per_backend(
        &mut o,
        "stickyd_backend_pins_total",
        "counter",
        "Sessions pinned to each backend (new sessions and re-pins).",
        &|b| b.live.sessions.pins().to_string(),
    );
    per_backend(
        &mut o,
        "stickyd_backend_sessions",
        "gauge",
        "Distinct sessions served within about the last max_idle (estimate).",
        &|b| b.live.sessions.recent().to_string(),
    );
    per_backend(
        &mut o,
        "stickyd_backend_drained",
        "gauge",
        "1 if the backend is draining and served nothing for drain_quiet.",
        &|b| {
            u8::from(b.admin_state() == AdminState::Draining && b.live.drained(now, quiet))
                .to_string()
        },
    );
    let _ = writeln!(
        o,
        "# HELP stickyd_backend_admin_state Admin state of each backend (1 for the state in force).\n# TYPE stickyd_backend_admin_state gauge"
    );
    for b in &snap.backends {
        let s = b.admin_state();
        for (name, st) in [
            ("active", AdminState::Active),
            ("draining", AdminState::Draining),
            ("disabled", AdminState::Disabled),
        ] {
            let _ = writeln!(
                o,
                "stickyd_backend_admin_state{{backend=\"{}\",state=\"{name}\"}} {}",
                escape(&b.id),
                u8::from(s == st)
            );
        }
    }

    family(
        &mut o,
        "stickyd_responses_total",
        "counter",
        "Responses to clients by status class, stickyd's own errors included.",
    );
    for class in 1..=5u16 {
        let _ = writeln!(
            o,
            "stickyd_responses_total{{class=\"{class}xx\"}} {}",
            m.responses(class)
        );
    }
    family(
        &mut o,
        "stickyd_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its response head.",
    );
    let cum = m.latency.cumulative();
    for (le, n) in LATENCY_BUCKETS.iter().zip(cum.iter()) {
        let _ = writeln!(
            o,
            "stickyd_request_duration_seconds_bucket{{le=\"{le}\"}} {n}"
        );
    }
    let total = cum[LATENCY_BUCKETS.len()];
    let _ = writeln!(
        o,
        "stickyd_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}"
    );
    let _ = writeln!(
        o,
        "stickyd_request_duration_seconds_sum {}",
        m.latency.sum_secs()
    );
    let _ = writeln!(o, "stickyd_request_duration_seconds_count {total}");
    family(
        &mut o,
        "stickyd_affinity_total",
        "counter",
        "Requests by affinity outcome (valid, new, refreshed, or why a token was not honoured).",
    );
    for out in Outcome::ALL {
        let _ = writeln!(
            o,
            "stickyd_affinity_total{{outcome=\"{}\"}} {}",
            out.as_str(),
            m.outcomes(out)
        );
    }
    family(
        &mut o,
        "stickyd_repins_total",
        "counter",
        "Sessions moved to another backend because theirs could not serve.",
    );
    let _ = writeln!(o, "stickyd_repins_total {}", m.repins());
    family(
        &mut o,
        "stickyd_retries_total",
        "counter",
        "Requests retried on another backend.",
    );
    let _ = writeln!(o, "stickyd_retries_total {}", m.retries());
    family(
        &mut o,
        "stickyd_upstream_errors_total",
        "counter",
        "Failed upstream attempts by kind.",
    );
    for kind in UPSTREAM_ERROR_KINDS {
        let _ = writeln!(
            o,
            "stickyd_upstream_errors_total{{kind=\"{kind}\"}} {}",
            m.upstream_errors(kind)
        );
    }
    family(
        &mut o,
        "stickyd_imbalance_ratio",
        "gauge",
        "max/mean of the usable backends' request rates over about the last 10 s (1 is even; 0 without traffic).",
    );
    let _ = writeln!(o, "stickyd_imbalance_ratio {}", m.imbalance());
    if let Some(a) = &ctx.shared.access {
        family(
            &mut o,
            "stickyd_access_log_dropped_total",
            "counter",
            "Access log lines dropped because the writer fell behind.",
        );
        let _ = writeln!(o, "stickyd_access_log_dropped_total {}", a.dropped());
    }
    o
}

/// `[admin] drain_quiet` in seconds (its default when the section is absent).
fn drain_quiet(snap: &Snapshot) -> u64 {
    let quiet = |a: &crate::config::Admin| a.drain_quiet.get().as_secs();
    snap.config
        .admin
        .as_ref()
        .map_or_else(|| quiet(&Default::default()), quiet)
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn authorized(header: Option<&HeaderValue>, token: &[u8]) -> bool {
    let Some(given) = header.and_then(|h| h.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    ct_eq(given.trim_ascii(), token)
}

/// Constant time in the content (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
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

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }
}
