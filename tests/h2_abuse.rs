//! HTTP/2 abuse, over h2c (prior knowledge) and over TLS (ALPN h2): rapid reset, CONTINUATION
//! flood, SETTINGS / PING / empty DATA floods. Frames are written by hand on a raw connection
//! and the frames stickyd sends back are parsed by a small reader. Every attack is bounded in
//! count and guarded by timeouts; each test asserts how the attack ended (GOAWAY with its code,
//! close, or the server stopped reading) and that what the server accepted was bounded.
//! Figures are printed (`--nocapture`) for docs/reliability.md.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
// Error codes.
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// How long one write may block before the test concludes the server stopped reading.
const STALL: Duration = Duration::from_secs(2);
/// Guard for anything that should happen promptly (a handshake, a GOAWAY after an error).
const GUARD: Duration = Duration::from_secs(10);

fn code_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x6 => "FRAME_SIZE_ERROR",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        _ => "other",
    }
}

/// Appends one frame: the 9-byte header and the payload.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with an `n`-bit prefix; `high` holds the bits above the prefix.
fn hpack_int(out: &mut Vec<u8>, high: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// "Literal header field without indexing — new name", no Huffman coding.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

fn request_block(method: &str, scheme: &str, path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", method);
    literal(&mut b, ":scheme", scheme);
    literal(&mut b, ":path", path);
    literal(&mut b, ":authority", "h2.test");
    b
}

/// What the reader has seen of the frames stickyd sent back.
#[derive(Debug, Default, Clone)]
struct Seen {
    frames: usize,
    settings: usize,
    settings_acks: usize,
    ping_acks: usize,
    headers: usize,
    rst: usize,
    /// GOAWAY: (last stream id, error code, debug data).
    goaway: Option<(u32, u32, String)>,
    /// EOF or a read error.
    closed: bool,
}

/// Reads frames until the connection ends, publishing what it saw.
async fn reader(mut r: impl AsyncRead + Unpin, tx: watch::Sender<Seen>) {
    loop {
        let mut head = [0u8; 9];
        if r.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).await.is_err() {
            break;
        }
        let (kind, flags) = (head[3], head[4]);
        tx.send_modify(|s| {
            s.frames += 1;
            match kind {
                SETTINGS if flags & ACK != 0 => s.settings_acks += 1,
                SETTINGS => s.settings += 1,
                PING if flags & ACK != 0 => s.ping_acks += 1,
                HEADERS => s.headers += 1,
                RST_STREAM => s.rst += 1,
                GOAWAY if payload.len() >= 8 && s.goaway.is_none() => {
                    let last = u32::from_be_bytes(payload[0..4].try_into().unwrap()) & 0x7fff_ffff;
                    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                    let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                    s.goaway = Some((last, code, debug));
                }
                _ => {}
            }
        });
    }
    tx.send_modify(|s| s.closed = true);
}

type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A raw HTTP/2 client connection: a write half and what the reader saw.
struct Raw {
    w: Writer,
    seen: watch::Receiver<Seen>,
    scheme: &'static str,
    /// Bytes written so far (the preface included).
    sent: usize,
}

/// How an attack ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// GOAWAY with this error code.
    GoAway(u32),
    /// Closed (or reset) without a GOAWAY.
    Closed,
    /// A write blocked for [`STALL`]: the server stopped reading.
    Stalled,
    /// The test's budget ran out first.
    Budget,
}

#[derive(Debug)]
struct Outcome {
    end: End,
    /// Attack units (streams, frames) written before the end.
    units: usize,
    /// Bytes written before the end (an upper bound on what the server read).
    bytes: usize,
}

impl Raw {
    /// Starts the connection: preface and an empty SETTINGS, then (when `read`) waits for the
    /// server's SETTINGS and acknowledges them. Without `read` nothing is ever read.
    async fn start<S>(stream: S, scheme: &'static str, read: bool) -> Raw
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        let (tx, seen) = watch::channel(Seen::default());
        if read {
            tokio::spawn(reader(r, tx));
        } else {
            // The read half is kept (unread) for as long as the reader would have lived.
            tokio::spawn(async move {
                tx.closed().await;
                drop(r);
            });
        }
        let mut raw = Raw {
            w: Box::pin(w),
            seen,
            scheme,
            sent: 0,
        };
        let mut hello = PREFACE.to_vec();
        frame(&mut hello, SETTINGS, 0, 0, &[]);
        raw.write(&hello).await.expect("preface written");
        if read {
            timeout(GUARD, raw.seen.wait_for(|s| s.settings > 0))
                .await
                .expect("server SETTINGS in time")
                .expect("reader alive");
            let mut ack = Vec::new();
            frame(&mut ack, SETTINGS, ACK, 0, &[]);
            raw.write(&ack).await.expect("SETTINGS ack written");
        }
        raw
    }

    async fn h2c(addr: SocketAddr, read: bool) -> Raw {
        Raw::start(TcpStream::connect(addr).await.unwrap(), "http", read).await
    }

    async fn tls(site: &Site, read: bool) -> Raw {
        let tls = tls_connect_h2(site, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        Raw::start(tls, "https", read).await
    }

    /// Writes `buf`; Err(Stalled) when the write blocks for [`STALL`], Err(Closed) when it fails.
    async fn write(&mut self, buf: &[u8]) -> Result<(), End> {
        match timeout(STALL, async {
            self.w.write_all(buf).await?;
            self.w.flush().await
        })
        .await
        {
            Ok(Ok(())) => {
                self.sent += buf.len();
                Ok(())
            }
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::Stalled),
        }
    }

    fn ended(&self) -> Option<End> {
        let s = self.seen.borrow();
        match (&s.goaway, s.closed) {
            (Some((_, code, _)), _) => Some(End::GoAway(*code)),
            (None, true) => Some(End::Closed),
            _ => None,
        }
    }

    /// Writes `batch(i)` for i = 0.. until the server ends the connection, a write stalls, or
    /// `max` batches (of `per_batch` units each) are written. Bytes written is an upper bound on
    /// what the server read, not a measure of it: the kernel buffers megabytes on loopback.
    async fn flood(
        &mut self,
        max: usize,
        per_batch: usize,
        mut batch: impl FnMut(usize) -> Vec<u8>,
    ) -> Outcome {
        let start = self.sent;
        let mut units = 0;
        let mut end = End::Budget;
        for i in 0..max {
            if let Some(e) = self.ended() {
                end = e;
                break;
            }
            match self.write(&batch(i)).await {
                Ok(()) => units += per_batch,
                Err(e) => {
                    end = e;
                    break;
                }
            }
        }
        Outcome {
            end,
            units,
            bytes: self.sent - start,
        }
    }

    /// After a flood that ran out of budget or saw a failed write: the bytes still in the
    /// socket buffers reach the server, so wait (guarded) for it to end the connection and
    /// report how (a GOAWAY read before the close wins).
    async fn settle(&mut self, mut o: Outcome) -> Outcome {
        if matches!(o.end, End::Budget | End::Closed) {
            let _ = timeout(GUARD, self.seen.wait_for(|s| s.closed)).await;
            o.end = self.ended().unwrap_or(o.end);
        }
        o
    }

    /// The last stream id and debug data of the GOAWAY received, if any.
    fn goaway(&self) -> Option<(u32, String)> {
        let s = self.seen.borrow();
        s.goaway
            .as_ref()
            .map(|(last, _, debug)| (*last, debug.clone()))
    }

    /// Waits (guarded) until the server closes the connection; true if it did.
    async fn closes(&mut self) -> bool {
        timeout(GUARD, self.seen.wait_for(|s| s.closed))
            .await
            .is_ok()
    }
}

// ---- TLS ----------------------------------------------------------------------------------

struct Site {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
    addr: SocketAddr,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed certificate for h2.test in a fresh directory.
fn cert(tag: &str) -> Site {
    let dir = std::env::temp_dir().join(format!("stickyd-h2abuse-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = self_signed(&dir, "h2", "h2.test");
    Site {
        dir,
        cert: c.cert,
        key: c.key,
        der: c.der,
        addr: "127.0.0.1:0".parse().unwrap(),
    }
}

/// stickyd with one plain and one TLS listener in front of `backend`; the site's `addr` is
/// set to the TLS listener. Returns (stickyd, plain address).
async fn stickyd_tls(
    server: &str,
    site: &mut Site,
    backend: &TestBackend,
) -> (stickyd::server::Running, SocketAddr) {
    let mut text = config_text(&Cfg::default(), &pool(&[backend])).replace(
        "listen = [\"127.0.0.1:0\"]\n",
        &format!("listen = [\"127.0.0.1:0\"]\nlisten_tls = [\"127.0.0.1:0\"]\n{server}\n"),
    );
    text.push_str(&format!(
        "[tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
        site.cert, site.key
    ));
    let lb = stickyd::server::start(parse_config(&text)).await.unwrap();
    site.addr = lb.local_addrs()[1];
    let plain = lb.local_addrs()[0];
    (lb, plain)
}

async fn tls_connect_h2(site: &Site, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
    timeout(GUARD, tls_connect(site.addr, "h2.test", &site.der, alpn))
        .await
        .expect("TLS handshake in time")
        .unwrap()
}

// ---- The attacks ----------------------------------------------------------------------------

/// Rapid reset: HEADERS (END_STREAM) then RST_STREAM(CANCEL) on each new stream, 50 streams a
/// write, up to `streams` streams.
async fn rapid_reset(c: &mut Raw, streams: usize) -> Outcome {
    let block = request_block("GET", c.scheme, "/rapid");
    let mut cancel = Vec::new();
    cancel.extend_from_slice(&CANCEL.to_be_bytes());
    const PER: usize = 50;
    c.flood(streams / PER, PER, |i| {
        let mut out = Vec::new();
        for k in 0..PER {
            let id = 1 + 2 * (i * PER + k) as u32;
            frame(&mut out, HEADERS, END_HEADERS | END_STREAM, id, &block);
            frame(&mut out, RST_STREAM, 0, id, &cancel);
        }
        out
    })
    .await
}

/// CONTINUATION flood: HEADERS without END_HEADERS, then CONTINUATION frames of `size` bytes
/// (whole header fields, or nothing when `size` is 0), never ending the block; up to `bytes`.
async fn continuation_flood(c: &mut Raw, size: usize, bytes: usize) -> Outcome {
    let mut head = Vec::new();
    frame(
        &mut head,
        HEADERS,
        END_STREAM,
        1,
        &request_block("GET", c.scheme, "/cont"),
    );
    c.write(&head).await.expect("HEADERS written");
    let mut field = Vec::new();
    if size > 0 {
        // 0x00, name length, "x-flood", a 3-byte value length: 12 bytes around the value.
        literal(&mut field, "x-flood", &"a".repeat(size - 12));
        assert_eq!(field.len(), size);
    }
    let mut one = Vec::new();
    frame(&mut one, CONTINUATION, 0, 1, &field);
    // About 16 KiB a write.
    let per = (16_384 / one.len()).max(1);
    let batch = one.repeat(per);
    let max = bytes / batch.len() + 1;
    c.flood(max, per, |_| batch.clone()).await
}

/// `count` copies of one control frame (17 bytes for PING, 9 for empty SETTINGS), 1000 a write.
async fn control_flood(c: &mut Raw, kind: u8, count: usize) -> Outcome {
    let mut one = Vec::new();
    match kind {
        PING => frame(&mut one, PING, 0, 0, b"abusive!"),
        _ => frame(&mut one, SETTINGS, 0, 0, &[]),
    }
    let batch = one.repeat(1000);
    c.flood(count / 1000, 1000, |_| batch.clone()).await
}

/// Opens a POST to /echo (no END_STREAM) and sends empty DATA frames on it, 1000 a write.
async fn empty_data_flood(c: &mut Raw, count: usize) -> Outcome {
    let mut head = Vec::new();
    frame(
        &mut head,
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", c.scheme, "/echo"),
    );
    c.write(&head).await.expect("HEADERS written");
    let mut one = Vec::new();
    frame(&mut one, DATA, 0, 1, &[]);
    let batch = one.repeat(1000);
    c.flood(count / 1000, 1000, |_| batch.clone()).await
}

fn report(case: &str, transport: &str, c: &Raw, o: &Outcome, extra: &str) {
    let end = match (&o.end, c.goaway()) {
        (End::GoAway(code), Some((last, debug))) => format!(
            "GOAWAY {} (0x{code:x}, last stream {last}, debug {debug:?})",
            code_name(*code)
        ),
        (e, _) => format!("{e:?}"),
    };
    eprintln!(
        "[h2_abuse] {case} over {transport}: {end}; {} units ({} bytes) written by then{extra}",
        o.units, o.bytes
    );
}

// ---- Tests --------------------------------------------------------------------------------

/// Rapid reset (CVE-2023-44487): after about twenty streams opened and reset the connection
/// gets GOAWAY ENHANCE_YOUR_CALM; the GOAWAY's last stream id bounds the streams the server
/// processed, and (almost) none of them reach the backend.
async fn rapid_reset_case(mut c: Raw, transport: &str, backend: &TestBackend) {
    const SENT: usize = 20_000;
    let before = backend.requests();
    let o = rapid_reset(&mut c, SENT).await;
    let o = c.settle(o).await;
    assert!(c.closes().await, "closed after the attack");
    let reached = backend.requests() - before;
    report(
        "rapid reset",
        transport,
        &c,
        &o,
        &format!(", {reached} requests reached the backend"),
    );
    assert_eq!(o.end, End::GoAway(ENHANCE_YOUR_CALM), "{o:?}");
    let (last, _) = c.goaway().unwrap();
    // Client stream ids are odd: stream n has id 2n - 1.
    let processed = (last as usize).div_ceil(2);
    assert!(processed <= 200, "{processed} streams processed");
    assert!(
        reached <= processed,
        "{reached} requests reached the backend"
    );
}

#[tokio::test]
async fn rapid_reset_gets_goaway_over_h2c() {
    let backend = TestBackend::start("app").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&backend])).await;
    let c = Raw::h2c(lb.local_addrs()[0], true).await;
    rapid_reset_case(c, "h2c", &backend).await;
}

#[tokio::test]
async fn rapid_reset_gets_goaway_over_tls() {
    let backend = TestBackend::start("app").await;
    let mut site = cert("rapid");
    let (_lb, _) = stickyd_tls("", &mut site, &backend).await;
    let c = Raw::tls(&site, true).await;
    rapid_reset_case(c, "TLS", &backend).await;
}

/// CONTINUATION flood (CVE-2024-27316 class): big and empty CONTINUATION frames both end in
/// GOAWAY (the header block is bounded by max_header_bytes, 64 KiB by default, and the number
/// of CONTINUATION frames by h2), and nothing reaches the backend.
async fn continuation_case(mut big: Raw, mut empty: Raw, transport: &str, backend: &TestBackend) {
    let before = backend.requests();
    let o = continuation_flood(&mut big, 4096, 64 << 20).await;
    let o = big.settle(o).await;
    assert!(big.closes().await, "closed after the attack");
    report("CONTINUATION flood (4 KiB frames)", transport, &big, &o, "");
    assert!(matches!(o.end, End::GoAway(_)), "{o:?}");

    let o = continuation_flood(&mut empty, 0, 8 << 20).await;
    let o = empty.settle(o).await;
    assert!(empty.closes().await, "closed after the attack");
    report(
        "CONTINUATION flood (empty frames)",
        transport,
        &empty,
        &o,
        "",
    );
    assert!(matches!(o.end, End::GoAway(_)), "{o:?}");
    assert_eq!(
        backend.requests(),
        before,
        "no request from an unfinished header block"
    );
}

#[tokio::test]
async fn continuation_flood_gets_goaway_over_h2c() {
    let backend = TestBackend::start("app").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&backend])).await;
    let addr = lb.local_addrs()[0];
    let (big, empty) = (Raw::h2c(addr, true).await, Raw::h2c(addr, true).await);
    continuation_case(big, empty, "h2c", &backend).await;
}

#[tokio::test]
async fn continuation_flood_gets_goaway_over_tls() {
    let backend = TestBackend::start("app").await;
    let mut site = cert("cont");
    let (_lb, _) = stickyd_tls("", &mut site, &backend).await;
    let (big, empty) = (Raw::tls(&site, true).await, Raw::tls(&site, true).await);
    continuation_case(big, empty, "TLS", &backend).await;
}

/// PING and SETTINGS floods. Read by the attacker, each frame gets exactly one ACK (no
/// amplification, nothing queued). Not read, the server stops reading once its ACKs cannot be
/// written: the attacker's writes stall after a bounded number of frames.
async fn control_case(kind: u8, name: &str, connect: impl AsyncFn(bool) -> Raw, transport: &str) {
    const READ_COUNT: usize = 20_000;
    let mut reading = connect(true).await;
    let o = control_flood(&mut reading, kind, READ_COUNT).await;
    // Everything sent is answered: wait (guarded) for the last ACK.
    let want = if kind == PING { o.units } else { o.units + 1 };
    let answered = timeout(
        GUARD,
        reading.seen.wait_for(|s| {
            s.closed
                || (if kind == PING {
                    s.ping_acks
                } else {
                    s.settings_acks
                }) >= want
        }),
    )
    .await
    .is_ok();
    let acks = {
        let s = reading.seen.borrow();
        if kind == PING {
            s.ping_acks
        } else {
            s.settings_acks
        }
    };
    report(
        &format!("{name} flood (read)"),
        transport,
        &reading,
        &o,
        &format!(", {acks} ACKs received"),
    );
    assert!(answered, "every frame answered or the connection closed");
    assert!(
        matches!(o.end, End::Budget | End::GoAway(_) | End::Closed),
        "{o:?}"
    );
    assert!(acks <= want, "one ACK per frame at most");

    // Not reading: bounded to 4 million frames (68 MB of PINGs) by the test; the server must
    // stop reading (or close) long before.
    const LIMIT: usize = 4_000_000;
    let mut deaf = connect(false).await;
    let o = control_flood(&mut deaf, kind, LIMIT).await;
    report(
        &format!("{name} flood (not read)"),
        transport,
        &deaf,
        &o,
        "",
    );
    assert!(o.end != End::Budget, "the server stopped reading: {o:?}");
    assert!(o.units < LIMIT, "{o:?}");
}

#[tokio::test]
async fn ping_flood_is_answered_one_to_one_and_stalls_when_unread_over_h2c() {
    let backend = TestBackend::start("app").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&backend])).await;
    let addr = lb.local_addrs()[0];
    control_case(PING, "PING", async |read| Raw::h2c(addr, read).await, "h2c").await;
}

#[tokio::test]
async fn settings_flood_is_answered_one_to_one_and_stalls_when_unread_over_h2c() {
    let backend = TestBackend::start("app").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&backend])).await;
    let addr = lb.local_addrs()[0];
    control_case(
        SETTINGS,
        "SETTINGS",
        async |read| Raw::h2c(addr, read).await,
        "h2c",
    )
    .await;
}

#[tokio::test]
async fn ping_and_settings_floods_over_tls() {
    let backend = TestBackend::start("app").await;
    let mut site = cert("ctl");
    let (_lb, _) = stickyd_tls("", &mut site, &backend).await;
    let site = &site;
    control_case(PING, "PING", async |read| Raw::tls(site, read).await, "TLS").await;
    control_case(
        SETTINGS,
        "SETTINGS",
        async |read| Raw::tls(site, read).await,
        "TLS",
    )
    .await;
}

/// Empty DATA frames on an open POST: GOAWAY ENHANCE_YOUR_CALM (h2 allows 100 a connection).
async fn empty_data_case(mut c: Raw, transport: &str) {
    let o = empty_data_flood(&mut c, 4_000_000).await;
    let o = c.settle(o).await;
    assert!(c.closes().await, "closed after the attack");
    report("empty DATA flood", transport, &c, &o, "");
    assert_eq!(o.end, End::GoAway(ENHANCE_YOUR_CALM), "{o:?}");
}

#[tokio::test]
async fn empty_data_flood_gets_goaway_over_h2c() {
    let backend = TestBackend::start("app").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&backend])).await;
    empty_data_case(Raw::h2c(lb.local_addrs()[0], true).await, "h2c").await;
}

#[tokio::test]
async fn empty_data_flood_gets_goaway_over_tls() {
    let backend = TestBackend::start("app").await;
    let mut site = cert("data");
    let (_lb, _) = stickyd_tls("", &mut site, &backend).await;
    empty_data_case(Raw::tls(&site, true).await, "TLS").await;
}

// ---- Legitimate clients ---------------------------------------------------------------------

/// Attacks `addr` (h2c) in a loop, one attack per connection, cycling through every kind,
/// until `stop`; counts attacking connections.
async fn attacker(addr: SocketAddr, stop: Arc<AtomicBool>, conns: Arc<AtomicUsize>) {
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let mut c = Raw::h2c(addr, true).await;
        let _ = match i % 5 {
            0 => rapid_reset(&mut c, 5_000).await,
            1 => continuation_flood(&mut c, 4096, 1 << 20).await,
            2 => control_flood(&mut c, PING, 5_000).await,
            3 => control_flood(&mut c, SETTINGS, 5_000).await,
            _ => empty_data_flood(&mut c, 5_000).await,
        };
        conns.fetch_add(1, Ordering::SeqCst);
        i += 1;
    }
}

/// `n` GETs over one h2c connection (hyper's client); the statuses.
async fn h2_client(addr: SocketAddr, n: usize) -> Vec<u16> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for i in 0..n {
        let req = Request::get(format!("http://h2.test/legit/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        out.push(resp.status().as_u16());
        resp.into_body().collect().await.unwrap();
    }
    out
}

/// Waits until an attacker has finished its first attacking connection.
async fn first_attack(conns: &AtomicUsize) {
    timeout(GUARD, async {
        while conns.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a first attack finished");
}

/// Four attackers on one worker thread (every connection shares it) while an h2c client and
/// an HTTP/1.1 client each send 50 requests: all 100 answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_clients_are_unaffected_by_attacks_on_other_connections() {
    let backend = TestBackend::start("app").await;
    let cfg = Cfg {
        server: "worker_threads = 1",
        ..Cfg::default()
    };
    let lb = stickyd(&cfg, &pool(&[&backend])).await;
    let addr = lb.local_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let conns = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(attacker(addr, stop.clone(), conns.clone())))
        .collect();
    // The attack is under way before the legitimate clients start.
    first_attack(&conns).await;

    let legit = async {
        let h2 = h2_client(addr, 50);
        let h1 = async {
            let mut b = Browser::new(addr);
            let mut out = Vec::new();
            for i in 0..50 {
                out.push(b.get(&format!("/legit-h1/{i}")).await.status);
            }
            out
        };
        tokio::join!(h2, h1)
    };
    let (h2, h1) = timeout(Duration::from_secs(20), legit)
        .await
        .expect("legitimate clients answered in time");
    stop.store(true, Ordering::SeqCst);
    let during = conns.load(Ordering::SeqCst);
    for a in attackers {
        let _ = timeout(GUARD, a).await;
    }
    let ok = |v: &[u16]| v.iter().filter(|s| **s == 200).count();
    eprintln!(
        "[h2_abuse] legitimate: h2c {}/50, HTTP/1.1 {}/50 answered 200 while {during} attacking connections ran",
        ok(&h2),
        ok(&h1)
    );
    assert_eq!(ok(&h2), 50, "{h2:?}");
    assert_eq!(ok(&h1), 50, "{h1:?}");
}

/// The same over TLS: attackers on TLS (rapid reset and CONTINUATION), a legitimate h2 client
/// on TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_tls_client_is_unaffected_by_tls_attacks() {
    let backend = TestBackend::start("app").await;
    let mut site = cert("legit");
    let (_lb, _) = stickyd_tls("worker_threads = 1", &mut site, &backend).await;
    let site = Arc::new(site);
    let stop = Arc::new(AtomicBool::new(false));
    let conns = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..2)
        .map(|k| {
            let (site, stop, conns) = (site.clone(), stop.clone(), conns.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let mut c = Raw::tls(&site, true).await;
                    if k == 0 {
                        rapid_reset(&mut c, 5_000).await;
                    } else {
                        continuation_flood(&mut c, 4096, 1 << 20).await;
                    }
                    conns.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    first_attack(&conns).await;
    let legit = async {
        let tls = tls_connect_h2(&site, &[b"h2"]).await;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut ok = 0;
        for i in 0..50 {
            let req = Request::get(format!("https://h2.test/legit/{i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            ok += usize::from(resp.status() == 200);
            resp.into_body().collect().await.unwrap();
        }
        ok
    };
    let ok = timeout(Duration::from_secs(20), legit)
        .await
        .expect("legitimate client answered in time");
    stop.store(true, Ordering::SeqCst);
    let during = conns.load(Ordering::SeqCst);
    for a in attackers {
        let _ = timeout(GUARD, a).await;
    }
    eprintln!(
        "[h2_abuse] legitimate TLS h2: {ok}/50 answered 200 while {during} attacking TLS connections ran"
    );
    assert_eq!(ok, 50);
}

// ---- Memory -------------------------------------------------------------------------------

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Waits (guarded) until the server side of every connection to `port` has stopped taking in
/// bytes: its receive queue (in /proc/net/tcp) is empty or no longer shrinking.
async fn settled(port: u16) {
    let queued = || -> u64 {
        let t = std::fs::read_to_string("/proc/net/tcp").unwrap();
        t.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let local_port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
                let rx = u64::from_str_radix(f[4].rsplit(':').next()?, 16).ok()?;
                (local_port == port).then_some(rx)
            })
            .sum()
    };
    let mut last = u64::MAX;
    for _ in 0..100 {
        let q = queued();
        if q == 0 || q == last {
            return;
        }
        last = q;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Heavier: RSS of the whole test process (stickyd in-process, the attackers included) before
/// and after 200 connections that each hold an unfinished header block just under the limit
/// (the most an attacker can make stickyd buffer), then after 50 more connections flooding
/// PINGs without reading (pongs pending; client socket buffers kept small so the kernel does
/// not hold gigabytes). Run with `cargo test --test h2_abuse -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn memory_per_attacking_connection_is_bounded() {
    const HELD: usize = 200;
    const DEAF: usize = 50;
    let backend = TestBackend::start("app").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&backend])).await;
    let addr = lb.local_addrs()[0];
    // HEADERS and 4 CONTINUATION frames of 14 000 bytes: 56 KB of headers in five frames,
    // under max_header_bytes (64 KiB) and h2's CONTINUATION count limit; the block stays open.
    let mut block = Vec::new();
    frame(
        &mut block,
        HEADERS,
        END_STREAM,
        1,
        &request_block("GET", "http", "/m"),
    );
    for i in 0..4 {
        let mut field = Vec::new();
        literal(&mut field, &format!("x-big-{i}"), &"a".repeat(13_986));
        frame(&mut block, CONTINUATION, 0, 1, &field);
    }
    // Warm-up, so allocator arenas and lazy statics are in place.
    let mut w = Raw::h2c(addr, true).await;
    w.write(&block).await.unwrap();
    drop(w);

    let base = vm_rss_kib();
    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut c = Raw::h2c(addr, true).await;
        c.write(&block).await.unwrap();
        held.push(c);
    }
    settled(addr.port()).await;
    let open = held.iter().filter(|c| c.ended().is_none()).count();
    assert_eq!(open, HELD, "every header block held open");
    let cont = vm_rss_kib();

    let mut floods = tokio::task::JoinSet::new();
    for _ in 0..DEAF {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_send_buffer_size(64 * 1024).unwrap();
        sock.set_recv_buffer_size(64 * 1024).unwrap();
        let tcp = sock.connect(addr).await.unwrap();
        floods.spawn(async move {
            let mut c = Raw::start(tcp, "http", false).await;
            let o = control_flood(&mut c, PING, 2_000_000).await;
            (c, o)
        });
    }
    let mut deaf = Vec::new();
    while let Some(r) = floods.join_next().await {
        let (c, o) = r.unwrap();
        assert_eq!(o.end, End::Stalled, "{o:?}");
        deaf.push(c);
    }
    settled(addr.port()).await;
    let pings = vm_rss_kib();
    eprintln!(
        "[h2_abuse] VmRSS: {base} KiB before; {cont} KiB with {HELD} open 56 KB header blocks (+{} KiB/conn); {pings} KiB with {DEAF} more unread PING floods (+{} KiB/conn)",
        (cont.saturating_sub(base)) / HELD as u64,
        (pings.saturating_sub(cont)) / DEAF as u64
    );
    drop(held);
    drop(deaf);
    drop(lb);
}
