//! Connections to backends, made in one place for everyone who dials one: the upstream pool's
//! HTTP/1.1 and HTTP/2 connections and the health checker's probes. [`open`] does the TCP
//! connect, the socket options (TCP_NODELAY, keepalive) and the TLS handshake when the backend
//! speaks TLS, all within one deadline, and names the backend in its error.
//!
//! The TCP socket stays reachable through a weak [`Probe`] while hyper owns the connection, so
//! the pool can check an idle connection for a close its connection task has not seen yet
//! ([`idle_and_open`]). Certificates and rustls configs are `tls`'s; this module only uses them.

use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::tls::Origin;

/// TCP keepalive probe start on backend connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A weak handle on a backend connection's socket (see [`idle_and_open`]).
pub type Probe = Weak<tokio::net::TcpStream>;

/// Connects to `address` (`host:port`) and, when `origin` is given, does the TLS handshake, all
/// within `deadline`. The error says which backend and what failed: `connect to ADDRESS: why`,
/// or `connect to ADDRESS timed out after DEADLINE`.
pub async fn open(
    address: &str,
    origin: Option<&Origin>,
    deadline: Duration,
) -> io::Result<Stream> {
    within(address, deadline, async {
        let tcp = Tcp(Arc::new(dial(address).await?));
        Ok(match origin {
            None => Stream::Plain(tcp),
            Some(o) => Stream::Tls(Box::new(o.connect(tcp).await?)),
        })
    })
    .await
}

/// As [`open`], for the HTTP/1 engine, which owns its connections whole (no probe handle kept
/// aside): the bare TCP stream, whose reads note a drained socket without a wasted read.
pub async fn open_direct(
    address: &str,
    origin: Option<&Origin>,
    deadline: Duration,
) -> io::Result<Direct> {
    within(address, deadline, async {
        let tcp = dial(address).await?;
        Ok(match origin {
            None => Stream::Plain(tcp),
            Some(o) => Stream::Tls(Box::new(o.connect(tcp).await?)),
        })
    })
    .await
}

/// The TCP connect and the socket options.
async fn dial(address: &str) -> io::Result<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
    Ok(tcp)
}

/// `dial` within `deadline`, its error naming the backend.
async fn within<T>(
    address: &str,
    deadline: Duration,
    dial: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(deadline, dial).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("connect to {address}: {e}"),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {address} timed out after {deadline:?}"),
        )),
    }
}

/// A connection to a backend: plain TCP or TLS over it. hyper's pool uses it over [`Tcp`]
/// (with a probe handle), the HTTP/1 engine over the bare stream ([`Direct`]).
pub enum Stream<T = Tcp> {
    /// Plain TCP.
    Plain(T),
    /// TLS (boxed: the TLS state is large and this is the rare case).
    Tls(Box<tokio_rustls::client::TlsStream<T>>),
}

/// The HTTP/1 engine's connection to a backend.
pub type Direct = Stream<tokio::net::TcpStream>;

impl Direct {
    /// Whether the idle connection is still open with nothing unread (see [`idle_and_open`]).
    pub fn idle_and_open(&self) -> bool {
        let tcp = match self {
            Stream::Plain(t) => t,
            Stream::Tls(t) => t.get_ref().0,
        };
        peek_would_block(tcp)
    }
}

/// A backend TCP stream whose socket the pool can still look at while hyper owns the
/// connection: [`Tcp::probe`] gives a weak handle, with which an idle connection is checked for
/// a close the connection task has not seen yet (see `upstream`).
pub struct Tcp(Arc<tokio::net::TcpStream>);

impl Tcp {
    /// A handle that does not keep the socket open.
    pub fn probe(&self) -> Probe {
        Arc::downgrade(&self.0)
    }
}

/// Whether an idle connection's socket is still open with nothing unread: a peek that would
/// block. End of stream (the backend closed it), unexpected bytes, an error, or a socket
/// already gone all say it must not carry a request.
pub fn idle_and_open(probe: &Probe) -> bool {
    probe.upgrade().is_some_and(|tcp| peek_would_block(&tcp))
}

/// A non-blocking peek that would block: open, with nothing unread.
fn peek_would_block(tcp: &tokio::net::TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(
        socket2::SockRef::from(tcp).peek(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

impl tokio::io::AsyncRead for Tcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read_buf(buf) {
                Ok(_) => return std::task::Poll::Ready(Ok(())),
                // Readiness was cleared: wait for the next.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for Tcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

impl Stream<Tcp> {
    /// A weak handle on the TCP socket, for [`idle_and_open`].
    pub fn probe(&self) -> Probe {
        match self {
            Stream::Plain(s) => s.probe(),
            Stream::Tls(s) => s.get_ref().0.probe(),
        }
    }
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead for Stream<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stream<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_open_connection_is_idle_until_the_backend_writes_or_closes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap().to_string();
        let (stream, accepted) = tokio::join!(open(&at, None, Duration::from_secs(5)), l.accept());
        let mut stream = stream.unwrap();
        let (mut peer, _) = accepted.unwrap();
        let probe = stream.probe();
        assert!(idle_and_open(&probe), "nothing sent yet");
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).await.unwrap();
        peer.write_all(b"x").await.unwrap();
        // Wait until the byte is readable, without consuming it through the stream.
        probe.upgrade().unwrap().readable().await.unwrap();
        assert!(!idle_and_open(&probe), "an unread byte");
        stream.read_exact(&mut buf[..1]).await.unwrap();
        drop(peer);
        probe.upgrade().unwrap().readable().await.unwrap();
        assert!(!idle_and_open(&probe), "closed by the backend");
        drop(stream);
        assert!(!idle_and_open(&probe), "socket gone");
    }

    #[tokio::test]
    async fn a_refused_connect_names_the_backend() {
        // Bind, then close: the port is very likely free, so the connect is refused.
        let at = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let Err(e) = open(&at, None, Duration::from_secs(5)).await else {
            panic!("connected to a closed port");
        };
        assert!(
            e.to_string().starts_with(&format!("connect to {at}: ")),
            "{e}"
        );
    }
}
