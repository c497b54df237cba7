//! Listeners and connections: the accept loop, per-connection tasks serving HTTP/1.1 and h2c
//! through hyper-util's auto builder, the connection limit, reload, and graceful shutdown.
//!
//! The accept loop never dies on an accept error: it logs (at most once a second) and, when the
//! error is about resources (e.g. out of file descriptors), waits a little instead of spinning.
//! Above `max_connections` it stops accepting until a connection closes, leaving new ones in the
//! kernel backlog.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::checker::{self, Checkers};
use crate::config::{self, Config};
use crate::proxy::{ConnInfo, Proxy};
use crate::state::Shared;
use crate::upstream::Upstream;

/// Lifecycle phase broadcast to accept loops and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Stop accepting; connections finish what they are doing and close.
    Draining,
    /// The grace period is over: close everything now.
    Closing,
}

/// A started stickyd: listeners bound, accepting, health checks running.
pub struct Running {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    accepts: Vec<JoinHandle<()>>,
    conns: Arc<Semaphore>,
    max_conns: u32,
    checkers: Checkers,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.addrs)
            .finish()
    }
}

/// Binds every listener of `config` (all or none) and starts serving. Must run inside a tokio
/// runtime.
pub async fn start(config: Config) -> io::Result<Running> {
    let listeners = config
        .server
        .listen
        .get_ref()
        .iter()
        .map(|a| {
            bind(*a).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<io::Result<Vec<_>>>()?;

    if config.generated_key {
        warn!(
            "no affinity.keys configured: using a random key generated at start; sessions will not \
             survive a restart and are not shared between instances"
        );
    }
    let max_conns = u32::try_from(config.server.max_connections)
        .unwrap_or(u32::MAX >> 3)
        .min(Semaphore::MAX_PERMITS as u32);
    let builder = Arc::new(http_builder(&config));
    let upstream = Upstream::new(&config.upstream);
    let shared = Arc::new(Shared::new(config));
    let checkers = checker::spawn(&shared.load());
    let proxy = Arc::new(Proxy::new(shared.clone(), upstream));
    let (phase, _) = watch::channel(Phase::Running);
    let conns = Arc::new(Semaphore::new(max_conns as usize));

    let accepts = listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(accept_loop(
                l,
                conns.clone(),
                builder.clone(),
                proxy.clone(),
                phase.subscribe(),
            ))
        })
        .collect();
    for a in &addrs {
        info!(address = %a, "listening");
    }
    Ok(Running {
        addrs,
        shared,
        phase,
        accepts,
        conns,
        max_conns,
        checkers,
    })
}

impl Running {
    /// The bound addresses, in config order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Shared state: snapshot, live backends, metrics.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.max_conns as usize - self.conns.available_permits()
    }

    /// Applies a new config: backends, keys, affinity and health settings take effect for new
    /// requests; backends that keep their id keep their health and counters. Listener and
    /// server-level changes need a restart (logged).
    pub fn reload(&mut self, config: Config) {
        let old = self.shared.load();
        if old.config.server.listen.get_ref() != config.server.listen.get_ref() {
            warn!("listener changes need a restart; keeping the current listeners");
        }
        let snap = self.shared.apply(config);
        self.checkers = checker::spawn(&snap);
        info!(backends = snap.backends.len(), "configuration reloaded");
    }

    /// Graceful shutdown: stop accepting, let every connection finish its in-flight requests
    /// (HTTP/1 closes after the current response, HTTP/2 sends GOAWAY), and after `grace` close
    /// whatever is left. Returns the number of connections that had to be cut.
    pub async fn shutdown(self, grace: Duration) -> usize {
        let _ = self.phase.send(Phase::Draining);
        for a in &self.accepts {
            a.abort();
        }
        drop(self.checkers);
        let all = self.conns.acquire_many(self.max_conns);
        let cut = match tokio::time::timeout(grace, all).await {
            Ok(_) => 0,
            Err(_) => {
                let left = self.max_conns as usize - self.conns.available_permits();
                let _ = self.phase.send(Phase::Closing);
                // Tasks drop their connections as soon as they see Closing.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    self.conns.acquire_many(self.max_conns),
                )
                .await;
                left
            }
        };
        info!(cut, "stopped");
        cut
    }
}

/// Runs `config` until SIGTERM or SIGINT, reloading from `path` on SIGHUP. A second SIGTERM or
/// SIGINT during the grace period closes everything at once.
pub async fn run(config: Config, path: PathBuf) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let grace = config.server.shutdown_grace.get();
    let mut running = start(config).await?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match config::load(&path) {
                Ok(c) => running.reload(c),
                Err(e) => warn!(error = %e, "reload refused; the current configuration keeps serving"),
            },
        }
    }
    info!(grace = ?grace, "shutting down");
    tokio::select! {
        cut = running.shutdown(grace) => {
            if cut > 0 {
                warn!(connections = cut, "grace period over; connections closed");
            }
        }
        _ = term.recv() => warn!("second signal: closing now"),
        _ = int.recv() => warn!("second signal: closing now"),
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

fn http_builder(cfg: &Config) -> auto::Builder<TokioExecutor> {
    let s = &cfg.server;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(s.header_read_timeout.get())
        .max_buf_size(*s.max_header_bytes.get_ref())
        .max_headers(*s.max_headers.get_ref());
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(*s.max_header_bytes.get_ref()).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

async fn accept_loop(
    listener: TcpListener,
    conns: Arc<Semaphore>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    proxy: Arc<Proxy>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut last_warn: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p >= Phase::Draining) => return,
            p = conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p >= Phase::Draining) => return,
            r = listener.accept() => r,
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
        let (builder, proxy, phase) = (builder.clone(), proxy.clone(), phase.clone());
        tokio::spawn(async move {
            serve(stream, peer, &builder, proxy, phase).await;
            drop(permit);
        });
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

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    mut phase: watch::Receiver<Phase>,
) {
    let _ = stream.set_nodelay(true);
    let info = ConnInfo { peer, tls: false };
    let svc = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { proxy.handle(req, info).await }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
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
