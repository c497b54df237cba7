//! The listening sockets: which listeners a config asks for ([`ListenKey`]), what a reload
//! adds and removes ([`changes`]), and binding them once per worker with `SO_REUSEPORT` so the
//! kernel spreads new connections over the workers ([`bind_all`]).

use std::io;
use std::net::SocketAddr;

use crate::config::Config;

/// A listener as the config names it: its address (port 0 stays 0) and whether it is TLS.
pub(super) type ListenKey = (SocketAddr, bool);

/// The listeners `config` asks for, plain ones first.
pub(super) fn listen_keys(config: &Config) -> Vec<ListenKey> {
    let s = &config.server;
    s.listen
        .iter()
        .map(|a| (*a, false))
        .chain(s.listen_tls.iter().map(|a| (*a, true)))
        .collect()
}

/// Binds each address once per worker with `SO_REUSEPORT`. The first socket of an address is
/// preceded by a plain bind, so an address that anything else holds (another stickyd with
/// `SO_REUSEPORT` included) is refused instead of silently shared. Port 0 is resolved by the
/// first socket and the others follow it.
pub(super) fn bind_all(
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
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux, so the accept loop
    // makes no setsockopt per connection there.
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// What a reload changes: the listeners `new` adds to `old`, and those it removes, each in
/// config order. A listener that keeps its configured address and kind stays bound.
pub(super) fn changes(old: &[ListenKey], new: &[ListenKey]) -> (Vec<ListenKey>, Vec<ListenKey>) {
    let added = new.iter().filter(|k| !old.contains(k)).copied().collect();
    let removed = old.iter().filter(|k| !new.contains(k)).copied().collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, tls: bool) -> ListenKey {
        (s.parse().unwrap(), tls)
    }

    #[test]
    fn a_reload_keeps_listeners_whose_address_and_kind_stay() {
        let old = [key("127.0.0.1:80", false), key("127.0.0.1:443", true)];
        let new = [
            key("127.0.0.1:443", true),
            key("127.0.0.1:81", false),
            key("127.0.0.1:80", true),
        ];
        let (added, removed) = changes(&old, &new);
        assert_eq!(
            added,
            [key("127.0.0.1:81", false), key("127.0.0.1:80", true)]
        );
        assert_eq!(
            removed,
            [key("127.0.0.1:80", false)],
            "plain 80 became TLS 80"
        );
        assert_eq!(changes(&new, &new), (vec![], vec![]));
    }

    #[test]
    fn port_zero_is_bound_once_and_every_worker_shares_the_port() {
        let (addrs, per_worker) = bind_all(&["127.0.0.1:0".parse().unwrap()], 3).unwrap();
        assert_eq!(per_worker.len(), 3);
        assert_ne!(addrs[0].port(), 0);
        for set in &per_worker {
            assert_eq!(set.len(), 1);
            assert_eq!(set[0].local_addr().unwrap(), addrs[0]);
        }
    }

    /// What the accept loop relies on where it skips the per-connection setsockopt.
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_connections_have_nodelay_from_the_listener() {
        let (addrs, mut per_worker) = bind_all(&["127.0.0.1:0".parse().unwrap()], 1).unwrap();
        let listener = per_worker.remove(0).remove(0);
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(addrs[0]).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn an_address_held_by_another_socket_is_refused_not_shared() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = held.local_addr().unwrap();
        let e = bind_all(&[at], 2).unwrap_err();
        assert!(
            e.to_string().contains(&format!("cannot listen on {at}")),
            "{e}"
        );
    }
}
