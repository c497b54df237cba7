//! The two body types of the request path, as plain enums rather than boxed trait objects (no
//! allocation per request):
//!
//! - [`UpBody`], the request body sent to a backend. It comes from a [`Replay`], which keeps the
//!   client's body aside so that a retry can send it again as long as no attempt has started
//!   reading it.
//! - [`ProxyBody`], the response body sent to the client: either the backend's body, which holds
//!   the backend's in-flight count and the pooled connection until it is done ([`Tracked`]), or
//!   a short body of our own (errors).
//!
//! Both live on one worker thread, so the shared slot is an `Rc<RefCell>`, not a mutex.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::access::Pending;
use crate::backend::InFlight;
use crate::io::Stall;
use crate::upstream::Lease;

/// The client's request body, kept for a possible retry.
pub enum Replay {
    /// No body (`GET` and most others): always replayable.
    Empty,
    /// A body not yet taken by an attempt, shared with the attempts.
    Once(Rc<Kept>),
}

/// The client's body while attempts may still take it.
pub struct Kept {
    slot: RefCell<Option<Incoming>>,
    /// The size hint of the client's body (kept so Content-Length is known before polling).
    hint: SizeHint,
    /// Why reading it failed, if it did.
    failure: Cell<Option<ClientFailure>>,
    /// Longest wait between two pieces of the body.
    timeout: Duration,
}

/// How the client's own body failed an attempt (the client's fault, never the backend's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFailure {
    /// Malformed or cut short (bad chunk, connection closed mid-body).
    Malformed,
    /// Nothing more arrived for `client_timeout`.
    TimedOut,
}

impl Replay {
    /// Wraps the client's body; `timeout` bounds the wait between two of its pieces.
    pub fn new(body: Incoming, timeout: Duration) -> Replay {
        if body.is_end_stream() {
            Replay::Empty
        } else {
            Replay::Once(Rc::new(Kept {
                hint: body.size_hint(),
                slot: RefCell::new(Some(body)),
                failure: Cell::new(None),
                timeout,
            }))
        }
    }

    /// Whether the body is still whole (no attempt has polled it).
    pub fn replayable(&self) -> bool {
        match self {
            Replay::Empty => true,
            Replay::Once(p) => p.slot.borrow().is_some(),
        }
    }

    /// Whether, and how, reading the client's body failed.
    pub fn client_failure(&self) -> Option<ClientFailure> {
        match self {
            Replay::Empty => None,
            Replay::Once(p) => p.failure.get(),
        }
    }

    /// A body for one attempt. It takes the real body out of the shared slot on first poll, so
    /// an attempt that failed before sending any of it leaves it for the next.
    pub fn take(&self) -> UpBody {
        match self {
            Replay::Empty => UpBody::Empty,
            Replay::Once(p) => UpBody::Lazy {
                pending: p.clone(),
                body: None,
                stall: Stall::new(p.timeout),
            },
        }
    }
}

/// The error of a request body: the client's (hyper's), or its timeout.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of one upstream attempt.
pub enum UpBody {
    /// Nothing to send.
    Empty,
    /// The client's body, taken from the slot on first poll.
    Lazy {
        /// Shared with the [`Replay`] it came from.
        pending: Rc<Kept>,
        /// The body once taken.
        body: Option<Incoming>,
        /// The deadline of the current wait for the client.
        stall: Stall,
    },
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Lazy {
                pending,
                body,
                stall,
            } => {
                if body.is_none() {
                    *body = pending.slot.borrow_mut().take();
                }
                // Another attempt took it (cannot happen: attempts are serial).
                let Some(b) = body.as_mut() else {
                    return Poll::Ready(None);
                };
                match Pin::new(b).poll_frame(cx) {
                    Poll::Ready(Some(Err(e))) => {
                        pending.failure.set(Some(ClientFailure::Malformed));
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Ready(other) => {
                        stall.progress();
                        Poll::Ready(other.map(|r| r.map_err(Into::into)))
                    }
                    Poll::Pending => {
                        // Waiting on the client.
                        ready!(stall.poll_expired(cx));
                        pending.failure.set(Some(ClientFailure::TimedOut));
                        Poll::Ready(Some(Err("the client's request body stalled".into())))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Lazy { body: Some(b), .. } => b.is_end_stream(),
            UpBody::Lazy { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Lazy { body: Some(b), .. } => b.size_hint(),
            UpBody::Lazy { pending, .. } => pending.hint,
        }
    }
}

/// The body of a response to a client.
pub enum ProxyBody {
    /// A backend's response body.
    Upstream(Tracked),
    /// A body of our own, sent in one frame.
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A body of our own.
    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(t) => t.poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(t) => t.inner.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(t) => t.inner.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A backend's response body. It holds the backend's in-flight count, and the connection it
/// came on: once the body has been read to its end the connection goes back to the pool;
/// dropped before that (the client went away), the connection is closed with it.
pub struct Tracked {
    inner: Incoming,
    lease: Option<Lease>,
    _guard: InFlight,
    /// The access log line, written when the body is over; with the bytes sent so far.
    log: Option<Box<(Pending, u64)>>,
}

impl Tracked {
    /// Wraps a backend's body.
    pub fn new(inner: Incoming, lease: Lease, guard: InFlight, log: Option<Pending>) -> Tracked {
        Tracked {
            inner,
            lease: Some(lease),
            _guard: guard,
            log: log.map(|p| Box::new((p, 0))),
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(l), Some(d)) = (self.log.as_mut(), f.data_ref()) {
                    l.1 += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.release();
                }
            }
            Poll::Ready(Some(Err(_))) => self.lease = None,
            Poll::Pending => {}
        }
        polled
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A body that was complete from the start (204, HEAD, Content-Length: 0) is never polled.
        if self.inner.is_end_stream() {
            self.release();
        }
        if let Some(l) = self.log.take() {
            let (p, bytes) = *l;
            p.finish(0, bytes);
        }
    }
}
