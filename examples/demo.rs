//! stickyd demo: three instances of a small stateful web app behind stickyd, all on loopback.
//!
//! Run it with `cargo run --release --example demo` (add `-- --listen ADDR` to move stickyd off
//! 127.0.0.1:8080, `-- --replicate` for session replication) and open the printed address in a
//! browser. stickyd's admin API listens on 127.0.0.1:9901 (`--admin ADDR` moves it; port 0 picks
//! a free one): open that address too for the dashboard, live charts of what the reloads do,
//! with buttons to drain, disable or enable an instance. `--admin-token file:PATH` (or
//! `env:NAME`) makes the admin API ask for a bearer token, as `[admin] token` does.
//!
//! What it shows: each app instance keeps its sessions (a visit counter and a cart) in its own
//! memory, keyed by the app's own `app_session` cookie, as many real apps do. Without affinity a
//! load balancer would spread one browser's requests over all three instances and the session
//! would seem to vanish on every other reload. stickyd adds its own signed `stickyd` cookie that
//! pins the browser to the instance that served it first, so every reload shows the same
//! instance and a growing counter.
//!
//! Press "Stop this instance" and that instance shuts down for 30 seconds (connections refused).
//! On the next reload stickyd sees its pinned backend fail, serves the request from another
//! instance and pins the browser there. The counter and the cart start over: they lived in the
//! stopped process's memory. That is the trade-off of sticky sessions, made visible.
//!
//! With `--replicate` stickyd names a backup for every session (`X-Stickyd-Backup`), and the app
//! copies the session there after every change. When the instance stops, stickyd sends the
//! browser to that backup with `X-Stickyd-Takeover`, and the backup turns its copy into the live
//! session: the counter and the cart carry on. The app's side of that protocol is all in
//! `demo/replica.rs`, the example to copy.
//!
//! The app is plain hyper 1.x: one accept loop per instance, one task per connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

// The crate root of an example looks for modules beside it, in examples/: point at ours.
#[path = "demo/replica.rs"]
mod replica;
use replica::{
    Copied, REPLICA_PATH, Replicas, Takeover, backups_named, encode_copy, health, new_incarnation,
    receive_replica, take_over_if_asked,
};

/// Where stickyd listens unless `--listen` says otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where the admin API (and its dashboard) listens unless `--admin` says otherwise.
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// The app instances: name and page colour.
const INSTANCES: [(&str, &str); 3] = [
    ("app-1", "#2563eb"),
    ("app-2", "#059669"),
    ("app-3", "#c026d3"),
];
/// How long a stopped instance stays away.
const RESTART_AFTER: Duration = Duration::from_secs(30);
/// Sessions kept per instance: a curl loop without a cookie jar makes one per request. Also the
/// number of other instances' session copies kept.
const MAX_SESSIONS: usize = 10_000;
/// Items kept per cart.
const MAX_CART: usize = 20;
/// What the shop sells.
const ITEMS: [&str; 3] = ["apple", "bread", "coffee"];
/// The app's own session cookie (stickyd's is called `stickyd`).
const SESSION_COOKIE: &str = "app_session";
/// Largest request body the app reads (the cart form is about 12 bytes, a session copy with a
/// full cart about 200).
const MAX_BODY: usize = 1024;

const USAGE: &str = "usage: cargo run --release --example demo [-- [--listen ADDR] [--admin ADDR] \
                     [--admin-token file:PATH|env:NAME] [--replicate]]";

type Body = Full<Bytes>;

// ---------------------------------------------------------------------------------------------
// Start-up: three app instances, then stickyd in front of them.
// ---------------------------------------------------------------------------------------------

/// What the command line asks for.
struct Options {
    listen: SocketAddr,
    /// The admin API's address: `/metrics`, `/backends` and the dashboard at `/`.
    admin: SocketAddr,
    /// `--admin-token`: where `[admin] token` comes from (`file:PATH` or `env:NAME`).
    admin_token: Option<String>,
    /// `--replicate`: stickyd names backups and the instances copy their sessions there.
    replicate: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    init_logging();
    let options = match parse_args() {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("demo: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// stickyd's log (backends going down and up) goes to stderr; the demo's own lines to stdout.
fn init_logging() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The options from the command line, or `None` for `--help`.
fn parse_args() -> Result<Option<Options>, String> {
    let mut listen = DEFAULT_LISTEN.to_string();
    let mut admin = DEFAULT_ADMIN.to_string();
    let mut admin_token = None;
    let mut replicate = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "--admin" => admin = args.next().ok_or("--admin needs an address")?,
            "--admin-token" => {
                admin_token = Some(
                    args.next()
                        .ok_or("--admin-token needs file:PATH or env:NAME")?,
                );
            }
            "--replicate" => replicate = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // Parsed here, so the address is known to be safe to paste into the TOML below.
    let listen = listen
        .parse()
        .map_err(|_| format!("--listen {listen:?} is not an address like {DEFAULT_LISTEN}"))?;
    let admin = admin
        .parse()
        .map_err(|_| format!("--admin {admin:?} is not an address like {DEFAULT_ADMIN}"))?;
    Ok(Some(Options {
        listen,
        admin,
        admin_token,
        replicate,
    }))
}

/// Runs the whole demo until Ctrl-C (or SIGTERM).
async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let Options {
        listen,
        admin,
        admin_token,
        replicate,
    } = options;
    let mut instances = Vec::new();
    for (name, colour) in INSTANCES {
        // Port 0: the system picks a free port, so the demo never clashes with anything.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let instance = Arc::new(Instance {
            name,
            colour,
            addr: listener.local_addr()?,
            replicate,
        });
        tokio::spawn(run_instance(instance.clone(), listener));
        instances.push(instance);
    }

    let addrs = Addrs {
        listen,
        admin,
        admin_token: admin_token.as_deref(),
    };
    let text = stickyd_config(&addrs, &instances, replicate);
    let config = stickyd::config::parse(
        &text,
        "demo config",
        Path::new("."),
        &stickyd::config::SystemKeys,
    )?;
    // The demo has no config file: a reload (the dashboard's button, POST /reload) applies
    // this same config again, random signing key included, so no session is lost.
    let again = config.clone();
    let mut running = stickyd::server::start(config).await.map_err(|e| {
        if e.kind() != std::io::ErrorKind::AddrInUse {
            e.to_string()
        } else if e.to_string().contains("(admin)") {
            format!("{e} (pick another address with --admin)")
        } else {
            format!("{e} (pick another address with --listen)")
        }
    })?;
    let url = match running.local_addrs().first() {
        Some(addr) => format!("http://{addr}/"),
        None => format!("http://{listen}/"),
    };
    let dashboard = format!("http://{}/", running.admin_addr().unwrap_or(admin));
    print_banner(&url, &dashboard, &instances, replicate);

    let mut reloads = running.take_reload_calls();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => {
                r?;
                break;
            }
            Some(reply) = async {
                match reloads.as_mut() {
                    Some(calls) => calls.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let backends = again.backends.len();
                let answer = running.reload(again.clone()).map(|()| backends);
                let _ = reply.send(answer.map_err(|e| e.to_string()));
            }
        }
    }
    println!("stopping stickyd");
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Where stickyd and its admin API listen.
struct Addrs<'a> {
    listen: SocketAddr,
    admin: SocketAddr,
    /// `[admin] token`'s source, if any.
    admin_token: Option<&'a str>,
}

/// The stickyd config: every key not set here keeps the default documented in
/// `config/example.toml`. Health checks are quicker than the defaults so the demo reacts fast,
/// and a drained instance is reported drained after 10 s without requests instead of 2 min.
/// No `[affinity] keys`: stickyd makes a random signing key at start (and logs a warning).
/// With `replicate`, one backup per session; its address is the instance's own (no `port`: the
/// instances share 127.0.0.1, so they could not share one replication port).
fn stickyd_config(addrs: &Addrs<'_>, instances: &[Arc<Instance>], replicate: bool) -> String {
    let Addrs {
        listen,
        admin,
        admin_token,
    } = addrs;
    let backends: String = instances
        .iter()
        .map(|i| {
            format!(
                "\n[[backend]]\nid = \"{}\"\naddress = \"{}\"\n",
                i.name, i.addr
            )
        })
        .collect();
    let replication = if replicate {
        "\n[replication]\nbackups = 1\n"
    } else {
        ""
    };
    // A TOML string, quoted and escaped: the source is the user's text.
    let token = admin_token
        .map(|t| format!("token = {}\n", toml::Value::String(t.to_string())))
        .unwrap_or_default();
    format!(
        r#"[server]
listen = ["{listen}"]

[admin]
listen = "{admin}"
drain_quiet = "10s"
{token}
[health]
path = "/healthz"
interval = "1s"
timeout = "500ms"
rise = 2
fall = 2
{replication}{backends}"#
    )
}

fn print_banner(url: &str, dashboard: &str, instances: &[Arc<Instance>], replicate: bool) {
    if replicate {
        println!("stickyd demo: three app instances behind stickyd, with session replication");
    } else {
        println!("stickyd demo: three app instances behind stickyd");
    }
    for i in instances {
        println!("  {} {}", i.name, i.addr);
    }
    println!("Open {url} in a browser and reload: you stay on one instance, the counter grows.");
    if replicate {
        println!(
            "After every change the instance copies your session to the backup stickyd names."
        );
        println!(
            "Press \"Stop this instance\": stickyd moves you to that backup, and your cart and \
             counter carry on there."
        );
    } else {
        println!("Press \"Stop this instance\": stickyd moves you to another instance.");
    }
    println!("Or with curl:  curl -s -c /tmp/jar -b /tmp/jar {url} | grep -o 'app-[0-9]'");
    println!(
        "Dashboard: {dashboard} (live traffic per instance; drain, disable or enable one there)"
    );
    println!("Ctrl-C to stop.");
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// One app instance: serve, stop when asked, come back after RESTART_AFTER.
// ---------------------------------------------------------------------------------------------

/// What stays the same across restarts of an instance.
struct Instance {
    name: &'static str,
    colour: &'static str,
    addr: SocketAddr,
    /// Replication is on: serve copies, push them, take sessions over.
    replicate: bool,
}

/// One life of an instance, from start to "Stop this instance". Its sessions die with it, and
/// so do the copies it held of other instances' sessions.
struct App {
    instance: Arc<Instance>,
    /// Drawn at every start and sent on health checks, so stickyd can tell that the process
    /// behind the address changed (see [`health`]).
    incarnation: String,
    sessions: Mutex<HashMap<String, Session>>,
    /// Copies of other instances' sessions, pushed here because stickyd named this instance
    /// their backup. Kept apart from `sessions`: a copy only becomes live on a takeover.
    replicas: Mutex<Replicas>,
    /// Sends this instance's copies to the backups (keeps connections open between pushes).
    client: Client<HttpConnector, Body>,
    stop: watch::Sender<bool>,
}

/// What the app remembers about one visitor. The two counted fields are what a copy carries.
#[derive(Default, Serialize, Deserialize)]
struct Session {
    visits: u64,
    cart: Vec<String>,
    /// Set when this instance took the session over; the next page says so once. Not copied:
    /// it is about this instance, not the session.
    #[serde(skip)]
    taken_over: Option<Takeover>,
}

/// Serves `instance` forever: after each stop it waits, re-binds the same address and starts
/// again with no sessions and a new incarnation.
async fn run_instance(instance: Arc<Instance>, mut listener: TcpListener) {
    loop {
        let (sessions, copies) =
            serve_until_stopped(instance.clone(), listener, new_incarnation()).await;
        let s = plural(sessions);
        let secs = RESTART_AFTER.as_secs();
        if instance.replicate {
            let copies = if copies == 1 {
                "1 copy".to_string()
            } else {
                format!("{copies} copies")
            };
            println!(
                "{} stopped ({sessions} session{s} copied to backups; {copies} of other \
                 instances' sessions gone with it); it comes back in {secs} s",
                instance.name,
            );
        } else {
            println!(
                "{} stopped ({sessions} session{s} lost); it comes back in {secs} s",
                instance.name,
            );
        }
        tokio::time::sleep(RESTART_AFTER).await;
        listener = rebind(instance.addr).await;
        println!(
            "{} is back on {}, with no sessions",
            instance.name, instance.addr
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Accepts connections until a `POST /stop`, then closes the listener and every connection
/// (idle keep-alive ones included), so the next connect to this address is refused. Returns how
/// many sessions, and how many copies of other instances' sessions, were held.
async fn serve_until_stopped(
    instance: Arc<Instance>,
    listener: TcpListener,
    incarnation: String,
) -> (usize, usize) {
    if instance.replicate {
        println!("{} runs as incarnation {incarnation}", instance.name);
    }
    let (stop, mut stopped) = watch::channel(false);
    let app = Arc::new(App {
        instance,
        incarnation,
        sessions: Mutex::default(),
        replicas: Mutex::new(Replicas::new(MAX_SESSIONS)),
        client: Client::builder(TokioExecutor::new()).build_http(),
        stop,
    });
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.wait_for(|s| *s) => break,
        };
        // Forget connections that have finished.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _peer)) => {
                connections.spawn(serve_connection(app.clone(), stream, stopped.clone()));
            }
            Err(e) => {
                // E.g. out of file descriptors: wait instead of spinning.
                tracing::warn!(instance = app.instance.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    let sessions = app
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    (sessions, app.lock_replicas().len())
}

/// Serves HTTP/1.1 on one connection until the client leaves or the instance stops. On stop the
/// response being written (e.g. the "stopped" page) is finished, then the connection is closed.
async fn serve_connection(app: Arc<App>, stream: TcpStream, mut stopped: watch::Receiver<bool>) {
    let service = service_fn(move |req| handle(app.clone(), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stopped.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
}

/// Binds `addr` again, retrying once a second if something else holds it for a moment.
async fn rebind(addr: SocketAddr) -> TcpListener {
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => {
                println!("cannot bind {addr} again yet ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.
// ---------------------------------------------------------------------------------------------

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if app.instance.replicate {
        // Before anything reads the session: it may be one this instance must take over.
        take_over_if_asked(&app, req.headers());
    }
    let replica_path = app.instance.replicate && req.uri().path().starts_with(REPLICA_PATH);
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => home(&app, req).await,
        (&Method::GET, "/healthz") => health(&app),
        (&Method::POST, "/cart") => add_to_cart(&app, req).await,
        (&Method::POST, "/stop") => stop(&app, req).await,
        (&Method::PUT, _) if replica_path => receive_replica(&app, req).await,
        (_, "/" | "/healthz" | "/cart" | "/stop") => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ if replica_path => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// `GET /`: counts the visit, copies the session to its backup and shows the page. A first
/// visit gets a new `app_session` cookie.
async fn home(app: &App, req: Request<Incoming>) -> Response<Body> {
    let (id, is_new) = match session_id(req.headers()) {
        Some(id) => (id, false),
        None => match new_session_id() {
            Some(id) => (id, true),
            None => return plain(StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n"),
        },
    };
    let backups = backups_named(req.headers());
    let (visits, cart, taken_over, copy) = app.with_session(&id, |s| {
        s.visits += 1;
        let copy = app.instance.replicate.then(|| encode_copy(s));
        (s.visits, s.cart.clone(), s.taken_over.take(), copy)
    });
    let copies = app.replicate(&backups, &id, copy).await;
    let page = PageState {
        visits,
        cart: &cart,
        taken_over,
        copies: &copies,
    };
    let mut resp = html(StatusCode::OK, home_page(&app.instance, &page));
    if is_new {
        let cookie = format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(SET_COOKIE, v);
        }
    }
    resp
}

/// `POST /cart` with the form field `item`: adds a known item, copies the session to its
/// backup, then redirects back to `/`.
async fn add_to_cart(app: &App, req: Request<Incoming>) -> Response<Body> {
    let id = session_id(req.headers());
    let backups = backups_named(req.headers());
    let form = match read_form(req).await {
        Ok(form) => form,
        Err(resp) => return resp,
    };
    let item = form_value(&form, "item").and_then(|v| ITEMS.into_iter().find(|known| *known == v));
    if let (Some(id), Some(item)) = (id, item) {
        let copy = app.with_session(&id, |s| {
            if s.cart.len() < MAX_CART {
                s.cart.push(item.to_string());
            }
            app.instance.replicate.then(|| encode_copy(s))
        });
        app.replicate(&backups, &id, copy).await;
    }
    redirect_home()
}

/// `POST /stop`: answers, then the instance stops (see [`serve_until_stopped`]).
///
/// The page's form names the instance it was shown by. If a browser re-submits it (a reload of
/// the "stopped" page), the request reaches another instance, which must not stop too: it just
/// sends the browser home. A form without the field (`curl -X POST`) stops whoever gets it.
async fn stop(app: &App, req: Request<Incoming>) -> Response<Body> {
    let form = match read_form(req).await {
        Ok(form) => form,
        Err(resp) => return resp,
    };
    if form_value(&form, "instance").is_some_and(|target| target != app.instance.name) {
        return redirect_home();
    }
    let _ = app.stop.send(true);
    html(StatusCode::OK, stopped_page(&app.instance))
}

/// The body of a small `application/x-www-form-urlencoded` form, or the response refusing it.
async fn read_form(req: Request<Incoming>) -> Result<String, Response<Body>> {
    let body = read_body(req).await?;
    String::from_utf8(body.to_vec())
        .map_err(|_| plain(StatusCode::BAD_REQUEST, "bad or too large body\n"))
}

/// The body, up to MAX_BODY bytes, or the response refusing it.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|_| plain(StatusCode::BAD_REQUEST, "bad or too large body\n"))
}

/// The value of form field `key`. Not URL-decoded: every value this app accepts is plain ASCII.
fn form_value<'a>(form: &'a str, key: &str) -> Option<&'a str> {
    form.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn redirect_home() -> Response<Body> {
    let mut resp = plain(StatusCode::SEE_OTHER, "");
    resp.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/"));
    resp
}

impl App {
    /// Runs `f` on session `id`, creating it if this instance has never seen it (a first visit,
    /// or a visitor moved here from another instance). Past MAX_SESSIONS an arbitrary session
    /// is dropped to make room.
    fn with_session<T>(&self, id: &str, f: impl FnOnce(&mut Session) -> T) -> T {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if sessions.len() >= MAX_SESSIONS && !sessions.contains_key(id) {
            if let Some(victim) = sessions.keys().next().cloned() {
                sessions.remove(&victim);
            }
        }
        f(sessions.entry(id.to_string()).or_default())
    }

    fn lock_replicas(&self) -> std::sync::MutexGuard<'_, Replicas> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `app_session` cookie, if it looks like one this app issues.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|v| is_session_id(v))
        .map(str::to_string)
}

/// 32 hex digits, as [`new_session_id`] makes them.
fn is_session_id(v: &str) -> bool {
    v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new random session id: 128 bits as 32 hex digits.
fn new_session_id() -> Option<String> {
    random_hex::<16>()
}

/// `N` random bytes as hex digits.
fn random_hex<const N: usize>() -> Option<String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    response(status, "text/html; charset=utf-8", Bytes::from(body))
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every reload must reach stickyd and the app, never the browser cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The instance called `id` as (name, colour), so that a name from a header is shown only if it
/// is one of the demo's own (nothing on the pages is HTML-escaped).
fn instance_named(id: &str) -> (&'static str, &'static str) {
    INSTANCES
        .into_iter()
        .find(|(name, _)| *name == id)
        .unwrap_or(("another instance", "#71717a"))
}

// ---------------------------------------------------------------------------------------------
// Pages. Everything interpolated below is the demo's own text (instance names, colours,
// addresses, items from ITEMS), so nothing needs HTML escaping.
// ---------------------------------------------------------------------------------------------

const STYLE: &str = "
body { margin: 0; min-height: 100vh; display: grid; place-items: center; background: #f4f4f5;
       color: #18181b; font: 16px/1.5 system-ui, -apple-system, 'Segoe UI', sans-serif }
main { box-sizing: border-box; width: min(36rem, 100vw - 2rem); margin: 1rem; padding: 2rem 2.5rem;
       background: #fff; border-radius: 16px; border-top: 10px solid var(--c);
       box-shadow: 0 12px 32px rgb(0 0 0 / 8%) }
.label { margin: 0; color: #71717a; font-size: .8rem; letter-spacing: .1em; text-transform: uppercase }
h1 { margin: 0; color: var(--c); font-size: 5rem; line-height: 1.05 }
.addr { margin: 0 0 1.5rem; color: #a1a1aa; font: .85rem ui-monospace, monospace }
.stats { display: flex; gap: 1rem; margin-bottom: 1rem }
.stat { flex: 1; padding: .8rem 1rem; background: #fafafa; border-radius: 10px }
.stat strong { display: block; color: var(--c); font-size: 2.2rem; line-height: 1.2 }
.chips { display: flex; flex-wrap: wrap; gap: .35rem; min-height: 1.8rem; margin: .4rem 0 }
.chip { padding: .1rem .7rem; background: #f4f4f5; border-radius: 999px; font-size: .9rem }
.muted { color: #a1a1aa }
.notice { margin: 0 0 1rem; padding: .7rem 1rem; border-radius: 10px; background: #ecfdf5;
          color: #065f46 }
.notice.lost { background: #fef2f2; color: #991b1b }
form { display: flex; gap: .5rem; margin: .6rem 0 }
select, button { font: inherit; padding: .4rem .9rem; border-radius: 8px }
select { border: 1px solid #d4d4d8; background: #fff }
button { border: 0; background: var(--c); color: #fff; cursor: pointer }
button.stop { background: #dc2626 }
.help { margin: .4rem 0; color: #52525b; font-size: .95rem }
code { padding: 0 .3em; background: #f4f4f5; border-radius: 4px }
a { color: var(--c) }
";

/// What the home page shows of the visitor's session.
struct PageState<'a> {
    visits: u64,
    cart: &'a [String],
    /// This request took the session over from another instance.
    taken_over: Option<Takeover>,
    /// Where the session was copied after this visit (empty without replication).
    copies: &'a [Copied],
}

fn home_page(instance: &Instance, page: &PageState<'_>) -> String {
    let Instance {
        name, colour, addr, ..
    } = instance;
    let cart = page.cart;
    let chips: String = if cart.is_empty() {
        r#"<span class="muted">empty</span>"#.to_string()
    } else {
        cart.iter()
            .map(|item| format!(r#"<span class="chip">{item}</span>"#))
            .collect()
    };
    let options: String = ITEMS
        .iter()
        .map(|item| format!("<option>{item}</option>"))
        .collect();
    let items = cart.len();
    let visits = page.visits;
    let (notice, copy_stat, help) = if instance.replicate {
        (
            takeover_notice(name, page.taken_over),
            copy_stat(page.copies),
            replicated_help(name, page.copies),
        )
    } else {
        (String::new(), String::new(), plain_help(name))
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{name} · stickyd demo</title><style>{STYLE}</style></head>
<body><main style="--c: {colour}">
<p class="label">served by</p>
<h1>{name}</h1>
<p class="addr">{addr}</p>
{notice}<div class="stats">
  <div class="stat">visits in this session<strong>{visits}</strong></div>
  <div class="stat">items in the cart<strong>{items}</strong></div>
{copy_stat}</div>
<div class="chips">{chips}</div>
<form method="post" action="/cart"><select name="item">{options}</select><button>Add to cart</button></form>
<p class="help"><b>Reload</b>: you stay on {name} and the counter grows. The <code>stickyd</code>
cookie, set by the load balancer, pins your browser to this instance; the <code>app_session</code>
cookie is the app's own, and only {name} knows what it stands for.</p>
<form method="post" action="/stop"><input type="hidden" name="instance" value="{name}">
<button class="stop">Stop this instance</button></form>
{help}
</main></body></html>
"#,
    )
}

/// The help under "Stop this instance" without replication.
fn plain_help(name: &str) -> String {
    format!(
        r#"<p class="help">Then reload: stickyd moves you to another instance, where the counter and the cart
start over, because they lived in {name}'s memory. {name} comes back after {secs} s, empty;
you stay where stickyd moved you.</p>"#,
        secs = RESTART_AFTER.as_secs(),
    )
}

/// The help under "Stop this instance" with replication: where the copy is, and what happens.
fn replicated_help(name: &str, copies: &[Copied]) -> String {
    let secs = RESTART_AFTER.as_secs();
    if let Some(Copied { backup, .. }) = copies.iter().find(|c| c.ok) {
        return format!(
            r#"<p class="help">After every change {name} sends a copy of your session to {backup}, the
backup stickyd names in the <code>X-Stickyd-Backup</code> header. Stop {name} and reload:
stickyd sends you to {backup} with <code>X-Stickyd-Takeover</code>, and your counter and cart
carry on there. {name} comes back after {secs} s, empty; you stay on {backup}.</p>"#
        );
    }
    let why = match copies.first() {
        // Right after an instance stops, stickyd names it until its health checks see it down.
        Some(Copied { backup, .. }) => format!(
            "this visit could not be copied to {backup}, the backup stickyd named (if {backup} \
             just stopped, stickyd names another once its health checks see it down, in about \
             2 s: reload)"
        ),
        None => "stickyd named no backup (no other instance is up)".to_string(),
    };
    format!(
        r#"<p class="help">No copy is up to date: {why}. Stopping {name} now would lose this
visit's changes. {name} comes back after {secs} s, empty.</p>"#
    )
}

/// The third stat with replication: which instance holds the copy of this session.
fn copy_stat(copies: &[Copied]) -> String {
    let held: Vec<String> = copies
        .iter()
        .filter(|c| c.ok)
        .map(|c| {
            let (name, colour) = instance_named(c.backup);
            format!(r#"<span style="color: {colour}">{name}</span>"#)
        })
        .collect();
    let value = if held.is_empty() {
        r#"<span class="muted">none</span>"#.to_string()
    } else {
        held.join(", ")
    };
    format!("  <div class=\"stat\">copy of the session on<strong>{value}</strong></div>\n")
}

/// The line saying this visit took the session over, if it did.
fn takeover_notice(name: &str, taken_over: Option<Takeover>) -> String {
    match taken_over {
        Some(Takeover::Restored { from }) => format!(
            r#"<p class="notice">Taken over from {from}: your cart and counter were restored from the
copy {name} held.</p>
"#
        ),
        Some(Takeover::Lost) => format!(
            r#"<p class="notice lost">Taken over, but {name} held no copy of your session: it
starts over.</p>
"#
        ),
        None => String::new(),
    }
}

fn stopped_page(instance: &Instance) -> String {
    let Instance { name, colour, .. } = instance;
    let secs = RESTART_AFTER.as_secs();
    let what = if instance.replicate {
        format!(
            "{name} stopped. Every session it served has a copy on its backup: <a href=\"/\">Reload</a> \
             and stickyd sends you to yours, where your cart and counter carry on. The copies \
             {name} held for the others are gone; they send new ones to the next backup stickyd \
             names. {name} comes back after {secs} s, empty, as a new incarnation."
        )
    } else {
        format!(
            "{name} stopped; its sessions are gone with it. <a href=\"/\">Reload</a> to be \
             moved to another instance. {name} comes back after {secs} s."
        )
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{name} stopped · stickyd demo</title><style>{STYLE}</style></head>
<body><main style="--c: {colour}">
<p class="label">stopped</p>
<h1>{name}</h1>
<p class="help">{what}</p>
</main></body></html>
"#,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_demos_own_instance_names_reach_a_page() {
        assert_eq!(instance_named("app-2"), INSTANCES[1]);
        assert_eq!(instance_named("<script>").0, "another instance");
    }

    #[test]
    fn the_config_has_replication_only_when_asked() {
        let instance = Arc::new(Instance {
            name: "app-1",
            colour: "#000",
            addr: "127.0.0.1:1".parse().unwrap(),
            replicate: true,
        });
        let addrs = Addrs {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            admin_token: None,
        };
        let on = stickyd_config(&addrs, &[instance.clone()], true);
        let off = stickyd_config(&addrs, &[instance], false);
        assert!(on.contains("\n[replication]\nbackups = 1\n"));
        assert!(!off.contains("replication"));
        let on: toml::Table = on.parse().unwrap();
        assert_eq!(on["replication"]["backups"].as_integer(), Some(1));
        assert_eq!(on["backend"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn the_admin_api_listens_where_asked_with_the_token_source_quoted() {
        let instance = Arc::new(Instance {
            name: "app-1",
            colour: "#000",
            addr: "127.0.0.1:1".parse().unwrap(),
            replicate: false,
        });
        let source = "file:/tmp/a \"b\"\\c.token";
        let addrs = Addrs {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.2:9901".parse().unwrap(),
            admin_token: Some(source),
        };
        let with: toml::Table = stickyd_config(&addrs, &[instance.clone()], false)
            .parse()
            .unwrap();
        assert_eq!(with["admin"]["listen"].as_str(), Some("127.0.0.2:9901"));
        assert_eq!(with["admin"]["token"].as_str(), Some(source));
        let without = Addrs {
            admin_token: None,
            ..addrs
        };
        let without: toml::Table = stickyd_config(&without, &[instance], false)
            .parse()
            .unwrap();
        assert!(without["admin"].get("token").is_none());
    }
}
