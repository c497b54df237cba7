//! Criterion micro-benchmarks of the per-request policy work: finding and stripping the
//! affinity cookie, the other header rewrites, and the routing decision with its two selection
//! algorithms.
//!
//! The routing benchmarks go through the real [`Snapshot`] (built from config text, as the
//! server builds it), so they measure the production `PoolView`: tag lookup by hash map,
//! round robin in the thread's own state, health from the live state.

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use stickyd::affinity::{self, OnPinnedDown, Outcome, PoolView, TokenInput};
use stickyd::balance::{SmoothWrr, id_hash, rendezvous};
use stickyd::config::{self, KeySource};
use stickyd::headers::{self, Forwarded};
use stickyd::state::{Shared, Snapshot};
use stickyd::token::{Claims, KeyRing};

const KEY: &[u8] = b"a-benchmark-key-that-is-32-bytes-long!";
const NOW: u32 = 1_800_000_000;
const SIZES: [usize; 3] = [4, 64, 1024];

/// A signed token value, as a browser would send it back.
fn token_value() -> String {
    let ring = KeyRing::new(&[KEY], "stickyd");
    let claims = Claims {
        backend_tag: ring.backend_tag(0, "app-1"),
        nonce: 0x1234_5678_9abc_def0,
        issued_at: NOW - 600,
        last_seen: NOW - 60,
        backup_tag: [0; 8],
        backup2_tag: [0; 8],
    };
    ring.sign(&claims).as_str().to_string()
}

/// The cookies of a typical browser session on a shop: analytics, consent, the app's own
/// session and CSRF cookies, a preference. With the affinity cookie in the middle, joined with
/// `"; "`, the header is about 400 bytes.
fn browser_cookies(affinity: Option<&str>) -> Vec<String> {
    let mut c = vec![
        "_ga=GA1.1.1734829561.1799912345".to_string(),
        "_ga_Q8ZK3XN2PL=GS1.1.1799998765.4.1.1799999321.0.0.0".to_string(),
        "cookieconsent_status=dismiss".to_string(),
        "sessionid=x7k2m9p4q8w3e6r1t5y0u2i8o4p6a9s3d7f1g5h0j2k4".to_string(),
    ];
    if let Some(t) = affinity {
        c.push(format!("stickyd={t}"));
    }
    c.push("csrftoken=Zq3Wn8Yt5Rb2Lm7Kv4Xp9Hs6Gd1Fc0Ja3Ne8Ub5Ti2Oy7Pw4".to_string());
    c.push(
        "recently_viewed=sku-18342%2Csku-20917%2Csku-11408%2Csku-30561%2Csku-27714%2Csku-19020\
         %2Csku-44120"
            .to_string(),
    );
    c
}

/// One header map holding `cookies` as a single `Cookie` header (HTTP/1.1), or one `Cookie`
/// header per cookie when `split` (HTTP/2 may split them, RFC 9113 section 8.2.3).
fn cookie_map(cookies: &[String], split: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    if split {
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
    } else {
        h.append(
            header::COOKIE,
            HeaderValue::from_str(&cookies.join("; ")).unwrap(),
        );
    }
    h
}

/// A typical HTTP/1.1 page request from Chrome, with its cookies (the affinity cookie is already
/// gone when these rewrites run).
fn browser_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |n: &'static str, v: &str| {
        h.append(
            HeaderName::from_static(n),
            HeaderValue::from_str(v).unwrap(),
        );
    };
    add("host", "shop.example.com");
    add("connection", "keep-alive");
    add(
        "sec-ch-ua",
        "\"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\", \"Google Chrome\";v=\"131\"",
    );
    add("sec-ch-ua-mobile", "?0");
    add("sec-ch-ua-platform", "\"Windows\"");
    add("upgrade-insecure-requests", "1");
    add(
        "user-agent",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
         Chrome/131.0.0.0 Safari/537.36",
    );
    add(
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,\
         image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    );
    add("sec-fetch-site", "same-origin");
    add("sec-fetch-mode", "navigate");
    add("sec-fetch-user", "?1");
    add("sec-fetch-dest", "document");
    add("referer", "https://shop.example.com/category/shoes?page=2");
    add("accept-encoding", "gzip, deflate, br, zstd");
    add("accept-language", "en-GB,en-US;q=0.9,en;q=0.8");
    add("cookie", &browser_cookies(None).join("; "));
    add("priority", "u=0, i");
    h
}

fn cookies(c: &mut Criterion) {
    let tok = token_value();
    let with = browser_cookies(Some(&tok));
    let joined = with.join("; ");
    assert!((380..=420).contains(&joined.len()), "{}", joined.len());
    let cases = [
        (
            "only_affinity",
            cookie_map(&[format!("stickyd={tok}")], false),
        ),
        ("among_others", cookie_map(&with, false)),
        ("absent", cookie_map(&browser_cookies(None), false)),
        ("h2_split", cookie_map(&with, true)),
    ];
    let mut g = c.benchmark_group("take_cookie");
    for (name, base) in &cases {
        // The clone is made outside the timing; the map is returned so its drop is too.
        g.bench_function(*name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut h| {
                    let found = headers::take_cookie(&mut h, black_box("stickyd"));
                    (found, h)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let req = browser_request();
    c.bench_function("strip_hop_by_hop/browser", |b| {
        b.iter_batched(
            || req.clone(),
            |mut h| {
                headers::strip_hop_by_hop(&mut h);
                h
            },
            BatchSize::SmallInput,
        )
    });

    let mut stripped = req.clone();
    headers::strip_hop_by_hop(&mut stripped);
    let host = stripped[header::HOST].clone();
    let via = HeaderValue::from_static("1.1 stickyd");
    let peer = HeaderValue::from_static("203.0.113.57");
    let fwd = Forwarded {
        peer: &peer,
        trusted: false,
        proto: "http",
        host: Some(&host),
        via: Some(&via),
    };
    c.bench_function("add_forwarded/browser", |b| {
        b.iter_batched(
            || stripped.clone(),
            |mut h| {
                headers::add_forwarded(&mut h, black_box(&fwd));
                h
            },
            BatchSize::SmallInput,
        )
    });
}

/// The benchmark key, whatever the key spec names.
struct BenchKey;

impl KeySource for BenchKey {
    fn file(&self, _: &Path) -> std::io::Result<Vec<u8>> {
        Ok(KEY.to_vec())
    }
    fn env(&self, _: &str) -> Option<Vec<u8>> {
        Some(KEY.to_vec())
    }
}

/// The snapshot the server would build for `n` backends `app-0..` with weights 1, 2, 3, 1, 2, 3..
/// (health checks on, every backend up, `on_pinned_down = "repin"`).
fn snapshot(n: usize) -> Arc<Snapshot> {
    let mut text = String::from("[affinity]\nkeys = [\"env:K\"]\non_pinned_down = \"repin\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "[[backend]]\nid = \"app-{i}\"\naddress = \"app-{i}.internal:8080\"\nweight = {}\n",
            1 + i % 3
        ));
    }
    let cfg = config::parse(&text, "bench", Path::new("."), &BenchKey).unwrap();
    let snap = Shared::new(cfg).load();
    assert_eq!(snap.pools[0].policy.on_pinned_down, OnPinnedDown::Repin);
    snap
}

/// A verified token pinned to backend `home`, not due for a refresh at `NOW`.
fn pinned(snap: &Snapshot, home: usize) -> TokenInput {
    let claims = Claims {
        backend_tag: snap.pools[0].view(&snap.backends).tag(home),
        nonce: 0x5eed_f00d_5e55_1011,
        issued_at: NOW - 600,
        last_seen: NOW - 60,
        backup_tag: [0; 8],
        backup2_tag: [0; 8],
    };
    let ring = &snap.pools[0].rings.own;
    let encoded = ring.sign(&claims);
    TokenInput::Valid(ring.verify(encoded.as_str().as_bytes()).unwrap())
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route/new");
    for n in SIZES {
        let snap = snapshot(n);
        let r = affinity::route(
            &snap.pools[0].policy,
            TokenInput::Absent,
            NOW,
            &snap.pools[0].view(&snap.backends),
            &[],
            || 1,
        );
        assert_eq!(r.unwrap().outcome, Outcome::New);
        g.bench_with_input(BenchmarkId::from_parameter(n), &snap, |b, snap| {
            b.iter(|| {
                affinity::route(
                    &snap.pools[0].policy,
                    black_box(TokenInput::Absent),
                    NOW,
                    &snap.pools[0].view(&snap.backends),
                    &[],
                    || black_box(0x0123_4567_89ab_cdef),
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("route/pinned");
    for n in SIZES {
        let snap = snapshot(n);
        let token = pinned(&snap, n / 2);
        let r = affinity::route(
            &snap.pools[0].policy,
            token,
            NOW,
            &snap.pools[0].view(&snap.backends),
            &[],
            || 1,
        )
        .unwrap();
        assert_eq!((r.backend, r.outcome), (n / 2, Outcome::Valid));
        g.bench_with_input(BenchmarkId::from_parameter(n), &snap, |b, snap| {
            b.iter(|| {
                affinity::route(
                    &snap.pools[0].policy,
                    black_box(token),
                    NOW,
                    &snap.pools[0].view(&snap.backends),
                    &[],
                    || 1,
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("route/fallback_repin");
    for n in SIZES {
        let snap = snapshot(n);
        let home = n / 2;
        let live = &snap.backends[home].live;
        while live.health.is_up() {
            live.health.check_result(false, 0);
        }
        let token = pinned(&snap, home);
        let r = affinity::route(
            &snap.pools[0].policy,
            token,
            NOW,
            &snap.pools[0].view(&snap.backends),
            &[],
            || 1,
        )
        .unwrap();
        assert_eq!(r.outcome, Outcome::BackendDown);
        assert!(r.backend != home && r.issue.is_some());
        g.bench_with_input(BenchmarkId::from_parameter(n), &snap, |b, snap| {
            b.iter(|| {
                affinity::route(
                    &snap.pools[0].policy,
                    black_box(token),
                    NOW,
                    &snap.pools[0].view(&snap.backends),
                    &[],
                    || 1,
                )
            })
        });
    }
    g.finish();
}

fn pool(n: usize) -> (Vec<u64>, Vec<u32>) {
    let hashes = (0..n).map(|i| id_hash(&format!("app-{i}"))).collect();
    let weights = (0..n).map(|i| 1 + (i % 3) as u32).collect();
    (hashes, weights)
}

fn balance(c: &mut Criterion) {
    let mut g = c.benchmark_group("rendezvous");
    for n in SIZES {
        let (hashes, weights) = pool(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                rendezvous(
                    black_box(0x5eed_f00d_5e55_1011),
                    black_box(&hashes),
                    black_box(&weights),
                    |_| true,
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("smooth_wrr");
    for n in SIZES {
        let (_, weights) = pool(n);
        let mut wrr = SmoothWrr::new(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| wrr.next(black_box(&weights), |_| true))
        });
    }
    g.finish();
}

criterion_group!(benches, cookies, route, balance);
criterion_main!(benches);
