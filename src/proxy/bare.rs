//! A backend's response body on an HTTP/1 connection of the engine's pool, read as an HTTP/2
//! client's stream takes it (`bridge` sends the request and reads the head).

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::{Frame, SizeHint};
use tracing::debug;

use crate::access::Pending;
use crate::backend::InFlight;
use crate::connect::Direct as Stream;
use crate::h1::chunked::Decoder;
use crate::upstream::raw;

/// The backend side's reads: a response head and a small body in one read; a body streams in
/// reads of this size. Read into a buffer the response's fields and body are then slices of
/// (no copy, no allocation per field).
pub(super) const DOWN_BUF: usize = 16 * 1024;

/// Why a response body was cut off (the client's stream is reset).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What a body needs to put its connection back in the pool once the response has ended.
pub(super) struct Park {
    pub pool: Rc<raw::Pool>,
    pub backend: usize,
    pub addr: http::uri::Authority,
    pub since: Instant,
}

impl Park {
    /// Parks `up`: its response ended where its framing says.
    pub(super) fn put(self, up: Stream) {
        self.pool.put(self.backend, &self.addr, up, self.since);
    }
}

/// How the rest of a response body is delimited on the backend's connection.
pub(super) enum From {
    Left(u64),
    Chunked(Decoder),
    Close,
    Done,
}

/// A backend's response body read from its HTTP/1 connection as the client's stream takes it:
/// unframed into DATA frames (and the chunked coding's trailer fields into a trailers frame).
/// Holds the backend's in-flight count and the access log line until the body ends; then the
/// connection goes back to the pool when the body ended where its framing says with nothing
/// after it. Dropped before that (the client went away), the connection is closed.
pub struct BareBody {
    pub(super) up: Option<Stream>,
    /// Read and not yet unframed.
    pub(super) buf: BytesMut,
    pub(super) from: From,
    /// The backend keeps the connection, and nothing broke framing so far.
    pub(super) keep: bool,
    pub(super) park: Option<Park>,
    pub(super) guard: Option<InFlight>,
    /// The access log line, with the body bytes sent so far.
    pub(super) log: Option<(Pending, u64)>,
    /// The trailer fields, sent after the last data.
    pub(super) trailers: Option<HeaderMap>,
}

impl BareBody {
    /// The body ended: the connection parked when it may be, the count and the log line done.
    fn ended(&mut self) {
        self.from = From::Done;
        if self.keep
            && self.buf.is_empty()
            && let (Some(up), Some(park)) = (self.up.take(), self.park.take())
        {
            park.put(up);
        }
        self.up = None;
        self.release();
    }

    fn release(&mut self) {
        self.guard = None;
        if let Some((p, bytes)) = self.log.take() {
            p.finish(0, bytes);
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.from = From::Done;
        self.keep = false;
        self.up = None;
        self.release();
        debug!(reason = why, "backend response body cut off");
        Poll::Ready(Some(Err(why.into())))
    }

    /// A data frame, counted for the access log before the body's end (`last`) closes the line.
    fn data(&mut self, bytes: Bytes, last: bool) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some((_, n)) = self.log.as_mut() {
            *n += bytes.len() as u64;
        }
        if last {
            self.ended();
        }
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if !self.buf.is_empty() {
                match &mut self.from {
                    From::Left(left) => {
                        let n = usize::try_from(*left)
                            .map_or(self.buf.len(), |l| l.min(self.buf.len()));
                        let bytes = self.buf.split_to(n).freeze();
                        *left -= n as u64;
                        let last = *left == 0;
                        return self.data(bytes, last);
                    }
                    From::Chunked(d) => {
                        let step = match d.decode(&self.buf) {
                            Ok(s) => s,
                            Err(e) => return self.fail(e.0),
                        };
                        let taken = self.buf.split_to(step.consumed).freeze();
                        let data = step.data.filter(|r| !r.is_empty()).map(|r| taken.slice(r));
                        if let Some(r) = step.trailers {
                            self.trailers = Some(trailer_fields(&taken[r]));
                        }
                        if let Some(bytes) = data {
                            return self.data(bytes, step.done);
                        }
                        if step.done {
                            self.ended();
                            return Poll::Ready(
                                self.trailers.take().map(|t| Ok(Frame::trailers(t))),
                            );
                        }
                        if step.consumed > 0 {
                            continue;
                        }
                    }
                    From::Close => {
                        let bytes = self.buf.split().freeze();
                        return self.data(bytes, false);
                    }
                    From::Done => {}
                }
            }
            if matches!(self.from, From::Done) {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let Some(up) = self.up.as_mut() else {
                return Poll::Ready(None);
            };
            self.buf.reserve(DOWN_BUF);
            match tokio_util::io::poll_read_buf(Pin::new(up), cx, &mut self.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if matches!(self.from, From::Close) {
                        self.keep = false;
                        self.ended();
                        return Poll::Ready(None);
                    }
                    return self.fail("the backend closed the connection within the body");
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => {
                    return self.fail("the backend connection failed within the body");
                }
            }
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        matches!(self.from, From::Done) && self.trailers.is_none()
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        match self.from {
            From::Left(n) => SizeHint::with_exact(n),
            From::Done if self.trailers.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for BareBody {
    fn drop(&mut self) {
        // Cut short by the client: the connection closes with the body (not parked).
        self.release();
    }
}

/// The trailer section's field lines (validated by the decoder) as a map; a line that will
/// not go in one is left out.
fn trailer_fields(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for l in lines.split(|&b| b == b'\n') {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = l[colon + 1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&l[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_lines_become_fields() {
        let t = trailer_fields(b"grpc-status: 0\r\nX-Sum:  abc \r\nbad line\r\n");
        assert_eq!(t.len(), 2);
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-sum"], "abc");
    }
}
