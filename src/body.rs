//! The request body on its way to a backend, as a plain enum rather than a boxed trait object
//! (no allocation per request): [`UpBody`], the body of one upstream attempt. It comes from a
//! [`Replay`], which keeps the client's body aside so that a retry can send it again as long as
//! no attempt has started reading it, and which remembers whether reading it failed by the
//! client's fault ([`ClientFailure`]) rather than the backend's.
//!
//! It lives on one worker thread, so the shared slot is an `Rc<RefCell>`, not a mutex. (The
//! response body is the proxy's: `proxy::ProxyBody`.)

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::io::Stall;

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
