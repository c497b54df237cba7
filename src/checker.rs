//! Active health checks: one task per backend sends `GET <path>` every `interval` over a fresh
//! connection and feeds the result to the backend's health machine. With active checks off, the
//! task only brings passively ejected backends back after `eject_time`.
//!
//! The I/O side of health; the rules live in [`crate::health`]. Each transition is logged once.
//! A passing check's `X-Stickyd-Incarnation` is noted in the backend's live state: a change
//! means a restarted process (replication takes its sessions over on their backups).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backend::BackendLive;
use crate::config::{Config, Health};
use crate::health::{StatusRange, Transition};
use crate::state::Snapshot;

/// The response header a backend names its process with (any opaque value, drawn once per
/// process): a change means the backend restarted and lost its in-memory sessions.
static INCARNATION: header::HeaderName = header::HeaderName::from_static("x-stickyd-incarnation");

/// The running checkers, one per backend of the snapshot last synced; stopped when dropped.
#[derive(Debug, Default)]
pub struct Checkers {
    /// The config they run with: a snapshot of another one (a reload) restarts them all.
    config: Option<Arc<Config>>,
    /// By backend id.
    tasks: HashMap<Arc<str>, Task>,
}

/// One backend's checker.
#[derive(Debug)]
struct Task {
    /// The live state it feeds.
    live: Arc<BackendLive>,
    /// The address it checks.
    address: http::uri::Authority,
    handle: JoinHandle<()>,
}

impl Drop for Checkers {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.handle.abort();
        }
    }
}

impl Checkers {
    /// Starts and stops checkers to match `snap`: one per backend, each with its pool's
    /// `[health]`. A snapshot of the same config (the backends discovery changed) keeps the
    /// checkers of the backends that stay at the same address, so their rhythm and their
    /// rise/fall counts go on; a new config restarts every checker with its settings.
    pub fn sync(&mut self, snap: &Snapshot) {
        if !self
            .config
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &snap.config))
        {
            for (_, t) in self.tasks.drain() {
                t.handle.abort();
            }
            self.config = Some(snap.config.clone());
        }
        self.tasks.retain(|id, t| {
            let keep = snap
                .backends
                .iter()
                .any(|b| b.id == *id && Arc::ptr_eq(&b.live, &t.live) && b.authority == t.address);
            if !keep {
                t.handle.abort();
            }
            keep
        });
        for b in &snap.backends {
            if self.tasks.contains_key(&b.id) {
                continue;
            }
            let h = &snap.pool_config(b.pool).health;
            let probe = Probe {
                address: b.authority.to_string(),
                origin: b.origin.clone(),
                h2: b.h2,
                host: h.host.clone().unwrap_or_else(|| b.authority.to_string()),
                path: h.path.clone(),
                timeout: h.timeout,
                expect: h.expect_status,
            };
            let handle = tokio::spawn(run(b.live.clone(), probe, settings(h)));
            self.tasks.insert(
                b.id.clone(),
                Task {
                    live: b.live.clone(),
                    address: b.authority.clone(),
                    handle,
                },
            );
        }
    }
}

/// Starts one checker per backend of `snap`, each with its pool's `[health]`.
pub fn spawn(snap: &Snapshot) -> Checkers {
    let mut c = Checkers::default();
    c.sync(snap);
    c
}

#[derive(Clone, Copy)]
struct Settings {
    active: bool,
    interval: Duration,
    eject_time: Duration,
}

fn settings(h: &Health) -> Settings {
    Settings {
        active: h.enabled,
        interval: h.interval,
        eject_time: h.eject_time,
    }
}

struct Probe {
    address: String,
    origin: Option<crate::tls::Origin>,
    h2: bool,
    host: String,
    path: String,
    timeout: Duration,
    expect: StatusRange,
}

async fn run(live: Arc<BackendLive>, probe: Probe, s: Settings) {
    let mut tick = tokio::time::interval(if s.active {
        s.interval
    } else {
        s.eject_time.min(s.interval).max(Duration::from_millis(100))
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = if s.active {
            let result = probe.check().await;
            match &result {
                Err(why) => debug!(backend = %live.id(), error = %why, "health check failed"),
                Ok(incarnation) => {
                    let now = u32::try_from(crate::clock::unix_secs()).unwrap_or(u32::MAX);
                    if live.incarnation.note(incarnation.as_deref(), now) {
                        info!(
                            backend = %live.id(),
                            "backend restarted (a new X-Stickyd-Incarnation): its sessions go to their backups"
                        );
                    }
                }
            }
            live.health
                .check_result(result.is_ok(), crate::clock::epoch_ms())
                .map(|t| (t, result.err().unwrap_or_default()))
        } else {
            let cutoff = Instant::now().checked_sub(s.eject_time);
            cutoff
                .and_then(|c| {
                    live.health
                        .restore_if_ejected_before(c, crate::clock::epoch_ms())
                })
                .map(|t| (t, "ejection time elapsed".to_string()))
        };
        match t {
            Some((Transition::Up, _)) => info!(backend = %live.id(), "backend is up"),
            Some((Transition::Down, why)) => {
                warn!(backend = %live.id(), reason = %why, "backend is down")
            }
            None => {}
        }
    }
}

impl Probe {
    /// One check: connect, `GET path`, judge the status. The whole exchange is bounded by the
    /// timeout; the connection is not reused. `Ok` carries the incarnation
    /// (`X-Stickyd-Incarnation`) of a passing check's response, if it named one.
    async fn check(&self) -> Result<Option<Vec<u8>>, String> {
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn exchange(&self) -> Result<Option<Vec<u8>>, String> {
        let stream = crate::connect::open(&self.address, self.origin.as_ref(), self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        // HTTP/2 wants the absolute form (:scheme, :authority); HTTP/1.1 the path, and a close.
        let mut req = if self.h2 {
            let scheme = if self.origin.is_some() {
                "https"
            } else {
                "http"
            };
            Request::get(format!("{scheme}://{}{}", self.address, self.path))
        } else {
            Request::get(self.path.as_str()).header(header::CONNECTION, "close")
        };
        req = req
            .header(header::HOST, self.host.as_str())
            .header(header::USER_AGENT, "stickyd-health");
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let io = TokioIo::new(stream);
        let (resp, driver) = if self.h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            let driver = tokio::spawn(conn);
            (send.send_request(req).await, driver)
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let driver = tokio::spawn(conn);
            (send.send_request(req).await, driver)
        };
        driver.abort();
        let resp = resp.map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        if self.expect.contains(status) {
            Ok(resp
                .headers()
                .get(&INCARNATION)
                .map(|v| v.as_bytes().to_vec()))
        } else {
            Err(format!("status {status}"))
        }
    }
}
