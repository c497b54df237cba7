//! Refusals of requests two HTTP/1 parsers could read differently: framing headers
//! ([`framing`]) and Host values ([`valid_host`]).

use http::header::{self, HeaderMap};

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

/// Why [`framing`] (and the HTTP/1 engine's parser, on raw bytes) refuses a request.
pub(crate) const CHUNKED_TWICE: &str = "chunked applied more than once\n";
pub(crate) const ONLY_CHUNKED: &str = "only the chunked transfer coding is supported\n";
/// A Transfer-Encoding whose final coding is not chunked: the body's end cannot be known.
pub(crate) const NOT_FINAL_CHUNKED: &str = "the final transfer coding is not chunked\n";
pub(crate) const LENGTH_TWICE: &str = "more than one Content-Length header\n";
pub(crate) const LOOK_ALIKE: &str =
    "a header name that reads as Content-Length or Transfer-Encoding\n";

/// The codings of a request's `Transfer-Encoding` lines, fed one value at a time: the rules of
/// [`framing`], shared with the HTTP/1 engine's parser, which feeds it raw bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Codings {
    /// `Transfer-Encoding` lines seen.
    pub lines: u32,
    /// `chunked` codings seen, over every line.
    pub chunked: u32,
    /// A coding other than `chunked` was seen.
    pub other: bool,
    /// An empty list element was seen (an empty value, `chunked,`, `, chunked`): allowed here,
    /// refused by the engine's parser (hyper refuses a list whose last element is not
    /// `chunked`).
    pub empty: bool,
    /// The last coding seen (over every line, in order) was `chunked`.
    pub last_chunked: bool,
}

impl Codings {
    /// Adds one `Transfer-Encoding` value.
    pub(crate) fn add(&mut self, value: &[u8]) {
        self.lines += 1;
        for c in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if c.eq_ignore_ascii_case(b"chunked") {
                self.chunked += 1;
                self.last_chunked = true;
            } else if c.is_empty() {
                self.empty = true;
            } else {
                self.other = true;
                self.last_chunked = false;
            }
        }
    }

    /// The refusal the codings call for, in [`framing`]'s order.
    pub(crate) fn refusal(&self) -> Option<Framing> {
        if self.chunked > 1 {
            Some(Framing::Refuse(CHUNKED_TWICE))
        } else if self.lines > 0 && !self.last_chunked {
            // RFC 9112 section 6.3: the length cannot be determined: 400 and close.
            Some(Framing::Refuse(NOT_FINAL_CHUNKED))
        } else if self.other {
            Some(Framing::Unsupported(ONLY_CHUNKED))
        } else {
            None
        }
    }
}

/// Judges a request's framing headers (RFC 9112 section 6, RFC 9110 section 8.6).
pub fn framing(method: &http::Method, headers: &HeaderMap) -> Framing {
    let mut codings = Codings::default();
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        codings.add(v.as_bytes());
    }
    if let Some(refused) = codings.refusal() {
        return refused;
    }
    let mut cl = headers.get_all(header::CONTENT_LENGTH).iter();
    let length = cl.next();
    if cl.next().is_some() {
        return Framing::Refuse(LENGTH_TWICE);
    }
    if headers
        .keys()
        .any(|n| looks_like_framing(n.as_str().as_bytes()))
    {
        return Framing::Refuse(LOOK_ALIKE);
    }
    let body = codings.lines > 0 || length.is_some_and(|v| v.as_bytes().trim_ascii() != b"0");
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

/// A name other than `content-length`/`transfer-encoding` (ASCII case-insensitive) that some
/// server would map to one of them: the same letters with `_`, doubled or other separators
/// (CGI-style servers turn `Content_Length` into `CONTENT_LENGTH`).
pub(crate) fn looks_like_framing(n: &[u8]) -> bool {
    const LETTERS: [&[u8]; 2] = [b"contentlength", b"transferencoding"];
    // The letters of a look-alike start with `c` or `t`: a name starting with another letter
    // or digit is none (most names, and this runs on every name the engine does not know).
    let first = n.first().copied().unwrap_or_default();
    if n.len() < 14
        || (first.is_ascii_alphanumeric() && !matches!(first | 0x20, b'c' | b't'))
        || n.eq_ignore_ascii_case(b"content-length")
        || n.eq_ignore_ascii_case(b"transfer-encoding")
    {
        return false;
    }
    let letters = n
        .iter()
        .filter(|b| b.is_ascii_alphanumeric())
        .map(u8::to_ascii_lowercase);
    LETTERS
        .iter()
        .any(|want| letters.clone().eq(want.iter().copied()))
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
    let Some(rest) = v.strip_prefix(b"[") else {
        // A reg-name or IPv4 host, in one pass: its bytes up to the end, or a colon and a port.
        return match v.iter().position(|&b| !REG_NAME[usize::from(b)]) {
            None => true,
            Some(i) => v.get(i) == Some(&b':') && valid_port(v.get(i + 1..).unwrap_or_default()),
        };
    };
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
        [] => true,
        [b':', port @ ..] => valid_port(port),
        _ => false,
    }
}

/// A port of at most 5 digits, up to 65535 (empty is allowed, as RFC 3986 allows it).
fn valid_port(p: &[u8]) -> bool {
    if p.len() > 5 {
        return false;
    }
    let mut n = 0u32;
    for &d in p {
        if !d.is_ascii_digit() {
            return false;
        }
        n = n * 10 + u32::from(d - b'0');
    }
    n <= 65_535
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;
    use http::HeaderName;
    use proptest::prelude::*;

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

    /// The plain reading of [`valid_host`]'s rule, for the property below.
    fn valid_host_reference(v: &[u8]) -> bool {
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

    /// The plain reading of [`looks_like_framing`]'s rule.
    fn looks_like_framing_reference(n: &[u8]) -> bool {
        let letters: Vec<u8> = n
            .iter()
            .filter(|b| b.is_ascii_alphanumeric())
            .map(u8::to_ascii_lowercase)
            .collect();
        n.len() >= 14
            && !n.eq_ignore_ascii_case(b"content-length")
            && !n.eq_ignore_ascii_case(b"transfer-encoding")
            && (letters == b"contentlength" || letters == b"transferencoding")
    }

    proptest! {
        #[test]
        fn valid_host_reads_as_its_plain_rule(
            v in prop::collection::vec(
                prop::sample::select(&b"aZ09-._~%!;=:[]/@ \t\x80"[..]), 0..24),
            port in prop::option::of(0..200_000u32),
        ) {
            let mut v = v;
            if let Some(p) = port {
                v.extend_from_slice(format!(":{p}").as_bytes());
            }
            prop_assert_eq!(valid_host(&v), valid_host_reference(&v), "{:?}", String::from_utf8_lossy(&v));
            let mut bracketed = b"[".to_vec();
            bracketed.extend_from_slice(&v);
            prop_assert_eq!(valid_host(&bracketed), valid_host_reference(&bracketed));
        }

        #[test]
        fn the_look_alike_filter_reads_as_its_plain_rule(
            which in 0..4usize,
            flips in prop::collection::vec(any::<bool>(), 20),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(&b"_-.0aAcCtTxX"[..]),
            insert in any::<bool>(),
        ) {
            let word = ["content-length", "transfer-encoding", "contentlength", "accept-encoding"][which];
            let mut n: Vec<u8> = word
                .bytes()
                .zip(&flips)
                .map(|(b, &f)| if f { b.to_ascii_uppercase() } else { b })
                .collect();
            prop_assert_eq!(looks_like_framing(&n), looks_like_framing_reference(&n));
            let i = at.index(n.len() + 1);
            if insert {
                n.insert(i, byte);
            } else if i < n.len() {
                n[i] = byte;
            }
            prop_assert_eq!(looks_like_framing(&n), looks_like_framing_reference(&n), "{:?}", String::from_utf8_lossy(&n));
        }

        #[test]
        fn a_name_is_refused_as_framing_iff_its_letters_spell_one_but_it_is_not_one(
            name in "[a-z_-]{1,24}",
        ) {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                let letters: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
                let spells = letters == "contentlength" || letters == "transferencoding";
                let exact = name == "content-length" || name == "transfer-encoding";
                prop_assert_eq!(looks_like_framing(n.as_str().as_bytes()), spells && !exact);
                prop_assert_eq!(looks_like_framing(name.to_ascii_uppercase().as_bytes()), spells && !exact);
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
            prop_assert_eq!(looks_like_framing(n.as_str().as_bytes()), name.len() >= 14 && !canonical);
        }
    }
}
