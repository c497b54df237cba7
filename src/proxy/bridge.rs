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

use super::ConnInfo;
use super::Proxy;
use super::attempt::Retries;
use super::bare::{BareBody, DOWN_BUF, From, Park};
use super::engine::{dial, limits};
use super::response::ProxyBody;
use crate::access::Pending;
use crate::affinity::{self, Route};
use crate::backend::InFlight;
use crate::clock::Now;
use crate::connect::Direct as Stream;
use crate::error::ProxyError;
use crate::h1::chunked::Decoder;
use crate::h1::parse::{self, Limits};
use crate::h1::write;
use crate::h1::{Body, Field, Method, Name, ResponseHead};
use crate::headers::{
    self, Strip, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, keeps_forwarded,
    strip_cookie_where, write_forwarded_for, write_without_cookie_where,
};
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
    /// Writes the backend's head for a bodiless request ([`write_head`]) and runs attempts
    /// until a backend answers or no safe retry is left.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempts_bare(
        &self,
        snap: &Snapshot,
        pool: usize,
        parts: &mut Parts,
        conn: &ConnInfo,
        input: affinity::Input,
        idempotent: bool,
        now: &Now,
    ) -> Result<Answer, ProxyError> {
        let mut tries = Retries::new(snap, pool);
        let method = method(&parts.method);
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::strip_replication(&mut parts.headers);
        let (cookie, token) = snap.pools[pool].source.carriers();
        let mut head = Vec::with_capacity(256 + 64 * parts.headers.len());
        write_head(
            &mut head,
            parts,
            &Adds {
                peer: conn.peer_value.as_bytes(),
                trusted: snap.is_trusted(conn.peer.ip()),
                proto: if conn.tls { b"https" } else { b"http" },
                via: snap.via(parts.version).map(HeaderValue::as_bytes),
                cookie: cookie.map(str::as_bytes),
                other_cookies: &snap.pools[pool].other_cookies,
                token,
            },
        );
        let head_len = head.len();
        loop {
            let route = tries.route(snap, input, now)?;
            let backend = &snap.backends[route.backend];
            // Each attempt's replication fields replace the one's before it.
            head.truncate(head_len);
            if let Some(r) = tries.replica(snap, &route) {
                write::replica_fields(&mut head, head_len, &r);
            }
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
        let limits = limits(snap);
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
    /// The response's status and fields (hop-by-hop ones out), as HTTP/2 carries them, and
    /// its body's bytes apart: nothing counted or parked yet. A head whose fields cannot be
    /// carried is the backend's error (502).
    pub(super) fn prepare(self) -> Result<Prepared, ProxyError> {
        let Got {
            up,
            head,
            mut buf,
            fields,
        } = self;
        let status = StatusCode::from_u16(head.status).map_err(|_| bad_field())?;
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
                let body = bytes.slice(head.len..head.len + n);
                // Nothing may follow a response on a connection that is kept.
                (headers, Rest::Whole(body, head.keep_alive && avail == n))
            }
            None => {
                let rest = buf.split_off(head.len);
                let headers = fields_map(&buf.freeze(), &fields, head.body)?;
                (headers, Rest::Read(rest, head.body, head.keep_alive))
            }
        };
        Ok(Prepared {
            up,
            status,
            headers,
            body,
        })
    }
}

/// A response head ready for the client, its body still to be set up.
pub(super) struct Prepared {
    up: Stream,
    status: StatusCode,
    headers: HeaderMap,
    body: Rest,
}

/// What of the body came with the head.
enum Rest {
    /// All of it; whether the connection may be kept after it.
    Whole(Bytes, bool),
    /// The start of it, its framing, whether the backend keeps the connection.
    Read(BytesMut, Body, bool),
}

impl Prepared {
    /// The response's status.
    pub(super) fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The response for the client. A body that came whole with the head is sent as one frame:
    /// the connection is parked at once, the in-flight count ends and the access log line is
    /// written. A longer one is read as the client's stream takes it ([`BareBody`]).
    pub(super) fn into_response(
        self,
        proxy: &Proxy,
        index: usize,
        backend: &Backend,
        guard: InFlight,
        log: &mut Option<Pending>,
        now: &Now,
    ) -> Response<ProxyBody> {
        let park = Park {
            pool: proxy.pool.clone(),
            backend: index,
            addr: backend.authority.clone(),
            since: now.mono,
        };
        let body = match self.body {
            Rest::Whole(bytes, keep) => {
                if keep {
                    park.put(self.up);
                }
                drop(guard);
                if let Some(p) = log.take() {
                    p.finish(0, bytes.len() as u64);
                }
                ProxyBody::full(bytes)
            }
            Rest::Read(rest, framing, keep) => {
                let from = match framing {
                    Body::Length(n) => From::Left(n),
                    Body::Chunked => From::Chunked(Decoder::new()),
                    _ => From::Close,
                };
                ProxyBody::Bare(Box::new(BareBody {
                    up: Some(self.up),
                    buf: rest,
                    from,
                    keep,
                    park: Some(park),
                    guard: Some(guard),
                    log: log.take().map(|p| (p, 0)),
                    trailers: None,
                }))
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
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

/// What the head sent to a backend adds to the request's own fields.
pub(super) struct Adds<'a> {
    /// The client's address, for X-Forwarded-For.
    pub peer: &'a [u8],
    /// The client is a trusted proxy: its X-Forwarded-* are kept (its -For extended).
    pub trusted: bool,
    /// `http` or `https`, for X-Forwarded-Proto.
    pub proto: &'static [u8],
    /// The Via value, when `[server] via` is on.
    pub via: Option<&'a [u8]>,
    /// The pool's affinity cookie, left out of what the backend reads.
    pub cookie: Option<&'a [u8]>,
    /// Other pools' affinity cookies, left out too.
    pub other_cookies: &'a [Box<[u8]>],
    /// The token header (`header` mode), left out.
    pub token: Option<&'a HeaderName>,
}

impl Adds<'_> {
    /// A cookie stickyd keeps from the backend.
    fn ours(&self, name: &[u8]) -> bool {
        self.cookie == Some(name) || self.other_cookies.iter().any(|o| **o == *name)
    }
}

/// Writes the HTTP/1.1 head for the backend straight from a request hyper parsed (its
/// hop-by-hop and replication fields already out), as `request::rewrite` rewrites a head and
/// with no edit of the header map: the origin-form target; Host from the authority (an HTTP/2
/// `:authority`), else the request's Host; X-Forwarded-For with the client appended (after a
/// trusted proxy's list) or alone; X-Forwarded-Proto and -Host as received from a trusted
/// proxy, else ours; the request's Via lines and ours after them; HTTP/2's cookie crumbs as
/// one `Cookie` line, joined with "; " (RFC 9113 section 8.2.3): an HTTP/1.1 backend reads
/// one. A property test holds it to the map rewrite's result.
pub(super) fn write_head(out: &mut Vec<u8>, parts: &Parts, adds: &Adds<'_>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = match parts.uri.path_and_query().map(|p| p.as_str()) {
        Some(t) if t.starts_with('/') || t == "*" => t,
        _ => "/",
    };
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let h = &parts.headers;
    let host = match parts.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => h.get(header::HOST).map(HeaderValue::as_bytes),
    };
    if let Some(host) = host {
        line(out, b"host", host);
    }
    // One pass over the names (compared, not hashed) says what is there.
    let (mut xff, mut xfp, mut xfh, mut cookies) = (false, false, false, false);
    for name in h.keys() {
        if name == X_FORWARDED_FOR {
            xff = true;
        } else if name == X_FORWARDED_PROTO {
            xfp = true;
        } else if name == X_FORWARDED_HOST {
            xfh = true;
        } else if name == header::COOKIE {
            cookies = true;
        }
    }
    let keep_proto = keeps_forwarded(adds.trusted, xfp);
    let keep_host = keeps_forwarded(adds.trusted, xfh);
    for (name, value) in h {
        let ours = name == header::HOST
            || name == X_FORWARDED_FOR
            || name == header::COOKIE
            || (name == X_FORWARDED_PROTO && !keep_proto)
            || (name == X_FORWARDED_HOST && !keep_host)
            || adds.token == Some(name);
        if !ours {
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if cookies {
        cookie_line(out, h.get_all(header::COOKIE).iter(), adds);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    let received = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes);
    let trusted = adds.trusted && xff;
    write_forwarded_for(out, trusted, received, adds.peer);
    out.extend_from_slice(b"\r\n");
    if !keep_proto {
        line(out, b"x-forwarded-proto", adds.proto);
    }
    if !keep_host && let Some(host) = host {
        line(out, b"x-forwarded-host", host);
    }
    if let Some(via) = adds.via {
        line(out, b"via", via);
    }
    out.extend_from_slice(b"\r\n");
}

/// The request's cookies without stickyd's, in one line: a field holding none passes as
/// received, one holding some is rewritten without them (and left out when nothing is left),
/// as the header map's rewrite (`headers::take_cookie`, `drop_cookies`) leaves them.
fn cookie_line<'v>(
    out: &mut Vec<u8>,
    values: impl Iterator<Item = &'v HeaderValue>,
    adds: &Adds<'_>,
) {
    let start = out.len();
    out.extend_from_slice(b"cookie: ");
    let first = out.len();
    for v in values {
        let raw = v.as_bytes();
        let before = out.len();
        if before > first {
            out.extend_from_slice(b"; ");
        }
        match strip_cookie_where(raw, |n| adds.ours(n)) {
            Strip::Keep => out.extend_from_slice(raw),
            Strip::Drop => out.truncate(before),
            Strip::Rewrite => {
                if !write_without_cookie_where(out, raw, |n| adds.ours(n)) {
                    out.truncate(before);
                }
            }
        }
    }
    if out.len() == first {
        out.truncate(start);
    } else {
        out.extend_from_slice(b"\r\n");
    }
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
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            match parse::response(buf, limits, method, fields) {
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                    // An interim response: dropped. The backend has read the request: it is
                    // never sent again.
                    let _ = buf.split_to(h.len);
                    answered = true;
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
            Ok(0) if buf.is_empty() && !answered => {
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
                let nothing = buf.is_empty() && !answered;
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

    const ADDS: Adds<'static> = Adds {
        peer: b"192.0.2.7",
        trusted: false,
        proto: b"https",
        via: Some(b"2 stickyd"),
        cookie: None,
        other_cookies: &[],
        token: None,
    };

    fn written(p: &Parts, adds: &Adds<'_>) -> String {
        let mut out = Vec::new();
        write_head(&mut out, p, adds);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_head_is_http11_with_ours_added_and_cookie_crumbs_joined() {
        let p = parts(
            "GET",
            "http://example.com/a?b=1",
            &[
                ("host", "other.example"),
                ("cookie", "a=1"),
                ("x-one", "1"),
                ("cookie", "b=2"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "gopher"),
            ],
        );
        assert_eq!(
            written(&p, &ADDS),
            "GET /a?b=1 HTTP/1.1\r\nhost: example.com\r\nx-one: 1\r\ncookie: a=1; b=2\r\n\
             x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: example.com\r\nvia: 2 stickyd\r\n\r\n"
        );
        // From a trusted proxy its list is extended and its -Proto kept.
        let trusted = Adds {
            trusted: true,
            via: None,
            ..ADDS
        };
        let head = written(&p, &trusted);
        assert!(
            head.contains("x-forwarded-for: 6.6.6.6, 192.0.2.7\r\n"),
            "{head}"
        );
        assert!(head.contains("x-forwarded-proto: gopher\r\n"), "{head}");
        assert!(!head.contains("via:"), "{head}");
        let head = written(&parts("OPTIONS", "*", &[]), &ADDS);
        assert!(
            head.starts_with("OPTIONS * HTTP/1.1\r\nx-forwarded-for: "),
            "{head}"
        );
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
        let out = written(&p, &ADDS);
        let limits = Limits {
            max_head: 8192,
            max_headers: 64,
        };
        let mut fields = Vec::new();
        let h = request(out.as_bytes(), &limits, &mut fields)
            .unwrap()
            .unwrap();
        assert_eq!(h.len, out.len());
        assert_eq!(h.method, Method::Delete);
        assert_eq!(h.body, Body::None);
        // host, cookie, x-forwarded-for, -proto, -host, via
        assert_eq!(fields.len(), 6);
    }

    /// The map rewrite of the hyper path (`request::rewrite`'s steps on the header map), then
    /// the map written line by line: what `write_head` must equal.
    fn through_the_map(mut p: Parts, adds: &Adds<'_>) -> String {
        if let Some(name) = adds.cookie {
            headers::take_cookie(&mut p.headers, std::str::from_utf8(name).unwrap());
        }
        headers::drop_cookies(&mut p.headers, adds.other_cookies);
        if let Some(t) = adds.token {
            p.headers.remove(t);
        }
        headers::strip_hop_by_hop(&mut p.headers);
        headers::strip_replication(&mut p.headers);
        if let Some(a) = p.uri.authority() {
            let v = HeaderValue::from_str(a.as_str()).unwrap();
            p.headers.insert(header::HOST, v);
        }
        let host = p.headers.get(header::HOST).cloned();
        let peer = HeaderValue::from_bytes(adds.peer).unwrap();
        let via = adds.via.map(|v| HeaderValue::from_bytes(v).unwrap());
        headers::add_forwarded(
            &mut p.headers,
            &headers::Forwarded {
                peer: &peer,
                trusted: adds.trusted,
                proto: std::str::from_utf8(adds.proto).unwrap(),
                host: host.as_ref(),
                via: via.as_ref(),
            },
        );
        let mut out = format!(
            "{} {} HTTP/1.1\r\n",
            p.method,
            p.uri.path_and_query().map_or("/", |t| t.as_str())
        );
        for name in p.headers.keys() {
            let values: Vec<&str> = p
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            if name == header::COOKIE {
                out += &format!("cookie: {}\r\n", values.join("; "));
            } else {
                for v in values {
                    out += &format!("{name}: {v}\r\n");
                }
            }
        }
        out + "\r\n"
    }

    /// A head's request line, and its field lines grouped by name in their order (the order of
    /// names may differ; the order of one name's lines may not).
    fn normal(head: &str) -> (String, std::collections::BTreeMap<String, Vec<String>>) {
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap().to_string();
        let mut fields = std::collections::BTreeMap::<String, Vec<String>>::new();
        for l in lines.filter(|l| !l.is_empty()) {
            let (n, v) = l.split_once(": ").unwrap();
            fields.entry(n.to_string()).or_default().push(v.to_string());
        }
        (first, fields)
    }

    proptest::proptest! {
        #[test]
        fn the_head_is_the_map_rewrites(
            authority in proptest::option::of("[a-z]{1,8}\\.example(:[0-9]{2,4})?"),
            host in proptest::option::of("[a-z]{1,8}"),
            xff in proptest::collection::vec("[0-9.]{1,15}", 0..3),
            xfp in proptest::option::of("https?"),
            xfh in proptest::option::of("[a-z]{1,8}"),
            via in proptest::collection::vec("1\\.1 [a-z]{1,6}", 0..2),
            cookies in proptest::collection::vec("(a|b|c|sid|zz)=[a-z0-9]{0,6}(; ?(a|b|c|sid)=[a-z0-9]{0,4}){0,2}", 0..3),
            others in proptest::collection::vec(("x-[a-z]{1,6}", "[ -~]{0,12}"), 0..4),
            hop in proptest::option::of(proptest::sample::select(vec!["te", "keep-alive", "x-stickyd-backend"])),
            trusted: bool,
            with_via: bool,
            path in "/[a-z0-9/?=&]{0,16}",
            ours in proptest::option::of(proptest::sample::select(vec!["a", "sid", "b"])),
            others_out in proptest::sample::subsequence(vec!["b", "c", "zz"], 0..3),
            token in proptest::option::of(("x-session", "[a-z0-9]{1,8}")),
        ) {
            let target = match &authority {
                Some(a) => format!("http://{a}{path}"),
                None => path.clone(),
            };
            let mut b = http::Request::builder().method("GET").uri(target);
            if let Some(h) = &host { b = b.header("host", h.as_str()); }
            for v in &xff { b = b.header("x-forwarded-for", v.as_str()); }
            if let Some(v) = &xfp { b = b.header("x-forwarded-proto", v.as_str()); }
            if let Some(v) = &xfh { b = b.header("x-forwarded-host", v.as_str()); }
            for v in &via { b = b.header("via", v.as_str()); }
            for v in &cookies { b = b.header("cookie", v.as_str()); }
            for (n, v) in &others { b = b.header(n.as_str(), v.trim()); }
            if let Some(n) = hop { b = b.header(n, "trailers"); }
            if let Some((n, v)) = &token { b = b.header(n.as_str(), v.as_str()); }
            let p = b.body(()).unwrap().into_parts().0;
            let other_cookies: Vec<Box<[u8]>> =
                others_out.iter().map(|n| n.as_bytes().into()).collect();
            let token_name = token.map(|_| HeaderName::from_static("x-session"));
            let adds = Adds {
                trusted,
                via: if with_via { ADDS.via } else { None },
                cookie: ours.map(str::as_bytes),
                other_cookies: &other_cookies,
                token: token_name.as_ref(),
                ..ADDS
            };
            let mut direct = p.clone();
            headers::strip_hop_by_hop(&mut direct.headers);
            headers::strip_replication(&mut direct.headers);
            let ours = written(&direct, &adds);
            proptest::prop_assert_eq!(normal(&ours), normal(&through_the_map(p, &adds)));
        }
    }

    #[test]
    fn methods_map_to_the_engines() {
        assert_eq!(method(&http::Method::HEAD), Method::Head);
        assert_eq!(method(&http::Method::GET), Method::Get);
        assert!(!method(&http::Method::from_bytes(b"PURGE").unwrap()).idempotent());
    }
}
