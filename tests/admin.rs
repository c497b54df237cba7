//! The admin API end to end: health, metrics, backends, drain/enable/disable with real traffic,
//! the bearer token, reload calls, and the refusal of calls from other web sites (foreign Host,
//! cross-origin state changes), token or not.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn call(lb: &stickyd::server::Running, method: &str, path: &str) -> Got {
    Browser::new(lb.admin_addr().expect("admin API configured"))
        .send(method, path, Bytes::new(), &[])
        .await
}

fn json(got: &Got) -> serde_json::Value {
    serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("{e}: {}", got.text()))
}

fn backend<'a>(all: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    all.as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap()
}

#[tokio::test]
async fn healthz_metrics_and_backends_describe_live_traffic() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let lb = stickyd(
        &Cfg {
            admin: Some(""),
            ..Cfg::default()
        },
        &pool(&[&a, &b]),
    )
    .await;
    assert!(lb.admin_addr().is_some());
    let got = call(&lb, "GET", "/healthz").await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok\n"));

    // Ten new sessions, then one session for ten requests.
    for _ in 0..10 {
        assert_eq!(Browser::new(lb.local_addrs()[0]).get("/").await.status, 200);
    }
    let mut user = Browser::new(lb.local_addrs()[0]);
    for _ in 0..10 {
        assert_eq!(user.get("/").await.status, 200);
    }
    let pinned_to = user.get("/").await.backend();

    let all = json(&call(&lb, "GET", "/backends").await);
    let (ja, jb) = (backend(&all, "a"), backend(&all, "b"));
    assert_eq!(ja["health"], "up");
    assert_eq!(ja["state"], "active");
    assert_eq!(ja["state_source"], "config");
    assert_eq!(ja["address"], a.addr.to_string());
    let requests = ja["requests"].as_u64().unwrap() + jb["requests"].as_u64().unwrap();
    assert_eq!(requests, 21);
    let pins = ja["pins"].as_u64().unwrap() + jb["pins"].as_u64().unwrap();
    assert_eq!(pins, 11, "eleven sessions were pinned");
    let sessions = ja["sessions"].as_u64().unwrap() + jb["sessions"].as_u64().unwrap();
    assert!(
        (9..=13).contains(&sessions),
        "about 11 distinct sessions: {sessions}"
    );
    let served = backend(&all, &pinned_to)["responses"]["2xx"]
        .as_u64()
        .unwrap();
    assert!(served >= 11, "the pinned user's 11 requests: {served}");

    let m = call(&lb, "GET", "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = m.text();
    for line in [
        "stickyd_responses_total{class=\"2xx\"} 21",
        "stickyd_affinity_total{pool=\"default\",outcome=\"new\"} 11",
        "stickyd_affinity_total{pool=\"default\",outcome=\"valid\"} 10",
        "stickyd_request_duration_seconds_count 21",
        "stickyd_request_duration_seconds_bucket{le=\"+Inf\"} 21",
        "stickyd_backend_up{backend=\"a\",pool=\"default\"} 1",
        "stickyd_backend_admin_state{backend=\"a\",pool=\"default\",state=\"active\"} 1",
        "stickyd_backend_in_flight{backend=\"b\",pool=\"default\"} 0",
        "stickyd_repins_total{pool=\"default\"} 0",
        "stickyd_upstream_errors_total{kind=\"connect\"} 0",
        "# TYPE stickyd_imbalance_ratio gauge",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // Every sample line parses as `name{labels} number`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample {l:?}");
    }

    assert_eq!(call(&lb, "GET", "/nope").await.status, 404);
    let got = call(&lb, "POST", "/metrics").await;
    assert_eq!(got.status, 405);
    assert_eq!(got.headers["allow"], "GET");
    assert_eq!(call(&lb, "GET", "/backends/a/drain").await.status, 405);
    assert_eq!(call(&lb, "POST", "/backends/zz/drain").await.status, 404);
    assert_eq!(call(&lb, "GET", "/backends/zz").await.status, 404);
    assert_eq!(json(&call(&lb, "GET", "/backends/b").await)["id"], "b");
}

#[tokio::test]
async fn a_drained_backend_keeps_its_sessions_takes_no_new_ones_and_reports_drained() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let lb = stickyd(
        &Cfg {
            admin: Some("drain_quiet = \"1s\""),
            // Round robin is exact per worker: one worker, so exact in all.
            server: "worker_threads = 1",
            ..Cfg::default()
        },
        &pool(&[&a, &b]),
    )
    .await;
    // A user pinned to a.
    let mut on_a = loop {
        let mut u = Browser::new(lb.local_addrs()[0]);
        if u.get("/").await.backend() == "a" {
            break u;
        }
    };
    let got = call(&lb, "POST", "/backends/a/drain").await;
    assert_eq!(got.status, 200);
    let j = json(&got);
    assert_eq!(
        (j["state"].as_str(), j["state_source"].as_str()),
        (Some("draining"), Some("api"))
    );
    assert_eq!(j["drained"], false);

    // New sessions all go to b; a's session stays on a.
    for _ in 0..10 {
        assert_eq!(
            Browser::new(lb.local_addrs()[0]).get("/").await.backend(),
            "b"
        );
    }
    for _ in 0..5 {
        assert_eq!(on_a.get("/").await.backend(), "a");
    }
    let j = json(&call(&lb, "GET", "/backends/a").await);
    assert_eq!(j["drained"], false, "a served a session just now");
    assert!(j["draining_since"].as_u64().is_some());

    // Quiet for drain_quiet: drained.
    let admin = lb.admin_addr().unwrap();
    let mut seen = false;
    for _ in 0..50 {
        let j = json(&Browser::new(admin).get("/backends/a").await);
        if j["drained"] == true {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "a was never reported drained");
    let m = call(&lb, "GET", "/metrics").await.text();
    assert!(
        m.contains("stickyd_backend_drained{backend=\"a\",pool=\"default\"} 1"),
        "{m}"
    );

    // Disabled: a's session falls back to b (re-pinned); enabled: new sessions reach a again.
    assert_eq!(call(&lb, "POST", "/backends/a/disable").await.status, 200);
    let got = on_a.get("/").await;
    assert_eq!((got.status, got.backend().as_str()), (200, "b"));
    assert!(got.set_cookie().is_some(), "re-pinned with a new cookie");
    assert_eq!(call(&lb, "POST", "/backends/a/enable").await.status, 200);
    let mut to_a = 0;
    for _ in 0..10 {
        if Browser::new(lb.local_addrs()[0]).get("/").await.backend() == "a" {
            to_a += 1;
        }
    }
    assert_eq!(to_a, 5, "round robin over both again");
}

#[tokio::test]
async fn a_token_guards_every_call() {
    let a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            admin: Some("token = \"env:ADMIN_TOKEN\""),
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    let admin = lb.admin_addr().unwrap();
    for path in ["/metrics", "/backends", "/pools", "/route?cookie=x"] {
        let got = Browser::new(admin).get(path).await;
        assert_eq!(got.status, 401, "{path}");
        assert_eq!(got.headers["www-authenticate"], "Bearer");
    }
    // The platform's probes carry no token: alive and ready answer without one.
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let got = Browser::new(admin).get(path).await;
        assert_eq!((got.status, got.text().as_str()), (200, body), "{path}");
    }
    let post = Browser::new(admin)
        .send("POST", "/readyz", Bytes::new(), &[])
        .await;
    assert_eq!(post.status, 401, "only GET and HEAD of the probes are open");
    let wrong = Browser::new(admin)
        .send(
            "GET",
            "/backends",
            Bytes::new(),
            &[("authorization", "Bearer nope")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    // The test key source answers every env: spec with KEY.
    let bearer = format!("Bearer {}", std::str::from_utf8(KEY).unwrap());
    let ok = Browser::new(admin)
        .send(
            "GET",
            "/backends",
            Bytes::new(),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn reload_calls_reach_the_owner_and_errors_come_back_as_400() {
    let a = TestBackend::start("a").await;
    let mut lb = stickyd(
        &Cfg {
            admin: Some(""),
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    let mut calls = lb.take_reload_calls().unwrap();
    // The owner of the config file answers: first a refusal, then a success.
    let owner = tokio::spawn(async move {
        let first = calls.recv().await.unwrap();
        let _ = first.send(Err("stickyd.toml:3:9: bad value".into()));
        let second = calls.recv().await.unwrap();
        let _ = second.send(Ok(2));
    });
    let got = call(&lb, "POST", "/reload").await;
    assert_eq!(got.status, 400);
    assert_eq!(json(&got)["error"], "stickyd.toml:3:9: bad value");
    let got = call(&lb, "POST", "/reload").await;
    assert_eq!(got.status, 200);
    assert_eq!(json(&got)["backends"], 2);
    owner.await.unwrap();
}

/// One admin API under test: without or with a token (sent on every call when there is one);
/// both allow the name `Admin.Example`.
struct Api {
    mode: &'static str,
    addr: SocketAddr,
    bearer: Option<String>,
    _lb: stickyd::server::Running,
}

impl Api {
    /// Both modes, each its own stickyd in front of `backend`.
    async fn both(backend: &TestBackend) -> [Api; 2] {
        let start = |mode, admin, bearer| async move {
            let lb = stickyd(
                &Cfg {
                    admin: Some(admin),
                    ..Cfg::default()
                },
                &pool(&[backend]),
            )
            .await;
            Api {
                mode,
                addr: lb.admin_addr().unwrap(),
                bearer,
                _lb: lb,
            }
        };
        // The test key source answers every env: spec with KEY.
        let bearer = format!("Bearer {}", std::str::from_utf8(KEY).unwrap());
        [
            start("no token", "allowed_hosts = [\"Admin.Example\"]", None).await,
            start(
                "token",
                "token = \"env:ADMIN_TOKEN\"\nallowed_hosts = [\"Admin.Example\"]",
                Some(bearer),
            )
            .await,
        ]
    }

    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut all = headers.to_vec();
        if let Some(b) = &self.bearer {
            all.push(("authorization", b));
        }
        Browser::new(self.addr)
            .send(method, path, Bytes::new(), &all)
            .await
    }

    /// Backend `a`'s admin state and its source, as GET /backends/a says.
    async fn state_of_a(&self) -> (String, String) {
        let got = self.call("GET", "/backends/a", &[]).await;
        assert_eq!(got.status, 200, "{}: {}", self.mode, got.text());
        let j = json(&got);
        (
            j["state"].as_str().unwrap().into(),
            j["state_source"].as_str().unwrap().into(),
        )
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn untouched() -> (String, String) {
    ("active".into(), "config".into())
}

#[tokio::test]
async fn a_cross_origin_post_is_refused_and_the_backend_is_not_disabled() {
    let a = TestBackend::start("a").await;
    for api in Api::both(&a).await {
        // The attack as a browser sends it: a "simple" request, so no preflight.
        for path in ["/backends/a/disable", "/backends/a/drain", "/reload"] {
            let got = api
                .call(
                    "POST",
                    path,
                    &[
                        ("origin", "http://evil.example"),
                        ("content-type", "text/plain"),
                    ],
                )
                .await;
            assert_eq!(got.status, 403, "{} {path}: {}", api.mode, got.text());
            assert!(got.text().contains("http://evil.example"), "{}", got.text());
            assert_eq!(got.headers["x-content-type-options"], "nosniff");
        }
        // Another port on the same host is another origin (a dev server on localhost:3000).
        let other_port = "http://127.0.0.1:3000";
        let got = api
            .call("POST", "/backends/a/disable", &[("origin", other_port)])
            .await;
        assert_eq!(got.status, 403, "{}", api.mode);
        assert_eq!(api.state_of_a().await, untouched(), "{}", api.mode);
        let m = api.call("GET", "/metrics", &[]).await.text();
        assert!(
            m.contains(
                "stickyd_backend_admin_state{backend=\"a\",pool=\"default\",state=\"active\"} 1"
            ),
            "{m}"
        );
    }
}

#[tokio::test]
async fn a_post_the_browser_marks_cross_site_is_refused() {
    let a = TestBackend::start("a").await;
    for api in Api::both(&a).await {
        for site in ["cross-site", "same-site"] {
            let got = api
                .call("POST", "/backends/a/disable", &[("sec-fetch-site", site)])
                .await;
            assert_eq!(got.status, 403, "{} {site}", api.mode);
            assert!(got.text().contains(site), "{}", got.text());
        }
        assert_eq!(api.state_of_a().await, untouched(), "{}", api.mode);
    }
}

#[tokio::test]
async fn same_origin_and_curl_style_posts_are_served() {
    let a = TestBackend::start("a").await;
    for api in Api::both(&a).await {
        let own = format!("http://127.0.0.1:{}", api.port());
        let got = api
            .call(
                "POST",
                "/backends/a/drain",
                &[("origin", &own), ("sec-fetch-site", "same-origin")],
            )
            .await;
        assert_eq!(got.status, 200, "{}: {}", api.mode, got.text());
        assert_eq!(api.state_of_a().await.0, "draining");

        let by_name = format!("http://localhost:{}", api.port());
        let got = api
            .call(
                "POST",
                "/backends/a/disable",
                &[("host", &by_name[7..]), ("origin", &by_name)],
            )
            .await;
        assert_eq!(got.status, 200, "{}: {}", api.mode, got.text());
        assert_eq!(api.state_of_a().await.0, "disabled");

        // curl: no Origin, no Sec-Fetch-Site.
        let got = api.call("POST", "/backends/a/enable", &[]).await;
        assert_eq!(got.status, 200, "{}: {}", api.mode, got.text());
        assert_eq!(api.state_of_a().await, ("active".into(), "api".into()));
    }
}

#[tokio::test]
async fn a_foreign_host_can_read_nothing() {
    let a = TestBackend::start("a").await;
    for api in Api::both(&a).await {
        // DNS rebinding: the page's own name, resolving to 127.0.0.1.
        let rebound = format!("evil.example:{}", api.port());
        for host in [rebound.as_str(), "evil.example", "127.0.0.1:1"] {
            for path in ["/backends", "/metrics", "/backends/a", "/healthz"] {
                let got = api.call("GET", path, &[("host", host)]).await;
                assert_eq!(got.status, 421, "{} {host} {path}", api.mode);
                let body = got.text();
                assert!(
                    body.contains(host) && body.contains("allowed_hosts"),
                    "{body}"
                );
                assert!(!body.contains("stickyd_"), "no metrics leak: {body}");
            }
        }
    }
}

#[tokio::test]
async fn the_host_is_checked_before_the_token() {
    let a = TestBackend::start("a").await;
    let [_, api] = Api::both(&a).await;
    let got = Browser::new(api.addr)
        .send(
            "GET",
            "/backends",
            Bytes::new(),
            &[("host", "evil.example")],
        )
        .await;
    assert_eq!(got.status, 421, "not 401: {}", got.text());
    // Without the token, a good Host still needs it.
    let got = Browser::new(api.addr).get("/backends").await;
    assert_eq!(got.status, 401);
}

#[tokio::test]
async fn localhost_the_address_connected_to_and_allowed_names_are_served() {
    let a = TestBackend::start("a").await;
    for api in Api::both(&a).await {
        let port = api.port();
        for host in [
            format!("localhost:{port}"),
            format!("LOCALHOST:{port}"),
            format!("127.0.0.1:{port}"),
            "admin.example".into(),
            "ADMIN.example:8443".into(),
        ] {
            for path in ["/backends", "/metrics"] {
                let got = api.call("GET", path, &[("host", &host)]).await;
                assert_eq!(got.status, 200, "{} {host} {path}", api.mode);
            }
        }
        // Through a TLS reverse proxy that keeps the name: its origin is https.
        let got = api
            .call(
                "POST",
                "/backends/a/drain",
                &[
                    ("host", "admin.example"),
                    ("origin", "https://admin.example"),
                    ("sec-fetch-site", "same-origin"),
                ],
            )
            .await;
        assert_eq!(got.status, 200, "{}: {}", api.mode, got.text());
        assert_eq!(api.state_of_a().await.0, "draining");
    }
}

#[tokio::test]
async fn a_request_without_host_is_served() {
    let a = TestBackend::start("a").await;
    for api in Api::both(&a).await {
        let mut s = tokio::net::TcpStream::connect(api.addr).await.unwrap();
        let auth = api
            .bearer
            .as_ref()
            .map(|b| format!("Authorization: {b}\r\n"))
            .unwrap_or_default();
        s.write_all(format!("GET /healthz HTTP/1.0\r\n{auth}\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.0 200 "),
            "{}: {answer}",
            api.mode
        );
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    }
}

#[tokio::test]
async fn readyz_says_not_ready_without_a_usable_backend_and_once_stopping() {
    let a = TestBackend::start("a").await;
    let lb = stickyd(
        &Cfg {
            admin: Some(""),
            ..Cfg::default()
        },
        &pool(&[&a]),
    )
    .await;
    assert_eq!(call(&lb, "GET", "/readyz").await.status, 200);
    let got = Browser::new(lb.admin_addr().unwrap())
        .send("POST", "/backends/a/disable", Bytes::new(), &[])
        .await;
    assert_eq!(got.status, 200);
    let got = call(&lb, "GET", "/readyz").await;
    assert_eq!(
        (got.status, got.text().as_str()),
        (503, "no usable backend\n")
    );
    assert_eq!(call(&lb, "GET", "/healthz").await.status, 200, "alive");
    Browser::new(lb.admin_addr().unwrap())
        .send("POST", "/backends/a/enable", Bytes::new(), &[])
        .await;
    assert_eq!(call(&lb, "GET", "/readyz").await.status, 200);
    lb.not_ready();
    let got = call(&lb, "GET", "/readyz").await;
    assert_eq!((got.status, got.text().as_str()), (503, "draining\n"));
    assert_eq!(call(&lb, "GET", "/healthz").await.status, 200);
    // Still serving.
    assert_eq!(
        Browser::new(lb.local_addrs()[0]).get("/").await.backend(),
        "a"
    );
}
