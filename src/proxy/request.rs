//! Step 1 of the request path: refuse what cannot be forwarded, note what the request needs
//! from the steps after it ([`Plan`]), and rewrite its head for the backend.
//!
//! The affinity input is taken between [`check`] and [`rewrite`] (see `Proxy::forward`): in
//! `ip` mode it reads the client's X-Forwarded-For before stickyd appends the peer to it.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Uri, Version};
use hyper::upgrade::OnUpgrade;

use super::ConnInfo;
use crate::error::ProxyError;
use crate::headers::{self, Forwarded, Framing};
use crate::state::Snapshot;

/// What the steps after the checks need to know of the request.
pub(super) struct Plan {
    /// The backend may not read the body as this request's: neither connection serves
    /// anything after it (a body on GET and the like).
    pub close_after: bool,
    /// An upgrade (WebSocket): the protocol asked for, and the client side's upgrade handle,
    /// taken once the backend answers `101`. The request goes on a connection of its own.
    pub upgrade: Option<(HeaderValue, OnUpgrade)>,
    /// The client speaks HTTP/1.x (a `Connection: close` means something to it).
    pub client_h1: bool,
    /// The method may be sent again after a connection dropped (RFC 9110 9.2.2).
    pub idempotent: bool,
}

/// Refuses what cannot be forwarded (400/501), and plans the rest.
pub(super) fn check(parts: &mut Parts) -> Result<Plan, ProxyError> {
    check_request(parts)?;
    let close_after = match headers::framing(&parts.method, &parts.headers) {
        Framing::Clear => false,
        Framing::CloseAfter => true,
        Framing::Refuse(why) => return Err(ProxyError::BadRequest(why)),
        Framing::Unsupported(why) => return Err(ProxyError::NotImplemented(why)),
    };
    // An upgrade keeps its Connection/Upgrade pair, which the hop-by-hop strip removes, and
    // the client side's upgrade handle.
    let upgrade = headers::upgrade_protocol(&parts.headers, parts.version)
        .and_then(|p| Some((p, parts.extensions.remove::<OnUpgrade>()?)));
    Ok(Plan {
        close_after,
        upgrade,
        client_h1: parts.version <= Version::HTTP_11,
        idempotent: parts.method.is_idempotent(),
    })
}

/// Rewrites the head for the backend: hop-by-hop headers out, Host kept (or taken from the
/// request target), X-Forwarded-*, Via, HTTP/1.1 in origin form; `Connection: close` after a
/// body the backend may misread, the Connection/Upgrade pair of an upgrade.
pub(super) fn rewrite(snap: &Snapshot, parts: &mut Parts, conn: &ConnInfo, plan: &Plan) {
    rewrite_head(snap, parts, conn);
    if plan.close_after {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some((proto, _)) = &plan.upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
}

/// A copy of a request head, for an attempt that may be retried.
pub(super) fn clone_parts(p: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

/// Rejects what cannot be forwarded.
fn check_request(parts: &Parts) -> Result<(), ProxyError> {
    // One lookup for the three Host rules.
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if parts.version == Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("HTTP/1.1 request without Host\n"));
        }
        (Some(_), Some(_)) => {
            return Err(ProxyError::BadRequest("more than one Host header\n"));
        }
        (Some(h), None) if !headers::valid_host(h.as_bytes()) => {
            return Err(ProxyError::BadRequest("invalid Host header\n"));
        }
        _ => {}
    }
    if let Some(a) = parts.uri.authority()
        && !headers::valid_host(a.as_str().as_bytes())
    {
        return Err(ProxyError::BadRequest(
            "invalid authority in the request target\n",
        ));
    }
    if parts.method == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported\n"));
    }
    Ok(())
}

/// Rewrites the request head for the backend: hop-by-hop headers out (before ours go in),
/// Host kept (or taken from the h2 authority), X-Forwarded-*, Via, HTTP/1.1.
fn rewrite_head(snap: &Snapshot, parts: &mut Parts, conn: &ConnInfo) {
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_replication(&mut parts.headers);
    // An absolute-form target (or h2's :authority) names the host: a Host header that says
    // otherwise is replaced (RFC 9112 section 3.2.2), so the backend reads one host only.
    if let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    let host = parts.headers.get(header::HOST).cloned();
    headers::add_forwarded(
        &mut parts.headers,
        &Forwarded {
            peer: &conn.peer_value,
            trusted: snap.is_trusted(conn.peer.ip()),
            proto: if conn.tls { "https" } else { "http" },
            host: host.as_ref(),
            via: snap.via(parts.version),
        },
    );
    parts.version = Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = origin_form(&parts.uri);
    }
}

/// The origin form (`/path?query`) of an absolute-form or HTTP/2 request target.
fn origin_form(incoming: &Uri) -> Uri {
    match incoming.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq.clone()),
        // `*` (OPTIONS) or an empty path.
        Some(pq) if pq.as_str() == "*" => Uri::from_static("*"),
        _ => Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_target_is_the_origin_form() {
        let u = origin_form(&"http://evil.example/a/b?c=1".parse().unwrap());
        assert_eq!(u, "/a/b?c=1");
        assert_eq!(origin_form(&"http://a.example".parse().unwrap()), "/");
        assert_eq!(origin_form(&"*".parse().unwrap()), "*");
    }

    fn parts(version: Version, hosts: &[&str], method: Method) -> Parts {
        let mut r = Request::new(());
        *r.version_mut() = version;
        *r.method_mut() = method;
        for h in hosts {
            r.headers_mut()
                .append(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        r.into_parts().0
    }

    #[test]
    fn only_idempotent_methods_may_be_replayed_after_a_reset() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            let plan = check(&mut parts(Version::HTTP_11, &["a"], m.clone())).unwrap();
            assert!(plan.idempotent, "{m}");
        }
        for m in [Method::POST, Method::PATCH] {
            let plan = check(&mut parts(Version::HTTP_11, &["a"], m.clone())).unwrap();
            assert!(!plan.idempotent, "{m}");
        }
    }

    #[test]
    fn requests_without_host_or_with_two_are_refused() {
        assert!(check_request(&parts(Version::HTTP_11, &["a"], Method::GET)).is_ok());
        assert!(check_request(&parts(Version::HTTP_10, &[], Method::GET)).is_ok());
        assert!(check_request(&parts(Version::HTTP_2, &[], Method::GET)).is_ok());
        for bad in [
            parts(Version::HTTP_11, &[], Method::GET),
            parts(Version::HTTP_11, &["a", "b"], Method::GET),
            parts(Version::HTTP_11, &["a"], Method::CONNECT),
            parts(Version::HTTP_11, &["a b"], Method::GET),
        ] {
            assert_eq!(check_request(&bad).unwrap_err().status(), 400);
        }
    }

    #[test]
    fn a_body_on_get_closes_both_connections_after_it() {
        let mut p = parts(Version::HTTP_11, &["a"], Method::GET);
        p.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let plan = check(&mut p).unwrap();
        assert!(plan.close_after);
        let mut p = parts(Version::HTTP_11, &["a"], Method::POST);
        p.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(
            check(&mut p).err().map(|e| e.status()),
            Some(http::StatusCode::NOT_IMPLEMENTED)
        );
    }
}
