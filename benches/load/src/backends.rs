//! The harness's own backends: real HTTP/1.1 servers (hyper) on 127.0.0.1 that answer every
//! request 200 with a short body and `x-backend: <id>`, count what they serve, and can be
//! killed (listener and every connection closed, so connects are refused) and restarted on the
//! same port.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// What a backend's connections share.
struct Inner {
    id: HeaderValue,
    header: HeaderName,
    body: Bytes,
    /// Requests served, health checks excluded.
    served: AtomicU64,
    /// `GET /healthz` requests (stickyd's active checks).
    checks: AtomicU64,
}

/// One backend.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts backend `id` on `addr` (port 0: any free port).
    pub async fn start(id: &str, addr: SocketAddr) -> io::Result<Backend> {
        let inner = Arc::new(Inner {
            id: HeaderValue::from_str(id)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad backend id"))?,
            header: HeaderName::from_static("x-backend"),
            body: Bytes::from(format!("hello from {id}\n")),
            served: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        });
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Backend {
            id: id.to_string(),
            addr,
            task: Some(tokio::spawn(serve(listener, inner.clone()))),
            inner,
        })
    }

    pub fn is_up(&self) -> bool {
        self.task.is_some()
    }

    /// Requests served so far, health checks excluded.
    pub fn served(&self) -> u64 {
        self.inner.served.load(Ordering::Relaxed)
    }

    /// Health checks answered so far.
    pub fn checks(&self) -> u64 {
        self.inner.checks.load(Ordering::Relaxed)
    }

    /// Closes the listener and every open connection: connects are refused from now on.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same address, counters kept.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.task = Some(tokio::spawn(serve(listener, self.inner.clone())));
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The accept loop. Connection tasks live in a set owned by this task, so aborting it closes
/// them all.
async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors, or a connection reset before accept: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(answer(&inner, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(inner: &Inner, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let counter = if req.uri().path() == "/healthz" {
        &inner.checks
    } else {
        &inner.served
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let mut r = Response::new(Full::new(inner.body.clone()));
    r.headers_mut()
        .insert(inner.header.clone(), inner.id.clone());
    r
}
