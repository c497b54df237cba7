//! Which requests the admin API serves at all, before the token and the routes: the defence
//! against web pages in the operator's browser (see the [`crate::admin`] module doc for the
//! attacks). Pure: the request's headers, the connection's local address and the allowed names
//! come in; no I/O, no state.
//!
//! Two rules, for every request, token or not:
//! - The target host (`Host`, and the request line's authority if it has one) must be this
//!   listener: the IP literal the client connected to with its port, `localhost` with that port,
//!   or a name from `[admin] allowed_hosts` (any port). A request without `Host` (HTTP/1.0) is
//!   served: browsers always send it.
//! - A state-changing call (any method but GET and HEAD) that carries `Origin` must come from an
//!   origin whose host passes the rule above, and one that carries `Sec-Fetch-Site` must say
//!   `same-origin` or `none`. Clients that send neither (curl, scripts) are not browsers and pass.

use std::net::{IpAddr, SocketAddr};

use http::{Method, StatusCode};

/// What the rules look at in one request. A header sent more than once must be given as
/// [`SEVERAL`], which no rule accepts.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The `Host` header.
    pub host: Option<&'a [u8]>,
    /// The authority of an absolute-form request target (`GET http://HOST/...`), which
    /// overrides `Host` (RFC 9112 section 3.2.2).
    pub authority: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a [u8]>,
    /// The `Sec-Fetch-Site` header.
    pub fetch_site: Option<&'a [u8]>,
}

/// Stands for a header sent more than once (it never names one host, origin or site).
pub const SEVERAL: &[u8] = b"(sent more than once)";

/// Why a request is refused. Each names what the client sent, so the operator can see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The target host is not this listener, nor an allowed name.
    ForeignHost(String),
    /// A state-changing call from a page of another origin.
    CrossOrigin(String),
    /// A state-changing call the browser marks as not from this origin.
    CrossSite(String),
}

impl Refusal {
    /// 421 for a foreign host: the request was sent to a server that does not answer for that
    /// name (RFC 9110 section 15.5.20), which is what DNS rebinding does, not a matter of
    /// permission. 403 for a call from another origin: the target is right, the caller is not
    /// allowed to act on it.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::ForeignHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::CrossOrigin(_) | Refusal::CrossSite(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The short text body: what was refused and how to allow it when that is the operator's
    /// call.
    pub fn body(&self) -> String {
        match self {
            Refusal::ForeignHost(h) => format!(
                "Host {h:?} is not this admin listener (its IP address or localhost, with its port); \
                 to reach the admin API by that name, add it to [admin] allowed_hosts\n"
            ),
            Refusal::CrossOrigin(o) => format!(
                "cross-origin call refused: Origin {o:?} is not this admin listener; \
                 state-changing calls must come from its own origin or from a non-browser client\n"
            ),
            Refusal::CrossSite(s) => format!(
                "cross-site call refused: Sec-Fetch-Site is {s:?}; \
                 state-changing calls must come from its own origin or from a non-browser client\n"
            ),
        }
    }
}

/// Admits `req`, which arrived on a connection whose local address is `local`, or says why
/// not. `allowed` are the `[admin] allowed_hosts` names (host names or IP literals, no port).
pub fn admit(req: &Seen<'_>, local: SocketAddr, allowed: &[&str]) -> Result<(), Refusal> {
    for target in [req.host, req.authority.map(str::as_bytes)]
        .into_iter()
        .flatten()
    {
        let ok = std::str::from_utf8(target)
            .ok()
            .and_then(split_host_port)
            .is_some_and(|(host, port)| is_this(host, port.unwrap_or(80), local, allowed));
        if !ok {
            return Err(Refusal::ForeignHost(shown(target)));
        }
    }
    if matches!(*req.method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    if let Some(origin) = req.origin
        && !is_own_origin(origin, local, allowed)
    {
        return Err(Refusal::CrossOrigin(shown(origin)));
    }
    if let Some(site) = req.fetch_site
        && !matches!(site, b"same-origin" | b"none")
    {
        return Err(Refusal::CrossSite(shown(site)));
    }
    Ok(())
}

/// Whether `host` on `port` names this listener: the local IP literal or `localhost` with the
/// local port, or an allowed name on any port (the operator vouches for the name; a reverse
/// proxy or a tunnel may present it on its own port).
fn is_this(host: &str, port: u16, local: SocketAddr, allowed: &[&str]) -> bool {
    let ip = ip_literal(host);
    let here = match ip {
        Some(ip) => ip == local.ip().to_canonical(),
        None => host.eq_ignore_ascii_case("localhost"),
    };
    (here && port == local.port())
        || allowed.iter().any(|a| match (ip, ip_literal(a)) {
            (Some(ip), Some(a)) => ip == a,
            (None, None) => a.eq_ignore_ascii_case(host),
            _ => false,
        })
}

/// Whether an `Origin` value (`scheme://host[:port]`, RFC 6454) names this listener. `null`
/// (sandboxed frames, `file:` pages) and anything with a path never do.
fn is_own_origin(origin: &[u8], local: SocketAddr, allowed: &[&str]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        80
    } else if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        return false;
    };
    split_host_port(rest)
        .is_some_and(|(host, port)| is_this(host, port.unwrap_or(default_port), local, allowed))
}

/// Splits `host[:port]` into its host (an IPv6 literal keeps its brackets) and port, or `None`
/// when it is not one: empty, a bad port, or a character a host name or IP literal never has
/// (so userinfo, paths and spaces are refused).
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')? + 1;
        (&s[..end], &s[end..])
    } else {
        match s.find(':') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        }
    };
    let port = match port {
        "" => None,
        p => {
            let digits = p.strip_prefix(':')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(digits.parse().ok()?)
        }
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    };
    host_ok.then_some((host, port))
}

/// The address an IP literal names (`1.2.3.4`, `[::1]`), IPv4-mapped IPv6 as IPv4 so a
/// dual-stack listener matches either spelling.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => IpAddr::V6(v6.parse().ok()?),
        None => IpAddr::V4(host.parse().ok()?),
    };
    Some(ip.to_canonical())
}

/// A header value as a refusal shows it: lossy UTF-8, at most 100 characters.
fn shown(v: &[u8]) -> String {
    String::from_utf8_lossy(v).chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LOCAL: &str = "127.0.0.1:9901";

    fn local() -> SocketAddr {
        LOCAL.parse().unwrap()
    }

    fn seen<'a>(method: &'a Method, host: Option<&'a str>) -> Seen<'a> {
        Seen {
            method,
            host: host.map(str::as_bytes),
            authority: None,
            origin: None,
            fetch_site: None,
        }
    }

    fn host_ok(host: &str, local: SocketAddr, allowed: &[&str]) -> bool {
        admit(&seen(&Method::GET, Some(host)), local, allowed).is_ok()
    }

    fn post_from(origin: Option<&str>, site: Option<&str>) -> Result<(), Refusal> {
        let req = Seen {
            origin: origin.map(str::as_bytes),
            fetch_site: site.map(str::as_bytes),
            ..seen(&Method::POST, Some(LOCAL))
        };
        admit(&req, local(), &["admin.example"])
    }

    #[test]
    fn the_address_the_client_connected_to_and_localhost_with_its_port_are_this_listener() {
        for host in [
            "127.0.0.1:9901",
            "localhost:9901",
            "LocalHost:9901",
            "[::ffff:127.0.0.1]:9901",
        ] {
            assert!(host_ok(host, local(), &[]), "{host}");
        }
        let v6: SocketAddr = "[::1]:9901".parse().unwrap();
        assert!(host_ok("[::1]:9901", v6, &[]));
        assert!(host_ok("[0:0::1]:9901", v6, &[]), "any spelling of the IP");
        // A 0.0.0.0 listener reached by its real IP: the local address is the real IP.
        let real: SocketAddr = "192.0.2.7:9901".parse().unwrap();
        assert!(host_ok("192.0.2.7:9901", real, &[]));
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:9901".parse().unwrap();
        assert!(host_ok("192.0.2.7:9901", mapped, &[]), "dual-stack socket");
        // Port 80 may be left out, as browsers do.
        let on_80: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(host_ok("localhost", on_80, &[]));
        assert!(host_ok("127.0.0.1", on_80, &[]));
    }

    #[test]
    fn any_other_name_address_or_port_is_a_foreign_host() {
        for host in [
            "evil.example",
            "evil.example:9901",
            "127.0.0.1:9902",
            "127.0.0.1",
            "localhost",
            "localhost.:9901",
            "127.0.0.2:9901",
            "[::1]:9901",
            "admin.example.evil:9901",
            "user@127.0.0.1:9901",
            "127.0.0.1:9901/x",
            "127.0.0.1:",
            "127.0.0.1:+9901",
            "127.0.0.1:99999",
            "",
            ":9901",
            "[::1",
            "[evil]:9901",
        ] {
            let e = admit(&seen(&Method::GET, Some(host)), local(), &["admin.example"]);
            assert_eq!(e, Err(Refusal::ForeignHost(host.into())), "{host:?}");
        }
        let e = admit(&seen(&Method::GET, Some("x")), local(), &[]).unwrap_err();
        assert_eq!(e.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(e.body().contains("allowed_hosts"), "{}", e.body());
    }

    #[test]
    fn allowed_names_match_without_case_and_on_any_port() {
        let allowed = ["admin.example", "192.0.2.9", "[2001:db8::1]"];
        for host in [
            "admin.example",
            "ADMIN.example:8443",
            "admin.example:9901",
            "192.0.2.9:8080",
            "[2001:db8:0::1]:1",
        ] {
            assert!(host_ok(host, local(), &allowed), "{host}");
        }
        assert!(!host_ok("other.example", local(), &allowed));
        assert!(!host_ok("192.0.2.10", local(), &allowed));
    }

    #[test]
    fn no_host_is_served_and_a_repeated_host_is_not() {
        assert_eq!(admit(&seen(&Method::GET, None), local(), &[]), Ok(()));
        assert_eq!(admit(&seen(&Method::POST, None), local(), &[]), Ok(()));
        let twice = Seen {
            host: Some(SEVERAL),
            ..seen(&Method::GET, None)
        };
        assert!(matches!(
            admit(&twice, local(), &[]),
            Err(Refusal::ForeignHost(_))
        ));
    }

    #[test]
    fn an_absolute_form_target_is_checked_like_host() {
        let req = Seen {
            authority: Some("evil.example"),
            ..seen(&Method::GET, Some(LOCAL))
        };
        assert_eq!(
            admit(&req, local(), &[]),
            Err(Refusal::ForeignHost("evil.example".into()))
        );
        let req = Seen {
            authority: Some("localhost:9901"),
            ..seen(&Method::GET, None)
        };
        assert_eq!(admit(&req, local(), &[]), Ok(()));
    }

    #[test]
    fn state_changing_calls_from_other_origins_are_refused() {
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:3000",
            "http://localhost:3000",
            "http://127.0.0.1",
            "null",
            "file://",
            "ftp://127.0.0.1:9901",
            "http://127.0.0.1:9901/",
            "http://127.0.0.1:9901 http://evil.example",
            "127.0.0.1:9901",
            std::str::from_utf8(SEVERAL).unwrap(),
        ] {
            let e = post_from(Some(origin), None).unwrap_err();
            assert_eq!(e, Refusal::CrossOrigin(origin.into()), "{origin:?}");
            assert_eq!(e.status(), StatusCode::FORBIDDEN);
        }
        for site in ["cross-site", "same-site", "", "Same-Origin"] {
            let e = post_from(None, Some(site)).unwrap_err();
            assert_eq!(e, Refusal::CrossSite(site.into()), "{site:?}");
        }
        // A bad Sec-Fetch-Site is refused even with a good Origin.
        assert!(post_from(Some("http://127.0.0.1:9901"), Some("cross-site")).is_err());
    }

    #[test]
    fn same_origin_and_non_browser_calls_are_admitted() {
        for origin in [
            "http://127.0.0.1:9901",
            "http://localhost:9901",
            "HTTP://LOCALHOST:9901",
            "https://admin.example",
            "http://admin.example:8080",
        ] {
            assert_eq!(post_from(Some(origin), None), Ok(()), "{origin}");
            assert_eq!(
                post_from(Some(origin), Some("same-origin")),
                Ok(()),
                "{origin}"
            );
        }
        assert_eq!(
            post_from(None, Some("none")),
            Ok(()),
            "typed in the address bar"
        );
        assert_eq!(post_from(None, None), Ok(()), "curl");
    }

    #[test]
    fn reads_ignore_origin_because_the_same_origin_policy_hides_the_answer() {
        for method in [Method::GET, Method::HEAD] {
            let req = Seen {
                origin: Some(b"http://evil.example"),
                fetch_site: Some(b"cross-site"),
                ..seen(&method, Some(LOCAL))
            };
            assert_eq!(admit(&req, local(), &[]), Ok(()));
        }
        for method in [Method::PUT, Method::DELETE, Method::OPTIONS, Method::PATCH] {
            let req = Seen {
                origin: Some(b"http://evil.example"),
                ..seen(&method, Some(LOCAL))
            };
            assert!(admit(&req, local(), &[]).is_err(), "{method}");
        }
    }

    #[test]
    fn the_host_is_checked_before_the_origin() {
        let req = Seen {
            origin: Some(b"http://evil.example"),
            ..seen(&Method::POST, Some("evil.example"))
        };
        assert!(matches!(
            admit(&req, local(), &[]),
            Err(Refusal::ForeignHost(_))
        ));
    }

    #[test]
    fn a_refusal_shows_at_most_100_characters_of_what_was_sent() {
        let long = "a".repeat(500);
        let Err(Refusal::ForeignHost(shown)) =
            admit(&seen(&Method::GET, Some(&long)), local(), &[])
        else {
            panic!("refused");
        };
        assert_eq!(shown.len(), 100);
    }

    proptest! {
        /// Whatever the headers, only a host that is this listener or an allowed name gets
        /// through, and nothing panics.
        #[test]
        fn only_this_listener_or_an_allowed_name_is_admitted(
            host in proptest::option::of(prop_oneof![
                "[a-zA-Z0-9.:\\[\\]_@/-]{0,30}",
                Just("127.0.0.1:9901".to_string()),
                Just("localhost:9901".to_string()),
                Just("admin.example".to_string()),
            ]),
            origin in proptest::option::of("[a-z:/.0-9]{0,30}"),
            site in proptest::option::of("[a-z-]{0,12}"),
            post in any::<bool>(),
        ) {
            let method = if post { Method::POST } else { Method::GET };
            let req = Seen {
                method: &method,
                host: host.as_deref().map(str::as_bytes),
                authority: None,
                origin: origin.as_deref().map(str::as_bytes),
                fetch_site: site.as_deref().map(str::as_bytes),
            };
            let admitted = admit(&req, local(), &["admin.example"]).is_ok();
            if admitted && let Some(h) = &host {
                let (name, port) = split_host_port(h).expect("an admitted host parses");
                let name = name.to_ascii_lowercase();
                let here = name == "localhost"
                    || ip_literal(&name) == Some(IpAddr::from([127, 0, 0, 1]));
                prop_assert!(
                    (here && port == Some(9901)) || name == "admin.example",
                    "admitted host {h:?}"
                );
            }
            if admitted && post {
                prop_assert!(site.is_none() || matches!(site.as_deref(), Some("same-origin" | "none")));
            }
        }
    }
}
