//! Step 4 of the request path: the response to the client. The backend's response is shaped
//! here (hop-by-hop headers out, the token in when one is issued: [`issue`] is the only place
//! that signs one, for the HTTP/1 engine too), errors become responses here ([`error_response`], from the one
//! mapping in [`crate::error`]), and [`ProxyBody`] is the body type of both.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tracing::debug;

use super::bare::{BareBody, BodyError};
use crate::access::Pending;
use crate::affinity::{self, Source};
use crate::backend::InFlight;
use crate::error::ProxyError;
use crate::headers;
use crate::state::Pool;
use crate::token::Claims;
use crate::upstream::Lease;

/// The backend's response on its way to the client: hop-by-hop headers out, the cookie in when
/// one is issued.
pub(super) fn respond(
    pool: &Pool,
    mut resp: Response<ProxyBody>,
    issue: Option<Claims>,
    now: u32,
    tls: bool,
) -> Response<ProxyBody> {
    headers::strip_hop_by_hop(resp.headers_mut());
    with_token(pool, resp, issue, now, tls)
}

/// A response whose head holds no hop-by-hop field already, the token in when one is issued.
pub(super) fn with_token(
    pool: &Pool,
    mut resp: Response<ProxyBody>,
    issue: Option<Claims>,
    now: u32,
    tls: bool,
) -> Response<ProxyBody> {
    if let Some(claims) = issue {
        set_token(pool, resp.headers_mut(), &claims, now, tls);
    }
    resp
}

/// An issued token, as the response carries it.
pub(super) enum Issued<'a> {
    /// `Set-Cookie` with the configured attributes, `Max-Age` the rest of `max_life`.
    Cookie(HeaderValue),
    /// `header` mode: the token in this response header.
    Header(&'a http::HeaderName, crate::token::Encoded),
}

/// Issues a token: the only place one is signed, for both paths (hyper's, below, and the
/// HTTP/1 engine's). Either way the response gets `Cache-Control: private` when it has none,
/// so no shared cache keeps one client's token for others.
pub(super) fn issue<'a>(pool: &'a Pool, claims: &Claims, now: u32, tls: bool) -> Issued<'a> {
    let token = pool.rings.own.sign(claims);
    match &pool.source {
        Source::Header { name, .. } => Issued::Header(name, token),
        _ => {
            let max_age = affinity::cookie_max_age(&pool.policy, claims, now);
            Issued::Cookie(headers::set_cookie(
                &pool.cookie,
                token.as_str(),
                max_age,
                tls,
            ))
        }
    }
}

/// Sets an issued token on a hyper response's headers.
fn set_token(pool: &Pool, headers: &mut HeaderMap, claims: &Claims, now: u32, tls: bool) {
    match issue(pool, claims, now, tls) {
        Issued::Header(name, token) => {
            if let Ok(v) = HeaderValue::from_str(token.as_str()) {
                headers.insert(name.clone(), v);
            }
            if !headers.contains_key(header::CACHE_CONTROL) {
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
            }
        }
        Issued::Cookie(cookie) => headers::add_set_cookie(headers, cookie),
    }
}

/// The backend's `101` on its way to the client: its Connection/Upgrade pair and protocol
/// headers kept, other hop-by-hop headers out, the cookie in when one is issued, no body.
pub(super) fn switching(
    pool: &Pool,
    resp: Response<Incoming>,
    issue: Option<Claims>,
    now: u32,
    tls: bool,
) -> Response<ProxyBody> {
    let keep = (
        resp.headers().get(header::CONNECTION).cloned(),
        resp.headers().get(header::UPGRADE).cloned(),
    );
    let resp = resp.map(|_| ProxyBody::full(Bytes::new()));
    let mut resp = respond(pool, resp, issue, now, tls);
    if let (Some(c), Some(u)) = keep {
        resp.headers_mut().insert(header::CONNECTION, c);
        resp.headers_mut().insert(header::UPGRADE, u);
    }
    resp
}

/// The error response: status, short body, Retry-After for pool failures (`retry_after`: the
/// pool's `[balance] retry_after`).
pub fn error_response(e: &ProxyError, retry_after: std::time::Duration) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(e.body().as_bytes())));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = e.retry_after(retry_after) {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(
        e,
        ProxyError::BadRequest(_) | ProxyError::NotImplemented(_) | ProxyError::ClientTimeout
    ) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        // Debug, not info: a flood of bad requests must not flood the log.
        debug!(error = %e, "request refused");
    }
    resp
}

/// The body of a response to a client: the backend's, or a short one of our own. A plain
/// enum rather than a boxed trait object: no allocation per request.
pub enum ProxyBody {
    /// A backend's response body, from hyper's client.
    Upstream(Tracked),
    /// A backend's response body, from a connection of the HTTP/1 engine's pool.
    Bare(Box<BareBody>),
    /// A body of our own, sent in one frame.
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A body of our own.
    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(t) => t.poll_frame(cx).map_err(Into::into),
            ProxyBody::Bare(b) => b.poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(t) => t.inner.is_end_stream(),
            ProxyBody::Bare(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(t) => t.inner.size_hint(),
            ProxyBody::Bare(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The client's body for a backend's response: see [`Tracked`].
pub(super) fn tracked(
    body: Incoming,
    lease: Lease,
    guard: InFlight,
    log: Option<Pending>,
) -> ProxyBody {
    ProxyBody::Upstream(Tracked::new(body, lease, guard, log))
}

/// A backend's response body. It holds the backend's in-flight count, and the connection it
/// came on: once the body has been read to its end the count ends and the connection goes
/// back to the pool (as the HTTP/1 engine does, before the client has the last bytes);
/// dropped before that (the client went away), the connection is closed with it.
pub struct Tracked {
    inner: Incoming,
    lease: Option<Lease>,
    guard: Option<InFlight>,
    /// The access log line, written when the body is over; with the bytes sent so far.
    log: Option<Box<(Pending, u64)>>,
}

impl Tracked {
    /// Wraps a backend's body.
    pub fn new(inner: Incoming, lease: Lease, guard: InFlight, log: Option<Pending>) -> Tracked {
        Tracked {
            inner,
            lease: Some(lease),
            guard: Some(guard),
            log: log.map(|p| Box::new((p, 0))),
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(l), Some(d)) = (self.log.as_mut(), f.data_ref()) {
                    l.1 += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.release();
                }
            }
            Poll::Ready(Some(Err(_))) => self.lease = None,
            Poll::Pending => {}
        }
        polled
    }

    fn release(&mut self) {
        self.guard = None;
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A body that was complete from the start (204, HEAD, Content-Length: 0) is never polled.
        if self.inner.is_end_stream() {
            self.release();
        }
        if let Some(l) = self.log.take() {
            let (p, bytes) = *l;
            p.finish(0, bytes);
        }
    }
}
