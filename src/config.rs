//! Configuration: a TOML file read into a raw schema, then validated into the plain typed values
//! the rest of the crate runs on.
//!
//! The pipeline has three stages, one module each:
//! - `raw`: the serde schema, one struct per section, `deny_unknown_fields`, the defaults, and a
//!   `toml::Spanned` on every value a rule checks. Nothing outside `config` sees it.
//! - `validate`: every rule, each error at the offending value's own `PATH:LINE:COL`; then the
//!   I/O of loading (key files and environment variables through [`KeySource`], certificates),
//!   done last so a config that breaks a rule reads nothing.
//! - this module: the validated [`Config`], whose fields are plain values (`Duration`,
//!   `SocketAddr`, resolved secrets, TLS configs). It never holds a span: nothing past loading
//!   needs to know where a value was written.
//!
//! Parsing works from a `&str` so tests need no files; [`load`] adds the file read. Every key
//! and default is documented in `config/example.toml`.

mod duration;
mod inherit;
mod keys;
mod raw;
mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use keys::{KeySource, Secret, SystemKeys};

use crate::affinity::{AdminState, AllDown, OnPinnedDown, Policy};
pub use crate::discover::DiscoverId;
use crate::health::StatusRange;

/// A config error, displayed as one line `PATH:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:{col}: {message}")]
pub struct ConfigError {
    /// The file (or a label for in-memory text).
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

/// A validated configuration: every rule holds, every key is resolved, every certificate is
/// loaded. Sections mirror the file's; see `config/example.toml` for what each key means.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: Server,
    /// `[affinity]`.
    pub affinity: Affinity,
    /// `[balance]`.
    pub balance: Balance,
    /// `[upstream]`.
    pub upstream: Upstream,
    /// `[health]`.
    pub health: Health,
    /// `[replication]` (the pool "default"'s, and every pool's defaults).
    pub replication: Replication,
    /// `[log]`.
    pub log: Log,
    /// `[admin]`. `None`: no admin listener.
    pub admin: Option<Admin>,
    /// `[tls]` with at least one certificate. `None`: nothing to serve `listen_tls` with (and
    /// then there is no `listen_tls`).
    pub tls: Option<Tls>,
    /// Every backend, in file order: the top-level `[[backend]]`s, then each `[[pool]]`'s;
    /// never empty, ids unique across pools.
    pub backends: Vec<Backend>,
    /// The pools: "default" first when there are top-level backends, then `[[pool]]`s in
    /// file order. Never empty; every pool has at least one backend.
    pub pools: Vec<Pool>,
    /// `[[route]]`s, with the pool "default" serving what no route matches.
    pub routes: crate::route::Table,
}

/// One pool of backends with its own affinity, health and placement.
#[derive(Debug, Clone)]
pub struct Pool {
    /// `name` ("default" for the top-level backends).
    pub name: String,
    /// Its `[affinity]`: the top-level section with the pool's overrides; the cookie is the
    /// pool's own (`stickyd_<name>` unless set).
    pub affinity: Affinity,
    /// Its `[health]`.
    pub health: Health,
    /// Its `[balance]`.
    pub balance: Balance,
    /// Its `[replication]`.
    pub replication: Replication,
    /// Its configured backends, as indexes into [`Config::backends`] (maybe none when it
    /// discovers backends).
    pub backends: Vec<usize>,
    /// Its `[[discover]]` (`[[pool.discover]]`) entries: backends found in DNS.
    pub discover: Vec<Discover>,
}

impl Pool {
    /// This pool's affinity policy, in whole seconds.
    pub fn policy(&self) -> Policy {
        policy(&self.affinity, &self.balance, &self.replication)
    }
}

/// `[server]`: client-facing listeners and limits.
#[derive(Debug, Clone)]
pub struct Server {
    /// Plain HTTP listeners (HTTP/1.1, and h2c with prior knowledge).
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (ALPN h2 and http/1.1), served with [`Config::tls`].
    pub listen_tls: Vec<SocketAddr>,
    /// Worker threads; 0 means one per CPU.
    pub worker_threads: usize,
    /// Client connections open at once (at least 1).
    pub max_connections: usize,
    /// Time allowed to receive a full request head, idle keep-alive time included (not zero).
    pub header_read_timeout: Duration,
    /// Longest wait on the client in the middle of an exchange (not zero).
    pub client_timeout: Duration,
    /// Largest request head in bytes, 8192 to 1048576.
    pub max_header_bytes: usize,
    /// Most header fields in one request, 1 to 1000.
    pub max_headers: usize,
    /// Time in-flight requests get to finish on SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// After SIGTERM, `/readyz` answers 503 and everything is served as before for this long
    /// (while the platform stops sending traffic), then the drain of `shutdown_grace` begins.
    pub shutdown_delay: Duration,
    /// Peers whose X-Forwarded-* headers are trusted and appended to.
    pub trusted_proxies: Vec<Cidr>,
    /// Reload when the config file (or the file a symlink to it points at) changes, with the
    /// validation of SIGHUP.
    pub watch_config: bool,
    /// Every connection (plain and TLS listeners) begins with a PROXY protocol header (v1 or
    /// v2) naming the client; a connection without a valid one is closed unread.
    pub proxy_protocol: bool,
    /// The peers (the L4 balancers) allowed to send it; others are closed at once.
    pub proxy_protocol_from: Vec<Cidr>,
    /// Add `Via: <version> stickyd` to forwarded requests.
    pub via: bool,
    /// HTTP/2: concurrent streams per client connection.
    pub h2_max_concurrent_streams: u32,
}

/// `[affinity]`: what carries a session, the token's lifetimes and keys.
#[derive(Debug, Clone)]
pub struct Affinity {
    /// What carries affinity.
    pub mode: Mode,
    /// `header` mode: the header that carries the token (or whose value is hashed).
    pub header: http::HeaderName,
    /// `header` mode: hash the header's plain value instead of a signed token.
    pub header_trusted: bool,
    /// Share of new sessions that are pinned, 0.0 to 1.0.
    pub sticky_fraction: f64,
    /// Cookie name (a valid cookie name).
    pub cookie: String,
    /// Sliding idle lifetime, at least 1s.
    pub max_idle: Duration,
    /// Absolute lifetime from first issue, at least 1s.
    pub max_life: Duration,
    /// Fraction of `max_idle` after which a valid token is re-issued, in `[0, 1)`.
    pub refresh_fraction: f64,
    /// Allowed clock skew between instances for tokens dated in the future.
    pub clock_skew: Duration,
    /// The secrets `keys` named, in order: the first signs, all verify. Never empty: with no
    /// key configured it holds one random key (see `generated_key`).
    pub secrets: Vec<Secret>,
    /// True when no key was configured and a random one was generated.
    pub generated_key: bool,
    /// What to do when the pinned backend is unusable.
    pub on_pinned_down: OnPinnedDown,
    /// `Secure` on the cookie: `None`, on TLS listeners only.
    pub secure: Option<bool>,
    /// Cookie `Domain`, when set.
    pub domain: Option<String>,
    /// Cookie `SameSite`.
    pub same_site: crate::headers::SameSite,
    /// Cookie `Partitioned` (CHIPS).
    pub partitioned: bool,
}

/// `[balance]`: placement of new sessions, and what happens when nothing is up.
#[derive(Debug, Clone)]
pub struct Balance {
    /// What to do when no backend is usable.
    pub all_down: AllDown,
    /// `Retry-After` sent with 503s.
    pub retry_after: Duration,
    /// Weight ramp for a backend that recovers or is added (zero: off).
    pub slow_start: Duration,
    /// How new sessions are placed.
    pub new_sessions: NewSessions,
    /// least_loaded's bounded-load factor, 1.0 to 100.0.
    pub load_factor: f64,
}

/// `[replication]`: session replication (issue 15). With `backups > 0` every request to a
/// backend names the session's backups, and a session whose home is lost is served by its
/// first usable backup with a takeover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replication {
    /// Backups named per session: 0 (off), 1 or 2.
    pub backups: u8,
    /// The port named for replication traffic; `None`: each backend's own port.
    pub port: Option<u16>,
}

/// `[upstream]`: the connection pool to backends.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// TCP connect timeout to a backend (not zero).
    pub connect_timeout: Duration,
    /// Time to the response head after the request was sent (not zero).
    pub response_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per backend.
    pub pool_max_idle: usize,
    /// Extra attempts on another backend when a retry is safe, 0 to 3.
    pub retries: u32,
    /// An upgraded connection with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
}

/// `[health]`: active and passive health checks.
#[derive(Debug, Clone)]
pub struct Health {
    /// Run active checks.
    pub enabled: bool,
    /// Path (and query) checked with GET; starts with `/`.
    pub path: String,
    /// Host header of checks (a valid header value); the backend address when `None`.
    pub host: Option<String>,
    /// Time between checks of one backend (not zero).
    pub interval: Duration,
    /// Time allowed for one check (not zero).
    pub timeout: Duration,
    /// Consecutive passing checks to come up (at least 1).
    pub rise: u32,
    /// Consecutive failing checks to go down (at least 1).
    pub fall: u32,
    /// Statuses that pass.
    pub expect_status: StatusRange,
    /// Health before the first checks.
    pub initial: Initial,
    /// Consecutive connect failures that eject a backend (0: never).
    pub passive_failures: u32,
    /// With active checks off, how long an ejected backend stays out.
    pub eject_time: Duration,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct Log {
    /// A valid tracing filter, each directive trimmed (see [`trim_directives`]).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
    /// Access log format.
    pub access: crate::access::Format,
    /// Where access lines go, resolved against the config file's directory; stdout when `None`.
    pub access_file: Option<PathBuf>,
}

/// `[admin]`: the admin API.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The admin listener: loopback unless there is a token.
    pub listen: SocketAddr,
    /// The bearer token every call must carry, resolved from `admin.token`.
    pub token: Option<Secret>,
    /// A draining backend is reported `drained` once it has served nothing for this long.
    pub drain_quiet: Duration,
    /// Host names (or IP literals) the admin API may be reached by besides its own address and
    /// `localhost`, e.g. through a reverse proxy or a tunnel. No port.
    pub allowed_hosts: Vec<String>,
}

impl Default for Admin {
    /// The defaults of an `[admin]` section with no keys.
    fn default() -> Admin {
        let raw = raw::Admin::default();
        Admin {
            listen: *raw.listen.get_ref(),
            token: None,
            drain_quiet: raw.drain_quiet.0,
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[tls]`: what `listen_tls` serves.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The rustls server config made from the loaded certificates (SNI picks among them).
    pub server_config: Arc<rustls::ServerConfig>,
    /// The loaded certificates, in config order (to know which one a connection was served
    /// with: `tls::served`).
    pub certs: Vec<crate::tls::Cert>,
    /// Time a client gets to complete the TLS handshake.
    pub handshake_timeout: Duration,
}

/// `[[backend]]`.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Stable, operator-assigned id (1 to 64 of `A-Z a-z 0-9 - _ . :`, unique).
    pub id: String,
    /// `host:port` of the backend, as written.
    pub address: http::uri::Authority,
    /// Share of new sessions, 1 to 1000.
    pub weight: u32,
    /// Admin state at start.
    pub state: AdminState,
    /// The HTTP version spoken to this backend.
    pub protocol: Protocol,
    /// The TLS client for this backend, when `tls` is on.
    pub origin: Option<crate::tls::Origin>,
}

/// `[[discover]]`: backends of a pool found in DNS, re-resolved every `interval`.
#[derive(Debug, Clone)]
pub struct Discover {
    /// What is looked up.
    pub lookup: Lookup,
    /// What names each backend found.
    pub id: DiscoverId,
    /// Time between lookups.
    pub interval: Duration,
    /// A backend gone from the answers drains this long (while its checks pass), then goes.
    pub remove_grace: Duration,
    /// Who answers.
    pub resolver: Resolver,
    /// Each backend's weight, 1 to 1000.
    pub weight: u32,
    /// The HTTP version spoken to each backend.
    pub protocol: Protocol,
    /// The TLS client for each backend, when `tls` is on (it verifies `server_name`).
    pub origin: Option<crate::tls::Origin>,
}

impl Discover {
    /// What it looks up as one label (`dns:NAME:PORT` or `srv:NAME`): unique within a pool,
    /// the `name` label of its metrics, and the key its backends are kept under across
    /// reloads.
    pub fn label(&self) -> String {
        match &self.lookup {
            Lookup::Dns { host, port } => format!("dns:{host}:{port}"),
            Lookup::Srv(name) => format!("srv:{name}"),
        }
    }

    /// Whether `other` looks up the same thing the same way (its backends' weight, TLS and
    /// protocol may differ: they are read at each snapshot).
    pub fn same_lookup(&self, other: &Discover) -> bool {
        self.lookup == other.lookup
            && self.id == other.id
            && self.interval == other.interval
            && self.remove_grace == other.remove_grace
            && self.resolver == other.resolver
    }
}

/// What a `[[discover]]` looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `dns = "NAME:PORT"`: A and AAAA records, each address with this port.
    Dns {
        /// The name.
        host: String,
        /// The port of every backend.
        port: u16,
    },
    /// `srv = "NAME"`: SRV records, each target's addresses with the record's port.
    Srv(String),
}

/// The resolver a `[[discover]]` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// The system's (`/etc/resolv.conf`).
    System,
    /// One name server, over UDP (and TCP for truncated answers).
    At(SocketAddr),
}

/// An IP network (`10.0.0.0/8`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Whether `ip` is inside. IPv4-mapped IPv6 addresses match their IPv4 form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// What carries a client's affinity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The signed cookie (the default).
    #[default]
    Cookie,
    /// A hash of the client's address (first untrusted X-Forwarded-For hop from a trusted
    /// proxy): no cookie.
    Ip,
    /// The signed token in a request/response header (API and mobile clients), or a hash of a
    /// trusted header's value.
    Header,
    /// No affinity: every request is placed anew.
    None,
}

/// How new sessions are placed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NewSessions {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted power of two choices on in-flight requests and recent pins, with a
    /// bounded-load cap.
    LeastLoaded,
}

/// Initial health of a backend before its first checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Initial {
    /// Serve at once; `fall` failed checks take it down.
    Up,
    /// Serve only after `rise` good checks.
    Down,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The HTTP version stickyd speaks to a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 keep-alive (the default).
    #[default]
    Http1,
    /// HTTP/2: one multiplexed connection per worker (h2c with prior knowledge, or ALPN h2
    /// with `tls = true`).
    H2,
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: label.clone(),
        line: 1,
        col: 1,
        message: format!("cannot read config: {e}"),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, &label, dir, &SystemKeys)
}

/// Parses and validates config text. `label` names it in errors; relative paths (key files,
/// certificates, the access log) are taken from `dir`.
pub fn parse(
    text: &str,
    label: &str,
    dir: &Path,
    keys: &dyn KeySource,
) -> Result<Config, ConfigError> {
    let at = |span: std::ops::Range<usize>, message: String| {
        let (line, col) = line_col(text, span.start);
        ConfigError {
            path: label.to_string(),
            line,
            col,
            message,
        }
    };
    let toml_error = |e: toml::de::Error| {
        at(
            e.span().unwrap_or(0..0),
            e.message().trim_end().replace('\n', " "),
        )
    };
    // Parsed into toml's spanned table first: pools inherit the top-level sections there,
    // every value keeping the position it was written at.
    let mut doc = toml::de::DeTable::parse(text).map_err(toml_error)?;
    inherit::pool_sections(doc.get_mut());
    let raw = raw::Config::deserialize(toml::de::Deserializer::from(doc)).map_err(toml_error)?;
    validate::config(raw, dir, keys).map_err(|(span, message)| at(span, message))
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The affinity policy of one pool's `[affinity]` and `[balance]`, in whole seconds.
pub fn policy(a: &Affinity, b: &Balance, r: &Replication) -> Policy {
    let max_idle = secs_u32(a.max_idle);
    Policy {
        max_idle,
        max_life: secs_u32(a.max_life),
        refresh_after: (f64::from(max_idle) * a.refresh_fraction) as u32,
        skew: secs_u32(a.clock_skew),
        on_pinned_down: a.on_pinned_down,
        all_down: b.all_down,
        sticky_below: {
            let f = a.sticky_fraction;
            if f >= 1.0 {
                u64::MAX
            } else {
                (f.max(0.0) * u64::MAX as f64) as u64
            }
        },
        backups: r.backups,
    }
}

/// Whole seconds, saturating at `u32::MAX` (token fields are u32 seconds).
fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl Config {
    /// The affinity policy of the top-level sections (the pool "default"'s), in whole seconds.
    pub fn policy(&self) -> Policy {
        policy(&self.affinity, &self.balance, &self.replication)
    }

    /// A few lines describing the config, printed by `stickyd check`.
    pub fn summary(&self) -> String {
        use humantime::format_duration as human;
        use std::fmt::Write as _;
        let mut s = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(s, "listen: {}", listen.join(", "));
        let a = &self.affinity;
        let _ = writeln!(
            s,
            "affinity: cookie {:?}, max_idle {}, max_life {}, on_pinned_down {}, {} key(s){}",
            a.cookie,
            human(a.max_idle),
            human(a.max_life),
            format!("{:?}", a.on_pinned_down).to_lowercase(),
            a.secrets.len(),
            if a.generated_key {
                " (generated at start: configure affinity.keys)"
            } else {
                ""
            }
        );
        let h = &self.health;
        if h.enabled {
            let _ = writeln!(
                s,
                "health: GET {} every {}, timeout {}, rise {}, fall {}",
                h.path,
                human(h.interval),
                human(h.timeout),
                h.rise,
                h.fall
            );
        } else {
            let _ = writeln!(s, "health: active checks off");
        }
        if let Some(a) = &self.admin {
            let _ = writeln!(
                s,
                "admin: {}{}",
                a.listen,
                if a.token.is_some() {
                    " (bearer token)"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(s, "backends: {}", self.backends.len());
        let several = self.pools.len() > 1 || !self.routes.routes().is_empty();
        for (g, b) in self.backends.iter().enumerate() {
            let pool = self
                .pools
                .iter()
                .find(|p| p.backends.contains(&g))
                .filter(|_| several)
                .map(|p| format!(" pool {}", p.name));
            let _ = writeln!(
                s,
                "  {} {} weight {} {}{}",
                b.id,
                b.address,
                b.weight,
                format!("{:?}", b.state).to_lowercase(),
                pool.unwrap_or_default()
            );
        }
        for p in &self.pools {
            for d in &p.discover {
                let _ = writeln!(
                    s,
                    "discover: {} every {}, ids {}, remove_grace {}, resolver {}, weight {}{}",
                    d.label(),
                    human(d.interval),
                    match d.id {
                        DiscoverId::Address => "address",
                        DiscoverId::SrvTarget => "srv-target",
                    },
                    human(d.remove_grace),
                    match d.resolver {
                        Resolver::System => "system".to_string(),
                        Resolver::At(a) => a.to_string(),
                    },
                    d.weight,
                    if several {
                        format!(" pool {}", p.name)
                    } else {
                        String::new()
                    }
                );
            }
        }
        if several {
            let _ = writeln!(s, "pools: {}", self.pools.len());
            for p in &self.pools {
                let _ = writeln!(
                    s,
                    "  {}: cookie {:?}, mode {}, new sessions {}, {} backend(s){}",
                    p.name,
                    p.affinity.cookie,
                    format!("{:?}", p.affinity.mode).to_lowercase(),
                    format!("{:?}", p.balance.new_sessions).to_lowercase(),
                    p.backends.len(),
                    if p.discover.is_empty() {
                        ""
                    } else {
                        " and discovered ones"
                    }
                );
            }
            let _ = writeln!(s, "routes, in the order they are tried:");
            for r in self.routes.in_order() {
                let _ = writeln!(
                    s,
                    "  {} {} -> {}",
                    r.host, r.path_prefix, self.pools[r.pool].name
                );
            }
            let _ = writeln!(
                s,
                "  anything else -> {}",
                self.routes
                    .default_pool()
                    .map_or("404", |d| self.pools[d].name.as_str())
            );
        }
        s
    }
}

/// A tracing filter with each comma-separated directive trimmed: tracing-subscriber 0.3 slices
/// each directive with the indices of its trimmed form, so whitespace before a directive
/// misparses it, and before a non-ASCII character panics (found by fuzzing). The config's
/// `log.level` and `RUST_LOG` both go through it.
pub fn trim_directives(filter: &str) -> String {
    filter
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a backend address `host:port` into an authority, or `None`.
pub fn parse_address(s: &str) -> Option<http::uri::Authority> {
    let a: http::uri::Authority = s.parse().ok()?;
    (a.port_u16().is_some() && !a.host().is_empty() && !s.contains('@')).then_some(a)
}

/// Parses `text` for the crate's unit tests: every `env:` key is 32 bytes of `k`, no file is
/// read. Panics on a config error.
#[cfg(test)]
pub(crate) fn parse_for_tests(text: &str) -> Config {
    struct K;
    impl KeySource for K {
        fn file(&self, _: &Path) -> std::io::Result<Vec<u8>> {
            Err(std::io::ErrorKind::NotFound.into())
        }
        fn env(&self, _: &str) -> Option<Vec<u8>> {
            Some(vec![b'k'; 32])
        }
    }
    parse(text, "t", Path::new("."), &K).unwrap()
}

#[cfg(test)]
mod tests;
