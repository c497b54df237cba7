//! A running stickyd: its lifecycle from [`start`] (bind every listener, start the workers,
//! the health checks and the admin API) through reloads to a graceful [`Running::shutdown`],
//! and [`run`], which drives it from signals. Thread-per-core: `worker_threads` OS threads each
//! serve their own listeners and connections (`worker`); health checks, signals, reload and
//! the admin API run on the caller's runtime.
//!
//! | file | owns |
//! |---|---|
//! | `server.rs` | [`Running`]: start, shutdown, the signal loop |
//! | `listen` | which sockets a config asks for, binding them per worker |
//! | `worker` | a worker thread: its runtime, accept loops and connections |
//! | `reload` | applying a new config to a running stickyd |

mod listen;
mod reload;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::admin::{self, ReloadCall};
use crate::checker;
use crate::clock::Now;
use crate::config::Config;
use crate::dns::{Discovery, OnChange};
use crate::state::Shared;
use listen::{ListenKey, bind_all, listen_keys};
use reload::{reload_from, status_line};
use worker::{Worker, WorkerCmd};

/// Lifecycle phase broadcast to accept loops and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Stop accepting; connections finish what they are doing and close.
    Draining,
    /// The grace period is over: close everything now.
    Closing,
}

/// How long [`start`] waits for discovery's first lookups.
const FIRST_LOOKUPS: Duration = Duration::from_secs(5);

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
    /// Discovery's tasks, one per `[[discover]]` entry.
    discovery: Discovery,
    /// Brings the health checkers (which it owns) in step with the current snapshot: called
    /// by reloads, and by discovery after it changed the snapshot.
    on_change: OnChange,
    admin_addr: Option<SocketAddr>,
    /// Reload calls from the admin API, for [`run`] (or an embedder) to act on.
    reload_calls: Option<mpsc::Receiver<ReloadCall>>,
    /// Tells the admin API that shutdown began (its /healthz turns 503).
    stopping: watch::Sender<bool>,
    /// The admin server and the 100 ms maintenance task.
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

    if config.pools.iter().any(|p| p.affinity.generated_key) {
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
            let at = a.listen;
            let l = TcpListener::bind(at).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {at} (admin): {e}"))
            })?;
            Some(l)
        }
        None => None,
    };
    let admin_token = config.admin.as_ref().and_then(|a| a.token.clone());
    let sink = match &config.log.access_file {
        Some(p) => crate::access::Sink::File(p.clone()),
        None => crate::access::Sink::Stdout,
    };
    let access = crate::access::AccessLog::start(config.log.access, &sink)?;
    let mut shared = Shared::new(config);
    shared.access = access;
    let shared = Arc::new(shared);
    shared.note_admin_states(Now::read().unix_secs());
    let checkers = Arc::new(Mutex::new(checker::spawn(&shared.load())));
    let on_change: OnChange = {
        let (shared, checkers) = (shared.clone(), checkers.clone());
        Arc::new(move || {
            let mut c = checkers.lock().unwrap_or_else(|p| p.into_inner());
            c.sync(&shared.load());
        })
    };
    // The first lookup of every `[[discover]]` entry, before the listeners accept: a pool
    // that discovers its backends starts with them (or, if DNS does not answer within
    // FIRST_LOOKUPS, starts empty and is filled when it does).
    let mut discovery = Discovery::default();
    let deadline = tokio::time::Instant::now() + FIRST_LOOKUPS;
    for first in discovery.sync(&shared, &on_change) {
        if tokio::time::timeout_at(deadline, first).await.is_err() {
            warn!(
                wait = ?FIRST_LOOKUPS,
                "discovery has not answered yet: starting without its backends"
            );
            break;
        }
    }
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
                // Its own slot of every per-worker counter.
                crate::metrics::shard::enter_worker(i);
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
        discovery,
        on_change,
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

    /// The first step of a shutdown with `[server] shutdown_delay`: `/readyz` answers 503 from
    /// now on, and everything else is served as before, so the platform takes this instance out
    /// of rotation before [`Running::shutdown`] stops accepting.
    pub fn not_ready(&self) {
        let _ = self.stopping.send(true);
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

/// How often `watch_config` looks at the file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What tells a config file's versions apart: the file a path resolves to (symlinks followed),
/// its size and its modification time. `None` when it cannot be read (a change too, once it
/// can be again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp(Option<(u64, u64, u64, std::time::SystemTime)>);

impl FileStamp {
    fn of(path: &std::path::Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))),
        )
    }
}

/// Runs `config` until SIGTERM or SIGINT, reloading from `path` on SIGHUP. A second SIGTERM or
/// SIGINT during the grace period closes everything at once.
pub async fn run(config: Config, path: PathBuf) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let notify = crate::notify::Notifier::from_env();
    // The file as it was loaded (taken before the listeners open: a change made once they
    // answer is a change).
    let mut seen = FileStamp::of(&path);
    let mut running = start(config).await?;
    notify.ready(&status_line(&running));
    let mut calls = running.take_reload_calls();
    // `[server] watch_config`: the file (and whatever a symlink to it points at, as a
    // Kubernetes ConfigMap swaps it) is looked at every second; a change reloads it as SIGHUP
    // does. Whether to watch is read at each look, so a reload can turn it on or off.
    let mut watch = tokio::time::interval(WATCH_EVERY);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notify.reloading();
                let _ = reload_from(&mut running, &path);
                notify.ready(&status_line(&running));
                seen = FileStamp::of(&path);
            }
            _ = watch.tick() => {
                let now = FileStamp::of(&path);
                if now != seen && running.shared().load().config.server.watch_config {
                    info!(path = %path.display(), "config file changed: reloading");
                    notify.reloading();
                    let _ = reload_from(&mut running, &path);
                    notify.ready(&status_line(&running));
                }
                seen = now;
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
    notify.stopping();
    // As the config is now (a reload may have changed them).
    let (delay, grace) = {
        let s = &running.shared().load().config.server;
        (s.shutdown_delay, s.shutdown_grace)
    };
    if !delay.is_zero() {
        info!(delay = ?delay, "not ready: serving on until the delay is over, then draining");
        running.not_ready();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => warn!("second signal: draining now"),
            _ = int.recv() => warn!("second signal: draining now"),
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
