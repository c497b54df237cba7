//! systemd's readiness protocol (`sd_notify`): one datagram per state change to the socket
//! named by `$NOTIFY_SOCKET`, so a `Type=notify` unit knows when stickyd is serving, reloading
//! and stopping. Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// Where state changes go.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    /// A Linux abstract socket (`@name` in `$NOTIFY_SOCKET`).
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier systemd asked for through `$NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Notifier {
        Notifier::new(std::env::var_os("NOTIFY_SOCKET").map(|v| v.into_encoded_bytes()))
    }

    /// A notifier for a `$NOTIFY_SOCKET`-style address (`/path` or `@abstract`), or none.
    pub fn new(addr: Option<Vec<u8>>) -> Notifier {
        let target = addr
            .filter(|a| !a.is_empty())
            .map(|a| match a.strip_prefix(b"@") {
                Some(name) => Target::Abstract(name.to_vec()),
                None => {
                    use std::os::unix::ffi::OsStringExt;
                    Target::Path(PathBuf::from(std::ffi::OsString::from_vec(a)))
                }
            });
        Notifier { target }
    }

    /// Serving: `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload began (`READY=1` follows when it is over).
    pub fn reloading(&self) {
        self.send_logged("RELOADING=1\nSTATUS=reloading");
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=draining connections");
    }

    fn send_logged(&self, msg: &str) {
        if let Err(e) = self.send(msg) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// Sends one notification; `Ok(false)` when there is nowhere to send it.
    pub fn send(&self, msg: &str) -> io::Result<bool> {
        let Some(target) = &self.target else {
            return Ok(false);
        };
        let sock = UnixDatagram::unbound()?;
        match target {
            Target::Path(p) => sock.send_to(msg.as_bytes(), p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg.as_bytes(), &addr)?
            }
        };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_socket_nothing_is_sent() {
        assert!(!Notifier::new(None).send("READY=1").unwrap());
        assert!(!Notifier::new(Some(Vec::new())).send("READY=1").unwrap());
    }

    #[test]
    fn states_reach_a_path_socket_in_order() {
        let dir = std::env::temp_dir().join(format!("stickyd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.as_os_str().as_encoded_bytes().to_vec()));
        n.ready("serving");
        n.reloading();
        n.stopping();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=serving",
                "RELOADING=1\nSTATUS=reloading",
                "STOPPING=1\nSTATUS=draining connections"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn abstract_sockets_are_reached_too() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("stickyd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(Some(format!("@{name}").into_bytes()));
        assert!(n.send("READY=1").unwrap());
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }
}
