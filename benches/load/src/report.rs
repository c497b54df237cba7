//! The report: one serializable structure built from the merged records and what the control
//! side saw (events, RSS, CPU), rendered as the stdout table; `html` renders the same report.
//!
//! Pure: no I/O. Everything it shows is in the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::backends::ReplStats;
use crate::recovery::RecoveryRow;
use crate::stats::{
    Percentiles, ThreadStats, closed_loop_interval_us, histogram, imbalance, share,
};

/// The whole report, as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub harness: Harness,
    pub mode: ModeInfo,
    pub load: LoadInfo,
    pub summary: Summary,
    pub latency: LatencyInfo,
    pub errors: ErrorsInfo,
    pub backends: Vec<BackendRow>,
    /// Responses that named no (or an unreadable) backend.
    pub unknown_backend: Counts,
    pub imbalance: Imbalance,
    pub affinity: AffinityInfo,
    /// Sessions whose state was lost, from the own backends' session counters.
    pub state: StateInfo,
    /// `--replicate`: takeovers and replica pushes, by the own backends.
    pub replication: Option<ReplicationInfo>,
    /// One row per kill (or restart of a running backend).
    pub recovery: Vec<RecoveryRow>,
    pub memory: Option<Memory>,
    pub idle: Option<IdleReport>,
    pub cpu: CpuInfo,
    pub events: Vec<Event>,
    pub periodic_reloads: Option<PeriodicReloads>,
    /// One row per second of measurement.
    pub series: Vec<SecondRow>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Harness {
    pub version: String,
    pub started_unix_ms: u64,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeInfo {
    /// "stickyd", "target" or "direct".
    pub kind: String,
    /// The URL or address driven.
    pub target: String,
    pub stickyd_binary: Option<String>,
    pub stickyd_pid: Option<u32>,
    pub stickyd_worker_threads: Option<usize>,
    pub stickyd_log: Option<String>,
    /// stickyd's exit status after SIGTERM.
    pub stickyd_exit: Option<String>,
    /// stickyd log lines at WARN or ERROR.
    pub stickyd_log_problems: Option<usize>,
    /// Backends the harness started (0 with --target).
    pub backends_started: usize,
    pub backend_threads: Option<usize>,
    pub backend_header: String,
    /// `--host`: the Host header every request carried instead of the address driven.
    pub host: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    /// "closed" or "open".
    pub model: String,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub max_inflight: Option<usize>,
    pub threads: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub timeout_s: f64,
    pub method: String,
    pub path: String,
    pub seed: u64,
    pub fresh_only: bool,
    pub min_requests: u32,
    pub max_requests: u32,
    pub pareto_alpha: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Seconds of measurement (shorter than --duration when interrupted).
    pub measured_s: f64,
    pub interrupted: bool,
    /// HTTP responses of any status.
    pub responses: u64,
    /// Responses with a status below 400.
    pub ok: u64,
    /// Failures plus responses of 400 and above.
    pub errors: u64,
    pub requests_per_s: f64,
    pub ok_per_s: f64,
    pub error_pct: f64,
    pub users_started: u64,
    pub sessions: u64,
    /// Open loop: scheduled requests never sent.
    pub unsent: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyInfo {
    /// What the recorded latency measures.
    pub basis: String,
    pub recorded: Percentiles,
    /// Closed loop: corrected for coordinated omission the way wrk does.
    pub corrected: Option<Corrected>,
    /// Open loop: from the actual send.
    pub service: Option<Percentiles>,
    /// Open loop: actual send minus intended send.
    pub send_lag: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Corrected {
    pub interval_us: u64,
    pub percentiles: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorsInfo {
    pub total: u64,
    pub connect: u64,
    pub timeout: u64,
    pub reset_io: u64,
    pub other: u64,
    pub status_4xx: u64,
    pub status_5xx: BTreeMap<String, u64>,
    /// Every 4xx and 5xx by code.
    pub by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub sessions: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendRow {
    pub id: String,
    pub requests: u64,
    pub request_share_pct: f64,
    pub sessions: u64,
    pub session_share_pct: f64,
    /// Requests the backend itself counted during measurement (own backends only).
    pub counted_by_backend: Option<u64>,
    /// State at the end of the run (own backends only).
    pub state: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Imbalance {
    /// max / mean of per-backend requests.
    pub requests: Option<f64>,
    /// max / mean of per-backend sessions.
    pub sessions: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AffinityInfo {
    /// Responses from the user's pinned backend.
    pub stayed: u64,
    /// Responses from another backend than the pinned one.
    pub repins: u64,
    /// Re-pins while the pinned backend was not usable (it was down or just back).
    pub failover_repins: u64,
    /// Re-pins while the pinned backend was usable.
    pub violations: u64,
    pub rule: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateInfo {
    /// Whether responses carried a session counter (`x-session-count`, the own backends').
    pub measured: bool,
    /// Sessions whose counter was compared at least once (a second response).
    pub sessions_checked: u64,
    /// Sessions whose state was lost, each counted once.
    pub sessions_lost: u64,
    /// `sessions_lost` of `sessions_checked`, in percent.
    pub lost_pct: f64,
    /// Responses whose counter showed a loss (a session can lose its state twice).
    pub losses: u64,
    /// Own backends: requests for a session the backend did not have, without a takeover
    /// (it started over).
    pub backends_unknown_sessions: Option<u64>,
    pub rule: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PushFailures {
    pub connect: u64,
    pub timeout: u64,
    /// The backup answered with a status other than 2xx.
    pub status: u64,
    pub io: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplicationBackend {
    pub id: String,
    pub takeovers_promoted: u64,
    pub takeovers_no_replica: u64,
    pub pushes_ok: u64,
    pub pushes_failed: u64,
    pub replicas_received: u64,
    /// Live sessions and replicas held at the end (0 when killed).
    pub sessions_held: usize,
    pub replicas_held: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplicationInfo {
    /// `[replication] backups`.
    pub backups: u8,
    /// Requests with `X-Stickyd-Takeover`.
    pub takeovers: u64,
    /// Of those, the replica was promoted.
    pub takeovers_promoted: u64,
    /// Of those, there was no replica: the session's state was lost.
    pub takeovers_no_replica: u64,
    /// Requests without a takeover for a session the backend did not have live but held a
    /// replica of (a failover that came without `X-Stickyd-Takeover`).
    pub unknown_with_replica: u64,
    pub pushes_ok: u64,
    pub pushes_failed: u64,
    pub push_failures: PushFailures,
    /// Requests whose `X-Stickyd-Backup` the backend could not read.
    pub bad_backup_header: u64,
    /// Latency of successful pushes (µs), the request waits for them.
    pub push_latency: Percentiles,
    pub replicas_received: u64,
    pub backends: Vec<ReplicationBackend>,
}

impl ReplicationInfo {
    /// The sum over the own backends' counters.
    pub fn from_backends(backups: u8, own: &[(String, ReplStats)]) -> ReplicationInfo {
        let sum = |f: &dyn Fn(&ReplStats) -> u64| own.iter().map(|(_, s)| f(s)).sum::<u64>();
        let mut latency = histogram();
        for (_, s) in own {
            let _ = latency.add(&s.push_latency);
        }
        let promoted = sum(&|s| s.promoted);
        let no_replica = sum(&|s| s.no_replica);
        ReplicationInfo {
            backups,
            takeovers: promoted + no_replica,
            takeovers_promoted: promoted,
            takeovers_no_replica: no_replica,
            unknown_with_replica: sum(&|s| s.unknown_with_replica),
            pushes_ok: sum(&|s| s.pushes_ok),
            pushes_failed: sum(&ReplStats::pushes_failed),
            push_failures: PushFailures {
                connect: sum(&|s| s.push_connect),
                timeout: sum(&|s| s.push_timeout),
                status: sum(&|s| s.push_status),
                io: sum(&|s| s.push_io),
            },
            bad_backup_header: sum(&|s| s.bad_backup_header),
            push_latency: Percentiles::of(&latency),
            replicas_received: sum(&|s| s.replicas_received),
            backends: own
                .iter()
                .map(|(id, s)| ReplicationBackend {
                    id: id.clone(),
                    takeovers_promoted: s.promoted,
                    takeovers_no_replica: s.no_replica,
                    pushes_ok: s.pushes_ok,
                    pushes_failed: s.pushes_failed(),
                    replicas_received: s.replicas_received,
                    sessions_held: s.sessions_held,
                    replicas_held: s.replicas_held,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RssSample {
    /// Seconds from the start of measurement (negative: before it).
    pub t_s: f64,
    pub kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub pid: u32,
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
    pub samples: Vec<RssSample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// The idle connections' protocol: "HTTP/1.1" or "HTTP/2 (h2c)" (`--idle-h2`).
    pub protocol: String,
    pub requested: usize,
    /// Connections that connected and got a response.
    pub opened: usize,
    /// Of those, still open when the last sample was taken.
    pub still_open: usize,
    pub failed: BTreeMap<String, u64>,
    pub hold_s: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    /// (held - before) / opened.
    pub bytes_per_conn: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuInfo {
    /// CPU seconds of the load-generator threads (whole run, warmup included).
    pub load_generator_s: Option<f64>,
    pub backends_s: Option<f64>,
    pub stickyd_s: Option<f64>,
    /// Measured responses per stickyd CPU-second (its CPU over the measured time only).
    pub stickyd_requests_per_cpu_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds from the start of measurement.
    pub t_s: f64,
    pub action: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeriodicReloads {
    pub every_ms: u64,
    pub sent: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecondRow {
    pub t_s: u64,
    /// Seconds of measurement in this row: 1, less for the last row of a run that ended
    /// within a second.
    pub width_s: f64,
    pub responses: u64,
    pub ok: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Responses by backend, in the order of `backends`.
    pub backends: Vec<u64>,
    /// Sessions whose state was first seen lost in this second.
    pub state_lost: u64,
    pub rss_kib: Option<u64>,
}

/// What the control side adds to the records.
#[derive(Debug, Clone)]
pub struct Facts {
    pub harness: Harness,
    pub mode: ModeInfo,
    pub load: LoadInfo,
    pub measured_s: f64,
    pub interrupted: bool,
    /// Closed-loop connections (for the correction), 0 in the open loop.
    pub connections: u64,
    pub open_loop: bool,
    /// Whether the harness knows its backends' liveness.
    pub liveness_known: bool,
    /// Per own backend, by id: (requests it counted during measurement, state at the end).
    pub own_backends: BTreeMap<String, (u64, String)>,
    pub rss: Option<(u32, Vec<RssSample>)>,
    pub idle: Option<IdleReport>,
    pub cpu: CpuInfo,
    pub events: Vec<Event>,
    pub periodic_reloads: Option<PeriodicReloads>,
    /// `--replicate`: the backups per session.
    pub replicate: Option<u8>,
    /// The own backends' replication and session counters, by id (empty with --target).
    pub own_repl: Vec<(String, ReplStats)>,
    pub recovery: Vec<RecoveryRow>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn build(stats: &ThreadStats, f: Facts) -> Report {
        let t = &stats.tally;
        let measured = f.measured_s.max(1e-9);
        let errors = stats.errors.total();
        let attempts = stats.responses + errors - stats.errors.status.values().sum::<u64>();
        let seconds = (f.measured_s.ceil() as usize).clamp(1, stats.seconds.len());
        let mut notes = f.notes;
        let corrected = if f.open_loop {
            None
        } else {
            closed_loop_interval_us((measured * 1e6) as u64, stats.responses, f.connections).map(
                |interval_us| Corrected {
                    interval_us,
                    percentiles: Percentiles::of(&stats.latency.clone_correct(interval_us)),
                },
            )
        };
        let backends: Vec<BackendRow> = t
            .names
            .iter()
            .enumerate()
            .map(|(i, id)| BackendRow {
                id: id.clone(),
                requests: t.requests[i],
                request_share_pct: share(t.requests[i], stats.responses),
                sessions: t.sessions[i],
                session_share_pct: share(t.sessions[i], stats.sessions),
                counted_by_backend: f.own_backends.get(id).map(|b| b.0),
                state: f.own_backends.get(id).map(|b| b.1.clone()),
            })
            .collect();
        if stats.responses > 0 && t.unknown_requests == stats.responses {
            notes.push(format!(
                "no response carried the {} header: per-backend shares and affinity cannot be measured",
                f.mode.backend_header
            ));
        }
        let rule = if f.liveness_known && f.replicate.is_some() {
            "a violation is a response from another backend than the user's pinned one (the backend of its previous response) while the pinned backend was usable from that previous response to the end of this request; a backend is not usable while killed and for --recovery-grace after its restart, and with --replicate a kill or restart after the previous response moves the session to its backup with a takeover (not a violation)"
        } else if f.liveness_known {
            "a violation is a response from another backend than the user's pinned one (the backend of its previous response) while the pinned backend was usable for the whole request; a backend is not usable while killed and for --recovery-grace after its restart"
        } else {
            "the harness cannot see the target's backends, so they are assumed usable all the time: every re-pin counts as a violation"
        };
        let memory = f.rss.and_then(|(pid, samples)| {
            let start = samples
                .iter()
                .rev()
                .find(|s| s.t_s <= 0.0)
                .or(samples.first())?;
            let end = samples.iter().rev().find(|s| s.t_s <= f.measured_s + 1.0)?;
            Some(Memory {
                pid,
                rss_start_kib: start.kib,
                rss_peak_kib: samples.iter().map(|s| s.kib).max().unwrap_or(0),
                rss_end_kib: end.kib,
                samples,
            })
        });
        let series = stats.seconds[..seconds]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = Percentiles::of(&s.latency);
                SecondRow {
                    t_s: i as u64,
                    width_s: (f.measured_s - i as f64).clamp(1e-3, 1.0),
                    responses: s.responses,
                    ok: s.ok,
                    errors: s.errors,
                    p50_us: p.p50,
                    p90_us: p.p90,
                    p99_us: p.p99,
                    max_us: p.max,
                    backends: s.backends.clone(),
                    state_lost: s.state_lost,
                    rss_kib: memory.as_ref().and_then(|m| {
                        m.samples
                            .iter()
                            .filter(|r| r.t_s >= i as f64 && r.t_s < (i + 1) as f64)
                            .map(|r| r.kib)
                            .next_back()
                    }),
                }
            })
            .collect();
        let status_5xx = stats
            .errors
            .status
            .range(500..600)
            .map(|(c, n)| (c.to_string(), *n))
            .collect();
        Report {
            harness: f.harness,
            mode: f.mode,
            load: f.load,
            summary: Summary {
                measured_s: f.measured_s,
                interrupted: f.interrupted,
                responses: stats.responses,
                ok: stats.ok,
                errors,
                requests_per_s: stats.responses as f64 / measured,
                ok_per_s: stats.ok as f64 / measured,
                error_pct: share(errors, attempts),
                users_started: stats.users_started,
                sessions: stats.sessions,
                unsent: f.open_loop.then_some(stats.unsent),
            },
            latency: LatencyInfo {
                basis: if f.open_loop {
                    "from the intended send time (open loop: corrected for coordinated omission)"
                } else {
                    "from the actual send (closed loop)"
                }
                .into(),
                recorded: Percentiles::of(&stats.latency),
                corrected,
                service: f.open_loop.then(|| Percentiles::of(&stats.service)),
                send_lag: f.open_loop.then(|| Percentiles::of(&stats.lag)),
            },
            errors: ErrorsInfo {
                total: errors,
                connect: stats.errors.connect,
                timeout: stats.errors.timeout,
                reset_io: stats.errors.io,
                other: stats.errors.other,
                status_4xx: stats.errors.status_4xx(),
                status_5xx,
                by_status: stats
                    .errors
                    .status
                    .iter()
                    .map(|(c, n)| (c.to_string(), *n))
                    .collect(),
            },
            imbalance: Imbalance {
                requests: imbalance(&t.requests),
                sessions: imbalance(&t.sessions),
            },
            backends,
            unknown_backend: Counts {
                requests: t.unknown_requests,
                sessions: t.unknown_sessions,
            },
            affinity: AffinityInfo {
                stayed: stats.stayed,
                repins: stats.repins,
                failover_repins: stats.repins - stats.violations,
                violations: stats.violations,
                rule: rule.into(),
            },
            state: StateInfo {
                measured: stats.state_checked > 0,
                sessions_checked: stats.state_checked,
                sessions_lost: stats.state_lost,
                lost_pct: share(stats.state_lost, stats.state_checked),
                losses: stats.state_losses,
                backends_unknown_sessions: (!f.own_repl.is_empty())
                    .then(|| f.own_repl.iter().map(|(_, s)| s.unknown).sum()),
                rule: "each response of the own backends carries the session's counter (x-session-count), one more per request; a user whose counter does not go up from one response to the next got a backend that did not have its session's state: the session is counted once as lost".into(),
            },
            replication: f
                .replicate
                .map(|n| ReplicationInfo::from_backends(n, &f.own_repl)),
            recovery: f.recovery,
            memory,
            idle: f.idle,
            cpu: f.cpu,
            events: f.events,
            periodic_reloads: f.periodic_reloads,
            series,
            notes,
        }
    }

    /// The stdout table.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let m = &self.mode;
        let l = &self.load;
        let s = &self.summary;
        let _ = writeln!(o, "\nstickyd load harness {}", self.harness.version);
        let what = match m.kind.as_str() {
            "stickyd" => format!(
                "stickyd {} (pid {}, worker_threads {}) in front of {} own backends at {}",
                m.stickyd_binary.as_deref().unwrap_or("?"),
                m.stickyd_pid.map_or("?".into(), |p| p.to_string()),
                m.stickyd_worker_threads.unwrap_or(0),
                m.backends_started,
                m.target
            ),
            "direct" => format!("one own backend directly, no balancer, at {}", m.target),
            _ => format!("existing deployment {}", m.target),
        };
        let _ = writeln!(o, "target:  {what}");
        if let Some(h) = &m.host {
            let _ = writeln!(o, "host:    {h} (the Host header of every request)");
        }
        let model = if l.model == "open" {
            format!(
                "open loop, {} req/s, at most {} in flight",
                fmt_f(l.rate.unwrap_or(0.0), 0),
                l.max_inflight.unwrap_or(0)
            )
        } else {
            format!("closed loop, {} connections", l.concurrency.unwrap_or(0))
        };
        if l.duration_s == 0.0 {
            let _ = writeln!(o, "load:    none (--duration 0: idle connections only)");
        } else {
            let _ = writeln!(
                o,
                "load:    {model}, {} client thread{}; {} {}; {}s measured after {}s warmup{}",
                l.threads,
                if l.threads == 1 { "" } else { "s" },
                l.method,
                l.path,
                fmt_f(s.measured_s, 1),
                fmt_f(l.warmup_s, 1),
                if s.interrupted { " (INTERRUPTED)" } else { "" }
            );
        }
        let users = if l.fresh_only {
            "fresh only: one request each, no cookies".to_string()
        } else {
            format!(
                "requests per user Pareto(min {}, alpha {}, max {})",
                l.min_requests, l.pareto_alpha, l.max_requests
            )
        };
        let _ = writeln!(o, "users:   {users}; seed {}", l.seed);

        if l.duration_s > 0.0 {
            self.render_load(&mut o);
        }
        self.render_process(&mut o);
        o
    }

    /// The load phase's sections.
    fn render_load(&self, o: &mut String) {
        let s = &self.summary;
        let _ = writeln!(o, "\nSummary");
        let mut rows = vec![
            vec![
                "requests/s".into(),
                fmt_f(s.requests_per_s, 1),
                format!("ok {}/s", fmt_f(s.ok_per_s, 1)),
            ],
            vec![
                "responses".into(),
                fmt_int(s.responses),
                format!(
                    "ok {}, errors {} ({}%)",
                    fmt_int(s.ok),
                    fmt_int(s.errors),
                    fmt_f(s.error_pct, 3)
                ),
            ],
            vec![
                "users started".into(),
                fmt_int(s.users_started),
                "distinct users whose first request was measured".into(),
            ],
            vec![
                "sessions".into(),
                fmt_int(s.sessions),
                "users whose first response was measured".into(),
            ],
        ];
        if let Some(u) = s.unsent {
            rows.push(vec![
                "unsent".into(),
                fmt_int(u),
                "scheduled but never sent (in-flight cap)".into(),
            ]);
        }
        o.push_str(&table(&indent(rows), &[false, true, false]));

        let lat = &self.latency;
        let _ = writeln!(o, "\nLatency (recorded {})", lat.basis);
        let mut rows = vec![vec![
            String::new(),
            "p50".into(),
            "p90".into(),
            "p99".into(),
            "p99.9".into(),
            "max".into(),
            "mean".into(),
        ]];
        let mut line = |name: String, p: &Percentiles| {
            rows.push(vec![
                name,
                fmt_us(p.p50),
                fmt_us(p.p90),
                fmt_us(p.p99),
                fmt_us(p.p999),
                fmt_us(p.max),
                fmt_us(p.mean.round() as u64),
            ]);
        };
        line("recorded".into(), &lat.recorded);
        if let Some(c) = &lat.corrected {
            line(
                format!("corrected (wrk method, interval {})", fmt_us(c.interval_us)),
                &c.percentiles,
            );
        }
        if let Some(p) = &lat.service {
            line("service time (from actual send)".into(), p);
        }
        if let Some(p) = &lat.send_lag {
            line("send lag (actual - intended)".into(), p);
        }
        o.push_str(&table(
            &indent(rows),
            &[false, true, true, true, true, true, true],
        ));

        let e = &self.errors;
        let _ = writeln!(o, "\nErrors: {}", fmt_int(e.total));
        let fivexx = if e.status_5xx.is_empty() {
            "0".to_string()
        } else {
            e.status_5xx
                .iter()
                .map(|(c, n)| format!("{c}: {}", fmt_int(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "  connect {}, timeout {}, reset/io {}, other {}, 4xx {}, 5xx {}",
            fmt_int(e.connect),
            fmt_int(e.timeout),
            fmt_int(e.reset_io),
            fmt_int(e.other),
            fmt_int(e.status_4xx),
            fivexx
        );

        let _ = writeln!(o, "\nBackends");
        let own = self.backends.iter().any(|b| b.counted_by_backend.is_some());
        let mut header: Vec<String> = ["backend", "requests", "share", "sessions", "share"]
            .map(String::from)
            .to_vec();
        if own {
            header.extend(["backend counted".to_string(), "state".to_string()]);
        }
        let mut rows = vec![header];
        for b in &self.backends {
            let mut r = vec![
                b.id.clone(),
                fmt_int(b.requests),
                format!("{}%", fmt_f(b.request_share_pct, 1)),
                fmt_int(b.sessions),
                format!("{}%", fmt_f(b.session_share_pct, 1)),
            ];
            if own {
                r.push(b.counted_by_backend.map_or("-".into(), fmt_int));
                r.push(b.state.clone().unwrap_or_default());
            }
            rows.push(r);
        }
        let u = &self.unknown_backend;
        if u.requests > 0 || u.sessions > 0 {
            let mut r = vec![
                "(unknown)".into(),
                fmt_int(u.requests),
                format!("{}%", fmt_f(share(u.requests, s.responses), 1)),
                fmt_int(u.sessions),
                format!("{}%", fmt_f(share(u.sessions, s.sessions), 1)),
            ];
            if own {
                r.extend([String::new(), String::new()]);
            }
            rows.push(r);
        }
        o.push_str(&table(
            &indent(rows),
            &[false, true, true, true, true, true, false],
        ));
        if own {
            let _ = writeln!(
                o,
                "  backend counted: requests the backend itself served from the start of measurement on (in-flight requests at the edges make it differ slightly)"
            );
        }
        let _ = writeln!(
            o,
            "  imbalance (max/mean over the backends listed): requests {}, sessions {}",
            self.imbalance.requests.map_or("-".into(), |v| fmt_f(v, 3)),
            self.imbalance.sessions.map_or("-".into(), |v| fmt_f(v, 3))
        );

        let a = &self.affinity;
        let _ = writeln!(o, "\nAffinity");
        let _ = writeln!(
            o,
            "  violations {}; re-pins {} (failover {}, violations {}); pinned responses from the pinned backend {}",
            fmt_int(a.violations),
            fmt_int(a.repins),
            fmt_int(a.failover_repins),
            fmt_int(a.violations),
            fmt_int(a.stayed)
        );
        let _ = writeln!(o, "  rule: {}", a.rule);
        self.render_state(o);
    }

    /// Session state, replication and recovery after kills.
    fn render_state(&self, o: &mut String) {
        let st = &self.state;
        let _ = writeln!(o, "\nSession state");
        if st.measured {
            let _ = writeln!(
                o,
                "  sessions whose state was lost {} of {} checked ({}%); counters that went back {}",
                fmt_int(st.sessions_lost),
                fmt_int(st.sessions_checked),
                fmt_f(st.lost_pct, 3),
                fmt_int(st.losses)
            );
        } else {
            let _ = writeln!(
                o,
                "  not measured: no user saw two responses with a session counter (x-session-count: the own backends send it)"
            );
        }
        if let Some(n) = st.backends_unknown_sessions {
            let _ = writeln!(
                o,
                "  backends: {} requests for a session they did not have, without a takeover (started over)",
                fmt_int(n)
            );
        }
        if let Some(r) = &self.replication {
            let _ = writeln!(o, "\nReplication (backups {})", r.backups);
            let _ = writeln!(
                o,
                "  takeovers {}: replica promoted {}, no replica (state lost) {}; requests without a takeover for a session whose replica was there {}",
                fmt_int(r.takeovers),
                fmt_int(r.takeovers_promoted),
                fmt_int(r.takeovers_no_replica),
                fmt_int(r.unknown_with_replica)
            );
            let f = &r.push_failures;
            let _ = writeln!(
                o,
                "  replica pushes ok {}, failed {} (connect {}, timeout {}, status {}, reset/io {}); unreadable X-Stickyd-Backup {}; replicas received {}",
                fmt_int(r.pushes_ok),
                fmt_int(r.pushes_failed),
                fmt_int(f.connect),
                fmt_int(f.timeout),
                fmt_int(f.status),
                fmt_int(f.io),
                fmt_int(r.bad_backup_header),
                fmt_int(r.replicas_received)
            );
            let p = &r.push_latency;
            let _ = writeln!(
                o,
                "  push latency (before answering): p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
                fmt_us(p.p50),
                fmt_us(p.p90),
                fmt_us(p.p99),
                fmt_us(p.p999),
                fmt_us(p.max)
            );
            let mut rows = vec![
                [
                    "backend",
                    "promoted",
                    "no replica",
                    "pushes ok",
                    "failed",
                    "received",
                    "sessions held",
                    "replicas held",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for b in &r.backends {
                rows.push(vec![
                    b.id.clone(),
                    fmt_int(b.takeovers_promoted),
                    fmt_int(b.takeovers_no_replica),
                    fmt_int(b.pushes_ok),
                    fmt_int(b.pushes_failed),
                    fmt_int(b.replicas_received),
                    fmt_int(b.sessions_held as u64),
                    fmt_int(b.replicas_held as u64),
                ]);
            }
            o.push_str(&table(
                &indent(rows),
                &[false, true, true, true, true, true, true, true],
            ));
        }
        if !self.recovery.is_empty() {
            let _ = writeln!(o, "\nRecovery (from a kill)");
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{}ms", fmt_f(v, 1)));
            let mut rows = vec![
                [
                    "killed",
                    "at",
                    "first failover response",
                    "first successful takeover",
                    "promoted",
                    "no replica",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for k in &self.recovery {
                rows.push(vec![
                    k.backend.clone(),
                    format!("{:+.3}s", k.kill_t_s),
                    ms(k.first_failover_ms),
                    if self.replication.is_some() {
                        ms(k.first_takeover_ms)
                    } else {
                        "- (no --replicate)".into()
                    },
                    fmt_int(k.promoted_takeovers),
                    fmt_int(k.lost_takeovers),
                ]);
            }
            o.push_str(&table(
                &indent(rows),
                &[false, true, true, true, true, true],
            ));
            let _ = writeln!(
                o,
                "  failover: a response from another backend to a user pinned to the killed one; takeover: a request answered with a promoted replica whose old home was the killed backend"
            );
        }
    }

    /// stickyd's memory and CPU, idle connections, harness CPU, events and notes.
    fn render_process(&self, o: &mut String) {
        let m = &self.mode;
        if self.memory.is_some() || self.cpu.stickyd_s.is_some() || m.stickyd_exit.is_some() {
            let _ = writeln!(o, "\nstickyd");
        }
        if let Some(mem) = &self.memory {
            let _ = writeln!(
                o,
                "  RSS: start {}, peak {}, end {} (sampled every second)",
                fmt_kib(mem.rss_start_kib),
                fmt_kib(mem.rss_peak_kib),
                fmt_kib(mem.rss_end_kib)
            );
        }
        if let Some(cpu) = self.cpu.stickyd_s {
            let _ = writeln!(
                o,
                "  CPU: {}s during measurement ({} responses per CPU-second)",
                fmt_f(cpu, 2),
                self.cpu
                    .stickyd_requests_per_cpu_s
                    .map_or("-".into(), |v| fmt_f(v, 0))
            );
        }
        if let (Some(code), Some(n)) = (&m.stickyd_exit, m.stickyd_log_problems) {
            let _ = writeln!(
                o,
                "  exit after SIGTERM: {code}; log: {n} WARN/ERROR line(s) in {}",
                m.stickyd_log.as_deref().unwrap_or("?")
            );
        }
        if let Some(idle) = &self.idle {
            let _ = writeln!(o, "\nIdle {} connections", idle.protocol);
            let _ = writeln!(
                o,
                "  {} of {} opened (one request each), {} still open after {}s; RSS before {}, held {}{}",
                fmt_int(idle.opened as u64),
                fmt_int(idle.requested as u64),
                fmt_int(idle.still_open as u64),
                fmt_f(idle.hold_s, 1),
                idle.rss_before_kib.map_or("-".into(), fmt_kib),
                idle.rss_held_kib.map_or("-".into(), fmt_kib),
                idle.bytes_per_conn.map_or(String::new(), |b| format!(
                    " ({} bytes per connection)",
                    fmt_f(b, 0)
                ))
            );
            if !idle.failed.is_empty() {
                let f: Vec<String> = idle
                    .failed
                    .iter()
                    .map(|(k, n)| format!("{k} {}", fmt_int(*n)))
                    .collect();
                let _ = writeln!(o, "  failed: {}", f.join(", "));
            }
        }

        let c = &self.cpu;
        let mut cpu = Vec::new();
        if let Some(v) = c.load_generator_s {
            cpu.push(format!("load generator {}s", fmt_f(v, 2)));
        }
        if let Some(v) = c.backends_s {
            cpu.push(format!("own backends {}s", fmt_f(v, 2)));
        }
        if !cpu.is_empty() {
            let _ = writeln!(
                o,
                "\nHarness CPU (whole run incl. warmup): {}",
                cpu.join(", ")
            );
        }

        let _ = writeln!(o, "\nEvents");
        if self.events.is_empty() && self.periodic_reloads.is_none() {
            let _ = writeln!(o, "  none");
        }
        let rows: Vec<Vec<String>> = self
            .events
            .iter()
            .map(|e| {
                vec![
                    format!("{:+.3}s", e.t_s),
                    e.action.clone(),
                    if e.ok { "ok".into() } else { "FAILED".into() },
                    e.detail.clone(),
                ]
            })
            .collect();
        o.push_str(&table(&indent(rows), &[true, false, false, false]));
        if let Some(p) = &self.periodic_reloads {
            let _ = writeln!(
                o,
                "  reload every {} ms: {} SIGHUPs sent, {} failed",
                p.every_ms,
                fmt_int(p.sent),
                fmt_int(p.failed)
            );
        }
        for n in &self.notes {
            let _ = writeln!(o, "\nnote: {n}");
        }
    }
}

fn indent(rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|mut r| {
            if let Some(first) = r.first_mut() {
                first.insert_str(0, "  ");
            }
            r
        })
        .collect()
}

/// Rows as columns padded to their widest cell; `right[i]` right-aligns column i. Trailing
/// spaces are trimmed.
pub fn table(rows: &[Vec<String>], right: &[bool]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut o = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = width[c] - cell.chars().count();
            if right.get(c).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        o.push_str(line.trim_end());
        o.push('\n');
    }
    o
}

/// `1234567` as `1,234,567`.
pub fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut o = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            o.push(',');
        }
        o.push(c);
    }
    o
}

/// `v` with `decimals` decimals and thousands separators.
pub fn fmt_f(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let int = fmt_int(int.parse().unwrap_or(0));
    let sign = if v < 0.0 && s.chars().any(|c| c != '0' && c != '.') {
        "-"
    } else {
        ""
    };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// Microseconds in the unit that keeps 3 significant figures: `812µs`, `1.23ms`, `2.50s`.
pub fn fmt_us(us: u64) -> String {
    // Thresholds at the rounding edges, so 9,996 µs is "10.0ms", not "10.00ms".
    if us < 1000 {
        format!("{us}µs")
    } else if us < 9_995 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else if us < 99_950 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else if us < 999_500 {
        format!("{:.0}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// KiB as MiB with one decimal.
pub fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ThreadStats;
    use crate::users::Served;

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_int(1000), "1,000");
        assert_eq!(fmt_int(1_234_567), "1,234,567");
        assert_eq!(fmt_f(61234.56, 1), "61,234.6");
        assert_eq!(fmt_f(0.5, 0), "0");
        assert_eq!(fmt_f(-1234.5, 1), "-1,234.5");
        assert_eq!(fmt_f(-0.01, 1), "0.0");
        assert_eq!(fmt_us(812), "812µs");
        assert_eq!(fmt_us(1234), "1.23ms");
        assert_eq!(fmt_us(12_345), "12.3ms");
        assert_eq!(fmt_us(123_456), "123ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
        assert_eq!(fmt_us(9_996), "10.0ms");
        assert_eq!(fmt_us(99_960), "100ms");
        assert_eq!(fmt_us(999_600), "1.00s");
        assert_eq!(fmt_kib(2048), "2.0 MiB");
    }

    #[test]
    fn tables_pad_columns_and_align_numbers_right() {
        let t = table(
            &[
                vec!["a".into(), "1".into(), "x".into()],
                vec!["long".into(), "1,000".into(), String::new()],
            ],
            &[false, true, false],
        );
        assert_eq!(t, "a         1  x\nlong  1,000\n");
    }

    fn facts(open_loop: bool, liveness_known: bool) -> Facts {
        Facts {
            harness: Harness {
                version: "0".into(),
                started_unix_ms: 0,
                args: vec![],
            },
            mode: ModeInfo {
                kind: "stickyd".into(),
                target: "127.0.0.1:1".into(),
                stickyd_binary: Some("stickyd".into()),
                stickyd_pid: Some(1),
                stickyd_worker_threads: Some(1),
                stickyd_log: None,
                stickyd_exit: None,
                stickyd_log_problems: None,
                backends_started: 2,
                backend_threads: Some(1),
                backend_header: "x-backend".into(),
                host: None,
            },
            load: LoadInfo {
                model: if open_loop { "open" } else { "closed" }.into(),
                concurrency: Some(2),
                rate: None,
                max_inflight: None,
                threads: 1,
                duration_s: 2.0,
                warmup_s: 0.0,
                timeout_s: 1.0,
                method: "GET".into(),
                path: "/".into(),
                seed: 1,
                fresh_only: false,
                min_requests: 2,
                max_requests: 10,
                pareto_alpha: 1.2,
            },
            measured_s: 2.0,
            interrupted: false,
            connections: 2,
            open_loop,
            liveness_known,
            own_backends: BTreeMap::from([("b1".to_string(), (3, "up".to_string()))]),
            rss: Some((
                1,
                vec![
                    RssSample {
                        t_s: -0.5,
                        kib: 100,
                    },
                    RssSample { t_s: 0.5, kib: 300 },
                    RssSample { t_s: 1.5, kib: 200 },
                ],
            )),
            idle: None,
            cpu: CpuInfo {
                load_generator_s: Some(1.0),
                backends_s: None,
                stickyd_s: Some(0.5),
                stickyd_requests_per_cpu_s: Some(8.0),
            },
            events: vec![Event {
                t_s: 1.0,
                action: "kill b2".into(),
                ok: true,
                detail: String::new(),
            }],
            periodic_reloads: None,
            replicate: None,
            own_repl: vec![],
            recovery: vec![],
            notes: vec![],
        }
    }

    #[test]
    fn the_report_adds_up() {
        let names = vec!["b1".to_string(), "b2".to_string()];
        let mut st = ThreadStats::new(2, &names);
        st.response(0, 100, 200, Some(0), true, Served::Pinned);
        st.response(0, 200, 200, Some(0), false, Served::Stayed);
        st.response(
            1,
            300,
            200,
            Some(1),
            false,
            Served::Repinned { violation: false },
        );
        st.response(1, 400, 502, None, true, Served::NoBackend);
        st.failure(1, crate::stats::Failure::Connect);
        let r = Report::build(&st, facts(false, true));
        assert_eq!(r.summary.responses, 4);
        assert_eq!(r.summary.errors, 2);
        assert_eq!(r.summary.requests_per_s, 2.0);
        assert!((r.summary.error_pct - 40.0).abs() < 1e-9, "2 of 5 attempts");
        assert_eq!(r.backends[0].requests, 2);
        assert_eq!(r.backends[0].request_share_pct, 50.0);
        assert_eq!(r.backends[0].counted_by_backend, Some(3));
        assert_eq!(r.backends[1].counted_by_backend, None);
        assert_eq!(r.imbalance.requests, Some(4.0 / 3.0));
        assert_eq!(r.affinity.failover_repins, 1);
        assert_eq!(r.errors.status_5xx.get("502"), Some(&1));
        assert_eq!(r.series.len(), 2);
        assert_eq!(r.series[1].backends, [0, 1]);
        assert_eq!(r.series[0].rss_kib, Some(300));
        let mem = r.memory.as_ref().expect("rss");
        assert_eq!(
            (mem.rss_start_kib, mem.rss_peak_kib, mem.rss_end_kib),
            (100, 300, 200)
        );
        assert!(r.latency.corrected.is_some(), "2 responses per connection");
        assert!(r.latency.service.is_none());
        let text = r.render_text();
        for needle in [
            "requests/s",
            "p99.9",
            "kill b2",
            "(unknown)",
            "imbalance",
            "violations 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let json = serde_json::to_string(&r).expect("serializes");
        assert!(json.contains("\"series\""));
    }

    fn repl(
        promoted: u64,
        no_replica: u64,
        ok: u64,
        failed_connect: u64,
        lat: &[u64],
    ) -> ReplStats {
        let mut h = histogram();
        for v in lat {
            h.saturating_record(*v);
        }
        ReplStats {
            promoted,
            no_replica,
            unknown: 2,
            unknown_with_replica: 1,
            pushes_ok: ok,
            push_connect: failed_connect,
            push_timeout: 0,
            push_status: 1,
            push_io: 0,
            bad_backup_header: 0,
            replicas_received: ok,
            push_latency: h,
            sessions_held: 10,
            replicas_held: 5,
        }
    }

    #[test]
    fn replication_lost_state_and_recovery_are_reported() {
        let own = vec![
            ("b1".to_string(), repl(3, 0, 100, 0, &[100, 200])),
            ("b2".to_string(), repl(0, 0, 50, 4, &[])),
            ("b3".to_string(), repl(2, 1, 70, 0, &[300])),
        ];
        let info = ReplicationInfo::from_backends(1, &own);
        assert_eq!(
            (
                info.takeovers,
                info.takeovers_promoted,
                info.takeovers_no_replica
            ),
            (6, 5, 1)
        );
        assert_eq!((info.pushes_ok, info.pushes_failed), (220, 7));
        assert_eq!(
            info.push_failures,
            PushFailures {
                connect: 4,
                timeout: 0,
                status: 3,
                io: 0
            }
        );
        assert_eq!(info.push_latency.count, 3);
        assert_eq!(info.push_latency.max, 300);
        assert_eq!(info.unknown_with_replica, 3);
        assert_eq!(info.backends[1].pushes_failed, 5);

        let mut st = ThreadStats::new(2, &["b1".to_string()]);
        st.response(0, 100, 200, Some(0), true, Served::Pinned);
        st.state(0, crate::users::StateSeen::Kept { first_check: true });
        st.state(
            1,
            crate::users::StateSeen::Lost {
                first_check: true,
                first_loss: true,
            },
        );
        let mut f = facts(false, true);
        f.replicate = Some(1);
        f.own_repl = own;
        f.recovery = vec![RecoveryRow {
            backend: "b2".into(),
            kill_t_s: 3.0,
            first_failover_ms: Some(0.8),
            first_takeover_ms: Some(4.25),
            promoted_takeovers: 5,
            lost_takeovers: 1,
        }];
        let r = Report::build(&st, f);
        assert!(r.state.measured);
        assert_eq!((r.state.sessions_checked, r.state.sessions_lost), (2, 1));
        assert_eq!(r.state.lost_pct, 50.0);
        assert_eq!(r.state.backends_unknown_sessions, Some(6));
        assert_eq!(r.series[1].state_lost, 1);
        assert!(r.affinity.rule.contains("takeover"));
        let text = r.render_text();
        for needle in [
            "sessions whose state was lost 1 of 2 checked (50.000%)",
            "Replication (backups 1)",
            "takeovers 6: replica promoted 5, no replica (state lost) 1",
            "replica pushes ok 220, failed 7 (connect 4, timeout 0, status 3",
            "push latency (before answering): p50 200µs",
            "+3.000s",
            "0.8ms",
            "4.2ms",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let json: serde_json::Value = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["replication"]["takeovers_promoted"], 5);
        assert_eq!(json["recovery"][0]["first_takeover_ms"], 4.25);
        assert_eq!(json["state"]["sessions_lost"], 1);
        let page = crate::html::render(&r);
        for needle in [
            "sessions whose state was lost",
            "Replication (backups 1)",
            "4.2ms",
            "state lost",
        ] {
            assert!(page.contains(needle), "{needle} missing from the page");
        }

        // Without --replicate: no replication section, and the recovery row says why.
        let mut f = facts(false, true);
        f.recovery = vec![RecoveryRow {
            backend: "b2".into(),
            kill_t_s: 3.0,
            first_failover_ms: Some(0.8),
            first_takeover_ms: None,
            promoted_takeovers: 0,
            lost_takeovers: 0,
        }];
        let r = Report::build(&ThreadStats::new(1, &[]), f);
        assert!(r.replication.is_none());
        assert!(!r.state.measured);
        let text = r.render_text();
        assert!(text.contains("- (no --replicate)"), "{text}");
        assert!(text.contains("not measured"), "{text}");
        assert!(!text.contains("Replication ("), "{text}");
    }

    #[test]
    fn open_loop_and_unknown_targets_say_so() {
        let mut st = ThreadStats::new(1, &[]);
        st.response(0, 100, 200, None, true, Served::NoBackend);
        let r = Report::build(&st, facts(true, false));
        assert!(r.latency.corrected.is_none());
        assert!(r.latency.service.is_some());
        assert_eq!(r.summary.unsent, Some(0));
        assert!(r.affinity.rule.contains("assumed usable"));
        assert!(r.notes.iter().any(|n| n.contains("x-backend")));
    }

    #[test]
    fn idle_connections_say_their_protocol() {
        let st = ThreadStats::new(1, &[]);
        let mut f = facts(false, true);
        f.idle = Some(IdleReport {
            protocol: "HTTP/2 (h2c)".into(),
            requested: 10,
            opened: 10,
            still_open: 9,
            failed: BTreeMap::new(),
            hold_s: 2.0,
            rss_before_kib: Some(1000),
            rss_held_kib: Some(1100),
            bytes_per_conn: Some(10240.0),
        });
        let r = Report::build(&st, f);
        let text = r.render_text();
        assert!(
            text.contains("\nIdle HTTP/2 (h2c) connections\n  10 of 10 opened"),
            "{text}"
        );
        assert!(text.contains("(10,240 bytes per connection)"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["idle"]["protocol"], "HTTP/2 (h2c)");
    }

    #[test]
    fn a_chosen_host_is_reported() {
        let st = ThreadStats::new(1, &[]);
        let r = Report::build(&st, facts(false, true));
        assert!(!r.render_text().contains("host:"));
        let json: serde_json::Value = serde_json::to_value(&r).expect("serializes");
        assert!(json["mode"]["host"].is_null());
        let mut f = facts(false, true);
        f.mode.host = Some("shop.example.com".into());
        let r = Report::build(&st, f);
        assert!(r.render_text().contains("\nhost:    shop.example.com "));
        let json: serde_json::Value = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["mode"]["host"], "shop.example.com");
        assert!(crate::html::render(&r).contains("(Host: shop.example.com)"));
    }
}
