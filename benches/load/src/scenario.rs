//! The scenario runner: at the start of measurement it snapshots the backends' counters (and
//! zeroes their replication ones) and stickyd's CPU time, then runs the timed steps (kill,
//! restart, add a backend, reload) and the periodic reloads until the end of the run,
//! recording each as an event. It keeps
//! [`Liveness`](crate::drive::Liveness) in step with what it does to the backends, and marks
//! every kill (a restart of a running backend is one too) in
//! [`Recovery`](crate::recovery::Recovery).

use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::watch;

use crate::backends::{Backend, Common};
use crate::cli::{Action, Plan};
use crate::drive::Shared;
use crate::procfs;
use crate::report::{Event, PeriodicReloads};
use crate::stickyd::Stickyd;

/// What the runner saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub periodic: Option<PeriodicReloads>,
    /// Each backend's served count at the start of measurement (0 for added ones).
    pub served_at_measure: Vec<u64>,
    /// stickyd's CPU seconds at the start of measurement.
    pub cpu_at_measure: Option<f64>,
}

/// Waits until `at`; false when the run finished or was interrupted first.
async fn wait_until(at: Instant, done: &mut watch::Receiver<bool>) -> bool {
    if *done.borrow() {
        return false;
    }
    let finished = tokio::select! {
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => false,
        _ = done.wait_for(|d| *d) => true,
    };
    !finished && !*done.borrow()
}

/// Runs the scenario of `plan`. `done` turns true when the load threads have finished or the
/// run is interrupted.
pub async fn run(
    plan: &Plan,
    shared: &Shared,
    backends: &mut Vec<Backend>,
    mut stickyd: Option<&mut Stickyd>,
    rss_pid: Option<u32>,
    mut done: watch::Receiver<bool>,
) -> Outcome {
    let mut out = Outcome::default();
    if !wait_until(shared.measure, &mut done).await {
        return out;
    }
    out.served_at_measure = backends.iter().map(Backend::served).collect();
    for b in backends.iter() {
        b.reset_stats();
    }
    out.cpu_at_measure = rss_pid.and_then(procfs::cpu_secs);
    let mut steps = plan.steps.iter().peekable();
    let every = plan.reload_every;
    let mut next_periodic = every.map(|e| shared.measure + e);
    let mut periodic = every.map(|e| PeriodicReloads {
        every_ms: e.as_millis() as u64,
        sent: 0,
        failed: 0,
    });
    if let Some(e) = every {
        out.events.push(Event {
            t_s: 0.0,
            action: format!("reload every {}ms", e.as_millis()),
            ok: true,
            detail: "periodic SIGHUPs until the end (counted in periodic_reloads)".into(),
        });
    }
    loop {
        let step_at = steps.peek().map(|s| shared.measure + s.at);
        let next = match (step_at, next_periodic) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        if next >= shared.end || !wait_until(next, &mut done).await {
            break;
        }
        if step_at == Some(next) {
            let Some(step) = steps.next() else { break };
            let t_s = Instant::now()
                .saturating_duration_since(shared.measure)
                .as_secs_f64();
            let result = apply(
                &step.action,
                plan,
                shared,
                backends,
                &mut out.served_at_measure,
                stickyd.as_deref_mut(),
            )
            .await;
            let (ok, detail) = match result {
                Ok(d) => (true, d),
                Err(e) => (false, e),
            };
            out.events.push(Event {
                t_s,
                action: step.action.label(),
                ok,
                detail,
            });
        } else if let (Some(p), Some(e)) = (periodic.as_mut(), every) {
            match stickyd.as_deref_mut().map(Stickyd::reload) {
                Some(Ok(())) => p.sent += 1,
                _ => p.failed += 1,
            }
            // Keep the grid; if a reload overran, skip to the next slot in the future.
            let mut n = next + e;
            let now = Instant::now();
            while n <= now {
                n += e;
            }
            next_periodic = Some(n);
        }
    }
    out.periodic = periodic;
    out
}

async fn apply(
    action: &Action,
    plan: &Plan,
    shared: &Shared,
    backends: &mut Vec<Backend>,
    served_at_measure: &mut Vec<u64>,
    stickyd: Option<&mut Stickyd>,
) -> Result<String, String> {
    let find = |id: &str, backends: &[Backend]| {
        backends
            .iter()
            .position(|b| b.id == id)
            .ok_or_else(|| format!("no backend {id}"))
    };
    let now_us = || shared.epoch.elapsed().as_micros() as u64;
    match action {
        Action::Kill(id) => {
            let i = find(id, backends)?;
            // Down before the first refused connect, so no refusal is judged against it.
            shared.liveness.down(i);
            if backends[i].is_up() {
                shared.recovery.kill(id, now_us());
            }
            backends[i].kill().await;
            Ok(format!("{} closed", backends[i].addr))
        }
        Action::Restart(id) => {
            let i = find(id, backends)?;
            shared.liveness.down(i);
            if backends[i].is_up() {
                // The running process dies: its sessions are gone as in a kill.
                shared.recovery.kill(id, now_us());
            }
            backends[i]
                .restart()
                .await
                .map_err(|e| format!("cannot listen on {} again: {e}", backends[i].addr))?;
            let grace = plan.recovery_grace;
            shared
                .liveness
                .up_from(i, now_us() + grace.as_micros() as u64);
            Ok(format!(
                "listening on {}; usable for affinity after {}ms",
                backends[i].addr,
                grace.as_millis()
            ))
        }
        Action::AddBackend(id) => {
            let stickyd = stickyd.ok_or("no stickyd to reconfigure")?;
            let any: SocketAddr = ([127, 0, 0, 1], 0).into();
            let common = Common::new(shared.replicate, shared.epoch, shared.recovery.clone());
            let b = Backend::start(id, any, common)
                .await
                .map_err(|e| format!("cannot start {id}: {e}"))?;
            let addr = b.addr;
            let i = backends.len();
            backends.push(b);
            served_at_measure.push(0);
            shared.liveness.up_from(i, now_us());
            stickyd.spec.backends.push((id.clone(), addr));
            stickyd.reload()?;
            Ok(format!("{id} at {addr}; config rewritten, SIGHUP sent"))
        }
        Action::Reload => {
            let stickyd = stickyd.ok_or("no stickyd to reload")?;
            stickyd.reload()?;
            Ok("SIGHUP sent, config unchanged".into())
        }
    }
}
