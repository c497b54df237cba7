//! The dashboard on the admin listener: `GET /` (the page, no token, not frameable) and
//! `GET /dashboard.json` (the data, token-guarded): its numbers against `/backends` and the
//! per-second series against the traffic sent. The page itself is driven in a real browser by
//! `tests/browser/dashboard.mjs` (CI).

mod support;

use bytes::Bytes;
use serde_json::Value;
use support::{Browser, Cfg, KEY, TestBackend, eventually, pool, stickyd};

async fn get_json(admin: std::net::SocketAddr, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let got = Browser::new(admin)
        .send("GET", path, Bytes::new(), &headers)
        .await;
    let v = serde_json::from_slice(&got.body).unwrap_or(Value::Null);
    (got.status, v)
}

fn samples(v: &Value) -> usize {
    v["t"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_agrees_with_backends_and_its_series_add_up_to_the_traffic() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let lb = stickyd(
        &Cfg {
            admin: Some(""),
            ..Cfg::default()
        },
        &pool(&[&a, &b]),
    )
    .await;
    let admin = lb.admin_addr().unwrap();
    // A first sample, before any traffic.
    eventually("a first sample", || {
        !lb.shared().history.lock().unwrap().t.is_empty()
    })
    .await;
    let mut clients: Vec<Browser> = (0..6).map(|_| Browser::new(lb.local_addrs()[0])).collect();
    for c in &mut clients {
        for _ in 0..5 {
            assert_eq!(c.get("/").await.status, 200);
        }
    }
    // One more sample after the traffic: every request is in some second of the series.
    let after = lb.shared().history.lock().unwrap().t.len();
    eventually("a sample after the traffic", || {
        lb.shared().history.lock().unwrap().t.len() > after
    })
    .await;

    let (status, d) = get_json(admin, "/dashboard.json", None).await;
    assert_eq!(status, 200);
    let (_, backends) = get_json(admin, "/backends", None).await;
    let n = samples(&d);
    assert!(n >= 2, "{d}");
    assert_eq!(d["latency_ms"]["p50"].as_array().unwrap().len(), n);
    assert_eq!(d["stopping"], false);
    let p = &d["pools"][0];
    assert_eq!(p["name"], "default");
    assert_eq!(p["mode"], "cookie");
    let mut total = 0;
    for (shown, listed) in p["backends"]
        .as_array()
        .unwrap()
        .iter()
        .zip(backends.as_array().unwrap())
    {
        for k in [
            "id",
            "address",
            "health",
            "state",
            "state_source",
            "source",
            "requests",
            "sessions",
            "in_flight",
            "drained",
        ] {
            assert_eq!(shown[k], listed[k], "{k}: {shown} vs {listed}");
        }
        let id = shown["id"].as_str().unwrap();
        let series = p["series"]["requests"][id].as_array().unwrap();
        assert_eq!(series.len(), n);
        let sum: u64 = series.iter().map(|x| x.as_u64().unwrap()).sum();
        assert_eq!(
            sum,
            shown["requests"].as_u64().unwrap(),
            "{id}: every request in some second"
        );
        total += sum;
        assert_eq!(p["series"]["errors"][id].as_array().unwrap().len(), n);
    }
    assert_eq!(total, 30);
    let new: u64 = p["series"]["outcomes"]["new"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .sum();
    let valid: u64 = p["series"]["outcomes"]["valid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!((new, valid), (6, 24), "6 sessions, 4 more requests each");
    assert!(
        d["latency_ms"]["p99"]
            .as_array()
            .unwrap()
            .iter()
            .any(Value::is_number),
        "some second had requests"
    );
    for k in ["imbalance", "repins", "takeovers"] {
        assert_eq!(p["series"][k].as_array().unwrap().len(), n, "{k}");
    }
}

#[tokio::test]
async fn the_page_needs_no_token_and_cannot_be_framed_the_data_needs_the_token() {
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
    let page = Browser::new(admin).get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(
        page.text().contains("dashboard.json"),
        "the page polls the data"
    );
    let body = page.text().replace(' ', "");
    for needle in [
        "src=\"http",
        "src='http",
        "src=\"//",
        "href=\"http",
        "href='http",
        "href=\"//",
        "@import",
        "url(http",
        "url(//",
        "url('http",
        "url(\"http",
    ] {
        assert!(
            !body.contains(needle),
            "the page loads nothing from elsewhere: {needle}"
        );
    }
    let (status, _) = get_json(admin, "/dashboard.json", None).await;
    assert_eq!(status, 401);
    let token = std::str::from_utf8(KEY).unwrap();
    let (status, d) = get_json(admin, "/dashboard.json", Some(token)).await;
    assert_eq!(status, 200);
    assert_eq!(d["pools"][0]["backends"][0]["id"], "a");
    // Another site's page cannot use the page's calls: a cross-origin POST is refused.
    let cross = Browser::new(admin)
        .send(
            "POST",
            "/backends/a/drain",
            Bytes::new(),
            &[
                ("origin", "http://evil.example"),
                ("authorization", &format!("Bearer {token}")),
            ],
        )
        .await;
    assert_eq!(cross.status, 403);
    let post = Browser::new(admin)
        .send(
            "POST",
            "/",
            Bytes::new(),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(post.status, 405);
}
