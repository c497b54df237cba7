//! The command line: options, their parsers (durations, scenario events), and the checks that
//! turn them into a [`Plan`]. Nothing here does I/O.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, Method, Uri};

use crate::users::RequestCount;

const ABOUT: &str = "Load-test harness for stickyd: simulated users with cookie jars, closed- or \
open-loop load, latency percentiles, per-backend share, affinity violations, scenarios.";

const AFTER_HELP: &str = "\
Modes:
  (default)            start --backends backends and stickyd (a separate process) on 127.0.0.1
  --target URL         drive an existing deployment; backend identity from --backend-header
  --direct             drive one of the harness's own backends with no balancer (harness ceiling)
  --backends-only      only serve the backends (for driving them with another tool, e.g. wrk)

Durations: 500ms, 2s, 1m30s, 1h, or plain seconds (2.5). Scenario times count from the end of
the warmup. Latency is recorded from the actual send (closed loop) or from the intended send
time (open loop, --rate), in microseconds.

Examples:
  cargo bench --bench load -- --duration 10s
  cargo bench --bench load -- --kill b2@3s --restart b2@6s --duration 10s
  cargo bench --bench load -- --kill b2@3s --duration 10s --replicate
  cargo bench --bench load -- --rate 20000 --duration 30s
  cargo bench --bench load -- --fresh-only --idle-conns 5000
  cargo bench --bench load -- --duration 0 --idle-conns 5000 --idle-h2
  cargo bench --bench load -- --target http://lb.example.internal:8080/ --concurrency 128
  cargo bench --bench load -- --target http://10.0.0.5:8080/ --host shop.example.com";

/// Options of `cargo bench --bench load -- [OPTIONS]`.
#[derive(Parser, Debug, Clone)]
#[command(name = "load", bin_name = "cargo bench --bench load --", about = ABOUT, after_help = AFTER_HELP)]
pub struct Args {
    /// Drive an existing deployment at this http:// URL (its path is the default --path).
    #[arg(long, value_name = "URL", conflicts_with_all = ["direct", "backends_only", "stickyd"])]
    pub target: Option<String>,
    /// Drive one of the harness's own backends directly, with no balancer.
    #[arg(long, conflicts_with = "backends_only")]
    pub direct: bool,
    /// Only start the backends, print their addresses and serve them for --duration.
    #[arg(long)]
    pub backends_only: bool,
    /// The stickyd binary [default: the one Cargo built for this bench].
    #[arg(long, value_name = "PATH")]
    pub stickyd: Option<PathBuf>,
    /// Put HAProxy (this binary, e.g. /usr/sbin/haproxy) in front of the own backends instead
    /// of stickyd: cookie insert, balance roundrobin, one thread per --worker-threads. For
    /// side-by-side runs; --reload and --add-backend are stickyd's only.
    #[arg(long, value_name = "PATH", conflicts_with = "stickyd")]
    pub haproxy: Option<PathBuf>,
    /// stickyd's [balance] new_sessions: round_robin or least_loaded.
    #[arg(long, value_name = "MODE")]
    pub new_sessions: Option<String>,
    /// Session replication with N backups (1 or 2; 1 when N is left out): stickyd gets
    /// `[replication] backups = N`, and the own backends push each session's state to the
    /// backups stickyd names and promote it on a takeover. Not with --haproxy, --target or
    /// --direct.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1")]
    pub replicate: Option<u8>,
    /// stickyd's admin listener at ADDR (e.g. 127.0.0.1:9901): its dashboard is then at
    /// http://ADDR/ while the run lasts.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// stickyd's [affinity] max_life (how long a session may stay on its backend), e.g. 5s.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub max_life: Option<Duration>,
    /// Backends to start (ids b1..bN).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub backends: usize,
    /// stickyd's [server] worker_threads (0 = one per CPU).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub worker_threads: usize,
    /// Runtime threads serving the harness's own backends.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub backend_threads: usize,
    /// Response header that names the backend that answered.
    #[arg(long, default_value = "x-backend", value_name = "NAME")]
    pub backend_header: String,
    /// With --target: a local process whose RSS to sample (e.g. the balancer's pid).
    #[arg(long, value_name = "PID", requires = "target")]
    pub rss_pid: Option<u32>,

    /// Closed loop: connections, each running one user after another.
    #[arg(long, short = 'c', default_value_t = 64, value_name = "C")]
    pub concurrency: usize,
    /// Open loop: requests per second at fixed intervals (instead of --concurrency).
    #[arg(
        long,
        short = 'r',
        value_name = "R",
        conflicts_with = "concurrency",
        allow_negative_numbers = true
    )]
    pub rate: Option<f64>,
    /// Open loop: most connections in flight at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_inflight: usize,
    /// Load-generator threads, each a single-threaded runtime with its share of connections.
    #[arg(long, short = 't', default_value_t = 1, value_name = "N")]
    pub threads: usize,
    /// Measured time (at most 1h).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub duration: Duration,
    /// Load before measuring, not recorded.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DUR")]
    pub warmup: Duration,
    /// Time allowed for one request (connect, response head and body).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub timeout: Duration,
    /// Request path (and query) [default: /, or the --target URL's path].
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// Request method (requests carry no body).
    #[arg(long, default_value = "GET", value_name = "METHOD")]
    pub method: String,
    /// Host header of every request sent (load, --idle-conns, the start-up probe) [default:
    /// the address driven: stickyd's listener, the --target URL's host:port, or the backend
    /// with --direct]. A DNS name, IPv4 address or [IPv6] address, with an optional :port; to
    /// measure one pool of a config that routes pools by host. The connection still goes to
    /// that address.
    #[arg(long, value_name = "NAME", value_parser = parse_host, conflicts_with = "backends_only")]
    pub host: Option<String>,

    /// Fewest requests a user makes (the Pareto scale).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub min_requests: u32,
    /// Pareto shape of requests per user: smaller means a heavier tail.
    #[arg(
        long,
        default_value_t = 1.2,
        value_name = "A",
        allow_negative_numbers = true
    )]
    pub pareto_alpha: f64,
    /// Most requests a user makes.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_requests: u32,
    /// Every user makes one request and sends no cookie: as many sessions as requests.
    #[arg(long)]
    pub fresh_only: bool,
    /// Seed of the user model; the same seed gives the same users.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Scenario: stop backend ID at time T (listener and connections closed), e.g. b2@5s.
    #[arg(long, value_parser = parse_backend_at, value_name = "ID@T")]
    pub kill: Vec<(String, Duration)>,
    /// Scenario: start backend ID again on the same port at time T, e.g. b2@10s.
    #[arg(long, value_parser = parse_backend_at, value_name = "ID@T")]
    pub restart: Vec<(String, Duration)>,
    /// Scenario: start a new backend at time T, add it to the config and SIGHUP stickyd.
    #[arg(long, value_parser = parse_at, value_name = "@T")]
    pub add_backend: Vec<Duration>,
    /// Scenario: SIGHUP stickyd with an unchanged config at time T.
    #[arg(long, value_parser = parse_at, value_name = "@T")]
    pub reload: Vec<Duration>,
    /// Scenario: SIGHUP stickyd with an unchanged config at this interval (at least 10ms).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub reload_every: Option<Duration>,
    /// After a backend comes back, time it is not counted as usable for affinity violations
    /// (stickyd needs rise health checks to see it).
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DUR")]
    pub recovery_grace: Duration,

    /// After the run (or alone with --duration 0): open N keep-alive connections, one request
    /// each, hold them idle and report the balancer's RSS.
    #[arg(long, value_name = "N")]
    pub idle_conns: Option<usize>,
    /// With --idle-conns: make each idle connection HTTP/2 over cleartext with prior knowledge
    /// (h2c) instead of HTTP/1.1, for the memory per idle HTTP/2 connection.
    #[arg(long, requires = "idle_conns")]
    pub idle_h2: bool,
    /// How long --idle-conns holds the connections before the last RSS sample.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DUR")]
    pub idle_hold: Duration,

    /// JSON report, with per-second series.
    #[arg(long, default_value = "target/load/report.json", value_name = "PATH")]
    pub json: PathBuf,
    /// Self-contained HTML report with SVG charts.
    #[arg(long, default_value = "target/load/report.html", value_name = "PATH")]
    pub html: PathBuf,
    /// No progress line on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// Parses `500ms`, `2s`, `1m30s`, `1h`, `1.5s` or plain (possibly fractional) seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let bad = || format!("invalid duration {s:?} (examples: 500ms, 2s, 1m30s, 2.5)");
    if let Ok(secs) = t.parse::<f64>() {
        return secs_to_duration(secs).ok_or_else(bad);
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    secs_to_duration(total).ok_or_else(bad)
}

fn secs_to_duration(secs: f64) -> Option<Duration> {
    // Above ~30 years: nobody means it, and it would overflow Instant arithmetic.
    (secs.is_finite() && (0.0..1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// Parses `@8s` or `8s`.
pub fn parse_at(s: &str) -> Result<Duration, String> {
    parse_duration(s.strip_prefix('@').unwrap_or(s))
}

/// Parses `b2@5s` into the backend id and the time.
pub fn parse_backend_at(s: &str) -> Result<(String, Duration), String> {
    let (id, at) = s
        .split_once('@')
        .ok_or_else(|| format!("expected ID@TIME (e.g. b2@5s), not {s:?}"))?;
    let id = id.trim();
    if id.is_empty() {
        return Err(format!("no backend id in {s:?} (e.g. b2@5s)"));
    }
    Ok((id.to_string(), parse_duration(at)?))
}

/// Checks a `--host` value, a Host header: a DNS name (letters, digits, `-`, `_`, dots
/// between non-empty labels, an optional final dot), an IPv4 address or an IPv6 address in
/// brackets, then an optional `:port` (1-65535). Returned as given: stickyd compares hosts
/// without case, port or final dot, so the value is sent exactly as the user wrote it.
pub fn parse_host(s: &str) -> Result<String, String> {
    const EG: &str = "e.g. shop.example.com, 10.0.0.5:8080 or [::1]:8080";
    if s.is_empty() {
        return Err(format!("empty host ({EG})"));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} contains {c:?}: no whitespace or control characters"
        ));
    }
    if !s.is_ascii() {
        return Err(format!(
            "{s:?} is not ASCII: write an internationalised name in its xn-- form"
        ));
    }
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: '[' without ']'"))?;
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{s:?}: {v6:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            a => Some(
                a.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: only :port may follow ']'"))?,
            ),
        };
        (None, port)
    } else {
        match s.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(format!(
                    "{s:?} has more than one ':': an IPv6 address goes in brackets ([::1]:8080), and the only other ':' is the one before the port"
                ));
            }
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(s), None),
        }
    };
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n != 0);
        if !ok {
            return Err(format!("{s:?}: the port {p:?} is not from 1 to 65535"));
        }
    }
    if let Some(name) = name {
        if name.is_empty() {
            return Err(format!("{s:?} has no host before the port ({EG})"));
        }
        if let Some(c) = name
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "{s:?} contains {c:?}: not a host name, IPv4 or [IPv6] address ({EG})"
            ));
        }
        let labels = name.strip_suffix('.').unwrap_or(name);
        if labels.split('.').any(str::is_empty) {
            return Err(format!(
                "{s:?} has an empty label (a leading or doubled dot)"
            ));
        }
        if labels.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && labels.parse::<Ipv4Addr>().is_err()
        {
            return Err(format!("{s:?}: {labels:?} is not an IPv4 address"));
        }
    }
    Ok(s.to_string())
}

/// What the harness drives.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Own backends and a stickyd process.
    Stickyd {
        binary: PathBuf,
        /// The binary is HAProxy, not stickyd.
        haproxy: bool,
    },
    /// An existing deployment.
    Target { url: Uri },
    /// One own backend, no balancer.
    Direct,
    /// Own backends only, no load.
    BackendsOnly,
}

/// How load is generated.
#[derive(Debug, Clone, Copy)]
pub enum Model {
    Closed { concurrency: usize },
    Open { rate: f64, max_inflight: usize },
}

/// A scenario action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Kill(String),
    Restart(String),
    AddBackend(String),
    Reload,
}

impl Action {
    /// The short label used in every output.
    pub fn label(&self) -> String {
        match self {
            Action::Kill(id) => format!("kill {id}"),
            Action::Restart(id) => format!("restart {id}"),
            Action::AddBackend(id) => format!("add {id}"),
            Action::Reload => "reload".into(),
        }
    }
}

/// A scenario action at a time from the start of measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
}

/// Longest measured duration: per-second series are kept in memory.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Checked options.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub model: Model,
    pub backends: usize,
    pub worker_threads: usize,
    pub backend_threads: usize,
    pub backend_header: HeaderName,
    pub rss_pid: Option<u32>,
    pub threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub path: PathAndQuery,
    pub method: Method,
    /// `--host`: the Host header of every request instead of the address driven.
    pub host: Option<String>,
    pub users: RequestCount,
    pub fresh_only: bool,
    pub min_requests: u32,
    pub max_requests: u32,
    pub pareto_alpha: f64,
    pub seed: u64,
    pub steps: Vec<Step>,
    pub reload_every: Option<Duration>,
    pub recovery_grace: Duration,
    /// stickyd's [affinity] max_life, if set.
    pub max_life: Option<Duration>,
    /// `--replicate`: stickyd's [replication] backups; the own backends replicate.
    pub replicate: Option<u8>,
    /// `--admin`: stickyd's admin listener.
    pub admin: Option<std::net::SocketAddr>,
    /// stickyd's [balance] new_sessions, if set.
    pub new_sessions: Option<String>,
    pub idle_conns: Option<usize>,
    /// `--idle-h2`: the idle connections speak h2c instead of HTTP/1.1.
    pub idle_h2: bool,
    pub idle_hold: Duration,
    pub json: PathBuf,
    pub html: PathBuf,
    pub quiet: bool,
}

impl Plan {
    /// Checks `args`; `default_stickyd` is the binary Cargo built. The error is one line.
    pub fn from_args(args: Args, default_stickyd: &str) -> Result<Plan, String> {
        let mode = if let Some(url) = &args.target {
            Mode::Target {
                url: parse_target(url)?,
            }
        } else if args.direct {
            Mode::Direct
        } else if args.backends_only {
            Mode::BackendsOnly
        } else {
            match &args.haproxy {
                Some(h) => Mode::Stickyd {
                    binary: h.clone(),
                    haproxy: true,
                },
                None => Mode::Stickyd {
                    binary: args
                        .stickyd
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(default_stickyd)),
                    haproxy: false,
                },
            }
        };
        let model = match args.rate {
            Some(rate) => {
                if !rate.is_finite() || rate <= 0.0 || rate > 10_000_000.0 {
                    return Err(format!(
                        "--rate must be above 0 and at most 10000000, not {rate}"
                    ));
                }
                Model::Open {
                    rate,
                    max_inflight: args.max_inflight,
                }
            }
            None => Model::Closed {
                concurrency: args.concurrency,
            },
        };
        let within = |name: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("--{name} must be from {lo} to {hi}, not {v}"))
            }
        };
        within("backends", args.backends, 1, 256)?;
        within("worker-threads", args.worker_threads, 0, 1024)?;
        within("backend-threads", args.backend_threads, 1, 64)?;
        within("threads", args.threads, 1, 64)?;
        match model {
            Model::Closed { concurrency } => {
                within("concurrency", concurrency, 1, 100_000)?;
                if args.threads > concurrency {
                    return Err(format!(
                        "--threads ({}) must not exceed --concurrency ({concurrency})",
                        args.threads
                    ));
                }
            }
            Model::Open { max_inflight, .. } => {
                within("max-inflight", max_inflight, args.threads, 1_000_000)?;
            }
        }
        let idle_only = args.idle_conns.is_some() && args.duration.is_zero();
        if (args.duration.is_zero() && !idle_only) || args.duration > MAX_DURATION {
            return Err(format!(
                "--duration must be above 0 and at most 1h (0 only with --idle-conns), not {:?}",
                args.duration
            ));
        }
        if args.warmup > Duration::from_secs(600) {
            return Err("--warmup must be at most 10m".into());
        }
        if args.timeout.is_zero() || args.timeout > Duration::from_secs(600) {
            return Err("--timeout must be above 0 and at most 10m".into());
        }
        if let Some(n) = args.idle_conns {
            within("idle-conns", n, 1, 1_000_000)?;
        }
        if args.idle_hold > Duration::from_secs(600) {
            return Err("--idle-hold must be at most 10m".into());
        }
        let url_path = match &mode {
            Mode::Target { url } => url.path_and_query().map(|p| p.as_str().to_string()),
            _ => None,
        };
        let path_text = args.path.clone().or(url_path).unwrap_or_else(|| "/".into());
        if !path_text.starts_with('/') {
            return Err(format!("--path must start with '/', not {path_text:?}"));
        }
        let path: PathAndQuery = path_text
            .parse()
            .map_err(|_| format!("--path {path_text:?} is not a valid request path"))?;
        let method: Method = args
            .method
            .parse()
            .map_err(|_| format!("--method {:?} is not a valid method", args.method))?;
        if method == Method::CONNECT {
            return Err("--method CONNECT is not supported".into());
        }
        let backend_header: HeaderName = args.backend_header.parse().map_err(|_| {
            format!(
                "--backend-header {:?} is not a header name",
                args.backend_header
            )
        })?;
        let users = if args.fresh_only {
            RequestCount::fixed(1)
        } else {
            RequestCount::pareto(args.min_requests, args.max_requests, args.pareto_alpha)?
        };
        let (steps, reload_every) = scenario(&args, &mode)?;
        if let Some(n) = &args.new_sessions
            && n != "round_robin"
            && n != "least_loaded"
        {
            return Err(format!(
                "--new-sessions must be round_robin or least_loaded, not {n:?}"
            ));
        }
        if let Some(n) = args.replicate {
            if !(1..=2).contains(&n) {
                return Err(format!("--replicate takes 1 or 2 backups, not {n}"));
            }
            match &mode {
                Mode::Stickyd { haproxy: true, .. } => {
                    return Err("--replicate is stickyd's: HAProxy names no backups".into());
                }
                Mode::Target { .. } | Mode::Direct => {
                    return Err(
                        "--replicate needs the own backends behind stickyd (the default mode) or --backends-only".into(),
                    );
                }
                Mode::Stickyd { .. } | Mode::BackendsOnly => {}
            }
            if matches!(mode, Mode::Stickyd { .. }) && usize::from(n) >= args.backends {
                return Err(format!(
                    "--replicate {n} needs more than {n} backends (--backends {})",
                    args.backends
                ));
            }
        }
        Ok(Plan {
            mode,
            model,
            new_sessions: args.new_sessions.clone(),
            max_life: args.max_life,
            replicate: args.replicate,
            admin: args.admin,
            backends: if args.direct { 1 } else { args.backends },
            worker_threads: args.worker_threads,
            backend_threads: args.backend_threads,
            backend_header,
            rss_pid: args.rss_pid,
            threads: args.threads,
            duration: args.duration,
            warmup: args.warmup,
            timeout: args.timeout,
            path,
            method,
            host: args.host.clone(),
            users,
            fresh_only: args.fresh_only,
            min_requests: args.min_requests,
            max_requests: args.max_requests,
            pareto_alpha: args.pareto_alpha,
            seed: args.seed,
            steps,
            reload_every,
            recovery_grace: args.recovery_grace,
            idle_conns: args.idle_conns,
            idle_h2: args.idle_h2,
            idle_hold: args.idle_hold,
            json: args.json,
            html: args.html,
            quiet: args.quiet,
        })
    }

    /// Ids of the backends the harness starts, those added by the scenario included.
    pub fn backend_ids(&self) -> Vec<String> {
        let added = self
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::AddBackend(_)))
            .count();
        (1..=self.backends + added)
            .map(|i| format!("b{i}"))
            .collect()
    }
}

/// `http://host[:port][/path]`: the only scheme the harness speaks.
pub fn parse_target(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("--target {s:?} is not a URL (e.g. http://127.0.0.1:8080/)"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!(
            "--target {s:?}: only http:// is supported (no TLS in the harness)"
        ));
    }
    let authority: &Authority = uri
        .authority()
        .ok_or_else(|| format!("--target {s:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "--target {s:?}: credentials in the URL are not supported"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("--target {s:?} has no host"));
    }
    Ok(uri)
}

/// Orders and checks the scenario flags: only with own backends and stickyd, times within the
/// duration, ids that exist when their step runs.
fn scenario(args: &Args, mode: &Mode) -> Result<(Vec<Step>, Option<Duration>), String> {
    let any = !args.kill.is_empty()
        || !args.restart.is_empty()
        || !args.add_backend.is_empty()
        || !args.reload.is_empty()
        || args.reload_every.is_some();
    if !any {
        return Ok((Vec::new(), None));
    }
    if !matches!(mode, Mode::Stickyd { .. }) {
        return Err(
            "--kill, --restart, --add-backend, --reload and --reload-every need the default mode (own backends and stickyd)".into(),
        );
    }
    if let Some(every) = args.reload_every {
        if every < Duration::from_millis(10) {
            return Err("--reload-every must be at least 10ms".into());
        }
    }
    let mut steps = Vec::new();
    for (id, at) in &args.kill {
        steps.push(Step {
            at: *at,
            action: Action::Kill(id.clone()),
        });
    }
    for (id, at) in &args.restart {
        steps.push(Step {
            at: *at,
            action: Action::Restart(id.clone()),
        });
    }
    for at in &args.reload {
        steps.push(Step {
            at: *at,
            action: Action::Reload,
        });
    }
    let mut adds: Vec<Duration> = args.add_backend.clone();
    adds.sort();
    for (i, at) in adds.into_iter().enumerate() {
        steps.push(Step {
            at,
            action: Action::AddBackend(format!("b{}", args.backends + 1 + i)),
        });
    }
    // Stable: steps at the same time run in the order kill, restart, reload, add.
    steps.sort_by_key(|s| s.at);
    let mut exists: Vec<String> = (1..=args.backends).map(|i| format!("b{i}")).collect();
    for s in &steps {
        if s.at >= args.duration {
            return Err(format!(
                "{} at {:?} is not within --duration {:?}",
                s.action.label(),
                s.at,
                args.duration
            ));
        }
        match &s.action {
            Action::Kill(id) | Action::Restart(id) if !exists.contains(id) => {
                return Err(format!(
                    "{}: no backend {id} at {:?} (backends are b1..b{}{})",
                    s.action.label(),
                    s.at,
                    args.backends,
                    if args.add_backend.is_empty() {
                        ""
                    } else {
                        ", then added ones in time order"
                    }
                ));
            }
            Action::AddBackend(id) => exists.push(id.clone()),
            _ => {}
        }
    }
    Ok((steps, args.reload_every))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("load").chain(extra.iter().copied()))
    }

    fn plan(extra: &[&str]) -> Result<Plan, String> {
        Plan::from_args(args(extra).map_err(|e| e.to_string())?, "/bin/stickyd")
    }

    #[test]
    fn durations_take_units_compounds_and_plain_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("30s"), Ok(ms(30_000)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("100ms"), Ok(ms(100)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("10"), Ok(ms(10_000)));
        assert_eq!(parse_duration(" 2.5 "), Ok(ms(2500)));
        assert_eq!(parse_duration("0"), Ok(ms(0)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        for bad in [
            "", "s", "10x", "-1", "-1s", "1s2", "NaN", "inf", "1e300", "..s", "1..5s", "ms10",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn scenario_flags_parse_id_and_time() {
        assert_eq!(
            parse_backend_at("b2@5s"),
            Ok(("b2".to_string(), Duration::from_secs(5)))
        );
        assert_eq!(parse_at("@8s"), Ok(Duration::from_secs(8)));
        assert_eq!(parse_at("8"), Ok(Duration::from_secs(8)));
        assert!(parse_backend_at("b2").is_err());
        assert!(parse_backend_at("@5s").is_err());
        assert!(parse_backend_at("b2@soon").is_err());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let p = plan(&["--bench"]).expect("defaults are valid");
        assert!(
            matches!(p.mode, Mode::Stickyd { ref binary, .. } if binary == std::path::Path::new("/bin/stickyd"))
        );
        assert!(matches!(p.model, Model::Closed { concurrency: 64 }));
        assert_eq!(p.duration, Duration::from_secs(10));
        assert_eq!(p.warmup, Duration::from_secs(1));
        assert_eq!(p.path.as_str(), "/");
        assert_eq!(p.method, Method::GET);
        assert_eq!((p.min_requests, p.max_requests), (2, 1000));
        assert_eq!(p.backend_header, "x-backend");
        assert_eq!(p.host, None);
        assert_eq!(p.replicate, None);
        assert_eq!(p.backend_ids(), ["b1", "b2", "b3", "b4"]);
    }

    #[test]
    fn replicate_takes_an_optional_number_of_backups() {
        assert_eq!(plan(&["--replicate"]).expect("valid").replicate, Some(1));
        assert_eq!(
            plan(&["--replicate", "2"]).expect("valid").replicate,
            Some(2)
        );
        let p = plan(&["--replicate", "--kill", "b2@3s"]).expect("a flag before another");
        assert_eq!((p.replicate, p.steps.len()), (Some(1), 1));
        let p = plan(&["--backends-only", "--replicate"]).expect("backends only");
        assert_eq!(p.replicate, Some(1));
        for (extra, needle) in [
            (&["--replicate", "0"][..], "1 or 2"),
            (&["--replicate", "3"][..], "1 or 2"),
            (
                &["--replicate", "2", "--backends", "2"][..],
                "more than 2 backends",
            ),
            (
                &["--replicate", "--haproxy", "/usr/sbin/haproxy"][..],
                "HAProxy",
            ),
            (
                &["--replicate", "--target", "http://h/"][..],
                "default mode",
            ),
            (&["--replicate", "--direct"][..], "default mode"),
        ] {
            let e = plan(extra).expect_err(&format!("{extra:?} was accepted"));
            assert!(e.contains(needle), "{extra:?}: {e}");
        }
        assert!(args(&["--replicate", "x"]).is_err());
    }

    #[test]
    fn steps_are_ordered_and_added_backends_get_the_next_ids() {
        let p = plan(&[
            "--restart",
            "b2@6s",
            "--kill",
            "b2@3s",
            "--add-backend",
            "@8s",
            "--add-backend",
            "@4s",
            "--reload",
            "@1s",
            "--kill",
            "b5@9s",
        ])
        .expect("valid");
        let got: Vec<(u64, String)> = p
            .steps
            .iter()
            .map(|s| (s.at.as_secs(), s.action.label()))
            .collect();
        let want = [
            (1, "reload"),
            (3, "kill b2"),
            (4, "add b5"),
            (6, "restart b2"),
            (8, "add b6"),
            (9, "kill b5"),
        ];
        assert_eq!(got, want.map(|(t, l)| (t, l.to_string())).to_vec());
        assert_eq!(p.backend_ids().len(), 6);
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        for (extra, needle) in [
            (&["--kill", "b9@1s"][..], "no backend b9"),
            (
                &["--kill", "b5@1s", "--add-backend", "@2s"][..],
                "no backend b5",
            ),
            (&["--kill", "b1@10s"][..], "not within --duration"),
            (
                &["--target", "http://h/", "--kill", "b1@1s"][..],
                "default mode",
            ),
            (&["--direct", "--reload", "@1s"][..], "default mode"),
            (&["--reload-every", "1ms"][..], "at least 10ms"),
            (&["--target", "https://h/"][..], "only http://"),
            (&["--target", "not a url"][..], "not a URL"),
            (&["--target", "/path-only"][..], "only http://"),
            (&["--path", "x"][..], "start with '/'"),
            (&["--method", "G T"][..], "not a valid method"),
            (&["--backend-header", "bad header"][..], "not a header name"),
            (&["--concurrency", "0"][..], "--concurrency"),
            (
                &["--threads", "8", "--concurrency", "4"][..],
                "must not exceed",
            ),
            (&["--rate", "0"][..], "--rate"),
            (&["--rate", "NaN"][..], "--rate"),
            (
                &["--rate", "100", "--max-inflight", "0"][..],
                "--max-inflight",
            ),
            (&["--duration", "0"][..], "--duration"),
            (&["--duration", "2h"][..], "--duration"),
            (&["--backends", "0"][..], "--backends"),
            (&["--pareto-alpha", "-1"][..], "--pareto-alpha"),
            (
                &["--min-requests", "5", "--max-requests", "2"][..],
                "--max-requests",
            ),
        ] {
            let e = plan(extra).expect_err(&format!("{extra:?} was accepted"));
            assert!(e.contains(needle), "{extra:?}: {e}");
        }
        assert!(args(&["--duration", "soon"]).is_err());
        assert!(args(&["--rate", "10", "--concurrency", "5"]).is_err());
        assert!(args(&["--target", "http://h/", "--direct"]).is_err());
    }

    #[test]
    fn the_target_url_gives_the_default_path() {
        let p = plan(&["--target", "http://127.0.0.1:8080/app?x=1"]).expect("valid");
        assert_eq!(p.path.as_str(), "/app?x=1");
        let p = plan(&["--target", "http://127.0.0.1:8080", "--path", "/y"]).expect("valid");
        assert_eq!(p.path.as_str(), "/y");
    }

    #[test]
    fn idle_only_runs_take_a_zero_duration() {
        let p = plan(&["--idle-conns", "10", "--duration", "0"]).expect("valid");
        assert_eq!(p.idle_conns, Some(10));
        assert!(p.duration.is_zero());
        assert!(!p.idle_h2, "HTTP/1.1 unless asked");
        let p = plan(&["--fresh-only"]).expect("valid");
        assert_eq!(p.users.sample(&mut crate::users::Rng::new(1, 1)), 1);
    }

    #[test]
    fn idle_h2_asks_for_h2c_idle_connections_and_needs_idle_conns() {
        let p = plan(&["--idle-conns", "10", "--duration", "0", "--idle-h2"]).expect("valid");
        assert_eq!((p.idle_conns, p.idle_h2), (Some(10), true));
        let p = plan(&["--idle-h2", "--idle-conns", "5"]).expect("valid");
        assert_eq!((p.idle_conns, p.idle_h2), (Some(5), true));
        let e = args(&["--idle-h2"]).expect_err("--idle-h2 alone was accepted");
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--idle-conns"), "{e}");
    }

    #[test]
    fn hosts_are_names_or_addresses_with_an_optional_port() {
        for good in [
            "shop.example.com",
            "Shop.Example.COM",
            "shop.example.com.",
            "localhost",
            "a_b-c.example",
            "xn--bcher-kva.example",
            "shop.example.com:8080",
            "10.0.0.5",
            "10.0.0.5:65535",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::7]:1",
        ] {
            assert_eq!(parse_host(good).as_deref(), Ok(good), "kept as given");
        }
        for (bad, needle) in [
            ("", "empty host"),
            (" shop.example", "no whitespace or control"),
            ("shop example", "no whitespace or control"),
            ("shop.example\t", "no whitespace or control"),
            ("shop\r\nx-evil: 1", "no whitespace or control"),
            ("shop\u{0}", "no whitespace or control"),
            ("shop\u{7f}", "no whitespace or control"),
            ("b\u{fc}cher.example", "xn--"),
            ("::1", "in brackets"),
            ("shop.example:80:81", "more than one ':'"),
            ("shop.example:", "port \"\""),
            ("shop.example:0", "from 1 to 65535"),
            ("shop.example:65536", "from 1 to 65535"),
            ("shop.example:+80", "from 1 to 65535"),
            ("shop.example:http", "from 1 to 65535"),
            (":8080", "no host before the port"),
            ("[::1", "without ']'"),
            ("[::g]", "not an IPv6 address"),
            ("[10.0.0.1]", "not an IPv6 address"),
            ("[]", "not an IPv6 address"),
            ("[::1]8080", "only :port"),
            ("[::1]:", "from 1 to 65535"),
            ("user@shop.example", "contains '@'"),
            ("shop.example/x", "contains '/'"),
            ("*.example.com", "contains '*'"),
            (".shop.example", "empty label"),
            ("shop..example", "empty label"),
            ("shop.example..", "empty label"),
            (".", "empty label"),
            ("999.1.1.1", "not an IPv4 address"),
            ("10.0.0", "not an IPv4 address"),
        ] {
            let e = parse_host(bad).expect_err(&format!("{bad:?} was accepted"));
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_host_option_reaches_the_plan_and_a_bad_one_is_a_usage_error() {
        assert_eq!(
            plan(&["--host", "shop.example.com"])
                .expect("valid")
                .host
                .as_deref(),
            Some("shop.example.com")
        );
        let p = plan(&["--target", "http://127.0.0.1:8080/", "--host", "[::1]:8080"]);
        assert_eq!(p.expect("valid").host.as_deref(), Some("[::1]:8080"));
        let p = plan(&["--direct", "--host", "10.0.0.5"]).expect("valid");
        assert_eq!(p.host.as_deref(), Some("10.0.0.5"));
        for bad in ["", "shop example", "a:b:c", "shop.example:0"] {
            let e = args(&["--host", bad]).expect_err(&format!("{bad:?} was accepted"));
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}");
            assert!(e.use_stderr());
            assert_eq!(e.exit_code(), i32::from(crate::EXIT_USAGE), "{bad:?}");
            assert!(e.to_string().contains("--host <NAME>"), "{bad:?}: {e}");
        }
        // --backends-only sends no requests.
        let e = args(&["--backends-only", "--host", "h"]).expect_err("conflict");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
