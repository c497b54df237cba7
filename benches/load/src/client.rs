//! The load threads' HTTP/1.1 client: one keep-alive TCP connection per `Conn`, driven inline
//! by the task that makes the request (no driver task, no channels). A request is built into
//! the connection's own buffer from the target's template (request line and Host) plus the
//! user's `Cookie` header, and sent with one write. The response is parsed with `httparse`
//! from the connection's read buffer: status, the backend header, the session counter of the
//! harness's own backends (`x-session-count`) and every `Set-Cookie` (into the user's jar);
//! the body is drained (`Content-Length`, chunked, or to the end of the connection), not
//! stored. Bytes past the response stay in the buffer for the next one.
//!
//! Timeouts are the caller's. A `Conn` whose exchange did not finish (an error, or a timeout
//! that dropped it) is closed.

use std::mem::MaybeUninit;
use std::net::SocketAddr;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Method, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sessions::COUNT_HEADER;
use crate::stats::Failure;
use crate::users::{CookieJar, User};

/// Initial size of a connection's read buffer.
const READ_BUF: usize = 16 * 1024;
/// Largest response head (status line and headers) accepted; the read buffer grows to it.
const MAX_HEAD: usize = 256 * 1024;
/// Most header lines in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Most bytes of chunk extensions and of trailers in one chunked body.
const MAX_CHUNK_META: usize = 16 * 1024;
/// Backend header values a connection keeps to hand out without allocating.
const RECENT_BACKENDS: usize = 8;

/// Where requests go and what they look like.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The response header that names the backend.
    pub backend_header: HeaderName,
    /// `METHOD path HTTP/1.1\r\nhost: HOST\r\n`: every request starts with these bytes.
    head: Bytes,
    /// HEAD requests: responses have no body whatever their headers say.
    head_only: bool,
    /// The method, for requests not built from `head` (HTTP/2).
    pub method: Method,
    /// `http://HOST/path`, for HTTP/2 (`:authority` carries the host): `None` when the host
    /// and path make no absolute URI.
    pub uri: Option<Uri>,
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        host: &str,
        path: &PathAndQuery,
        method: Method,
        backend_header: HeaderName,
    ) -> Result<Target, String> {
        let host = HeaderValue::from_str(host).map_err(|_| format!("bad host {host:?}"))?;
        let path = match path.as_str() {
            "" => "/",
            p if p.starts_with('/') || p == "*" => p,
            p => return Err(format!("bad path {p}: not origin-form")),
        };
        let mut head = Vec::with_capacity(method.as_str().len() + path.len() + host.len() + 24);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(host.as_bytes());
        head.extend_from_slice(b"\r\n");
        let uri = Authority::try_from(host.as_bytes()).ok().and_then(|a| {
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(a)
                .path_and_query(path)
                .build()
                .ok()
        });
        Ok(Target {
            addr,
            head_only: method == Method::HEAD,
            method,
            uri,
            backend_header,
            head: Bytes::from(head),
        })
    }

    /// A target whose requests also carry `extra` (whole header lines, each ending in CRLF):
    /// for tests that play the balancer's part.
    #[cfg(test)]
    pub fn with_extra_headers(
        addr: SocketAddr,
        host: &str,
        path: &PathAndQuery,
        method: Method,
        backend_header: HeaderName,
        extra: &str,
    ) -> Result<Target, String> {
        let mut t = Target::new(addr, host, path, method, backend_header)?;
        let mut head = t.head.to_vec();
        head.extend_from_slice(extra.as_bytes());
        t.head = Bytes::from(head);
        Ok(t)
    }
}

/// One keep-alive HTTP/1.1 connection (a `TcpStream`, or in tests any byte stream).
pub struct Conn<S = TcpStream> {
    stream: S,
    /// The request being sent; reused.
    req: Vec<u8>,
    inbox: Inbox,
    recent: Recent,
    /// The peer said it closes, or the body ran to the end of the connection.
    closed: bool,
    /// An exchange started and did not finish: the stream is in an unknown state.
    busy: bool,
}

impl Conn<TcpStream> {
    /// Connects.
    pub async fn open(addr: SocketAddr) -> Result<Conn, Failure> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| Failure::Connect)?;
        // Small requests and answers: never wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(Conn::new(stream))
    }

    /// True when the connection cannot take another request: the last response said so, an
    /// exchange did not finish, or the peer closed it (or sent bytes nobody asked for) while
    /// it was idle. The last check costs no system call unless the socket became readable.
    pub fn is_closed(&mut self) -> bool {
        if self.closed || self.busy {
            return true;
        }
        match self.stream.try_read(&mut [0u8; 1]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            _ => {
                self.closed = true;
                true
            }
        }
    }
}

impl<S> Conn<S> {
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            req: Vec::with_capacity(256),
            inbox: Inbox::default(),
            recent: Recent::default(),
            closed: false,
            busy: false,
        }
    }
}

/// A connection ready for a request: `slot`'s when it is still open, else a new one. Nothing
/// has been sent when this fails, so only a failed connect is an error.
pub async fn ready_conn(slot: &mut Option<Conn>, addr: SocketAddr) -> Result<&mut Conn, Failure> {
    if slot.as_mut().is_none_or(|c| c.is_closed()) {
        *slot = None;
        *slot = Some(Conn::open(addr).await?);
    }
    slot.as_mut().ok_or(Failure::Io)
}

/// The parts of a response the harness looks at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The backend header's value, if present.
    pub backend: Option<HeaderValue>,
    /// The session counter (`x-session-count`), if present and a number.
    pub session_count: Option<u64>,
}

/// Sends one request for `user` on `conn`, stores the response's cookies in the user's jar and
/// reads the body to its end.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    target: &Target,
    user: &mut User,
) -> Result<Answer, Failure> {
    conn.busy = true;
    conn.req.clear();
    conn.req.extend_from_slice(&target.head);
    if let Some(c) = user.cookie() {
        conn.req.extend_from_slice(b"cookie: ");
        conn.req.extend_from_slice(c.as_bytes());
        conn.req.extend_from_slice(b"\r\n");
    }
    conn.req.extend_from_slice(b"\r\n");
    conn.stream
        .write_all(&conn.req)
        .await
        .map_err(|_| Failure::Io)?;
    let jar = (!user.cookieless).then_some(&mut user.jar);
    let got = conn
        .inbox
        .response(
            &mut conn.stream,
            target.head_only,
            &target.backend_header,
            jar,
            &mut conn.recent,
        )
        .await?;
    conn.closed = got.close;
    conn.busy = false;
    Ok(got.answer)
}

/// A complete response.
#[derive(Debug)]
struct Received {
    answer: Answer,
    /// The connection must not be reused.
    close: bool,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLen {
    None,
    Length(u64),
    Chunked,
    /// At the end of the connection.
    UntilClose,
}

/// What a parsed response head says.
#[derive(Debug)]
struct Head {
    status: u16,
    /// 1xx: another head follows.
    interim: bool,
    body: BodyLen,
    close: bool,
    backend: Option<HeaderValue>,
    session_count: Option<u64>,
}

/// The read buffer: `buf[start..end]` is received and not yet used.
#[derive(Debug, Default)]
struct Inbox {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Inbox {
    /// Reads one final response (after any 1xx ones) and drains its body.
    async fn response<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        head_only: bool,
        backend_header: &HeaderName,
        mut jar: Option<&mut CookieJar>,
        recent: &mut Recent,
    ) -> Result<Received, Failure> {
        let head = loop {
            match self.parse_head(head_only, backend_header, jar.as_deref_mut(), recent)? {
                Some(h) if h.interim => {}
                Some(h) => break h,
                None => self.fill(io).await?,
            }
        };
        let mut close = head.close;
        match head.body {
            BodyLen::None => {}
            BodyLen::Length(n) => self.skip(io, n).await?,
            BodyLen::Chunked => self.skip_chunked(io).await?,
            BodyLen::UntilClose => {
                self.skip_to_eof(io).await?;
                close = true;
            }
        }
        Ok(Received {
            answer: Answer {
                status: head.status,
                backend: head.backend,
                session_count: head.session_count,
            },
            close,
        })
    }

    /// Parses a head from the buffered bytes and consumes it; `None` when more bytes are
    /// needed. Headers of 1xx responses are ignored.
    fn parse_head(
        &mut self,
        head_only: bool,
        backend_header: &HeaderName,
        jar: Option<&mut CookieJar>,
        recent: &mut Recent,
    ) -> Result<Option<Head>, Failure> {
        if self.start == self.end {
            return Ok(None);
        }
        let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            &self.buf[self.start..self.end],
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(Failure::Protocol),
        };
        let status = resp.code.ok_or(Failure::Protocol)?;
        let http11 = resp.version.ok_or(Failure::Protocol)? == 1;
        let head = if !(100..=999).contains(&status) || status == 101 {
            // We never ask to switch protocols.
            return Err(Failure::Protocol);
        } else if status < 200 {
            Head {
                status,
                interim: true,
                body: BodyLen::None,
                close: false,
                backend: None,
                session_count: None,
            }
        } else {
            examine(
                status,
                http11,
                resp.headers,
                head_only,
                backend_header,
                jar,
                recent,
            )?
        };
        self.start += len;
        Ok(Some(head))
    }

    /// Reads more bytes after the buffered ones: the buffer is compacted, or grown while a
    /// head does not fit (up to [`MAX_HEAD`]). The end of the stream here is an I/O failure:
    /// the response is incomplete.
    async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<(), Failure> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_HEAD {
                return Err(Failure::Protocol);
            }
            let size = (self.buf.len() * 2).clamp(READ_BUF, MAX_HEAD);
            self.buf.resize(size, 0);
        }
        match io.read(&mut self.buf[self.end..]).await {
            Ok(0) | Err(_) => Err(Failure::Io),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
        }
    }

    /// Drains a body of `n` bytes.
    async fn skip<R: AsyncRead + Unpin>(&mut self, io: &mut R, mut n: u64) -> Result<(), Failure> {
        loop {
            let take = n.min((self.end - self.start) as u64);
            self.start += take as usize;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill(io).await?;
        }
    }

    /// Drains a chunked body, trailers included.
    async fn skip_chunked<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<(), Failure> {
        let mut body = Chunked::default();
        loop {
            let used = body
                .feed(&self.buf[self.start..self.end])
                .map_err(|_| Failure::Protocol)?;
            self.start += used;
            if body.is_done() {
                return Ok(());
            }
            self.fill(io).await?;
        }
    }

    /// Drains everything up to the end of the stream.
    async fn skip_to_eof<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<(), Failure> {
        self.start = 0;
        self.end = 0;
        if self.buf.is_empty() {
            self.buf.resize(READ_BUF, 0);
        }
        loop {
            match io.read(&mut self.buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(Failure::Io),
            }
        }
    }
}

/// The headers of a final (2xx-9xx) response: body framing (RFC 9112 section 6.3), whether
/// the connection stays open, the backend, and the cookies (into `jar`).
fn examine(
    status: u16,
    http11: bool,
    headers: &[httparse::Header<'_>],
    head_only: bool,
    backend_header: &HeaderName,
    mut jar: Option<&mut CookieJar>,
    recent: &mut Recent,
) -> Result<Head, Failure> {
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut close_token = false;
    let mut keep_alive_token = false;
    let mut backend = None;
    let mut backend_seen = false;
    let mut session_count = None;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"set-cookie") {
            if let Some(j) = jar.as_deref_mut() {
                j.store(h.value);
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for v in h.value.split(|&b| b == b',') {
                let n = parse_length(trim(v)).ok_or(Failure::Protocol)?;
                if length.is_some_and(|l| l != n) {
                    return Err(Failure::Protocol);
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            for coding in h.value.split(|&b| b == b',') {
                let coding = trim(coding);
                if !coding.is_empty() {
                    chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim(token);
                close_token |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if !backend_seen && name.eq_ignore_ascii_case(backend_header.as_str().as_bytes()) {
            backend_seen = true;
            backend = recent.get(h.value);
        } else if session_count.is_none() && name.eq_ignore_ascii_case(COUNT_HEADER.as_bytes()) {
            session_count = parse_length(trim(h.value));
        }
    }
    let mut close = close_token || (!http11 && !keep_alive_token);
    let body = if head_only || status == 204 || status == 304 {
        BodyLen::None
    } else if transfer_encoding {
        if !http11 {
            // An HTTP/1.0 message with Transfer-Encoding has faulty framing (RFC 9112 6.1).
            return Err(Failure::Protocol);
        }
        if length.is_some() {
            // Both: Transfer-Encoding wins, and the connection is not to be trusted further.
            close = true;
        }
        if chunked_last {
            BodyLen::Chunked
        } else {
            BodyLen::UntilClose
        }
    } else {
        match length {
            Some(n) => BodyLen::Length(n),
            None => BodyLen::UntilClose,
        }
    };
    Ok(Head {
        status,
        interim: false,
        body,
        close,
        backend,
        session_count,
    })
}

/// A Content-Length value: 1 or more digits, no sign, no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Backend header values seen on one connection, so a repeated one costs a reference-count
/// increment rather than an allocation.
#[derive(Debug, Default)]
struct Recent(Vec<HeaderValue>);

impl Recent {
    fn get(&mut self, value: &[u8]) -> Option<HeaderValue> {
        if let Some(v) = self.0.iter().find(|v| v.as_bytes() == value) {
            return Some(v.clone());
        }
        let v = HeaderValue::from_bytes(value).ok()?;
        if self.0.len() >= RECENT_BACKENDS {
            self.0.remove(0);
        }
        self.0.push(v.clone());
        Some(v)
    }
}

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

/// Where a chunked body's parser is (RFC 9112 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// In the chunk size (hex digits; `digits` counts them).
    #[default]
    Size,
    /// In chunk extensions (after `;` or whitespace), up to the CR.
    Ext,
    /// After the size line's CR.
    SizeLf,
    /// In chunk data.
    Data,
    /// After chunk data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    /// In a trailer line, up to its CR.
    Trailer,
    TrailerLf,
    /// After the final empty line's CR.
    EndLf,
    Done,
}

/// An incremental skipper for a chunked body: fed the buffered bytes as they come, it
/// consumes exactly the body (chunks, last chunk, trailers, final CRLF) and no byte past it.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// The current chunk's size while in `Size`; then the data bytes left.
    size: u64,
    digits: u32,
    /// Bytes of extensions and trailers so far.
    meta: usize,
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of `input`; returns how many. All of them unless the body ended.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            if self.state == Data {
                let take = self.size.min((input.len() - i) as u64);
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, _) if b.is_ascii_hexdigit() => {
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(d)))
                        .ok_or(BadChunk)?;
                    self.digits += 1;
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Ext,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Ext, b'\r') => SizeLf,
                (Ext, b'\n') => return Err(BadChunk),
                (Ext, _) => {
                    self.meta += 1;
                    if self.meta > MAX_CHUNK_META {
                        return Err(BadChunk);
                    }
                    Ext
                }
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 { TrailerStart } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (Trailer, b'\r') => TrailerLf,
                (TrailerStart | Trailer, b'\n') => return Err(BadChunk),
                (TrailerStart | Trailer, _) => {
                    self.meta += 1;
                    if self.meta > MAX_CHUNK_META {
                        return Err(BadChunk);
                    }
                    Trailer
                }
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(BadChunk),
            };
        }
        Ok(i)
    }
}

/// A loopback server for tests (127.0.0.1:0): on every connection it answers each request
/// with a 200 from backend `b1` that sets the cookie `stickyd_shop=t1`, keeps the connection
/// open, and sends each request head (up to and with its blank line) on the channel before
/// answering it. So once a client has its answer, the head is waiting in the channel.
#[cfg(test)]
pub(crate) async fn recording_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>)
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = Vec::new();
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        let _ = tx.send(have.drain(..end + 4).collect());
                        let answer = b"HTTP/1.1 200 OK\r\nx-backend: b1\r\n\
                            set-cookie: stickyd_shop=t1; Path=/; HttpOnly\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;
    use tokio::net::TcpListener;

    use super::*;

    /// A stream whose reads return the scripted pieces, one per read (then the end of the
    /// stream), and which keeps what is written to it.
    #[derive(Default)]
    struct Script {
        reads: VecDeque<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Script {
        fn new<I: IntoIterator<Item = Vec<u8>>>(pieces: I) -> Script {
            Script {
                reads: pieces.into_iter().filter(|p| !p.is_empty()).collect(),
                written: Vec::new(),
            }
        }
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.reads.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    piece.drain(..n);
                    self.reads.push_front(piece);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn target(method: Method) -> Target {
        Target::new(
            "127.0.0.1:9".parse().expect("addr"),
            "example.test:8080",
            &PathAndQuery::from_static("/p?q=1"),
            method,
            HeaderName::from_static("x-backend"),
        )
        .expect("valid target")
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Exchanges on a scripted stream: the answers (or failures) of `requests` requests.
    fn script_run(
        pieces: Vec<Vec<u8>>,
        method: Method,
        requests: usize,
    ) -> (Vec<Result<Answer, Failure>>, Conn<Script>, User) {
        run(async {
            let t = target(method);
            let mut conn = Conn::new(Script::new(pieces));
            let mut user = User::new(requests as u32, false);
            let mut out = Vec::new();
            for _ in 0..requests {
                out.push(exchange(&mut conn, &t, &mut user).await);
            }
            (out, conn, user)
        })
    }

    fn one(text: &[u8], method: Method) -> (Result<Answer, Failure>, Conn<Script>) {
        let (mut r, c, _) = script_run(vec![text.to_vec()], method, 1);
        (r.remove(0), c)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-backend: b9\r\n\r\nok";

    #[test]
    fn a_content_length_response_with_cookies() {
        let first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Backend: b1\r\n\
            Set-Cookie: stickyd=abc; Path=/; HttpOnly\r\nset-cookie: app=1\r\n\r\nhello";
        let second = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        let (r, conn, mut user) = script_run(vec![first.to_vec(), second.to_vec()], Method::GET, 2);
        let a = r[0].as_ref().expect("first");
        assert_eq!(a.status, 200);
        assert_eq!(a.backend.as_ref().expect("backend"), "b1");
        let b = r[1].as_ref().expect("second");
        assert_eq!((b.status, b.backend.is_none()), (404, true));
        assert_eq!(
            user.cookie().expect("jar").as_bytes(),
            b"stickyd=abc; app=1"
        );
        assert_eq!(
            String::from_utf8_lossy(&conn.stream.written),
            "GET /p?q=1 HTTP/1.1\r\nhost: example.test:8080\r\n\r\n\
             GET /p?q=1 HTTP/1.1\r\nhost: example.test:8080\r\ncookie: stickyd=abc; app=1\r\n\r\n"
        );
        assert!(!conn.closed && !conn.busy);
    }

    #[test]
    fn the_session_counter_is_read_when_it_is_a_number() {
        for (line, want) in [
            (&b"X-Session-Count: 42\r\n"[..], Some(42)),
            (b"x-session-count:  7 \r\nx-session-count: 9\r\n", Some(7)),
            (b"x-session-count: -1\r\n", None),
            (b"x-session-count: 1e3\r\n", None),
            (b"x-session-count: 99999999999999999999999\r\n", None),
            (b"", None),
        ] {
            let text = [
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n".as_slice(),
                line,
                b"\r\n",
            ]
            .concat();
            let (r, _) = one(&text, Method::GET);
            assert_eq!(
                r.expect("answer").session_count,
                want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn a_cookieless_user_neither_keeps_nor_sends_cookies() {
        run(async {
            let t = target(Method::GET);
            let resp = b"HTTP/1.1 200 OK\r\nset-cookie: a=b\r\ncontent-length: 0\r\n\r\n";
            let mut conn = Conn::new(Script::new([resp.to_vec(), resp.to_vec()]));
            let mut user = User::new(2, true);
            exchange(&mut conn, &t, &mut user).await.expect("first");
            exchange(&mut conn, &t, &mut user).await.expect("second");
            assert!(user.jar.header().is_none());
            assert!(!String::from_utf8_lossy(&conn.stream.written).contains("cookie"));
        });
    }

    /// A chunked body with extensions (quoted and bare, with whitespace), an upper-case hex
    /// size, a zero-padded last chunk and two trailers, then a second response.
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-backend: b2\r\n\r\n\
        5;name=value\r\nhello\r\n\
        A ; ext ; q=\"a;b\"\r\n0123456789\r\n\
        1\r\n!\r\n\
        000;last\r\n\
        Trailer-One: 1\r\nTrailer-Two: two\r\n\r\n";

    #[test]
    fn a_chunked_body_split_at_every_byte_is_drained_exactly() {
        let mut all = CHUNKED.to_vec();
        all.extend_from_slice(OK);
        for cut in 1..all.len() {
            let pieces = vec![all[..cut].to_vec(), all[cut..].to_vec()];
            let (r, conn, _) = script_run(pieces, Method::GET, 2);
            let a = r[0].as_ref().unwrap_or_else(|e| panic!("cut {cut}: {e:?}"));
            assert_eq!(a.backend.as_ref().expect("b2"), "b2", "cut {cut}");
            let b = r[1].as_ref().unwrap_or_else(|e| panic!("cut {cut}: {e:?}"));
            assert_eq!(b.backend.as_ref().expect("b9"), "b9", "cut {cut}");
            assert_eq!(conn.inbox.start, conn.inbox.end, "cut {cut}");
            assert!(!conn.closed, "cut {cut}");
        }
        // And one byte per read.
        let pieces = all.iter().map(|&b| vec![b]).collect();
        let (r, _, _) = script_run(pieces, Method::GET, 2);
        assert!(r.iter().all(|a| a.is_ok()), "{r:?}");
    }

    #[test]
    fn the_chunk_skipper_stops_at_the_end_of_the_body() {
        let body = b"4;a=b\r\nwiki\r\n0\r\nx: y\r\n\r\nNEXT";
        let end = body.len() - 4;
        for cut in 0..=body.len() {
            let mut c = Chunked::default();
            let a = c.feed(&body[..cut]).expect("valid");
            assert_eq!(a, cut.min(end), "everything up to the end is consumed");
            let b = c.feed(&body[a..]).expect("valid");
            assert!(c.is_done());
            assert_eq!(a + b, end, "cut {cut}");
        }
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\r\nhello0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"0\r\nbad\n",
            b"11111111111111111\r\n",
            b"5;a\nhello",
        ] {
            let mut c = Chunked::default();
            assert_eq!(
                c.feed(bad),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut c = Chunked::default();
        let long = [b"1;".as_slice(), &[b'x'; MAX_CHUNK_META + 1]].concat();
        assert_eq!(c.feed(&long), Err(BadChunk), "extensions are bounded");
    }

    #[test]
    fn interim_responses_are_skipped() {
        let text = [
            b"HTTP/1.1 100 Continue\r\n\r\n".as_slice(),
            b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\nset-cookie: early=1\r\nx-backend: no\r\n\r\n",
            OK,
        ]
        .concat();
        let (r, _, mut user) = script_run(vec![text], Method::GET, 1);
        let a = r[0].as_ref().expect("final");
        assert_eq!(
            (a.status, a.backend.as_ref().expect("b").as_bytes()),
            (200, &b"b9"[..])
        );
        assert!(user.cookie().is_none(), "1xx headers are ignored");
        let (r, _) = one(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET);
        assert_eq!(r.err(), Some(Failure::Protocol));
    }

    #[test]
    fn no_body_for_204_304_and_head() {
        for (first, method) in [
            (
                &b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"[..],
                Method::GET,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Method::HEAD,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::HEAD,
            ),
        ] {
            // The next response has no body either way (under HEAD its body would not be read).
            let next = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            let text = [first, next].concat();
            let (r, conn, _) = script_run(vec![text], method.clone(), 2);
            let label = String::from_utf8_lossy(first);
            assert!(r[0].is_ok(), "{label}");
            assert_eq!(r[1].as_ref().expect("next").status, 200, "{label}");
            assert_eq!(conn.inbox.start, conn.inbox.end);
        }
        let t = target(Method::HEAD);
        assert!(t.head.starts_with(b"HEAD /p?q=1 HTTP/1.1\r\n"));
    }

    #[test]
    fn connection_close_and_http_1_0_end_the_connection() {
        let (r, conn) = one(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 2\r\n\r\nok",
            Method::GET,
        );
        assert_eq!(r.expect("ok").status, 200);
        assert!(conn.closed);
        let (r, conn) = one(
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        );
        assert!(r.is_ok() && conn.closed);
        // HTTP/1.0 without a length: the body runs to the end of the connection.
        let (r, conn) = one(
            b"HTTP/1.0 200 OK\r\nx-backend: old\r\n\r\nall of it",
            Method::GET,
        );
        assert_eq!(r.expect("1.0").backend.expect("b"), "old");
        assert!(conn.closed);
        // HTTP/1.0 with a length but no keep-alive: closed after the body.
        let (r, conn) = one(
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Method::GET,
        );
        assert!(r.is_ok() && conn.closed);
        // HTTP/1.0 keep-alive: stays open.
        let text = [
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 2\r\n\r\nok".as_slice(),
            OK,
        ]
        .concat();
        let (r, conn, _) = script_run(vec![text], Method::GET, 2);
        assert!(r.iter().all(|a| a.is_ok()) && !conn.closed);
        // HTTP/1.1 without a length: to the end, then closed.
        let (r, conn) = one(b"HTTP/1.1 200 OK\r\n\r\nuntil close", Method::GET);
        assert!(r.is_ok() && conn.closed);
    }

    #[test]
    fn an_oversized_head_is_a_protocol_error() {
        let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
        while text.len() <= MAX_HEAD {
            text.extend_from_slice(b"x-filler: ");
            text.extend_from_slice(&[b'a'; 1000]);
            text.extend_from_slice(b"\r\n");
        }
        text.extend_from_slice(b"content-length: 0\r\n\r\n");
        let (r, _) = one(&text, Method::GET);
        assert_eq!(r.err(), Some(Failure::Protocol));
        // A head larger than the initial buffer but within the cap is fine.
        let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..40 {
            text.extend_from_slice(b"x-filler: ");
            text.extend_from_slice(&[b'a'; 1000]);
            text.extend_from_slice(b"\r\n");
        }
        text.extend_from_slice(b"content-length: 2\r\n\r\nok");
        let pieces = text.chunks(3000).map(<[u8]>::to_vec).collect();
        let (r, _, _) = script_run(pieces, Method::GET, 1);
        assert_eq!(r[0].as_ref().expect("large head").status, 200);
    }

    #[test]
    fn garbage_and_bad_framing_are_protocol_errors() {
        for text in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 2OO OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            let (r, conn) = one(text, Method::GET);
            let label = String::from_utf8_lossy(text);
            assert_eq!(r.err(), Some(Failure::Protocol), "{label}");
            assert!(conn.busy, "{label}: not reusable");
        }
        // A repeated equal length is fine.
        let (r, _) = one(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok",
            Method::GET,
        );
        assert!(r.is_ok());
    }

    #[test]
    fn an_early_end_of_stream_is_an_io_error() {
        for text in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\ncontent-le",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        ] {
            let (r, _) = one(text, Method::GET);
            assert_eq!(
                r.err(),
                Some(Failure::Io),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn two_responses_in_one_read_are_both_used() {
        run(async {
            let t = target(Method::GET);
            let (client, mut server) = tokio::io::duplex(4096);
            let both = [
                b"HTTP/1.1 200 OK\r\nx-backend: b1\r\ncontent-length: 3\r\n\r\none".as_slice(),
                b"HTTP/1.1 200 OK\r\nx-backend: b2\r\ntransfer-encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n",
            ]
            .concat();
            server.write_all(&both).await.expect("write");
            let mut conn = Conn::new(client);
            let mut user = User::new(2, false);
            let a = exchange(&mut conn, &t, &mut user).await.expect("first");
            assert_eq!(a.backend.expect("b1"), "b1");
            assert!(
                conn.inbox.end - conn.inbox.start > 0,
                "the second is buffered"
            );
            // The server sends nothing more: the second answer must come from the buffer.
            let b = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                exchange(&mut conn, &t, &mut user),
            )
            .await
            .expect("no read needed")
            .expect("second");
            assert_eq!(b.backend.expect("b2"), "b2");
            assert_eq!(conn.inbox.start, conn.inbox.end);
            drop(server);
        });
    }

    #[test]
    fn repeated_backend_values_share_one_allocation() {
        let mut r = Recent::default();
        let a = r.get(b"b1").expect("valid");
        let b = r.get(b"b1").expect("valid");
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        for i in 0..20 {
            r.get(format!("b{i}").as_bytes());
        }
        assert_eq!(r.0.len(), RECENT_BACKENDS);
        assert!(r.get(b"bad\x01").is_none());
    }

    #[test]
    fn targets_build_the_request_template() {
        let t = Target::new(
            "127.0.0.1:9".parse().expect("addr"),
            "h",
            &PathAndQuery::from_static("/"),
            Method::POST,
            HeaderName::from_static("x-backend"),
        )
        .expect("valid");
        assert_eq!(&t.head[..], b"POST / HTTP/1.1\r\nhost: h\r\n");
        for host in [
            "shop.example.com",
            "shop.example.com:8080",
            "[::1]:8080",
            "10.0.0.5",
        ] {
            let t = Target::new(
                "127.0.0.1:9".parse().expect("addr"),
                host,
                &PathAndQuery::from_static("/a"),
                Method::GET,
                HeaderName::from_static("x-backend"),
            )
            .expect("valid");
            assert_eq!(t.head, format!("GET /a HTTP/1.1\r\nhost: {host}\r\n"));
        }
        assert!(
            Target::new(
                "127.0.0.1:9".parse().expect("addr"),
                "bad\nhost",
                &PathAndQuery::from_static("/"),
                Method::GET,
                HeaderName::from_static("x-backend"),
            )
            .is_err()
        );
    }

    /// A loopback server that answers each request on each connection with `answer`, closing
    /// the connection after `per_conn` answers; returns its address and a counter of accepts.
    async fn loopback(
        answer: &'static [u8],
        per_conn: usize,
    ) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    let mut answered = 0;
                    while answered < per_conn {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => have.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                            answered += 1;
                        }
                    }
                });
            }
        });
        (addr, accepts)
    }

    #[test]
    fn ready_conn_reuses_keep_alive_and_reconnects_after_close() {
        run(async {
            let (addr, accepts) = loopback(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                usize::MAX,
            )
            .await;
            let t = target(Method::GET);
            let mut slot = None;
            let mut user = User::new(3, false);
            for _ in 0..3 {
                let c = ready_conn(&mut slot, addr).await.expect("connect");
                exchange(c, &t, &mut user).await.expect("answer");
            }
            assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 1);

            let (addr, accepts) = loopback(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                1,
            )
            .await;
            let mut slot = None;
            for _ in 0..3 {
                let c = ready_conn(&mut slot, addr).await.expect("connect");
                exchange(c, &t, &mut user).await.expect("answer");
            }
            assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 3);
        });
    }

    #[test]
    fn a_peer_that_closes_an_idle_connection_is_noticed() {
        run(async {
            // Answers once (keep-alive), then closes.
            let (addr, accepts) =
                loopback(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 1).await;
            let t = target(Method::GET);
            let mut slot = None;
            let mut user = User::new(2, false);
            let c = ready_conn(&mut slot, addr).await.expect("connect");
            exchange(c, &t, &mut user).await.expect("answer");
            let mut closed = false;
            for _ in 0..200 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                if slot.as_mut().expect("conn").is_closed() {
                    closed = true;
                    break;
                }
            }
            assert!(closed, "the peer's close is seen while idle");
            let c = ready_conn(&mut slot, addr).await.expect("connect");
            exchange(c, &t, &mut user).await.expect("answer");
            assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn failures_map_onto_the_failure_kinds() {
        run(async {
            // Nothing listens on a port just released.
            let addr = {
                let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                l.local_addr().expect("addr")
            };
            assert_eq!(Conn::open(addr).await.err(), Some(Failure::Connect));
            // A peer that resets mid-response.
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                if let Ok((mut s, _)) = listener.accept().await {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab")
                        .await;
                    let _ = s.set_zero_linger();
                }
            });
            let mut conn = Conn::open(addr).await.expect("connect");
            let mut user = User::new(1, false);
            let r = exchange(&mut conn, &target(Method::GET), &mut user).await;
            assert_eq!(r.err(), Some(Failure::Io));
            assert!(conn.is_closed());
        });
    }
}
