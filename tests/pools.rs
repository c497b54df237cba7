//! Pools and routes end to end: requests routed by host and path prefix to pools that each keep
//! their own affinity (cookie, token binding, placement), 404 without a route, 421 for a host
//! the TLS connection's certificate does not cover, a reload that moves a backend between
//! pools under load, and the admin API, metrics and access log naming pools.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use stickyd::affinity::Outcome;
use support::*;

/// The names of the cookies a response sets.
fn cookies_set(got: &Got) -> Vec<String> {
    got.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let v = v.to_str().unwrap();
            v.split('=').next().unwrap().to_string()
        })
        .collect()
}

/// `[[pool]]` sections: name, extra lines for the pool's own sections, backends.
fn pool_section(name: &str, extra: &str, backends: &[&TestBackend]) -> String {
    let mut t = format!("[[pool]]\nname = \"{name}\"\n{extra}\n");
    for b in backends {
        t.push_str(&format!(
            "[[pool.backend]]\nid = \"{}\"\naddress = \"{}\"\n",
            b.name, b.addr
        ));
    }
    t
}

fn route(host: Option<&str>, prefix: &str, pool: &str) -> String {
    let host = host.map_or(String::new(), |h| format!("host = \"{h}\"\n"));
    format!("[[route]]\n{host}path_prefix = \"{prefix}\"\npool = \"{pool}\"\n")
}

/// A config with the common sections of the test suite, `top` backends as the pool "default"
/// (none: no default pool), then `rest` (pools and routes).
fn config(cfg: &Cfg, top: &[&TestBackend], rest: &str) -> String {
    let mut t = config_text(cfg, &pool(top));
    t.push_str(rest);
    t
}

async fn start(text: &str) -> stickyd::server::Running {
    stickyd::server::start(parse_config(text)).await.unwrap()
}

/// The pool `name`'s index in the current snapshot.
fn pool_ix(lb: &stickyd::server::Running, name: &str) -> usize {
    lb.shared().load().pool_named(name).unwrap()
}

#[tokio::test]
async fn pools_by_host_and_by_path_prefix_each_keep_their_own_affinity() {
    let (s1, s2) = (
        TestBackend::start("s1").await,
        TestBackend::start("s2").await,
    );
    let (p1, p2) = (
        TestBackend::start("p1").await,
        TestBackend::start("p2").await,
    );
    let m1 = TestBackend::start("m1").await;
    let d1 = TestBackend::start("d1").await;
    let text = config(
        &Cfg::default(),
        &[&d1],
        &[
            pool_section("shop", "", &[&s1, &s2]),
            pool_section(
                "api",
                "[pool.affinity]\ncookie = \"api_sid\"\n",
                &[&p1, &p2],
            ),
            pool_section("admin", "", &[&m1]),
            route(Some("shop.test"), "/", "shop"),
            route(Some("*.api.test"), "/", "api"),
            route(None, "/admin", "admin"),
        ]
        .concat(),
    );
    let lb = start(&text).await;
    let addr = lb.local_addrs()[0];
    let in_pool = |got: &Got, names: &[&str]| names.contains(&got.backend().as_str());

    // Each host to its pool, whatever the case and port; each pool with its own cookie.
    let mut c = Jar::new(addr);
    let got = c.get("SHOP.test:8080", "/cart").await;
    assert!(in_pool(&got, &["s1", "s2"]), "{}", got.backend());
    assert_eq!(cookies_set(&got), ["stickyd_shop"]);
    let shop_home = got.backend();
    let got = c.get("v1.api.test", "/x").await;
    assert!(in_pool(&got, &["p1", "p2"]), "{}", got.backend());
    assert_eq!(cookies_set(&got), ["api_sid"]);
    let api_home = got.backend();
    // /admin on a host without a route of its own, whole segments only.
    let got = c.get("other.test", "/admin/users").await;
    assert_eq!(got.backend(), "m1");
    assert_eq!(cookies_set(&got), ["stickyd_admin"]);
    // No route matches: the pool "default", with today's cookie.
    let got = c.get("other.test", "/administrator").await;
    assert_eq!(got.backend(), "d1");
    assert_eq!(cookies_set(&got), ["stickyd"]);
    assert_eq!(c.get("other.test", "/").await.backend(), "d1");
    // The most specific host wins over a path prefix of any host.
    assert!(in_pool(&c.get("shop.test", "/admin").await, &["s1", "s2"]));
    // With every cookie in the jar, each pool keeps its session on its backend.
    for _ in 0..20 {
        assert_eq!(c.get("shop.test", "/").await.backend(), shop_home);
        assert_eq!(c.get("v2.api.test", "/").await.backend(), api_home);
    }
    // New sessions spread over each pool's own backends only.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let got = Jar::new(addr).get("shop.test", "/").await;
        *seen.entry(got.backend()).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "only the pool's own backends, both: {seen:?}"
    );
    assert!(
        s1.seen.lock().unwrap().iter().all(|r| r
            .headers
            .get("cookie")
            .is_none_or(|c| !c.to_str().unwrap().contains("stickyd_shop="))),
        "a pool's cookie never reaches its backend"
    );
    // Every pool's cookie is in the jar now: none reaches the admin pool's backend.
    c.get("other.test", "/admin/x").await;
    let seen = m1.last();
    let cookie = seen
        .headers
        .get("cookie")
        .map_or(String::new(), |v| v.to_str().unwrap().to_string());
    assert!(
        !cookie.contains("stickyd") && !cookie.contains("api_sid"),
        "{cookie}"
    );
    let snap = lb.shared().load();
    let shop = &snap.pools[pool_ix(&lb, "shop")];
    assert_eq!(shop.live.outcomes(Outcome::New), 41);
    assert!(shop.live.outcomes(Outcome::Valid) >= 20);
    assert_eq!(
        snap.pools[pool_ix(&lb, "admin")]
            .live
            .outcomes(Outcome::New),
        1
    );
}

#[tokio::test]
async fn with_no_default_pool_a_request_no_route_matches_gets_404() {
    let a = TestBackend::start("a").await;
    let text = config(
        &Cfg::default(),
        &[],
        &[
            pool_section("shop", "", &[&a]),
            route(Some("shop.test"), "/", "shop"),
        ]
        .concat(),
    );
    let lb = start(&text).await;
    let mut c = Jar::new(lb.local_addrs()[0]);
    let got = c.get("other.test", "/").await;
    assert_eq!(got.status, 404);
    assert_eq!(got.text(), "no route for this host and path\n");
    assert!(cookies_set(&got).is_empty(), "no session for no pool");
    // The connection goes on, and a routed request is served.
    assert_eq!(c.get("shop.test", "/").await.backend(), "a");
    assert_eq!(a.requests(), 1, "the 404 reached no backend");
}

#[tokio::test]
async fn a_valid_token_of_one_pool_is_a_new_session_in_another() {
    let (a1, a2) = (
        TestBackend::start("a1").await,
        TestBackend::start("a2").await,
    );
    let (b1, b2) = (
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    );
    // Both pools read the same cookie, signed with the same keys.
    let text = config(
        &Cfg::default(),
        &[],
        &[
            pool_section("a", "[pool.affinity]\ncookie = \"sid\"\n", &[&a1, &a2]),
            pool_section("b", "[pool.affinity]\ncookie = \"sid\"\n", &[&b1, &b2]),
            route(Some("a.test"), "/", "a"),
            route(Some("b.test"), "/", "b"),
        ]
        .concat(),
    );
    let lb = start(&text).await;
    let addr = lb.local_addrs()[0];
    let mut c = Jar::new(addr);
    let home = c.get("a.test", "/").await.backend();
    let token = c.jar["sid"].clone();
    // A's token at B: ignored, a new session placed in B and a new token issued.
    let got = c.get("b.test", "/").await;
    assert!(["b1", "b2"].contains(&got.backend().as_str()));
    assert_eq!(cookies_set(&got), ["sid"]);
    assert_ne!(c.jar["sid"], token);
    let b = pool_ix(&lb, "b");
    assert_eq!(
        lb.shared().load().pools[b]
            .live
            .outcomes(Outcome::OtherPool),
        1
    );
    // And B's token back at A is another pool's too: A's session is not resumed by it.
    let got = c.get("a.test", "/").await;
    assert_eq!(cookies_set(&got), ["sid"]);
    let a = pool_ix(&lb, "a");
    assert_eq!(
        lb.shared().load().pools[a]
            .live
            .outcomes(Outcome::OtherPool),
        1
    );
    // A's own token still works at A.
    let mut again = Jar::new(addr);
    again.jar.insert("sid".into(), token);
    assert_eq!(again.get("a.test", "/").await.backend(), home);
    let metrics = lb.shared().outcomes(Outcome::OtherPool);
    assert_eq!(metrics, 2);
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stickyd-pools-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One HTTP/1.1 request for `host` on a TLS connection: the status.
async fn status_over(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_host_the_connections_certificate_does_not_cover_gets_421() {
    let dir = temp_dir("421");
    let shop_cert = self_signed_for(&dir, "shop", &["shop.test"]);
    let api_cert = self_signed_for(&dir, "api", &["api.test", "*.api.test"]);
    let (s, p) = (TestBackend::start("s").await, TestBackend::start("p").await);
    let mut text = config(
        &Cfg::default(),
        &[],
        &[
            pool_section("shop", "", &[&s]),
            pool_section("api", "", &[&p]),
            route(Some("shop.test"), "/", "shop"),
            route(Some("*.api.test"), "/", "api"),
            route(Some("api.test"), "/", "api"),
        ]
        .concat(),
    )
    .replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = []\nlisten_tls = [\"127.0.0.1:0\"]",
    );
    text.push_str(&format!(
        "[tls]\ncerts = [{{ cert = {:?}, key = {:?} }}, {{ cert = {:?}, key = {:?} }}]\n",
        shop_cert.cert, shop_cert.key, api_cert.cert, api_cert.key
    ));
    let lb = start(&text).await;
    let addr = lb.local_addrs()[0];

    // Served with shop's certificate: shop is reachable, api is not.
    let mut tls = tls_connect(addr, "shop.test", &shop_cert.der, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(status_over(&mut tls, "shop.test").await, 200);
    assert_eq!(status_over(&mut tls, "v1.api.test").await, 421);
    assert_eq!(
        status_over(&mut tls, "shop.test:443").await,
        200,
        "the connection goes on"
    );
    assert_eq!(
        p.requests(),
        0,
        "api's pool never saw a request on shop's certificate"
    );
    // Served with api's: both of its names, not shop.
    let mut tls = tls_connect(addr, "api.test", &api_cert.der, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(status_over(&mut tls, "api.test").await, 200);
    assert_eq!(status_over(&mut tls, "V2.API.TEST").await, 200);
    assert_eq!(status_over(&mut tls, "shop.test").await, 421);

    // HTTP/2: one connection serves every host its certificate covers, and only those.
    let tls = tls_connect(addr, "api.test", &api_cert.der, &[b"h2"])
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (uri, want) in [
        ("https://api.test/", 200),
        ("https://v3.api.test/", 200),
        ("https://shop.test/", 421),
    ] {
        let resp = send
            .send_request(Request::get(uri).body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{uri}");
        let _ = resp.into_body().collect().await;
    }
    assert_eq!(s.requests(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_reload_moves_a_backend_between_pools_under_load_with_no_failed_request() {
    let (a1, a2) = (
        TestBackend::start("a1").await,
        TestBackend::start("a2").await,
    );
    let b1 = TestBackend::start("b1").await;
    let routes = [
        route(Some("a.test"), "/", "a"),
        route(Some("b.test"), "/", "b"),
    ]
    .concat();
    let before = config(
        &Cfg::default(),
        &[],
        &[
            pool_section("a", "", &[&a1, &a2]),
            pool_section("b", "", &[&b1]),
            routes.clone(),
        ]
        .concat(),
    );
    let after = config(
        &Cfg::default(),
        &[],
        &[
            pool_section("a", "", &[&a1]),
            pool_section("b", "", &[&b1, &a2]),
            routes,
        ]
        .concat(),
    );
    let mut lb = start(&before).await;
    let addr = lb.local_addrs()[0];
    let a2_live = {
        let snap = lb.shared().load();
        let g = snap.backends.iter().position(|b| &*b.id == "a2").unwrap();
        snap.backends[g].live.clone()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let wrong = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed, wrong) = (stop.clone(), ok.clone(), failed.clone(), wrong.clone());
        clients.push(tokio::spawn(async move {
            let host = if i % 2 == 0 { "a.test" } else { "b.test" };
            let mut c = Jar::new(addr);
            while !stop.load(Ordering::Relaxed) {
                let got = c.get(host, "/").await;
                if got.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                    let b = got.backend();
                    // a2 serves either pool, depending on the snapshot; a1 only a, b1 only b.
                    let fits = match host {
                        "a.test" => b == "a1" || b == "a2",
                        _ => b == "b1" || b == "a2",
                    };
                    if !fits {
                        wrong.lock().unwrap().push(format!("{host} -> {b}"));
                    }
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    eventually("load before the reload", || {
        ok.load(Ordering::Relaxed) >= 200
    })
    .await;
    let served_by_a2 = a2.requests();
    lb.reload(parse_config(&after)).unwrap();
    let at_reload = ok.load(Ordering::Relaxed);
    eventually("load after the reload", || {
        ok.load(Ordering::Relaxed) >= at_reload + 300
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        wrong.lock().unwrap().is_empty(),
        "{:?}",
        wrong.lock().unwrap()
    );
    let snap = lb.shared().load();
    let g = snap.backends.iter().position(|b| &*b.id == "a2").unwrap();
    assert_eq!(&*snap.pools[snap.backends[g].pool].name, "b");
    assert!(
        Arc::ptr_eq(&snap.backends[g].live, &a2_live),
        "a2 kept its live state (health, counters, sessions) across pools"
    );
    assert!(served_by_a2 > 0, "a2 served pool a before the reload");
    // After the reload, pool a has only a1: new sessions of a go there; b's spread to a2.
    let mut c = Jar::new(addr);
    assert_eq!(c.get("a.test", "/").await.backend(), "a1");
    let mut by: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        *by.entry(Jar::new(addr).get("b.test", "/").await.backend())
            .or_default() += 1;
    }
    assert_eq!(by.len(), 2, "b1 and a2 share b's new sessions: {by:?}");
}

#[tokio::test]
async fn the_admin_api_metrics_and_access_log_name_pools() {
    let dir = temp_dir("admin");
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    let log: &'static str = Box::leak(
        format!("access = \"json\"\naccess_file = \"{}\"", path.display()).into_boxed_str(),
    );
    let (d, s) = (TestBackend::start("d").await, TestBackend::start("s").await);
    let text = config(
        &Cfg {
            admin: Some(""),
            log,
            ..Cfg::default()
        },
        &[&d],
        &[
            pool_section(
                "shop",
                "[pool.balance]\nnew_sessions = \"least_loaded\"\n",
                &[&s],
            ),
            route(Some("shop.test"), "/", "shop"),
            route(Some("*.shop.test"), "/cart", "shop"),
        ]
        .concat(),
    );
    let lb = start(&text).await;
    let mut c = Jar::new(lb.local_addrs()[0]);
    assert_eq!(c.get("shop.test", "/").await.backend(), "s");
    assert_eq!(c.get("x.test", "/").await.backend(), "d");
    let admin = |path: &'static str| {
        let addr = lb.admin_addr().unwrap();
        async move { Browser::new(addr).get(path).await }
    };

    let pools: serde_json::Value = serde_json::from_slice(&admin("/pools").await.body).unwrap();
    assert_eq!(
        pools,
        serde_json::json!([
            {
                "name": "default", "default": true, "routes": [], "backends": ["d"],
                "mode": "cookie", "cookie": "stickyd", "new_sessions": "round_robin",
                "imbalance": pools[0]["imbalance"], "repins": 0
            },
            {
                "name": "shop", "default": false,
                "routes": [
                    { "host": "shop.test", "path_prefix": "/" },
                    { "host": "*.shop.test", "path_prefix": "/cart" }
                ],
                "backends": ["s"], "mode": "cookie", "cookie": "stickyd_shop",
                "new_sessions": "least_loaded", "imbalance": pools[1]["imbalance"], "repins": 0
            }
        ])
    );
    let backends: serde_json::Value =
        serde_json::from_slice(&admin("/backends").await.body).unwrap();
    let pool_of: Vec<(String, String)> = backends
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["pool"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pool_of,
        [("d".into(), "default".into()), ("s".into(), "shop".into())]
    );
    let m = admin("/metrics").await.text();
    for line in [
        "stickyd_backend_requests_total{backend=\"s\",pool=\"shop\"} 1",
        "stickyd_backend_requests_total{backend=\"d\",pool=\"default\"} 1",
        "stickyd_affinity_total{pool=\"shop\",outcome=\"new\"} 1",
        "stickyd_affinity_total{pool=\"default\",outcome=\"new\"} 1",
        "stickyd_affinity_total{pool=\"shop\",outcome=\"other_pool\"} 0",
        "stickyd_repins_total{pool=\"shop\"} 0",
        "stickyd_imbalance_ratio{pool=\"shop\"} ",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    drop(lb);
    let mut lines = Vec::new();
    for _ in 0..500 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        lines = text.lines().map(str::to_string).collect::<Vec<_>>();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let pools: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["pool"].to_string())
        .collect();
    assert_eq!(pools, ["\"shop\"", "\"default\""]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn each_pool_has_its_own_mode_and_placement() {
    let (c1, c2) = (
        TestBackend::start("c1").await,
        TestBackend::start("c2").await,
    );
    let (h1, h2) = (
        TestBackend::start("h1").await,
        TestBackend::start("h2").await,
    );
    let (i1, i2) = (
        TestBackend::start("i1").await,
        TestBackend::start("i2").await,
    );
    let text = config(
        &Cfg::default(),
        &[&c1, &c2],
        &[
            pool_section("api", "[pool.affinity]\nmode = \"header\"\n", &[&h1, &h2]),
            pool_section("ip", "[pool.affinity]\nmode = \"ip\"\n", &[&i1, &i2]),
            route(Some("api.test"), "/", "api"),
            route(Some("ip.test"), "/", "ip"),
        ]
        .concat(),
    );
    let lb = start(&text).await;
    let addr = lb.local_addrs()[0];
    // header mode: the token comes back in the header, no cookie.
    let mut b = Browser::new(addr);
    let got = b
        .send("GET", "/", Bytes::new(), &[("host", "api.test")])
        .await;
    assert!(cookies_set(&got).is_empty(), "no cookie in header mode");
    let token = got.headers["x-stickyd-session"]
        .to_str()
        .unwrap()
        .to_string();
    let home = got.backend();
    for _ in 0..10 {
        let got = Browser::new(addr)
            .send(
                "GET",
                "/",
                Bytes::new(),
                &[("host", "api.test"), ("x-stickyd-session", &token)],
            )
            .await;
        assert_eq!(got.backend(), home);
    }
    // ip mode: one client address, one backend, no token at all.
    let first = Jar::new(addr).get("ip.test", "/").await;
    assert!(cookies_set(&first).is_empty() && !first.headers.contains_key("x-stickyd-session"));
    for _ in 0..10 {
        assert_eq!(
            Jar::new(addr).get("ip.test", "/").await.backend(),
            first.backend()
        );
    }
    // The default pool keeps cookie mode.
    let got = Jar::new(addr).get("other.test", "/").await;
    assert_eq!(cookies_set(&got), ["stickyd"]);
    let snap = lb.shared().load();
    let ip = &snap.pools[snap.pool_named("ip").unwrap()];
    assert_eq!(ip.live.outcomes(Outcome::Hashed), 11);
    assert_eq!(ip.live.outcomes(Outcome::New), 0);
}

/// The README's "Several apps" example is a valid config, routed as its comments say.
#[test]
fn the_readmes_several_apps_example_is_a_valid_config() {
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("## Several apps").expect("the section")..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").unwrap()];
    let text = text.replace("file:/etc/stickyd/key.current", "env:KEY");
    let c = parse_config(&text);
    let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["shop", "api", "admin"]);
    assert_eq!(c.pools[0].affinity.cookie, "stickyd_shop");
    assert_eq!(c.pools[0].health.path, "/ready");
    let pick = |host: &str, path: &str| c.routes.pick(Some(host.as_bytes()), path.as_bytes());
    assert_eq!(pick("shop.example.com", "/cart"), Some(0));
    assert_eq!(pick("eu.api.example.com", "/v1/x"), Some(1));
    assert_eq!(
        pick("api.example.com", "/"),
        None,
        "a wildcard needs a deeper name"
    );
    assert_eq!(pick("other.example.com", "/admin/users"), Some(2));
    assert_eq!(pick("other.example.com", "/administrator"), None);
}

#[tokio::test]
async fn without_routes_a_tls_connection_serves_any_host_as_before_pools() {
    let dir = temp_dir("no-routes");
    let cert = self_signed_for(&dir, "shop", &["shop.test"]);
    let a = TestBackend::start("a").await;
    let mut text = config(&Cfg::default(), &[&a], "").replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = []\nlisten_tls = [\"127.0.0.1:0\"]",
    );
    text.push_str(&format!(
        "[tls]\ncerts = [{{ cert = {:?}, key = {:?} }}]\n",
        cert.cert, cert.key
    ));
    let lb = start(&text).await;
    let mut tls = tls_connect(lb.local_addrs()[0], "shop.test", &cert.der, &[b"http/1.1"])
        .await
        .unwrap();
    // An address, or a name the certificate does not cover: one pool, served as before.
    assert_eq!(status_over(&mut tls, "127.0.0.1").await, 200);
    assert_eq!(status_over(&mut tls, "other.test").await, 200);
    assert_eq!(a.requests(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pool_named_default_keeps_the_stickyd_cookie() {
    let a = ("a", "127.0.0.1:9".parse::<SocketAddr>().unwrap());
    let text = format!(
        "{}[[pool]]\nname = \"default\"\n[[pool.backend]]\nid = \"{}\"\naddress = \"{}\"\n",
        config_text(&Cfg::default(), &[]),
        a.0,
        a.1
    );
    let c = parse_config(&text);
    assert_eq!(c.pools[0].name, "default");
    assert_eq!(c.pools[0].affinity.cookie, "stickyd");
    assert_eq!(c.routes.pick(Some(b"any.test"), b"/"), Some(0));
}
