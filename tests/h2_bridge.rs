//! HTTP/2 clients in front of HTTP/1.1 backends: a request without a body goes to its backend
//! on the HTTP/1 engine's connections (`proxy::bridge`). What the backend receives, every way a
//! response body can be framed (length, chunked with trailers, close-delimited, none), large
//! bodies under the client's flow control, connection reuse and what ends it, and the errors:
//! a bad head (502), no answer (504), a body cut off (the stream is reset), a keep-alive race
//! (retried on a new connection, a POST never lost), a client that goes away mid-body.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One MiB: more than the client's and stickyd's HTTP/2 windows, so the body streams under flow
/// control.
const BIG: usize = 1024 * 1024;

/// A scripted HTTP/1.1 backend: answers each request head by its path (see `answer`), records
/// every head it reads, and counts its connections.
struct Scripted {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    /// Connections the backend saw closed by stickyd.
    closed: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start() -> Scripted {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (h, c, x) = (heads.clone(), connections.clone(), closed.clone());
        let addr = raw_server(move |s| {
            c.fetch_add(1, Ordering::SeqCst);
            serve(s, h.clone(), x.clone())
        })
        .await;
        Scripted {
            addr,
            heads,
            connections,
            closed,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

async fn serve(mut s: TcpStream, heads: Arc<Mutex<Vec<String>>>, closed: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        heads.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        if !answer(&mut s, &path, head.starts_with("HEAD ")).await {
            if path == "/big-then-wait" {
                // It waited for stickyd to close the connection.
                closed.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
    }
}

async fn w(s: &mut TcpStream, b: &[u8]) -> bool {
    s.write_all(b).await.is_ok()
}

/// Writes the response for `path`; false when the connection is to end.
async fn answer(s: &mut TcpStream, path: &str, head: bool) -> bool {
    match path {
        "/chunked" => {
            // Head, then the chunks and the trailer section in writes of their own.
            w(s, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n").await
                && w(s, b"5\r\nhello\r\n").await
                && w(s, b"6\r\n world\r\n").await
                && w(s, b"0\r\nx-sum: 11\r\n\r\n").await
        }
        "/chunked-and-length" => {
            // Content-Length beside chunked: ignored by the parser, never passed on.
            w(
                s,
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            )
            .await;
            false
        }
        "/twice" => {
            w(
                s,
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
            )
            .await
        }
        "/big" => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let body: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
            for part in body.chunks(64 * 1024) {
                if s.write_all(part).await.is_err() {
                    return false;
                }
            }
            true
        }
        "/big-then-wait" => {
            // Part of a large body, then nothing: the client gives up.
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&vec![b'x'; 64 * 1024]).await;
            let mut b = [0u8; 1];
            let _ = s.read(&mut b).await;
            false
        }
        "/close" => {
            let _ = w(s, b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ").await
                && w(s, b"the close").await;
            false
        }
        "/cut" => {
            let _ = w(s, b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b").await;
            false
        }
        "/early" => {
            w(
                s,
                b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
            )
            .await
        }
        "/extra" => {
            w(s, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA").await;
            // Keeps the connection: stickyd must not reuse it.
            true
        }
        "/bad" => {
            w(
                s,
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            )
            .await;
            false
        }
        "/interim-then-close" => {
            // Reads the request, says so with a 102, then goes away without a final answer.
            w(s, b"HTTP/1.1 102 Processing\r\n\r\n").await;
            false
        }
        "/silent" => {
            let mut b = [0u8; 1];
            let _ = s.read(&mut b).await;
            false
        }
        "/hop" => {
            w(
                s,
                b"HTTP/1.1 200 OK\r\nconnection: x-internal\r\nx-internal: 1\r\nkeep-alive: timeout=5\r\nx-kept: 1\r\ncontent-length: 2\r\n\r\nok",
            )
            .await
        }
        _ if head => w(s, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").await,
        _ => w(s, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await,
    }
}

/// An HTTP/2 client (h2c with prior knowledge) on one connection to `lb`.
async fn h2(lb: &stickyd::server::Running) -> SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(lb.local_addrs()[0]).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://bridge.test{path}"))
        .body(Empty::new())
        .unwrap()
}

/// Status, headers, body and trailers of one request.
async fn fetch(
    send: &mut SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
) -> (
    http::StatusCode,
    http::HeaderMap,
    Bytes,
    Option<http::HeaderMap>,
) {
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

async fn lb_for(b: &Scripted, upstream: &'static str) -> stickyd::server::Running {
    stickyd(
        &Cfg {
            server: "worker_threads = 1",
            upstream,
            ..Cfg::default()
        },
        &[("a", b.addr)],
    )
    .await
}

#[tokio::test]
async fn every_framing_of_a_response_body_arrives_whole_with_trailers() {
    let b = Scripted::start().await;
    let lb = lb_for(&b, "").await;
    let mut send = h2(&lb).await;

    let (status, _, body, trailers) = fetch(&mut send, get("/chunked")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "hello world");
    let trailers = trailers.expect("the chunked body's trailer section");
    assert_eq!(trailers["x-sum"], "11");

    let (status, headers, body, _) = fetch(&mut send, get("/big")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], BIG.to_string());
    assert_eq!(body.len(), BIG);
    assert!(body.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));

    let (status, _, body, _) = fetch(&mut send, get("/close")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "until the close");

    let (status, _, body, _) = fetch(&mut send, get("/early")).await;
    assert_eq!(status, 200, "the 103 is dropped, the final response sent");
    assert_eq!(body, "final");

    let req = Request::head("http://bridge.test/")
        .body(Empty::new())
        .unwrap();
    let (status, headers, body, _) = fetch(&mut send, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "5");
    assert!(body.is_empty());

    let (status, headers, body, _) = fetch(&mut send, get("/chunked-and-length")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "hello");
    assert!(!headers.contains_key("content-length"), "{headers:?}");

    let (_, headers, body, _) = fetch(&mut send, get("/twice")).await;
    assert_eq!(body, "ok");
    assert_eq!(
        headers.get_all("content-length").iter().count(),
        1,
        "one length"
    );

    let (_, headers, body, _) = fetch(&mut send, get("/hop")).await;
    assert_eq!(body, "ok");
    assert_eq!(headers["x-kept"], "1");
    for hop in ["connection", "keep-alive", "x-internal"] {
        assert!(
            !headers.contains_key(hop),
            "{hop} is hop-by-hop: {headers:?}"
        );
    }
}

#[tokio::test]
async fn requests_reuse_one_backend_connection_and_arrive_as_http11() {
    let b = Scripted::start().await;
    let lb = lb_for(&b, "").await;
    let mut send = h2(&lb).await;
    for i in 0..20 {
        let req = Request::get(format!("http://bridge.test/n/{i}?q=1"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-custom", "kept")
            .body(Empty::new())
            .unwrap();
        let (status, headers, body, _) = fetch(&mut send, req).await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok");
        assert!(
            headers.contains_key("set-cookie"),
            "each fresh request gets a token"
        );
    }
    assert_eq!(b.connections(), 1, "one pooled connection carried all 20");
    let head = b.last_head().to_ascii_lowercase();
    assert!(head.starts_with("get /n/19?q=1 http/1.1\r\n"), "{head}");
    assert!(head.contains("host: bridge.test\r\n"), "{head}");
    assert!(head.contains("x-custom: kept\r\n"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    assert!(head.contains("via: 2 stickyd\r\n"), "{head}");
    assert_eq!(head.matches("cookie:").count(), 1, "crumbs joined: {head}");
    assert!(head.contains("cookie: a=1; b=2\r\n"), "{head}");
    assert!(
        !head.contains("content-length"),
        "no body, no framing: {head}"
    );
}

#[tokio::test]
async fn a_connection_whose_response_broke_framing_is_not_reused() {
    let b = Scripted::start().await;
    let lb = lb_for(&b, "").await;
    let mut send = h2(&lb).await;
    let (_, _, body, _) = fetch(&mut send, get("/extra")).await;
    assert_eq!(body, "ok", "the declared length, not the bytes after it");
    let (_, _, body, _) = fetch(&mut send, get("/")).await;
    assert_eq!(body, "ok");
    assert_eq!(
        b.connections(),
        2,
        "the second request went on a new connection"
    );
    eventually("the broken connection to be closed", || {
        b.closed.load(Ordering::SeqCst) >= 1
    })
    .await;
}

#[tokio::test]
async fn a_bad_head_is_502_no_answer_is_504_and_a_cut_body_resets_the_stream() {
    let b = Scripted::start().await;
    let lb = lb_for(&b, "response_timeout = \"300ms\"").await;
    let mut send = h2(&lb).await;
    let (status, _, body, _) = fetch(&mut send, get("/bad")).await;
    assert_eq!(status, 502);
    assert!(!body.is_empty(), "a short body says why");

    let (status, _, _, _) = fetch(&mut send, get("/silent")).await;
    assert_eq!(status, 504);

    // The body is cut off after 10 of its 100 bytes: the stream is reset, not ended as if
    // whole (before or after its HEADERS reach the client, depending on timing).
    let cut = match send.send_request(get("/cut")).await {
        Ok(resp) => resp.into_body().collect().await.map(|_| ()),
        Err(e) => {
            assert!(
                e.to_string().contains("reset") || format!("{e:?}").contains("Reset"),
                "{e:?}"
            );
            Err(e)
        }
    };
    assert!(cut.is_err(), "the stream is reset, not ended as if whole");

    // The connection and stickyd go on.
    let (status, _, body, _) = fetch(&mut send, get("/")).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    let live = lb.shared().load().backends[0].live.clone();
    eventually("in-flight back to 0", || live.counters.in_flight() == 0).await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_body_frees_the_backend_connection() {
    let b = Scripted::start().await;
    let lb = lb_for(&b, "").await;
    let mut send = h2(&lb).await;
    let live = lb.shared().load().backends[0].live.clone();
    let resp = send.send_request(get("/big-then-wait")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(live.counters.in_flight(), 1);
    // The client reads a little and drops the body: its stream is reset.
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    drop(body);
    eventually("the backend connection to be closed", || {
        b.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("in-flight back to 0", || live.counters.in_flight() == 0).await;
    let (status, _, _, _) = fetch(&mut send, get("/")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_keep_alive_race_loses_no_request_and_no_post() {
    // The backend answers and closes without saying so: every reuse races its close.
    let b = RawBackend::start(Misbehave::AnswerThenClose).await;
    let lb = stickyd(
        &Cfg {
            server: "worker_threads = 1",
            ..Cfg::default()
        },
        &[("a", b.addr)],
    )
    .await;
    let mut send = h2(&lb).await;
    for i in 0..10 {
        let (status, _, body, _) = fetch(&mut send, get(&format!("/get/{i}"))).await;
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]), "GET {i}");
    }
    for i in 0..10 {
        // A POST without a body (END_STREAM on its HEADERS): not idempotent, never sent on a
        // connection that may have been closed.
        let req = Request::post(format!("http://bridge.test/post/{i}"))
            .body(Empty::new())
            .unwrap();
        let (status, _, _, _) = fetch(&mut send, req).await;
        assert_eq!(status, 200, "POST {i}");
    }
    assert_eq!(
        b.requests.load(Ordering::SeqCst),
        20,
        "each request reached the backend exactly once"
    );
}

#[tokio::test]
async fn concurrent_streams_share_the_pool_and_all_complete() {
    let b = Scripted::start().await;
    let lb = lb_for(&b, "").await;
    let send = h2(&lb).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let mut send = send.clone();
        tasks.spawn(async move {
            let path = if i % 8 == 0 { "/chunked" } else { "/" };
            let (status, _, body, _) = fetch(&mut send, get(path)).await;
            (status.as_u16(), body, path)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (status, body, path) = r.unwrap();
        assert_eq!(status, 200);
        let want: &[u8] = if path == "/chunked" {
            b"hello world"
        } else {
            b"ok"
        };
        assert_eq!(&body[..], want);
    }
    assert!(
        b.connections() <= 64,
        "no more connections than streams at once"
    );
    let live = lb.shared().load().backends[0].live.clone();
    eventually("in-flight back to 0", || live.counters.in_flight() == 0).await;
    assert_eq!(live.counters.requests(), 64);
}

#[tokio::test]
async fn a_session_stays_pinned_and_its_valid_token_is_not_reissued() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let lb = stickyd(&Cfg::default(), &pool(&[&a, &b])).await;
    let mut send = h2(&lb).await;
    let (_, headers, first, _) = fetch(&mut send, get("/")).await;
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for _ in 0..10 {
        let req = Request::get("http://bridge.test/")
            .header("cookie", &cookie)
            .body(Empty::new())
            .unwrap();
        let (status, headers, body, _) = fetch(&mut send, req).await;
        assert_eq!(status, 200);
        assert!(
            !headers.contains_key("set-cookie"),
            "a valid token is not re-issued"
        );
        assert_eq!(
            body, first,
            "pinned: every request on the first one's backend"
        );
    }
    let home = if first == "a" { &a } else { &b };
    assert_eq!(home.requests(), 11);
    assert!(
        home.last().headers.get("cookie").is_none(),
        "the affinity cookie is not forwarded"
    );
}

#[tokio::test]
async fn a_request_the_backend_acknowledged_with_a_1xx_is_never_sent_again() {
    // The backend read the POST (it sent 102) and closed before a final answer: a reused
    // connection's close must not look like one that never reached the backend.
    let b = Scripted::start().await;
    let lb = lb_for(&b, "").await;
    let mut send = h2(&lb).await;
    let (status, _, _, _) = fetch(&mut send, get("/warm")).await;
    assert_eq!(status, 200, "a pooled connection to reuse");
    let post = Request::post("http://bridge.test/interim-then-close")
        .body(Empty::new())
        .unwrap();
    let (status, _, _, _) = fetch(&mut send, post).await;
    assert_eq!(status, 502);
    let posts = b
        .heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with("POST /interim-then-close"))
        .count();
    assert_eq!(posts, 1, "the POST reached the backend once");
}

#[tokio::test]
async fn the_access_log_counts_every_body_byte_of_a_bridged_response() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let log: &'static str = Box::leak(
        format!("access = \"json\"\naccess_file = \"{}\"", path.display()).into_boxed_str(),
    );
    let b = Scripted::start().await;
    let lb = stickyd(
        &Cfg {
            server: "worker_threads = 1",
            log,
            ..Cfg::default()
        },
        &[("a", b.addr)],
    )
    .await;
    let mut send = h2(&lb).await;
    // Whole with the head, chunked in its own writes, and 1 MiB streamed.
    for (path, want) in [("/", 2), ("/chunked", 11), ("/big", BIG)] {
        let (_, _, body, _) = fetch(&mut send, get(path)).await;
        assert_eq!(body.len(), want, "{path}");
    }
    drop(send);
    drop(lb);
    let lines = access_lines(&path, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, want) in lines.iter().zip([2, 11, BIG]) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["bytes"], want, "{line}");
        assert_eq!(v["status"], 200, "{line}");
    }
}
