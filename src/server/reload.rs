//! Reload: a new config applied to a running stickyd without dropping a connection. The
//! snapshot is swapped, live backend state carried over by id, health checks restarted, and
//! listeners opened and closed to match (all or nothing).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use tracing::{info, warn};

use super::Running;
use super::listen::{self, ListenKey, bind_all, listen_keys};
use super::worker::WorkerCmd;
use crate::clock::Now;
use crate::config::{self, Config};

impl Running {
    /// Applies a new config: backends, keys, affinity and health settings take effect for new
    /// requests; backends that keep their id keep their health and counters. Listeners whose
    /// address is unchanged stay bound; new ones are bound first (if one cannot be, the whole
    /// reload is refused and nothing changes) and removed ones stop accepting (their
    /// connections finish). Other server-level changes need a restart (logged).
    pub fn reload(&mut self, config: Config) -> io::Result<()> {
        let old = self.shared.load();
        let new_keys = listen_keys(&config);
        let (added, removed) = listen::changes(&self.listen_keys, &new_keys);
        let added_addrs: Vec<SocketAddr> = added.iter().map(|k| k.0).collect();
        let (added_at, sockets) = bind_all(&added_addrs, self.cmds.len())?;
        let server_changed = {
            let (o, n) = (&old.config.server, &config.server);
            o.worker_threads != n.worker_threads
                || o.max_connections != n.max_connections
                || o.header_read_timeout != n.header_read_timeout
                || o.max_header_bytes != n.max_header_bytes
                || o.max_headers != n.max_headers
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
        self.shared.note_admin_states(Now::read().unix_secs());
        // Discovery first: an entry it starts publishes its backends, and the checkers follow
        // every snapshot.
        let _ = self.discovery.sync(&self.shared, &self.on_change);
        (self.on_change)();

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
        info!(
            backends = snap.backends.len(),
            pools = snap.pools.len(),
            "configuration reloaded"
        );
        Ok(())
    }
}

/// The status line systemd shows (`systemctl status`).
pub(super) fn status_line(running: &Running) -> String {
    let snap = running.shared.load();
    let listen: Vec<String> = running.addrs.iter().map(|a| a.to_string()).collect();
    format!(
        "serving on {} with {} backend(s)",
        listen.join(", "),
        snap.backends.len()
    )
}

/// Reloads from `path`: the new backend count, or the error (the current config keeps serving).
pub(super) fn reload_from(running: &mut Running, path: &std::path::Path) -> Result<usize, String> {
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
