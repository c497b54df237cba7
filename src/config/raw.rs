//! The config file's schema, as serde reads it: one struct per section, unknown keys refused,
//! and the defaults of every key.
//!
//! A value that a rule in `validate` checks is a `Spanned<T>`, so its error names the value's
//! own line and column; a default carries the empty span `0..0` (defaults always pass their
//! rules). Values whose type alone is the rule (enums, addresses, networks, durations) fail
//! during deserialization, at their position too. Nothing here is used after loading.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration;
use super::{Cidr, DiscoverId, Initial, LogFormat, Mode, NewSessions, Protocol};
use crate::affinity::{AdminState, AllDown, OnPinnedDown};
use crate::health::StatusRange;

/// A default value: the empty span marks it as not written in the file.
fn dflt<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub affinity: Affinity,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub upstream: Upstream,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub replication: Replication,
    #[serde(default)]
    pub log: Log,
    pub admin: Option<Admin>,
    pub tls: Option<Tls>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<Backend>,
    #[serde(default, rename = "discover")]
    pub discover: Vec<Spanned<Discover>>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<Pool>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
}

/// `[[pool]]`: its sections already hold the top-level keys they do not set (`inherit`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Pool {
    pub name: Spanned<String>,
    #[serde(default)]
    pub affinity: Affinity,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub replication: Replication,
    #[serde(default, rename = "backend")]
    pub backends: Vec<Backend>,
    #[serde(default, rename = "discover")]
    pub discover: Vec<Spanned<Discover>>,
}

/// `[replication]` (and `[pool.replication]`): backups named to backends for session
/// replication.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Replication {
    pub backups: Spanned<u32>,
    pub port: Option<Spanned<u32>>,
}

impl Default for Replication {
    fn default() -> Replication {
        Replication {
            backups: dflt(0),
            port: None,
        }
    }
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Route {
    pub host: Option<Spanned<String>>,
    #[serde(default = "root")]
    pub path_prefix: Spanned<String>,
    pub pool: Spanned<String>,
}

fn root() -> Spanned<String> {
    dflt("/".into())
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Server {
    pub listen: Spanned<Vec<SocketAddr>>,
    pub listen_tls: Spanned<Vec<SocketAddr>>,
    pub worker_threads: usize,
    pub max_connections: Spanned<usize>,
    pub header_read_timeout: Spanned<Dur>,
    pub client_timeout: Spanned<Dur>,
    pub max_header_bytes: Spanned<usize>,
    pub max_headers: Spanned<usize>,
    pub shutdown_grace: Dur,
    pub shutdown_delay: Dur,
    pub trusted_proxies: Vec<Cidr>,
    pub proxy_protocol: Spanned<bool>,
    pub watch_config: bool,
    pub proxy_protocol_from: Vec<Cidr>,
    pub via: bool,
    pub h2_max_concurrent_streams: u32,
}

impl Default for Server {
    fn default() -> Server {
        Server {
            listen: dflt(vec![SocketAddr::from(([127, 0, 0, 1], 8080))]),
            listen_tls: dflt(Vec::new()),
            worker_threads: 0,
            max_connections: dflt(10_000),
            header_read_timeout: dflt(Dur(Duration::from_secs(10))),
            client_timeout: dflt(Dur(Duration::from_secs(60))),
            max_header_bytes: dflt(65_536),
            max_headers: dflt(100),
            shutdown_grace: Dur(Duration::from_secs(30)),
            shutdown_delay: Dur(Duration::ZERO),
            trusted_proxies: Vec::new(),
            proxy_protocol: dflt(false),
            watch_config: false,
            proxy_protocol_from: Vec::new(),
            via: true,
            h2_max_concurrent_streams: 128,
        }
    }
}

/// `[affinity]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Affinity {
    pub mode: Mode,
    pub header: Spanned<String>,
    pub header_trusted: bool,
    pub sticky_fraction: Spanned<f64>,
    pub cookie: Spanned<String>,
    pub max_idle: Spanned<Dur>,
    pub max_life: Spanned<Dur>,
    pub refresh_fraction: Spanned<f64>,
    pub clock_skew: Dur,
    /// Key specs, `file:PATH` or `env:NAME`.
    pub keys: Vec<Spanned<String>>,
    pub on_pinned_down: OnPinnedDown,
    pub secure: Option<bool>,
    pub domain: Option<Spanned<String>>,
    pub same_site: Spanned<crate::headers::SameSite>,
    pub partitioned: Spanned<bool>,
}

impl Default for Affinity {
    fn default() -> Affinity {
        Affinity {
            mode: Mode::Cookie,
            header: dflt("x-stickyd-session".to_string()),
            header_trusted: false,
            sticky_fraction: dflt(1.0),
            cookie: dflt("stickyd".to_string()),
            max_idle: dflt(Dur(Duration::from_secs(30 * 60))),
            max_life: dflt(Dur(Duration::from_secs(24 * 3600))),
            refresh_fraction: dflt(0.25),
            clock_skew: Dur(Duration::from_secs(30)),
            keys: Vec::new(),
            on_pinned_down: OnPinnedDown::Repin,
            secure: None,
            domain: None,
            same_site: dflt(crate::headers::SameSite::Lax),
            partitioned: dflt(false),
        }
    }
}

/// `[balance]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Balance {
    pub all_down: AllDown,
    pub retry_after: Dur,
    pub slow_start: Dur,
    pub new_sessions: NewSessions,
    pub load_factor: Spanned<f64>,
}

impl Default for Balance {
    fn default() -> Balance {
        Balance {
            all_down: AllDown::Fail,
            retry_after: Dur(Duration::from_secs(5)),
            slow_start: Dur(Duration::ZERO),
            new_sessions: NewSessions::RoundRobin,
            load_factor: dflt(1.25),
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Upstream {
    pub connect_timeout: Spanned<Dur>,
    pub response_timeout: Spanned<Dur>,
    pub pool_idle_timeout: Dur,
    pub pool_max_idle: usize,
    pub retries: Spanned<u32>,
    pub tunnel_idle_timeout: Dur,
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream {
            connect_timeout: dflt(Dur(Duration::from_secs(3))),
            response_timeout: dflt(Dur(Duration::from_secs(60))),
            pool_idle_timeout: Dur(Duration::from_secs(90)),
            // Above what HTTP/2 clients keep in flight to one backend at once (64 connections of
            // 8 streams is 512): a cap below it closed connections the next requests reopened.
            pool_max_idle: 1024,
            retries: dflt(1),
            tunnel_idle_timeout: Dur(Duration::from_secs(600)),
        }
    }
}

/// `[health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Health {
    pub enabled: bool,
    pub path: Spanned<String>,
    pub host: Option<Spanned<String>>,
    pub interval: Spanned<Dur>,
    pub timeout: Spanned<Dur>,
    pub rise: Spanned<u32>,
    pub fall: Spanned<u32>,
    pub expect_status: StatusRangeCfg,
    pub initial: Initial,
    pub passive_failures: u32,
    pub eject_time: Dur,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            enabled: true,
            path: dflt("/healthz".into()),
            host: None,
            interval: dflt(Dur(Duration::from_secs(2))),
            timeout: dflt(Dur(Duration::from_secs(1))),
            rise: dflt(2),
            fall: dflt(3),
            expect_status: StatusRangeCfg(StatusRange { lo: 200, hi: 399 }),
            initial: Initial::Up,
            passive_failures: 3,
            eject_time: Dur(Duration::from_secs(10)),
        }
    }
}

/// A [`StatusRange`] read from a string (`"204"`, `"200-399"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatusRangeCfg(pub StatusRange);

impl<'de> Deserialize<'de> for StatusRangeCfg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StatusRangeCfg, D::Error> {
        from_str_with(d, "a status or range such as \"200-399\"", |s| {
            s.parse().map(StatusRangeCfg)
        })
    }
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Log {
    pub level: Spanned<String>,
    pub format: LogFormat,
    pub access: crate::access::Format,
    pub access_file: Option<PathBuf>,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            level: dflt("info".into()),
            format: LogFormat::Text,
            access: crate::access::Format::Off,
            access_file: None,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Admin {
    pub listen: Spanned<SocketAddr>,
    /// `file:PATH` or `env:NAME` of the bearer token.
    pub token: Option<Spanned<String>>,
    pub drain_quiet: Dur,
    pub allowed_hosts: Vec<Spanned<String>>,
}

impl Default for Admin {
    fn default() -> Admin {
        Admin {
            listen: dflt(SocketAddr::from(([127, 0, 0, 1], 9901))),
            token: None,
            drain_quiet: Dur(Duration::from_secs(120)),
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tls {
    pub certs: Spanned<Vec<CertSpec>>,
    #[serde(default = "ten_seconds")]
    pub handshake_timeout: Dur,
    #[serde(default = "both_versions")]
    pub versions: Spanned<Vec<String>>,
}

fn both_versions() -> Spanned<Vec<String>> {
    dflt(vec!["1.2".into(), "1.3".into()])
}

fn ten_seconds() -> Dur {
    Dur(Duration::from_secs(10))
}

/// One `[tls] certs` entry: file paths relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertSpec {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[[backend]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Backend {
    pub id: Spanned<String>,
    pub address: Spanned<String>,
    #[serde(default = "one")]
    pub weight: Spanned<u32>,
    #[serde(default = "active")]
    pub state: AdminState,
    #[serde(default = "plain")]
    pub tls: Spanned<bool>,
    #[serde(default)]
    pub protocol: Protocol,
    pub tls_ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
}

/// `[[discover]]` (and `[[pool.discover]]`): backends of a pool found in DNS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Discover {
    pub dns: Option<Spanned<String>>,
    pub srv: Option<Spanned<String>>,
    #[serde(default = "by_address")]
    pub id: Spanned<DiscoverId>,
    #[serde(default = "five_seconds")]
    pub interval: Spanned<Dur>,
    #[serde(default = "thirty_seconds")]
    pub remove_grace: Dur,
    #[serde(default = "system")]
    pub resolver: Spanned<String>,
    #[serde(default = "one")]
    pub weight: Spanned<u32>,
    #[serde(default = "plain")]
    pub tls: Spanned<bool>,
    #[serde(default)]
    pub protocol: Protocol,
    pub tls_ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
}

fn by_address() -> Spanned<DiscoverId> {
    dflt(DiscoverId::Address)
}

fn five_seconds() -> Spanned<Dur> {
    dflt(Dur(Duration::from_secs(5)))
}

fn thirty_seconds() -> Dur {
    Dur(Duration::from_secs(30))
}

fn system() -> Spanned<String> {
    dflt("system".into())
}

/// What a backend's TLS client is made from: a `[[backend]]`'s keys, or a `[[discover]]`'s.
pub(super) struct TlsSpec<'a> {
    pub tls: &'a Spanned<bool>,
    pub tls_ca: Option<&'a Spanned<String>>,
    pub server_name: Option<&'a Spanned<String>>,
    pub protocol: Protocol,
    /// Where the name verified comes from when `server_name` is not set.
    pub address_span: std::ops::Range<usize>,
}

impl Backend {
    /// Its TLS keys.
    pub fn tls_spec(&self) -> TlsSpec<'_> {
        TlsSpec {
            tls: &self.tls,
            tls_ca: self.tls_ca.as_ref(),
            server_name: self.server_name.as_ref(),
            protocol: self.protocol,
            address_span: self.address.span(),
        }
    }
}

fn one() -> Spanned<u32> {
    dflt(1)
}

fn plain() -> Spanned<bool> {
    dflt(false)
}

fn active() -> AdminState {
    AdminState::Active
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        from_str_with(d, "a network such as \"10.0.0.0/8\"", |s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(Cidr)
                .map_err(|_| {
                    format!("invalid network {s:?} (expected e.g. \"10.0.0.0/8\" or \"192.0.2.1\")")
                })
        })
    }
}

/// A duration as the raw schema reads it: a string with units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dur(pub Duration);

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        from_str_with(d, "a duration string such as \"2s\" or \"30m\"", |s| {
            duration::parse(s).map(Dur)
        })
    }
}

/// Deserializes a string through `parse`, raising its error while the string is the current
/// value, so the error's position is the value's own (not its enclosing array or table).
pub(super) fn from_str_with<'de, D, T>(
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
