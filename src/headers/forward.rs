//! What changes hands at the proxy: hop-by-hop headers removed in both directions (names
//! listed in `Connection` first), upgrades recognised, and X-Forwarded-For/-Proto/-Host and
//! `Via` written, trusting only the configured proxies.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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
/// Entries that do not parse end the walk. `forwarded_for` is the X-Forwarded-For values in
/// the order received (from a header map or from the engine's fields); nothing is allocated.
pub fn client_ip<'a, I>(forwarded_for: I, peer: IpAddr, trusted: impl Fn(IpAddr) -> bool) -> IpAddr
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: DoubleEndedIterator,
{
    if !trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for
        .into_iter()
        .rev()
        .flat_map(|v| v.rsplit(|&b| b == b','))
    {
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

/// Appends the X-Forwarded-For value to send: from a trusted proxy, the received values
/// (`received`, in order) joined by `, ` and then the peer; from anyone else, the peer alone.
/// The one rule of both request paths.
pub fn write_forwarded_for<'a>(
    out: &mut Vec<u8>,
    trusted: bool,
    received: impl IntoIterator<Item = &'a [u8]>,
    peer: &[u8],
) {
    if trusted {
        for v in received {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(peer);
}

/// A peer address as X-Forwarded-For carries it: IPv4 dotted decimal written by hand (once
/// per connection, the cost of `to_string` and its formatter showed in profiles of a
/// connection per request), IPv6 in its canonical text form.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            HeaderValue::from_bytes(&buf[..n]).expect("digits and dots are a valid header value")
        }
        IpAddr::V6(_) => {
            HeaderValue::from_str(&ip.to_string()).expect("an IPv6 address is a valid header value")
        }
    }
}

/// Whether a received X-Forwarded-Proto or X-Forwarded-Host is sent on as it came (`present`
/// in the request and from a trusted proxy) rather than replaced by stickyd's own.
pub fn keeps_forwarded(trusted: bool, present: bool) -> bool {
    trusted && present
}

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Replication: the backend serving the request (only stickyd writes it).
pub(crate) static X_STICKYD_BACKEND: HeaderName = HeaderName::from_static("x-stickyd-backend");
/// Replication: the session's backups, `id=host:port, ...` (only stickyd writes it).
pub(crate) static X_STICKYD_BACKUP: HeaderName = HeaderName::from_static("x-stickyd-backup");
/// Replication: the serving backend takes the session over (only stickyd writes it).
pub(crate) static X_STICKYD_TAKEOVER: HeaderName = HeaderName::from_static("x-stickyd-takeover");

/// Removes replication's fields, which only stickyd writes: a client's copies never reach a
/// backend, replication on or off.
pub fn strip_replication(headers: &mut http::HeaderMap) {
    let names = [&X_STICKYD_BACKEND, &X_STICKYD_BACKUP, &X_STICKYD_TAKEOVER];
    // Usually none is there: one pass over the names (compared, not hashed) decides.
    if !headers.keys().any(|n| names.contains(&n)) {
        return;
    }
    for name in names {
        headers.remove(name);
    }
}
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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
        write_forwarded_for(
            &mut joined,
            true,
            headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .map(HeaderValue::as_bytes),
            peer.as_bytes(),
        );
        let v = HeaderValue::from_bytes(&joined).unwrap_or(peer);
        headers.insert(X_FORWARDED_FOR.clone(), v);
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer);
    }
    if !keeps_forwarded(f.trusted, headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(f.proto));
    }
    if !keeps_forwarded(f.trusted, headers.contains_key(&X_FORWARDED_HOST)) {
        match f.host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    if let Some(via) = f.via {
        headers.append(header::VIA, via.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;
    use std::net::IpAddr;

    proptest::proptest! {
        /// The hand-written form is exactly what `Display` writes, for every address.
        #[test]
        fn ip_values_are_the_addresses_text(v4 in proptest::prelude::any::<u32>(), v6 in proptest::prelude::any::<u128>()) {
            for ip in [IpAddr::from(v4.to_be_bytes()), IpAddr::from(v6.to_be_bytes())] {
                let (ours, display) = (ip_value(ip), ip.to_string());
                proptest::prop_assert_eq!(ours.as_bytes(), display.as_bytes());
            }
        }
    }

    #[test]
    fn ip_values_at_the_edges() {
        for s in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), s);
        }
    }

    fn xff(h: &HeaderMap) -> impl DoubleEndedIterator<Item = &[u8]> {
        h.get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes)
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
    fn forwarded_for_is_appended_to_only_for_a_trusted_peer() {
        let received: [&[u8]; 2] = [b"1.2.3.4", b"5.6.7.8, 9.9.9.9"];
        let mut out = b"X: ".to_vec();
        write_forwarded_for(&mut out, true, received, b"10.0.0.1");
        assert_eq!(out, b"X: 1.2.3.4, 5.6.7.8, 9.9.9.9, 10.0.0.1");
        let mut out = Vec::new();
        write_forwarded_for(&mut out, false, received, b"10.0.0.1");
        assert_eq!(out, b"10.0.0.1");
        assert!(keeps_forwarded(true, true));
        assert!(!keeps_forwarded(true, false) && !keeps_forwarded(false, true));
    }

    #[test]
    fn the_client_address_is_the_first_untrusted_hop_from_the_right() {
        let t = |ip: IpAddr| ip.to_string().starts_with("10.");
        let p: IpAddr = "10.0.0.1".parse().unwrap();
        let h = map(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.5")]);
        assert_eq!(
            client_ip(xff(&h), p, t),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let untrusted: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(xff(&h), untrusted, t),
            untrusted,
            "an untrusted peer is the client"
        );
        let garbage = map(&[("x-forwarded-for", "nonsense, 10.0.0.5")]);
        assert_eq!(
            client_ip(xff(&garbage), p, t),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(xff(&HeaderMap::new()), p, t), p);
        let split = map(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "10.9.9.9"),
        ]);
        assert_eq!(
            client_ip(xff(&split), p, t),
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
}
