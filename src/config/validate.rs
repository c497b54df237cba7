//! From the raw schema to a [`Config`]: every rule, and the I/O of loading.
//!
//! Each rule reports the span of the value it checks, so every error names the offending key's
//! own `PATH:LINE:COL`. The only errors without a key to point at (no `[[backend]]` at all, a
//! failed key generation) take the empty span, the start of the file. The rules run first, in
//! file order; the I/O (key files and environment variables, backend CA files, certificates)
//! runs after them, so a config that breaks a rule reads nothing.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::keys::{KeySource, Secret, resolve};
use super::{
    Admin, Affinity, Backend, Balance, Config, Discover, Health, Log, Mode, Pool, Replication,
    Server, Tls, Upstream, parse_address, raw, trim_directives,
};
use crate::affinity::OnPinnedDown;
use crate::headers::is_cookie_name;

/// A broken rule: where (a byte range of the text) and what.
pub(super) type Invalid = (Range<usize>, String);

fn check(ok: bool, span: Range<usize>, msg: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err((span, msg())) }
}

/// A spanned value that defaults when absent: whether it was written in the file.
fn written<T>(v: &Spanned<T>) -> bool {
    v.span() != (0..0)
}

/// Validates `raw` and loads what it names. Relative paths are taken from `dir`.
pub(super) fn config(
    raw: raw::Config,
    dir: &Path,
    keys: &dyn KeySource,
) -> Result<Config, Invalid> {
    if let Some(a) = &raw.admin {
        admin(a, &raw.server)?;
    }
    let balance = balance(&raw.balance)?;
    let server = server(&raw.server, raw.tls.as_ref())?;
    let mut affinity = affinity(&raw.affinity)?;
    let plain = !server.listen.is_empty();
    for a in std::iter::once(&raw.affinity).chain(raw.pools.iter().map(|p| &p.affinity)) {
        cookie_security(a, plain)?;
    }
    let upstream = upstream(&raw.upstream)?;
    let health = health(&raw.health)?;
    // A pool that discovers backends has no count to check its backups against.
    let replication = replication(
        &raw.replication,
        &raw.affinity,
        if raw.discover.is_empty() {
            raw.backends.len()
        } else {
            0
        },
        "default",
    )?;
    let log = log(&raw.log, dir)?;
    let all: Vec<&raw::Backend> = raw
        .backends
        .iter()
        .chain(raw.pools.iter().flat_map(|p| &p.backends))
        .collect();
    let mut pools = pools(&raw, &affinity, &balance, &health, replication)?;
    let discovering = !raw.discover.is_empty() || raw.pools.iter().any(|p| !p.discover.is_empty());
    let mut backends = backends(&all, discovering)?;
    let routes = routes(&raw.routes, &pools)?;

    // The rules hold: load what the config names.
    affinity.secrets = raw
        .affinity
        .keys
        .iter()
        .map(|spec| resolve(spec, dir, keys).map_err(|m| (spec.span(), m)))
        .collect::<Result<_, _>>()?;
    for (b, r) in backends.iter_mut().zip(all.iter().copied()) {
        b.origin = origin(&r.tls_spec(), &b.address, dir)?;
    }
    let raw_discover = std::iter::once(&raw.discover)
        .filter(|_| default_pool(&raw))
        .chain(raw.pools.iter().map(|p| &p.discover));
    for (pool, entries) in pools.iter_mut().zip(raw_discover) {
        for (d, r) in pool.discover.iter_mut().zip(entries) {
            d.origin = discover_origin(r, dir)?;
        }
    }
    let tls = tls(raw.tls.as_ref(), dir)?;
    let admin = match &raw.admin {
        Some(a) => Some(Admin {
            listen: *a.listen.get_ref(),
            token: a
                .token
                .as_ref()
                .map(|t| resolve(t, dir, keys).map_err(|m| (t.span(), m)))
                .transpose()?,
            drain_quiet: a.drain_quiet.0,
            allowed_hosts: a
                .allowed_hosts
                .iter()
                .map(|h| h.get_ref().clone())
                .collect(),
        }),
        None => None,
    };
    if affinity.secrets.is_empty() {
        let mut k = vec![0u8; 32];
        getrandom::fill(&mut k).map_err(|e| (0..0, format!("cannot generate a key: {e}")))?;
        affinity.secrets.push(Secret(k));
        affinity.generated_key = true;
    }
    // Each pool signs with its own `keys` (inherited from [affinity] unless it sets them),
    // resolved like the top-level ones; the default pool is the top-level section.
    let mut named = raw.pools.iter();
    for pool in pools.iter_mut() {
        if pool.name == "default" && default_pool(&raw) {
            pool.affinity.secrets = affinity.secrets.clone();
            pool.affinity.generated_key = affinity.generated_key;
            continue;
        }
        let Some(r) = named.next() else { break };
        let own: Vec<Secret> = r
            .affinity
            .keys
            .iter()
            .map(|spec| resolve(spec, dir, keys).map_err(|m| (spec.span(), m)))
            .collect::<Result<_, _>>()?;
        if own.is_empty() {
            pool.affinity.secrets = affinity.secrets.clone();
            pool.affinity.generated_key = affinity.generated_key;
        } else {
            pool.affinity.secrets = own;
        }
    }
    Ok(Config {
        server,
        affinity,
        balance,
        upstream,
        health,
        replication,
        log,
        admin,
        tls,
        backends,
        pools,
        routes,
    })
}

/// The pools: "default" from the top-level backends and sections, then each `[[pool]]`
/// (its sections already hold the top-level keys it does not set).
fn pools(
    raw: &raw::Config,
    affinity_top: &Affinity,
    balance_top: &Balance,
    health_top: &Health,
    replication_top: Replication,
) -> Result<Vec<Pool>, Invalid> {
    let mut out = Vec::with_capacity(raw.pools.len() + 1);
    if default_pool(raw) {
        out.push(Pool {
            name: "default".into(),
            affinity: affinity_top.clone(),
            health: health_top.clone(),
            balance: balance_top.clone(),
            replication: replication_top,
            backends: (0..raw.backends.len()).collect(),
            discover: discover_entries(&raw.discover)?,
        });
    }
    let mut next = raw.backends.len();
    for p in &raw.pools {
        let name = p.name.get_ref();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        check(name_ok, p.name.span(), || {
            format!("invalid pool name {name:?}: 1 to 64 of A-Z a-z 0-9 - _")
        })?;
        check(
            !out.iter().any(|o: &Pool| o.name == *name),
            p.name.span(),
            || {
                if name == "default" {
                    "the pool \"default\" is the top-level [[backend]] entries; name this one otherwise"
                    .into()
                } else {
                    format!("duplicate pool name {name:?}")
                }
            },
        )?;
        check(
            !p.backends.is_empty() || !p.discover.is_empty(),
            p.name.span(),
            || {
                format!(
                    "pool {name:?} has no backends: add [[pool.backend]] or [[pool.discover]] \
                     entries"
                )
            },
        )?;
        let mut affinity = affinity(&p.affinity)?;
        // The pool "default" (a [[pool]] of that name when there are no top-level backends)
        // keeps today's cookie and token binding.
        if !written(&p.affinity.cookie) && name != "default" {
            affinity.cookie = format!("stickyd_{name}");
        }
        out.push(Pool {
            name: name.clone(),
            affinity,
            health: health(&p.health)?,
            balance: balance(&p.balance)?,
            replication: replication(
                &p.replication,
                &p.affinity,
                if p.discover.is_empty() {
                    p.backends.len()
                } else {
                    0
                },
                name,
            )?,
            backends: (next..next + p.backends.len()).collect(),
            discover: discover_entries(&p.discover)?,
        });
        next += p.backends.len();
    }
    Ok(out)
}

/// The route table: each route's host pattern, prefix and pool checked where written.
fn routes(raw: &[raw::Route], pools: &[Pool]) -> Result<crate::route::Table, Invalid> {
    use crate::route::{HostPattern, Route, Table, check_prefix};
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let host = match &r.host {
            Some(h) => HostPattern::parse(h.get_ref())
                .map_err(|m| (h.span(), format!("route host {m}")))?,
            None => HostPattern::Any,
        };
        check_prefix(r.path_prefix.get_ref())
            .map_err(|m| (r.path_prefix.span(), format!("route path_prefix {m}")))?;
        let name = r.pool.get_ref();
        let pool = pools
            .iter()
            .position(|p| p.name == *name)
            .ok_or_else(|| (r.pool.span(), format!("route to unknown pool {name:?}")))?;
        out.push(Route {
            host,
            path_prefix: r.path_prefix.get_ref().as_str().into(),
            pool,
        });
    }
    let default = pools.iter().position(|p| p.name == "default");
    Table::new(out, default).map_err(|crate::route::Duplicate(first, second)| {
        let r = &raw[second];
        let span = r.host.as_ref().map_or_else(|| r.path_prefix.span(), |h| h.span());
        (
            span,
            format!(
                "route {} has the same host and path_prefix as route {} (routes are [[route]] entries, counted from 1)",
                second + 1,
                first + 1
            ),
        )
    })
}

/// The rules of `[admin]`; its token is resolved with the other secrets.
fn admin(a: &raw::Admin, server: &raw::Server) -> Result<(), Invalid> {
    let listen = *a.listen.get_ref();
    let ip = listen.ip();
    check(
        ip.is_loopback() || a.token.is_some(),
        a.listen.span(),
        || {
            format!(
                "admin.listen {ip} is not loopback: set admin.token too, or listen on 127.0.0.1"
            )
        },
    )?;
    // The default admin address can collide with a written server.listen: point at that.
    let span = if written(&a.listen) {
        a.listen.span()
    } else {
        server.listen.span()
    };
    check(
        listen.port() == 0 || !server.listen.get_ref().contains(&listen),
        span,
        || "admin.listen is also a server.listen address".into(),
    )?;
    for h in &a.allowed_hosts {
        check(is_host(h.get_ref()), h.span(), || {
            format!(
                "invalid admin.allowed_hosts entry {:?}: a host name or IP address without a port, e.g. \"admin.example.com\"",
                h.get_ref()
            )
        })?;
    }
    Ok(())
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

/// A pool's `[replication]`, checked against its `[affinity]` and its number of backends
/// (`backends`; 0 for the top-level section of a config without top-level backends: it is then
/// only the pools' default, checked in each pool).
fn replication(
    r: &raw::Replication,
    a: &raw::Affinity,
    backends: usize,
    pool: &str,
) -> Result<Replication, Invalid> {
    let n = *r.backups.get_ref();
    check(n <= 2, r.backups.span(), || {
        format!("replication.backups must be 0, 1 or 2, not {n}")
    })?;
    let port = match &r.port {
        Some(p) => {
            let v = *p.get_ref();
            check((1..=65535).contains(&v), p.span(), || {
                format!("replication.port must be 1 to 65535, not {v}")
            })?;
            Some(v as u16)
        }
        None => None,
    };
    if n > 0 {
        let tokens =
            matches!(a.mode, Mode::Cookie) || (a.mode == Mode::Header && !a.header_trusted);
        check(tokens, r.backups.span(), || {
            "replication needs a session token: affinity mode \"cookie\" or \"header\" (not \
             trusted), so a session keeps its backups wherever it is served"
                .to_string()
        })?;
        check(
            a.on_pinned_down == OnPinnedDown::Repin,
            r.backups.span(),
            || {
                format!(
                    "replication.backups = {n} with affinity.on_pinned_down = \"{}\": a session \
                     whose home is lost is served by its backup and re-pinned there (a recovered \
                     home would serve stale state); leave on_pinned_down at \"repin\"",
                    format!("{:?}", a.on_pinned_down).to_lowercase()
                )
            },
        )?;
        check(
            backends == 0 || (n as usize) < backends,
            r.backups.span(),
            || {
                format!(
                    "replication.backups = {n} needs more than {n} backend(s) in the pool; pool \
                     {pool:?} has {backends} (a pool may set [pool.replication] backups = 0)"
                )
            },
        )?;
    }
    Ok(Replication {
        backups: n as u8,
        port,
    })
}

fn balance(b: &raw::Balance) -> Result<Balance, Invalid> {
    let lf = *b.load_factor.get_ref();
    check(
        lf.is_finite() && (1.0..=100.0).contains(&lf),
        b.load_factor.span(),
        || format!("balance.load_factor must be 1.0 to 100.0, not {lf}"),
    )?;
    Ok(Balance {
        all_down: b.all_down,
        retry_after: b.retry_after.0,
        slow_start: b.slow_start.0,
        new_sessions: b.new_sessions,
        load_factor: lf,
    })
}

/// A duration that must not be zero, reported as `name must be more than 0`.
fn nonzero(d: &Spanned<super::raw::Dur>, name: &str) -> Result<Duration, Invalid> {
    let v = d.get_ref().0;
    check(!v.is_zero(), d.span(), || {
        format!("{name} must be more than 0")
    })?;
    Ok(v)
}

fn server(s: &raw::Server, tls: Option<&raw::Tls>) -> Result<Server, Invalid> {
    check(
        !(s.listen.get_ref().is_empty() && s.listen_tls.get_ref().is_empty()),
        s.listen.span(),
        || "server.listen or server.listen_tls needs at least one address".into(),
    )?;
    check(
        !*s.proxy_protocol.get_ref() || !s.proxy_protocol_from.is_empty(),
        s.proxy_protocol.span(),
        || {
            "server.proxy_protocol needs server.proxy_protocol_from: the balancers allowed to \
             send it (any peer could name any client otherwise; [\"0.0.0.0/0\", \"::/0\"] \
             to allow every peer)"
                .into()
        },
    )?;
    let has_certs = tls.is_some_and(|t| !t.certs.get_ref().is_empty());
    check(
        s.listen_tls.get_ref().is_empty() || has_certs,
        s.listen_tls.span(),
        || "server.listen_tls needs certificates: [tls] certs = [{ cert = ..., key = ... }]".into(),
    )?;
    let max_connections = *s.max_connections.get_ref();
    check(max_connections >= 1, s.max_connections.span(), || {
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
    Ok(Server {
        listen: s.listen.get_ref().clone(),
        listen_tls: s.listen_tls.get_ref().clone(),
        worker_threads: s.worker_threads,
        max_connections,
        header_read_timeout: nonzero(&s.header_read_timeout, "server.header_read_timeout")?,
        client_timeout: nonzero(&s.client_timeout, "server.client_timeout")?,
        max_header_bytes: hb,
        max_headers: mh,
        shutdown_grace: s.shutdown_grace.0,
        shutdown_delay: s.shutdown_delay.0,
        trusted_proxies: s.trusted_proxies.clone(),
        proxy_protocol: *s.proxy_protocol.get_ref(),
        watch_config: s.watch_config,
        proxy_protocol_from: s.proxy_protocol_from.clone(),
        via: s.via,
        h2_max_concurrent_streams: s.h2_max_concurrent_streams,
    })
}

/// `[affinity]` without its secrets, which are loaded once every rule holds.
/// `SameSite=None` and `Partitioned` need `Secure` on every cookie issued (browsers drop the
/// cookie otherwise): `secure = true`, or the default (Secure on TLS) with TLS listeners only.
/// Refused at the attribute that needs it.
fn cookie_security(a: &raw::Affinity, plain_listeners: bool) -> Result<(), Invalid> {
    let secure_always = match a.secure {
        Some(s) => s,
        None => !plain_listeners,
    };
    let why = || {
        if a.secure == Some(false) {
            "affinity.secure = false"
        } else {
            "plain (non-TLS) listeners with affinity.secure unset"
        }
    };
    if *a.same_site.get_ref() == crate::headers::SameSite::None {
        check(secure_always, a.same_site.span(), || {
            format!(
                "affinity.same_site = \"none\" needs Secure on every cookie (browsers drop it \
                 otherwise), not {}: set affinity.secure = true",
                why()
            )
        })?;
    }
    if *a.partitioned.get_ref() {
        check(secure_always, a.partitioned.span(), || {
            format!(
                "affinity.partitioned needs Secure on every cookie, not {}: set affinity.secure = true",
                why()
            )
        })?;
    }
    Ok(())
}

fn affinity(a: &raw::Affinity) -> Result<Affinity, Invalid> {
    let sf = *a.sticky_fraction.get_ref();
    check((0.0..=1.0).contains(&sf), a.sticky_fraction.span(), || {
        format!("affinity.sticky_fraction must be 0.0 to 1.0, not {sf}")
    })?;
    let header = http::HeaderName::from_bytes(a.header.get_ref().as_bytes()).map_err(|_| {
        (
            a.header.span(),
            format!("invalid header name {:?}", a.header.get_ref()),
        )
    })?;
    check(is_cookie_name(a.cookie.get_ref()), a.cookie.span(), || {
        format!("invalid cookie name {:?}", a.cookie.get_ref())
    })?;
    let max_idle = a.max_idle.get_ref().0;
    let max_life = a.max_life.get_ref().0;
    check(
        max_idle >= Duration::from_secs(1),
        a.max_idle.span(),
        || "affinity.max_idle must be at least 1s".into(),
    )?;
    check(
        max_life >= Duration::from_secs(1),
        a.max_life.span(),
        || "affinity.max_life must be at least 1s".into(),
    )?;
    for (v, name) in [(&a.max_idle, "max_idle"), (&a.max_life, "max_life")] {
        check(
            v.get_ref().0.as_secs() <= u64::from(u32::MAX / 2),
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
    Ok(Affinity {
        mode: a.mode,
        header,
        header_trusted: a.header_trusted,
        sticky_fraction: sf,
        cookie: a.cookie.get_ref().clone(),
        max_idle,
        max_life,
        refresh_fraction: f,
        clock_skew: a.clock_skew.0,
        secrets: Vec::new(),
        generated_key: false,
        on_pinned_down: a.on_pinned_down,
        secure: a.secure,
        domain: a.domain.as_ref().map(|d| d.get_ref().clone()),
        same_site: *a.same_site.get_ref(),
        partitioned: *a.partitioned.get_ref(),
    })
}

fn upstream(u: &raw::Upstream) -> Result<Upstream, Invalid> {
    let retries = *u.retries.get_ref();
    check(retries <= 3, u.retries.span(), || {
        "upstream.retries must be 0 to 3".into()
    })?;
    Ok(Upstream {
        connect_timeout: nonzero(&u.connect_timeout, "upstream.connect_timeout")?,
        response_timeout: nonzero(&u.response_timeout, "upstream.response_timeout")?,
        pool_idle_timeout: u.pool_idle_timeout.0,
        pool_max_idle: u.pool_max_idle,
        retries,
        tunnel_idle_timeout: u.tunnel_idle_timeout.0,
    })
}

fn health(h: &raw::Health) -> Result<Health, Invalid> {
    let path = h.path.get_ref();
    let path_ok = path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok();
    check(path_ok, h.path.span(), || {
        format!("invalid health.path {path:?} (must start with /)")
    })?;
    if let Some(host) = &h.host {
        check(
            http::HeaderValue::from_str(host.get_ref()).is_ok(),
            host.span(),
            || format!("invalid health.host {:?}", host.get_ref()),
        )?;
    }
    for d in [&h.interval, &h.timeout] {
        // The message names no key (kept as it always was): the position does.
        check(!d.get_ref().0.is_zero(), d.span(), || {
            "must be more than 0".into()
        })?;
    }
    for (v, name) in [(&h.rise, "rise"), (&h.fall, "fall")] {
        check(*v.get_ref() >= 1, v.span(), || {
            format!("health.{name} must be at least 1")
        })?;
    }
    Ok(Health {
        enabled: h.enabled,
        path: path.clone(),
        host: h.host.as_ref().map(|s| s.get_ref().clone()),
        interval: h.interval.get_ref().0,
        timeout: h.timeout.get_ref().0,
        rise: *h.rise.get_ref(),
        fall: *h.fall.get_ref(),
        expect_status: h.expect_status.0,
        initial: h.initial,
        passive_failures: h.passive_failures,
        eject_time: h.eject_time.0,
    })
}

fn log(l: &raw::Log, dir: &Path) -> Result<Log, Invalid> {
    // Trimmed for validation and for main alike: see `trim_directives`.
    let level = trim_directives(l.level.get_ref());
    check(
        tracing_subscriber::EnvFilter::try_new(&level).is_ok(),
        l.level.span(),
        || format!("invalid log.level {level:?}"),
    )?;
    Ok(Log {
        level,
        format: l.format,
        access: l.access,
        access_file: l.access_file.as_ref().map(|f| dir.join(f)),
    })
}

/// Whether there is a pool "default": top-level `[[backend]]`s or `[[discover]]`s.
fn default_pool(raw: &raw::Config) -> bool {
    !raw.backends.is_empty() || !raw.discover.is_empty()
}

/// The `[[discover]]` entries of one pool, without their TLS clients (made once every rule
/// holds).
fn discover_entries(raw: &[Spanned<raw::Discover>]) -> Result<Vec<Discover>, Invalid> {
    use super::{DiscoverId, Lookup, Resolver};
    let mut out: Vec<Discover> = Vec::with_capacity(raw.len());
    for d in raw {
        let entry_span = d.span();
        let d = d.get_ref();
        let lookup = match (&d.dns, &d.srv) {
            (Some(dns), None) => {
                let bad = || {
                    (
                        dns.span(),
                        format!(
                            "invalid discover.dns {:?}: expected NAME:PORT, e.g. \
                             \"app.shop.svc.cluster.local:8080\"",
                            dns.get_ref()
                        ),
                    )
                };
                let (host, port) = dns.get_ref().rsplit_once(':').ok_or_else(bad)?;
                let port: u16 = port.parse().ok().filter(|&p| p > 0).ok_or_else(bad)?;
                if !dns_name(host) {
                    return Err(bad());
                }
                Lookup::Dns {
                    host: host.to_string(),
                    port,
                }
            }
            (None, Some(srv)) => {
                check(dns_name(srv.get_ref()), srv.span(), || {
                    format!(
                        "invalid discover.srv {:?}: expected a DNS name, e.g. \
                         \"_http._tcp.app.shop.svc.cluster.local\"",
                        srv.get_ref()
                    )
                })?;
                Lookup::Srv(srv.get_ref().clone())
            }
            (Some(_), Some(srv)) => {
                return Err((
                    srv.span(),
                    "a [[discover]] entry takes dns or srv, not both".into(),
                ));
            }
            (None, None) => {
                return Err((
                    entry_span,
                    "a [[discover]] entry needs dns = \"NAME:PORT\" or srv = \"NAME\"".into(),
                ));
            }
        };
        let id = *d.id.get_ref();
        check(
            id == DiscoverId::Address || matches!(lookup, Lookup::Srv(_)),
            d.id.span(),
            || {
                "discover.id = \"srv-target\" needs srv = \"NAME\" (A records name no target)"
                    .into()
            },
        )?;
        let interval = d.interval.get_ref().0;
        check(
            interval >= Duration::from_millis(100),
            d.interval.span(),
            || "discover.interval must be at least 100ms".into(),
        )?;
        let resolver = match d.resolver.get_ref().as_str() {
            "system" => Resolver::System,
            s => Resolver::At(s.parse().map_err(|_| {
                (
                    d.resolver.span(),
                    format!(
                        "invalid discover.resolver {s:?}: \"system\" or a name server's \
                         IP:PORT, e.g. \"10.96.0.10:53\""
                    ),
                )
            })?),
        };
        let w = *d.weight.get_ref();
        check((1..=1000).contains(&w), d.weight.span(), || {
            format!("discover.weight must be 1 to 1000, not {w}")
        })?;
        check(
            !*d.tls.get_ref() || d.server_name.is_some(),
            d.tls.span(),
            || {
                "discover.tls = true needs server_name: the name every discovered backend's \
                 certificate is verified against"
                    .into()
            },
        )?;
        let entry = Discover {
            lookup,
            id,
            interval,
            remove_grace: d.remove_grace.0,
            resolver,
            weight: w,
            protocol: d.protocol,
            origin: None,
        };
        let span = d
            .dns
            .as_ref()
            .or(d.srv.as_ref())
            .map_or(entry_span, |s| s.span());
        check(
            !out.iter().any(|o| o.label() == entry.label()),
            span,
            || format!("duplicate [[discover]] of {:?} in this pool", entry.label()),
        )?;
        out.push(entry);
    }
    Ok(out)
}

/// A DNS name as `discover` takes it: dot-separated labels of 1 to 63 letters, digits, `-`
/// and `_`, at most 253 characters, one trailing dot allowed.
fn dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

/// The TLS client of a `[[discover]]` entry with `tls = true`.
fn discover_origin(
    d: &Spanned<raw::Discover>,
    dir: &Path,
) -> Result<Option<crate::tls::Origin>, Invalid> {
    let spec = raw::TlsSpec {
        tls: &d.get_ref().tls,
        tls_ca: d.get_ref().tls_ca.as_ref(),
        server_name: d.get_ref().server_name.as_ref(),
        protocol: d.get_ref().protocol,
        address_span: d.span(),
    };
    // Never read: server_name is required with tls.
    let unused: http::uri::Authority = http::uri::Authority::from_static("unused:1");
    origin(&spec, &unused, dir)
}

/// The pool without its TLS clients, which are made once every rule holds. With `discovering`
/// (some pool has a `[[discover]]`), there may be none.
fn backends(raw: &[&raw::Backend], discovering: bool) -> Result<Vec<Backend>, Invalid> {
    // Nothing to point at for what is missing: the error names the start of the file.
    check(!raw.is_empty() || discovering, 0..0, || {
        "no [[backend]] is configured; add at least one with an id and an address (or a \
         [[discover]] entry)"
            .into()
    })?;
    let mut seen: Vec<&str> = Vec::with_capacity(raw.len());
    let mut out = Vec::with_capacity(raw.len());
    for &b in raw {
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
        let address = parse_address(b.address.get_ref()).ok_or_else(|| {
            (
                b.address.span(),
                format!(
                    "invalid backend address {:?}: expected host:port, e.g. \"127.0.0.1:3001\"",
                    b.address.get_ref()
                ),
            )
        })?;
        let w = *b.weight.get_ref();
        check((1..=1000).contains(&w), b.weight.span(), || {
            format!("backend weight must be 1 to 1000, not {w}")
        })?;
        out.push(Backend {
            id: id.clone(),
            address,
            weight: w,
            state: b.state,
            protocol: b.protocol,
            origin: None,
        });
    }
    Ok(out)
}

/// The TLS client for a backend with `tls = true`. The name it verifies is `server_name`, or
/// the host of its address; a CA file error points at `tls_ca`.
fn origin(
    b: &raw::TlsSpec<'_>,
    address: &http::uri::Authority,
    dir: &Path,
) -> Result<Option<crate::tls::Origin>, Invalid> {
    if !*b.tls.get_ref() {
        return Ok(None);
    }
    let host = address.host().trim_start_matches('[').trim_end_matches(']');
    let (name, name_span) = match &b.server_name {
        Some(n) => (n.get_ref().as_str(), n.span()),
        None => (host, b.address_span.clone()),
    };
    // Checked here, not left to `Origin::new`, so a bad name points at the key it came from.
    rustls_pki_types::ServerName::try_from(name)
        .map_err(|e| (name_span, format!("invalid TLS server name {name:?}: {e}")))?;
    let ca = b.tls_ca.as_ref().map(|c| dir.join(c.get_ref()));
    let span = b.tls_ca.as_ref().map_or_else(|| b.tls.span(), |c| c.span());
    crate::tls::Origin::new(ca.as_deref(), name, b.protocol == super::Protocol::H2)
        .map(Some)
        .map_err(|m| (span, m))
}

/// `[tls] versions`: "1.2" and/or "1.3", each once.
fn tls_versions(v: &Spanned<Vec<String>>) -> Result<Vec<crate::tls::Version>, Invalid> {
    use crate::tls::Version;
    let bad = || {
        (
            v.span(),
            "tls.versions takes \"1.2\" and/or \"1.3\", each once, e.g. [\"1.2\", \"1.3\"]".into(),
        )
    };
    let mut out = Vec::with_capacity(2);
    for s in v.get_ref() {
        let version = match s.as_str() {
            "1.2" => Version::Tls12,
            "1.3" => Version::Tls13,
            _ => return Err(bad()),
        };
        if out.contains(&version) {
            return Err(bad());
        }
        out.push(version);
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// The certificates `[tls]` names, loaded, and the server config made from them; `None` when
/// there are none. A certificate error points at its `cert`, a key error at its `key`.
fn tls(raw: Option<&raw::Tls>, dir: &Path) -> Result<Option<Tls>, Invalid> {
    let Some(t) = raw else {
        return Ok(None);
    };
    // A rule, checked before the certificate files are read, and whether or not there are any.
    let versions = tls_versions(&t.versions)?;
    let mut certs = Vec::with_capacity(t.certs.get_ref().len());
    for spec in t.certs.get_ref() {
        let cert = dir.join(spec.cert.get_ref());
        let key = dir.join(spec.key.get_ref());
        let chain = crate::tls::read_chain(&cert).map_err(|m| (spec.cert.span(), m))?;
        certs.push(crate::tls::with_key(chain, &cert, &key).map_err(|m| (spec.key.span(), m))?);
    }
    if certs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tls {
        server_config: crate::tls::server_config(&certs, &versions)
            .map_err(|m| (t.certs.span(), m))?,
        handshake_timeout: t.handshake_timeout.0,
        certs,
    }))
}
