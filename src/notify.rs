//! systemd's readiness protocol (`sd_notify(3)`): one datagram per state change to the socket
//! named by `$NOTIFY_SOCKET`, so a `Type=notify` or `Type=notify-reload` unit knows when
//! stickyd is serving, reloading and stopping. Without `$NOTIFY_SOCKET` (not under systemd)
//! every call is a no-op. A failed notification is logged, never fatal: serving matters more.
//!
//! The messages and the monotonic clock come from the `sd-notify` crate. The datagram is sent
//! here, through the address the notifier was made with, because the crate's `notify` reads the
//! environment on every call and reaches filesystem sockets only, while sd_notify(3) also
//! allows a Linux abstract socket (`@name`).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use sd_notify::NotifyState;

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
        self.send_logged(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload began (`READY=1` follows when it is over): `RELOADING=1` with the time it was
    /// sent on `CLOCK_MONOTONIC`. systemd 253+ ties the message to the reload it asked for by
    /// that time, and fails a `Type=notify-reload` unit's reload without it.
    pub fn reloading(&self) {
        if self.target.is_none() {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send_logged(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading"),
            ]),
            Err(e) => tracing::warn!(error = %e, "cannot notify systemd: no monotonic time"),
        }
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.send_logged(&[
            NotifyState::Stopping,
            NotifyState::Status("draining connections"),
        ]);
    }

    fn send_logged(&self, states: &[NotifyState]) {
        if let Err(e) = self.send(states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// Sends one notification, a line per state as `sd_notify::notify` writes them; `Ok(false)`
    /// when there is nowhere to send it.
    pub fn send(&self, states: &[NotifyState]) -> io::Result<bool> {
        let Some(target) = &self.target else {
            return Ok(false);
        };
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
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
        assert!(!Notifier::new(None).send(&[NotifyState::Ready]).unwrap());
        assert!(
            !Notifier::new(Some(Vec::new()))
                .send(&[NotifyState::Ready])
                .unwrap()
        );
    }

    /// The `MONOTONIC_USEC` value of a `RELOADING=1` message, checked to be the only variable
    /// part.
    fn monotonic_usec(msg: &str) -> u64 {
        let rest = msg
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{msg:?}"));
        let (usec, rest) = rest.split_once('\n').unwrap_or_else(|| panic!("{msg:?}"));
        assert_eq!(rest, "STATUS=reloading\n");
        usec.parse().unwrap_or_else(|e| panic!("{usec:?}: {e}"))
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
        n.reloading();
        n.stopping();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..4 {
            let len = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(got[0], "READY=1\nSTATUS=serving\n");
        // CLOCK_MONOTONIC in µs: positive and never going back.
        let (first, second) = (monotonic_usec(&got[1]), monotonic_usec(&got[2]));
        assert!(first > 0 && second >= first, "{first} {second}");
        assert_eq!(got[3], "STOPPING=1\nSTATUS=draining connections\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn abstract_sockets_are_reached_too() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("stickyd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(Some(format!("@{name}").into_bytes()));
        assert!(n.send(&[NotifyState::Ready]).unwrap());
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\n");
    }
}
