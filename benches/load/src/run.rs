//! One run from start to report: own backends and stickyd up (or the target resolved), the
//! load threads, the scenario, RSS sampling and the progress line side by side, then the idle
//! phase, stickyd stopped, and the report printed and written.
//!
//! Every way out (error, Ctrl-C, panic) drops the [`Stickyd`] guard, which stops the process.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::backends::{Backend, Common};
use crate::cli::{Mode, Model, Plan};
use crate::client::Target;
use crate::drive::{self, Counters, Liveness, Shared};
use crate::recovery::{Recovery, RecoveryRow};
use crate::report::{
    CpuInfo, Facts, Harness, LoadInfo, ModeInfo, Report, RssSample, fmt_f, fmt_int,
};
use crate::stats::{self, ThreadStats};
use crate::stickyd::{self, Spec, Stickyd};
use crate::{html, idle, procfs, scenario};

/// How a run ended.
pub struct Finished {
    /// `None` for `--backends-only`.
    pub report: Option<Report>,
    pub interrupted: bool,
}

/// Counts SIGINT/SIGTERM: 1 asks the run to stop and report, 2 abandons it.
fn watch_signals() -> Result<watch::Receiver<u32>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
            if *tx.borrow() == 1 {
                eprintln!("\nload: stopping (again to abandon the run)");
            }
        }
    });
    Ok(rx)
}

pub async fn run(plan: Plan, argv: Vec<String>) -> Result<Finished, String> {
    let signals = watch_signals()?;
    let abandon = {
        let mut s = signals.clone();
        async move {
            let _ = s.wait_for(|n| *n >= 2).await;
        }
    };
    tokio::select! {
        r = run_inner(plan, argv, signals.clone()) => r,
        _ = abandon => {
            // Dropping run_inner's future dropped the stickyd guard: the process is stopped.
            eprintln!("load: run abandoned on a second signal; no report");
            Ok(Finished { report: None, interrupted: true })
        }
    }
}

async fn run_inner(
    plan: Plan,
    argv: Vec<String>,
    signals: watch::Receiver<u32>,
) -> Result<Finished, String> {
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let epoch = Instant::now();
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();

    let own = match plan.mode {
        Mode::Target { .. } => 0,
        Mode::Direct => 1,
        _ => plan.backends,
    };
    let recovery = Arc::new(Recovery::default());
    let common = Common::new(plan.replicate.is_some(), epoch, recovery.clone());
    let mut backends = Vec::with_capacity(own);
    for i in 1..=own {
        let id = format!("b{i}");
        backends.push(
            Backend::start(&id, any, common.clone())
                .await
                .map_err(|e| format!("cannot start backend {id}: {e}"))?,
        );
    }
    if let Mode::BackendsOnly = plan.mode {
        return backends_only(&plan, &backends, signals).await;
    }

    let conns = match plan.model {
        Model::Closed { concurrency } => concurrency,
        Model::Open { max_inflight, .. } => max_inflight,
    } as u64;
    let idle_n = plan.idle_conns.unwrap_or(0) as u64;
    idle::ensure_budget(
        idle_n + conns + 256 * (own as u64 + 1) + 1024,
        idle_n.max(conns),
    )?;

    let tmp = tempfile::Builder::new()
        .prefix("stickyd-load-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let out_dir = plan
        .json
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;

    let mut stickyd: Option<Stickyd> = None;
    let (target, kind, target_label, names) = match &plan.mode {
        Mode::Stickyd { binary, haproxy } => {
            let key_file = tmp.path().join("key");
            stickyd::write_key(&key_file)?;
            let listen = stickyd::free_addr()?;
            let spec = Spec {
                listen,
                worker_threads: plan.worker_threads,
                max_connections: (idle_n + conns + 1000).max(10_000) as usize,
                header_read_timeout: plan.idle_conns.map(|_| {
                    (plan.idle_hold + Duration::from_secs(60)).max(Duration::from_secs(10))
                }),
                key_file,
                backends: backends.iter().map(|b| (b.id.clone(), b.addr)).collect(),
                new_sessions: plan.new_sessions.clone(),
                max_life: plan.max_life,
                replication: plan.replicate,
                admin: plan.admin,
                haproxy: *haproxy,
            };
            let target = target_for(&plan, listen, &listen.to_string())?;
            // Next to the JSON report and named after it, so runs with their own --json keep
            // their own log.
            let log = plan.json.with_extension("stickyd.log");
            let s = stickyd.insert(Stickyd::spawn(binary, tmp.path(), spec, &log)?);
            s.wait_ready(&target, Duration::from_secs(15)).await?;
            if let (Some(a), false) = (plan.admin, *haproxy) {
                eprintln!("dashboard: http://{a}/");
            }
            (
                target,
                if *haproxy { "haproxy" } else { "stickyd" },
                format!("http://{listen}"),
                plan.backend_ids(),
            )
        }
        Mode::Direct => {
            let addr = backends[0].addr;
            let target = target_for(&plan, addr, &addr.to_string())?;
            (
                target,
                "direct",
                format!("http://{addr}"),
                vec!["b1".to_string()],
            )
        }
        Mode::Target { url } => {
            let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
            let host_port = match url.port_u16() {
                Some(_) => authority.to_string(),
                None => format!("{authority}:80"),
            };
            let addr = tokio::net::lookup_host(&host_port)
                .await
                .map_err(|e| format!("cannot resolve {host_port}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host_port} resolves to no address"))?;
            let target = target_for(&plan, addr, authority)?;
            (target, "target", url.to_string(), Vec::new())
        }
        Mode::BackendsOnly => unreachable!("handled above"),
    };
    let pid = stickyd.as_ref().map(|s| s.pid).or(plan.rss_pid);

    let mut result = None;
    if !plan.duration.is_zero() {
        result = Some(
            load_phase(
                &plan,
                target.clone(),
                names.clone(),
                epoch,
                &mut backends,
                stickyd.as_mut(),
                pid,
                signals.clone(),
                recovery.clone(),
            )
            .await?,
        );
    }
    let interrupted_now = || *signals.borrow() >= 1;

    let idle = match plan.idle_conns {
        Some(n) if !interrupted_now() => {
            let protocol = if plan.idle_h2 {
                idle::Protocol::H2c
            } else {
                idle::Protocol::Http1
            };
            if !plan.quiet {
                eprintln!("load: opening {n} idle {} connections", protocol.name());
            }
            let (tx, rx) = watch::channel(false);
            let mut s = signals.clone();
            let watcher = tokio::spawn(async move {
                let _ = s.wait_for(|n| *n >= 1).await;
                let _ = tx.send(true);
            });
            let r = idle::hold(
                Arc::new(target.clone()),
                protocol,
                n,
                pid,
                plan.idle_hold,
                plan.timeout,
                rx,
            )
            .await;
            watcher.abort();
            Some(r)
        }
        _ => None,
    };

    let load = result.unwrap_or_else(|| LoadResult::empty(&names));
    let stickyd_exit = stickyd.as_mut().map(|s| s.stop(Duration::from_secs(5)));
    let own_backends = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let before = load.scenario.served_at_measure.get(i).copied().unwrap_or(0);
            let state = if b.is_up() { "up" } else { "down" };
            (
                b.id.clone(),
                (b.served().saturating_sub(before), state.to_string()),
            )
        })
        .collect();
    let own_repl = backends
        .iter()
        .map(|b| (b.id.clone(), b.repl_stats()))
        .collect();
    let interrupted = interrupted_now();
    let mut notes = Vec::new();
    if let Some(n) = plan.replicate {
        notes.push(format!(
            "--replicate: stickyd ran with [replication] backups = {n}; the own backends pushed each session's state to the backups named in X-Stickyd-Backup before answering, and promoted the replica on X-Stickyd-Takeover"
        ));
    }
    if kind == "haproxy" {
        notes.push(
            "--haproxy: session state is checked as with stickyd (the own backends' counters); HAProxy has no replication".into(),
        );
    }
    if kind == "target" {
        notes.push(
            "--target: affinity violations assume every backend of the target was usable all the time"
                .to_string(),
        );
    }
    if let Some(s) = &stickyd {
        if let Some(n) = backends.first().map(Backend::checks) {
            notes.push(format!(
                "stickyd ran with health checks every 500ms (rise 2, fall 2); b1 answered {n} checks"
            ));
        }
        if s.spec.header_read_timeout.is_some() {
            notes.push("header_read_timeout was raised for --idle-conns".into());
        }
    }
    if matches!(plan.model, Model::Open { .. }) {
        notes.push(
            "open loop: requests go out up to 1 ms before their intended time (the runtime's timers tick in milliseconds) and latency counts from the earlier of intended and actual send; the send lag is how late they went out (1µs = not late)".into(),
        );
    }
    let responses = load.stats.responses;
    let stickyd_cpu = match (load.cpu_at_end, load.scenario.cpu_at_measure) {
        (Some(end), Some(start)) => Some((end - start).max(0.0)),
        _ => None,
    };
    let facts = Facts {
        harness: Harness {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix_ms,
            args: argv,
        },
        mode: ModeInfo {
            kind: kind.into(),
            target: target_label,
            stickyd_binary: stickyd.as_ref().map(|s| s.binary.display().to_string()),
            stickyd_pid: stickyd.as_ref().map(|s| s.pid),
            stickyd_worker_threads: stickyd.as_ref().map(|s| s.spec.worker_threads),
            stickyd_log: stickyd.as_ref().map(|s| s.log_path.display().to_string()),
            stickyd_exit: stickyd_exit.flatten().map(|s| s.to_string()),
            stickyd_log_problems: stickyd.as_ref().map(Stickyd::log_problems),
            backends_started: backends.len(),
            backend_threads: (own > 0).then_some(plan.backend_threads),
            backend_header: plan.backend_header.to_string(),
            host: plan.host.clone(),
        },
        load: load_info(&plan),
        measured_s: load.measured_s,
        interrupted,
        connections: match plan.model {
            Model::Closed { concurrency } => concurrency as u64,
            Model::Open { .. } => 0,
        },
        open_loop: matches!(plan.model, Model::Open { .. }),
        liveness_known: kind != "target",
        own_backends,
        rss: pid.map(|p| (p, load.rss.clone())),
        idle,
        cpu: CpuInfo {
            load_generator_s: load.client_cpu_s,
            backends_s: (own > 0)
                .then(|| procfs::own_threads_cpu_secs("backends"))
                .flatten(),
            stickyd_s: stickyd_cpu,
            stickyd_requests_per_cpu_s: stickyd_cpu
                .filter(|c| *c > 0.0)
                .map(|c| responses as f64 / c),
        },
        events: load.scenario.events.clone(),
        periodic_reloads: load.scenario.periodic.clone(),
        replicate: plan.replicate,
        own_repl,
        recovery: load.recovery.clone(),
        notes,
    };
    let report = Report::build(&load.stats, facts);
    print!("{}", report.render_text());
    write_file(
        &plan.json,
        &serde_json::to_string_pretty(&report)
            .map_err(|e| format!("cannot encode the report: {e}"))?,
    )?;
    write_file(&plan.html, &html::render(&report))?;
    println!(
        "\nreports: {} and {}",
        plan.json.display(),
        plan.html.display()
    );
    drop(stickyd);
    drop(tmp);
    Ok(Finished {
        report: Some(report),
        interrupted,
    })
}

/// The request template for the address driven, `addr`: every request (load, idle
/// connections, stickyd's start-up probe) carries `--host` as its Host header, or else
/// `default_host`, the address as the harness knows it (listener, `--target` authority or
/// backend address).
fn target_for(plan: &Plan, addr: SocketAddr, default_host: &str) -> Result<Target, String> {
    Target::new(
        addr,
        plan.host.as_deref().unwrap_or(default_host),
        &plan.path,
        plan.method.clone(),
        plan.backend_header.clone(),
    )
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn load_info(plan: &Plan) -> LoadInfo {
    let (model, concurrency, rate, max_inflight) = match plan.model {
        Model::Closed { concurrency } => ("closed", Some(concurrency), None, None),
        Model::Open { rate, max_inflight } => ("open", None, Some(rate), Some(max_inflight)),
    };
    LoadInfo {
        model: model.into(),
        concurrency,
        rate,
        max_inflight,
        threads: plan.threads,
        duration_s: plan.duration.as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
        timeout_s: plan.timeout.as_secs_f64(),
        method: plan.method.to_string(),
        path: plan.path.to_string(),
        seed: plan.seed,
        fresh_only: plan.fresh_only,
        min_requests: plan.min_requests,
        max_requests: plan.max_requests,
        pareto_alpha: plan.pareto_alpha,
    }
}

/// What the load phase produced.
struct LoadResult {
    stats: ThreadStats,
    measured_s: f64,
    scenario: scenario::Outcome,
    rss: Vec<RssSample>,
    cpu_at_end: Option<f64>,
    /// CPU seconds of the load threads.
    client_cpu_s: Option<f64>,
    /// One row per kill.
    recovery: Vec<RecoveryRow>,
}

impl LoadResult {
    fn empty(names: &[String]) -> LoadResult {
        LoadResult {
            stats: ThreadStats::new(1, names),
            measured_s: 0.0,
            scenario: scenario::Outcome::default(),
            rss: Vec::new(),
            cpu_at_end: None,
            client_cpu_s: None,
            recovery: Vec::new(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn load_phase(
    plan: &Plan,
    target: Target,
    names: Vec<String>,
    epoch: Instant,
    backends: &mut Vec<Backend>,
    stickyd: Option<&mut Stickyd>,
    pid: Option<u32>,
    signals: watch::Receiver<u32>,
    recovery: Arc<Recovery>,
) -> Result<LoadResult, String> {
    let start = Instant::now();
    let measure = start + plan.warmup;
    let end = measure + plan.duration;
    let up = backends.len();
    let shared = Arc::new(Shared {
        target,
        users: plan.users,
        fresh_only: plan.fresh_only,
        seed: plan.seed,
        timeout: plan.timeout,
        epoch,
        start,
        measure,
        end,
        seconds: plan.duration.as_secs_f64().ceil().max(1.0) as usize,
        stop: Default::default(),
        counters: (0..plan.threads).map(|_| Counters::default()).collect(),
        liveness: Liveness::new(up, names.len().saturating_sub(up)),
        names: names.clone(),
        replicate: plan.replicate.is_some(),
        recovery: recovery.clone(),
    });
    let receivers = drive::spawn(&shared, plan.model, plan.threads)?;
    // True once the threads are done or the run is interrupted.
    let (done_tx, done_rx) = watch::channel(false);
    let mut stopped_at = None;

    let threads = async {
        let mut all = Vec::with_capacity(receivers.len());
        for rx in receivers {
            match rx.await {
                Ok(st) => all.push(st),
                Err(_) => {
                    let _ = done_tx.send(true);
                    return Err("a load thread failed (see above)".to_string());
                }
            }
        }
        let _ = done_tx.send(true);
        Ok(all)
    };
    let stopper = {
        let mut s = signals.clone();
        let shared = shared.clone();
        let done_tx = &done_tx;
        let mut d = done_rx.clone();
        let stopped_at = &mut stopped_at;
        async move {
            tokio::select! {
                _ = s.wait_for(|n| *n >= 1) => {
                    *stopped_at = Some(Instant::now());
                    shared.stop.store(true, Ordering::Relaxed);
                    let _ = done_tx.send(true);
                }
                _ = d.wait_for(|d| *d) => {}
            }
        }
    };
    let sampler = sample_rss(pid, measure, done_rx.clone());
    let progress = progress(&shared, plan.quiet, done_rx.clone());
    let scenario = scenario::run(plan, &shared, backends, stickyd, pid, done_rx.clone());
    let (threads, _, rss, _, scenario) =
        tokio::join!(threads, stopper, sampler, progress, scenario);
    let threads = threads?;
    let cpu_at_end = pid.and_then(procfs::cpu_secs);
    let client_cpu_s = threads.iter().map(|t| t.cpu_s).sum::<Option<f64>>();
    let threads: Vec<ThreadStats> = threads.into_iter().map(|t| t.stats).collect();
    let measured_end = stopped_at.map_or(end, |t| t.min(end));
    let measured_s = measured_end
        .saturating_duration_since(measure)
        .as_secs_f64();
    Ok(LoadResult {
        stats: stats::merge(threads, &names),
        measured_s,
        scenario,
        rss,
        cpu_at_end,
        client_cpu_s,
        recovery: recovery.rows(measure.saturating_duration_since(epoch).as_micros() as u64),
    })
}

/// Samples `pid`'s RSS once a second until `done`, then once more.
async fn sample_rss(
    pid: Option<u32>,
    measure: Instant,
    mut done: watch::Receiver<bool>,
) -> Vec<RssSample> {
    let Some(pid) = pid else {
        return Vec::new();
    };
    let t = |now: Instant| {
        if now >= measure {
            now.duration_since(measure).as_secs_f64()
        } else {
            -measure.duration_since(now).as_secs_f64()
        }
    };
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.wait_for(|d| *d) => break,
        }
        if let Some(kib) = procfs::rss_kib(pid) {
            out.push(RssSample {
                t_s: t(Instant::now()),
                kib,
            });
        }
    }
    if let Some(kib) = procfs::rss_kib(pid) {
        out.push(RssSample {
            t_s: t(Instant::now()),
            kib,
        });
    }
    out
}

/// The progress line on stderr: rewritten in place on a terminal, a line every 5 s otherwise.
async fn progress(shared: &Shared, quiet: bool, mut done: watch::Receiver<bool>) {
    if quiet {
        return;
    }
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let total = shared.end.duration_since(shared.start).as_secs_f64();
    let mut last = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.wait_for(|d| *d) => break,
        }
        let now = Instant::now();
        let (n, errors) = shared.counters.iter().fold((0, 0), |(n, e), c| {
            (
                n + c.done.load(Ordering::Relaxed),
                e + c.errors.load(Ordering::Relaxed),
            )
        });
        let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, n);
        let elapsed = now.duration_since(shared.start).as_secs_f64().min(total);
        let phase = if now < shared.measure {
            "  (warmup)"
        } else {
            ""
        };
        let line = format!(
            "[{elapsed:5.1}s / {total:.1}s] {:>12} req/s  errors {}{phase}",
            fmt_f(rate, 0),
            fmt_int(errors)
        );
        if tty {
            eprint!("\r{line:<72}");
        } else {
            eprintln!("{line}");
        }
    }
    if tty {
        eprint!("\r{:<72}\r", "");
    }
}

/// `--backends-only`: serve until the duration is over or a signal comes.
async fn backends_only(
    plan: &Plan,
    backends: &[Backend],
    mut signals: watch::Receiver<u32>,
) -> Result<Finished, String> {
    for b in backends {
        println!(
            "{} http://{} (incarnation {})",
            b.id,
            b.addr,
            b.incarnation().unwrap_or_default()
        );
    }
    if plan.replicate.is_some() {
        println!(
            "replication protocol on: the backends push to X-Stickyd-Backup and promote on X-Stickyd-Takeover"
        );
    }
    println!(
        "serving for {}s (Ctrl-C to stop)",
        fmt_f(plan.duration.as_secs_f64(), 1)
    );
    let interrupted = tokio::select! {
        _ = tokio::time::sleep(plan.duration) => false,
        _ = signals.wait_for(|n| *n >= 1) => true,
    };
    for b in backends {
        let r = b.repl_stats();
        println!(
            "{} served {} requests ({} health checks); sessions: {} started over; replication: {} takeovers promoted, {} without a replica, {} pushes ok, {} failed, {} replicas received",
            b.id,
            fmt_int(b.served()),
            fmt_int(b.checks()),
            fmt_int(r.unknown),
            fmt_int(r.promoted),
            fmt_int(r.no_replica),
            fmt_int(r.pushes_ok),
            fmt_int(r.pushes_failed()),
            fmt_int(r.replicas_received)
        );
    }
    Ok(Finished {
        report: None,
        interrupted,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::client::{exchange, ready_conn, recording_server};
    use crate::users::User;

    fn plan(extra: &[&str]) -> Plan {
        let args =
            crate::cli::Args::try_parse_from(std::iter::once("load").chain(extra.iter().copied()))
                .expect("args");
        Plan::from_args(args, "/bin/stickyd").expect("plan")
    }

    /// Two requests of one user on a keep-alive connection to a loopback server; the request
    /// heads it received.
    async fn two_requests(plan: &Plan, default_host: &str) -> Vec<String> {
        let (addr, mut heads) = recording_server().await;
        let target = target_for(plan, addr, default_host).expect("target");
        let mut slot = None;
        let mut user = User::new(2, false);
        for _ in 0..2 {
            let conn = ready_conn(&mut slot, addr).await.expect("connect");
            let a = exchange(conn, &target, &mut user).await.expect("answer");
            assert_eq!(a.backend.expect("backend"), "b1");
        }
        let mut got = Vec::new();
        while let Ok(h) = heads.try_recv() {
            got.push(String::from_utf8(h).expect("text"));
        }
        got
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn requests_carry_the_chosen_host_and_keep_their_cookie() {
        let p = plan(&["--host", "Shop.Example.com:8080", "--path", "/cart"]);
        let heads = block_on(two_requests(&p, "127.0.0.1:1"));
        assert_eq!(
            heads,
            [
                "GET /cart HTTP/1.1\r\nhost: Shop.Example.com:8080\r\n\r\n",
                "GET /cart HTTP/1.1\r\nhost: Shop.Example.com:8080\r\ncookie: stickyd_shop=t1\r\n\r\n",
            ]
        );
        // With --target too, --host replaces the URL's authority (the default passed here).
        let p = plan(&["--target", "http://127.0.0.1:1/", "--host", "[::1]"]);
        let heads = block_on(two_requests(&p, "127.0.0.1:1"));
        assert_eq!(heads.len(), 2);
        assert!(
            heads
                .iter()
                .all(|h| h.starts_with("GET / HTTP/1.1\r\nhost: [::1]\r\n")),
            "{heads:?}"
        );
    }

    #[test]
    fn without_host_requests_carry_the_address_driven() {
        let heads = block_on(two_requests(&plan(&[]), "127.0.0.1:4321"));
        assert_eq!(heads.len(), 2);
        assert!(
            heads
                .iter()
                .all(|h| h.starts_with("GET / HTTP/1.1\r\nhost: 127.0.0.1:4321\r\n")),
            "{heads:?}"
        );
    }
}
