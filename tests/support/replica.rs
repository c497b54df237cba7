//! A small replicating app for the replication tests: sessions with a cart, kept in memory by
//! the app's own `sid` cookie, replicated as stickyd's replication headers ask (the protocol
//! README's "Session replication" describes):
//!
//! - every request that changes a session's cart, or names other backups than the session's
//!   cart was last pushed to, pushes the whole cart to each backup named in `X-Stickyd-Backup`
//!   (`PUT /_stickyd/replica/{sid}`), before answering;
//! - a request with `X-Stickyd-Takeover` first promotes the replica of its session (none, and
//!   the session not live here already: its state is lost, and counted);
//! - `GET /healthz` answers with `X-Stickyd-Incarnation`, drawn once per start.
//!
//! Paths: `POST /add?item=X` (adds to the cart), `GET /cart`; both answer the cart, one item
//! per line, with `x-backend: <name>`. A kill drops every session and replica, as a process
//! that dies does; a restart listens on the same address with a new incarnation.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a session saw of replication on its last request, as the app recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastSeen {
    /// `X-Stickyd-Backend`.
    pub backend: String,
    /// The first backup named (its id).
    pub backup: Option<String>,
}

/// The app's in-memory state: what a process loses when it dies.
#[derive(Default)]
struct State {
    sessions: HashMap<String, Vec<String>>,
    replicas: HashMap<String, Vec<String>>,
    /// Per live session, the backups its cart was last pushed to.
    pushed_to: HashMap<String, Vec<String>>,
}

/// Counters that outlive kills (the test's view of the app).
#[derive(Default)]
pub struct Counts {
    /// Takeovers that found a replica and promoted it.
    pub promoted: AtomicUsize,
    /// Takeovers that found none: the session's state was lost.
    pub lost: AtomicUsize,
    /// Replica pushes answered 204.
    pub pushed: AtomicUsize,
    /// Replica pushes that failed.
    pub push_failed: AtomicUsize,
    /// Requests for a session id the app does not know, without a takeover (new sessions
    /// come without an id: they are not counted).
    pub unknown: AtomicUsize,
}

/// One instance of the replicating app.
pub struct ReplicaApp {
    pub name: String,
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    /// Per session id: what its last request here named.
    pub last_seen: Arc<Mutex<HashMap<String, LastSeen>>>,
    state: Arc<Mutex<State>>,
    task: Option<JoinHandle<()>>,
    incarnation: String,
}

impl ReplicaApp {
    pub async fn start(name: &str) -> ReplicaApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener, Default::default(), Default::default())
    }

    fn serve(
        name: &str,
        listener: TcpListener,
        counts: Arc<Counts>,
        last_seen: Arc<Mutex<HashMap<String, LastSeen>>>,
    ) -> ReplicaApp {
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Default::default();
        let incarnation = format!("{name}-{:016x}", fastrand::u64(..));
        let app = Arc::new(App {
            name: name.to_string(),
            incarnation: incarnation.clone(),
            state: state.clone(),
            counts: counts.clone(),
            last_seen: last_seen.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let task = super::http_server(listener, move |req| {
            let app = app.clone();
            async move { Ok::<_, hyper::Error>(app.handle(req).await) }
        });
        ReplicaApp {
            name: name.into(),
            addr,
            counts,
            last_seen,
            state,
            task: Some(task),
            incarnation,
        }
    }

    /// Dies: stops listening, closes every connection, and its memory is gone.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        *self.state.lock().unwrap() = State::default();
    }

    /// Starts again on the same address: empty, with a new incarnation.
    pub async fn restart(&mut self) {
        self.kill().await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        *self = Self::serve(
            &self.name,
            listener,
            self.counts.clone(),
            self.last_seen.clone(),
        );
    }

    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// Live sessions held now.
    pub fn sessions(&self) -> usize {
        self.state.lock().unwrap().sessions.len()
    }

    /// Replicas held now.
    pub fn replicas(&self) -> usize {
        self.state.lock().unwrap().replicas.len()
    }
}

impl Drop for ReplicaApp {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

struct App {
    name: String,
    incarnation: String,
    state: Arc<Mutex<State>>,
    counts: Arc<Counts>,
    last_seen: Arc<Mutex<HashMap<String, LastSeen>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

use super::{Body, full};

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `(id, host:port)` of each backup named in an `X-Stickyd-Backup` value.
pub fn backups(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|e| e.trim().split_once('='))
        .map(|(id, at)| (id.to_string(), at.to_string()))
        .collect()
}

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            let mut r = Response::new(full("ok"));
            r.headers_mut()
                .insert("x-stickyd-incarnation", self.incarnation.parse().unwrap());
            return r;
        }
        if let Some(sid) = path.strip_prefix("/_stickyd/replica/") {
            let sid = sid.to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let cart = String::from_utf8_lossy(&body)
                .lines()
                .map(str::to_string)
                .collect();
            self.state.lock().unwrap().replicas.insert(sid, cart);
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::NO_CONTENT;
            return r;
        }
        let sid = req
            .headers()
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|p| p.trim().strip_prefix("sid=").map(str::to_string));
        let takeover = header(&req, "x-stickyd-takeover").is_some();
        let named = header(&req, "x-stickyd-backup")
            .map(backups)
            .unwrap_or_default();
        let backend = header(&req, "x-stickyd-backend").unwrap_or("").to_string();
        let item = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("item="))
            .map(str::to_string);
        let (sid, new) = match sid {
            Some(s) => (s, false),
            None => (format!("{:016x}", fastrand::u64(..)), true),
        };
        let cart = {
            let mut st = self.state.lock().unwrap();
            if takeover {
                match st.replicas.remove(&sid) {
                    Some(cart) => {
                        self.counts.promoted.fetch_add(1, Ordering::SeqCst);
                        st.sessions.insert(sid.clone(), cart);
                        st.pushed_to.remove(&sid);
                    }
                    // Taken over already (another instance, or a request in parallel).
                    None if st.sessions.contains_key(&sid) => {}
                    None => {
                        self.counts.lost.fetch_add(1, Ordering::SeqCst);
                    }
                }
            } else if !new && !st.sessions.contains_key(&sid) {
                self.counts.unknown.fetch_add(1, Ordering::SeqCst);
            }
            let cart = st.sessions.entry(sid.clone()).or_default();
            if let Some(i) = &item {
                cart.push(i.clone());
            }
            let cart = cart.clone();
            let targets: Vec<String> = named.iter().map(|(id, _)| id.clone()).collect();
            let moved = st.pushed_to.get(&sid) != Some(&targets);
            (cart, moved, targets)
        };
        let (cart, backups_moved, targets) = cart;
        self.last_seen.lock().unwrap().insert(
            sid.clone(),
            LastSeen {
                backend,
                backup: named.first().map(|(id, _)| id.clone()),
            },
        );
        // Replicate the whole cart to every backup named, before answering.
        if item.is_some() || takeover || backups_moved {
            let body = Bytes::from(cart.join("\n"));
            let mut all_ok = true;
            for (_, at) in &named {
                let put = Request::put(format!("http://{at}/_stickyd/replica/{sid}"))
                    .header("x-replica-from", &self.name)
                    .body(Full::new(body.clone()))
                    .unwrap();
                match self.client.request(put).await {
                    Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                        self.counts.pushed.fetch_add(1, Ordering::SeqCst)
                    }
                    _ => {
                        all_ok = false;
                        self.counts.push_failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            // A failed push is tried again on the session's next request.
            let mut st = self.state.lock().unwrap();
            if all_ok {
                st.pushed_to.insert(sid.clone(), targets);
            } else {
                st.pushed_to.remove(&sid);
            }
        }
        let mut r = Response::new(full(cart.join("\n")));
        r.headers_mut()
            .insert("x-backend", self.name.parse().unwrap());
        if new {
            r.headers_mut()
                .insert("set-cookie", format!("sid={sid}; Path=/").parse().unwrap());
        }
        r
    }
}
