//! The classified request corpus of AWS's `http_desync_guardian` (its tests/*.yaml, copied with
//! its Apache-2.0 license into tests/data/http_desync_guardian/), replayed through stickyd to a
//! backend that records every byte it receives, each case followed on the same connection by
//! a valid pipelined request.
//!
//! What each tier must get (the corpus's own rules, tests/README.md of the crate):
//! - Severe: 400, the connection closed, 0 bytes at the backend (not even the pipelined one).
//! - Ambiguous: rejected like Severe, or forwarded with exactly one framing and the client
//!   connection closed after the response, so nothing behind it is read.
//! - Compliant and Acceptable: answered (forwarded, or refused with a 4xx where stickyd is
//!   stricter), and the pipelined request gets its own response or the connection is closed.
//!
//! Whatever the tier, every message the backend receives must parse as exactly one request
//! with exactly one framing (never Content-Length and Transfer-Encoding together), and no byte
//! of the client's may reach the backend outside a parsed request.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Deserialize)]
struct Case {
    name: String,
    uri: String,
    method: String,
    version: String,
    headers: Vec<Header>,
    expected: Expected,
}

#[derive(Deserialize)]
struct Header {
    name: String,
    value: serde_yaml_ng::Value,
}

#[derive(Deserialize)]
struct Expected {
    tier: String,
}

fn value_text(v: &serde_yaml_ng::Value) -> String {
    match v {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::Bool(b) => b.to_string(),
        serde_yaml_ng::Value::Null => String::new(),
        other => panic!("unexpected header value {other:?}"),
    }
}

const FILES: &[&str] = &[
    "acceptable.yaml",
    "ambiguous.yaml",
    "bad-header-characters.yaml",
    "edge-cases.yaml",
    "more-compliant-tests.yaml",
    "real-life-test-cases.yaml",
    "rfc-compliant.yaml",
    "severe.yaml",
    "uri-specific-test-cases.yaml",
];

fn corpus() -> Vec<(String, Case)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/http_desync_guardian");
    let mut all = Vec::new();
    for f in FILES {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        let cases: Vec<Case> =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        all.extend(cases.into_iter().map(|c| (f.to_string(), c)));
    }
    all
}

/// The bytes of a case: its request line and headers as given (a Host added first when the
/// case has none, since HTTP/1.1 requires one), a body matching its declared framing when that
/// framing is well-formed, then a valid pipelined request.
fn bytes_of(case: &Case) -> Vec<u8> {
    let mut b = Vec::new();
    let line = if case.version.is_empty() {
        format!("{} {}\r\n", case.method, case.uri)
    } else {
        format!("{} {} {}\r\n", case.method, case.uri, case.version)
    };
    b.extend_from_slice(line.as_bytes());
    let has_host = case
        .headers
        .iter()
        .any(|h| h.name.trim().eq_ignore_ascii_case("host"));
    if !has_host {
        b.extend_from_slice(b"Host: localhost\r\n");
    }
    let mut body = Vec::new();
    for h in &case.headers {
        let v = value_text(&h.value);
        b.extend_from_slice(h.name.as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(b"\r\n");
        if h.name == "Transfer-Encoding" && v.trim().ends_with("chunked") {
            body = b"5\r\nhello\r\n0\r\n\r\n".to_vec();
        } else if h.name.eq_ignore_ascii_case("content-length") && body.is_empty() {
            if let Ok(n) = v.trim().parse::<usize>() {
                body = vec![b'x'; n.min(8 << 20)];
            }
        }
    }
    b.extend_from_slice(b"\r\n");
    b.extend_from_slice(&body);
    b.extend_from_slice(PIPELINED);
    b
}

const PIPELINED: &[u8] = b"GET /pipelined HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// A backend that records every byte and answers each request it can frame, per RFC 9112, with
/// a 200. Whatever it cannot frame is recorded as unframed and the connection closed.
#[derive(Default)]
struct Record {
    /// One per request the backend parsed: its head, as text.
    heads: Vec<String>,
    /// Requests that carried both Content-Length and Transfer-Encoding, or several of either.
    double_framed: usize,
    /// Bytes the backend could not parse as a request.
    unframed: usize,
    /// All bytes received.
    bytes: usize,
}

async fn recorder() -> (SocketAddr, Arc<Mutex<Record>>) {
    let rec = Arc::new(Mutex::new(Record::default()));
    let r = rec.clone();
    let addr = raw_server(move |s| serve_recorded(s, r.clone())).await;
    (addr, rec)
}

async fn serve_recorded(mut s: TcpStream, rec: Arc<Mutex<Record>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // Parse what we have; read more when it is incomplete.
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = httparse::ParserConfig::default().parse_request(&mut req, &buf);
        let head_len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        rec.lock().unwrap().unframed += buf.len();
                        return;
                    }
                    Ok(n) => {
                        rec.lock().unwrap().bytes += n;
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
                continue;
            }
            Err(_) => {
                rec.lock().unwrap().unframed += buf.len();
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let cls: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value)
            .collect();
        let tes: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value)
            .collect();
        let healthz = req.path == Some("/healthz");
        let double = cls.len() + tes.len() > 1;
        let chunked = tes.len() == 1 && tes[0].eq_ignore_ascii_case(b"chunked");
        let length = match (cls.first(), tes.first()) {
            (Some(v), None) => std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<usize>().ok()),
            _ => Some(0),
        };
        let te_bad = !tes.is_empty() && !chunked;
        buf.drain(..head_len);
        if healthz {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            return;
        }
        {
            let mut r = rec.lock().unwrap();
            r.heads.push(head);
            r.double_framed += usize::from(double);
        }
        if te_bad || length.is_none() {
            rec.lock().unwrap().unframed += buf.len();
            return;
        }
        // Consume the body by its one framing.
        if chunked {
            loop {
                let Some(end) = buf.windows(5).position(|w| w == b"0\r\n\r\n") else {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            rec.lock().unwrap().bytes += n;
                            buf.extend_from_slice(&chunk[..n]);
                        }
                    }
                    continue;
                };
                buf.drain(..end + 5);
                break;
            }
        } else {
            let n = length.unwrap_or(0);
            while buf.len() < n {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => {
                        rec.lock().unwrap().bytes += k;
                        buf.extend_from_slice(&chunk[..k]);
                    }
                }
            }
            buf.drain(..n);
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// What the client saw: the status of each complete response in order, and whether the
/// connection was closed by stickyd (rather than left open after the responses).
struct Seen {
    statuses: Vec<u16>,
    closed: bool,
}

/// Sends `raw` and reads responses until two have arrived, the connection closes, or a guard
/// of 5 s passes (then `closed` is false).
async fn exchange(lb: SocketAddr, raw: &[u8], head: bool) -> Seen {
    let mut s = TcpStream::connect(lb).await.unwrap();
    let _ = s.write_all(raw).await;
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let mut chunk = [0u8; 8192];
    let guard = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(guard);
    loop {
        // Take every complete response off the front of the buffer.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) else {
                break;
            };
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            // The response to a HEAD has no body, whatever its Content-Length says.
            let len = if head && statuses.is_empty() { 0 } else { len };
            if buf.len() < n + len {
                break;
            }
            statuses.push(resp.code.unwrap_or(0));
            buf.drain(..n + len);
        }
        if statuses.len() >= 2 {
            return Seen {
                statuses,
                closed: false,
            };
        }
        tokio::select! {
            r = s.read(&mut chunk) => match r {
                Ok(0) | Err(_) => return Seen { statuses, closed: true },
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            _ = &mut guard => return Seen { statuses, closed: false },
        }
    }
}

/// The ambiguous cases whose only ambiguity is a repeated, identical Content-Length.
const MERGED_CONTENT_LENGTH: &[&str] = &["Duplicate Content-Length", "Two Identical Fields - CL"];

#[derive(Default)]
struct Tally {
    cases: usize,
    rejected: usize,
    forwarded: usize,
}

#[tokio::test]
async fn the_http_desync_guardian_corpus_is_refused_or_forwarded_with_one_framing() {
    let corpus = corpus();
    assert!(
        corpus.len() > 150,
        "the corpus is all there: {}",
        corpus.len()
    );
    let mut report = Vec::new();
    let mut tallies: std::collections::BTreeMap<String, Tally> = Default::default();
    let mut failures = 0;
    // Each case gets its own stickyd and backend, so what the backend saw is that case's alone.
    let cfg = Cfg {
        server: "worker_threads = 1",
        ..Cfg::default()
    };
    for (file, case) in &corpus {
        let (backend, rec) = recorder().await;
        let lb = stickyd(&cfg, &[("r", backend)]).await;
        let seen = exchange(lb.local_addrs()[0], &bytes_of(case), case.method == "HEAD").await;
        // stickyd has answered; the backend has what it will get once its connection ends.
        drop(lb);
        let r = std::mem::take(&mut *rec.lock().unwrap());
        let to_backend = r.heads.len();
        let first = seen.statuses.first().copied();
        // 501: a transfer coding other than chunked (stickyd only re-frames with chunked).
        let rejected = first.is_some_and(|s| (400..500).contains(&s) || s == 501);
        let mut why = Vec::new();
        if r.double_framed > 0 {
            why.push("a message with two framings reached the backend");
        }
        if r.unframed > 0 {
            why.push("bytes the backend could not frame");
        }
        if first.is_none() {
            why.push("no response");
        }
        if first.is_some_and(|s| s >= 500 && s != 501) {
            why.push("a 5xx");
        }
        match case.expected.tier.as_str() {
            "Severe" => {
                if !(rejected && first == Some(400) && seen.closed && r.bytes == 0) {
                    why.push("severe: must be 400, closed, 0 bytes to the backend");
                }
            }
            "Ambiguous" => {
                let refused = rejected && seen.closed && r.bytes == 0;
                let forwarded_then_closed =
                    !rejected && to_backend == 1 && seen.statuses.len() == 1 && seen.closed;
                // Identical Content-Lengths are merged into one by hyper's parser before stickyd
                // sees the request (RFC 9110 section 8.6 allows exactly this instead of
                // refusing); the backend must then see one Content-Length and one message.
                let merged = MERGED_CONTENT_LENGTH.contains(&case.name.as_str())
                    && r.double_framed == 0
                    && r.heads
                        .iter()
                        .all(|h| h.to_ascii_lowercase().matches("content-length:").count() <= 1);
                if !(refused || forwarded_then_closed || merged) {
                    why.push("ambiguous: must be refused, or forwarded once and then closed");
                }
            }
            _ => {
                // Compliant/Acceptable: answered; the pipelined request answered or closed.
                let pipelined_ok = seen.statuses.len() == 2 || seen.closed;
                if !pipelined_ok {
                    why.push("the pipelined request neither answered nor the connection closed");
                }
                if !rejected && !r.heads.iter().any(|h| h.contains(case.method.as_str())) {
                    why.push("answered 2xx but never reached the backend");
                }
            }
        }
        let t = tallies.entry(case.expected.tier.clone()).or_default();
        t.cases += 1;
        t.rejected += usize::from(rejected);
        t.forwarded += usize::from(!rejected && to_backend > 0);
        let verdict = if why.is_empty() { "ok" } else { "FAILED" };
        failures += usize::from(!why.is_empty());
        report.push(format!(
            "{verdict:6} {:10} {file:30} {:60} statuses {:?} closed {} backend requests {} bytes {} {}",
            case.expected.tier,
            case.name.escape_debug().to_string(),
            seen.statuses,
            seen.closed,
            to_backend,
            r.bytes,
            why.join("; ")
        ));
    }
    for (tier, t) in &tallies {
        report.push(format!(
            "{tier}: {} cases, {} refused (4xx or 501), {} forwarded",
            t.cases, t.rejected, t.forwarded
        ));
    }
    let text = report.join("\n");
    println!("{text}");
    assert_eq!(failures, 0, "\n{text}");
}
