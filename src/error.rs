//! Errors of the request path and the one place where they become HTTP responses.
//!
//! Every failure records who failed and whether a retry is safe; `ProxyError::status` is the
//! only mapping from error to status code, and each mapping is pinned by a test.

use std::time::Duration;

use http::StatusCode;

/// What went wrong with a request stickyd could not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The client's request is not acceptable (e.g. HTTP/1.1 without Host).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request uses something stickyd does not implement (a transfer coding other than
    /// `chunked`): 501, and the connection is closed like for a bad request.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// The client's request body stalled for `client_timeout`: 408, connection closed.
    #[error("the client's request body stalled")]
    ClientTimeout,
    /// No route matches the request's host and path, and there is no pool "default": 404.
    #[error("no route for the request's host and path")]
    NoRoute,
    /// The request's host is not covered by the certificate its TLS connection was served
    /// with: 421, so a client cannot reach one site's pool through another site's certificate.
    #[error("the host is not covered by this connection's certificate")]
    Misdirected,
    /// No backend is usable (all down, disabled or excluded).
    #[error("no usable backend")]
    NoBackend,
    /// The session's backend is down and `on_pinned_down = "fail"`.
    #[error("the session's backend is unavailable")]
    PinnedDown,
    /// The TCP connection to the backend failed: nothing was sent.
    #[error("connect to backend failed: {0}")]
    Connect(String),
    /// The connection failed after the request was (maybe partly) sent and before any response
    /// byte arrived: the backend may have seen the request.
    #[error("backend closed the connection before responding: {0}")]
    Reset(String),
    /// The backend sent something that is not a valid HTTP response.
    #[error("invalid response from backend: {0}")]
    Protocol(String),
    /// No response head within the response timeout.
    #[error("backend did not respond in time")]
    Timeout,
}

impl ProxyError {
    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoBackend | ProxyError::PinnedDown => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_) | ProxyError::Reset(_) | ProxyError::Protocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The short body sent with the status.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) | ProxyError::NotImplemented(why) => why,
            ProxyError::ClientTimeout => "the request body did not arrive in time\n",
            ProxyError::NoRoute => "no route for this host and path\n",
            ProxyError::Misdirected => "this connection's certificate does not cover that host\n",
            ProxyError::NoBackend => "no backend is available\n",
            ProxyError::PinnedDown => "the session's backend is unavailable\n",
            ProxyError::Connect(_) => "could not connect to the backend\n",
            ProxyError::Reset(_) => "the backend closed the connection\n",
            ProxyError::Protocol(_) => "the backend sent an invalid response\n",
            ProxyError::Timeout => "the backend did not respond in time\n",
        }
    }

    /// A `Retry-After` for 503s, whose cause is the pool, not the request.
    pub fn retry_after(&self, configured: Duration) -> Option<u64> {
        matches!(self, ProxyError::NoBackend | ProxyError::PinnedDown)
            .then(|| configured.as_secs().max(1))
    }

    /// Whether another backend may be tried. A connect failure sent nothing, so it is always
    /// safe (if the body is still at hand); a reset before any response byte is safe only for
    /// idempotent methods. Timeouts and protocol errors are never retried: the backend may be
    /// acting on the request.
    pub fn retryable(&self, idempotent: bool) -> bool {
        match self {
            ProxyError::Connect(_) => true,
            ProxyError::Reset(_) => idempotent,
            _ => false,
        }
    }

    /// How an upstream attempt failed, or `None` when the failure is not the backend's (the
    /// client's request, or no backend to try).
    pub fn upstream_kind(&self) -> Option<UpstreamKind> {
        match self {
            ProxyError::Connect(_) => Some(UpstreamKind::Connect),
            ProxyError::Reset(_) => Some(UpstreamKind::Reset),
            ProxyError::Protocol(_) => Some(UpstreamKind::Protocol),
            ProxyError::Timeout => Some(UpstreamKind::Timeout),
            ProxyError::BadRequest(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::ClientTimeout
            | ProxyError::NoRoute
            | ProxyError::Misdirected
            | ProxyError::NoBackend
            | ProxyError::PinnedDown => None,
        }
    }
}

/// How an upstream attempt failed: the `kind` label of `stickyd_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// The connection (or its TLS handshake) failed: nothing was sent.
    Connect,
    /// The connection ended before any response byte.
    Reset,
    /// The backend's response was not valid HTTP.
    Protocol,
    /// No response head within the response timeout.
    Timeout,
}

impl UpstreamKind {
    /// Every kind, in the order the exposition lists them; `ALL[k.index()] == k`.
    pub const ALL: [UpstreamKind; 4] = [
        UpstreamKind::Connect,
        UpstreamKind::Reset,
        UpstreamKind::Protocol,
        UpstreamKind::Timeout,
    ];

    /// The metric label text (fixed interface: dashboards match on it).
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Connect => "connect",
            UpstreamKind::Reset => "reset",
            UpstreamKind::Protocol => "protocol",
            UpstreamKind::Timeout => "timeout",
        }
    }

    /// The kind's slot in a per-kind counter array.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_status() {
        let cases = [
            (ProxyError::BadRequest("x\n"), 400),
            (ProxyError::NotImplemented("x\n"), 501),
            (ProxyError::ClientTimeout, 408),
            (ProxyError::NoRoute, 404),
            (ProxyError::Misdirected, 421),
            (ProxyError::NoBackend, 503),
            (ProxyError::PinnedDown, 503),
            (ProxyError::Connect("refused".into()), 502),
            (ProxyError::Reset("eof".into()), 502),
            (ProxyError::Protocol("bad".into()), 502),
            (ProxyError::Timeout, 504),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e:?}");
            assert!(!e.body().is_empty() && e.body().len() < 64, "a short body");
        }
    }

    #[test]
    fn only_pool_failures_carry_retry_after() {
        let d = Duration::from_secs(5);
        assert_eq!(ProxyError::NoBackend.retry_after(d), Some(5));
        assert_eq!(ProxyError::PinnedDown.retry_after(Duration::ZERO), Some(1));
        assert_eq!(ProxyError::Timeout.retry_after(d), None);
        assert_eq!(ProxyError::NoRoute.retry_after(d), None);
        assert_eq!(ProxyError::Connect(String::new()).retry_after(d), None);
    }

    #[test]
    fn retry_is_allowed_only_when_no_backend_can_have_acted() {
        assert!(ProxyError::Connect(String::new()).retryable(false));
        assert!(ProxyError::Reset(String::new()).retryable(true));
        assert!(
            !ProxyError::Reset(String::new()).retryable(false),
            "never replay a POST"
        );
        assert!(!ProxyError::Timeout.retryable(true));
        assert!(!ProxyError::Protocol(String::new()).retryable(true));
        assert!(!ProxyError::NoBackend.retryable(true));
    }

    #[test]
    fn only_backend_failures_have_an_upstream_kind_with_its_fixed_label() {
        let cases = [
            (ProxyError::Connect(String::new()), Some("connect")),
            (ProxyError::Reset(String::new()), Some("reset")),
            (ProxyError::Protocol(String::new()), Some("protocol")),
            (ProxyError::Timeout, Some("timeout")),
            (ProxyError::BadRequest("x\n"), None),
            (ProxyError::NotImplemented("x\n"), None),
            (ProxyError::ClientTimeout, None),
            (ProxyError::NoRoute, None),
            (ProxyError::Misdirected, None),
            (ProxyError::NoBackend, None),
            (ProxyError::PinnedDown, None),
        ];
        for (e, label) in cases {
            assert_eq!(e.upstream_kind().map(UpstreamKind::as_str), label, "{e:?}");
        }
        for (i, k) in UpstreamKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?} has its own slot");
        }
    }
}
