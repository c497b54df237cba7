//! Header rules: finding and stripping the affinity cookie, removing hop-by-hop headers,
//! writing X-Forwarded-* and Via, building the Set-Cookie of an issued token, and refusing
//! framing that two parsers could read differently.
//!
//! Pure functions over `http::HeaderMap`, and the rules the HTTP/1 engine applies to raw bytes
//! (the cookie pairs, X-Forwarded-For, the client address) as byte-level functions both paths
//! call, so that each rule exists once: no I/O, no clock. The order matters and is fixed by
//! the proxy: hop-by-hop headers (and every name listed in `Connection`) are removed *before*
//! stickyd adds its own, so a client cannot use `Connection` to delete them.
//!
//! | file | owns |
//! |---|---|
//! | `cookie` | taking the affinity cookie out of a request; the `Set-Cookie` of a token |
//! | `forward` | hop-by-hop headers, upgrades, X-Forwarded-*, Via, the client address |
//! | `framing` | refusing framing and Host values two parsers could read differently |

mod cookie;
mod forward;
mod framing;

pub use cookie::{
    CookieAttrs, Found, MAX_COOKIE_VALUE, SameSite, Strip, add_set_cookie, drop_cookies,
    find_cookie, holds_cookie, is_cookie_name, set_cookie, strip_cookie, strip_cookie_where,
    take_cookie, write_without_cookie, write_without_cookie_where,
};
pub use forward::{
    Forwarded, add_forwarded, client_ip, ip_value, keeps_forwarded, strip_hop_by_hop,
    strip_replication, upgrade_protocol, write_forwarded_for,
};
pub(crate) use forward::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_STICKYD_BACKEND, X_STICKYD_BACKUP,
    X_STICKYD_TAKEOVER,
};
pub use framing::{Framing, framing, valid_host};
// The same rules on raw bytes, for the HTTP/1 engine's parser.
pub(crate) use framing::{Codings, LENGTH_TWICE, LOOK_ALIKE, looks_like_framing};

/// A header map from name/value pairs, for the tests of every part.
#[cfg(test)]
pub(crate) fn test_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}
