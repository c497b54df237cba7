//! The heads stickyd sends: the upstream request head and the client response head, each
//! written from the received head's bytes into one buffer. Pure.
//!
//! Every function appends to a caller-owned `Vec<u8>` (reused across requests: once it has
//! grown, writing a head allocates nothing) and copies the received name and value bytes as
//! they came. What is left out or put in follows the header map's path rule for rule, through
//! the same functions in `headers` (the cookie pairs, X-Forwarded-For, which X-Forwarded-* a
//! trusted proxy keeps), so the two paths cannot drift apart. Never reads the clock, never
//! formats: numbers are written by [`push_decimal`].
//!
//! What must never happen here: a hop-by-hop field passed on, the affinity cookie or the token
//! header reaching a backend, a client choosing what stickyd adds (its own X-Forwarded-* from
//! an untrusted peer, a `Connection` naming them).

use super::{Body, Field, Name, RequestHead, ResponseHead};
use crate::headers;

/// The interim response stickyd sends itself to `Expect: 100-continue` (the field is not
/// forwarded): the client may send its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the proxy adds to, and leaves out of, a request head on its way to a backend.
#[derive(Debug, Clone, Copy)]
pub struct Forward<'a> {
    /// The client's address as text (the TCP peer, made once per connection).
    pub peer: &'a [u8],
    /// The peer is a trusted proxy: its X-Forwarded-For is appended to and its
    /// X-Forwarded-Proto/-Host are kept.
    pub trusted: bool,
    /// `http` or `https`: the client connection's scheme, for X-Forwarded-Proto.
    pub proto: &'a [u8],
    /// Appended as a `Via` field (e.g. `1.1 stickyd`).
    pub via: Option<&'a [u8]>,
    /// The affinity cookie's name (cookie mode): its pairs are left out of `Cookie`.
    pub cookie: Option<&'a [u8]>,
    /// The token header's name (header mode): left out.
    pub token_header: Option<&'a [u8]>,
    /// Add `Connection: close`: neither connection serves anything after this request.
    pub close: bool,
}

/// Writes the request head for a backend: the request line in origin form and HTTP/1.1, the
/// received fields in order as received except those the proxy owns, then what it adds.
///
/// Left out: hop-by-hop fields (`Field::hop`), the affinity cookie's pairs (a `Cookie` field
/// left empty is dropped), the token header, `Expect: 100-continue` (answered by stickyd with
/// [`CONTINUE`]), every X-Forwarded-For, and X-Forwarded-Proto/-Host unless from a trusted
/// peer. `Host` is the absolute-form target's authority when there is one (RFC 9112 section
/// 3.2.2: one host only, whatever the Host field said).
///
/// Added: X-Forwarded-For (the trusted proxy's values joined, then the peer; else the peer),
/// X-Forwarded-Proto and X-Forwarded-Host when not kept (the latter only with a host), `Via`,
/// the body's framing from `head.body` (`Content-Length: n` in place of the received one,
/// `Transfer-Encoding: chunked`: the received coding is hop-by-hop), and
/// `Connection: upgrade` + `Upgrade` for an upgrade, else `Connection: close` when asked.
pub fn request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    fields: &[Field],
    f: &Forward<'_>,
) {
    out.reserve(head.len + 160);
    out.extend_from_slice(head.method_span.of(buf));
    out.push(b' ');
    out.extend_from_slice(head.path.of(buf));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = head.authority.map(|a| a.of(buf));
    if let Some(a) = authority {
        field(out, b"Host", a);
    }
    let mut host = authority;
    let (mut xff, mut xfp, mut xfh) = (false, false, false);
    let mut copy = Runs::new(buf);
    for fl in fields {
        if fl.hop {
            continue;
        }
        let name = fl.name.of(buf);
        let value = fl.value.of(buf);
        if f.token_header.is_some_and(|t| name.eq_ignore_ascii_case(t)) {
            continue;
        }
        match fl.kind {
            Name::Host => {
                if authority.is_some() {
                    continue;
                }
                host.get_or_insert(value);
            }
            Name::Cookie => {
                if let Some(c) = f.cookie {
                    match headers::strip_cookie(value, c) {
                        headers::Strip::Keep => {}
                        headers::Strip::Drop => continue,
                        headers::Strip::Rewrite => {
                            copy.flush(out);
                            let mark = out.len();
                            out.extend_from_slice(name);
                            out.extend_from_slice(b": ");
                            if headers::write_without_cookie(out, value, c) {
                                out.extend_from_slice(b"\r\n");
                            } else {
                                out.truncate(mark);
                            }
                            continue;
                        }
                    }
                }
            }
            // Written from the number below: a `Connection` naming it cannot unframe the body.
            Name::ContentLength if matches!(head.body, Body::Length(_)) => continue,
            Name::Expect if value.eq_ignore_ascii_case(b"100-continue") => continue,
            Name::XForwardedFor => {
                xff = true;
                continue;
            }
            Name::XForwardedProto => {
                xfp = true;
                if !f.trusted {
                    continue;
                }
            }
            Name::XForwardedHost => {
                xfh = true;
                if !f.trusted {
                    continue;
                }
            }
            // Only stickyd names a session's backend, backups and takeover.
            Name::Replication => continue,
            _ => {}
        }
        copy.field(out, fl);
    }
    copy.flush(out);

    out.extend_from_slice(b"X-Forwarded-For: ");
    let received = fields
        .iter()
        .filter(|fl| fl.kind == Name::XForwardedFor && !fl.hop)
        .map(|fl| fl.value.of(buf));
    headers::write_forwarded_for(out, f.trusted && xff, received, f.peer);
    out.extend_from_slice(b"\r\n");
    if !headers::keeps_forwarded(f.trusted, xfp) {
        field(out, b"X-Forwarded-Proto", f.proto);
    }
    if !headers::keeps_forwarded(f.trusted, xfh)
        && let Some(h) = host
    {
        field(out, b"X-Forwarded-Host", h);
    }
    if let Some(via) = f.via {
        field(out, b"Via", via);
    }
    framing(out, head.body);
    if let Some(proto) = head.upgrade {
        // An upgrade goes on a connection of its own: `close` would say nothing more.
        out.extend_from_slice(b"Connection: upgrade\r\n");
        field(out, b"Upgrade", proto.of(buf));
    } else if f.close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What a request head tells its backend under replication (`[replication] backups > 0`):
/// the backend serving it, the session's backups, and whether it takes the session over.
#[derive(Debug, Clone, Copy)]
pub struct Replica<'a> {
    /// The serving backend's id.
    pub backend: &'a [u8],
    /// The backups in order, each `id=host:port`; `None` past the last.
    pub backups: [Option<&'a [u8]>; 2],
    /// The serving backend takes the session over from its lost home.
    pub takeover: bool,
}

/// Adds `r`'s fields to a request head written by [`request_head`] (which ends with the blank
/// line: the fields go before it): `X-Stickyd-Backend`, `X-Stickyd-Backup` when there is a
/// backup, `X-Stickyd-Takeover` (naming the serving backend) on a takeover. `head` is the
/// head's length in `out`.
pub fn replica_fields(out: &mut Vec<u8>, head: usize, r: &Replica<'_>) {
    out.truncate(head.saturating_sub(2));
    field(out, b"X-Stickyd-Backend", r.backend);
    if let Some(first) = r.backups[0] {
        out.extend_from_slice(b"X-Stickyd-Backup: ");
        out.extend_from_slice(first);
        if let Some(second) = r.backups[1] {
            out.extend_from_slice(b", ");
            out.extend_from_slice(second);
        }
        out.extend_from_slice(b"\r\n");
    }
    if r.takeover {
        field(out, b"X-Stickyd-Takeover", r.backend);
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Connection` field of a response to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection<'a> {
    /// None: an HTTP/1.1 client keeps the connection by default.
    Default,
    /// `close`: the connection closes after this response.
    Close,
    /// `keep-alive`: an HTTP/1.0 client that asked for it is kept.
    KeepAlive,
    /// `upgrade` and `Upgrade: <protocol>`: a 101, the backend's Upgrade value.
    Upgrade(&'a [u8]),
}

/// What the proxy does to a backend's response head on its way to the client.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// The body's framing toward the client. [`Body::Length`] writes `Content-Length: n` in
    /// place of the received one; [`Body::None`] keeps a received Content-Length (a HEAD or 304
    /// response announces a length it does not send); [`Body::Chunked`] drops it and writes
    /// `Transfer-Encoding: chunked`; [`Body::Close`] drops it.
    pub body: Body,
    /// The `Connection` field to write.
    pub connection: Connection<'a>,
    /// A `Set-Cookie` value to add (an issued token's cookie); the backend's own are kept.
    pub set_cookie: Option<&'a [u8]>,
    /// `(name, value)`: the token header of `header` mode, replacing any field of that name.
    pub token: Option<(&'a [u8], &'a [u8])>,
    /// Add `Cache-Control: private` when the response has none (a token was issued: no shared
    /// cache may keep one client's affinity for others).
    pub private: bool,
}

/// Writes the response head for the client: `HTTP/1.1`, the status and the reason as
/// received, the received fields in order except hop-by-hop ones (and Content-Length as
/// [`Reply::body`] says, and the token header when one is set), then what the proxy adds.
pub fn response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    fields: &[Field],
    r: &Reply<'_>,
) {
    out.reserve(head.len + 160);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason.of(buf));
    out.extend_from_slice(b"\r\n");
    let drop_length = matches!(r.body, Body::Length(_) | Body::Chunked | Body::Close);
    let mut cache_control = false;
    let mut copy = Runs::new(buf);
    for fl in fields {
        if fl.hop {
            continue;
        }
        match fl.kind {
            Name::ContentLength if drop_length => continue,
            Name::CacheControl => cache_control = true,
            _ => {}
        }
        if r.token
            .is_some_and(|(t, _)| fl.name.of(buf).eq_ignore_ascii_case(t))
        {
            continue;
        }
        copy.field(out, fl);
    }
    copy.flush(out);
    if let Some((name, value)) = r.token {
        field(out, name, value);
    }
    if let Some(c) = r.set_cookie {
        field(out, b"Set-Cookie", c);
    }
    if r.private && !cache_control {
        out.extend_from_slice(b"Cache-Control: private\r\n");
    }
    framing(out, r.body);
    match r.connection {
        Connection::Default => {}
        Connection::Close => out.extend_from_slice(b"Connection: close\r\n"),
        Connection::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Connection::Upgrade(proto) => {
            out.extend_from_slice(b"Connection: upgrade\r\n");
            field(out, b"Upgrade", proto);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a whole response of stickyd's own (head and body): the same content as the header
/// map path's error response (`proxy::response::error_response`): `text/plain; charset=utf-8`,
/// `Cache-Control: no-store`, the length, `Retry-After` when given, `Connection: close` when
/// the connection closes after it.
pub fn error_response(
    out: &mut Vec<u8>,
    status: u16,
    body: &str,
    retry_after: Option<u64>,
    close: bool,
) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.reserve(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(
        b"\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: ",
    );
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if let Some(secs) = retry_after {
        out.extend_from_slice(b"Retry-After: ");
        push_decimal(out, secs);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Appends `n` in decimal, without formatting machinery.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The framing field of a body sent with a length or chunked; the received ones are never
/// copied, so that what frames the body is always what stickyd will send.
fn framing(out: &mut Vec<u8>, body: Body) {
    match body {
        Body::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Body::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Body::None | Body::Close => {}
    }
}

/// Received fields passed on unchanged, copied as the ranges of the received buffer they are:
/// a line received as exactly `name: value` CRLF is those bytes, and consecutive such lines
/// are one range, copied with one call. Any other line is written in parts ([`field`]); the
/// bytes sent are the same either way (a property test holds that).
///
/// Whatever else is written to `out` goes after a [`Runs::flush`].
struct Runs<'b> {
    buf: &'b [u8],
    /// The pending range (empty: none).
    start: usize,
    end: usize,
}

impl<'b> Runs<'b> {
    fn new(buf: &'b [u8]) -> Runs<'b> {
        Runs {
            buf,
            start: 0,
            end: 0,
        }
    }

    /// Writes `fl` as received (`name: value` CRLF), now or with the lines after it.
    fn field(&mut self, out: &mut Vec<u8>, fl: &Field) {
        let buf = self.buf;
        let (ns, ne) = (fl.name.start as usize, fl.name.end as usize);
        let (vs, ve) = (fl.value.start as usize, fl.value.end as usize);
        if ns < ne && buf.get(ne..vs) == Some(b": ".as_slice()) {
            if self.start == self.end || ns != self.end {
                self.flush(out);
                self.start = ns;
            }
            if buf.get(ve..ve + 2) == Some(b"\r\n".as_slice()) {
                self.end = ve + 2;
            } else {
                self.end = ve;
                self.flush(out);
                out.extend_from_slice(b"\r\n");
            }
        } else {
            self.flush(out);
            field(out, fl.name.of(buf), fl.value.of(buf));
        }
    }

    /// Writes the pending range.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(run) = self.buf.get(self.start..self.end) {
            out.extend_from_slice(run);
        }
        self.start = 0;
        self.end = 0;
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Heads built by hand for the tests of the engine's pure parts (the parser is not needed to
/// test what comes after it): a buffer, and fields classified the way the parser does.
#[cfg(test)]
pub(crate) mod testing {
    use super::super::{Body, Field, Method, Name, RequestHead, ResponseHead, Span, Version};

    /// The engine's name for a header name (ASCII case-insensitive).
    pub fn classify(name: &[u8]) -> Name {
        const NAMES: [(&str, Name); 20] = [
            ("host", Name::Host),
            ("content-length", Name::ContentLength),
            ("transfer-encoding", Name::TransferEncoding),
            ("connection", Name::Connection),
            ("keep-alive", Name::KeepAlive),
            ("proxy-connection", Name::ProxyConnection),
            ("te", Name::Te),
            ("trailer", Name::Trailer),
            ("upgrade", Name::Upgrade),
            ("cookie", Name::Cookie),
            ("set-cookie", Name::SetCookie),
            ("expect", Name::Expect),
            ("cache-control", Name::CacheControl),
            ("x-forwarded-for", Name::XForwardedFor),
            ("x-forwarded-proto", Name::XForwardedProto),
            ("x-forwarded-host", Name::XForwardedHost),
            ("via", Name::Via),
            ("x-stickyd-backend", Name::Replication),
            ("x-stickyd-backup", Name::Replication),
            ("x-stickyd-takeover", Name::Replication),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
            .map_or(Name::Other, |(_, k)| *k)
    }

    /// `first` then a `name: value` line per pair and the blank line; the fields, hop-by-hop
    /// ones marked (the fixed list, then every name listed in a `Connection`).
    pub fn fields(first: &str, pairs: &[(&str, &str)]) -> (Vec<u8>, Vec<Field>) {
        let mut buf = Vec::new();
        buf.extend_from_slice(first.as_bytes());
        buf.extend_from_slice(b"\r\n");
        let mut fields = Vec::new();
        for (n, v) in pairs {
            let start = buf.len() as u32;
            buf.extend_from_slice(n.as_bytes());
            let name = Span {
                start,
                end: buf.len() as u32,
            };
            buf.extend_from_slice(b": ");
            let start = buf.len() as u32;
            buf.extend_from_slice(v.as_bytes());
            let value = Span {
                start,
                end: buf.len() as u32,
            };
            buf.extend_from_slice(b"\r\n");
            let kind = classify(n.as_bytes());
            fields.push(Field {
                name,
                value,
                kind,
                hop: kind.fixed_hop(),
            });
        }
        buf.extend_from_slice(b"\r\n");
        let listed: Vec<Vec<u8>> = fields
            .iter()
            .filter(|f| f.kind == Name::Connection)
            .flat_map(|f| f.value.of(&buf).split(|&b| b == b','))
            .map(|t| t.trim_ascii().to_ascii_lowercase())
            .collect();
        for f in &mut fields {
            let n = f.name.of(&buf).to_ascii_lowercase();
            f.hop |= listed.contains(&n);
        }
        (buf, fields)
    }

    fn find(buf: &[u8], part: &[u8]) -> Span {
        let start = buf
            .windows(part.len())
            .position(|w| w == part)
            .expect("part in buffer");
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// A request head for `method target HTTP/1.1` with these fields. An absolute-form target
    /// (`http://host/path`) must have a path. The body follows the framing fields.
    pub fn request(
        method: &str,
        target: &str,
        pairs: &[(&str, &str)],
    ) -> (Vec<u8>, RequestHead, Vec<Field>) {
        let (buf, fields) = fields(&format!("{method} {target} HTTP/1.1"), pairs);
        let method_span = Span {
            start: 0,
            end: method.len() as u32,
        };
        let target_span = Span {
            start: method_span.end + 1,
            end: method_span.end + 1 + target.len() as u32,
        };
        let (authority, path) = match target.split_once("://") {
            Some((_, rest)) => {
                let slash = rest.find('/').expect("an absolute target with a path");
                let a = target_span.start + (target.len() - rest.len()) as u32;
                (
                    Some(Span {
                        start: a,
                        end: a + slash as u32,
                    }),
                    Span {
                        start: a + slash as u32,
                        end: target_span.end,
                    },
                )
            }
            None => (None, target_span),
        };
        let value = |k: Name| {
            fields
                .iter()
                .find(|f| f.kind == k)
                .map(|f| f.value.of(&buf))
        };
        let body = if value(Name::TransferEncoding).is_some() {
            Body::Chunked
        } else {
            match value(Name::ContentLength).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            {
                Some(0) | None => Body::None,
                Some(n) => Body::Length(n),
            }
        };
        let hosts: Vec<&Field> = fields.iter().filter(|f| f.kind == Name::Host).collect();
        let head = RequestHead {
            len: buf.len(),
            method: match method {
                "GET" => Method::Get,
                "HEAD" => Method::Head,
                "POST" => Method::Post,
                "PUT" => Method::Put,
                "DELETE" => Method::Delete,
                "OPTIONS" => Method::Options,
                _ => Method::Other,
            },
            method_span,
            target: target_span,
            authority,
            path,
            version: Version::H11,
            body,
            close_after: false,
            keep_alive: true,
            host: (hosts.len() == 1).then(|| hosts[0].value),
            upgrade: None,
            expect_continue: false,
        };
        (buf, head, fields)
    }

    /// A response head `HTTP/1.1 status reason` with these fields, framed by them.
    pub fn response(
        status: u16,
        reason: &str,
        pairs: &[(&str, &str)],
    ) -> (Vec<u8>, ResponseHead, Vec<Field>) {
        let (buf, fields) = fields(&format!("HTTP/1.1 {status} {reason}"), pairs);
        let reason = Span {
            start: 13,
            end: 13 + reason.len() as u32,
        };
        let head = ResponseHead {
            len: buf.len(),
            status,
            reason,
            version: Version::H11,
            body: Body::Close,
            keep_alive: true,
        };
        (buf, head, fields)
    }

    /// The span of `part`'s first occurrence in `buf`.
    pub fn span(buf: &[u8], part: &str) -> Span {
        find(buf, part.as_bytes())
    }
}

#[cfg(test)]
mod tests;
