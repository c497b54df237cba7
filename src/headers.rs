//! Header rules: finding and stripping the affinity cookie, removing hop-by-hop headers,
//! writing X-Forwarded-* and Via, and building the Set-Cookie of an issued token.
//!
//! Pure functions over `http::HeaderMap`: no I/O, no clock. The order matters and is fixed by
//! the proxy: hop-by-hop headers (and every name listed in `Connection`) are removed *before*
//! stickyd adds its own, so a client cannot use `Connection` to delete them.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Longest cookie value kept for verification; anything longer is not a token.
pub const MAX_COOKIE_VALUE: usize = 64;

/// The affinity cookie found in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No cookie of that name.
    Absent,
    /// A value longer than [`MAX_COOKIE_VALUE`]: not a token.
    TooLong,
    /// The first value of that name, copied out so the headers can be changed.
    Value([u8; MAX_COOKIE_VALUE], usize),
}

impl Found {
    /// The value bytes, empty unless `Value`.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Found::Value(buf, n) => &buf[..*n],
            _ => &[],
        }
    }
}

/// Splits one Cookie header value into `(name, value)` pairs, trimming optional whitespace; the
/// value is `None` for a bare name without `=`.
fn pairs(raw: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    raw.split(|&b| b == b';').filter_map(|p| {
        let p = p.trim_ascii();
        if p.is_empty() {
            return None;
        }
        Some(match p.iter().position(|&b| b == b'=') {
            Some(eq) => (p[..eq].trim_ascii(), Some(p[eq + 1..].trim_ascii())),
            None => (p, None),
        })
    })
}

/// Finds the first cookie named `name` in all `Cookie` headers and removes every cookie of that
/// name, keeping all other cookies in order. Empty `Cookie` headers are dropped. A quoted value
/// (`"..."`) is unquoted.
pub fn take_cookie(headers: &mut HeaderMap, name: &str) -> Found {
    let name = name.as_bytes();
    let mine = |raw: &[u8]| pairs(raw).any(|(n, _)| n == name);
    // Fast path: most requests carry no Cookie header or not ours; touch nothing then.
    if !headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| mine(v.as_bytes()))
    {
        return Found::Absent;
    }
    let mut found = Found::Absent;
    let mut kept: Vec<HeaderValue> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let raw = v.as_bytes();
        if !mine(raw) {
            // Kept as it is, unless it holds no cookie at all (empty, or only separators).
            if pairs(raw).next().is_some() {
                kept.push(v.clone());
            }
            continue;
        }
        let mut rest: Vec<u8> = Vec::with_capacity(raw.len());
        for (n, val) in pairs(raw) {
            if n == name {
                if found == Found::Absent {
                    let val = val.unwrap_or_default();
                    let val = val
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(val);
                    found = if val.len() > MAX_COOKIE_VALUE {
                        Found::TooLong
                    } else {
                        let mut buf = [0u8; MAX_COOKIE_VALUE];
                        buf[..val.len()].copy_from_slice(val);
                        Found::Value(buf, val.len())
                    };
                }
                continue;
            }
            if !rest.is_empty() {
                rest.extend_from_slice(b"; ");
            }
            rest.extend_from_slice(n);
            if let Some(val) = val {
                rest.push(b'=');
                rest.extend_from_slice(val);
            }
        }
        // Bytes come from a valid header value minus separators, so this cannot fail; skip the
        // pair defensively rather than panic if it ever did.
        if !rest.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(&rest)
        {
            kept.push(v);
        }
    }
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
    found
}

/// Hop-by-hop headers removed in both directions (RFC 9110 section 7.6.1, plus the
/// non-standard `Proxy-Connection` and `Keep-Alive`).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers: first every header named in `Connection`, then the fixed list.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there is none, or only `Connection`: one pass over the names (compared, not
    // hashed) decides, and only names present are removed.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n))
        .cloned()
        .collect();
    for n in present {
        headers.remove(n);
    }
}

/// The protocol a request asks to switch to, if it is a switch stickyd tunnels: HTTP/1.1 with
/// `Connection: upgrade` and an `Upgrade` header. `Upgrade: h2c` is never tunnelled (stickyd
/// speaks h2c itself, with prior knowledge): such a request is served as a plain one.
pub fn upgrade_protocol(headers: &HeaderMap, version: http::Version) -> Option<HeaderValue> {
    // Most requests have no Upgrade header: one lookup decides.
    let proto = headers.get(header::UPGRADE)?;
    if version != http::Version::HTTP_11 {
        return None;
    }
    let asks = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    let h2c = proto
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (asks && !h2c && !proto.is_empty()).then(|| proto.clone())
}

/// The client's address for `ip` affinity: the TCP peer, or, when the peer is a trusted proxy,
/// the first address from the right of X-Forwarded-For that is not a trusted proxy (the
/// leftmost entry is whatever the client claimed; only hops from the right are vouched for).
/// Entries that do not parse end the walk.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: impl Fn(IpAddr) -> bool) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let mut hops: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .collect();
    let mut client = peer;
    while let Some(hop) = hops.pop() {
        let Some(ip) = std::str::from_utf8(hop.trim_ascii())
            .ok()
            .and_then(|s| s.parse::<IpAddr>().ok())
        else {
            break;
        };
        client = ip.to_canonical();
        if !trusted(client) {
            break;
        }
    }
    client
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the proxy knows of the client connection when forwarding.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The TCP peer's address, as a header value (made once per connection).
    pub peer: &'a HeaderValue,
    /// Whether that peer is a trusted proxy, whose X-Forwarded-* headers are kept.
    pub trusted: bool,
    /// `"http"` or `"https"`.
    pub proto: &'static str,
    /// The request's host (Host header or URI authority), if any.
    pub host: Option<&'a HeaderValue>,
    /// Value to append to `Via`, if any (e.g. `1.1 stickyd`).
    pub via: Option<&'a HeaderValue>,
}

/// Writes X-Forwarded-For/-Proto/-Host and Via. From an untrusted peer, incoming X-Forwarded-*
/// headers are replaced; from a trusted proxy, the peer is appended to X-Forwarded-For and the
/// proxy's -Proto and -Host are kept when present.
pub fn add_forwarded(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    let peer = f.peer.clone();
    if f.trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut joined: Vec<u8> = Vec::with_capacity(64);
        for v in headers.get_all(&X_FORWARDED_FOR) {
            if !joined.is_empty() {
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(v.as_bytes());
        }
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(peer.as_bytes());
        let v = HeaderValue::from_bytes(&joined).unwrap_or(peer);
        headers.insert(X_FORWARDED_FOR.clone(), v);
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer);
    }
    if !(f.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(f.proto));
    }
    if !(f.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match f.host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    if let Some(via) = f.via {
        headers.append(header::VIA, via.clone());
    }
}

/// Attributes of the affinity cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    /// Cookie name.
    pub name: String,
    /// `Secure`: `None` on TLS connections only, else always (`true`) or never (`false`).
    pub secure: Option<bool>,
    /// Optional `Domain`.
    pub domain: Option<String>,
}

/// The `Set-Cookie` value for token `value` with `max_age` seconds left, for a client on a TLS
/// connection or not.
pub fn set_cookie(attrs: &CookieAttrs, value: &str, max_age: u32, tls: bool) -> HeaderValue {
    let mut s = String::with_capacity(128);
    s.push_str(&attrs.name);
    s.push('=');
    s.push_str(value);
    s.push_str("; Path=/; Max-Age=");
    s.push_str(&max_age.to_string());
    if let Some(d) = &attrs.domain {
        s.push_str("; Domain=");
        s.push_str(d);
    }
    s.push_str("; HttpOnly; SameSite=Lax");
    if attrs.secure.unwrap_or(tls) {
        s.push_str("; Secure");
    }
    // Name and domain are validated as cookie tokens at config load; value is base64url.
    HeaderValue::from_str(&s).expect("validated cookie attributes form a valid header")
}

/// Adds the issued cookie to a response, and `Cache-Control: private` when the response has no
/// Cache-Control, so that no shared cache stores one client's affinity for others.
pub fn add_set_cookie(headers: &mut HeaderMap, cookie: HeaderValue) {
    headers.append(header::SET_COOKIE, cookie);
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

/// Whether a string is a valid cookie name (an RFC 6265 token).
pub fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What a request's framing headers allow, judged before anything is forwarded. hyper already
/// refuses what no parser could agree on (differing Content-Lengths, a Transfer-Encoding not
/// ending in `chunked`, bad names and values); this refuses what it lets through but that two
/// HTTP/1 parsers might still read differently (the `http_desync_guardian` corpus's severe and
/// ambiguous tiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Nothing doubtful.
    Clear,
    /// Well framed, but a payload on a method where it has no defined meaning (GET, HEAD,
    /// DELETE, OPTIONS, TRACE): a backend may ignore the body and read it as the next request.
    /// Forwarded, and neither connection is reused after the response.
    CloseAfter,
    /// Refused (400, connection closed, nothing forwarded), with the reason for the client.
    Refuse(&'static str),
    /// A transfer coding other than `chunked` (RFC 9112 section 6.1: 501, as nginx does).
    /// Forwarding it would drop the coding: stickyd re-frames bodies with `chunked` alone.
    Unsupported(&'static str),
}

/// Judges a request's framing headers (RFC 9112 section 6, RFC 9110 section 8.6).
pub fn framing(method: &http::Method, headers: &HeaderMap) -> Framing {
    let mut te_lines = 0;
    let mut chunked = 0;
    let mut other = false;
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        te_lines += 1;
        for c in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if c.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else if !c.is_empty() {
                other = true;
            }
        }
    }
    if chunked > 1 {
        return Framing::Refuse("chunked applied more than once\n");
    }
    if other {
        return Framing::Unsupported("only the chunked transfer coding is supported\n");
    }
    let mut cl = headers.get_all(header::CONTENT_LENGTH).iter();
    let length = cl.next();
    if cl.next().is_some() {
        return Framing::Refuse("more than one Content-Length header\n");
    }
    if headers.keys().any(looks_like_framing) {
        return Framing::Refuse(
            "a header name that reads as Content-Length or Transfer-Encoding\n",
        );
    }
    let body = te_lines > 0 || length.is_some_and(|v| v.as_bytes().trim_ascii() != b"0");
    let bodiless = matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::DELETE
            | http::Method::OPTIONS
            | http::Method::TRACE
    );
    if body && bodiless {
        Framing::CloseAfter
    } else {
        Framing::Clear
    }
}

/// A name other than `content-length`/`transfer-encoding` that some server would map to one
/// of them: the same letters with `_`, doubled or other separators (CGI-style servers turn
/// `Content_Length` into `CONTENT_LENGTH`).
fn looks_like_framing(name: &HeaderName) -> bool {
    const LETTERS: [&[u8]; 2] = [b"contentlength", b"transferencoding"];
    let n = name.as_str().as_bytes();
    if n.len() < 14 || *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
        return false;
    }
    let letters = n.iter().filter(|b| b.is_ascii_alphanumeric());
    LETTERS.iter().any(|want| letters.clone().eq(want.iter()))
}

/// The bytes of a reg-name or IPv4 host (RFC 3986: unreserved, pct-encoded, sub-delims).
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// Whether a `Host` value is an authority a backend can only read one way (RFC 9110 section
/// 7.2, RFC 3986 section 3.2.2): a reg-name, IPv4 or `[IPv6]` host and an optional numeric port
/// up to 65535; no userinfo, path, spaces or second colon. Empty is allowed (RFC 9112 3.2).
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let (inside, after) = (&rest[..close], &rest[close + 1..]);
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match after {
            [] => (&[][..], None),
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    let host_ok = host.iter().all(|&b| REG_NAME[usize::from(b)]);
    let port_ok = port.is_none_or(|p| {
        p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65_535
    });
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn cookies(h: &HeaderMap) -> Vec<&str> {
        h.get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn the_affinity_cookie_is_taken_and_other_cookies_pass_untouched() {
        let mut h = map(&[("cookie", "a=1; stickyd=TOKEN; b=two=2")]);
        let f = take_cookie(&mut h, "stickyd");
        assert_eq!(f.bytes(), b"TOKEN");
        assert_eq!(cookies(&h), ["a=1; b=two=2"]);
    }

    #[test]
    fn a_request_with_only_the_affinity_cookie_loses_its_cookie_header() {
        let mut h = map(&[("cookie", "stickyd=T")]);
        assert_eq!(take_cookie(&mut h, "stickyd").bytes(), b"T");
        assert!(h.get(header::COOKIE).is_none());
    }

    #[test]
    fn every_copy_is_stripped_across_split_cookie_headers_and_the_first_wins() {
        let mut h = map(&[
            ("cookie", "x=1; stickyd=FIRST"),
            ("cookie", "y=2"),
            ("cookie", "stickyd=SECOND;z=3"),
        ]);
        assert_eq!(take_cookie(&mut h, "stickyd").bytes(), b"FIRST");
        assert_eq!(cookies(&h), ["x=1", "y=2", "z=3"]);
    }

    #[test]
    fn names_must_match_exactly() {
        let mut h = map(&[("cookie", "stickyd2=a; xstickyd=b; Stickyd=c")]);
        assert_eq!(take_cookie(&mut h, "stickyd"), Found::Absent);
        assert_eq!(
            cookies(&h),
            ["stickyd2=a; xstickyd=b; Stickyd=c"],
            "untouched"
        );
    }

    #[test]
    fn quoted_and_overlong_values() {
        let mut h = map(&[("cookie", "stickyd=\"Q\"")]);
        assert_eq!(take_cookie(&mut h, "stickyd").bytes(), b"Q");
        let long = format!("stickyd={}; keep=1", "x".repeat(5000));
        let mut h = map(&[("cookie", &long)]);
        assert_eq!(take_cookie(&mut h, "stickyd"), Found::TooLong);
        assert_eq!(cookies(&h), ["keep=1"]);
    }

    #[test]
    fn flag_cookies_without_a_value_survive() {
        let mut h = map(&[("cookie", "flag; stickyd=T; other=")]);
        take_cookie(&mut h, "stickyd");
        assert_eq!(cookies(&h), ["flag; other="]);
    }

    #[test]
    fn connection_listed_headers_go_first_and_hop_by_hop_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "s"),
            ("x-other", "o"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x"),
            ("x-kept", "k"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn connection_cannot_remove_the_headers_stickyd_adds() {
        let mut h = map(&[(
            "connection",
            "close, X-Forwarded-For, X-Forwarded-Proto, Via",
        )]);
        strip_hop_by_hop(&mut h);
        let via = HeaderValue::from_static("1.1 stickyd");
        add_forwarded(
            &mut h,
            &Forwarded {
                peer: &HeaderValue::from_static("192.0.2.1"),
                trusted: false,
                proto: "http",
                host: None,
                via: Some(&via),
            },
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["via"], "1.1 stickyd");
    }

    #[test]
    fn untrusted_peers_cannot_spoof_x_forwarded_headers() {
        let host = HeaderValue::from_static("shop.example");
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        add_forwarded(
            &mut h,
            &Forwarded {
                peer: &HeaderValue::from_static("192.0.2.7"),
                trusted: false,
                proto: "http",
                host: Some(&host),
                via: None,
            },
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert!(h.get("via").is_none());
    }

    #[test]
    fn trusted_proxies_are_appended_to() {
        let host = HeaderValue::from_static("shop.example");
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
            ("via", "1.1 edge"),
        ]);
        let via = HeaderValue::from_static("1.1 stickyd");
        add_forwarded(
            &mut h,
            &Forwarded {
                peer: &HeaderValue::from_static("10.0.0.9"),
                trusted: true,
                proto: "http",
                host: Some(&host),
                via: Some(&via),
            },
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        let vias: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(vias, ["1.1 edge", "1.1 stickyd"]);
    }

    #[test]
    fn the_client_address_is_the_first_untrusted_hop_from_the_right() {
        let t = |ip: IpAddr| ip.to_string().starts_with("10.");
        let p: IpAddr = "10.0.0.1".parse().unwrap();
        let h = map(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.5")]);
        assert_eq!(
            client_ip(&h, p, t),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let untrusted: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(&h, untrusted, t),
            untrusted,
            "an untrusted peer is the client"
        );
        let garbage = map(&[("x-forwarded-for", "nonsense, 10.0.0.5")]);
        assert_eq!(
            client_ip(&garbage, p, t),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&HeaderMap::new(), p, t), p);
        let split = map(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "10.9.9.9"),
        ]);
        assert_eq!(
            client_ip(&split, p, t),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn upgrades_are_recognised_and_h2c_is_never_tunnelled() {
        use http::Version;
        let ws = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            upgrade_protocol(&ws, Version::HTTP_11).unwrap(),
            "websocket"
        );
        assert!(upgrade_protocol(&ws, Version::HTTP_10).is_none());
        assert!(upgrade_protocol(&ws, Version::HTTP_2).is_none());
        let no_conn = map(&[("upgrade", "websocket")]);
        assert!(upgrade_protocol(&no_conn, Version::HTTP_11).is_none());
        let no_upgrade = map(&[("connection", "upgrade")]);
        assert!(upgrade_protocol(&no_upgrade, Version::HTTP_11).is_none());
        let h2c = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(upgrade_protocol(&h2c, Version::HTTP_11).is_none());
        let mixed = map(&[("connection", "upgrade"), ("upgrade", "websocket, H2C")]);
        assert!(upgrade_protocol(&mixed, Version::HTTP_11).is_none());
    }

    #[test]
    fn set_cookie_carries_every_attribute() {
        let a = CookieAttrs {
            name: "stickyd".into(),
            secure: None,
            domain: None,
        };
        assert_eq!(
            set_cookie(&a, "TOK", 3600, false),
            "stickyd=TOK; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            set_cookie(&a, "TOK", 3600, true),
            "stickyd=TOK; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure",
            "Secure on TLS by default"
        );
        let a = CookieAttrs {
            name: "sid".into(),
            secure: Some(true),
            domain: Some("example.com".into()),
        };
        assert_eq!(
            set_cookie(&a, "T", 5, false),
            "sid=T; Path=/; Max-Age=5; Domain=example.com; HttpOnly; SameSite=Lax; Secure"
        );
        let never = CookieAttrs {
            secure: Some(false),
            ..a
        };
        assert!(
            !set_cookie(&never, "T", 5, true)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
    }

    #[test]
    fn setting_the_cookie_adds_cache_control_private_only_when_absent() {
        let mut h = HeaderMap::new();
        add_set_cookie(&mut h, HeaderValue::from_static("a=b"));
        assert_eq!(h["cache-control"], "private");
        let mut h = map(&[("cache-control", "no-store"), ("set-cookie", "app=1")]);
        add_set_cookie(&mut h, HeaderValue::from_static("a=b"));
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(
            h.get_all("set-cookie").iter().count(),
            2,
            "the app's cookie is kept"
        );
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(is_cookie_name("stickyd") && is_cookie_name("__Host-sid"));
        for bad in ["", "a b", "a=b", "a;b", "a,b", "é", "a\"b"] {
            assert!(!is_cookie_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn framing_refuses_what_two_parsers_could_read_differently() {
        use http::Method;
        let refused = [
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("transfer-encoding", "chunked, chunked")],
            vec![("content-length", "5"), ("content-length", "5")],
            vec![("content_length", "5")],
            vec![("transfer_encoding", "chunked")],
            vec![("transfer--encoding", "chunked")],
            vec![("transfer___encoding", "chunked")],
            vec![("content-length-", "5")],
            vec![("x", "1"), ("-content-length", "5")],
        ];
        for h in refused {
            assert!(
                matches!(framing(&Method::POST, &map(&h)), Framing::Refuse(_)),
                "{h:?}"
            );
        }
        for h in [
            vec![
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("transfer-encoding", "gzip, chunked")],
            vec![("transfer-encoding", "identity, chunked")],
        ] {
            assert!(
                matches!(framing(&Method::POST, &map(&h)), Framing::Unsupported(_)),
                "{h:?}"
            );
        }
        let clear = [
            vec![],
            vec![("content-length", "5")],
            vec![("transfer-encoding", "chunked")],
            vec![("transfer-encoding", "chunked,")],
            vec![("content-lengthy", "5")],
            vec![("x-content-length", "5")],
            vec![("content-type", "text/plain"), ("content-language", "en")],
        ];
        for h in clear {
            assert_eq!(framing(&Method::POST, &map(&h)), Framing::Clear, "{h:?}");
        }
    }

    #[test]
    fn a_body_on_a_bodiless_method_closes_both_connections_after() {
        use http::Method;
        for m in [
            Method::GET,
            Method::HEAD,
            Method::DELETE,
            Method::OPTIONS,
            Method::TRACE,
        ] {
            for h in [
                vec![("content-length", "5")],
                vec![("transfer-encoding", "chunked")],
            ] {
                assert_eq!(framing(&m, &map(&h)), Framing::CloseAfter, "{m} {h:?}");
            }
            assert_eq!(
                framing(&m, &map(&[("content-length", "0")])),
                Framing::Clear
            );
            assert_eq!(framing(&m, &map(&[])), Framing::Clear);
        }
        for m in [Method::POST, Method::PUT, Method::PATCH] {
            assert_eq!(
                framing(&m, &map(&[("content-length", "5")])),
                Framing::Clear
            );
        }
    }

    #[test]
    fn host_values_are_authorities_or_refused() {
        for good in [
            "",
            "example.com",
            "example.com:8080",
            "a",
            "x:",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "xn--bcher-kva.example",
            "under_score.local",
            "host:65535",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "x:abc", "x:65536", "x:123456", "x:1:2", "user@x", "x/y", "x?y", "x#y", "x y", "[::1",
            "[]", "[::1]x", "[::1]:x", "[zz]", "x\ty", "\"x\"",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn take_cookie_never_panics_and_always_removes_the_name(raw in "[ -~]{0,200}") {
            if let Ok(v) = HeaderValue::from_str(&raw) {
                let mut h = HeaderMap::new();
                h.append(header::COOKIE, v);
                let _ = take_cookie(&mut h, "stickyd");
                for v in h.get_all(header::COOKIE) {
                    prop_assert!(!pairs(v.as_bytes()).any(|(n, _)| n == b"stickyd"));
                }
            }
        }

        #[test]
        fn a_name_is_refused_as_framing_iff_its_letters_spell_one_but_it_is_not_one(
            name in "[a-z_-]{1,24}",
        ) {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                let letters: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
                let spells = letters == "contentlength" || letters == "transferencoding";
                let exact = name == "content-length" || name == "transfer-encoding";
                prop_assert_eq!(looks_like_framing(&n), spells && !exact);
            }
        }

        #[test]
        fn framing_letters_with_any_separators_are_refused_unless_canonical(
            which in 0..2usize,
            seps in prop::collection::vec("[_-]{0,2}", 17),
        ) {
            let word = ["contentlength", "transferencoding"][which];
            let mut name = String::new();
            for (c, sep) in word.chars().zip(&seps) {
                name.push_str(sep);
                name.push(c);
            }
            let n = HeaderName::from_bytes(name.as_bytes()).unwrap();
            let canonical = name == "content-length" || name == "transfer-encoding";
            prop_assert_eq!(looks_like_framing(&n), name.len() >= 14 && !canonical);
        }
    }
}
