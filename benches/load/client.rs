//! The load threads' HTTP/1.1 client: one keep-alive connection per `Conn`
//! (`hyper::client::conn::http1`, its driver a task of the same runtime), requests built from
//! a template, and one exchange: send, read the head (status, backend header, `Set-Cookie`s
//! into the user's jar), drain the body.
//!
//! Timeouts are the caller's.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{COOKIE, HOST, SET_COOKIE};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stats::Failure;
use crate::users::User;

/// Where requests go and what they look like.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    /// Origin-form request target (path and query).
    pub uri: Uri,
    pub method: Method,
    /// The response header that names the backend.
    pub backend_header: HeaderName,
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        host: &str,
        path: &PathAndQuery,
        method: Method,
        backend_header: HeaderName,
    ) -> Result<Target, String> {
        let host = HeaderValue::from_str(host).map_err(|_| format!("bad host {host:?}"))?;
        let uri = Uri::builder()
            .path_and_query(path.clone())
            .build()
            .map_err(|e| format!("bad path {path}: {e}"))?;
        Ok(Target {
            addr,
            host,
            uri,
            method,
            backend_header,
        })
    }

    /// A request from the template: method, path, Host, and the user's cookies. The template's
    /// parts are reference-counted, so this copies no bytes.
    fn request(&self, cookie: Option<HeaderValue>) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.reserve(2);
        h.insert(HOST, self.host.clone());
        if let Some(c) = cookie {
            h.insert(COOKIE, c);
        }
        req
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: http1::SendRequest<Empty<Bytes>>,
}

impl Conn {
    /// Connects and spawns the connection's driver task.
    pub async fn open(addr: SocketAddr) -> Result<Conn, Failure> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| Failure::Connect)?;
        // Small requests and answers: never wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (sender, driver) = http1::Builder::new()
            // Requests are a small head: one flat buffer and write(2) beat writev(2) here
            // (about 7% more requests per client CPU-second, measured on loopback).
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| classify(&e))?;
        tokio::spawn(async move {
            // Ends when the peer closes or the last sender is dropped; errors surface at the
            // sender.
            let _ = driver.await;
        });
        Ok(Conn { sender })
    }

    /// True once the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Waits until the connection can take a request; false when it closed meanwhile.
    pub async fn ready(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }
}

/// A connection ready for a request: `slot`'s when it is still open, else a new one. Nothing
/// has been sent when this fails, so only a failed connect is an error.
pub async fn ready_conn(slot: &mut Option<Conn>, addr: SocketAddr) -> Result<&mut Conn, Failure> {
    let reusable = match slot.as_mut() {
        Some(c) => !c.is_closed() && c.ready().await,
        None => false,
    };
    if !reusable {
        *slot = None;
        *slot = Some(Conn::open(addr).await?);
    }
    slot.as_mut().ok_or(Failure::Io)
}

/// The parts of a response the harness looks at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The backend header's value, if present.
    pub backend: Option<HeaderValue>,
}

/// Sends one request for `user` on `conn`, stores the response's cookies in the user's jar and
/// reads the body to its end.
pub async fn exchange(
    conn: &mut Conn,
    target: &Target,
    user: &mut User,
) -> Result<Answer, Failure> {
    let req = target.request(user.cookie());
    let resp = conn
        .sender
        .send_request(req)
        .await
        .map_err(|e| classify(&e))?;
    let (head, mut body) = resp.into_parts();
    if !user.cookieless {
        for v in head.headers.get_all(SET_COOKIE) {
            user.jar.store(v.as_bytes());
        }
    }
    let answer = Answer {
        status: head.status.as_u16(),
        backend: head.headers.get(&target.backend_header).cloned(),
    };
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| classify(&e))?;
    }
    Ok(answer)
}

/// Not HTTP from the peer is a protocol error; anything else after the connect (reset, closed
/// before the response completed) is I/O.
fn classify(e: &hyper::Error) -> Failure {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        Failure::Protocol
    } else {
        Failure::Io
    }
}
