//! stickyd demo: three instances of a small stateful web app behind stickyd on loopback.
//!
//! Each instance keeps its sessions (a visit counter and a cart) in its own memory, keyed by the
//! app's own `app_session` cookie, like many real apps do. stickyd's signed `stickyd` cookie pins
//! a browser to one instance, so the counter keeps growing. Press "Stop this instance" and
//! stickyd moves the browser to another instance, where the counter starts over: the state died
//! with the process. The stopped instance comes back after 30 seconds.
//!
//! Run: `cargo run --release --example demo [-- --listen 127.0.0.1:8080]`

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

const RESTART_AFTER: Duration = Duration::from_secs(30);
const MAX_SESSIONS: usize = 10_000;
const COLOURS: [&str; 3] = ["#2563eb", "#16a34a", "#db2777"];
const ITEMS: [&str; 4] = ["apple", "bread", "coffee", "cheese"];

#[derive(Default)]
struct Session {
    visits: u64,
    cart: Vec<&'static str>,
}

/// One app instance: its name, colour, and sessions (lost when it stops).
struct App {
    name: String,
    colour: &'static str,
    sessions: Mutex<HashMap<String, Session>>,
    stop: watch::Sender<bool>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let listen = listen_arg().unwrap_or_else(|| "127.0.0.1:8080".into());

    let mut backends = Vec::new();
    for (i, colour) in COLOURS.into_iter().enumerate() {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let name = format!("app-{}", i + 1);
        backends.push((name.clone(), addr));
        tokio::spawn(run_instance(name, colour, listener));
    }

    let mut text = format!(
        "[server]\nlisten = [\"{listen}\"]\n[health]\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n"
    );
    for (name, addr) in &backends {
        text.push_str(&format!(
            "[[backend]]\nid = \"{name}\"\naddress = \"{addr}\"\n"
        ));
    }
    let config =
        stickyd::config::parse(&text, "demo", Path::new("."), &stickyd::config::SystemKeys)?;
    let running = stickyd::server::start(config).await?;
    let url = format!("http://{}/", running.local_addrs()[0]);

    println!("stickyd demo: three app instances behind stickyd");
    for (name, addr) in &backends {
        println!("  {name} {addr}");
    }
    println!("Open {url} in a browser and reload: you stay on one instance, the counter grows.");
    println!("Press \"Stop this instance\": stickyd moves you to another instance.");
    println!("Or with curl:  curl -s -c /tmp/jar -b /tmp/jar {url} | grep -o 'app-[0-9]'");
    println!("Ctrl-C to stop.");

    tokio::signal::ctrl_c().await?;
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// `--listen ADDR` from the command line, if given.
fn listen_arg() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1).cloned())
}

/// Serves one instance; after "stop", waits and comes back on the same address with no sessions.
async fn run_instance(name: String, colour: &'static str, mut listener: TcpListener) {
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    loop {
        let (stop, stopped) = watch::channel(false);
        let app = Arc::new(App {
            name: name.clone(),
            colour,
            sessions: Mutex::default(),
            stop,
        });
        serve(app, listener, stopped).await;
        println!(
            "{name} stopped; it comes back in {}s",
            RESTART_AFTER.as_secs()
        );
        tokio::time::sleep(RESTART_AFTER).await;
        listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        println!("{name} is back on {addr} (with no sessions)");
    }
}

/// Accepts until stopped, then drops the listener and every connection (keep-alive ones too).
async fn serve(app: Arc<App>, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let app = app.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| handle(app.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    // Let the "stopped" page reach the browser, then close everything.
    tokio::time::sleep(Duration::from_millis(100)).await;
    conns.shutdown().await;
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/") => page(&app, &req),
        (&Method::POST, "/cart") => {
            let sid = session_id(&req);
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let item = std::str::from_utf8(&body)
                .ok()
                .and_then(|f| f.strip_prefix("item="))
                .and_then(|v| ITEMS.iter().find(|i| **i == v));
            if let (Some(sid), Some(item)) = (sid, item) {
                let mut sessions = app.sessions.lock().unwrap_or_else(|p| p.into_inner());
                sessions.entry(sid).or_default().cart.push(item);
            }
            redirect_home()
        }
        (&Method::POST, "/stop") => {
            let _ = app.stop.send(true);
            html(format!(
                "<!doctype html><meta charset=utf-8><title>stopped</title><body style=\"font-family:sans-serif;margin:3em\">\
                 <h1>{} stopped</h1><p>Its sessions are gone with it. <a href=\"/\">Reload</a> to be moved to another instance.</p>",
                app.name
            ))
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}

/// The app's own session cookie, if the request has one.
fn session_id(req: &Request<Incoming>) -> Option<String> {
    req.headers().get_all(header::COOKIE).iter().find_map(|v| {
        v.to_str()
            .ok()?
            .split(';')
            .find_map(|p| p.trim().strip_prefix("app_session=").map(str::to_string))
    })
}

fn page(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (sid, new) = match session_id(req) {
        Some(s) => (s, false),
        None => (
            format!("{:016x}", getrandom::u64().unwrap_or_default()),
            true,
        ),
    };
    let (visits, cart) = {
        let mut sessions = app.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= MAX_SESSIONS && !sessions.contains_key(&sid) {
            // Bounded memory: a curl loop makes a session per request.
            if let Some(k) = sessions.keys().next().cloned() {
                sessions.remove(&k);
            }
        }
        let s = sessions.entry(sid.clone()).or_default();
        s.visits += 1;
        (s.visits, s.cart.join(", "))
    };
    let options: String = ITEMS
        .iter()
        .map(|i| format!("<option>{i}</option>"))
        .collect();
    let body = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{name}</title><style>
body {{ font-family: system-ui, sans-serif; margin: 3em auto; max-width: 40em; color: #222 }}
.instance {{ font-size: 4em; font-weight: 700; color: {colour}; margin: 0 }}
.card {{ border: 1px solid #ddd; border-radius: 8px; padding: 1em 1.5em; margin: 1em 0 }}
button {{ font-size: 1em; padding: .4em 1em; border-radius: 6px; border: 1px solid #888; cursor: pointer }}
.stop {{ background: #fee2e2; border-color: #dc2626 }}
.muted {{ color: #666 }}
</style></head><body>
<p class="muted">served by</p><p class="instance">{name}</p>
<div class="card"><p>Visits in this session: <b>{visits}</b></p>
<p>Cart: <b>{cart}</b></p>
<form method="post" action="/cart"><select name="item">{options}</select> <button>Add to cart</button></form></div>
<div class="card"><p>Reload: you stay on <b>{name}</b> and the counter grows. The <code>stickyd</code> cookie
pins you; it is signed, expires, and says nothing about the backend.</p>
<form method="post" action="/stop"><button class="stop">Stop this instance</button></form>
<p class="muted">Then reload: stickyd moves you to another instance, where the counter and the cart start
over, because they lived in this process's memory. {name} comes back after 30 seconds.</p></div>
</body></html>"#,
        name = app.name,
        colour = app.colour,
        cart = if cart.is_empty() {
            "empty".into()
        } else {
            cart
        },
    );
    let mut resp = html(body);
    if new {
        let cookie = format!("app_session={sid}; Path=/; HttpOnly; SameSite=Lax");
        if let Ok(v) = cookie.parse() {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

fn html(body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn redirect_home() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::SEE_OTHER, "");
    r.headers_mut()
        .insert(header::LOCATION, http::HeaderValue::from_static("/"));
    r
}
