//! The load-test harness behind `cargo bench --bench load`. It starts real backends and stickyd
//! (a separate process) on loopback, or drives an existing deployment, with simulated users who
//! keep cookie jars, and reports throughput, latency, errors, per-backend share, imbalance,
//! affinity violations and sessions whose state was lost (the own backends keep a counter per
//! session; with `--replicate` they replicate sessions as stickyd's protocol asks, and takeovers
//! and the recovery time after a kill are reported) as a table, JSON and an HTML page with SVG
//! charts. Options:
//! `cargo bench --bench load -- --help`.
//!
//! It is a crate of its own (`stickyd-load`, a workspace member), so its modules' unit tests
//! run with the workspace's `cargo test`. The bench target `load` is stickyd's (the root
//! package's `benches/load.rs`): only there does Cargo build the stickyd binary and name it
//! (`CARGO_BIN_EXE_stickyd`), and that target hands it to [`main`].
//!
//! | module | owns |
//! |---|---|
//! | `cli` | options, their parsers, the checked `Plan` |
//! | `users` | seeded randomness, requests per user, cookie jar, pin/re-pin/violation rule, state check |
//! | `stats` | per-thread records, merging, percentiles, imbalance |
//! | `client` | the HTTP/1.1 client connection and one request/response exchange |
//! | `drive` | load threads: closed and open loop; shared run state and liveness |
//! | `backends` | the harness's own backends: stateful app, replication protocol, kill, restart |
//! | `sessions` | the backends' sessions and replicas, `sid` cookie, `X-Stickyd-Backup` parsing |
//! | `recovery` | kills and the first failover and takeover after each |
//! | `stickyd` | stickyd's generated config and process |
//! | `scenario` | timed kills, restarts, added backends and reloads |
//! | `idle` | `--idle-conns` (HTTP/1.1, or h2c with `--idle-h2`) and the descriptor/port budget |
//! | `procfs` | RSS and CPU time from /proc |
//! | `report`, `svg`, `html` | the report, its table, its page and charts |
//! | `run` | one run from start to report |
//!
//! With no options (`cargo test --bench load` runs the bench that way) it makes a short
//! end-to-end smoke run.

use std::process::ExitCode;

mod backends;
mod cli;
mod client;
mod drive;
mod html;
mod idle;
mod procfs;
mod recovery;
mod report;
mod run;
mod scenario;
mod sessions;
mod stats;
mod stickyd;
mod svg;
mod users;

use clap::Parser as _;

/// Exit status for bad options (clap's).
const EXIT_USAGE: u8 = 2;
/// Exit status of a run stopped by SIGINT/SIGTERM (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// Runs the harness with this process's arguments and returns its exit status; `stickyd` is
/// the binary started when `--stickyd` does not name another.
pub fn main(stickyd: &str) -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if argv.len() <= 1 {
        return smoke(stickyd);
    }
    let args = match cli::Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let plan = match cli::Plan::from_args(args, stickyd) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match execute(plan, argv) {
        Ok(f) if f.interrupted => ExitCode::from(EXIT_INTERRUPTED),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `plan` on a runtime whose worker threads serve the harness's own backends (the load
/// threads have their own runtimes).
fn execute(plan: cli::Plan, argv: Vec<String>) -> Result<run::Finished, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.backend_threads)
        // The name is how the report finds these threads' CPU time in /proc.
        .thread_name("backends")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(run::run(plan, argv))
}

/// `cargo test --bench load`: a 1-second run of the default mode with two backends, checked
/// for zero errors, violations and sessions that lost their state, and for readable report
/// files.
fn smoke(stickyd: &str) -> ExitCode {
    println!("load: no options: smoke run (1s, 2 backends); `-- --help` lists the options");
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("load: smoke: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let argv: Vec<String> = [
        "load",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--backends",
        "2",
        "--concurrency",
        "8",
        "--quiet",
        "--json",
        &json.to_string_lossy(),
        "--html",
        &html.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let checked = cli::Args::try_parse_from(&argv)
        .map_err(|e| e.to_string())
        .and_then(|a| cli::Plan::from_args(a, stickyd))
        .and_then(|plan| execute(plan, argv))
        .and_then(|f| {
            let r = f.report.ok_or("no report")?;
            let json: serde_json::Value = std::fs::read_to_string(&json)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))?;
            let page = std::fs::read_to_string(&html).map_err(|e| e.to_string())?;
            let problems: Vec<String> = [
                (r.summary.responses == 0, "no responses".to_string()),
                (r.summary.errors > 0, format!("{} errors", r.summary.errors)),
                (
                    r.affinity.violations > 0,
                    format!("{} violations", r.affinity.violations),
                ),
                (!r.state.measured, "no session counter was checked".into()),
                (
                    r.state.sessions_lost > 0,
                    format!("{} sessions lost their state", r.state.sessions_lost),
                ),
                (r.backends.len() != 2, "not 2 backends".to_string()),
                (
                    json["summary"]["responses"] != r.summary.responses,
                    "JSON differs".into(),
                ),
                (!page.contains("<svg"), "no chart in the HTML".into()),
            ]
            .into_iter()
            .filter_map(|(bad, what)| bad.then_some(what))
            .collect();
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join(", "))
            }
        });
    match checked {
        Ok(()) => {
            println!("load: smoke run passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("load: smoke run failed: {e}");
            ExitCode::FAILURE
        }
    }
}
