//! stickyd demo: three instances of a small stateful web app behind stickyd, all on loopback.
//!
//! Run it with `cargo run --release --example demo` (add `-- --listen ADDR` to move stickyd off
//! 127.0.0.1:8080) and open the printed address in a browser.
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
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Where stickyd listens unless `--listen` says otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The app instances: name and page colour.
const INSTANCES: [(&str, &str); 3] = [
    ("app-1", "#2563eb"),
    ("app-2", "#059669"),
    ("app-3", "#c026d3"),
];
/// How long a stopped instance stays away.
const RESTART_AFTER: Duration = Duration::from_secs(30);
/// Sessions kept per instance: a curl loop without a cookie jar makes one per request.
const MAX_SESSIONS: usize = 10_000;
/// Items kept per cart.
const MAX_CART: usize = 20;
/// What the shop sells.
const ITEMS: [&str; 3] = ["apple", "bread", "coffee"];
/// The app's own session cookie (stickyd's is called `stickyd`).
const SESSION_COOKIE: &str = "app_session";
/// Largest request body the app reads (the cart form is about 12 bytes).
const MAX_BODY: usize = 1024;

const USAGE: &str = "usage: cargo run --release --example demo [-- --listen ADDR]";

type Body = Full<Bytes>;

// ---------------------------------------------------------------------------------------------
// Start-up: three app instances, then stickyd in front of them.
// ---------------------------------------------------------------------------------------------

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    init_logging();
    let listen = match parse_args() {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("demo: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(listen).await {
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

/// The stickyd listen address from `--listen ADDR`, or `None` for `--help`.
fn parse_args() -> Result<Option<SocketAddr>, String> {
    let mut listen = DEFAULT_LISTEN.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // Parsed here, so the address is known to be safe to paste into the TOML below.
    listen
        .parse()
        .map(Some)
        .map_err(|_| format!("--listen {listen:?} is not an address like {DEFAULT_LISTEN}"))
}

/// Runs the whole demo until Ctrl-C (or SIGTERM).
async fn run(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let mut instances = Vec::new();
    for (name, colour) in INSTANCES {
        // Port 0: the system picks a free port, so the demo never clashes with anything.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let instance = Arc::new(Instance {
            name,
            colour,
            addr: listener.local_addr()?,
        });
        tokio::spawn(run_instance(instance.clone(), listener));
        instances.push(instance);
    }

    let text = stickyd_config(listen, &instances);
    let config = stickyd::config::parse(
        &text,
        "demo config",
        Path::new("."),
        &stickyd::config::SystemKeys,
    )?;
    let running = stickyd::server::start(config).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("{e} (pick another address with --listen)")
        } else {
            e.to_string()
        }
    })?;
    let url = match running.local_addrs().first() {
        Some(addr) => format!("http://{addr}/"),
        None => format!("http://{listen}/"),
    };
    print_banner(&url, &instances);

    shutdown_signal().await?;
    println!("stopping stickyd");
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// The stickyd config: every key not set here keeps the default documented in
/// `config/example.toml`. Health checks are quicker than the defaults so the demo reacts fast.
/// No `[affinity] keys`: stickyd makes a random signing key at start (and logs a warning).
fn stickyd_config(listen: SocketAddr, instances: &[Arc<Instance>]) -> String {
    let backends: String = instances
        .iter()
        .map(|i| {
            format!(
                "\n[[backend]]\nid = \"{}\"\naddress = \"{}\"\n",
                i.name, i.addr
            )
        })
        .collect();
    format!(
        r#"[server]
listen = ["{listen}"]

[health]
path = "/healthz"
interval = "1s"
timeout = "500ms"
rise = 2
fall = 2
{backends}"#
    )
}

fn print_banner(url: &str, instances: &[Arc<Instance>]) {
    println!("stickyd demo: three app instances behind stickyd");
    for i in instances {
        println!("  {} {}", i.name, i.addr);
    }
    println!("Open {url} in a browser and reload: you stay on one instance, the counter grows.");
    println!("Press \"Stop this instance\": stickyd moves you to another instance.");
    println!("Or with curl:  curl -s -c /tmp/jar -b /tmp/jar {url} | grep -o 'app-[0-9]'");
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
}

/// One life of an instance, from start to "Stop this instance". Its sessions die with it.
struct App {
    instance: Arc<Instance>,
    sessions: Mutex<HashMap<String, Session>>,
    stop: watch::Sender<bool>,
}

/// What the app remembers about one visitor.
#[derive(Default)]
struct Session {
    visits: u64,
    cart: Vec<String>,
}

/// Serves `instance` forever: after each stop it waits, re-binds the same address and starts
/// again with no sessions.
async fn run_instance(instance: Arc<Instance>, mut listener: TcpListener) {
    loop {
        let lost = serve_until_stopped(instance.clone(), listener).await;
        let plural = if lost == 1 { "" } else { "s" };
        println!(
            "{} stopped ({lost} session{plural} lost); it comes back in {} s",
            instance.name,
            RESTART_AFTER.as_secs()
        );
        tokio::time::sleep(RESTART_AFTER).await;
        listener = rebind(instance.addr).await;
        println!(
            "{} is back on {}, with no sessions",
            instance.name, instance.addr
        );
    }
}

/// Accepts connections until a `POST /stop`, then closes the listener and every connection
/// (idle keep-alive ones included), so the next connect to this address is refused. Returns how
/// many sessions were lost.
async fn serve_until_stopped(instance: Arc<Instance>, listener: TcpListener) -> usize {
    let (stop, mut stopped) = watch::channel(false);
    let app = Arc::new(App {
        instance,
        sessions: Mutex::default(),
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
    app.sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len()
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
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => home(&app, &req),
        (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok\n"),
        (&Method::POST, "/cart") => add_to_cart(&app, req).await,
        (&Method::POST, "/stop") => stop(&app, req).await,
        (_, "/" | "/healthz" | "/cart" | "/stop") => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// `GET /`: counts the visit and shows the page. A first visit gets a new `app_session` cookie.
fn home(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let (id, is_new) = match session_id(req) {
        Some(id) => (id, false),
        None => match new_session_id() {
            Some(id) => (id, true),
            None => return plain(StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n"),
        },
    };
    let (visits, cart) = app.with_session(&id, |s| {
        s.visits += 1;
        (s.visits, s.cart.clone())
    });
    let mut resp = html(StatusCode::OK, home_page(&app.instance, visits, &cart));
    if is_new {
        let cookie = format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(SET_COOKIE, v);
        }
    }
    resp
}

/// `POST /cart` with the form field `item`: adds a known item, then redirects back to `/`.
async fn add_to_cart(app: &App, req: Request<Incoming>) -> Response<Body> {
    let id = session_id(&req);
    let form = match read_form(req).await {
        Ok(form) => form,
        Err(resp) => return resp,
    };
    let item = form_value(&form, "item").and_then(|v| ITEMS.into_iter().find(|known| *known == v));
    if let (Some(id), Some(item)) = (id, item) {
        app.with_session(&id, |s| {
            if s.cart.len() < MAX_CART {
                s.cart.push(item.to_string());
            }
        });
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
    let refused = || plain(StatusCode::BAD_REQUEST, "bad or too large form\n");
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| refused())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| refused())
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
}

/// The `app_session` cookie, if it looks like one this app issues (32 hex digits).
fn session_id(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// A new random session id: 128 bits as 32 hex digits.
fn new_session_id() -> Option<String> {
    let mut bytes = [0u8; 16];
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
form { display: flex; gap: .5rem; margin: .6rem 0 }
select, button { font: inherit; padding: .4rem .9rem; border-radius: 8px }
select { border: 1px solid #d4d4d8; background: #fff }
button { border: 0; background: var(--c); color: #fff; cursor: pointer }
button.stop { background: #dc2626 }
.help { margin: .4rem 0; color: #52525b; font-size: .95rem }
code { padding: 0 .3em; background: #f4f4f5; border-radius: 4px }
a { color: var(--c) }
";

fn home_page(instance: &Instance, visits: u64, cart: &[String]) -> String {
    let Instance { name, colour, addr } = instance;
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
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{name} · stickyd demo</title><style>{STYLE}</style></head>
<body><main style="--c: {colour}">
<p class="label">served by</p>
<h1>{name}</h1>
<p class="addr">{addr}</p>
<div class="stats">
  <div class="stat">visits in this session<strong>{visits}</strong></div>
  <div class="stat">items in the cart<strong>{items}</strong></div>
</div>
<div class="chips">{chips}</div>
<form method="post" action="/cart"><select name="item">{options}</select><button>Add to cart</button></form>
<p class="help"><b>Reload</b>: you stay on {name} and the counter grows. The <code>stickyd</code>
cookie, set by the load balancer, pins your browser to this instance; the <code>app_session</code>
cookie is the app's own, and only {name} knows what it stands for.</p>
<form method="post" action="/stop"><input type="hidden" name="instance" value="{name}">
<button class="stop">Stop this instance</button></form>
<p class="help">Then reload: stickyd moves you to another instance, where the counter and the cart
start over, because they lived in {name}'s memory. {name} comes back after {secs} s, empty;
you stay where stickyd moved you.</p>
</main></body></html>
"#,
        secs = RESTART_AFTER.as_secs(),
    )
}

fn stopped_page(instance: &Instance) -> String {
    let Instance { name, colour, .. } = instance;
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{name} stopped · stickyd demo</title><style>{STYLE}</style></head>
<body><main style="--c: {colour}">
<p class="label">stopped</p>
<h1>{name}</h1>
<p class="help">{name} stopped; its sessions are gone with it. <a href="/">Reload</a> to be
moved to another instance. {name} comes back after {secs} s.</p>
</main></body></html>
"#,
        secs = RESTART_AFTER.as_secs(),
    )
}
