//! The connection pool to backends, behind one small interface: [`Upstream::send`] takes a
//! request whose URI names the backend and returns the response head or a classified
//! [`ProxyError`].
//!
//! Today this is hyper-util's legacy client (keep-alive per scheme + authority, so per backend).
//! DESIGN section 6 measured that pool as the hot spot; keeping it behind this type lets the
//! bench issue swap in a per-thread pool without touching the proxy.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config;
use crate::error::ProxyError;

/// Body type sent upstream.
pub type UpBody = BoxBody<Bytes, hyper::Error>;

/// The pool of connections to every backend.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, UpBody>,
    response_timeout: Duration,
}

impl Upstream {
    /// A pool configured from `[upstream]`.
    pub fn new(cfg: &config::Upstream) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout.get()));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout.get())
            .pool_max_idle_per_host(cfg.pool_max_idle)
            // The proxy sets Host itself (the client's Host is preserved).
            .set_host(false)
            .build(connector);
        Upstream {
            client,
            response_timeout: cfg.response_timeout.get(),
        }
    }

    /// Sends `req` (absolute URI `http://backend/...`) and waits for the response head.
    pub async fn send(&self, req: Request<UpBody>) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// Sorts a client error into "nothing was sent" (connect), "connection lost before any response
/// byte" (reset) and "bad response" (protocol).
fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let text = chain(e);
    if e.is_connect() {
        return ProxyError::Connect(text);
    }
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                return ProxyError::Protocol(text);
            }
            if h.is_timeout() {
                return ProxyError::Timeout;
            }
            break;
        }
        src = s.source();
    }
    ProxyError::Reset(text)
}

/// The error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
