//! What a request carries for affinity, by mode: a signed token (the cookie, or a header in
//! `header` mode), a key to hash (the client address in `ip` mode, a trusted header's plain
//! value), or nothing (`none`). Taken once per request, before the first attempt; the token's
//! cookie or header is removed from the request on the way, so a backend never sees it.
//!
//! Pure: the headers, the peer address and the trust rule are passed in.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName};

use crate::balance;
use crate::headers::{self, Found};
use crate::token::{Invalid, KeyRing};

use super::TokenInput;

/// Where a request's affinity comes from (`[affinity] mode`), with the names it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The signed token in the cookie of this name.
    Cookie(String),
    /// `header` mode: the signed token in this header or, when `trusted`, a hash of its plain
    /// value (a header set by something trusted, such as an authenticating gateway).
    Header {
        /// The request and response header.
        name: HeaderName,
        /// Hash the plain value instead of verifying a token.
        trusted: bool,
    },
    /// A hash of the client address (the first untrusted X-Forwarded-For hop from a trusted
    /// proxy).
    Ip,
    /// No affinity: every request is placed anew.
    None,
}

/// What one request carried for affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A token, or its absence, to route by ([`super::route`]).
    Token(TokenInput),
    /// A key to hash ([`super::route_hashed`]).
    Key(u64),
    /// Nothing to go by, and nothing to issue (`mode = "none"`).
    Nothing,
}

/// Takes the request's affinity input out of `headers`, verifying a token with `ring`. `peer`
/// is the connection's peer; `trusted` says whether an address is a trusted proxy (whose
/// X-Forwarded-For is believed in `ip` mode). Never fails: whatever is wrong with a token is
/// [`TokenInput::Invalid`], served as a new session.
pub fn extract(
    source: &Source,
    ring: &KeyRing,
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> Input {
    let verify = |bytes: &[u8]| match ring.verify(bytes) {
        Ok(v) => TokenInput::Valid(v),
        Err(why) => TokenInput::Invalid(why),
    };
    match source {
        Source::Cookie(name) => {
            let found = headers::take_cookie(headers, name);
            Input::Token(match found {
                Found::Absent => TokenInput::Absent,
                Found::TooLong => TokenInput::Invalid(Invalid::Malformed),
                Found::Value(..) => verify(found.bytes()),
            })
        }
        Source::Header { name, trusted } => match headers.remove(name) {
            None => Input::Token(TokenInput::Absent),
            Some(v) if *trusted => Input::Key(balance::key_hash(v.as_bytes())),
            Some(v) if v.len() > headers::MAX_COOKIE_VALUE => {
                Input::Token(TokenInput::Invalid(Invalid::Malformed))
            }
            Some(v) => Input::Token(verify(v.as_bytes().trim_ascii())),
        },
        Source::Ip => Input::Key(match headers::client_ip(headers, peer, trusted) {
            IpAddr::V4(v4) => balance::key_hash(&v4.octets()),
            IpAddr::V6(v6) => balance::key_hash(&v6.octets()),
        }),
        Source::None => Input::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Claims;
    use http::HeaderValue;

    const KEY: &[u8] = b"an-affinity-input-test-key-of-32-bytes";

    fn ring() -> KeyRing {
        KeyRing::new(&[KEY], "sid")
    }

    fn token() -> String {
        ring()
            .sign(&Claims {
                backend_tag: [1; 8],
                nonce: 42,
                issued_at: 100,
                last_seen: 100,
            })
            .as_str()
            .to_string()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn the_cookie_token_is_verified_and_taken_out_other_cookies_kept() {
        let mut h = headers(&[("cookie", &format!("a=1; sid={}; b=2", token()))]);
        let got = extract(&Source::Cookie("sid".into()), &ring(), &mut h, PEER, |_| {
            false
        });
        match got {
            Input::Token(TokenInput::Valid(v)) => assert_eq!(v.claims.nonce, 42),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
    }

    #[test]
    fn a_bad_or_oversized_token_is_invalid_never_an_error() {
        let src = Source::Cookie("sid".into());
        let mut h = headers(&[("cookie", "sid=forged")]);
        assert_eq!(
            extract(&src, &ring(), &mut h, PEER, |_| false),
            Input::Token(TokenInput::Invalid(Invalid::Malformed))
        );
        let long = "x".repeat(headers::MAX_COOKIE_VALUE + 1);
        let mut h = headers(&[("cookie", &format!("sid={long}"))]);
        assert_eq!(
            extract(&src, &ring(), &mut h, PEER, |_| false),
            Input::Token(TokenInput::Invalid(Invalid::Malformed))
        );
        let mut h = headers(&[]);
        assert_eq!(
            extract(&src, &ring(), &mut h, PEER, |_| false),
            Input::Token(TokenInput::Absent)
        );
    }

    #[test]
    fn header_mode_reads_and_removes_the_token_header() {
        let src = Source::Header {
            name: HeaderName::from_static("x-session"),
            trusted: false,
        };
        let mut h = headers(&[("x-session", &format!(" {} ", token()))]);
        assert!(matches!(
            extract(&src, &ring(), &mut h, PEER, |_| false),
            Input::Token(TokenInput::Valid(_))
        ));
        assert!(h.get("x-session").is_none(), "not forwarded");
    }

    #[test]
    fn a_trusted_header_is_hashed_by_its_plain_value() {
        let src = Source::Header {
            name: HeaderName::from_static("x-user"),
            trusted: true,
        };
        let a = extract(
            &src,
            &ring(),
            &mut headers(&[("x-user", "alice")]),
            PEER,
            |_| false,
        );
        let b = extract(
            &src,
            &ring(),
            &mut headers(&[("x-user", "alice")]),
            PEER,
            |_| false,
        );
        let c = extract(
            &src,
            &ring(),
            &mut headers(&[("x-user", "bob")]),
            PEER,
            |_| false,
        );
        assert!(matches!(a, Input::Key(_)));
        assert_eq!(a, b, "the same user, the same key");
        assert_ne!(a, c);
    }

    #[test]
    fn ip_mode_believes_forwarded_for_only_from_a_trusted_proxy() {
        let mut h = headers(&[("x-forwarded-for", "192.0.2.7")]);
        let direct = extract(&Source::Ip, &ring(), &mut h.clone(), PEER, |_| false);
        let via_proxy = extract(&Source::Ip, &ring(), &mut h, PEER, |ip| ip == PEER);
        let client = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
        let alone = extract(&Source::Ip, &ring(), &mut headers(&[]), client, |_| false);
        assert_ne!(direct, via_proxy, "an untrusted peer's header is ignored");
        assert_eq!(via_proxy, alone, "the client behind the proxy is the key");
    }

    #[test]
    fn none_mode_carries_nothing_and_touches_nothing() {
        let mut h = headers(&[("cookie", &format!("sid={}", token()))]);
        assert_eq!(
            extract(&Source::None, &ring(), &mut h, PEER, |_| false),
            Input::Nothing
        );
        assert!(h.get("cookie").is_some());
    }
}

// TEMPORARY STUB (replaced by the codec branch).
pub fn extract_fields(
    _source: &Source,
    _ring: &KeyRing,
    _buf: &[u8],
    _fields: &[crate::h1::Field],
    _peer: IpAddr,
    _trusted: impl Fn(IpAddr) -> bool,
) -> Input {
    todo!()
}
