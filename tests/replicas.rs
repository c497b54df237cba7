//! N replicas (issue 16, point 6): three stickyd processes sharing a key and backend ids behind
//! a small L4 balancer that the test runs, as a cloud balancer would: it sends PROXY v2 naming
//! the client, and keeps an instance in rotation only while its `/readyz` answers 200.
//!
//! Clients each have their own loopback source address and open a new connection per request,
//! so every client lands on every instance; the instances must agree on each client's backend,
//! keep agreeing while one of them is stopped with SIGTERM under load, and see the client's
//! real address through the PROXY header.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustix::process::{Pid, Signal, kill_process};
use support::{TestBackend, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_stickyd");

/// The key every instance signs and verifies with (from the environment, as a deployment
/// would mount a secret).
const KEY: &str = "replicas-test-key-0123456789abcdef0123456789";

/// How often the balancer probes each instance's `/readyz`.
const PROBE_EVERY: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// The stickyd processes.

/// One stickyd process; killed on drop if the test ends before it exits.
struct Instance {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// Its config's directory, removed on drop.
    dir: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Instance {
    /// Starts `stickyd --config` on `config` (written in a fresh directory named by `name`) and
    /// waits until its log names its listener and its admin listener.
    async fn start(name: &str, config: &str) -> Instance {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("stickyd-replicas-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stickyd.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("STICKYD_TEST_KEY", KEY)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, lines) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(l);
            }
        });
        let find = |what: &str| -> Option<SocketAddr> {
            log.lock().unwrap().iter().find_map(|l| {
                let admin = l.contains("admin API listening");
                if !l.contains("listening") || admin != (what == "admin") {
                    return None;
                }
                l.split("address=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        };
        eventually(&format!("{name} listening"), || {
            find("admin").is_some() && find("proxy").is_some()
        })
        .await;
        Instance {
            addr: find("proxy").unwrap(),
            admin: find("admin").unwrap(),
            child,
            log,
            dir,
        }
    }

    fn terminate(&self) {
        kill_process(Pid::from_child(&self.child), Signal::TERM).unwrap();
    }

    /// Waits (at most 20 s) for the process to exit.
    async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "stickyd did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `stickyd_responses_total{class="2xx"}` from its admin metrics.
    async fn ok_responses(&self) -> u64 {
        let text = http_get(self.admin, "/metrics").await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("stickyd_responses_total{class=\"2xx\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no 2xx count in {text}"))
    }
}

/// The config every instance runs: the same key and backend ids, PROXY protocol from loopback,
/// a shutdown delay longer than a few of the balancer's probe intervals.
fn config(backends: &[&TestBackend], affinity: &str) -> String {
    let mut t = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworker_threads = 2\n\
         proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.0/8\"]\n\
         shutdown_delay = \"1500ms\"\nshutdown_grace = \"5s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [health]\nenabled = false\n\
         [affinity]\nkeys = [\"env:STICKYD_TEST_KEY\"]\n",
    );
    t.push_str(affinity);
    t.push('\n');
    for b in backends {
        t.push_str(&format!(
            "[[backend]]\nid = \"{}\"\naddress = \"{}\"\n",
            b.name, b.addr
        ));
    }
    t
}

async fn three_instances(backends: &[&TestBackend], affinity: &str) -> Vec<Instance> {
    let text = config(backends, affinity);
    let tag = match affinity.replace(|c: char| !c.is_ascii_alphanumeric(), "") {
        t if t.is_empty() => "cookie".to_string(),
        t => t,
    };
    vec![
        Instance::start(&format!("{tag}-0"), &text).await,
        Instance::start(&format!("{tag}-1"), &text).await,
        Instance::start(&format!("{tag}-2"), &text).await,
    ]
}

/// One HTTP/1.1 GET with `Connection: close` (and `Host: addr`, which the admin listener
/// checks); the whole response as text.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

// ---------------------------------------------------------------------------------------------
// The L4 balancer.

/// What the balancer knows of one instance.
struct Target {
    addr: SocketAddr,
    admin: SocketAddr,
    ready: AtomicBool,
    /// Client connections sent to it.
    connections: AtomicUsize,
    /// Why each probe that took it out of rotation failed.
    taken_out: Mutex<Vec<String>>,
}

/// A TCP balancer on 127.0.0.1:0: round robin over the instances whose `/readyz` answered 200
/// at the last probe (one failed probe takes an instance out), a PROXY v2 header naming the
/// client on each connection, then bytes copied both ways. A connection it cannot place or
/// forward is closed, and the client retries.
struct L4 {
    addr: SocketAddr,
    targets: Arc<Vec<Target>>,
    /// Instance index per client address (source IP and port), recorded before forwarding.
    routes: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for L4 {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl L4 {
    async fn start(instances: &[Instance]) -> L4 {
        let targets: Arc<Vec<Target>> = Arc::new(
            instances
                .iter()
                .map(|i| Target {
                    addr: i.addr,
                    admin: i.admin,
                    ready: AtomicBool::new(false),
                    connections: AtomicUsize::new(0),
                    taken_out: Mutex::new(Vec::new()),
                })
                .collect(),
        );
        let mut tasks = Vec::new();
        for i in 0..targets.len() {
            let targets = targets.clone();
            tasks.push(tokio::spawn(async move {
                let t = &targets[i];
                loop {
                    let probe = tokio::time::timeout(
                        Duration::from_millis(500),
                        http_get(t.admin, "/readyz"),
                    )
                    .await;
                    let answer = match probe {
                        Ok(Ok(text)) => text,
                        Ok(Err(e)) => format!("probe failed: {e}"),
                        Err(_) => "probe timed out".to_string(),
                    };
                    let ok = answer.starts_with("HTTP/1.1 200");
                    if t.ready.swap(ok, Ordering::SeqCst) && !ok {
                        t.taken_out.lock().unwrap().push(answer);
                    }
                    tokio::time::sleep(PROBE_EVERY).await;
                }
            }));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Mutex<HashMap<SocketAddr, usize>>> = Default::default();
        let (t, r) = (targets.clone(), routes.clone());
        tasks.push(tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            loop {
                let Ok((client, peer)) = listener.accept().await else {
                    continue;
                };
                let ready: Vec<usize> = (0..t.len())
                    .filter(|&i| t[i].ready.load(Ordering::SeqCst))
                    .collect();
                if ready.is_empty() {
                    continue; // Nothing ready: the client's connection is closed.
                }
                let i = ready[next.fetch_add(1, Ordering::Relaxed) % ready.len()];
                r.lock().unwrap().insert(peer, i);
                t[i].connections.fetch_add(1, Ordering::SeqCst);
                let t = t.clone();
                tokio::spawn(async move {
                    let _ = forward(client, peer, addr, &t[i]).await;
                });
            }
        }));
        L4 {
            addr,
            targets,
            routes,
            tasks,
        }
    }

    fn ready(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| t.ready.load(Ordering::SeqCst))
            .count()
    }

    fn route_of(&self, client: SocketAddr) -> Option<usize> {
        self.routes.lock().unwrap().get(&client).copied()
    }
}

async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    t: &Target,
) -> std::io::Result<()> {
    let mut up = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(t.addr)).await??;
    up.write_all(&proxy_v2(peer, local)).await?;
    tokio::io::copy_bidirectional(&mut client, &mut up).await?;
    Ok(())
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4) for `src` -> `dst`.
fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let v4 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => ip.octets(),
        IpAddr::V6(_) => panic!("the test balancer speaks IPv4"),
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&v4(src));
    h.extend_from_slice(&v4(dst));
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A response as the clients look at it.
struct Reply {
    status: u16,
    backend: String,
    set_cookie: Option<String>,
    /// The instance the balancer sent this connection to.
    instance: usize,
}

/// One request on a new connection from `ip` (any port) through the balancer.
async fn attempt(lb: &L4, ip: Ipv4Addr, path: &str, cookie: Option<&str>) -> Result<Reply, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(ip.into(), 0))
        .map_err(|e| format!("bind: {e}"))?;
    let stream = sock
        .connect(lb.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let local = stream.local_addr().unwrap();
    let exchange = async {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path)
            .header("host", "replicas.test")
            .header("connection", "close");
        if let Some(c) = cookie {
            req = req.header("cookie", format!("stickyd={c}"));
        }
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .map_err(|e| format!("request: {e}"))?;
        let (parts, body) = resp.into_parts();
        body.collect().await.map_err(|e| format!("body: {e}"))?;
        Ok::<_, String>(parts)
    };
    let parts = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r)
        .map_err(|e| format!("{e} (instance {:?})", lb.route_of(local)))?;
    let set_cookie = parts.headers.get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?.strip_prefix("stickyd=")?;
        Some(v.split(';').next().unwrap_or_default().to_string())
    });
    Ok(Reply {
        status: parts.status.as_u16(),
        backend: parts
            .headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        set_cookie,
        instance: lb
            .route_of(local)
            .expect("the balancer recorded the connection"),
    })
}

/// What one client saw.
#[derive(Default)]
struct Record {
    /// (path, instance, backend) of each request answered 200.
    served: Vec<(String, usize, String)>,
    /// Requests that failed after their retries, or were answered with another status.
    failed: Vec<String>,
    /// Attempts that failed before a response and were retried.
    retried: Vec<String>,
    /// Responses that set the affinity cookie.
    cookies_set: usize,
}

impl Record {
    fn instances(&self) -> HashSet<usize> {
        self.served.iter().map(|(_, i, _)| *i).collect()
    }
    fn backends(&self) -> HashSet<&str> {
        self.served.iter().map(|(_, _, b)| b.as_str()).collect()
    }
}

/// Sends `GET path` from `ip` with the affinity cookie in `jar` (updated from the response),
/// recording the outcome in `rec`; an attempt that fails before a response is retried on a new
/// connection, up to 5 attempts.
async fn request(lb: &L4, ip: Ipv4Addr, path: &str, jar: &mut Option<String>, rec: &Mutex<Record>) {
    let mut tries = 0;
    let reply = loop {
        tries += 1;
        match attempt(lb, ip, path, jar.as_deref()).await {
            Ok(r) => break Ok(r),
            Err(e) if tries < 5 => rec.lock().unwrap().retried.push(format!("{path}: {e}")),
            Err(e) => break Err(e),
        }
    };
    let mut rec = rec.lock().unwrap();
    match reply {
        Ok(r) if r.status == 200 => {
            if let Some(c) = r.set_cookie {
                rec.cookies_set += 1;
                *jar = Some(c);
            }
            rec.served.push((path.to_string(), r.instance, r.backend));
        }
        Ok(r) => rec.failed.push(format!(
            "{path}: status {} from instance {}",
            r.status, r.instance
        )),
        Err(e) => rec
            .failed
            .push(format!("{path}: {e} after {tries} attempts")),
    }
}

/// Client source addresses 127.0.0.`first`.. (one per client).
fn ips(first: u8, n: u8) -> Vec<Ipv4Addr> {
    (first..first + n)
        .map(|d| Ipv4Addr::new(127, 0, 0, d))
        .collect()
}

/// Checks that every request in `recs` reached its backend with the client's address as
/// X-Forwarded-For (the PROXY header's source, not the balancer's address).
fn assert_real_addresses(backends: &[&TestBackend], recs: &[(Ipv4Addr, Record)]) {
    let mut xff: HashMap<String, String> = HashMap::new();
    for b in backends {
        for s in b.seen.lock().unwrap().iter() {
            let v = s
                .headers
                .get("x-forwarded-for")
                .map(|v| v.to_str().unwrap());
            xff.insert(s.path.clone(), v.unwrap_or("none").to_string());
        }
    }
    for (ip, rec) in recs {
        for (path, _, _) in &rec.served {
            assert_eq!(xff.get(path), Some(&ip.to_string()), "{path}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_on_every_cookie_and_one_stopped_under_load_fails_no_request() {
    let (a, b, c) = (
        TestBackend::start("app-1").await,
        TestBackend::start("app-2").await,
        TestBackend::start("app-3").await,
    );
    let backends = [&a, &b, &c];
    let mut instances = three_instances(&backends, "").await;
    let lb = Arc::new(L4::start(&instances).await);
    eventually("all three instances in rotation", || lb.ready() == 3).await;

    // Twenty clients, each from its own address, a new connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let recs: Vec<(Ipv4Addr, Arc<Mutex<Record>>)> = ips(10, 20)
        .into_iter()
        .map(|ip| (ip, Arc::default()))
        .collect();
    let mut clients = Vec::new();
    for (ip, rec) in &recs {
        let (ip, rec, lb, stop) = (*ip, rec.clone(), lb.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut jar = None;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                request(&lb, ip, &format!("/c/{ip}/{n}"), &mut jar, &rec).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let served = || -> usize {
        recs.iter()
            .map(|(_, r)| r.lock().unwrap().served.len())
            .sum()
    };

    // Every client is served by every instance before one is stopped.
    eventually("every client served by all three instances", || {
        recs.iter()
            .all(|(_, r)| r.lock().unwrap().instances().len() == 3)
    })
    .await;
    for i in &instances {
        assert!(i.ok_responses().await > 0, "each instance counted its own");
    }

    // SIGTERM one instance under load.
    let stopped = 1;
    let flaps = lb.targets[stopped].taken_out.lock().unwrap().len();
    let before = lb.targets[stopped].connections.load(Ordering::SeqCst);
    instances[stopped].terminate();
    eventually("the stopped instance out of rotation", || {
        !lb.targets[stopped].ready.load(Ordering::SeqCst)
    })
    .await;
    let during_delay = lb.targets[stopped].connections.load(Ordering::SeqCst) - before;
    let status = instances[stopped].exited().await;
    assert_eq!(status.code(), Some(0), "{}", instances[stopped].log());
    let sent_there = lb.targets[stopped].connections.load(Ordering::SeqCst);
    // Load goes on after it is gone: another round of requests for each client.
    let at_exit = served();
    eventually("load after the exit", || served() >= at_exit + 60).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    // What a cloud balancer saw: /readyz turned 503 (the process was still serving), then
    // nothing more was sent there.
    let out = lb.targets[stopped].taken_out.lock().unwrap().clone();
    assert!(
        out.get(flaps)
            .is_some_and(|a| a.starts_with("HTTP/1.1 503")),
        "{out:?}"
    );
    assert_eq!(
        lb.targets[stopped].connections.load(Ordering::SeqCst),
        sent_there
    );
    let log = instances[stopped].log();
    assert!(log.contains("not ready"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("stopped") && l.contains("cut=0")),
        "{log}"
    );

    let recs: Vec<(Ipv4Addr, Record)> = recs
        .into_iter()
        .map(|(ip, r)| (ip, std::mem::take(&mut *r.lock().unwrap())))
        .collect();
    let retried: Vec<&String> = recs.iter().flat_map(|(_, r)| &r.retried).collect();
    eprintln!(
        "{} requests served, {} attempts retried: {retried:?}; connections per instance: {:?}, \
         {during_delay} to the stopped one after its SIGTERM",
        recs.iter().map(|(_, r)| r.served.len()).sum::<usize>(),
        retried.len(),
        lb.targets
            .iter()
            .map(|t| t.connections.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
    let failed: Vec<&String> = recs.iter().flat_map(|(_, r)| &r.failed).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    for (ip, r) in &recs {
        // One backend per client, whichever instance answered, before, during and after the stop.
        assert_eq!(r.backends().len(), 1, "client {ip} moved: {:?}", r.served);
        assert_eq!(r.instances().len(), 3, "client {ip}");
        assert!(r.cookies_set >= 1, "client {ip}");
    }
    let firsts: HashSet<&str> = recs.iter().flat_map(|(_, r)| r.backends()).collect();
    assert!(
        firsts.len() >= 2,
        "sessions spread over backends: {firsts:?}"
    );
    assert_real_addresses(&backends, &recs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_ip_mode_three_replicas_place_each_client_address_on_the_same_backend() {
    let (a, b, c) = (
        TestBackend::start("app-1").await,
        TestBackend::start("app-2").await,
        TestBackend::start("app-3").await,
    );
    let backends = [&a, &b, &c];
    let instances = three_instances(&backends, "mode = \"ip\"").await;
    let lb = Arc::new(L4::start(&instances).await);
    eventually("all three instances in rotation", || lb.ready() == 3).await;

    // Each client, from its own address, until all three instances have answered it.
    let mut clients = Vec::new();
    for ip in ips(50, 16) {
        let lb = lb.clone();
        clients.push(tokio::spawn(async move {
            let rec = Mutex::new(Record::default());
            let mut jar = None;
            for n in 1..=100 {
                request(&lb, ip, &format!("/ip/{ip}/{n}"), &mut jar, &rec).await;
                if rec.lock().unwrap().instances().len() == 3 {
                    break;
                }
            }
            (ip, rec.into_inner().unwrap())
        }));
    }
    let mut recs = Vec::new();
    for c in clients {
        recs.push(c.await.unwrap());
    }

    let mut placed: HashMap<Ipv4Addr, String> = HashMap::new();
    for (ip, r) in &recs {
        assert!(r.failed.is_empty(), "client {ip}: {:?}", r.failed);
        assert_eq!(r.instances().len(), 3, "client {ip}: {:?}", r.served);
        assert_eq!(r.backends().len(), 1, "client {ip}: {:?}", r.served);
        assert_eq!(r.cookies_set, 0, "no cookie in ip mode");
        placed.insert(*ip, r.served[0].2.clone());
    }
    assert!(
        placed.values().collect::<HashSet<_>>().len() >= 2,
        "addresses spread over backends: {placed:?}"
    );
    assert_real_addresses(&backends, &recs);
}
