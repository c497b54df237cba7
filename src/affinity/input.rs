//! What a request carries for affinity, by mode: a signed token (the cookie, or a header in
//! `header` mode), a key to hash (the client address in `ip` mode, a trusted header's plain
//! value), or nothing (`none`). Taken once per request, before the first attempt; the token's
//! cookie or header never reaches a backend.
//!
//! Two entries with one set of per-mode rules: [`extract`] on a header map (HTTP/2), which
//! removes what it reads, and [`read_fields`] on the HTTP/1 engine's parsed fields, which
//! removes nothing (the engine's head writer leaves the token out).
//!
//! Pure: the headers, the peer address and the trust rule are passed in.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::balance;
use crate::h1::{Field, Name};
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

impl Source {
    /// Where the token travels: the cookie's name (`cookie` mode), the header's (`header`
    /// mode). A head written for a backend leaves both out.
    pub fn carriers(&self) -> (Option<&str>, Option<&HeaderName>) {
        match self {
            Source::Cookie(name) => (Some(name), None),
            Source::Header { name, .. } => (None, Some(name)),
            Source::Ip | Source::None => (None, None),
        }
    }
}

/// The key rings one pool checks tokens with: its own, and those of the other pools whose
/// tokens come in the same cookie or header (to tell another pool's token from a forged one).
/// Each pool's ring binds its MACs to that pool ([`crate::state`]), so a token verifies under
/// one pool's ring only.
#[derive(Clone)]
pub struct Rings {
    /// This pool's: signs and verifies.
    pub own: KeyRing,
    /// The other pools' that share this pool's token carrier.
    pub others: Vec<KeyRing>,
}

impl Rings {
    /// A pool alone on its carrier.
    pub fn alone(own: KeyRing) -> Rings {
        Rings {
            own,
            others: Vec::new(),
        }
    }

    /// What `bytes` is as a token for this pool. The other pools' rings are tried only when
    /// this pool's refuses the MAC or the key: the path of forged and foreign tokens, never of
    /// valid ones.
    pub(crate) fn verify(&self, bytes: &[u8]) -> TokenInput {
        match self.own.verify(bytes) {
            Ok(v) => TokenInput::Valid(v),
            Err(why @ (Invalid::BadMac | Invalid::UnknownKey)) if !self.others.is_empty() => {
                if self.others.iter().any(|r| r.verify(bytes).is_ok()) {
                    TokenInput::OtherPool
                } else {
                    TokenInput::Invalid(why)
                }
            }
            Err(why) => TokenInput::Invalid(why),
        }
    }
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
/// [`TokenInput::Invalid`], served as a new session. The header map's path (HTTP/2);
/// [`read_fields`] is its twin on the HTTP/1 engine's fields.
pub fn extract(
    source: &Source,
    ring: &Rings,
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> Input {
    match source {
        Source::Cookie(name) => cookie_input(&headers::take_cookie(headers, name), ring),
        Source::Header { name, trusted } => {
            let v = headers.remove(name);
            header_input(v.as_ref().map(HeaderValue::as_bytes), *trusted, ring)
        }
        Source::Ip => forwarded_client(headers, peer, trusted),
        Source::None => Input::Nothing,
    }
}

/// [`extract`] without removing anything: the caller's head writer leaves the affinity cookie
/// and the token header out of what it sends (HTTP/2 requests on the engine's connections).
pub fn peek(
    source: &Source,
    ring: &Rings,
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> Input {
    match source {
        Source::Cookie(name) => {
            let values = headers.get_all(http::header::COOKIE);
            let found =
                headers::find_cookie(values.iter().map(HeaderValue::as_bytes), name.as_bytes());
            cookie_input(&Found::of(found), ring)
        }
        Source::Header { name, trusted } => {
            let v = headers.get(name).map(HeaderValue::as_bytes);
            header_input(v, *trusted, ring)
        }
        Source::Ip => forwarded_client(headers, peer, trusted),
        Source::None => Input::Nothing,
    }
}

/// [`extract`] on a head parsed by the HTTP/1 engine: its `fields`, spans into `buf`. The same
/// input in every mode, found and verified the same way, but nothing is removed: the head
/// writer leaves the affinity cookie and the token header out of what it sends
/// (`h1::write::Forward`). Allocates nothing.
pub fn read_fields(
    source: &Source,
    ring: &Rings,
    buf: &[u8],
    fields: &[Field],
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> Input {
    // Hop-by-hop fields count too: `extract` runs before the hop-by-hop strip.
    let values = |kind: Name| {
        fields
            .iter()
            .filter(move |f| f.kind == kind)
            .map(move |f| f.value.of(buf))
    };
    match source {
        Source::Cookie(name) => cookie_input(
            &Found::of(headers::find_cookie(values(Name::Cookie), name.as_bytes())),
            ring,
        ),
        Source::Header { name, trusted } => {
            let name = name.as_str().as_bytes();
            let v = fields
                .iter()
                .find(|f| f.name.of(buf).eq_ignore_ascii_case(name))
                .map(|f| f.value.of(buf));
            header_input(v, *trusted, ring)
        }
        Source::Ip => ip_input(headers::client_ip(
            values(Name::XForwardedFor),
            peer,
            trusted,
        )),
        Source::None => Input::Nothing,
    }
}

/// `cookie` mode: the affinity cookie found, or not.
fn cookie_input(found: &Found, ring: &Rings) -> Input {
    Input::Token(match found {
        Found::Absent => TokenInput::Absent,
        Found::TooLong => TokenInput::Invalid(Invalid::Malformed),
        Found::Value(..) => ring.verify(found.bytes()),
    })
}

/// `header` mode: the first value of the token header, if any.
fn header_input(value: Option<&[u8]>, trusted: bool, ring: &Rings) -> Input {
    match value {
        None => Input::Token(TokenInput::Absent),
        Some(v) if trusted => Input::Key(balance::key_hash(v)),
        Some(v) if v.len() > headers::MAX_COOKIE_VALUE => {
            Input::Token(TokenInput::Invalid(Invalid::Malformed))
        }
        Some(v) => Input::Token(ring.verify(v.trim_ascii())),
    }
}

/// `ip` mode's input on a header map: the client X-Forwarded-For names when `peer` is trusted.
fn forwarded_client(headers: &HeaderMap, peer: IpAddr, trusted: impl Fn(IpAddr) -> bool) -> Input {
    ip_input(headers::client_ip(
        headers
            .get_all(&headers::X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes),
        peer,
        trusted,
    ))
}

/// `ip` mode: the client's address, hashed.
fn ip_input(client: IpAddr) -> Input {
    Input::Key(match client {
        IpAddr::V4(v4) => balance::key_hash(&v4.octets()),
        IpAddr::V6(v6) => balance::key_hash(&v6.octets()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Claims;
    use proptest::prelude::*;

    const KEY: &[u8] = b"an-affinity-input-test-key-of-32-bytes";

    fn ring() -> Rings {
        Rings::alone(KeyRing::new(&[KEY], "sid"))
    }

    fn token() -> String {
        ring()
            .own
            .sign(&Claims {
                backend_tag: [1; 8],
                nonce: 42,
                issued_at: 100,
                last_seen: 100,
                backup_tag: [0; 8],
                backup2_tag: [0; 8],
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

    proptest! {
        /// `peek` finds what `extract` finds, in every mode, without touching the map.
        #[test]
        fn peek_reads_what_extract_takes(
            mode in 0..5usize,
            cookie in proptest::collection::vec(
                proptest::sample::select(vec!["a=1", "sid=forged", "sid=", "b=2; sid=x", "sid=TOKEN"]), 0..3),
            session in proptest::option::of(proptest::sample::select(vec!["TOKEN", "plain", ""])),
            xff in proptest::collection::vec(proptest::sample::select(vec!["203.0.113.9", "10.0.0.7, 198.51.100.1", "junk"]), 0..2),
            trusted_peer: bool,
        ) {
            let token = token();
            let mut pairs: Vec<(&str, String)> = Vec::new();
            for c in &cookie { pairs.push(("cookie", c.replace("TOKEN", &token))); }
            if let Some(v) = session { pairs.push(("x-session", v.replace("TOKEN", &token))); }
            for x in &xff { pairs.push(("x-forwarded-for", x.to_string())); }
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let h = headers(&refs);
            let name = HeaderName::from_static("x-session");
            let src = match mode {
                0 => Source::Cookie("sid".into()),
                1 => Source::Header { name, trusted: false },
                2 => Source::Header { name, trusted: true },
                3 => Source::Ip,
                _ => Source::None,
            };
            let peeked = peek(&src, &ring(), &h, PEER, |_| trusted_peer);
            let mut taken = h.clone();
            let extracted = extract(&src, &ring(), &mut taken, PEER, |_| trusted_peer);
            prop_assert_eq!(peeked, extracted);
        }
    }

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

    /// Both entries on the same headers: `extract` on a header map, `read_fields` on the
    /// engine's fields.
    fn both(source: &Source, pairs: &[(&str, &str)], trust: bool) -> (Input, Input) {
        let trusted = |ip: IpAddr| trust && (ip == PEER || ip.to_string().starts_with("10."));
        let from_map = extract(source, &ring(), &mut headers(pairs), PEER, trusted);
        let (buf, fields) = crate::h1::write::testing::fields("GET / HTTP/1.1", pairs);
        let from_fields = read_fields(source, &ring(), &buf, &fields, PEER, trusted);
        (from_map, from_fields)
    }

    #[test]
    fn the_engines_twin_reads_the_same_input_in_every_mode() {
        let tok = token();
        let cookie = format!("a=1; sid={tok}");
        let pairs = [
            ("Cookie", cookie.as_str()),
            ("X-Session", tok.as_str()),
            ("X-Forwarded-For", "192.0.2.7, 10.0.0.3"),
        ];
        let sources = [
            Source::Cookie("sid".into()),
            Source::Header {
                name: HeaderName::from_static("x-session"),
                trusted: false,
            },
            Source::Header {
                name: HeaderName::from_static("x-session"),
                trusted: true,
            },
            Source::Ip,
            Source::None,
        ];
        for src in &sources {
            let (a, b) = both(src, &pairs, true);
            assert_eq!(a, b, "{src:?}");
        }
        let (a, _) = both(&sources[0], &pairs, false);
        assert!(matches!(a, Input::Token(TokenInput::Valid(_))));
    }

    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(token()),
            Just(format!(" {} ", token())),
            Just(format!("\"{}\"", token())),
            Just("forged".to_owned()),
            Just("x".repeat(headers::MAX_COOKIE_VALUE + 1)),
            Just(String::new()),
            "[a-z0-9=;, .]{0,12}",
        ]
    }

    fn request_headers() -> impl Strategy<Value = Vec<(String, String)>> {
        let name = prop::sample::select(vec![
            "Cookie",
            "cookie",
            "X-Session",
            "x-session",
            "X-Forwarded-For",
            "Connection",
            "X-Other",
        ]);
        let pair = (
            name,
            header_value(),
            header_value(),
            prop::sample::select(vec!["sid", "a", "Sid", "sid2"]),
        )
            .prop_map(|(n, v, w, c)| {
                let v = match n {
                    "Cookie" | "cookie" => format!("{c}={}; b={}", v.trim(), w.trim()),
                    "X-Forwarded-For" => prop_ip(&v),
                    _ => v.trim().to_owned(),
                };
                (n.to_owned(), v)
            });
        prop::collection::vec(pair, 0..6)
    }

    /// An X-Forwarded-For value: addresses, trusted (10.x) or not, or something else.
    fn prop_ip(seed: &str) -> String {
        match seed.len() % 4 {
            0 => "192.0.2.7".to_owned(),
            1 => "203.0.113.1, 10.0.0.5".to_owned(),
            2 => "10.1.1.1, 2001:db8::1".to_owned(),
            _ => seed.trim().to_owned(),
        }
    }

    proptest! {
        #[test]
        fn extract_and_its_twin_agree_in_every_mode(
            pairs in request_headers(),
            mode in 0..5usize,
            trust in any::<bool>(),
        ) {
            let source = match mode {
                0 => Source::Cookie("sid".into()),
                1 => Source::Header { name: HeaderName::from_static("x-session"), trusted: false },
                2 => Source::Header { name: HeaderName::from_static("x-session"), trusted: true },
                3 => Source::Ip,
                _ => Source::None,
            };
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let (a, b) = both(&source, &refs, trust);
            prop_assert_eq!(a, b);
        }
    }

    /// Another pool's ring on the same cookie (and header): the same key, bound to that pool.
    fn shop() -> KeyRing {
        KeyRing::new(&[KEY], "sid\0shop")
    }

    /// This pool's ring and shop's, as a pool sharing its carrier with shop holds them.
    fn shared() -> Rings {
        Rings {
            own: ring().own,
            others: vec![shop()],
        }
    }

    fn signed(by: &KeyRing, nonce: u64) -> String {
        by.sign(&Claims {
            backend_tag: [3; 8],
            nonce,
            issued_at: 100,
            last_seen: 100,
            backup_tag: [0; 8],
            backup2_tag: [0; 8],
        })
        .as_str()
        .to_string()
    }

    /// `token` with bit `bit` of its decoded bytes flipped.
    fn flipped(token: &str, bit: usize) -> String {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut raw = URL_SAFE_NO_PAD.decode(token).unwrap();
        raw[bit / 8] ^= 1 << (bit % 8);
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn cookie_source() -> Source {
        Source::Cookie("sid".into())
    }

    fn header_source() -> Source {
        Source::Header {
            name: HeaderName::from_static("x-session"),
            trusted: false,
        }
    }

    /// What `rings` makes of `token` in `source`'s carrier, through `extract` and through
    /// `read_fields`; both must agree.
    fn classify(rings: &Rings, source: &Source, token: &str) -> Input {
        let cookie = format!("a=1; sid={token}");
        let pairs = match source {
            Source::Cookie(_) => [("Cookie", cookie.as_str())],
            _ => [("X-Session", token)],
        };
        let from_map = extract(source, rings, &mut headers(&pairs), PEER, |_| false);
        let (buf, fields) = crate::h1::write::testing::fields("GET / HTTP/1.1", &pairs);
        let from_fields = read_fields(source, rings, &buf, &fields, PEER, |_| false);
        assert_eq!(from_map, from_fields, "{source:?} {token}");
        from_map
    }

    #[test]
    fn another_pools_token_is_other_pool_through_both_entries_in_both_token_modes() {
        let theirs = signed(&shop(), 5);
        let ours = signed(&ring().own, 6);
        assert_eq!(
            ring().own.verify(theirs.as_bytes()),
            Err(Invalid::BadMac),
            "shop's token is no token of ours"
        );
        for src in [cookie_source(), header_source()] {
            assert_eq!(
                classify(&shared(), &src, &theirs),
                Input::Token(TokenInput::OtherPool),
                "{src:?}"
            );
            match classify(&shared(), &src, &ours) {
                Input::Token(TokenInput::Valid(v)) => {
                    assert_eq!((v.key_index, v.claims.nonce), (0, 6), "{src:?}")
                }
                other => panic!("{src:?}: {other:?}"),
            }
            // Alone on the carrier, the same token is a forgery.
            assert_eq!(
                classify(&ring(), &src, &theirs),
                Input::Token(TokenInput::Invalid(Invalid::BadMac)),
                "{src:?}"
            );
        }
    }

    #[test]
    fn another_pools_token_under_a_key_this_pool_lacks_is_other_pool_too() {
        let other_key = KeyRing::new(&[b"another-pools-key-of-at-least-32-bytes"], "sid\0shop");
        let rings = Rings {
            own: ring().own,
            others: vec![shop(), other_key.clone()],
        };
        let theirs = signed(&other_key, 8);
        for src in [cookie_source(), header_source()] {
            assert_eq!(
                classify(&rings, &src, &theirs),
                Input::Token(TokenInput::OtherPool)
            );
            assert_eq!(
                classify(&shared(), &src, &theirs),
                Input::Token(TokenInput::Invalid(Invalid::UnknownKey)),
                "a key no ring holds"
            );
        }
    }

    #[test]
    fn forged_and_malformed_tokens_stay_what_they_are_beside_other_rings() {
        let theirs = signed(&shop(), 5);
        let ours = signed(&ring().own, 6);
        for src in [cookie_source(), header_source()] {
            for tok in [&theirs, &ours] {
                // A bit of the MAC, of the backend tag, of the nonce.
                for bit in [26 * 8, 41 * 8 + 7, 2 * 8 + 3, 12 * 8] {
                    assert_eq!(
                        classify(&shared(), &src, &flipped(tok, bit)),
                        Input::Token(TokenInput::Invalid(Invalid::BadMac)),
                        "{src:?} bit {bit}"
                    );
                }
            }
            for bad in ["forged", &ours[..55], &format!("{ours}A")] {
                assert_eq!(
                    classify(&shared(), &src, bad),
                    Input::Token(TokenInput::Invalid(Invalid::Malformed)),
                    "{src:?} {bad}"
                );
            }
        }
        // A trusted header is hashed, never verified, whatever the rings.
        let trusted = Source::Header {
            name: HeaderName::from_static("x-session"),
            trusted: true,
        };
        assert!(matches!(
            classify(&shared(), &trusted, &theirs),
            Input::Key(_)
        ));
    }

    proptest! {
        /// Flipping any bit of a token, ours or the other pool's, never makes it valid nor the
        /// other pool's: the version byte makes it malformed, the key id unknown, the rest a
        /// bad MAC.
        #[test]
        fn a_flipped_bit_is_never_valid_nor_another_pools(bit in 0..8 * crate::token::RAW_LEN, theirs in any::<bool>(), header in any::<bool>()) {
            let tok = if theirs { signed(&shop(), 5) } else { signed(&ring().own, 6) };
            let src = if header { header_source() } else { cookie_source() };
            let want = match bit / 8 {
                0 => Invalid::Malformed,
                1 => Invalid::UnknownKey,
                _ => Invalid::BadMac,
            };
            prop_assert_eq!(
                classify(&shared(), &src, &flipped(&tok, bit)),
                Input::Token(TokenInput::Invalid(want))
            );
        }

        /// A pool alone on its carrier never sees another pool's token, whatever it is sent:
        /// arbitrary bytes, token-shaped text, or a valid token of any other ring.
        #[test]
        fn a_pool_alone_never_yields_other_pool(
            bytes in prop::collection::vec(any::<u8>(), 0..80),
            text in "[A-Za-z0-9_-]{56}",
            nonce in any::<u64>(),
            pool in "[a-z]{1,8}",
        ) {
            let alone = ring();
            prop_assert_ne!(alone.verify(&bytes), TokenInput::OtherPool);
            let other = KeyRing::new(&[KEY], &format!("sid\0{pool}"));
            let foreign = signed(&other, nonce);
            for src in [cookie_source(), header_source()] {
                for tok in [&text, &foreign] {
                    let got = classify(&alone, &src, tok);
                    prop_assert_ne!(got, Input::Token(TokenInput::OtherPool));
                }
                // Not vacuous: with that ring beside it, the same foreign token is recognised.
                let beside = Rings { own: ring().own, others: vec![other.clone()] };
                prop_assert_eq!(
                    classify(&beside, &src, &foreign),
                    Input::Token(TokenInput::OtherPool)
                );
                prop_assert_eq!(
                    classify(&alone, &src, &foreign),
                    Input::Token(TokenInput::Invalid(Invalid::BadMac))
                );
            }
        }
    }
}
