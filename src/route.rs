//! Routes: which pool serves a request, by its host and path. Pure policy: the [`Table`] is
//! built once per snapshot from the validated `[[route]]` entries and asked once per request.
//!
//! Rank: the most specific host wins (an exact name, then the longest wildcard, then routes
//! without a host), then the longest `path_prefix`. Among the routes a request matches, no two
//! have the same rank (the config refuses two routes with one host and one prefix), so the
//! answer never depends on the order routes were written in.
//!
//! - Hosts compare case-insensitively, without the port and a final dot. `*.example.com`
//!   matches any deeper name (`a.example.com`, `a.b.example.com`), not `example.com` itself.
//! - Prefixes match whole path segments: `/api` matches `/api`, `/api/` and `/api/x`, not
//!   `/apiary`. The path is matched as a backend will read it: `%XX` escapes of unreserved
//!   characters decoded, `.` and `..` segments resolved and repeated slashes merged, so
//!   `/%61dmin` and `/x/../admin` take the route of `/admin`. The request is forwarded as
//!   received; only the choice of pool uses the normal form.
//!
//! With no routes, every request goes to the default pool without looking at host or path.

use std::borrow::Cow;
use std::collections::HashMap;

/// A pool's index in the snapshot's pool list.
pub type PoolIx = usize;

/// The longest host name a route can name (RFC 1035's 253 characters, plus an IPv6 literal's
/// brackets fit well inside).
pub const MAX_HOST: usize = 253;

/// A route's `host`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// No `host`: any host (and requests without one).
    Any,
    /// `*.example.com`: every name below `example.com`; holds the suffix `.example.com`,
    /// lowercase.
    Wildcard(Box<str>),
    /// `shop.example.com`: that name, lowercase.
    Exact(Box<str>),
}

impl HostPattern {
    /// Parses a route's `host` value: a DNS name (letters, digits, `-`, `_`, labels of 1-63
    /// characters, 253 in all; one final dot is dropped), an IPv4 address, a bracketed IPv6
    /// address, or `*.` followed by a DNS name. No port, no other use of `*`.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        if s.is_empty() {
            return Err("an empty host (leave `host` out to match any host)".into());
        }
        if s.starts_with('[') {
            // Canonical text, as `request_host` writes a request's: `[0::1]` is `[::1]`.
            return match s
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .and_then(|v| v.parse::<std::net::Ipv6Addr>().ok())
            {
                Some(a) => Ok(HostPattern::Exact(format!("[{a}]").into())),
                None => Err(format!("{s:?} is not a bracketed IPv6 address")),
            };
        }
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.contains(':') {
            return Err(format!(
                "{s:?} has a port: routes match the host without it"
            ));
        }
        if name.contains('*') {
            return Err(format!(
                "{s:?}: `*` may only be the whole first label, as in \"*.example.com\""
            ));
        }
        if name.is_empty() || name.len() > MAX_HOST {
            return Err(format!(
                "{s:?} is not a host name (1 to {MAX_HOST} characters)"
            ));
        }
        for label in name.split('.') {
            let ok = (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!(
                    "{s:?} is not a host name (labels of 1 to 63 letters, digits, '-' or '_')"
                ));
            }
        }
        let name = name.to_ascii_lowercase();
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}").into())
        } else {
            HostPattern::Exact(name.into())
        })
    }

    /// Whether a request host (already lowercase, without port and final dot) matches.
    pub fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Exact(n), Some(h)) => **n == *h,
            (HostPattern::Wildcard(suffix), Some(h)) => {
                h.len() > suffix.len() && h.ends_with(&**suffix)
            }
            (_, None) => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
            HostPattern::Exact(n) => f.write_str(n),
        }
    }
}

/// Checks a route's `path_prefix`: it starts with `/`, holds visible ASCII without `?`, `#`
/// or `%`, and is already in the normal form requests are matched in (no `.` or `..`
/// segment, no `//`).
pub fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} does not start with '/'"));
    }
    if let Some(c) = p
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '%'))
    {
        return Err(format!(
            "{p:?} holds {c:?}: a prefix is a plain path (visible ASCII, no '?', '#' or '%')"
        ));
    }
    if normal_path(p.as_bytes()) != p.as_bytes() {
        return Err(format!(
            "{p:?} is not a normal path (no \".\" or \"..\" segment, no \"//\")"
        ));
    }
    Ok(())
}

/// Whether `path` (normal form) is `prefix` or lies below it, by whole segments.
pub fn under(path: &[u8], prefix: &[u8]) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || prefix.ends_with(b"/") || path[prefix.len()] == b'/')
}

/// One `[[route]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `host`.
    pub host: HostPattern,
    /// `path_prefix` (checked with [`check_prefix`]); `/` when left out.
    pub path_prefix: Box<str>,
    /// `pool`, as an index into the snapshot's pools.
    pub pool: PoolIx,
}

/// Two routes with one host and one prefix: the indexes of both, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate(pub usize, pub usize);

/// Routes by prefix, longest first.
#[derive(Debug, Clone, Default)]
struct Prefixes(Vec<(Box<str>, PoolIx)>);

impl Prefixes {
    fn pick(&self, path: &[u8]) -> Option<PoolIx> {
        self.0
            .iter()
            .find(|(p, _)| under(path, p.as_bytes()))
            .map(|&(_, pool)| pool)
    }
}

/// The route table of one snapshot.
#[derive(Debug, Clone)]
pub struct Table {
    exact: HashMap<Box<str>, Prefixes>,
    /// By suffix, longest first.
    wildcard: Vec<(Box<str>, Prefixes)>,
    any: Prefixes,
    default: Option<PoolIx>,
    routes: Vec<Route>,
}

impl Table {
    /// A table of `routes`, with `default` serving what none of them matches (the pool
    /// "default" when it exists). Refuses two routes with one host and one prefix.
    pub fn new(routes: Vec<Route>, default: Option<PoolIx>) -> Result<Table, Duplicate> {
        let mut seen: HashMap<(&HostPattern, &str), usize> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            if let Some(&first) = seen.get(&(&r.host, &*r.path_prefix)) {
                return Err(Duplicate(first, i));
            }
            seen.insert((&r.host, &r.path_prefix), i);
        }
        let mut exact: HashMap<Box<str>, Prefixes> = HashMap::new();
        let mut wildcard: Vec<(Box<str>, Prefixes)> = Vec::new();
        let mut any = Prefixes::default();
        for r in &routes {
            let entry = (r.path_prefix.clone(), r.pool);
            match &r.host {
                HostPattern::Any => any.0.push(entry),
                HostPattern::Exact(n) => exact.entry(n.clone()).or_default().0.push(entry),
                HostPattern::Wildcard(s) => match wildcard.iter_mut().find(|(w, _)| w == s) {
                    Some((_, p)) => p.0.push(entry),
                    None => wildcard.push((s.clone(), Prefixes(vec![entry]))),
                },
            }
        }
        let by_len = |p: &mut Prefixes| p.0.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        exact.values_mut().for_each(by_len);
        wildcard.iter_mut().for_each(|(_, p)| by_len(p));
        by_len(&mut any);
        wildcard.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Ok(Table {
            exact,
            wildcard,
            any,
            default,
            routes,
        })
    }

    /// The routes, as given.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes in the order a request's match is looked for: exact hosts, then wildcards
    /// (longest suffix first), then routes for any host; within one host, the longest prefix
    /// first. The first route whose host and prefix match a request is the one it takes.
    pub fn in_order(&self) -> Vec<&Route> {
        let mut all: Vec<&Route> = self.routes.iter().collect();
        all.sort_by_key(|r| {
            let (class, suffix, name) = match &r.host {
                HostPattern::Exact(n) => (0, 0, n.clone()),
                HostPattern::Wildcard(w) => (1, usize::MAX - w.len(), w.clone()),
                HostPattern::Any => (2, 0, Box::from("")),
            };
            (class, suffix, name, usize::MAX - r.path_prefix.len())
        });
        all
    }

    /// The pool serving what no route matches.
    pub fn default_pool(&self) -> Option<PoolIx> {
        self.default
    }

    /// The pool for a request: `host` is the Host header's value or the absolute-form
    /// authority as received (port and case included), `target` the request target's path
    /// and query as received. `None`: no route matches and there is no default pool (404).
    pub fn pick(&self, host: Option<&[u8]>, target: &[u8]) -> Option<PoolIx> {
        if self.routes.is_empty() {
            return self.default;
        }
        let mut buf = [0u8; MAX_HOST];
        let host = host.and_then(|h| request_host(h, &mut buf));
        let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
        let path = normal_path(path);
        self.pick_normal(host, &path)
    }

    /// [`Table::pick`] for a host and path already in normal form.
    fn pick_normal(&self, host: Option<&str>, path: &[u8]) -> Option<PoolIx> {
        if let Some(h) = host {
            if let Some(pool) = self.exact.get(h).and_then(|p| p.pick(path)) {
                return Some(pool);
            }
            for (suffix, p) in &self.wildcard {
                if h.len() > suffix.len() && h.ends_with(&**suffix) {
                    if let Some(pool) = p.pick(path) {
                        return Some(pool);
                    }
                }
            }
        }
        self.any.pick(path).or(self.default)
    }
}

/// A request's host for routing: the Host value (or authority) without its port and one final
/// dot, lowercased into `buf`. `None` when it is empty, too long to match any route, or not
/// text.
pub fn request_host<'b>(raw: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let name = if raw.first() == Some(&b'[') {
        // An IPv6 literal in its canonical text (as routes hold it): `[0::1]` is `[::1]`. One
        // that does not parse is no host.
        let end = raw.iter().position(|&b| b == b']')?;
        let addr: std::net::Ipv6Addr = std::str::from_utf8(&raw[1..end]).ok()?.parse().ok()?;
        let mut w = std::io::Cursor::new(&mut buf[..]);
        std::io::Write::write_fmt(&mut w, format_args!("[{addr}]")).ok()?;
        let n = w.position() as usize;
        return std::str::from_utf8(&buf[..n]).ok();
    } else {
        let end = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
        &raw[..end]
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..name.len()];
    for (o, &b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// The path as a backend reads it: `%XX` escapes of unreserved characters (RFC 3986:
/// letters, digits, `-`, `.`, `_`, `~`) decoded, repeated slashes merged, `.` and `..`
/// segments resolved (`..` never climbs above the root). Other escapes stay as written.
/// Borrowed when the path is already normal, as almost every path is.
pub fn normal_path(path: &[u8]) -> Cow<'_, [u8]> {
    let suspicious = path.contains(&b'%')
        || path.windows(2).any(|w| w == b"//" || w == b"/.")
        || path.first() != Some(&b'/');
    if !suspicious {
        return Cow::Borrowed(path);
    }
    let mut decoded = Vec::with_capacity(path.len() + 1);
    if path.first() != Some(&b'/') {
        decoded.push(b'/');
    }
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                let c = h << 4 | l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        decoded.push(b);
        i += 1;
    }
    // Segments after the leading '/', resolved.
    let mut segs: Vec<&[u8]> = Vec::new();
    let body = &decoded[1..];
    let trailing = body.is_empty() || body.ends_with(b"/");
    let mut last_dot = false;
    for seg in body.split(|&b| b == b'/') {
        last_dot = false;
        match seg {
            b"" => {}
            b"." => last_dot = true,
            b".." => {
                segs.pop();
                last_dot = true;
            }
            s => segs.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing || last_dot {
        out.push(b'/');
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
