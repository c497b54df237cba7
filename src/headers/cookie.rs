//! The affinity cookie in both directions: taking it out of a request's `Cookie` headers
//! (other cookies pass untouched), and the `Set-Cookie` of an issued token.

use http::header::{self, HeaderMap, HeaderValue};

/// Longest cookie value kept for verification; anything longer is not a token.
pub const MAX_COOKIE_VALUE: usize = 80;

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

/// Whether one Cookie header value holds a cookie named `name` (exact, case-sensitive match).
pub fn holds_cookie(raw: &[u8], name: &[u8]) -> bool {
    pairs(raw).any(|(n, _)| n == name)
}

/// What becomes of one Cookie field value when the cookies named `name` are left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strip {
    /// It holds none: it passes as received.
    Keep,
    /// It holds nothing else: the field is dropped whole.
    Drop,
    /// It holds that cookie and others: [`write_without_cookie`] writes what is left (which
    /// may still be nothing, when every pair is named `name`).
    Rewrite,
}

/// [`holds_cookie`] and what it means for the field, with the usual case answered without
/// splitting: a value without `;` is one pair, dropped whole when it is the affinity cookie.
pub fn strip_cookie(raw: &[u8], name: &[u8]) -> Strip {
    strip_cookie_where(raw, |n| n == name)
}

/// [`strip_cookie`] for every cookie whose name `ours` says yes to (the affinity cookies of
/// several pools).
pub fn strip_cookie_where(raw: &[u8], ours: impl Fn(&[u8]) -> bool) -> Strip {
    if !raw.contains(&b';') {
        // `pairs` on one piece: trimmed, the name before the first `=` (trimmed), or all of it.
        let p = raw.trim_ascii();
        let n = match p.iter().position(|&b| b == b'=') {
            Some(eq) => p[..eq].trim_ascii(),
            None => p,
        };
        return if !p.is_empty() && ours(n) {
            Strip::Drop
        } else {
            Strip::Keep
        };
    }
    if pairs(raw).any(|(n, _)| ours(n)) {
        Strip::Rewrite
    } else {
        Strip::Keep
    }
}

/// The value of the first cookie named `name` across `values` (the Cookie header values, in
/// order), unquoted (`"..."`); a bare name without `=` has the empty value. `None` when absent.
/// The finder of both request paths (the header map's and the engine's).
pub fn find_cookie<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    name: &[u8],
) -> Option<&'a [u8]> {
    values.into_iter().find_map(|raw| {
        pairs(raw).find(|(n, _)| *n == name).map(|(_, v)| {
            let v = v.unwrap_or_default();
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v)
        })
    })
}

/// Appends to `out` the cookies of one Cookie header value other than those named `name`, in
/// order, joined by `; `; returns whether any was written (a field left empty is dropped).
/// Only for a value that [`holds_cookie`]: any other passes as received. The one rewrite of
/// both request paths.
pub fn write_without_cookie(out: &mut Vec<u8>, raw: &[u8], name: &[u8]) -> bool {
    write_without_cookie_where(out, raw, |n| n == name)
}

/// [`write_without_cookie`] leaving out every cookie whose name `ours` says yes to.
pub fn write_without_cookie_where(
    out: &mut Vec<u8>,
    raw: &[u8],
    ours: impl Fn(&[u8]) -> bool,
) -> bool {
    let start = out.len();
    for (n, val) in pairs(raw).filter(|(n, _)| !ours(n)) {
        if out.len() != start {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(n);
        if let Some(val) = val {
            out.push(b'=');
            out.extend_from_slice(val);
        }
    }
    out.len() != start
}

impl Found {
    /// The finding for a cookie value ([`find_cookie`]): an overlong one is not a token.
    pub fn of(value: Option<&[u8]>) -> Found {
        match value {
            None => Found::Absent,
            Some(v) if v.len() > MAX_COOKIE_VALUE => Found::TooLong,
            Some(v) => {
                let mut buf = [0u8; MAX_COOKIE_VALUE];
                buf[..v.len()].copy_from_slice(v);
                Found::Value(buf, v.len())
            }
        }
    }
}

/// Finds the first cookie named `name` in all `Cookie` headers and removes every cookie of that
/// name, keeping all other cookies in order. A header that held one is rewritten without it
/// (dropped when nothing is left); the others pass as received. A quoted value (`"..."`) is
/// unquoted.
pub fn take_cookie(headers: &mut HeaderMap, name: &str) -> Found {
    let name = name.as_bytes();
    let found = Found::of(find_cookie(
        headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes),
        name,
    ));
    // Fast path: most requests carry no Cookie header or not ours; touch nothing then.
    if found == Found::Absent {
        return found;
    }
    leave_out(headers, |n| n == name);
    found
}

/// Removes from `headers` every cookie named in `names` (other pools' affinity cookies, which
/// no backend of this pool may see); other cookies pass untouched, a field left empty is
/// dropped. Touches nothing when none is there.
pub fn drop_cookies<N: AsRef<[u8]>>(headers: &mut HeaderMap, names: &[N]) {
    let ours = |n: &[u8]| names.iter().any(|x| x.as_ref() == n);
    if !headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| pairs(v.as_bytes()).any(|(n, _)| ours(n)))
    {
        return;
    }
    leave_out(headers, ours);
}

/// Rewrites `headers`' Cookie fields without the cookies whose name `ours` says yes to: a field
/// holding none passes as received, one left empty is dropped. The one rewrite of a header map.
fn leave_out(headers: &mut HeaderMap, ours: impl Fn(&[u8]) -> bool + Copy) {
    let mut kept: Vec<HeaderValue> = Vec::new();
    let mut rest: Vec<u8> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let raw = v.as_bytes();
        if !pairs(raw).any(|(n, _)| ours(n)) {
            kept.push(v.clone());
            continue;
        }
        rest.clear();
        // Bytes come from a valid header value minus separators, so this cannot fail; skip the
        // pair defensively rather than panic if it ever did.
        if write_without_cookie_where(&mut rest, raw, ours)
            && let Ok(v) = HeaderValue::from_bytes(&rest)
        {
            kept.push(v);
        }
    }
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
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
    /// `SameSite`.
    pub same_site: SameSite,
    /// `Partitioned` (CHIPS: the cookie is kept per top-level site).
    pub partitioned: bool,
}

/// The `SameSite` attribute of the affinity cookie (`[affinity] same_site`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// `Lax`: sent on top-level navigations from other sites (the default).
    #[default]
    Lax,
    /// `Strict`: sent only on requests from the same site.
    Strict,
    /// `None`: sent on cross-site requests too (embedded apps); browsers require `Secure`.
    None,
}

impl SameSite {
    /// The attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
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
    s.push_str("; HttpOnly; SameSite=");
    s.push_str(attrs.same_site.as_str());
    if attrs.secure.unwrap_or(tls) {
        s.push_str("; Secure");
    }
    if attrs.partitioned {
        s.push_str("; Partitioned");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::test_map as map;
    use proptest::prelude::*;

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
    fn the_byte_level_rules_find_the_first_value_and_rewrite_without_the_name() {
        let fields: [&[u8]; 3] = [b"a=1", b"b=2; sid=\"FIRST\"; c", b"sid=SECOND"];
        assert_eq!(find_cookie(fields, b"sid"), Some(&b"FIRST"[..]));
        assert_eq!(
            find_cookie(fields, b"Sid"),
            None,
            "names are case-sensitive"
        );
        assert_eq!(
            find_cookie([&b"sid"[..]], b"sid"),
            Some(&b""[..]),
            "a bare name"
        );
        assert!(holds_cookie(fields[1], b"sid") && !holds_cookie(fields[0], b"sid"));
        let mut out = b"Cookie: ".to_vec();
        assert!(write_without_cookie(&mut out, b" b=2 ;sid=x;;  c ", b"sid"));
        assert_eq!(out, b"Cookie: b=2; c", "appended, pairs joined by `; `");
        let mut out = Vec::new();
        assert!(!write_without_cookie(&mut out, b"sid=1; sid=2", b"sid"));
        assert!(out.is_empty());
    }

    #[test]
    fn a_cookie_header_without_the_affinity_cookie_passes_as_received() {
        let mut h = map(&[("cookie", "sid=T"), ("cookie", ""), ("cookie", "a=1;b=2")]);
        assert_eq!(take_cookie(&mut h, "sid").bytes(), b"T");
        assert_eq!(cookies(&h), ["", "a=1;b=2"]);
    }

    #[test]
    fn set_cookie_carries_every_attribute() {
        let a = CookieAttrs {
            name: "stickyd".into(),
            secure: None,
            domain: None,
            same_site: SameSite::Lax,
            partitioned: false,
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
            same_site: SameSite::Lax,
            partitioned: false,
        };
        assert_eq!(
            set_cookie(&a, "T", 5, false),
            "sid=T; Path=/; Max-Age=5; Domain=example.com; HttpOnly; SameSite=Lax; Secure"
        );
        let embedded = CookieAttrs {
            same_site: SameSite::None,
            partitioned: true,
            ..a.clone()
        };
        assert_eq!(
            set_cookie(&embedded, "T", 5, false),
            "sid=T; Path=/; Max-Age=5; Domain=example.com; HttpOnly; SameSite=None; Secure; Partitioned"
        );
        let strict = CookieAttrs {
            same_site: SameSite::Strict,
            ..a.clone()
        };
        assert!(
            set_cookie(&strict, "T", 5, true)
                .to_str()
                .unwrap()
                .contains("; SameSite=Strict;")
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

    proptest! {
        #[test]
        fn strip_cookie_says_what_holds_cookie_and_the_rewrite_say(
            parts in prop::collection::vec(
                prop::sample::select(&["sid", "sid=T", " sid = T ", "sid=", "sidx=1", "a=1", "a",
                    "=sid", "", " ", "sid=\"Q\"", "x=sid"][..]), 1..4),
            seps in prop::collection::vec(prop::sample::select(&[";", "; ", " ;", ";;"][..]), 3),
        ) {
            let mut raw = String::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    raw.push_str(seps[i - 1]);
                }
                raw.push_str(p);
            }
            let raw = raw.as_bytes();
            let mut out = Vec::new();
            let want = if !holds_cookie(raw, b"sid") {
                Strip::Keep
            } else if write_without_cookie(&mut out, raw, b"sid") {
                Strip::Rewrite
            } else {
                Strip::Drop
            };
            let got = strip_cookie(raw, b"sid");
            // `Rewrite` may still write nothing: the field is then dropped all the same.
            prop_assert!(got == want || (got == Strip::Rewrite && want == Strip::Drop), "{:?}: {:?} {:?}", String::from_utf8_lossy(raw), got, want);
        }

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
    }

    #[test]
    fn drop_cookies_leaves_out_every_name_given_and_keeps_the_rest_in_order() {
        let mut h = crate::headers::test_map(&[
            ("cookie", "stickyd=t1; app=1; stickyd_shop=t2"),
            ("cookie", "api=t3"),
            ("cookie", "apiary=4; x"),
        ]);
        drop_cookies(&mut h, &[b"stickyd_shop".as_slice(), b"api".as_slice()]);
        let left: Vec<&str> = h
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["stickyd=t1; app=1", "apiary=4; x"]);
        let before = h.clone();
        drop_cookies(&mut h, &[b"none".as_slice()]);
        assert_eq!(h, before, "nothing named: untouched");
    }
}
