//! Tunnels for upgraded connections (WebSocket and the like): once the backend answered `101`
//! and the client got it, bytes are copied both ways until both sides are done, the tunnel is
//! idle for `tunnel_idle_timeout`, or shutdown's grace period is over. A tunnel holds its
//! backend's in-flight count and its client connection's slot while open.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::backend::InFlight;

/// Whatever keeps a client connection counted (its connection-limit slot, the worker's
/// liveness): an upgraded connection's tunnel holds it until it closes.
#[derive(Clone)]
pub struct Hold {
    /// Never read: held only so that it is dropped with the last clone.
    _kept: std::rc::Rc<dyn std::any::Any>,
}

impl Hold {
    /// Holds `kept` until the connection and every tunnel made from it are gone.
    pub fn new(kept: impl std::any::Any) -> Hold {
        Hold {
            _kept: std::rc::Rc::new(kept),
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// Copy buffer per direction.
const BUF: usize = 16 * 1024;

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed (or one failed).
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// Shutdown's grace period is over.
    Cut,
}

/// Waits for both upgrades, then runs the tunnel. `guard` and `hold` are kept until it ends.
pub async fn serve(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    cut: watch::Receiver<bool>,
    guard: InFlight,
    hold: Option<Hold>,
) {
    let (c, u) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let end = copy(TokioIo::new(c), TokioIo::new(u), idle, cut).await;
    debug!(end = ?end, "tunnel closed");
    drop((guard, hold));
}

/// Copies both ways between `a` and `b`. An end of stream on one side is passed on as a write
/// shutdown of the other; the tunnel ends when both directions are done.
pub async fn copy<A, B>(a: A, b: B, idle: Duration, mut cut: watch::Receiver<bool>) -> End
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut abuf, mut bbuf) = (vec![0u8; BUF], vec![0u8; BUF]);
    let (mut a_open, mut b_open) = (true, true);
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    while a_open || b_open {
        tokio::select! {
            r = ar.read(&mut abuf), if a_open => match r {
                Ok(0) | Err(_) => {
                    a_open = false;
                    let _ = bw.shutdown().await;
                }
                Ok(n) => {
                    if bw.write_all(&abuf[..n]).await.is_err() {
                        return End::Closed;
                    }
                }
            },
            r = br.read(&mut bbuf), if b_open => match r {
                Ok(0) | Err(_) => {
                    b_open = false;
                    let _ = aw.shutdown().await;
                }
                Ok(n) => {
                    if aw.write_all(&bbuf[..n]).await.is_err() {
                        return End::Closed;
                    }
                }
            },
            _ = &mut deadline => return End::Idle,
            () = cut_signal(&mut cut) => return End::Cut,
        }
        deadline.as_mut().reset(Instant::now() + idle);
    }
    End::Closed
}

/// Resolves once `cut` turns true (or its sender is gone).
async fn cut_signal(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|c| *c).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_closes_pass_through() {
        let (client, mut client_end) = tokio::io::duplex(64);
        let (backend, mut backend_end) = tokio::io::duplex(64);
        let (_cut, cut) = watch::channel(false);
        let t = tokio::spawn(copy(client, backend, Duration::from_secs(10), cut));
        client_end.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        backend_end.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        backend_end.write_all(b"pong").await.unwrap();
        client_end.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // The client finishes: the backend sees end of stream, and can still answer.
        client_end.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(backend_end.read_to_end(&mut rest).await.unwrap(), 0);
        backend_end.write_all(b"bye").await.unwrap();
        backend_end.shutdown().await.unwrap();
        let mut tail = Vec::new();
        client_end.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, b"bye");
        assert_eq!(t.await.unwrap(), End::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_ends_and_a_cut_ends_it_at_once() {
        let (client, _client_end) = tokio::io::duplex(64);
        let (backend, _backend_end) = tokio::io::duplex(64);
        let (_cut, cut) = watch::channel(false);
        let end = copy(client, backend, Duration::from_secs(30), cut).await;
        assert_eq!(end, End::Idle);

        let (client, _c) = tokio::io::duplex(64);
        let (backend, _b) = tokio::io::duplex(64);
        let (cutter, cut) = watch::channel(false);
        let t = tokio::spawn(copy(client, backend, Duration::from_secs(3600), cut));
        cutter.send(true).unwrap();
        assert_eq!(t.await.unwrap(), End::Cut);
    }
}
