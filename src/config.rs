//! Configuration: the TOML schema, its defaults, validation, and key loading.
//!
//! Parsing works from a `&str` so tests need no files; [`load`] adds the file read. Unknown keys
//! are rejected, and every error carries `file:line:col` (spans are kept with `toml::Spanned`
//! where a rule spans more than one value). Every key and default is documented in
//! `config/example.toml`. This module owns the only I/O of config loading: reading the file and
//! the key files and environment variables its `keys` name.

mod duration;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use duration::Dur;

use crate::affinity::{AdminState, AllDown, OnPinnedDown, Policy};
use crate::headers::is_cookie_name;
use crate::health::StatusRange;
use crate::token::MIN_SECRET_LEN;

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

/// A secret key. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: client-facing listeners and limits.
    #[serde(default)]
    pub server: Server,
    /// `[affinity]`: the cookie and its lifetimes.
    #[serde(default)]
    pub affinity: Affinity,
    /// `[balance]`: placement when things are down.
    #[serde(default)]
    pub balance: Balance,
    /// `[upstream]`: the connection pool to backends.
    #[serde(default)]
    pub upstream: Upstream,
    /// `[health]`: active and passive health checks.
    #[serde(default)]
    pub health: Health,
    /// `[log]`: logging.
    #[serde(default)]
    pub log: Log,
    /// `[admin]`: the admin API. Absent: no admin listener.
    pub admin: Option<Admin>,
    /// `[tls]`: certificates for `listen_tls`.
    pub tls: Option<Tls>,
    /// `[[backend]]`: the pool.
    #[serde(default, rename = "backend")]
    pub backends: Vec<Backend>,
    /// Secrets resolved from `affinity.keys`; the first signs.
    #[serde(skip)]
    pub secrets: Vec<Secret>,
    /// True when no key was configured and a random one was generated.
    #[serde(skip)]
    pub generated_key: bool,
    /// The admin API's bearer token, resolved from `admin.token`.
    #[serde(skip)]
    pub admin_token: Option<Secret>,
    /// Certificates loaded from `tls.certs`, in order (the first is the default).
    #[serde(skip)]
    pub certs: Vec<crate::tls::Cert>,
    /// The TLS server config made from them, when there are any.
    #[serde(skip)]
    pub tls_config: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chains and keys; SNI picks by the certificates' names, the first is the
    /// default.
    pub certs: Spanned<Vec<CertSpec>>,
    /// Time a client gets to complete the TLS handshake.
    #[serde(default = "ten_seconds")]
    pub handshake_timeout: Dur,
}

fn ten_seconds() -> Dur {
    Dur(Duration::from_secs(10))
}

/// One `[tls] certs` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertSpec {
    /// PEM certificate chain, leaf first (relative to the config file).
    pub cert: Spanned<String>,
    /// PEM private key (relative to the config file).
    pub key: Spanned<String>,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// The admin listener. Loopback unless a token is set.
    pub listen: Spanned<SocketAddr>,
    /// `file:PATH` or `env:NAME` of a bearer token (>= 32 bytes) every admin call must carry.
    pub token: Option<Spanned<String>>,
    /// A draining backend is reported `drained` once it has served nothing for this long.
    pub drain_quiet: Dur,
    /// Host names (or IP literals) the admin API may be reached by besides its own address and
    /// `localhost`, e.g. through a reverse proxy or a tunnel. No port.
    pub allowed_hosts: Vec<Spanned<String>>,
}

impl Default for Admin {
    fn default() -> Admin {
        Admin {
            listen: Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 9901))),
            token: None,
            drain_quiet: Dur(Duration::from_secs(120)),
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Plain HTTP listeners (HTTP/1.1, and h2c with prior knowledge).
    pub listen: Spanned<Vec<SocketAddr>>,
    /// TLS listeners (ALPN h2 and http/1.1); certificates from `[tls]`.
    pub listen_tls: Spanned<Vec<SocketAddr>>,
    /// Worker threads (thread-per-core: own runtime, listeners and upstream pool); 0 means one
    /// per CPU.
    pub worker_threads: usize,
    /// Client connections open at once; the accept loop waits above it.
    pub max_connections: usize,
    /// Time allowed to receive a full request head, idle keep-alive time included.
    pub header_read_timeout: Dur,
    /// Longest wait on the client in the middle of an exchange: between two reads of a request
    /// body (408 past it), and for a write of the response to make progress (the connection is
    /// closed past it).
    pub client_timeout: Dur,
    /// Largest request head in bytes (answered 431 above it); at least 8192.
    pub max_header_bytes: Spanned<usize>,
    /// Most header fields in one request (431 above it).
    pub max_headers: Spanned<usize>,
    /// Time in-flight requests get to finish on SIGTERM/SIGINT.
    pub shutdown_grace: Dur,
    /// Peers (CIDRs or addresses) whose X-Forwarded-* headers are trusted and appended to.
    pub trusted_proxies: Vec<Cidr>,
    /// Add `Via: <version> stickyd` to forwarded requests.
    pub via: bool,
    /// HTTP/2: concurrent streams per client connection.
    pub h2_max_concurrent_streams: u32,
}

impl Default for Server {
    fn default() -> Server {
        Server {
            listen: Spanned::new(0..0, vec![SocketAddr::from(([127, 0, 0, 1], 8080))]),
            listen_tls: Spanned::new(0..0, Vec::new()),
            worker_threads: 0,
            max_connections: 10_000,
            header_read_timeout: Dur(Duration::from_secs(10)),
            client_timeout: Dur(Duration::from_secs(60)),
            max_header_bytes: Spanned::new(0..0, 65_536),
            max_headers: Spanned::new(0..0, 100),
            shutdown_grace: Dur(Duration::from_secs(30)),
            trusted_proxies: Vec::new(),
            via: true,
            h2_max_concurrent_streams: 128,
        }
    }
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

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        from_str_with(d, "a network such as \"10.0.0.0/8\"", |s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map(Cidr)
                .map_err(|_| {
                    format!("invalid network {s:?} (expected e.g. \"10.0.0.0/8\" or \"192.0.2.1\")")
                })
        })
    }
}

/// Deserializes a string through `parse`, raising its error while the string is the current
/// value, so the error's position is the value's own (not its enclosing array or table).
fn from_str_with<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct V<F>(&'static str, F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> serde::de::Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.1)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(expecting, parse))
}

/// `[affinity]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Affinity {
    /// What carries affinity.
    pub mode: Mode,
    /// `header` mode: the request and response header that carries the token (or, with
    /// `header_trusted`, whose value is hashed).
    pub header: Spanned<String>,
    /// `header` mode: hash the header's plain value instead of a signed token (only for a
    /// header set by something trusted, e.g. an authenticating gateway).
    pub header_trusted: bool,
    /// Share of new sessions that are pinned (0.0 to 1.0); the others are placed anew on every
    /// request.
    pub sticky_fraction: Spanned<f64>,
    /// Cookie name.
    pub cookie: Spanned<String>,
    /// Sliding idle lifetime.
    pub max_idle: Spanned<Dur>,
    /// Absolute lifetime from first issue.
    pub max_life: Spanned<Dur>,
    /// Fraction of `max_idle` after which a valid token is re-issued.
    pub refresh_fraction: Spanned<f64>,
    /// Allowed clock skew between instances for tokens dated in the future.
    pub clock_skew: Dur,
    /// Key specs, `file:PATH` or `env:NAME`; the first signs, all verify.
    pub keys: Vec<Spanned<String>>,
    /// What to do when the pinned backend is unusable.
    pub on_pinned_down: OnPinnedDown,
    /// `Secure` on the cookie: absent, on TLS listeners only; `true`, always (set it behind a
    /// TLS-terminating proxy); `false`, never.
    pub secure: Option<bool>,
    /// Optional cookie `Domain`.
    pub domain: Option<Spanned<String>>,
}

impl Default for Affinity {
    fn default() -> Affinity {
        Affinity {
            mode: Mode::Cookie,
            header: Spanned::new(0..0, "x-stickyd-session".to_string()),
            header_trusted: false,
            sticky_fraction: Spanned::new(0..0, 1.0),
            cookie: Spanned::new(0..0, "stickyd".to_string()),
            max_idle: Spanned::new(0..0, Dur(Duration::from_secs(30 * 60))),
            max_life: Spanned::new(0..0, Dur(Duration::from_secs(24 * 3600))),
            refresh_fraction: Spanned::new(0..0, 0.25),
            clock_skew: Dur(Duration::from_secs(30)),
            keys: Vec::new(),
            on_pinned_down: OnPinnedDown::Repin,
            secure: None,
            domain: None,
        }
    }
}

/// What carries a client's affinity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
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

/// `[balance]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Balance {
    /// What to do when no backend is usable.
    pub all_down: AllDown,
    /// `Retry-After` sent with 503s.
    pub retry_after: Dur,
    /// A backend that recovers or is added gets new sessions on a weight ramp over this long
    /// (0: off).
    pub slow_start: Dur,
    /// How new sessions are placed.
    pub new_sessions: NewSessions,
    /// least_loaded: no backend takes a new session above this many times its share of the
    /// load (>= 1.0).
    pub load_factor: Spanned<f64>,
}

/// How new sessions are placed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NewSessions {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted power of two choices on in-flight requests and recent pins, with a
    /// bounded-load cap.
    LeastLoaded,
}

impl Default for Balance {
    fn default() -> Balance {
        Balance {
            all_down: AllDown::Fail,
            retry_after: Dur(Duration::from_secs(5)),
            slow_start: Dur(Duration::ZERO),
            new_sessions: NewSessions::RoundRobin,
            load_factor: Spanned::new(0..0, 1.25),
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// TCP connect timeout to a backend.
    pub connect_timeout: Dur,
    /// Time to the response head after the request was sent.
    pub response_timeout: Dur,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: Dur,
    /// Idle pooled connections kept per backend.
    pub pool_max_idle: usize,
    /// Extra attempts on another backend when a retry is safe (0 disables).
    pub retries: Spanned<u32>,
    /// An upgraded connection (WebSocket) with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Dur,
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream {
            connect_timeout: Dur(Duration::from_secs(3)),
            response_timeout: Dur(Duration::from_secs(60)),
            pool_idle_timeout: Dur(Duration::from_secs(90)),
            pool_max_idle: 256,
            retries: Spanned::new(0..0, 1),
            tunnel_idle_timeout: Dur(Duration::from_secs(600)),
        }
    }
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

/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Run active checks.
    pub enabled: bool,
    /// Path (and query) checked with GET.
    pub path: Spanned<String>,
    /// Host header of checks; the backend address when unset.
    pub host: Option<String>,
    /// Time between checks of one backend.
    pub interval: Spanned<Dur>,
    /// Time allowed for one check (connect + response head).
    pub timeout: Spanned<Dur>,
    /// Consecutive passing checks to come up.
    pub rise: Spanned<u32>,
    /// Consecutive failing checks to go down.
    pub fall: Spanned<u32>,
    /// Statuses that pass, e.g. "200-399".
    pub expect_status: StatusRangeCfg,
    /// Health before the first checks.
    pub initial: Initial,
    /// Consecutive connect failures seen by the proxy that eject a backend (0: never).
    pub passive_failures: u32,
    /// With active checks off, how long an ejected backend stays out.
    pub eject_time: Dur,
}

/// A [`StatusRange`] read from a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRangeCfg(pub StatusRange);

impl<'de> Deserialize<'de> for StatusRangeCfg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StatusRangeCfg, D::Error> {
        from_str_with(d, "a status or range such as \"200-399\"", |s| {
            s.parse().map(StatusRangeCfg)
        })
    }
}

impl Default for Health {
    fn default() -> Health {
        Health {
            enabled: true,
            path: Spanned::new(0..0, "/healthz".into()),
            host: None,
            interval: Spanned::new(0..0, Dur(Duration::from_secs(2))),
            timeout: Spanned::new(0..0, Dur(Duration::from_secs(1))),
            rise: Spanned::new(0..0, 2),
            fall: Spanned::new(0..0, 3),
            expect_status: StatusRangeCfg(StatusRange { lo: 200, hi: 399 }),
            initial: Initial::Up,
            passive_failures: 3,
            eject_time: Dur(Duration::from_secs(10)),
        }
    }
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

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A level (`info`) or tracing filter (`stickyd=debug,info`); `RUST_LOG` overrides it.
    pub level: Spanned<String>,
    /// Output format.
    pub format: LogFormat,
    /// Access log: one line per request, `off`, `text` or `json`.
    pub access: crate::access::Format,
    /// Where access lines go: a file (appended to; relative to the config file), or stdout
    /// when absent.
    pub access_file: Option<PathBuf>,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            level: Spanned::new(0..0, "info".into()),
            format: LogFormat::Text,
            access: crate::access::Format::Off,
            access_file: None,
        }
    }
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

/// `[[backend]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Stable, operator-assigned id: sessions are pinned to it, not to the address.
    pub id: Spanned<String>,
    /// `host:port` of the backend.
    pub address: Spanned<String>,
    /// Share of new sessions, 1 to 1000.
    #[serde(default = "one")]
    pub weight: Spanned<u32>,
    /// Admin state at start.
    #[serde(default = "active")]
    pub state: AdminState,
    /// Speak TLS to this backend.
    #[serde(default)]
    pub tls: bool,
    /// The HTTP version spoken to this backend.
    #[serde(default)]
    pub protocol: Protocol,
    /// PEM CA certificates to verify this backend's certificate with (default: the Mozilla
    /// roots).
    pub tls_ca: Option<Spanned<String>>,
    /// The name its certificate must carry (default: the host of `address`).
    pub server_name: Option<Spanned<String>>,
    /// The TLS client for this backend, made at load when `tls` is on.
    #[serde(skip)]
    pub origin: Option<crate::tls::Origin>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

fn active() -> AdminState {
    AdminState::Active
}

/// Where key specs and relative key paths are resolved.
pub trait KeySource {
    /// Contents of a key file.
    fn file(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// Value of an environment variable.
    fn env(&self, name: &str) -> Option<Vec<u8>>;
}

/// Keys from the real file system and environment.
pub struct SystemKeys;

impl KeySource for SystemKeys {
    fn file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn env(&self, name: &str) -> Option<Vec<u8>> {
        std::env::var_os(name).map(|v| v.into_encoded_bytes())
    }
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

/// Parses and validates config text. `label` names it in errors; relative key paths are taken
/// from `dir`.
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
    let mut cfg: Config = toml::from_str(text).map_err(|e| {
        at(
            e.span().unwrap_or(0..0),
            e.message().trim_end().replace('\n', " "),
        )
    })?;
    // tracing-subscriber 0.3 slices each directive of a filter with the indices of its trimmed
    // form: whitespace before a directive misparses it, and before a non-ASCII character it
    // panics (found by fuzzing). Hand it trimmed directives, for validation and for main.
    *cfg.log.level.get_mut() = trim_directives(cfg.log.level.get_ref());
    cfg.validate().map_err(|(span, msg)| at(span, msg))?;
    cfg.secrets = resolve_keys(&cfg.affinity.keys, dir, keys).map_err(|(s, m)| at(s, m))?;
    for b in &mut cfg.backends {
        if !b.tls {
            continue;
        }
        let host = parse_address(b.address.get_ref())
            .map(|a| {
                a.host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            })
            .unwrap_or_default();
        let name = b
            .server_name
            .as_ref()
            .map_or(host.as_str(), |n| n.get_ref().as_str());
        let span = b
            .tls_ca
            .as_ref()
            .map(|c| c.span())
            .or_else(|| b.server_name.as_ref().map(|n| n.span()))
            .unwrap_or_else(|| b.address.span());
        let ca = b.tls_ca.as_ref().map(|c| dir.join(c.get_ref()));
        b.origin = Some(
            crate::tls::Origin::new(ca.as_deref(), name, b.protocol == Protocol::H2)
                .map_err(|m| at(span, m))?,
        );
    }
    if let Some(t) = &cfg.tls {
        for spec in t.certs.get_ref() {
            let cert = crate::tls::load(
                &dir.join(spec.cert.get_ref()),
                &dir.join(spec.key.get_ref()),
            )
            .map_err(|m| at(spec.cert.span(), m))?;
            cfg.certs.push(cert);
        }
        if !cfg.certs.is_empty() {
            cfg.tls_config =
                Some(crate::tls::server_config(&cfg.certs).map_err(|m| at(t.certs.span(), m))?);
        }
    }
    if let Some(f) = cfg.log.access_file.take() {
        cfg.log.access_file = Some(dir.join(f));
    }
    if let Some(spec) = cfg.admin.as_ref().and_then(|a| a.token.clone()) {
        cfg.admin_token = resolve_keys(std::slice::from_ref(&spec), dir, keys)
            .map_err(|(s, m)| at(s, m))?
            .pop();
    }
    if cfg.secrets.is_empty() {
        let mut k = vec![0u8; 32];
        getrandom::fill(&mut k).map_err(|e| at(0..0, format!("cannot generate a key: {e}")))?;
        cfg.secrets.push(Secret(k));
        cfg.generated_key = true;
    }
    Ok(cfg)
}

type Invalid = (std::ops::Range<usize>, String);

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn resolve_keys(
    specs: &[Spanned<String>],
    dir: &Path,
    src: &dyn KeySource,
) -> Result<Vec<Secret>, Invalid> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let err = |m: String| (spec.span(), m);
        let raw = if let Some(p) = spec.get_ref().strip_prefix("file:") {
            let path: PathBuf = dir.join(p);
            src.file(&path)
                .map_err(|e| err(format!("cannot read key file {}: {e}", path.display())))?
        } else if let Some(name) = spec.get_ref().strip_prefix("env:") {
            src.env(name)
                .ok_or_else(|| err(format!("environment variable {name} is not set")))?
        } else {
            return Err(err(format!(
                "invalid key spec {:?}: expected \"file:PATH\" or \"env:NAME\" (keys are never written inline)",
                spec.get_ref()
            )));
        };
        let secret = raw.trim_ascii();
        if secret.len() < MIN_SECRET_LEN {
            return Err(err(format!(
                "key {:?} is {} bytes; at least {MIN_SECRET_LEN} are required (e.g. `openssl rand -base64 48`)",
                spec.get_ref(),
                secret.len()
            )));
        }
        out.push(Secret(secret.to_vec()));
    }
    Ok(out)
}

fn check(
    ok: bool,
    span: std::ops::Range<usize>,
    msg: impl FnOnce() -> String,
) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err((span, msg())) }
}

impl Config {
    fn validate(&self) -> Result<(), Invalid> {
        if let Some(a) = &self.admin {
            let ip = a.listen.get_ref().ip();
            check(
                ip.is_loopback() || a.token.is_some(),
                a.listen.span(),
                || {
                    format!(
                        "admin.listen {ip} is not loopback: set admin.token too, or listen on 127.0.0.1"
                    )
                },
            )?;
            if a.listen.get_ref().port() != 0
                && self.server.listen.get_ref().contains(a.listen.get_ref())
            {
                return Err((
                    a.listen.span(),
                    "admin.listen is also a server.listen address".into(),
                ));
            }
            for h in &a.allowed_hosts {
                check(is_host(h.get_ref()), h.span(), || {
                    format!(
                        "invalid admin.allowed_hosts entry {:?}: a host name or IP address without a port, e.g. \"admin.example.com\"",
                        h.get_ref()
                    )
                })?;
            }
        }
        let lf = *self.balance.load_factor.get_ref();
        check(
            lf.is_finite() && (1.0..=100.0).contains(&lf),
            self.balance.load_factor.span(),
            || format!("balance.load_factor must be 1.0 to 100.0, not {lf}"),
        )?;
        let s = &self.server;
        check(
            !(s.listen.get_ref().is_empty() && s.listen_tls.get_ref().is_empty()),
            s.listen.span(),
            || "server.listen or server.listen_tls needs at least one address".into(),
        )?;
        let has_certs = self
            .tls
            .as_ref()
            .is_some_and(|t| !t.certs.get_ref().is_empty());
        check(
            s.listen_tls.get_ref().is_empty() || has_certs,
            s.listen_tls.span(),
            || {
                "server.listen_tls needs certificates: [tls] certs = [{ cert = ..., key = ... }]"
                    .into()
            },
        )?;
        check(s.max_connections >= 1, 0..0, || {
            "server.max_connections must be at least 1".into()
        })?;
        let hb = *s.max_header_bytes.get_ref();
        check(
            (8192..=1 << 20).contains(&hb),
            s.max_header_bytes.span(),
            || format!("server.max_header_bytes must be 8192 to 1048576, not {hb}"),
        )?;
        let mh = *s.max_headers.get_ref();
        check((1..=1000).contains(&mh), s.max_headers.span(), || {
            format!("server.max_headers must be 1 to 1000, not {mh}")
        })?;
        check(!s.header_read_timeout.get().is_zero(), 0..0, || {
            "server.header_read_timeout must be more than 0".into()
        })?;
        check(!s.client_timeout.get().is_zero(), 0..0, || {
            "server.client_timeout must be more than 0".into()
        })?;

        let a = &self.affinity;
        let sf = *a.sticky_fraction.get_ref();
        check((0.0..=1.0).contains(&sf), a.sticky_fraction.span(), || {
            format!("affinity.sticky_fraction must be 0.0 to 1.0, not {sf}")
        })?;
        check(
            http::HeaderName::from_bytes(a.header.get_ref().as_bytes()).is_ok(),
            a.header.span(),
            || format!("invalid header name {:?}", a.header.get_ref()),
        )?;
        check(is_cookie_name(a.cookie.get_ref()), a.cookie.span(), || {
            format!("invalid cookie name {:?}", a.cookie.get_ref())
        })?;
        check(
            a.max_idle.get_ref().get() >= Duration::from_secs(1),
            a.max_idle.span(),
            || "affinity.max_idle must be at least 1s".into(),
        )?;
        check(
            a.max_life.get_ref().get() >= Duration::from_secs(1),
            a.max_life.span(),
            || "affinity.max_life must be at least 1s".into(),
        )?;
        for (v, name) in [(&a.max_idle, "max_idle"), (&a.max_life, "max_life")] {
            check(
                v.get_ref().get().as_secs() <= u64::from(u32::MAX / 2),
                v.span(),
                || format!("affinity.{name} is too long"),
            )?;
        }
        let f = *a.refresh_fraction.get_ref();
        check((0.0..1.0).contains(&f), a.refresh_fraction.span(), || {
            format!("affinity.refresh_fraction must be at least 0 and below 1, not {f}")
        })?;
        if let Some(d) = &a.domain {
            let ok = !d.get_ref().is_empty()
                && d.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            check(ok, d.span(), || {
                format!("invalid cookie domain {:?}", d.get_ref())
            })?;
        }

        let u = &self.upstream;
        check(*u.retries.get_ref() <= 3, u.retries.span(), || {
            "upstream.retries must be 0 to 3".into()
        })?;
        for (d, name) in [
            (u.connect_timeout, "connect_timeout"),
            (u.response_timeout, "response_timeout"),
        ] {
            check(!d.get().is_zero(), 0..0, || {
                format!("upstream.{name} must be more than 0")
            })?;
        }

        let h = &self.health;
        let path = h.path.get_ref();
        let path_ok = path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok();
        check(path_ok, h.path.span(), || {
            format!("invalid health.path {path:?} (must start with /)")
        })?;
        if let Some(host) = &h.host {
            check(http::HeaderValue::from_str(host).is_ok(), 0..0, || {
                format!("invalid health.host {host:?}")
            })?;
        }
        for d in [&h.interval, &h.timeout] {
            check(!d.get_ref().get().is_zero(), d.span(), || {
                "must be more than 0".into()
            })?;
        }
        for (v, name) in [(&h.rise, "rise"), (&h.fall, "fall")] {
            check(*v.get_ref() >= 1, v.span(), || {
                format!("health.{name} must be at least 1")
            })?;
        }

        check(
            tracing_subscriber::EnvFilter::try_new(self.log.level.get_ref()).is_ok(),
            self.log.level.span(),
            || format!("invalid log.level {:?}", self.log.level.get_ref()),
        )?;

        // Nothing to point at for what is missing: the error names the start of the file.
        check(!self.backends.is_empty(), 0..0, || {
            "no [[backend]] is configured; add at least one with an id and an address".into()
        })?;
        let mut seen: Vec<&str> = Vec::with_capacity(self.backends.len());
        for b in &self.backends {
            let id = b.id.get_ref();
            let id_ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(&c));
            check(id_ok, b.id.span(), || {
                format!("invalid backend id {id:?}: 1 to 64 of A-Z a-z 0-9 - _ . :")
            })?;
            check(!seen.contains(&id.as_str()), b.id.span(), || {
                format!("duplicate backend id {id:?}")
            })?;
            seen.push(id);
            check(
                parse_address(b.address.get_ref()).is_some(),
                b.address.span(),
                || {
                    format!(
                        "invalid backend address {:?}: expected host:port, e.g. \"127.0.0.1:3001\"",
                        b.address.get_ref()
                    )
                },
            )?;
            let w = *b.weight.get_ref();
            check((1..=1000).contains(&w), b.weight.span(), || {
                format!("backend weight must be 1 to 1000, not {w}")
            })?;
        }
        Ok(())
    }

    /// The affinity policy in whole seconds.
    pub fn policy(&self) -> Policy {
        let a = &self.affinity;
        let max_idle = a.max_idle.get_ref().secs_u32();
        Policy {
            max_idle,
            max_life: a.max_life.get_ref().secs_u32(),
            refresh_after: (f64::from(max_idle) * *a.refresh_fraction.get_ref()) as u32,
            skew: a.clock_skew.secs_u32(),
            on_pinned_down: a.on_pinned_down,
            all_down: self.balance.all_down,
            sticky_below: {
                let f = *a.sticky_fraction.get_ref();
                if f >= 1.0 {
                    u64::MAX
                } else {
                    (f.max(0.0) * u64::MAX as f64) as u64
                }
            },
        }
    }

    /// A few lines describing the config, printed by `stickyd check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let listen: Vec<String> = self
            .server
            .listen
            .get_ref()
            .iter()
            .map(|a| a.to_string())
            .collect();
        let _ = writeln!(s, "listen: {}", listen.join(", "));
        let a = &self.affinity;
        let _ = writeln!(
            s,
            "affinity: cookie {:?}, max_idle {}, max_life {}, on_pinned_down {}, {} key(s){}",
            a.cookie.get_ref(),
            a.max_idle.get_ref(),
            a.max_life.get_ref(),
            format!("{:?}", a.on_pinned_down).to_lowercase(),
            self.secrets.len(),
            if self.generated_key {
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
                h.path.get_ref(),
                h.interval.get_ref(),
                h.timeout.get_ref(),
                h.rise.get_ref(),
                h.fall.get_ref()
            );
        } else {
            let _ = writeln!(s, "health: active checks off");
        }
        if let Some(a) = &self.admin {
            let _ = writeln!(
                s,
                "admin: {}{}",
                a.listen.get_ref(),
                if self.admin_token.is_some() {
                    " (bearer token)"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(s, "backends: {}", self.backends.len());
        for b in &self.backends {
            let _ = writeln!(
                s,
                "  {} {} weight {} {}",
                b.id.get_ref(),
                b.address.get_ref(),
                b.weight.get_ref(),
                format!("{:?}", b.state).to_lowercase()
            );
        }
        s
    }
}

/// A tracing filter with each comma-separated directive trimmed (see `parse`: tracing-subscriber
/// 0.3 misparses, or panics on, a directive with whitespace around it).
pub fn trim_directives(filter: &str) -> String {
    filter
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",")
}

/// A host name (labels of 1 to 63 letters, digits, `-` or `_`, not starting or ending with
/// `-`, joined by dots, at most 253 characters), an IPv4 address, or an IPv6 address in
/// brackets.
fn is_host(s: &str) -> bool {
    if let Some(v6) = s.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parses a backend address `host:port` into an authority, or `None`.
pub fn parse_address(s: &str) -> Option<http::uri::Authority> {
    let a: http::uri::Authority = s.parse().ok()?;
    (a.port_u16().is_some() && !a.host().is_empty() && !s.contains('@')).then_some(a)
}

#[cfg(test)]
mod tests;
