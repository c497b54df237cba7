//! Listeners and connections, thread-per-core: `worker_threads` OS threads, each running its
//! own current-thread tokio runtime with its own listening socket per address (`SO_REUSEPORT`,
//! so the kernel spreads new connections over them), its own upstream pool and its own
//! connection tasks. Nothing on the request path crosses threads except the config snapshot and
//! the atomic counters. Health checks, signals and reload run on the caller's runtime.
//!
//! Each connection is served by hyper-util's auto builder (HTTP/1.1 and h2c prior knowledge).
//! The accept loop never dies on an accept error: it logs (at most once a second) and, when the
//! error is about resources (e.g. out of file descriptors), waits a little instead of spinning.
//! At `max_connections` (shared by all workers) a worker holds the connection it just accepted
//! unserved and stops accepting until a connection closes, leaving new ones in the kernel
//! backlog.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::admin::{self, ReloadCall};
use crate::checker::{self, Checkers};
use crate::config::{self, Config};
use crate::proxy::{ConnInfo, Hold, Proxy};
use crate::state::Shared;
use crate::upstream::Upstream;

/// A listener as the config names it: its address (port 0 stays 0) and whether it is TLS.
type ListenKey = (SocketAddr, bool);

/// The listeners `config` asks for, plain ones first.
fn listen_keys(config: &Config) -> Vec<ListenKey> {
    let s = &config.server;
    s.listen
        .get_ref()
        .iter()
        .map(|a| (*a, false))
        .chain(s.listen_tls.get_ref().iter().map(|a| (*a, true)))
        .collect()
}

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
    /// Bound addresses, in config order.
    addrs: Vec<SocketAddr>,
    /// The configured address of each (port 0 stays 0 here) and whether it is TLS, to compare
    /// with a reload's.
    listen_keys: Vec<ListenKey>,
    /// Commands to each worker: listeners to open and close.
    cmds: Vec<mpsc::UnboundedSender<WorkerCmd>>,
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    /// One per worker thread; resolves when the thread has finished.
    workers: Vec<oneshot::Receiver<()>>,
    conns: Arc<Semaphore>,
    max_conns: u32,
    checkers: Checkers,
    admin_addr: Option<SocketAddr>,
    /// Reload calls from the admin API, for [`run`] (or an embedder) to act on.
    reload_calls: Option<mpsc::Receiver<ReloadCall>>,
    /// Tells the admin API that shutdown began (its /healthz turns 503).
    stopping: watch::Sender<bool>,
    /// The admin server and the once-a-second maintenance task.
    control: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    /// Dropped without [`Running::shutdown`]: close everything now, so no worker outlives it.
    fn drop(&mut self) {
        let _ = self.phase.send(Phase::Closing);
        for t in &self.control {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.addrs)
            .finish()
    }
}

/// Binds every listener of `config` (all or none), starts the worker threads and the health
/// checks, and returns once every worker is accepting. Must run inside a tokio runtime, which
/// then carries the health checks.
pub async fn start(config: Config) -> io::Result<Running> {
    let workers = match config.server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let listen_keys = listen_keys(&config);
    let plain: Vec<SocketAddr> = listen_keys.iter().map(|k| k.0).collect();
    let (addrs, mut sockets) = bind_all(&plain, workers)?;

    if config.generated_key {
        warn!(
            "no affinity.keys configured: using a random key generated at start; sessions will not \
             survive a restart and are not shared between instances"
        );
    }
    let max_conns = u32::try_from(config.server.max_connections)
        .unwrap_or(u32::MAX >> 3)
        .min(Semaphore::MAX_PERMITS as u32);
    let admin_listener = match &config.admin {
        Some(a) => {
            let at = *a.listen.get_ref();
            let l = TcpListener::bind(at).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {at} (admin): {e}"))
            })?;
            Some(l)
        }
        None => None,
    };
    let admin_token = config.admin_token.clone();
    let sink = match &config.log.access_file {
        Some(p) => crate::access::Sink::File(p.clone()),
        None => crate::access::Sink::Stdout,
    };
    let access = crate::access::AccessLog::start(config.log.access, &sink)?;
    let mut shared = Shared::new(config);
    shared.access = access;
    let shared = Arc::new(shared);
    shared.note_admin_states(crate::backend::unix_secs());
    let checkers = checker::spawn(&shared.load());
    let (phase, _) = watch::channel(Phase::Running);
    let conns = Arc::new(Semaphore::new(max_conns as usize));
    let (stopping, stopping_rx) = watch::channel(false);
    let mut control = vec![tokio::spawn(crate::maintain::run(shared.clone()))];
    let mut admin_addr = None;
    let mut reload_calls = None;
    if let Some(l) = admin_listener {
        admin_addr = Some(l.local_addr()?);
        let (tx, rx) = mpsc::channel(4);
        reload_calls = Some(rx);
        let ctx = Arc::new(admin::Ctx {
            shared: shared.clone(),
            token: admin_token,
            reload: Some(tx),
            conns: conns.clone(),
            max_conns,
            stopping: stopping_rx,
        });
        // Runs until aborted: at the end of shutdown, or when Running is dropped.
        control.push(tokio::spawn(admin::serve(l, ctx)));
    }

    let mut exits = Vec::with_capacity(workers);
    let mut readies = Vec::with_capacity(workers);
    let mut cmds = Vec::with_capacity(workers);
    for (i, listeners) in sockets.drain(..).enumerate() {
        let listeners: Vec<_> = listen_keys.iter().copied().zip(listeners).collect();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        cmds.push(cmd_tx);
        let ctx = Worker {
            shared: shared.clone(),
            conns: conns.clone(),
            phase: phase.subscribe(),
            cmds: cmd_rx,
        };
        std::thread::Builder::new()
            .name(format!("stickyd-worker-{i}"))
            .spawn(move || {
                ctx.run(listeners, ready_tx);
                let _ = exit_tx.send(());
            })?;
        readies.push(ready_rx);
        exits.push(exit_rx);
    }
    let running = Running {
        addrs,
        listen_keys,
        cmds,
        shared,
        phase,
        workers: exits,
        conns,
        max_conns,
        checkers,
        admin_addr,
        reload_calls,
        stopping,
        control,
    };
    if let Some(a) = running.admin_addr {
        info!(address = %a, "admin API listening");
    }
    for r in readies {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a worker thread failed to start")),
        }
    }
    for a in &running.addrs {
        info!(address = %a, workers, "listening");
    }
    Ok(running)
}

/// Binds each address once per worker with `SO_REUSEPORT`. The first socket of an address is
/// preceded by a plain bind, so an address that anything else holds (another stickyd with
/// `SO_REUSEPORT` included) is refused instead of silently shared. Port 0 is resolved by the
/// first socket and the others follow it.
fn bind_all(
    listen: &[SocketAddr],
    workers: usize,
) -> io::Result<(Vec<SocketAddr>, Vec<Vec<std::net::TcpListener>>)> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::with_capacity(listen.len());
    for &want in listen {
        let err = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {want}: {e}"));
        if want.port() != 0 {
            drop(std::net::TcpListener::bind(want).map_err(err)?);
        }
        let mut at = want;
        for (i, set) in per_worker.iter_mut().enumerate() {
            let l = bind_one(at).map_err(err)?;
            if i == 0 {
                at = l.local_addr()?;
            }
            set.push(l);
        }
        addrs.push(at);
    }
    Ok((addrs, per_worker))
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// What a worker thread shares with the rest of the process.
struct Worker {
    shared: Arc<Shared>,
    conns: Arc<Semaphore>,
    phase: watch::Receiver<Phase>,
    cmds: mpsc::UnboundedReceiver<WorkerCmd>,
}

/// What a reload asks of each worker.
enum WorkerCmd {
    /// Accept on this socket, known by its configured address.
    Listen(ListenKey, std::net::TcpListener),
    /// Stop accepting on the listener of this configured address (its connections stay).
    Close(ListenKey),
}

impl Worker {
    /// The worker thread's body: a current-thread runtime and a `LocalSet` carrying the accept
    /// loops and every connection of this thread. Returns when the worker is done: after the
    /// drain, when its last connection has closed, or at once when the grace period is over.
    fn run(
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
        let builder = Rc::new(http_builder(&snap.config));
        // Tunnels (upgraded connections) close when the grace period is over.
        let (cut, cut_rx) = watch::channel(false);
        let mut closing = self.phase.clone();
        tokio::task::spawn_local(async move {
            let _ = closing.wait_for(|p| *p >= Phase::Closing).await;
            let _ = cut.send(true);
        });
        let proxy = Rc::new(Proxy::new(
            self.shared.clone(),
            Upstream::new(&snap.config.upstream),
            cut_rx,
        ));
        drop(snap);
        // Every accept loop and connection holds a clone; `recv` returns None once all are gone.
        let (alive, mut all_done) = mpsc::channel::<()>(1);
        let mut stops: HashMap<ListenKey, watch::Sender<bool>> = HashMap::new();
        let open = |key: ListenKey, l: TcpListener, stops: &mut HashMap<_, _>| {
            let (stop, stopped) = watch::channel(false);
            // A listener reopened under the same key replaces (and stops) the old one.
            if let Some(old) = stops.insert(key, stop) {
                let _ = old.send(true);
            }
            tokio::task::spawn_local(accept_loop(
                l,
                key.1,
                self.conns.clone(),
                builder.clone(),
                proxy.clone(),
                self.phase.clone(),
                stopped,
                alive.clone(),
            ));
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
        drop(alive);
        tokio::select! {
            _ = all_done.recv() => {}
            _ = phase.wait_for(|p| *p >= Phase::Closing) => {}
        }
    }
}

impl Running {
    /// The bound addresses, in config order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The admin API's address, if it has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Reload calls from the admin API, taken once by whoever owns the config file.
    pub fn take_reload_calls(&mut self) -> Option<mpsc::Receiver<ReloadCall>> {
        self.reload_calls.take()
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
    /// requests; backends that keep their id keep their health and counters. Listeners whose
    /// address is unchanged stay bound; new ones are bound first (if one cannot be, the whole
    /// reload is refused and nothing changes) and removed ones stop accepting (their
    /// connections finish). Other server-level changes need a restart (logged).
    pub fn reload(&mut self, config: Config) -> io::Result<()> {
        let old = self.shared.load();
        let new_keys = listen_keys(&config);
        let added: Vec<ListenKey> = new_keys
            .iter()
            .filter(|k| !self.listen_keys.contains(k))
            .copied()
            .collect();
        let removed: Vec<ListenKey> = self
            .listen_keys
            .iter()
            .filter(|k| !new_keys.contains(k))
            .copied()
            .collect();
        let added_addrs: Vec<SocketAddr> = added.iter().map(|k| k.0).collect();
        let (added_at, sockets) = bind_all(&added_addrs, self.cmds.len())?;
        let server_changed = {
            let (o, n) = (&old.config.server, &config.server);
            o.worker_threads != n.worker_threads
                || o.max_connections != n.max_connections
                || o.header_read_timeout != n.header_read_timeout
                || o.max_header_bytes.get_ref() != n.max_header_bytes.get_ref()
                || o.max_headers.get_ref() != n.max_headers.get_ref()
                || o.h2_max_concurrent_streams != n.h2_max_concurrent_streams
        };
        if server_changed {
            warn!("[server] limits and worker_threads need a restart; listeners are reloaded");
        }
        if old.config.log.access != config.log.access
            || old.config.log.access_file != config.log.access_file
        {
            warn!("access log changes need a restart; keeping the current access log");
        }
        let snap = self.shared.apply(config);
        self.shared.note_admin_states(crate::backend::unix_secs());
        self.checkers = checker::spawn(&snap);

        for (worker, socks) in self.cmds.iter().zip(sockets) {
            for (key, sock) in added.iter().zip(socks) {
                let _ = worker.send(WorkerCmd::Listen(*key, sock));
            }
            for key in &removed {
                let _ = worker.send(WorkerCmd::Close(*key));
            }
        }
        let mut at: HashMap<ListenKey, SocketAddr> = self
            .listen_keys
            .iter()
            .copied()
            .zip(self.addrs.iter().copied())
            .chain(added.iter().copied().zip(added_at.iter().copied()))
            .collect();
        self.addrs = new_keys.iter().filter_map(|k| at.remove(k)).collect();
        self.listen_keys = new_keys;
        for a in &added_at {
            info!(address = %a, "listening (added by reload)");
        }
        for (a, _) in &removed {
            info!(address = %a, "listener closed by reload");
        }
        info!(backends = snap.backends.len(), "configuration reloaded");
        Ok(())
    }

    /// Graceful shutdown: stop accepting, let every connection finish its in-flight requests
    /// (HTTP/1 closes after the current response, HTTP/2 sends GOAWAY), and after `grace` close
    /// whatever is left. Returns the number of connections that had to be cut.
    pub async fn shutdown(mut self, grace: Duration) -> usize {
        let _ = self.stopping.send(true);
        let _ = self.phase.send(Phase::Draining);
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
        let _ = self.phase.send(Phase::Closing);
        for t in &self.control {
            t.abort();
        }
        for w in std::mem::take(&mut self.workers) {
            let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
        }
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
    let notify = crate::notify::Notifier::from_env();
    let mut running = start(config).await?;
    notify.ready(&status_line(&running));
    let mut calls = running.take_reload_calls();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notify.reloading();
                let _ = reload_from(&mut running, &path);
                notify.ready(&status_line(&running));
            }
            Some(reply) = async {
                match calls.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                notify.reloading();
                let _ = reply.send(reload_from(&mut running, &path));
                notify.ready(&status_line(&running));
            }
        }
    }
    info!(grace = ?grace, "shutting down");
    notify.stopping();
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

/// HTTP/2: streams reset by the client before being accepted, tolerated per connection.
const H2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2: streams stickyd resets for protocol errors, tolerated per connection.
const H2_MAX_LOCAL_RESETS: usize = 256;
/// HTTP/2: bytes buffered per stream toward a slow client.
const H2_MAX_SEND_BUF: usize = 256 * 1024;

/// Spawns hyper's HTTP/2 tasks (server streams, client connections) on the worker's
/// `LocalSet`: they need not be `Send`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// The status line systemd shows (`systemctl status`).
fn status_line(running: &Running) -> String {
    let snap = running.shared.load();
    let listen: Vec<String> = running.addrs.iter().map(|a| a.to_string()).collect();
    format!(
        "serving on {} with {} backend(s)",
        listen.join(", "),
        snap.backends.len()
    )
}

/// Reloads from `path`: the new backend count, or the error (the current config keeps serving).
fn reload_from(running: &mut Running, path: &std::path::Path) -> Result<usize, String> {
    match config::load(path) {
        Ok(c) => {
            let n = c.backends.len();
            running.reload(c).map_err(|e| {
                warn!(error = %e, "reload refused; the current configuration keeps serving");
                e.to_string()
            })?;
            Ok(n)
        }
        Err(e) => {
            warn!(error = %e, "reload refused; the current configuration keeps serving");
            Err(e.to_string())
        }
    }
}

fn http_builder(cfg: &Config) -> auto::Builder<LocalExec> {
    let s = &cfg.server;
    let mut b = auto::Builder::new(LocalExec);
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .writev(false)
        .header_read_timeout(s.header_read_timeout.get())
        .max_buf_size(*s.max_header_bytes.get_ref())
        .max_headers(*s.max_headers.get_ref());
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(*s.max_header_bytes.get_ref()).unwrap_or(u32::MAX))
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

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    tls: bool,
    conns: Arc<Semaphore>,
    builder: Rc<auto::Builder<LocalExec>>,
    proxy: Rc<Proxy>,
    mut phase: watch::Receiver<Phase>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let mut last_warn: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p >= Phase::Draining) => return,
            _ = stop.wait_for(|s| *s) => return,
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
        // The permit is taken after the accept: workers share the limit, and a worker waiting
        // for a connection must not sit on a permit that another worker's client needs. At the
        // limit this worker holds the one connection it accepted and accepts nothing more
        // until a permit frees, so at most one connection per worker waits outside the limit.
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
        let (builder, proxy, phase, alive) =
            (builder.clone(), proxy.clone(), phase.clone(), alive.clone());
        tokio::task::spawn_local(async move {
            let _ = stream.set_nodelay(true);
            // The connection's slot and the worker's liveness, kept by whoever holds a clone:
            // the connection, and a tunnel made from it.
            let mut info = ConnInfo::new(peer, tls);
            info.hold = Some(Hold(Rc::new((permit, alive))));
            if tls {
                if let Some(stream) = handshake(stream, peer, &proxy).await {
                    serve(stream, info, &builder, proxy, phase).await;
                }
            } else {
                serve(stream, info, &builder, proxy, phase).await;
            }
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

/// The TLS handshake, in the connection's own task, with the current certificates and the
/// configured deadline. A failed or slow handshake just closes the connection (logged at debug:
/// scanners and bad clients must not flood the log).
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: &Proxy,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let snap = proxy.shared().load();
    let cfg = snap.config.tls_config.clone()?;
    let deadline = snap
        .config
        .tls
        .as_ref()
        .map_or(Duration::from_secs(10), |t| t.handshake_timeout.get());
    drop(snap);
    match tokio::time::timeout(
        deadline,
        tokio_rustls::TlsAcceptor::from(cfg).accept(stream),
    )
    .await
    {
        Ok(Ok(s)) => Some(s),
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

async fn serve<I>(
    stream: I,
    info: ConnInfo,
    builder: &auto::Builder<LocalExec>,
    proxy: Rc<Proxy>,
    mut phase: watch::Receiver<Phase>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let info = Rc::new(info);
    let send_timeout = proxy.shared().load().config.server.client_timeout.get();
    let stream = crate::io::SendTimeout::new(stream, send_timeout);
    let svc = service_fn(move |req| {
        let (proxy, info) = (proxy.clone(), info.clone());
        async move { proxy.handle(req, &info).await }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
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
