//! A worker thread: its own current-thread tokio runtime and `LocalSet`, its own listening
//! socket per address, its own upstream pool, and every connection it accepted. Nothing on the
//! request path crosses threads except the config snapshot and the atomic counters.
//!
//! Each connection is served by stickyd's HTTP/1 engine (`Proxy::serve_h1`), after a TLS
//! handshake in the connection's own task on TLS listeners; HTTP/2 (ALPN `h2`, or the h2c
//! preface the engine recognises) goes to hyper-util's auto builder. The accept loop never
//! dies on an accept error: it logs (at most once a second) and, when the error is about
//! resources (e.g. out of file descriptors), waits a little instead of spinning. At
//! `max_connections` (shared by all workers) a worker holds the connection it just accepted
//! unserved and stops accepting until a connection closes, leaving new ones in the kernel
//! backlog.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};

use super::Phase;
use super::listen::ListenKey;
use crate::config::Config;
use crate::io::{Prefixed, SendTimeout};
use crate::proxy::{ClientIo, ConnInfo, Ended, Proxy};
use crate::rt::{LocalExec, Signal};
use crate::state::Shared;
use crate::tunnel::Hold;
use crate::upstream::Upstream;

/// What a worker thread shares with the rest of the process.
pub(super) struct Worker {
    /// The snapshot and live state.
    pub shared: Arc<Shared>,
    /// The process-wide connection limit.
    pub conns: Arc<Semaphore>,
    /// The lifecycle phase.
    pub phase: watch::Receiver<Phase>,
    /// Listeners to open and close (reload).
    pub cmds: mpsc::UnboundedReceiver<WorkerCmd>,
}

/// What a reload asks of each worker.
pub(super) enum WorkerCmd {
    /// Accept on this socket, known by its configured address.
    Listen(ListenKey, std::net::TcpListener),
    /// Stop accepting on the listener of this configured address (its connections stay).
    Close(ListenKey),
}

impl Worker {
    /// The worker thread's body: a current-thread runtime and a `LocalSet` carrying the accept
    /// loops and every connection of this thread. Returns when the worker is done: after the
    /// drain, when its last connection has closed, or at once when the grace period is over.
    pub(super) fn run(
        self,
        listeners: Vec<(ListenKey, std::net::TcpListener)>,
        ready: oneshot::Sender<io::Result<()>>,
    ) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, self.serve(listeners, ready));
        // Dropping the LocalSet and the runtime drops whatever connection is still open.
    }

    async fn serve(
        self,
        listeners: Vec<(ListenKey, std::net::TcpListener)>,
        ready: oneshot::Sender<io::Result<()>>,
    ) {
        let listeners = match listeners
            .into_iter()
            .map(|(k, l)| TcpListener::from_std(l).map(|l| (k, l)))
            .collect::<io::Result<Vec<_>>>()
        {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let snap = self.shared.load();
        let builder = http_builder(&snap.config);
        // Tunnels (upgraded connections) close when the grace period is over.
        let (cut, cut_rx) = watch::channel(false);
        let mut closing = self.phase.clone();
        tokio::task::spawn_local(async move {
            let _ = closing.wait_for(|p| *p >= Phase::Closing).await;
            let _ = cut.send(true);
        });
        // The HTTP/1 engine's connections finish their request and close when draining starts,
        // and are dropped when the grace period is over.
        let (draining, closing) = (Rc::new(Signal::default()), Rc::new(Signal::default()));
        let (drain, close, mut phase_d) = (draining.clone(), closing.clone(), self.phase.clone());
        tokio::task::spawn_local(async move {
            let _ = phase_d.wait_for(|p| *p >= Phase::Draining).await;
            drain.fire();
            let _ = phase_d.wait_for(|p| *p >= Phase::Closing).await;
            close.fire();
        });
        let proxy = Proxy::new(
            self.shared.clone(),
            Upstream::new(&snap.config.upstream),
            cut_rx,
        );
        drop(snap);
        // Every accept loop and connection holds a clone; `recv` returns None once all are gone.
        let (alive, mut all_done) = mpsc::channel::<()>(1);
        let serving = Rc::new(Serving {
            conns: self.conns.clone(),
            builder,
            proxy: Rc::new(proxy),
            phase: self.phase.clone(),
            draining,
            closing,
            alive,
        });
        let mut stops: HashMap<ListenKey, watch::Sender<bool>> = HashMap::new();
        let open = |key: ListenKey, l: TcpListener, stops: &mut HashMap<_, _>| {
            let (stop, stopped) = watch::channel(false);
            // A listener reopened under the same key replaces (and stops) the old one.
            if let Some(old) = stops.insert(key, stop) {
                let _ = old.send(true);
            }
            let accept = Accept {
                listener: l,
                tls: key.1,
                stop: stopped,
                serving: serving.clone(),
            };
            tokio::task::spawn_local(accept.run());
        };
        for (key, l) in listeners {
            open(key, l, &mut stops);
        }
        let _ = ready.send(Ok(()));
        let mut phase = self.phase.clone();
        let mut cmds = self.cmds;
        loop {
            tokio::select! {
                _ = phase.wait_for(|p| *p >= Phase::Draining) => break,
                cmd = cmds.recv() => match cmd {
                    Some(WorkerCmd::Listen(key, l)) => match TcpListener::from_std(l) {
                        Ok(l) => open(key, l, &mut stops),
                        Err(e) => warn!(address = %key.0, error = %e, "cannot open a listener"),
                    },
                    Some(WorkerCmd::Close(key)) => {
                        if let Some(stop) = stops.remove(&key) {
                            let _ = stop.send(true);
                        }
                    }
                    // Running is gone (it sends Closing when dropped): nothing more to open.
                    None => break,
                },
            }
        }
        drop(stops);
        drop(serving);
        tokio::select! {
            _ = all_done.recv() => {}
            _ = phase.wait_for(|p| *p >= Phase::Closing) => {}
        }
    }
}

/// HTTP/2: streams reset by the client before being accepted, tolerated per connection.
const H2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2: streams stickyd resets for protocol errors, tolerated per connection.
const H2_MAX_LOCAL_RESETS: usize = 256;
/// HTTP/2: bytes buffered per stream toward a slow client.
const H2_MAX_SEND_BUF: usize = 256 * 1024;

fn http_builder(cfg: &Config) -> auto::Builder<LocalExec> {
    let s = &cfg.server;
    let mut b = auto::Builder::new(LocalExec);
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .writev(false)
        .header_read_timeout(s.header_read_timeout)
        .max_buf_size(s.max_header_bytes)
        .max_headers(s.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): streams a client opens and resets before they are
        // accepted, and streams reset because the client misbehaved, are bounded per
        // connection; past the bound the connection gets GOAWAY.
        .max_pending_accept_reset_streams(Some(H2_MAX_PENDING_RESETS))
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_RESETS))
        .max_send_buf_size(H2_MAX_SEND_BUF)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// What the accept loops and connections of one worker share.
struct Serving {
    /// The process-wide connection limit.
    conns: Arc<Semaphore>,
    /// hyper's HTTP/1.1 + h2c connection builder, configured from `[server]`.
    builder: auto::Builder<LocalExec>,
    /// The worker's request handler (and upstream pool).
    proxy: Rc<Proxy>,
    /// The lifecycle phase.
    phase: watch::Receiver<Phase>,
    /// Fired when draining starts (the HTTP/1 engine's view of the phase).
    draining: Rc<Signal>,
    /// Fired when the grace period is over: the engine's connections are dropped.
    closing: Rc<Signal>,
    /// The worker's liveness: held by every loop, connection and tunnel (see `Worker::serve`).
    alive: mpsc::Sender<()>,
}

/// One listener's accept loop.
struct Accept {
    listener: TcpListener,
    /// Whether its connections start with a TLS handshake.
    tls: bool,
    /// Turns true when a reload removes (or replaces) the listener.
    stop: watch::Receiver<bool>,
    serving: Rc<Serving>,
}

impl Accept {
    /// Accepts until draining starts or the listener is removed, each connection in a task of
    /// its own. Never dies on an accept error (see the module documentation).
    async fn run(mut self) {
        let mut phase = self.serving.phase.clone();
        let mut last_warn: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                biased;
                _ = phase.wait_for(|p| *p >= Phase::Draining) => return,
                _ = self.stop.wait_for(|s| *s) => return,
                r = self.listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        warn!(error = %e, "accept failed");
                        last_warn = Some(Instant::now());
                    }
                    if is_resource_error(&e) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            };
            // tokio marks an accepted socket readable before epoll says so, betting that the
            // client's first bytes are already in it. Here they mostly come after the accept,
            // and the bet cost a read that found nothing (0.9 per request with `run.sh
            // --close`). The guess is dropped at once, before this task can yield and the
            // driver turn (so no event for this socket can have been seen yet): the first read
            // waits for epoll's first event, which EPOLL_CTL_ADD queues at once when bytes are
            // already there.
            let _ = stream.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
            // The permit is taken after the accept: workers share the limit, and a worker
            // waiting for a connection must not sit on a permit that another worker's client
            // needs. At the limit this worker holds the one connection it accepted and accepts
            // nothing more until a permit frees, so at most one connection per worker waits
            // outside the limit.
            let conns = &self.serving.conns;
            let permit = match conns.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => tokio::select! {
                    biased;
                    _ = phase.wait_for(|p| *p >= Phase::Draining) => return,
                    p = conns.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                },
            };
            let (serving, tls) = (self.serving.clone(), self.tls);
            tokio::task::spawn_local(async move {
                // Linux: inherited from the listener (see `listen::bind_one`).
                #[cfg(not(target_os = "linux"))]
                let _ = stream.set_nodelay(true);
                // Behind an L4 balancer the client is the one its PROXY header names; a
                // connection that may not or does not send one is closed unread.
                let mut stream = stream;
                // The config as the connection starts, read once for all it needs here.
                let config = serving.proxy.shared().load().config.clone();
                let send_timeout = config.server.client_timeout;
                let client = match proxied(&mut stream, peer, &config.server).await {
                    Ok(client) => client,
                    Err(why) => {
                        debug!(peer = %peer, reason = why, "connection closed: PROXY protocol");
                        return;
                    }
                };
                // The connection's slot and the worker's liveness, kept by whoever holds a
                // clone: the connection, and a tunnel made from it.
                let mut info = ConnInfo::new(client, tls);
                info.hold = Some(Hold::new((permit, serving.alive.clone())));
                // A connection's task is as large as its largest branch and lives as long as
                // the connection: the TLS branch (handshake, TLS state) is boxed, so a plain
                // connection's task holds only the engine's state.
                if tls {
                    Box::pin(async move {
                        if let Some((stream, cert)) = handshake(stream, peer, config).await {
                            info.cert = cert;
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                let io = SendTimeout::new(stream, send_timeout);
                                serve(io, info, &serving).await;
                            } else {
                                serve_h1(stream, info, &serving, send_timeout).await;
                            }
                        }
                    })
                    .await;
                } else {
                    // Not kept for the connection's life: a reload must be able to free it.
                    drop(config);
                    // Boxed too: the task is spawned (and its future copied) before it first
                    // runs, and a small task copies less than the engine's ~3 KB of state.
                    Box::pin(serve_h1(stream, info, &serving, send_timeout)).await;
                }
            });
        }
    }
}

/// The client of a new connection: its peer, or with `[server] proxy_protocol` the client its
/// PROXY header names (the peer when the header names none: a balancer's own check). The
/// header's bytes, and nothing after them, are read here (within `header_read_timeout`), so
/// the connection goes on with the client's own first byte, before any TLS handshake. `Err`:
/// close the connection unread (a peer outside `proxy_protocol_from`, no header, a bad or
/// overlong one, a timeout).
async fn proxied(
    stream: &mut TcpStream,
    peer: SocketAddr,
    s: &crate::config::Server,
) -> Result<SocketAddr, &'static str> {
    use crate::proxy_header::{Bad, MAX_LEN, Parsed, parse};
    use tokio::io::AsyncReadExt;
    if !s.proxy_protocol {
        return Ok(peer);
    }
    let ip = peer.ip().to_canonical();
    if !s.proxy_protocol_from.iter().any(|n| n.contains(ip)) {
        return Err("peer not in proxy_protocol_from");
    }
    let deadline = s.header_read_timeout;
    let read = async {
        let mut acc = [0u8; MAX_LEN];
        // What is there already: most headers arrive whole in the first segment, and then
        // exactly their bytes are read, in one call.
        let n = stream.peek(&mut acc).await.map_err(|_| "read failed")?;
        if n == 0 {
            return Err("closed before a PROXY header");
        }
        let mut have = match parse(&acc[..n]) {
            Ok(Parsed::Done { len, source }) => {
                stream
                    .read_exact(&mut acc[..len])
                    .await
                    .map_err(|_| "read failed")?;
                return Ok(source);
            }
            // Every byte seen so far belongs to the header: take them.
            Ok(Parsed::Need(_)) => {
                stream
                    .read_exact(&mut acc[..n])
                    .await
                    .map_err(|_| "read failed")?;
                n
            }
            Err(b) => return Err(bad(b)),
        };
        // A header split across segments: read what it still needs, never more.
        loop {
            match parse(&acc[..have]) {
                Ok(Parsed::Done { source, .. }) => return Ok(source),
                Ok(Parsed::Need(k)) => {
                    let k = k.min(MAX_LEN);
                    stream
                        .read_exact(&mut acc[have..k])
                        .await
                        .map_err(|_| "closed within the PROXY header")?;
                    have = k;
                }
                Err(b) => return Err(bad(b)),
            }
        }
    };
    fn bad(b: Bad) -> &'static str {
        match b {
            Bad::Missing => "no PROXY header",
            Bad::Malformed => "malformed PROXY header",
            Bad::TooLong => "oversized PROXY header",
        }
    }
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(source)) => Ok(source.unwrap_or(peer)),
        Ok(Err(why)) => Err(why),
        Err(_) => Err("no PROXY header within header_read_timeout"),
    }
}

/// Out of descriptors, buffers or memory: retrying at once would spin.
fn is_resource_error(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// The TLS handshake, in the connection's own task, with the certificates and the deadline of
/// `config` (the config as the connection started, dropped once the handshake is over); with the stream, the certificate it was served with (the resolver's
/// pick for its SNI, from the same certificates: a reload during the handshake cannot change
/// which). A failed or slow handshake just closes the connection (logged at debug: scanners and
/// bad clients must not flood the log).
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: std::sync::Arc<crate::config::Config>,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    Option<crate::tls::Covered>,
)> {
    let tls = config.tls.as_ref()?;
    match tokio::time::timeout(
        tls.handshake_timeout,
        tokio_rustls::TlsAcceptor::from(tls.server_config.clone()).accept(stream),
    )
    .await
    {
        Ok(Ok(s)) => {
            let cert = crate::tls::served(&tls.certs, s.get_ref().1.server_name())
                .map(crate::tls::Covered::new);
            Some((s, cert))
        }
        Ok(Err(e)) => {
            debug!(peer = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(peer = %peer, "TLS handshake timed out");
            None
        }
    }
}

/// Serves one client connection with the HTTP/1 engine until it ends, or hands it to hyper
/// (h2c prior knowledge, HTTP/2 backends) with the bytes the engine had read; at the end of the
/// grace period drops it. Sends to the client time out after `send_timeout` (`client_timeout`).
async fn serve_h1<S>(stream: S, info: ConnInfo, serving: &Serving, send_timeout: Duration)
where
    S: ClientIo + Send + 'static,
{
    let io = SendTimeout::new(stream, send_timeout);
    // The closing signal is polled only when the connection waits (no lock, no atomic).
    let mut closing = Signal::waiter(&serving.closing);
    let ended = {
        let served = serving.proxy.serve_h1(io, &info, &serving.draining);
        tokio::pin!(served);
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(e) = served.as_mut().poll(cx) {
                return std::task::Poll::Ready(Some(e));
            }
            closing.poll(cx).map(|()| None)
        })
        .await
    };
    let Some(ended) = ended else {
        return;
    };
    if let Ended::Handoff(read, io) = ended {
        // Boxed: hyper's connection state is large and this path is rare.
        Box::pin(serve(Prefixed::new(read, io), info, serving)).await;
    }
}

/// Serves one client connection with hyper (HTTP/1.1, or HTTP/2: h2c with prior knowledge, or
/// over TLS) until it ends; on draining, asks it to finish gracefully, and at the end of the
/// grace period drops it. The stream comes with its send deadline.
async fn serve<I>(stream: I, info: ConnInfo, serving: &Serving)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let (proxy, mut phase) = (serving.proxy.clone(), serving.phase.clone());
    let info = Rc::new(info);
    // Each request's future is boxed: hyper spawns a task per HTTP/2 stream holding it, and
    // a task's future is moved in when spawned and overwritten when done, so a small one
    // copies less (measured: docs/performance.md).
    let svc = service_fn(move |req| {
        let (proxy, info) = (proxy.clone(), info.clone());
        Box::pin(async move { proxy.handle(req, &info).await })
    });
    let conn = serving
        .builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let first = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = phase.wait_for(|p| *p >= Phase::Draining) => None,
    };
    let result = match first {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = phase.wait_for(|p| *p >= Phase::Closing) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_about_one_connection_are_retried_at_once() {
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::Interrupted,
        ] {
            assert!(!is_resource_error(&kind.into()), "{kind:?}");
        }
        // EMFILE (out of descriptors) and the like: wait before accepting again.
        assert!(is_resource_error(&io::Error::from_raw_os_error(24)));
        assert!(is_resource_error(&io::ErrorKind::OutOfMemory.into()));
    }
}
