//! The request path on stickyd's own HTTP/1 engine ([`crate::h1`]): the same steps as
//! [`Proxy::handle`] (check, affinity input, attempts, record, response), driven inline in the
//! client connection's task, from the received bytes to the sent bytes.
//!
//! Per request: one read of the head (usually), one write of the upstream head with whatever
//! body was received with it, one read of the response head, one write of the response head
//! with whatever body came with it. The upstream connection is a bare stream taken from the
//! worker's [`Pool`](crate::upstream::raw::Pool) and parked there again when both messages were
//! complete; no task, channel or header map on the way.
//!
//! Safety rules (each has a regression test):
//! - A request body is forwarded with exactly one framing, the one the parser chose; a
//!   message the parser refuses gets its 4xx and the connection closes, nothing forwarded.
//! - A response that came before its request body was forwarded whole ends both connections:
//!   the rest of the body is never read as a next request (Pingora CVE-2025-4366).
//! - An upgrade becomes a tunnel only after the backend's `101` (CVE-2026-2833); until then the
//!   bytes are HTTP.
//! - A backend connection is reused only when both messages on it ended where their framing
//!   says, with nothing unread.
//!
//! The engine hands a connection to hyper when it starts with the HTTP/2 preface (h2c prior
//! knowledge) and, at a request boundary, when the pool has HTTP/2 backends (hyper's client
//! speaks to those): [`Ended::Handoff`] carries the bytes already read.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::attempt::Retries;
use super::response::{Issued, issue};
use super::{ConnInfo, Proxy};
use crate::access::Pending;
use crate::affinity::{self, Route};
use crate::backend::InFlight;
use crate::clock::Now;
use crate::connect::{self, Direct as Stream};
use crate::error::ProxyError;
use crate::h1::chunked::{self, Decoder};
use crate::h1::parse::{self, Limits};
use crate::h1::write::{self, Connection, Forward, Reply};
use crate::h1::{Body, Field, RequestHead, ResponseHead, Version};
use crate::io::{Deadline, Wait};
use crate::rt::{Signal, Waiting, spare};
use crate::state::{Backend, Snapshot};

/// What the client connection's buffer starts with; grown up to `max_header_bytes` for a head.
const READ_BUF: usize = 8 * 1024;
/// The backend side's read buffer: a response head and a 16-32 KiB body in one or two reads.
const DOWN_BUF: usize = 32 * 1024;
/// Room kept before a response head in the upstream buffer, so that the rewritten head (with
/// Set-Cookie) can be slid in front of the body already received and both sent in one write.
const HEADROOM: usize = 512;
/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection served by the engine ended.
pub(crate) enum Ended<S> {
    /// Closed: by either side, after a refusal or an error, or at the end of a tunnel.
    Closed,
    /// To be served by hyper from here on, these bytes first (see the module documentation).
    Handoff(Vec<u8>, S),
}

/// A client stream the engine can wait on without holding a buffer.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin {
    /// Whether closing takes a shutdown first: TLS sends its close_notify there. A plain
    /// socket is closed by dropping it, which sends the same FIN as `shutdown(SHUT_WR)`
    /// would, one system call fewer per connection.
    const SHUTDOWN: bool;

    /// Ready when a read would not block (or the stream cannot tell: then at once).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ClientIo for tokio::net::TcpStream {
    const SHUTDOWN: bool = false;

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    const SHUTDOWN: bool = true;

    fn poll_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // rustls may hold plaintext already read: only a read can tell.
        Poll::Ready(Ok(()))
    }
}

impl<S: ClientIo> ClientIo for crate::io::SendTimeout<S> {
    const SHUTDOWN: bool = S::SHUTDOWN;

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_readable(cx)
    }
}

/// The bounds of a head, request or response, from `[server]`.
pub(super) fn limits(snap: &Snapshot) -> Limits {
    let cfg = &snap.config.server;
    Limits {
        max_head: cfg.max_header_bytes,
        max_headers: cfg.max_headers,
    }
}

/// The bounds of a request head and of the wait for it, from `[server]`.
fn bounds(snap: &Snapshot) -> (Limits, Duration) {
    (limits(snap), snap.config.server.header_read_timeout)
}

/// The client side of a connection: its stream and buffers.
struct Client<S> {
    io: S,
    /// Received and not yet consumed: a head, a body, pipelined requests.
    buf: Vec<u8>,
    /// The parsed head's header lines.
    fields: Vec<Field>,
    /// The backend's response head's lines.
    rfields: Vec<Field>,
    /// Bytes on their way to the backend: the upstream head, re-framed body.
    up: Vec<u8>,
    /// The backend's bytes: a response head (after [`HEADROOM`]), then its body.
    down: Vec<u8>,
    /// Bytes on their way to the client, when they cannot be sent from `down`.
    out: Vec<u8>,
    deadline: Deadline,
    /// Whether the connection may serve another request after this one.
    first: bool,
}

impl<S> Client<S> {
    /// Gives the buffers back to the worker (the connection is idle).
    fn release(&mut self) {
        for b in [&mut self.buf, &mut self.up, &mut self.down, &mut self.out] {
            spare::give(std::mem::take(b));
        }
        // The field lists stay (a few hundred bytes): grown again per request they cost
        // more than they weigh; an unusually long one is dropped.
        for f in [&mut self.fields, &mut self.rfields] {
            if f.capacity() > 64 {
                *f = Vec::new();
            }
        }
    }

    /// The connection for hyper, with the bytes read and not yet served.
    fn handoff(mut self) -> Ended<S> {
        let read = std::mem::take(&mut self.buf);
        self.release();
        Ended::Handoff(read, self.io)
    }
}

/// `b`, with room for `cap` bytes: a spare buffer of the worker's when it has none.
fn ready(b: &mut Vec<u8>, cap: usize) {
    if b.capacity() == 0 {
        *b = spare::take(cap);
    }
}

/// What reading a head gave.
enum Head {
    Parsed(RequestHead),
    Refused(u16, &'static str),
    Closed,
    Handoff,
}

/// A backend's answer to the attempt that got one: its connection and the parsed head.
struct Answer {
    route: Route,
    /// Held until the response body is done.
    guard: InFlight,
    sent: Sent,
}

impl Proxy {
    /// Serves an HTTP/1 client connection until it ends or must be handed to hyper.
    pub(crate) async fn serve_h1<S: ClientIo>(
        &self,
        io: S,
        info: &ConnInfo,
        draining: &Rc<Signal>,
    ) -> Ended<S> {
        let mut drained = Signal::waiter(draining);
        let mut c = Client {
            io,
            buf: Vec::new(),
            fields: Vec::new(),
            rfields: Vec::new(),
            up: Vec::new(),
            down: Vec::new(),
            out: Vec::new(),
            deadline: Deadline::new(),
            first: true,
        };
        // The head's bounds come from the snapshot of the request before (a reload applies
        // to them from the next request on); each request is served with the snapshot loaded
        // once its head is in.
        let (mut limits, mut header_timeout) = bounds(&self.shared.load());
        loop {
            let head = match read_head(&mut c, &limits, header_timeout, &mut drained).await {
                Head::Parsed(h) => h,
                Head::Closed => {
                    c.release();
                    return Ended::Closed;
                }
                Head::Handoff => return c.handoff(),
                Head::Refused(status, why) => {
                    self.refuse(&mut c, status, why).await;
                    c.release();
                    return Ended::Closed;
                }
            };
            let snap = self.shared.load();
            let routed = super::pick_pool(
                &snap,
                head.authority.or(head.host).map(|h| h.of(&c.buf)),
                head.path.of(&c.buf),
                info,
            );
            if let Ok(ix) = routed
                && snap.pools[ix].has_h2
            {
                // hyper's client speaks to HTTP/2 backends: hyper serves this connection from
                // this request on (its bytes are all still in the buffer).
                return c.handoff();
            }
            (limits, header_timeout) = bounds(&snap);
            c.first = false;
            let keep = self
                .exchange(&snap, routed, &mut c, &head, info, draining.fired())
                .await;
            if !keep || draining.fired() {
                if S::SHUTDOWN {
                    let _ = c.io.shutdown().await;
                }
                c.release();
                return Ended::Closed;
            }
        }
    }

    /// A refused head: its 4xx, counted, and the connection closes.
    async fn refuse<S: ClientIo>(&self, c: &mut Client<S>, status: u16, why: &'static str) {
        c.out.clear();
        write::error_response(&mut c.out, status, why, None, true);
        let _ = c.io.write_all(&c.out).await;
        if S::SHUTDOWN {
            let _ = c.io.shutdown().await;
        }
        self.shared.metrics.response(status);
        debug!(status, reason = why.trim_end(), "request refused");
    }

    /// One request, from its parsed head to the end of its response. Returns whether the
    /// client connection may carry another request.
    /// `routed` is the request's pool, or why it has none (404, 421).
    async fn exchange<S: ClientIo>(
        &self,
        snap: &Snapshot,
        routed: Result<usize, ProxyError>,
        c: &mut Client<S>,
        head: &RequestHead,
        info: &ConnInfo,
        draining: bool,
    ) -> bool {
        let now = Now::read();
        let mut log = self
            .shared
            .access
            .as_ref()
            .map(|l| pending(l, &c.buf, head, info, &now));
        let ix = routed.as_ref().map_or(0, |&ix| ix);
        let answer = match routed {
            Ok(ix) => {
                if let Some(p) = log.as_mut() {
                    p.pool(snap.pools[ix].name.clone());
                }
                self.forward_h1(snap, ix, c, head, info, &now).await
            }
            Err(e) => Err(e),
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                let retry_after = snap.pool_config(ix).balance.retry_after;
                return self.answer_error(c, head, e, retry_after, &now, log).await;
            }
        };
        let status = answer.sent.head.status;
        self.record(snap, ix, &answer.route, status, &now, &mut log);
        self.respond(snap, ix, c, head, info, answer, &now, log, draining)
            .await
    }

    /// The request's affinity input, its upstream head written into `c.up`, and the attempts.
    async fn forward_h1<S: ClientIo>(
        &self,
        snap: &Snapshot,
        ix: usize,
        c: &mut Client<S>,
        head: &RequestHead,
        info: &ConnInfo,
        now: &Now,
    ) -> Result<Answer, ProxyError> {
        let pool = &snap.pools[ix];
        let input = affinity::read_fields(
            &pool.source,
            &pool.rings,
            &c.buf,
            &c.fields,
            info.peer.ip(),
            |ip| snap.is_trusted(ip),
        );
        c.up.clear();
        ready(&mut c.up, READ_BUF);
        let (cookie, token_header) = pool.source.carriers();
        write::request_head(
            &mut c.up,
            &c.buf,
            head,
            &c.fields,
            &Forward {
                peer: info.peer_value.as_bytes(),
                trusted: snap.is_trusted(info.peer.ip()),
                proto: if info.tls { b"https" } else { b"http" },
                via: snap
                    .via(match head.version {
                        Version::H10 => http::Version::HTTP_10,
                        Version::H11 => http::Version::HTTP_11,
                    })
                    .map(|v| v.as_bytes()),
                cookie: cookie.map(str::as_bytes),
                other_cookies: &pool.other_cookies,
                token_header: token_header.map(|n| n.as_str().as_bytes()),
                close: head.close_after,
            },
        );
        let head_len = c.up.len();
        self.attempts_h1(snap, ix, c, head, input, now, head_len)
            .await
    }

    /// The error response to a request that got no backend's answer. Returns whether the client
    /// connection may go on.
    async fn answer_error<S: ClientIo>(
        &self,
        c: &mut Client<S>,
        head: &RequestHead,
        e: ProxyError,
        retry_after: std::time::Duration,
        now: &Now,
        log: Option<Pending>,
    ) -> bool {
        {
            {
                let status = e.status().as_u16();
                // After a refusal, or with a request body left unread, nothing more can be read.
                let close = matches!(
                    e,
                    ProxyError::BadRequest(_)
                        | ProxyError::NotImplemented(_)
                        | ProxyError::ClientTimeout
                ) || !head.keep_alive
                    || head.body != Body::None;
                c.out.clear();
                write::error_response(
                    &mut c.out,
                    status,
                    e.body(),
                    e.retry_after(retry_after),
                    close,
                );
                // Counted before the write, as the hyper path does: a client that has the
                // response sees it counted.
                self.shared.metrics.response(status);
                self.shared.metrics.latency.record(now.mono.elapsed());
                let ok = c.io.write_all(&c.out).await.is_ok();
                if let Some(p) = log {
                    p.finish(status, e.body().len() as u64);
                }
                if matches!(e, ProxyError::BadRequest(_) | ProxyError::NotImplemented(_)) {
                    debug!(error = %e, "request refused");
                }
                // The request's head leaves the buffer (a kept connection's request had no
                // body): what stays is the next request, never this one again.
                c.buf.drain(..head.len.min(c.buf.len()));
                ok && !close
            }
        }
    }

    /// Runs attempts until a backend answers or no safe retry is left (the rules of
    /// `proxy::attempt`). `c.up[..head_len]` is the upstream head.
    #[allow(clippy::too_many_arguments)]
    async fn attempts_h1<S: ClientIo>(
        &self,
        snap: &Snapshot,
        pool: usize,
        c: &mut Client<S>,
        head: &RequestHead,
        input: affinity::Input,
        now: &Now,
        head_len: usize,
    ) -> Result<Answer, ProxyError> {
        let mut tries = Retries::new(snap, pool);
        let idempotent = head.method.idempotent();
        loop {
            let route = tries.route(snap, input, now)?;
            let backend = &snap.backends[route.backend];
            let guard = InFlight::start(&backend.live);
            c.up.truncate(head_len);
            if let Some(r) = tries.replica(snap, &route) {
                write::replica_fields(&mut c.up, head_len, &r);
            }
            let sent = self
                .send_h1(snap, c, head, route.backend, backend, now.mono)
                .await;
            let e = match sent {
                Ok(sent) => return Ok(Answer { route, guard, sent }),
                Err(Failure::Client(e)) => return Err(e),
                Err(Failure::Backend { error, replayable }) => (error, replayable),
            };
            drop(guard);
            let (e, replayable) = e;
            let retry = tries.left() && replayable && e.retryable(idempotent);
            tries.failed(self, snap, route.backend, e, retry)?;
        }
    }

    /// One attempt on one backend: a connection (an idle one, else a new one), the request
    /// head and body, the response head. A reused connection that turns out closed before any
    /// response byte is replaced by a new one once, when the request can be sent again.
    async fn send_h1<S: ClientIo>(
        &self,
        snap: &Snapshot,
        c: &mut Client<S>,
        head: &RequestHead,
        index: usize,
        backend: &Backend,
        now: std::time::Instant,
    ) -> Result<Sent, Failure> {
        let mut reused = if head.upgrade.is_some() {
            None
        } else {
            self.idle(index, backend, !head.method.idempotent(), now)
        };
        let head_len = c.up.len();
        loop {
            let was_reused = reused.is_some();
            let mut up = match reused.take() {
                Some(s) => s,
                None => dial(snap, backend)
                    .await
                    .map_err(|error| Failure::Backend {
                        error,
                        replayable: true,
                    })?,
            };
            c.up.truncate(head_len);
            match exchange_on(&mut up, c, head, snap).await {
                Ok((resp, fields, body_used, rest)) => {
                    return Ok(Sent {
                        up,
                        head: resp,
                        fields,
                        body_used,
                        rest,
                    });
                }
                Err(Failure::Backend { error, replayable })
                    if was_reused && replayable && matches!(error, ProxyError::Reset(_)) =>
                {
                    // A keep-alive race: the backend closed the idle connection as the request
                    // went out. Nothing was answered; a new connection gets it.
                    debug!(backend = %backend.id, error = %error, "reused connection was closed; retrying on a new one");
                    continue;
                }
                Err(f) => return Err(f),
            }
        }
    }

    /// The most recently parked connection to `backend` (at `index` in the snapshot), if any;
    /// `careful` (a request that must not be retried): only one checked not closed by the
    /// backend meanwhile, a non-blocking peek.
    pub(super) fn idle(
        &self,
        index: usize,
        backend: &Backend,
        careful: bool,
        now: std::time::Instant,
    ) -> Option<Stream> {
        let s = self.pool.take(index, &backend.authority, now)?;
        (!careful || s.idle_and_open()).then_some(s)
    }

    /// The response to the client: the head rewritten (hop-by-hop out, the token in), the body
    /// relayed with the framing the client can read; the backend connection parked when both
    /// messages ended cleanly. Returns whether the client connection may go on.
    #[allow(clippy::too_many_arguments)]
    async fn respond<S: ClientIo>(
        &self,
        snap: &Snapshot,
        pool: usize,
        c: &mut Client<S>,
        head: &RequestHead,
        info: &ConnInfo,
        a: Answer,
        now: &Now,
        mut log: Option<Pending>,
        draining: bool,
    ) -> bool {
        let Answer {
            route,
            guard,
            sent:
                Sent {
                    mut up,
                    head: resp,
                    fields,
                    body_used,
                    mut rest,
                },
        } = a;
        let sent_whole = rest.is_none();
        let client_timeout = snap.config.server.client_timeout;
        let client_11 = head.version == Version::H11;
        let switching = resp.status == 101 && head.upgrade.is_some();
        // The client's framing: what the backend sent when the client can read it, else
        // re-framed (chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0).
        let to_client = match (resp.body, client_11) {
            (Body::Chunked, false) => Body::Close,
            (Body::Close, true) if !switching => Body::Chunked,
            (b, _) => b,
        };
        let client_keeps = head.keep_alive
            && !head.close_after
            && sent_whole
            && to_client != Body::Close
            && !switching
            && !draining;
        let connection = if switching {
            Connection::Upgrade(upgrade_value(&c.down[HEADROOM..], &fields))
        } else if !client_keeps {
            Connection::Close
        } else if !client_11 {
            Connection::KeepAlive
        } else {
            Connection::Default
        };
        let issued = route
            .issue
            .as_ref()
            .map(|claims| issue(&snap.pools[pool], claims, now.unix_u32(), info.tls));
        let (set_cookie, token_header) = match &issued {
            Some(Issued::Cookie(v)) => (Some(v.as_bytes()), None),
            Some(Issued::Header(name, token)) => (
                None,
                Some((name.as_str().as_bytes(), token.as_str().as_bytes())),
            ),
            None => (None, None),
        };
        c.out.clear();
        ready(&mut c.out, READ_BUF);
        let body_at = HEADROOM + resp.len;
        write::response_head(
            &mut c.out,
            &c.down[HEADROOM..],
            &resp,
            &fields,
            &Reply {
                body: to_client,
                connection,
                set_cookie,
                token: token_header,
                private: route.issue.is_some(),
            },
        );
        let status = resp.status;
        let m = &self.shared.metrics;
        // Counted when the head is ready, as the hyper path does (the latency is the time to
        // the response head): a client that has the response sees it counted.
        m.response(status);
        m.latency.record(now.mono.elapsed());
        // The body bytes that came with the head, and the relay of the rest.
        let mut relay = Relay::new(resp.body, to_client);
        let mut sent: u64 = 0;
        let mut ok = true;
        let mut clean = true;
        // Slide the new head in front of the body already received when it fits.
        let avail = c.down.len() - body_at;
        let first = relay.step_all(&c.down[body_at..], &mut c.out);
        let first = match first {
            Ok(x) => x,
            Err(_) => {
                clean = false;
                ok = false;
                Step::default()
            }
        };
        if ok && switching {
            // The 101 and whatever the backend sent after it; the client's bytes sent after
            // its request go to the backend; then the tunnel, until both sides are done.
            c.out.extend_from_slice(&c.down[body_at..]);
            let rest = (head.len + body_used).min(c.buf.len());
            let mut tunnel = c.io.write_all(&c.out).await.is_ok();
            if tunnel && rest < c.buf.len() {
                tunnel = up.write_all(&c.buf[rest..]).await.is_ok();
            }
            if let Some(p) = log.take() {
                p.finish(101, 0);
            }
            if tunnel {
                c.buf = Vec::new();
                c.down = Vec::new();
                let end = Box::pin(crate::tunnel::copy(
                    &mut c.io,
                    &mut up,
                    snap.config.upstream.tunnel_idle_timeout,
                    self.cut.clone(),
                ))
                .await;
                debug!(end = ?end, "tunnel closed");
            }
            drop(guard);
            return false;
        }
        // A response received whole leaves the backend's in-flight count before the client
        // gets it, as it is counted among the responses before (a client that has the
        // response sees both); a streamed one when its relay ends.
        let mut guard = Some(guard);
        if ok && first.done {
            guard = None;
        }
        if ok {
            let direct = first.direct;
            let written = if direct > 0 && c.out.len() <= body_at {
                let start = body_at - c.out.len();
                let out_len = c.out.len();
                c.down[start..body_at].copy_from_slice(&c.out[..out_len]);
                c.io.write_all(&c.down[start..body_at + direct]).await
            } else {
                if direct > 0 {
                    c.out.extend_from_slice(&c.down[body_at..body_at + direct]);
                }
                c.io.write_all(&c.out).await
            };
            sent += first.body_bytes;
            ok = written.is_ok();
            // Bytes after the response's end: the backend broke framing; never reused.
            if first.done && first.consumed < avail {
                clean = false;
            }
            // What the relay did not take (a chunk size line cut short) is presented again
            // with the next bytes.
            c.down.drain(..body_at + first.consumed);
            if !first.done && ok {
                let relayed = match rest.take() {
                    None => {
                        relay_response(&mut up, &mut c.io, &mut c.down, &mut c.out, &mut relay)
                            .await
                    }
                    Some(req) => {
                        Box::pin(duplex(&mut up, c, head, req, &mut relay, client_timeout)).await
                    }
                };
                sent += relayed.bytes;
                ok = relayed.ok;
                clean &= relayed.clean;
            }
        }
        let reuse = ok
            && clean
            && resp.keep_alive
            && sent_whole
            && !head.close_after
            && !switching
            && head.upgrade.is_none();
        if reuse {
            // Parked as of the request's start: at worst it ages out a request's length early.
            self.pool.put(
                route.backend,
                &snap.backends[route.backend].authority,
                up,
                now.mono,
            );
        }
        drop(guard);
        if let Some(p) = log {
            p.finish(status, sent);
        }
        // The request's bytes leave the buffer; a pipelined request behind them stays.
        let used = (head.len + body_used).min(c.buf.len());
        c.buf.drain(..used);
        c.rfields = fields;
        ok && client_keeps
    }
}

/// A new connection to `backend`, within `connect_timeout`. Boxed, like every rare or large
/// step: a connection's task is as large as its largest await, and it lives as long as the
/// connection (memory per idle connection).
pub(super) async fn dial(snap: &Snapshot, backend: &Backend) -> Result<Stream, ProxyError> {
    Box::pin(connect::open_direct(
        backend.authority.as_str(),
        backend.origin.as_ref(),
        snap.config.upstream.connect_timeout,
    ))
    .await
    .map_err(|e| ProxyError::Connect(e.to_string()))
}

/// How relaying a response body went.
struct Relayed {
    /// Body bytes sent to the client.
    bytes: u64,
    /// The body was relayed to its end.
    ok: bool,
    /// Nothing came after the body's end (the connection may be reused).
    clean: bool,
}

/// Relays the rest of a response body from `up` to `client` (`down` holds bytes already read
/// and not yet taken by the relay).
async fn relay_response<R, W>(
    up: &mut R,
    client: &mut W,
    down: &mut Vec<u8>,
    out: &mut Vec<u8>,
    relay: &mut Relay,
) -> Relayed
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = Relayed {
        bytes: 0,
        ok: false,
        clean: true,
    };
    loop {
        down.reserve(DOWN_BUF);
        let Ok(n) = up.read_buf(down).await else {
            r.clean = false;
            return r;
        };
        let eof = n == 0;
        out.clear();
        let step = if eof {
            relay.finish(out)
        } else {
            relay.step_all(down, out)
        };
        let Ok(step) = step else {
            r.clean = false;
            return r;
        };
        let written = if step.direct > 0 {
            client.write_all(&down[..step.direct]).await
        } else if !out.is_empty() {
            client.write_all(out).await
        } else {
            Ok(())
        };
        r.bytes += step.body_bytes;
        if step.done && step.consumed < down.len() {
            r.clean = false;
        }
        down.drain(..step.consumed);
        if written.is_err() {
            r.clean = false;
            return r;
        }
        if step.done {
            r.ok = true;
            return r;
        }
        if eof {
            // Cut short by the backend.
            r.clean = false;
            return r;
        }
    }
}

/// The rest of a request body the backend began to answer before it was sent whole.
struct RestOfBody {
    relay: Relay,
    /// Bytes of the client buffer after the head already used.
    used: usize,
}

/// Relays the response while the rest of the request body still goes to the backend (an echo,
/// a backend streaming its answer as it reads). When the response ends first, the rest of the
/// request body is left unread: the client connection closes after the response (it was
/// announced), and the backend connection is not reused.
async fn duplex<S: ClientIo>(
    up: &mut Stream,
    c: &mut Client<S>,
    head: &RequestHead,
    mut rest: RestOfBody,
    relay: &mut Relay,
    client_timeout: Duration,
) -> Relayed {
    let Client {
        io,
        buf,
        up: up_buf,
        down,
        out,
        ..
    } = c;
    let (mut ur, mut uw) = tokio::io::split(up);
    let (mut cr, mut cw) = tokio::io::split(io);
    let response = relay_response(&mut ur, &mut cw, down, out, relay);
    let request = async {
        let mut deadline = Deadline::new();
        loop {
            make_room(buf, head.len, &mut rest.used);
            let mut wait = Wait::new(client_timeout);
            match read_within(&mut cr, buf, &mut wait, &mut deadline).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            match forward_body(&mut uw, buf, head.len + rest.used, up_buf, &mut rest.relay).await {
                Ok(step) => {
                    rest.used += step.consumed;
                    if step.done {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    };
    tokio::pin!(response, request);
    let mut request_done = false;
    loop {
        tokio::select! {
            r = &mut response => {
                // The request's unread rest is never read as a next request.
                return Relayed { clean: r.clean && request_done, ..r };
            }
            whole = &mut request, if !request_done => {
                request_done = true;
                if !whole {
                    // The client's body failed: the exchange cannot complete.
                    return Relayed { bytes: 0, ok: false, clean: false };
                }
            }
        }
    }
}

/// A sent attempt's result.
struct Sent {
    up: Stream,
    head: ResponseHead,
    fields: Vec<Field>,
    body_used: usize,
    /// The request body's rest, when the backend answered before it was sent whole.
    rest: Option<RestOfBody>,
}

/// Why an attempt failed.
enum Failure {
    /// The client's fault (a bad or stalled body): its 4xx, no retry, nothing counted against
    /// the backend.
    Client(ProxyError),
    /// The backend's: counted; `replayable` when the request can be sent again.
    Backend { error: ProxyError, replayable: bool },
}

/// Sends the request (head in `c.up`, body from `c.buf` and then the client) on `up` and reads
/// the response head into `c.down`. 1xx responses other than 101 are dropped (stickyd answers
/// `Expect: 100-continue` itself) . Returns the head, its fields, whether the request body
/// went whole, and how many body bytes of `c.buf` it used.
async fn exchange_on<S: ClientIo>(
    up: &mut Stream,
    c: &mut Client<S>,
    head: &RequestHead,
    snap: &Snapshot,
) -> Result<(ResponseHead, Vec<Field>, usize, Option<RestOfBody>), Failure> {
    let ucfg = &snap.config.upstream;
    let scfg = &snap.config.server;
    let limits = limits(snap);
    let reset = |e: io::Error| Failure::Backend {
        error: ProxyError::Reset(e.to_string()),
        replayable: true,
    };
    // The body received with the head goes in the same write.
    let mut body = Relay::new(head.body, head.body);
    let have = &c.buf[head.len..];
    let first = body
        .step_all(have, &mut c.up)
        .map_err(|_| Failure::Client(ProxyError::BadRequest("invalid request body\n")))?;
    if first.direct > 0 {
        c.up.extend_from_slice(&have[..first.direct]);
    }
    let mut body_used = first.consumed;
    let mut rest: Option<RestOfBody> = None;
    // Only a body received whole with the head can be sent again by a retry.
    let replayable = first.done;
    c.down.clear();
    ready(&mut c.down, HEADROOM + DOWN_BUF);
    c.down.resize(HEADROOM, 0);
    up.write_all(&c.up).await.map_err(reset)?;
    if !first.done {
        // The rest of the body streams from the client while the backend may already answer.
        if head.expect_continue && c.buf.len() == head.len {
            c.io.write_all(write::CONTINUE)
                .await
                .map_err(|_| Failure::Client(ProxyError::ClientTimeout))?;
        }
        // From here on the body cannot be sent again.
        let streamed = Box::pin(stream_body(
            up,
            c,
            head,
            &mut body,
            body_used,
            scfg.client_timeout,
        ))
        .await;
        match streamed {
            Ok(Streamed::Whole(used)) => body_used = used,
            Ok(Streamed::Answered(used)) => {
                body_used = used;
                rest = Some(RestOfBody {
                    relay: std::mem::replace(&mut body, Relay::new(Body::None, Body::None)),
                    used,
                });
            }
            Err(StreamError::Client(e)) => return Err(Failure::Client(e)),
            Err(StreamError::Backend(e)) => {
                return Err(Failure::Backend {
                    error: ProxyError::Reset(e.to_string()),
                    replayable: false,
                });
            }
        }
    }
    // The response head, within the response timeout.
    let mut wait = Wait::new(ucfg.response_timeout);
    let mut fields = std::mem::take(&mut c.rfields);
    // An interim response came: the request was read, whatever happens next.
    let mut answered = false;
    loop {
        if c.down.len() > HEADROOM {
            match parse::response(&c.down[HEADROOM..], &limits, head.method, &mut fields) {
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                    // An interim response: dropped, and the final one read after it. The
                    // backend has read the request: it is never sent again.
                    c.down.drain(HEADROOM..HEADROOM + h.len);
                    answered = true;
                    continue;
                }
                Ok(Some(h)) if h.status == 101 && head.upgrade.is_none() => {
                    return Err(Failure::Backend {
                        error: ProxyError::Protocol("101 to a request for no upgrade".into()),
                        replayable: false,
                    });
                }
                Ok(Some(h)) => return Ok((h, fields, body_used, rest)),
                Ok(None) if c.down.len() - HEADROOM >= limits.max_head => {
                    return Err(Failure::Backend {
                        error: ProxyError::Protocol("response head too large".into()),
                        replayable: false,
                    });
                }
                Ok(None) => {}
                Err(bad) => {
                    return Err(Failure::Backend {
                        error: ProxyError::Protocol(bad.0.into()),
                        replayable: false,
                    });
                }
            }
        }
        c.down.reserve(DOWN_BUF);
        let got = read_within(up, &mut c.down, &mut wait, &mut c.deadline).await;
        match got {
            Ok(0) if c.down.len() == HEADROOM && !answered => {
                return Err(Failure::Backend {
                    error: ProxyError::Reset("connection closed before the response".into()),
                    replayable,
                });
            }
            Ok(0) => {
                return Err(Failure::Backend {
                    error: ProxyError::Protocol("connection closed in the response head".into()),
                    replayable: false,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(Failure::Backend {
                    error: ProxyError::Timeout,
                    replayable: false,
                });
            }
            Err(e) => {
                return Err(Failure::Backend {
                    error: ProxyError::Reset(e.to_string()),
                    replayable: replayable && c.down.len() == HEADROOM && !answered,
                });
            }
        }
    }
}

/// How streaming a request body ended.
enum Streamed {
    /// Sent whole; the client buffer's bytes used up to here.
    Whole(usize),
    /// The backend answered before the body was sent whole.
    Answered(usize),
}

enum StreamError {
    Client(ProxyError),
    Backend(io::Error),
}

/// Streams the rest of a request body from the client to `up`, watching `up` for an early
/// response (read into `c.down`, after [`HEADROOM`]). Client bytes are read into `c.buf` after
/// what was used; once the buffer fills, used bytes are dropped.
async fn stream_body<S: ClientIo>(
    up: &mut Stream,
    c: &mut Client<S>,
    head: &RequestHead,
    body: &mut Relay,
    mut used: usize,
    client_timeout: Duration,
) -> Result<Streamed, StreamError> {
    loop {
        make_room(&mut c.buf, head.len, &mut used);
        // Wait for client bytes, or for the backend to answer early.
        let mut wait = Wait::new(client_timeout);
        let got = poll_fn(|cx| {
            if let Poll::Ready(r) = poll_read_into(up, cx, &mut c.down) {
                return Poll::Ready(Event::Upstream(r));
            }
            if let Poll::Ready(r) = poll_read_into(&mut c.io, cx, &mut c.buf) {
                return Poll::Ready(Event::Client(r));
            }
            ready!(wait.poll_expired(cx, &mut c.deadline));
            Poll::Ready(Event::TimedOut)
        })
        .await;
        match got {
            Event::Upstream(Ok(0)) => {
                return Err(StreamError::Backend(io::ErrorKind::UnexpectedEof.into()));
            }
            Event::Upstream(Ok(_)) => return Ok(Streamed::Answered(used)),
            Event::Upstream(Err(e)) => return Err(StreamError::Backend(e)),
            Event::Client(Ok(0)) => {
                return Err(StreamError::Client(ProxyError::BadRequest(
                    "invalid request body\n",
                )));
            }
            Event::Client(Ok(_)) => {}
            Event::Client(Err(_)) | Event::TimedOut => {
                return Err(StreamError::Client(ProxyError::ClientTimeout));
            }
        }
        let step = forward_body(up, &c.buf, head.len + used, &mut c.up, body)
            .await
            .map_err(|e| match e {
                BodyError::Bad => {
                    StreamError::Client(ProxyError::BadRequest("invalid request body\n"))
                }
                BodyError::Write(e) => StreamError::Backend(e),
            })?;
        used += step.consumed;
        if step.done {
            return Ok(Streamed::Whole(used));
        }
    }
}

/// Makes room in the client buffer for more of a request body: once a read's worth has been
/// forwarded, it is dropped (the head stays: the writer's spans point into it).
fn make_room(buf: &mut Vec<u8>, head_len: usize, used: &mut usize) {
    if *used > 0 && buf.len() - head_len >= READ_BUF {
        buf.drain(head_len..head_len + *used);
        *used = 0;
    }
    buf.reserve(READ_BUF * 2);
}

/// Why forwarding request body bytes failed.
enum BodyError {
    /// The client's body is malformed (a bad chunk).
    Bad,
    /// The backend's side failed.
    Write(io::Error),
}

/// Forwards the body bytes of `buf` from `from` to `up`: as they are, or re-framed through
/// `scratch`. The step says how many were used and whether the body ended.
async fn forward_body<W: AsyncWrite + Unpin>(
    up: &mut W,
    buf: &[u8],
    from: usize,
    scratch: &mut Vec<u8>,
    relay: &mut Relay,
) -> Result<Step, BodyError> {
    scratch.clear();
    let step = relay
        .step_all(&buf[from..], scratch)
        .map_err(|_| BodyError::Bad)?;
    let written = if step.direct > 0 {
        up.write_all(&buf[from..from + step.direct]).await
    } else {
        up.write_all(scratch).await
    };
    written.map_err(BodyError::Write)?;
    Ok(step)
}

enum Event {
    Upstream(io::Result<usize>),
    Client(io::Result<usize>),
    TimedOut,
}

/// One read into the spare room of `buf` (grown when it has none).
fn poll_read_into<R: AsyncRead + Unpin>(
    r: &mut R,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(r), cx, buf)
}

/// One read from `r` into `buf`, within `wait`.
async fn read_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    wait: &mut Wait,
    d: &mut Deadline,
) -> io::Result<usize> {
    poll_fn(|cx| {
        if let Poll::Ready(r) = poll_read_into(r, cx, buf) {
            return Poll::Ready(r);
        }
        ready!(wait.poll_expired(cx, d));
        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
    })
    .await
}

/// Reads until a request head is complete (or refused), within `header_read_timeout` counted
/// from the first wait; while nothing is buffered the buffers are released and the connection
/// waits for readability alone (an idle connection holds no buffer), and ends on draining.
async fn read_head<S: ClientIo>(
    c: &mut Client<S>,
    limits: &Limits,
    timeout: Duration,
    drained: &mut Waiting,
) -> Head {
    let mut wait = Wait::new(timeout);
    loop {
        if !c.buf.is_empty() {
            if c.first && PREFACE.starts_with(&c.buf[..c.buf.len().min(PREFACE.len())]) {
                if c.buf.len() >= PREFACE.len() {
                    return Head::Handoff;
                }
            } else {
                match parse::request(&c.buf, limits, &mut c.fields) {
                    Ok(Some(h)) => return Head::Parsed(h),
                    Ok(None) if c.buf.len() >= limits.max_head => {
                        return Head::Refused(431, "request header fields too large\n");
                    }
                    Ok(None) => {}
                    Err(r) => return Head::Refused(r.status, r.reason),
                }
            }
        } else {
            let ready = poll_fn(|cx| {
                if let Poll::Ready(r) = c.io.poll_readable(cx) {
                    return Poll::Ready(r.is_ok());
                }
                // Idle: no buffer held while waiting (memory per idle connection); the
                // worker keeps them for the next request, of this connection or another.
                if c.buf.capacity() > 0 {
                    c.release();
                }
                if drained.poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                ready!(wait.poll_expired(cx, &mut c.deadline));
                Poll::Ready(false)
            })
            .await;
            if !ready {
                return Head::Closed;
            }
        }
        if c.buf.capacity() == 0 {
            c.buf = spare::take(READ_BUF);
        } else if c.buf.capacity() - c.buf.len() < 1024 {
            c.buf.reserve(READ_BUF.max(c.buf.len()));
        }
        match read_within(&mut c.io, &mut c.buf, &mut wait, &mut c.deadline).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {}
        }
    }
}

/// A body on its way: how it is delimited where it comes from, and where it goes.
struct Relay {
    from: From,
    to: Body,
}

enum From {
    Left(u64),
    Chunked(Decoder),
    Close,
    Done,
}

/// What one relay step did with its input.
#[derive(Default, Clone, Copy)]
struct Step {
    /// Input bytes used.
    consumed: usize,
    /// Input bytes to send as they are (a prefix of the input); else the output buffer.
    direct: usize,
    /// Body bytes (payload) relayed.
    body_bytes: u64,
    /// The body ended.
    done: bool,
}

impl Relay {
    fn new(from: Body, to: Body) -> Relay {
        Relay {
            from: match from {
                Body::None | Body::Length(0) => From::Done,
                Body::Length(n) => From::Left(n),
                Body::Chunked => From::Chunked(Decoder::new()),
                Body::Close => From::Close,
            },
            to,
        }
    }

    /// Relays as much of `input` as belongs to the body: either directly (a prefix of the input
    /// sent as it is: `Step::direct`), or re-framed into `out`.
    fn step_all(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Step, chunked::BadChunk> {
        match &mut self.from {
            From::Done => Ok(Step {
                done: true,
                ..Step::default()
            }),
            From::Left(left) => {
                let n = (*left).min(input.len() as u64) as usize;
                *left -= n as u64;
                let done = *left == 0;
                if done {
                    self.from = From::Done;
                }
                Ok(Step {
                    consumed: n,
                    direct: n,
                    body_bytes: n as u64,
                    done,
                })
            }
            From::Close => {
                let n = input.len();
                // Re-framed as chunks for an HTTP/1.1 client, else sent as it came.
                let direct = if self.to == Body::Chunked {
                    if n > 0 {
                        encode_chunk(out, input);
                    }
                    0
                } else {
                    n
                };
                Ok(Step {
                    consumed: n,
                    direct,
                    body_bytes: n as u64,
                    done: false,
                })
            }
            From::Chunked(dec) => {
                let mut at = 0;
                let mut bytes = 0u64;
                let reencode = self.to == Body::Chunked;
                loop {
                    let s = dec.decode(&input[at..])?;
                    if let Some(r) = s.data.clone() {
                        let data = &input[at + r.start..at + r.end];
                        bytes += data.len() as u64;
                        if reencode {
                            encode_chunk(out, data);
                        } else {
                            out.extend_from_slice(data);
                        }
                    }
                    if s.done {
                        if reencode {
                            let trailers =
                                s.trailers.clone().map(|r| &input[at + r.start..at + r.end]);
                            chunked::last_chunk(out, trailers.unwrap_or_default());
                        }
                        at += s.consumed;
                        self.from = From::Done;
                        return Ok(Step {
                            consumed: at,
                            direct: 0,
                            body_bytes: bytes,
                            done: true,
                        });
                    }
                    at += s.consumed;
                    if s.consumed == 0 || at >= input.len() {
                        return Ok(Step {
                            consumed: at,
                            direct: 0,
                            body_bytes: bytes,
                            done: false,
                        });
                    }
                }
            }
        }
    }

    /// The source ended (end of stream): a close-delimited body is complete, anything else
    /// was cut short.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<Step, chunked::BadChunk> {
        match self.from {
            From::Close => {
                if self.to == Body::Chunked {
                    chunked::last_chunk(out, &[]);
                }
                self.from = From::Done;
                Ok(Step {
                    done: true,
                    ..Step::default()
                })
            }
            From::Done => Ok(Step {
                done: true,
                ..Step::default()
            }),
            _ => Ok(Step::default()),
        }
    }
}

/// The access log line of a request served by the engine.
fn pending(
    log: &std::sync::Arc<crate::access::AccessLog>,
    buf: &[u8],
    head: &RequestHead,
    info: &ConnInfo,
    now: &Now,
) -> Pending {
    let method = http::Method::from_bytes(head.method_span.of(buf)).unwrap_or(http::Method::GET);
    let target = String::from_utf8_lossy(head.target.of(buf)).into_owned();
    let version = match head.version {
        Version::H10 => "HTTP/1.0",
        Version::H11 => "HTTP/1.1",
    };
    Pending::start(
        log,
        method,
        target,
        version,
        info.peer.ip(),
        now.mono,
        now.wall,
    )
}

/// One chunk of `data` (not empty) in the chunked coding.
fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    chunked::chunk_head(out, data.len() as u64);
    out.extend_from_slice(data);
    chunked::chunk_end(out);
}

/// The value of a 101's `Upgrade` field (empty when it has none: the client sees no protocol
/// and the tunnel still follows the backend's word).
fn upgrade_value<'a>(buf: &'a [u8], fields: &[Field]) -> &'a [u8] {
    fields
        .iter()
        .find(|f| f.kind == crate::h1::Name::Upgrade)
        .map_or(&[][..], |f| f.value.of(buf))
}

#[cfg(test)]
mod tests {
    /// A connection's task is as large as its largest await and lives as long as the
    /// connection, idle or not: what it holds is memory per idle connection (the rare and
    /// large steps are boxed). The bound catches a step that grows it by accident.
    #[tokio::test]
    async fn a_connections_state_stays_small() {
        let cfg = crate::config::parse_for_tests(
            "[server]\nlisten=[\"127.0.0.1:0\"]\n[[backend]]\nid=\"a\"\naddress=\"127.0.0.1:1\"\n",
        );
        let shared = std::sync::Arc::new(crate::state::Shared::new(cfg));
        let (_cut, cut) = tokio::sync::watch::channel(false);
        let up = crate::upstream::Upstream::new(&shared.load().config.upstream);
        let proxy = super::Proxy::new(shared, up, cut);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let info = super::ConnInfo::new("127.0.0.1:1".parse().unwrap(), false);
        let draining = std::rc::Rc::new(crate::rt::Signal::default());
        let io = crate::io::SendTimeout::new(s, std::time::Duration::from_secs(1));
        let served = proxy.serve_h1(io, &info, &draining);
        let size = std::mem::size_of_val(&served);
        assert!(size <= 3 * 1024, "{size} bytes");
    }
}
