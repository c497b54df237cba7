//! HTTP/2 requests on the HTTP/1 engine's backend connections: a request hyper serves (HTTP/2
//! from browsers, mostly) that carries no body and upgrades nothing is sent to its HTTP/1.1
//! backend as the engine sends its own: the head written from the request into one buffer, a
//! bare connection from the worker's [`raw::Pool`](crate::upstream::raw::Pool), the response head
//! read with [`parse::response`], and the body read in the stream's own task
//! ([`BareBody`](super::bare::BareBody)).
//! No connection task, no channel, no second parse into a header map on the backend side: that
//! machinery (hyper's client) took 48% of the HTTP/2 path's CPU with its system calls, and one
//! read per request found nothing (docs/performance.md).
//!
//! Requests with a body, upgrades and pools with HTTP/2 backends keep hyper's client (its
//! request body streaming and flow control), as before.
//!
//! The engine's rules hold here too: the response is framed as the parser says or refused
//! (502); a backend connection goes back to the pool only when the response ended where its
//! framing says with nothing after it; a reused connection that turns out closed before any
//! response byte is replaced by a new one once; retries follow [`Retries`].

use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::Proxy;
use super::attempt::{Retries, set_replica};
use super::bare::{BareBody, DOWN_BUF, From, Park};
use super::engine::dial;
use super::response::ProxyBody;
use crate::access::Pending;
use crate::affinity::{self, Route};
use crate::backend::InFlight;
use crate::clock::Now;
use crate::connect::Direct as Stream;
use crate::error::ProxyError;
use crate::h1::chunked::Decoder;
use crate::h1::parse::{self, Limits};
use crate::h1::{Body, Field, Method, Name, ResponseHead};
use crate::io::Expiry;
use crate::state::{Backend, Snapshot};

/// A backend's answer: where the request went, its response head, and the backend's
/// in-flight count, held until the response body is done.
pub(super) struct Answer {
    pub route: Route,
    pub got: Got,
    pub guard: InFlight,
}

impl Proxy {
    /// Runs attempts for a bodiless request (its head rewritten for the backend) until a
    /// backend answers or no safe retry is left.
    pub(super) async fn attempts_bare(
        &self,
        snap: &Snapshot,
        pool: usize,
        parts: &mut Parts,
        input: affinity::Input,
        idempotent: bool,
        now: &Now,
    ) -> Result<Answer, ProxyError> {
        let mut tries = Retries::new(snap, pool);
        let method = method(&parts.method);
        // Sized for the usual head; written again per attempt (the replication fields differ).
        let mut head = Vec::with_capacity(256 + 64 * parts.headers.len());
        loop {
            let route = tries.route(snap, input, now)?;
            let backend = &snap.backends[route.backend];
            if let Some(r) = tries.replica(snap, &route) {
                // A retry's fields replace the attempt's before it.
                crate::headers::strip_replication(&mut parts.headers);
                set_replica(&mut parts.headers, &r);
            }
            head.clear();
            write_head(&mut head, parts);
            let guard = InFlight::start(&backend.live);
            let sent = self
                .send_bare(
                    snap,
                    &head,
                    method,
                    route.backend,
                    backend,
                    !idempotent,
                    now.mono,
                )
                .await;
            let e = match sent {
                Ok(got) => return Ok(Answer { route, got, guard }),
                Err(e) => e,
            };
            drop(guard);
            let (e, replayable) = e;
            let retry = tries.left() && replayable && e.retryable(idempotent);
            tries.failed(self, snap, route.backend, e, retry)?;
        }
    }

    /// One attempt on one backend: a connection (an idle one, else a new one), the head, the
    /// response head. `careful`: a non-idempotent request goes on an idle connection only
    /// after a check that the backend has not closed it.
    #[allow(clippy::too_many_arguments)]
    async fn send_bare(
        &self,
        snap: &Snapshot,
        head: &[u8],
        method: Method,
        index: usize,
        backend: &Backend,
        careful: bool,
        now: Instant,
    ) -> Result<Got, (ProxyError, bool)> {
        let ucfg = &snap.config.upstream;
        let scfg = &snap.config.server;
        let limits = Limits {
            max_head: scfg.max_header_bytes,
            max_headers: scfg.max_headers,
        };
        let mut reused = self.idle(index, backend, careful, now);
        loop {
            let was_reused = reused.is_some();
            let mut up = match reused.take() {
                Some(s) => s,
                None => dial(snap, backend).await.map_err(|e| (e, true))?,
            };
            let mut buf = BytesMut::with_capacity(DOWN_BUF);
            let mut fields = Vec::new();
            match exchange(
                &mut up,
                head,
                method,
                &limits,
                ucfg.response_timeout,
                &mut buf,
                &mut fields,
            )
            .await
            {
                Ok(resp) => {
                    return Ok(Got {
                        up,
                        head: resp,
                        buf,
                        fields,
                    });
                }
                Err((error, replayable))
                    if was_reused && replayable && matches!(error, ProxyError::Reset(_)) =>
                {
                    // A keep-alive race: the backend closed the idle connection as the request
                    // went out. Nothing was answered; a new connection gets it.
                    debug!(backend = %backend.id, error = %error, "reused connection was closed; retrying on a new one");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A response head read from a backend, with its connection and the bytes read after the head.
pub(super) struct Got {
    up: Stream,
    head: ResponseHead,
    /// The head, then whatever of the body came with it.
    buf: BytesMut,
    fields: Vec<Field>,
}

impl Got {
    /// The response's status.
    pub(super) fn status(&self) -> u16 {
        self.head.status
    }

    /// The response for the client: the backend's status and fields (hop-by-hop ones out),
    /// and its body: whole when it came with the head (the connection is parked at once, the
    /// in-flight count ends and the access log line is written), else read as the client's
    /// stream takes it. A head whose fields cannot be carried is the backend's error (502).
    pub(super) fn into_response(
        self,
        proxy: &Proxy,
        index: usize,
        backend: &Backend,
        guard: InFlight,
        log: &mut Option<Pending>,
        now: &Now,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Got {
            up,
            head,
            mut buf,
            fields,
        } = self;
        let status = StatusCode::from_u16(head.status).map_err(|_| bad_field())?;
        let park = Park {
            pool: proxy.pool.clone(),
            backend: index,
            addr: backend.authority.clone(),
            since: now.mono,
        };
        let avail = buf.len() - head.len;
        let whole = match head.body {
            Body::None => Some(0),
            Body::Length(n) if avail as u64 >= n => Some(n as usize),
            _ => None,
        };
        let (headers, body) = match whole {
            Some(n) => {
                let bytes = buf.freeze();
                let headers = fields_map(&bytes, &fields, head.body)?;
                // Nothing may follow a response on a connection that is kept.
                if head.keep_alive && avail == n {
                    park.put(up);
                }
                drop(guard);
                if let Some(p) = log.take() {
                    p.finish(0, n as u64);
                }
                (
                    headers,
                    ProxyBody::full(bytes.slice(head.len..head.len + n)),
                )
            }
            None => {
                let rest = buf.split_off(head.len);
                let headers = fields_map(&buf.freeze(), &fields, head.body)?;
                let from = match head.body {
                    Body::Length(n) => From::Left(n),
                    Body::Chunked => From::Chunked(Decoder::new()),
                    _ => From::Close,
                };
                let body = BareBody {
                    up: Some(up),
                    buf: rest,
                    from,
                    keep: head.keep_alive,
                    park: Some(park),
                    guard: Some(guard),
                    log: log.take().map(|p| (p, 0)),
                    trailers: None,
                };
                (headers, ProxyBody::Bare(Box::new(body)))
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

fn bad_field() -> ProxyError {
    ProxyError::Protocol("a response field HTTP/2 cannot carry".into())
}

/// The response's fields but the hop-by-hop ones, as a map whose values are slices of the
/// received head (room for the token's two). Content-Length says what the parser framed the
/// body by, once: the length it read for a length-delimited body, none beside chunked or
/// close-delimited (the parser ignores one there), the first received on a response without
/// a body (HEAD, 304).
fn fields_map(head: &Bytes, fields: &[Field], body: Body) -> Result<HeaderMap, ProxyError> {
    let mut headers = HeaderMap::with_capacity(fields.len() + 2);
    let mut length = None;
    for f in fields.iter().filter(|f| !f.hop) {
        let value = head.slice(f.value.start as usize..f.value.end as usize);
        if f.kind == Name::ContentLength {
            length.get_or_insert(value);
            continue;
        }
        let name = HeaderName::from_bytes(f.name.of(head)).map_err(|_| bad_field())?;
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| bad_field())?;
        headers.append(name, value);
    }
    let length = match body {
        Body::Length(n) => Some(HeaderValue::from(n)),
        Body::None => length
            .map(HeaderValue::from_maybe_shared)
            .transpose()
            .map_err(|_| bad_field())?,
        Body::Chunked | Body::Close => None,
    };
    if let Some(v) = length {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    Ok(headers)
}

/// The `Method` the response parser needs (only HEAD changes a response's framing).
fn method(m: &http::Method) -> Method {
    match *m {
        http::Method::GET => Method::Get,
        http::Method::HEAD => Method::Head,
        http::Method::POST => Method::Post,
        http::Method::PUT => Method::Put,
        http::Method::DELETE => Method::Delete,
        http::Method::OPTIONS => Method::Options,
        http::Method::TRACE => Method::Trace,
        http::Method::PATCH => Method::Patch,
        http::Method::CONNECT => Method::Connect,
        _ => Method::Other,
    }
}

/// Writes the HTTP/1.1 head of a rewritten request (origin form, hop-by-hop fields already
/// out, stickyd's fields in). HTTP/2's cookie crumbs become one `Cookie` line, joined with
/// "; " (RFC 9113 section 8.2.3): an HTTP/1.1 backend reads one.
pub(super) fn write_head(out: &mut Vec<u8>, parts: &Parts) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut cookies = 0;
    for (name, value) in &parts.headers {
        if name == header::COOKIE {
            cookies += 1;
            continue;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, v) in parts.headers.get_all(header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Sends `head` on `up` and reads the response head into `buf` (1xx other than 101 dropped;
/// a 101 is refused: nothing was asked to upgrade). The error says whether the request may be
/// sent again (nothing of a response came).
async fn exchange(
    up: &mut Stream,
    head: &[u8],
    method: Method,
    limits: &Limits,
    timeout: Duration,
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
) -> Result<ResponseHead, (ProxyError, bool)> {
    up.write_all(head)
        .await
        .map_err(|e| (ProxyError::Reset(e.to_string()), true))?;
    let protocol = |why: &str| (ProxyError::Protocol(why.into()), false);
    // Hundreds of streams wait at once on a busy worker: a coarse timeout, not a timer each.
    let mut expiry = Expiry::new(timeout);
    loop {
        if !buf.is_empty() {
            match parse::response(buf, limits, method, fields) {
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                    let _ = buf.split_to(h.len);
                    continue;
                }
                Ok(Some(h)) if h.status == 101 => {
                    return Err(protocol("101 to a request for no upgrade"));
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) if buf.len() >= limits.max_head => {
                    return Err(protocol("response head too large"));
                }
                Ok(None) => {}
                Err(bad) => return Err(protocol(bad.0)),
            }
        }
        buf.reserve(DOWN_BUF);
        let read = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut *up), cx, buf) {
                return Poll::Ready(r);
            }
            std::task::ready!(expiry.poll_expired(cx));
            Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
        });
        match read.await {
            Ok(0) if buf.is_empty() => {
                return Err((
                    ProxyError::Reset("connection closed before the response".into()),
                    true,
                ));
            }
            Ok(0) => return Err(protocol("connection closed in the response head")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err((ProxyError::Timeout, false));
            }
            Err(e) => {
                let nothing = buf.is_empty();
                return Err((ProxyError::Reset(e.to_string()), nothing));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, target: &str, fields: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(target);
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_head_is_http11_with_cookie_crumbs_joined() {
        let p = parts(
            "GET",
            "/a?b=1",
            &[
                ("host", "example.com"),
                ("cookie", "a=1"),
                ("x-one", "1"),
                ("cookie", "b=2"),
            ],
        );
        let mut out = Vec::new();
        write_head(&mut out, &p);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nhost: example.com\r\nx-one: 1\r\ncookie: a=1; b=2\r\n\r\n"
        );
        let mut out = Vec::new();
        write_head(&mut out, &parts("OPTIONS", "*", &[]));
        assert_eq!(out, b"OPTIONS * HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn the_written_head_parses_back_as_it_was() {
        use crate::h1::parse::request;
        let p = parts(
            "DELETE",
            "/x",
            &[
                ("host", "h"),
                ("x-forwarded-for", "1.2.3.4"),
                ("cookie", "s=1"),
            ],
        );
        let mut out = Vec::new();
        write_head(&mut out, &p);
        let limits = Limits {
            max_head: 8192,
            max_headers: 64,
        };
        let mut fields = Vec::new();
        let h = request(&out, &limits, &mut fields).unwrap().unwrap();
        assert_eq!(h.len, out.len());
        assert_eq!(h.method, Method::Delete);
        assert_eq!(h.body, Body::None);
        assert_eq!(fields.len(), 3);
    }

    #[test]
    fn methods_map_to_the_engines() {
        assert_eq!(method(&http::Method::HEAD), Method::Head);
        assert_eq!(method(&http::Method::GET), Method::Get);
        assert!(!method(&http::Method::from_bytes(b"PURGE").unwrap()).idempotent());
    }
}
