//! The access log: one line per request, as text or JSON, to stdout or a file.
//!
//! The request path never waits for it. A line is formatted on the worker and handed to a
//! writer thread through a bounded queue; when the queue is full (the disk or the reader of
//! stdout is slower than the traffic) the line is dropped and counted
//! (`stickyd_access_log_dropped_total`). The writer flushes whenever the queue runs empty.
//!
//! A line is written when the response is over (its body sent, or abandoned by the client), so
//! it carries the bytes sent and the whole duration.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;

use crate::affinity::Outcome;

/// Lines that may wait for the writer.
const QUEUE: usize = 16 * 1024;

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// No access log.
    Off,
    /// One line of `key=value` fields after the request line.
    Text,
    /// One JSON object per line.
    Json,
}

/// One request as the access log records it.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the request arrived.
    pub time: SystemTime,
    /// The client's address.
    pub client: IpAddr,
    /// Request method.
    pub method: Method,
    /// Path and query.
    pub target: String,
    /// HTTP version as written in a request line (`HTTP/1.1`, `HTTP/2.0`).
    pub version: &'static str,
    /// Response status.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// From arrival to the end of the response.
    pub duration: Duration,
    /// The pool the request was routed to, if a route matched.
    pub pool: Option<Arc<str>>,
    /// The backend that answered, if one did.
    pub backend: Option<Arc<str>>,
    /// The affinity outcome, if routing got that far.
    pub outcome: Option<Outcome>,
    /// Whether the session was moved to a fallback backend.
    pub repinned: bool,
}

impl Record {
    /// `valid`, `new`, `refreshed`, `repinned` (with the reason apart), or `-`.
    fn affinity(&self) -> (&'static str, Option<&'static str>) {
        match self.outcome {
            None => ("-", None),
            Some(o) if self.repinned => ("repinned", Some(o.as_str())),
            Some(Outcome::Valid) | Some(Outcome::Draining) => ("valid", None),
            Some(Outcome::Refreshed) => ("refreshed", None),
            Some(Outcome::New) => ("new", None),
            // A token that could not be honoured: a new session, and why.
            Some(o) => ("new", Some(o.as_str())),
        }
    }

    /// The line for `format`, newline included.
    pub fn format(&self, format: Format) -> String {
        let mut s = String::with_capacity(192);
        let time = rfc3339(self.time);
        let ms = self.duration.as_secs_f64() * 1000.0;
        let (affinity, reason) = self.affinity();
        match format {
            Format::Off => return s,
            Format::Text => {
                let _ = write!(
                    s,
                    "{time} {} \"{} {} {}\" {} {} {ms:.3}ms pool={} backend={} affinity={affinity}",
                    self.client,
                    self.method,
                    escape_text(&self.target),
                    self.version,
                    self.status,
                    self.bytes,
                    self.pool.as_deref().unwrap_or("-"),
                    self.backend.as_deref().unwrap_or("-"),
                );
                if let Some(r) = reason {
                    let _ = write!(s, ":{r}");
                }
            }
            Format::Json => {
                let v = serde_json::json!({
                    "time": time.to_string(),
                    "client": self.client.to_string(),
                    "method": self.method.as_str(),
                    "path": self.target,
                    "version": self.version,
                    "status": self.status,
                    "bytes": self.bytes,
                    "duration_ms": (ms * 1000.0).round() / 1000.0,
                    "pool": self.pool.as_deref(),
                    "backend": self.backend.as_deref(),
                    "affinity": affinity,
                    "reason": reason,
                });
                s = v.to_string();
            }
        }
        s.push('\n');
        s
    }
}

/// A path as it goes between quotes: quotes, backslashes and control bytes escaped.
fn escape_text(p: &str) -> std::borrow::Cow<'_, str> {
    if !p
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
    {
        return p.into();
    }
    let mut out = String::with_capacity(p.len() + 8);
    for c in p.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.into()
}

/// `2026-11-23T19:00:10.123Z` (UTC, milliseconds). humantime panics on a time before 1970 and
/// refuses one after 9999, so a wall clock set that wrong is clamped to those years: it must not
/// take the request's line down with it.
pub fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    let last = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, last))
}

/// Where lines go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// The running access log.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Opens `sink` and starts the writer thread; None for [`Format::Off`].
    pub fn start(format: Format, sink: &Sink) -> io::Result<Option<Arc<AccessLog>>> {
        if format == Format::Off {
            return Ok(None);
        }
        let out: Box<dyn Write + Send> = match sink {
            Sink::Stdout => Box::new(io::stdout()),
            Sink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("access log {}: {e}", p.display()))
                    })?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("stickyd-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(Some(Arc::new(AccessLog {
            format,
            tx,
            dropped: AtomicU64::new(0),
        })))
    }

    /// Queues `r`'s line; never waits.
    pub fn log(&self, r: &Record) {
        match self.tx.try_send(r.format(self.format)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A request's line, waiting for its response to end.
#[derive(Debug)]
pub struct Pending {
    record: Record,
    log: Arc<AccessLog>,
    start: std::time::Instant,
}

impl Pending {
    /// Starts the line of a request that arrived at `start` (`time` on the wall clock).
    pub fn new<B>(
        log: &Arc<AccessLog>,
        req: &http::Request<B>,
        client: IpAddr,
        start: std::time::Instant,
        time: SystemTime,
    ) -> Pending {
        let target = req.uri().path_and_query().map_or_else(
            || req.uri().path().to_string(),
            |pq| pq.as_str().to_string(),
        );
        let version = match req.version() {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        };
        Pending::start(
            log,
            req.method().clone(),
            target,
            version,
            client,
            start,
            time,
        )
    }

    /// Starts the line of a request known by its parts (the HTTP/1 engine's, which has no
    /// `http::Request`).
    pub fn start(
        log: &Arc<AccessLog>,
        method: http::Method,
        target: String,
        version: &'static str,
        client: IpAddr,
        start: std::time::Instant,
        time: SystemTime,
    ) -> Pending {
        Pending {
            record: Record {
                time,
                client,
                method,
                target,
                version,
                status: 0,
                bytes: 0,
                duration: Duration::ZERO,
                pool: None,
                backend: None,
                outcome: None,
                repinned: false,
            },
            log: log.clone(),
            start,
        }
    }

    /// Notes the pool the request was routed to.
    pub fn pool(&mut self, pool: Arc<str>) {
        self.record.pool = Some(pool);
    }

    /// Notes how the request was routed and answered.
    pub fn routed(&mut self, backend: Arc<str>, outcome: Outcome, repinned: bool, status: u16) {
        self.record.backend = Some(backend);
        self.record.outcome = Some(outcome);
        self.record.repinned = repinned;
        self.record.status = status;
    }

    /// Writes the line: the response ended with `status` after `bytes` of body.
    pub fn finish(mut self, status: u16, bytes: u64) {
        if self.record.status == 0 {
            self.record.status = status;
        }
        self.record.bytes = bytes;
        self.record.duration = self.start.elapsed();
        self.log.log(&self.record);
    }
}

fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut w = io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let mut ok = w.write_all(line.as_bytes()).is_ok();
        while let Ok(line) = rx.try_recv() {
            ok &= w.write_all(line.as_bytes()).is_ok();
        }
        if !(ok && w.flush().is_ok()) {
            // Nowhere to report it but the log; once per failing batch.
            tracing::warn!("access log write failed");
        }
    }
    let _ = w.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: UNIX_EPOCH + Duration::from_millis(1_795_460_410_123),
            client: "192.0.2.7".parse().unwrap(),
            method: Method::GET,
            target: "/cart?item=3".into(),
            version: "HTTP/1.1",
            status: 200,
            bytes: 512,
            duration: Duration::from_micros(1_250),
            pool: Some("shop".into()),
            backend: Some("app-1".into()),
            outcome: Some(Outcome::Valid),
            repinned: false,
        }
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_460_410_123)).to_string(),
            "2026-11-23T19:00:10.123Z"
        );
    }

    #[test]
    fn a_clock_outside_the_years_1970_to_9999_is_clamped_not_a_panic() {
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(300_000_000_000)).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn text_lines_carry_every_field() {
        assert_eq!(
            record().format(Format::Text),
            "2026-11-23T19:00:10.123Z 192.0.2.7 \"GET /cart?item=3 HTTP/1.1\" 200 512 1.250ms pool=shop backend=app-1 affinity=valid\n"
        );
        let mut r = record();
        r.outcome = Some(Outcome::BackendDown);
        r.repinned = true;
        assert!(
            r.format(Format::Text)
                .ends_with("affinity=repinned:backend_down\n")
        );
        r.outcome = Some(Outcome::BadMac);
        r.repinned = false;
        assert!(r.format(Format::Text).ends_with("affinity=new:bad_mac\n"));
        r.outcome = None;
        r.pool = None;
        r.backend = None;
        r.target = "/a\"b\n".into();
        let line = r.format(Format::Text);
        assert!(line.contains("\"GET /a\\\"b\\x0a HTTP/1.1\""), "{line}");
        assert!(line.ends_with("pool=- backend=- affinity=-\n"), "{line}");
    }

    #[test]
    fn json_lines_are_objects_with_every_field() {
        let mut r = record();
        r.outcome = Some(Outcome::BackendDown);
        r.repinned = true;
        let line = r.format(Format::Json);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-11-23T19:00:10.123Z");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/cart?item=3");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 512);
        assert_eq!(v["duration_ms"], 1.25);
        assert_eq!(v["pool"], "shop");
        assert_eq!(v["backend"], "app-1");
        assert_eq!(v["affinity"], "repinned");
        assert_eq!(v["reason"], "backend_down");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, rx) = sync_channel(1);
        let log = AccessLog {
            format: Format::Text,
            tx,
            dropped: AtomicU64::new(0),
        };
        log.log(&record());
        log.log(&record());
        log.log(&record());
        assert_eq!(log.dropped(), 2);
        assert!(rx.try_recv().unwrap().contains("GET /cart"));
    }

    #[test]
    fn lines_reach_a_file() {
        let dir = std::env::temp_dir().join(format!("stickyd-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::start(Format::Json, &Sink::File(path.clone()))
            .unwrap()
            .unwrap();
        for _ in 0..3 {
            log.log(&record());
        }
        drop(log);
        // The writer thread ends when the queue's sender is gone; wait for its lines.
        let mut lines = 0;
        for _ in 0..500 {
            lines = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .count();
            if lines == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(lines, 3);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            AccessLog::start(Format::Off, &Sink::Stdout)
                .unwrap()
                .is_none()
        );
    }
}
