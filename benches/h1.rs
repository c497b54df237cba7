//! Criterion micro-benchmarks of the HTTP/1 engine's pure per-request work: the client's head
//! parsed, the upstream head written from it (the affinity cookie left out, X-Forwarded-* and
//! Via added), the backend's response head parsed and the client's written; and the pinned
//! backend's lookup by tag, through the production [`Snapshot`].
//!
//! The heads are those of the keep-alive benchmarks: h2load's request (Host, User-Agent,
//! Accept and the affinity cookie alone in its `Cookie` field), wrk's (Host and the cookie),
//! a browser's (a dozen fields, the affinity cookie among seven others), and nginx's
//! five-field response.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use stickyd::affinity::PoolView;
use stickyd::config::{self, KeySource};
use stickyd::h1::parse::{self, Limits};
use stickyd::h1::write::{self, Connection, Forward, Reply};
use stickyd::h1::{Body, Field, Method, RequestHead, ResponseHead};
use stickyd::state::{Shared, Snapshot};

const LIMITS: Limits = Limits {
    max_head: 16 * 1024,
    max_headers: 100,
};

/// A 56-byte token, the length of a signed one.
const TOKEN: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkq";

fn h2load_request() -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nuser-agent: h2load nghttp2/1.52.0\r\n\
         accept: */*\r\ncookie: stickyd={TOKEN}\r\n\r\n"
    )
    .into_bytes()
}

fn wrk_request() -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nCookie: stickyd={TOKEN}\r\n\r\n")
        .into_bytes()
}

fn browser_request() -> Vec<u8> {
    format!(
        "GET /products/shoes?page=2&sort=price HTTP/1.1\r\n\
         Host: shop.example.com\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n\
         Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
         Accept-Language: en-US,en;q=0.5\r\n\
         Accept-Encoding: gzip, deflate, br, zstd\r\n\
         Referer: https://shop.example.com/products\r\n\
         Connection: keep-alive\r\n\
         Cookie: _ga=GA1.1.1734829561.1799912345; _ga_Q8ZK3XN2PL=GS1.1.1799998765.4.1.1799999321.0.0.0; \
         cookieconsent_status=dismiss; sessionid=x7k2m9p4q8w3e6r1t5y0u2i8o4p6a9s3d7f1g5h0j2k4; \
         stickyd={TOKEN}; csrftoken=Zq3Wn8Yt5Rb2Lm7Kv4Xp9Hs6Gd1Fc0Ja3Ne8Ub5Ti2Oy7Pw4; \
         recently_viewed=sku-18342%2Csku-20917%2Csku-11408\r\n\
         Upgrade-Insecure-Requests: 1\r\n\
         Sec-Fetch-Dest: document\r\n\
         Sec-Fetch-Mode: navigate\r\n\
         Sec-Fetch-Site: same-origin\r\n\
         Priority: u=0, i\r\n\r\n"
    )
    .into_bytes()
}

const NGINX_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
    Date: Tue, 01 Dec 2026 23:59:59 GMT\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\
    Connection: keep-alive\r\n\r\n0123456789";

const FORWARD: Forward<'static> = Forward {
    peer: b"127.0.0.1",
    trusted: false,
    proto: b"http",
    via: Some(b"1.1 stickyd"),
    cookie: Some(b"stickyd"),
    other_cookies: &[],
    token_header: None,
    close: false,
};

const REPLY: Reply<'static> = Reply {
    body: Body::Length(10),
    connection: Connection::Default,
    set_cookie: None,
    token: None,
    private: false,
};

// One call of each measured step, kept out of line so that an instruction-counting profiler
// sees how often it ran and what it cost (`valgrind --tool=callgrind` on this binary with
// `--bench --profile-time 1`): the machine's timings drift, the counts do not.

#[inline(never)]
fn parse_request(raw: &[u8], fields: &mut Vec<Field>) -> bool {
    parse::request(raw, &LIMITS, fields).is_ok_and(|h| h.is_some())
}

#[inline(never)]
fn write_request(out: &mut Vec<u8>, raw: &[u8], head: &RequestHead, fields: &[Field]) -> usize {
    out.clear();
    write::request_head(out, raw, head, fields, &FORWARD);
    out.len()
}

#[inline(never)]
fn parse_response(raw: &[u8], fields: &mut Vec<Field>) -> bool {
    parse::response(raw, &LIMITS, Method::Get, fields).is_ok_and(|h| h.is_some())
}

#[inline(never)]
fn write_response(out: &mut Vec<u8>, raw: &[u8], head: &ResponseHead, fields: &[Field]) -> usize {
    out.clear();
    write::response_head(out, raw, head, fields, &REPLY);
    out.len()
}

#[inline(never)]
fn resolve(snap: &Snapshot, key_index: usize, tag: &[u8; 8]) -> Option<usize> {
    snap.pools[0].view(&snap.backends).resolve(key_index, tag)
}

fn request(c: &mut Criterion) {
    for (name, raw) in [
        ("h2load", h2load_request()),
        ("wrk", wrk_request()),
        ("browser", browser_request()),
    ] {
        let mut fields = Vec::new();
        let head = parse::request(&raw, &LIMITS, &mut fields)
            .expect("accepted")
            .expect("complete");
        c.bench_function(&format!("h1/parse_request/{name}"), |b| {
            b.iter(|| black_box(parse_request(black_box(&raw), &mut fields)))
        });
        let mut out = Vec::new();
        write::request_head(&mut out, &raw, &head, &fields, &FORWARD);
        assert!(!out.windows(8).any(|w| w == b"stickyd="), "cookie left out");
        c.bench_function(&format!("h1/write_request/{name}"), |b| {
            b.iter(|| black_box(write_request(&mut out, black_box(&raw), &head, &fields)))
        });
    }
}

fn response(c: &mut Criterion) {
    let mut fields = Vec::new();
    let head = parse::response(NGINX_RESPONSE, &LIMITS, Method::Get, &mut fields)
        .expect("accepted")
        .expect("complete");
    assert_eq!(head.body, Body::Length(10));
    c.bench_function("h1/parse_response/nginx", |b| {
        b.iter(|| black_box(parse_response(black_box(NGINX_RESPONSE), &mut fields)))
    });
    let mut out = Vec::new();
    c.bench_function("h1/write_response/nginx", |b| {
        b.iter(|| {
            black_box(write_response(
                &mut out,
                black_box(NGINX_RESPONSE),
                &head,
                &fields,
            ))
        })
    });
}

/// The benchmark key, whatever the key spec names.
struct BenchKey;

impl KeySource for BenchKey {
    fn file(&self, _: &Path) -> std::io::Result<Vec<u8>> {
        Ok(b"a-benchmark-key-that-is-32-bytes-long!".to_vec())
    }
    fn env(&self, _: &str) -> Option<Vec<u8>> {
        Some(b"a-benchmark-key-that-is-32-bytes-long!".to_vec())
    }
}

/// The snapshot the server would build for 4 backends and a ring of two keys.
fn snapshot() -> Arc<Snapshot> {
    let mut text = String::from("[affinity]\nkeys = [\"env:K\", \"env:L\"]\n");
    for i in 0..4 {
        text.push_str(&format!(
            "[[backend]]\nid = \"app-{i}\"\naddress = \"app-{i}.internal:8080\"\n"
        ));
    }
    let cfg = config::parse(&text, "bench", Path::new("."), &BenchKey).expect("config");
    Shared::new(cfg).load()
}

fn by_tag(c: &mut Criterion) {
    let snap = snapshot();
    let tag = snap.pools[0].view(&snap.backends).tag(2);
    assert_eq!(resolve(&snap, 0, &tag), Some(2));
    c.bench_function("h1/by_tag", |b| {
        b.iter(|| black_box(resolve(&snap, black_box(0), black_box(&tag))))
    });
}

criterion_group!(benches, request, response, by_tag);
criterion_main!(benches);
