//! The dashboard: `GET /` serves one self-contained page (its HTML, CSS and script are in
//! `dashboard.html`, compiled into the binary), and `GET /dashboard.json` the data it polls
//! once a second: every pool's backends as `/backends` shows them, and the per-second series
//! the maintenance task keeps ([`crate::series`]).
//!
//! The page holds no data, so it is served without the token (the Host rule still applies);
//! the JSON and every action need the token like any other call, which the page asks for once
//! and sends as a bearer header. Its own calls are same-origin, so the cross-origin rules let
//! them through and still refuse any other page's.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value, json};

use super::{BackendView, Ctx, Resp, drain_quiet};
use crate::affinity::Outcome;
use crate::series::{History, Ring};
use crate::state::Snapshot;

/// The page, as compiled in.
const PAGE: &str = include_str!("dashboard.html");

/// `GET /`: the page. It may not be framed (its buttons act), and it loads nothing from
/// anywhere: its one inline script and style, and calls to this listener.
pub(super) fn page() -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /dashboard.json`.
pub(super) fn data(ctx: &Ctx) -> Resp {
    let snap = ctx.shared.load();
    let history = ctx
        .shared
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let v = render(
        &snap,
        &history,
        *ctx.stopping.borrow(),
        crate::clock::unix_secs(),
    );
    let mut body = serde_json::to_vec(&v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One backend's row: as `/backends` shows it, with its requests in the newest second and its
/// errors.
#[derive(serde::Serialize)]
struct Row {
    #[serde(flatten)]
    view: BackendView,
    rps: u64,
    errors: u64,
}

fn ring<T: Clone + serde::Serialize>(r: &Ring<T>) -> Value {
    json!(r.values().cloned().collect::<Vec<T>>())
}

/// The JSON of `/dashboard.json` (its fields are documented in docs/operations.md).
pub(super) fn render(snap: &Snapshot, history: &History, stopping: bool, now: u64) -> Value {
    let quiet = drain_quiet(snap);
    let pools: Vec<Value> = snap
        .pools
        .iter()
        .enumerate()
        .map(|(ix, p)| {
            let series = history.pool(&p.name);
            let backends: Vec<Value> = p
                .members
                .iter()
                .map(|&g| {
                    let b = &snap.backends[g];
                    let rps = series
                        .and_then(|ps| ps.backends.iter().find(|x| x.id == *b.id))
                        .and_then(|x| x.requests.last().copied())
                        .unwrap_or(0);
                    json!(Row {
                        view: BackendView::of(snap, b, now, quiet),
                        rps,
                        errors: b.live.counters.errors(),
                    })
                })
                .collect();
            let mut requests = Map::new();
            let mut errors = Map::new();
            let mut outcomes = Map::new();
            let (mut imbalance, mut repins, mut takeovers) = (json!([]), json!([]), json!([]));
            if let Some(ps) = series {
                for b in &ps.backends {
                    requests.insert(b.id.clone(), ring(&b.requests));
                    errors.insert(b.id.clone(), ring(&b.errors));
                }
                for (o, r) in Outcome::ALL.iter().zip(&ps.outcomes) {
                    outcomes.insert(o.as_str().into(), ring(r));
                }
                imbalance = ring(&ps.imbalance);
                repins = ring(&ps.repins);
                takeovers = ring(&ps.takeovers);
            }
            json!({
                "name": &*p.name,
                "mode": format!("{:?}", snap.pool_config(ix).affinity.mode).to_lowercase(),
                "imbalance": p.live.imbalance(),
                "backends": backends,
                "series": {
                    "requests": requests,
                    "errors": errors,
                    "imbalance": imbalance,
                    "repins": repins,
                    "takeovers": takeovers,
                    "outcomes": outcomes,
                },
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": history.t.last().copied().unwrap_or(now),
        "stopping": stopping,
        "t": ring(&history.t),
        "latency_ms": { "p50": ring(&history.p50), "p99": ring(&history.p99) },
        "pools": pools,
    })
}
