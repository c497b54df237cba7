//! The pure half of stickyd's own HTTP/1 engine (hyper stays for HTTP/2): heads parsed and
//! written, the chunked coding. No I/O: the connections are driven by `proxy`'s engine.
//!
//! The received bytes are the message: a head is parsed once with `httparse` into [`Field`]s,
//! byte ranges ([`Span`]) into the connection's buffer with each name classified once
//! ([`Name`]); the head sent on is written from those bytes into one buffer, with what must not
//! pass left out (the affinity cookie, hop-by-hop headers) and what stickyd adds put in
//! (X-Forwarded-*, Via, Set-Cookie). No header map, no per-header allocation.
//!
//! | file | owns |
//! |---|---|
//! | `parse` | request and response heads: every refusal, the framing of the body |
//! | `chunked` | the chunked coding: a strict incremental decoder, the encoder |
//! | `write` | the upstream request head and the client response head, in one buffer each |
//!
//! The pure files are security-critical: every refusal of the hyper path holds on them, and
//! more (Content-Length beside Transfer-Encoding, a repeated Content-Length: 400). A
//! differential fuzz target holds them against hyper: every input is refused by ours or framed
//! identically by both.

pub mod chunked;
pub mod parse;
pub mod write;

/// A byte range in a connection's buffer: where a name, a value or a target is. `u32` keeps a
/// [`Field`] small; heads are bounded by `max_header_bytes` (at most 1 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// The span of `part`, a subslice of `buf`.
    ///
    /// # Panics
    /// When `part` is not inside `buf` (a bug, never input).
    pub fn within(buf: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize)
            .checked_sub(buf.as_ptr() as usize)
            .filter(|s| s + part.len() <= buf.len())
            .expect("a span inside its buffer");
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The bytes of the span in `buf`.
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The span moved `by` bytes toward the start (after the buffer's front was consumed).
    pub fn shifted(&self, by: u32) -> Span {
        Span {
            start: self.start - by,
            end: self.end - by,
        }
    }
}

/// The header names the engine acts on, recognised once when the head is parsed (ASCII
/// case-insensitive); everything else is [`Name::Other`] and passes through as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    Cookie,
    SetCookie,
    Expect,
    CacheControl,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Via,
    /// `X-Stickyd-Backend`, `X-Stickyd-Backup`, `X-Stickyd-Takeover`: replication's fields,
    /// which only stickyd writes (a client's copies never reach a backend).
    Replication,
    Other,
}

impl Name {
    /// On the fixed hop-by-hop list (`headers::strip_hop_by_hop`'s): never sent on as it came.
    pub fn fixed_hop(self) -> bool {
        matches!(
            self,
            Name::Connection
                | Name::KeepAlive
                | Name::ProxyConnection
                | Name::Te
                | Name::Trailer
                | Name::TransferEncoding
                | Name::Upgrade
        )
    }
}

/// One header line of a parsed head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The name as received.
    pub name: Span,
    /// The value, without surrounding whitespace.
    pub value: Span,
    /// What the name is, to the engine.
    pub kind: Name,
    /// Hop-by-hop: on the fixed list (RFC 9110 section 7.6.1, plus `Keep-Alive` and
    /// `Proxy-Connection`) or named in the head's `Connection`. Never sent on as it came.
    pub hop: bool,
}

/// A request method, as far as the engine's rules tell methods apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Patch,
    Connect,
    /// Any other token (extension methods): not idempotent, a body allowed.
    Other,
}

impl Method {
    /// The method may be sent again after a connection dropped (RFC 9110 section 9.2.2).
    pub fn idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }

    /// A payload has no defined meaning on this method (RFC 9110 section 9.3): a backend may
    /// ignore a body sent with it and read it as the next request.
    pub fn bodiless(self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Delete | Method::Options | Method::Trace
        )
    }
}

/// HTTP/1.0 or HTTP/1.1 (nothing else is HTTP/1 here: `HTTP/0.9` and `HTTP/2.0` lines are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    H10,
    H11,
}

/// How a message's body is delimited on the wire it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (a request without Content-Length or Transfer-Encoding; a response to HEAD, a
    /// 1xx, 204 or 304).
    None,
    /// Exactly this many bytes (Content-Length; 0 is [`Body::None`] on requests).
    Length(u64),
    /// The chunked coding.
    Chunked,
    /// Until the connection closes (responses only: neither Content-Length nor chunked).
    Close,
}

/// A request head refused before anything was forwarded: the status and a short reason for the
/// client. The connection is closed after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 414, 431 or 501.
    pub status: u16,
    /// One line, ending in `\n`.
    pub reason: &'static str,
}

/// A parsed request head: what the steps after parsing need, as spans into the buffer it was
/// parsed from. Its header lines are in the `Vec<Field>` the parser filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, request line to the blank line included: the body (or the next
    /// request) starts here.
    pub len: usize,
    pub method: Method,
    /// The method token as received.
    pub method_span: Span,
    /// The request target as received (origin, absolute, authority or asterisk form).
    pub target: Span,
    /// The target's authority in absolute form (`http://host:port/...`): it names the host.
    pub authority: Option<Span>,
    /// The target in origin form (`/path?query`, or `*`) as sent to a backend; for an
    /// absolute-form target, its path and query (`/` when it has none).
    pub path: Span,
    pub version: Version,
    /// The body's framing as received (never [`Body::Close`] on a request).
    pub body: Body,
    /// A body on a method where it has no defined meaning: forwarded, and neither connection
    /// is reused after the response (`headers::Framing::CloseAfter`).
    pub close_after: bool,
    /// The client keeps the connection open after this exchange (HTTP/1.1 without
    /// `Connection: close`, HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The Host header's value, when there is exactly one.
    pub host: Option<Span>,
    /// The protocol of an upgrade stickyd tunnels (HTTP/1.1, `Connection: upgrade`, an
    /// `Upgrade` other than h2c: `headers::upgrade_protocol`).
    pub upgrade: Option<Span>,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub expect_continue: bool,
}

/// A backend's response head that failed to parse or frames its body in a way that cannot be
/// trusted: a 502 for the client, and the connection is not reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// A parsed response head, as spans into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head, status line to the blank line included.
    pub len: usize,
    pub status: u16,
    /// The reason phrase as received (may be empty).
    pub reason: Span,
    pub version: Version,
    /// The body's framing, given the request's method (a response to HEAD has none).
    pub body: Body,
    /// The backend keeps the connection open after this response (HTTP/1.1 without
    /// `Connection: close`, HTTP/1.0 with `keep-alive`, and a body not delimited by close).
    pub keep_alive: bool,
}
