use super::testing::{request, response, span};
use super::*;
use crate::headers::{Forwarded, add_forwarded, add_set_cookie, strip_hop_by_hop, take_cookie};
use http::header::{self, HeaderMap, HeaderValue};
use proptest::prelude::*;

fn fwd() -> Forward<'static> {
    Forward {
        peer: b"192.0.2.7",
        trusted: false,
        proto: b"http",
        via: None,
        cookie: None,
        token_header: None,
        close: false,
    }
}

fn write_req(method: &str, target: &str, pairs: &[(&str, &str)], f: &Forward<'_>) -> String {
    let (buf, head, fields) = request(method, target, pairs);
    let mut out = Vec::new();
    request_head(&mut out, &buf, &head, &fields, f);
    String::from_utf8(out).unwrap()
}

/// The fields of a written head, parsed back with httparse, as (lowercase name, value).
fn parsed(out: &[u8]) -> Vec<(String, String)> {
    let mut h = [httparse::EMPTY_HEADER; 64];
    let n = if out.starts_with(b"HTTP/") {
        let mut r = httparse::Response::new(&mut h);
        assert!(r.parse(out).unwrap().is_complete(), "a complete head");
        r.headers.len()
    } else {
        let mut r = httparse::Request::new(&mut h);
        assert!(r.parse(out).unwrap().is_complete(), "a complete head");
        r.headers.len()
    };
    h[..n]
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8(h.value.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn a_plain_request_is_copied_with_forwarded_fields_added_at_the_end() {
    let out = write_req(
        "GET",
        "/a?b=1",
        &[
            ("Host", "shop.example"),
            ("Accept", "*/*"),
            ("x-Mixed", "Case"),
        ],
        &Forward {
            via: Some(b"1.1 stickyd"),
            ..fwd()
        },
    );
    assert_eq!(
        out,
        "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\nx-Mixed: Case\r\n\
         X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: shop.example\r\nVia: 1.1 stickyd\r\n\r\n"
    );
}

#[test]
fn an_absolute_form_target_is_sent_in_origin_form_with_its_authority_as_host() {
    let out = write_req(
        "GET",
        "http://real.example:8080/p?q",
        &[("Host", "other.example"), ("Accept", "*/*")],
        &fwd(),
    );
    assert!(
        out.starts_with("GET /p?q HTTP/1.1\r\nHost: real.example:8080\r\nAccept: */*\r\n"),
        "{out}"
    );
    let f = parsed(out.as_bytes());
    assert_eq!(values(&f, "host"), ["real.example:8080"], "one host only");
    assert_eq!(values(&f, "x-forwarded-host"), ["real.example:8080"]);
}

#[test]
fn hop_by_hop_fields_and_the_names_connection_lists_are_left_out() {
    let out = write_req(
        "GET",
        "/",
        &[
            ("Host", "a"),
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "s"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "x"),
            ("Upgrade", "websocket"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Kept", "k"),
        ],
        &fwd(),
    );
    let f = parsed(out.as_bytes());
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "host",
            "x-kept",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host"
        ]
    );
}

#[test]
fn the_affinity_cookie_is_left_out_and_other_cookies_pass_in_order() {
    let f = Forward {
        cookie: Some(b"sid"),
        ..fwd()
    };
    let out = write_req(
        "GET",
        "/",
        &[
            ("Host", "a"),
            ("Cookie", "a=1;sid=T;  b=two=2"),
            ("Cookie", "sid=ONLY"),
            ("cookie", "c=3;sid2=4"),
        ],
        &f,
    );
    assert!(
        out.contains("\r\nCookie: a=1; b=two=2\r\ncookie: c=3;sid2=4\r\n"),
        "a field holding it is rewritten, one left empty is dropped, others pass as received: {out}"
    );
    assert!(!out.contains("sid="));
}

#[test]
fn cookies_pass_untouched_outside_cookie_mode() {
    let out = write_req("GET", "/", &[("Cookie", "sid=T; a=1")], &fwd());
    assert!(out.contains("\r\nCookie: sid=T; a=1\r\n"));
}

#[test]
fn the_token_header_is_left_out_whatever_its_case() {
    let f = Forward {
        token_header: Some(b"x-session"),
        ..fwd()
    };
    let out = write_req(
        "GET",
        "/",
        &[
            ("X-Session", "TOKEN"),
            ("x-session", "again"),
            ("X-Other", "o"),
        ],
        &f,
    );
    assert!(!out.to_ascii_lowercase().contains("x-session"), "{out}");
    assert!(out.contains("X-Other: o\r\n"));
}

#[test]
fn expect_100_continue_is_answered_here_and_not_forwarded() {
    let out = write_req(
        "POST",
        "/",
        &[("Expect", "100-Continue"), ("Content-Length", "3")],
        &fwd(),
    );
    assert!(!out.contains("Expect"), "{out}");
    assert!(out.contains("Content-Length: 3\r\n"), "the length passes");
    let out = write_req("POST", "/", &[("Expect", "something-else")], &fwd());
    assert!(
        out.contains("Expect: something-else\r\n"),
        "other expectations pass"
    );
}

#[test]
fn an_untrusted_peer_cannot_spoof_forwarded_fields() {
    let out = write_req(
        "GET",
        "/",
        &[
            ("Host", "shop.example"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil"),
        ],
        &fwd(),
    );
    let f = parsed(out.as_bytes());
    assert_eq!(values(&f, "x-forwarded-for"), ["192.0.2.7"]);
    assert_eq!(values(&f, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&f, "x-forwarded-host"), ["shop.example"]);
}

#[test]
fn a_trusted_proxy_is_appended_to_and_its_proto_and_host_are_kept() {
    let f = Forward {
        peer: b"10.0.0.9",
        trusted: true,
        via: Some(b"1.1 stickyd"),
        ..fwd()
    };
    let out = write_req(
        "GET",
        "/",
        &[
            ("Host", "shop.example"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-For", "5.6.7.8"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "front.example"),
            ("Via", "1.1 edge"),
        ],
        &f,
    );
    let fl = parsed(out.as_bytes());
    assert_eq!(
        values(&fl, "x-forwarded-for"),
        ["1.2.3.4, 5.6.7.8, 10.0.0.9"]
    );
    assert_eq!(values(&fl, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&fl, "x-forwarded-host"), ["front.example"]);
    assert_eq!(values(&fl, "via"), ["1.1 edge", "1.1 stickyd"]);
    let out = write_req("GET", "/", &[("Host", "h")], &f);
    let fl = parsed(out.as_bytes());
    assert_eq!(
        values(&fl, "x-forwarded-for"),
        ["10.0.0.9"],
        "nothing to append to"
    );
    assert_eq!(values(&fl, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&fl, "x-forwarded-host"), ["h"]);
}

#[test]
fn connection_cannot_remove_or_smuggle_the_fields_stickyd_writes() {
    let f = Forward {
        trusted: true,
        via: Some(b"1.1 stickyd"),
        ..fwd()
    };
    let out = write_req(
        "GET",
        "/",
        &[
            (
                "Connection",
                "close, X-Forwarded-For, X-Forwarded-Proto, Via",
            ),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
        ],
        &f,
    );
    let fl = parsed(out.as_bytes());
    assert_eq!(
        values(&fl, "x-forwarded-for"),
        ["192.0.2.7"],
        "the listed one is not vouched for"
    );
    assert_eq!(values(&fl, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&fl, "via"), ["1.1 stickyd"]);
    assert!(
        values(&fl, "x-forwarded-host").is_empty(),
        "no host, no X-Forwarded-Host"
    );
}

#[test]
fn a_chunked_body_is_announced_again_since_the_received_coding_is_hop_by_hop() {
    let out = write_req(
        "POST",
        "/",
        &[("Host", "a"), ("Transfer-Encoding", "chunked")],
        &fwd(),
    );
    let fl = parsed(out.as_bytes());
    assert_eq!(values(&fl, "transfer-encoding"), ["chunked"]);
    assert!(out.ends_with("Transfer-Encoding: chunked\r\n\r\n"));
}

#[test]
fn a_length_is_written_from_the_framing_so_connection_cannot_unframe_the_body() {
    let out = write_req(
        "POST",
        "/",
        &[
            ("Host", "a"),
            ("Connection", "content-length"),
            ("Content-Length", "5"),
        ],
        &fwd(),
    );
    let fl = parsed(out.as_bytes());
    assert_eq!(values(&fl, "content-length"), ["5"]);
    let out = write_req("POST", "/", &[("Content-Length", "5")], &fwd());
    assert_eq!(
        values(&parsed(out.as_bytes()), "content-length"),
        ["5"],
        "one, not two"
    );
    let (buf, head, mut fields) = response(
        200,
        "OK",
        &[("Connection", "content-length"), ("Content-Length", "7")],
    );
    fields[1].hop = true;
    let mut out = Vec::new();
    response_head(&mut out, &buf, &head, &fields, &reply(Body::Length(7)));
    assert_eq!(values(&parsed(&out), "content-length"), ["7"]);
}

#[test]
fn close_and_upgrade_are_written_last_and_an_upgrade_wins() {
    let close = Forward {
        close: true,
        ..fwd()
    };
    let out = write_req("GET", "/", &[("Host", "a")], &close);
    assert!(out.ends_with("Connection: close\r\n\r\n"), "{out}");

    let (buf, mut head, fields) = request(
        "GET",
        "/ws",
        &[
            ("Host", "a"),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "k"),
        ],
    );
    head.upgrade = Some(span(&buf, "websocket"));
    let mut out = Vec::new();
    request_head(&mut out, &buf, &head, &fields, &close);
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.ends_with("Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
        "{out}"
    );
    let fl = parsed(out.as_bytes());
    assert_eq!(values(&fl, "connection"), ["upgrade"]);
    assert_eq!(values(&fl, "upgrade"), ["websocket"]);
    assert_eq!(values(&fl, "sec-websocket-key"), ["k"]);
}

#[test]
fn a_reused_buffer_is_appended_to_and_does_not_grow_again() {
    let (buf, head, fields) = request("GET", "/", &[("Host", "a"), ("Cookie", "sid=1; b=2")]);
    let f = Forward {
        cookie: Some(b"sid"),
        ..fwd()
    };
    let mut out = b"kept".to_vec();
    request_head(&mut out, &buf, &head, &fields, &f);
    assert!(out.starts_with(b"keptGET / HTTP/1.1\r\n"));
    out.clear();
    request_head(&mut out, &buf, &head, &fields, &f);
    let cap = out.capacity();
    out.clear();
    request_head(&mut out, &buf, &head, &fields, &f);
    assert_eq!(out.capacity(), cap);
}

fn write_resp(status: u16, reason: &str, pairs: &[(&str, &str)], r: &Reply<'_>) -> String {
    let (buf, head, fields) = response(status, reason, pairs);
    let mut out = Vec::new();
    response_head(&mut out, &buf, &head, &fields, r);
    String::from_utf8(out).unwrap()
}

fn reply(body: Body) -> Reply<'static> {
    Reply {
        body,
        connection: Connection::Default,
        set_cookie: None,
        token: None,
        private: false,
    }
}

#[test]
fn the_status_line_keeps_the_reason_as_received() {
    let out = write_resp(
        404,
        "Not Here",
        &[("Content-Length", "0")],
        &reply(Body::None),
    );
    assert_eq!(out, "HTTP/1.1 404 Not Here\r\nContent-Length: 0\r\n\r\n");
    let out = write_resp(200, "", &[], &reply(Body::Close));
    assert_eq!(
        out, "HTTP/1.1 200 \r\n\r\n",
        "an empty reason keeps its space"
    );
}

#[test]
fn hop_by_hop_fields_are_left_out_of_responses() {
    let out = write_resp(
        200,
        "OK",
        &[
            ("Connection", "close, X-Internal"),
            ("X-Internal", "i"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Trailer", "X-T"),
            ("Server", "nginx"),
        ],
        &reply(Body::Chunked),
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
}

#[test]
fn content_length_follows_the_client_side_framing() {
    let pairs = [("Content-Length", "10"), ("X-A", "a")];
    let keep = write_resp(200, "OK", &pairs, &reply(Body::Length(10)));
    assert!(keep.contains("Content-Length: 10\r\n"));
    let head_304 = write_resp(304, "Not Modified", &pairs, &reply(Body::None));
    assert!(
        head_304.contains("Content-Length: 10\r\n"),
        "HEAD and 304 keep it as received"
    );
    let chunked = write_resp(200, "OK", &pairs, &reply(Body::Chunked));
    assert!(!chunked.contains("Content-Length"));
    assert!(chunked.contains("Transfer-Encoding: chunked\r\n"));
    let close = write_resp(200, "OK", &pairs, &reply(Body::Close));
    assert!(!close.contains("Content-Length") && !close.contains("Transfer-Encoding"));
}

#[test]
fn an_issued_cookie_is_added_beside_the_backends_and_makes_the_response_private() {
    let r = Reply {
        set_cookie: Some(b"sid=T; Path=/"),
        private: true,
        ..reply(Body::Length(0))
    };
    let out = write_resp(200, "OK", &[("Set-Cookie", "app=1")], &r);
    let fl = parsed(out.as_bytes());
    assert_eq!(values(&fl, "set-cookie"), ["app=1", "sid=T; Path=/"]);
    assert_eq!(values(&fl, "cache-control"), ["private"]);
    let out = write_resp(200, "OK", &[("Cache-Control", "no-store")], &r);
    assert_eq!(
        values(&parsed(out.as_bytes()), "cache-control"),
        ["no-store"]
    );
}

#[test]
fn the_token_header_replaces_any_the_backend_sent() {
    let r = Reply {
        token: Some((b"X-Session", b"TOKEN")),
        private: true,
        ..reply(Body::None)
    };
    let out = write_resp(200, "OK", &[("x-session", "forged"), ("X-A", "a")], &r);
    let fl = parsed(out.as_bytes());
    assert_eq!(values(&fl, "x-session"), ["TOKEN"]);
    assert_eq!(values(&fl, "cache-control"), ["private"]);
}

#[test]
fn the_connection_field_is_the_one_asked_for() {
    for (c, want) in [
        (Connection::Default, "HTTP/1.1 200 OK\r\n\r\n"),
        (
            Connection::Close,
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
        ),
        (
            Connection::KeepAlive,
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n",
        ),
    ] {
        let r = Reply {
            connection: c,
            ..reply(Body::None)
        };
        assert_eq!(write_resp(200, "OK", &[("Connection", "close")], &r), want);
    }
    let r = Reply {
        connection: Connection::Upgrade(b"websocket"),
        ..reply(Body::None)
    };
    let out = write_resp(
        101,
        "Switching Protocols",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "upgrade"),
            ("Sec-WebSocket-Accept", "x"),
        ],
        &r,
    );
    assert_eq!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\
         Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    );
}

#[test]
fn an_error_response_is_whole_and_says_the_same_as_the_header_map_path() {
    let mut out = Vec::new();
    error_response(&mut out, 503, "no backend available\n", Some(2), false);
    assert_eq!(
        out,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
          Cache-Control: no-store\r\nContent-Length: 21\r\nRetry-After: 2\r\n\r\n\
          no backend available\n"
    );
    out.clear();
    error_response(&mut out, 400, "bad\n", None, true);
    let fl = parsed(&out);
    assert_eq!(values(&fl, "connection"), ["close"]);
    assert!(values(&fl, "retry-after").is_empty());
    assert!(out.ends_with(b"\r\n\r\nbad\n"));
}

#[test]
fn the_interim_continue_is_a_complete_1xx_head() {
    let mut h = [httparse::EMPTY_HEADER; 1];
    let mut r = httparse::Response::new(&mut h);
    assert_eq!(
        r.parse(CONTINUE),
        Ok(httparse::Status::Complete(CONTINUE.len()))
    );
    assert_eq!(r.code, Some(100));
}

/// The header map path of today on the same input: the affinity input taken, hop-by-hop out,
/// the authority as Host, X-Forwarded-* and Via (`proxy::request::rewrite_head`).
fn map_path(
    pairs: &[(String, String)],
    authority: Option<&str>,
    f: &Forward<'_>,
) -> Vec<(String, String)> {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    if let Some(c) = f.cookie {
        take_cookie(&mut h, std::str::from_utf8(c).unwrap());
    }
    if let Some(t) = f.token_header {
        h.remove(std::str::from_utf8(t).unwrap());
    }
    strip_hop_by_hop(&mut h);
    if let Some(a) = authority {
        h.insert(header::HOST, HeaderValue::from_str(a).unwrap());
    }
    let host = h.get(header::HOST).cloned();
    let via = f.via.map(|v| HeaderValue::from_bytes(v).unwrap());
    add_forwarded(
        &mut h,
        &Forwarded {
            peer: &HeaderValue::from_bytes(f.peer).unwrap(),
            trusted: f.trusted,
            proto: if f.proto == b"https" { "https" } else { "http" },
            host: host.as_ref(),
            via: via.as_ref(),
        },
    );
    let mut out: Vec<(String, String)> = h
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        // The one rule the engine adds: stickyd answers `100-continue` itself.
        .filter(|(n, v)| !(n == "expect" && v.eq_ignore_ascii_case("100-continue")))
        .collect();
    out.sort();
    out
}

const NAMES: [&str; 20] = [
    "Host",
    "cookie",
    "Cookie",
    "X-Forwarded-For",
    "x-forwarded-proto",
    "X-Forwarded-Host",
    "Via",
    "Connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Upgrade",
    "Proxy-Connection",
    "X-Session",
    "Accept",
    "X-A",
    "Expect",
    "Content-Length",
    "Transfer-Encoding",
    "x-b",
];

fn cookie_value() -> impl Strategy<Value = String> {
    let pair = prop_oneof![
        Just("sid=T".to_owned()),
        Just("sid=\"Q\"".to_owned()),
        Just("a=1".to_owned()),
        Just("Sid=c".to_owned()),
        Just("sid2=x".to_owned()),
        Just("flag".to_owned()),
        Just("b=two=2".to_owned()),
        Just("e=".to_owned()),
    ];
    (
        prop::collection::vec(pair, 1..5),
        prop_oneof![Just("; "), Just(";"), Just(" ;  ")],
    )
        .prop_map(|(p, sep)| p.join(sep))
}

fn value_for(name: &str) -> BoxedStrategy<String> {
    match name.to_ascii_lowercase().as_str() {
        "cookie" => cookie_value().boxed(),
        "connection" => prop::collection::vec(
            prop::sample::select(vec![
                "close",
                "keep-alive",
                "upgrade",
                "X-A",
                "cookie",
                "x-forwarded-for",
                "X-Forwarded-Proto",
                "x-forwarded-host",
                "via",
                "host",
                "x-session",
            ]),
            1..3,
        )
        .prop_map(|t| t.join(", "))
        .boxed(),
        "x-forwarded-for" => prop_oneof![
            Just("1.2.3.4".to_owned()),
            Just("10.0.0.1, 192.0.2.9".to_owned()),
            Just("unknown".to_owned()),
        ]
        .boxed(),
        "expect" => prop_oneof![Just("100-continue".to_owned()), Just("other".to_owned())].boxed(),
        _ => "[a-z0-9./:=,;-]([a-z0-9 ./:=,;-]{0,8}[a-z0-9./:=,;-])?".boxed(),
    }
}

fn request_fields() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        prop::sample::select(NAMES.to_vec())
            .prop_flat_map(|n| value_for(n).prop_map(move |v| (n.to_owned(), v))),
        0..14,
    )
    .prop_map(|mut pairs| {
        // The parser refuses a second Host.
        let mut host = false;
        pairs.retain(|(n, _)| !(n == "Host" && std::mem::replace(&mut host, true)));
        pairs
    })
}

proptest! {
    #[test]
    fn the_written_request_head_holds_exactly_what_the_header_map_path_sends(
        pairs in request_fields(),
        absolute in any::<bool>(),
        trusted in any::<bool>(),
        mode in 0..3u8,
        via in any::<bool>(),
        https in any::<bool>(),
    ) {
        let f = Forward {
            peer: b"192.0.2.7",
            trusted,
            proto: if https { b"https" } else { b"http" },
            via: via.then_some(&b"1.1 stickyd"[..]),
            cookie: (mode == 1).then_some(&b"sid"[..]),
            token_header: (mode == 2).then_some(&b"x-session"[..]),
            close: false,
        };
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let target = if absolute { "http://abs.example:81/p" } else { "/p" };
        let (buf, mut head, fields) = request("GET", target, &refs);
        head.body = Body::None;
        let mut out = Vec::new();
        request_head(&mut out, &buf, &head, &fields, &f);
        prop_assert!(out.starts_with(b"GET /p HTTP/1.1\r\n"));
        let mut got = parsed(&out);

        for hop in ["connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection", "transfer-encoding"] {
            prop_assert!(values(&got, hop).is_empty(), "{} passed", hop);
        }
        let hosts = values(&got, "host");
        prop_assert!(hosts.len() <= 1);
        if absolute {
            prop_assert_eq!(hosts, ["abs.example:81"]);
        }
        let xff = values(&got, "x-forwarded-for");
        prop_assert_eq!(xff.len(), 1);
        prop_assert!(xff[0].ends_with("192.0.2.7"));
        if !trusted {
            prop_assert_eq!(xff[0], "192.0.2.7");
            prop_assert_eq!(values(&got, "x-forwarded-proto"), [if https { "https" } else { "http" }]);
        }
        if mode == 1 {
            for c in values(&got, "cookie") {
                prop_assert!(!crate::headers::holds_cookie(c.as_bytes(), b"sid"), "{}", c);
            }
            // Every other cookie passes, in order.
            let others = |cs: Vec<&str>| -> Vec<String> {
                cs.iter()
                    .flat_map(|c| c.split(';'))
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty() && p.split('=').next().map(str::trim) != Some("sid"))
                    .map(|p| p.replace(' ', ""))
                    .collect()
            };
            let sent: Vec<&str> = pairs
                .iter()
                .zip(&fields)
                .filter(|(_, fl)| fl.kind == Name::Cookie && !fl.hop)
                .map(|((_, v), _)| v.as_str())
                .collect();
            prop_assert_eq!(others(values(&got, "cookie")), others(sent));
        }
        if mode == 2 {
            prop_assert!(values(&got, "x-session").is_empty());
        }

        got.sort();
        let want = map_path(&pairs, absolute.then_some("abs.example:81"), &f);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn the_written_response_head_holds_what_the_header_map_path_sends(
        pairs in request_fields(),
        cookie in any::<bool>(),
    ) {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let (buf, head, fields) = response(200, "OK", &refs);
        let r = Reply {
            // Received Content-Length fields kept as they are, as the header map keeps them.
            body: Body::None,
            connection: Connection::Default,
            set_cookie: cookie.then_some(&b"sid=T; Path=/"[..]),
            token: None,
            private: cookie,
        };
        let mut out = Vec::new();
        response_head(&mut out, &buf, &head, &fields, &r);
        let mut got = parsed(&out);
        got.sort();

        let mut h = HeaderMap::new();
        for (n, v) in &pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        strip_hop_by_hop(&mut h);
        if cookie {
            add_set_cookie(&mut h, HeaderValue::from_static("sid=T; Path=/"));
        }
        let mut want: Vec<(String, String)> = h
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        want.sort();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn numbers_are_written_in_decimal(n in any::<u64>()) {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        prop_assert_eq!(out, n.to_string().into_bytes());
    }
}

// The writers as they were before received lines were copied as ranges (each field in three
// parts, the Cookie field always split into pairs): what they send is what is sent now.

fn request_head_reference(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    fields: &[Field],
    f: &Forward<'_>,
) {
    out.reserve(head.len + 160);
    out.extend_from_slice(head.method_span.of(buf));
    out.push(b' ');
    out.extend_from_slice(head.path.of(buf));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = head.authority.map(|a| a.of(buf));
    if let Some(a) = authority {
        field(out, b"Host", a);
    }
    let mut host = authority;
    let (mut xff, mut xfp, mut xfh) = (false, false, false);
    for fl in fields {
        if fl.hop {
            continue;
        }
        let name = fl.name.of(buf);
        let value = fl.value.of(buf);
        if f.token_header.is_some_and(|t| name.eq_ignore_ascii_case(t)) {
            continue;
        }
        match fl.kind {
            Name::Host => {
                if authority.is_some() {
                    continue;
                }
                host.get_or_insert(value);
            }
            Name::Cookie => {
                if let Some(c) = f.cookie
                    && headers::holds_cookie(value, c)
                {
                    let mark = out.len();
                    out.extend_from_slice(name);
                    out.extend_from_slice(b": ");
                    if headers::write_without_cookie(out, value, c) {
                        out.extend_from_slice(b"\r\n");
                    } else {
                        out.truncate(mark);
                    }
                    continue;
                }
            }
            // Written from the number below: a `Connection` naming it cannot unframe the body.
            Name::ContentLength if matches!(head.body, Body::Length(_)) => continue,
            Name::Expect if value.eq_ignore_ascii_case(b"100-continue") => continue,
            Name::XForwardedFor => {
                xff = true;
                continue;
            }
            Name::XForwardedProto => {
                xfp = true;
                if !f.trusted {
                    continue;
                }
            }
            Name::XForwardedHost => {
                xfh = true;
                if !f.trusted {
                    continue;
                }
            }
            _ => {}
        }
        field(out, name, value);
    }

    out.extend_from_slice(b"X-Forwarded-For: ");
    let received = fields
        .iter()
        .filter(|fl| fl.kind == Name::XForwardedFor && !fl.hop)
        .map(|fl| fl.value.of(buf));
    headers::write_forwarded_for(out, f.trusted && xff, received, f.peer);
    out.extend_from_slice(b"\r\n");
    if !headers::keeps_forwarded(f.trusted, xfp) {
        field(out, b"X-Forwarded-Proto", f.proto);
    }
    if !headers::keeps_forwarded(f.trusted, xfh)
        && let Some(h) = host
    {
        field(out, b"X-Forwarded-Host", h);
    }
    if let Some(via) = f.via {
        field(out, b"Via", via);
    }
    framing(out, head.body);
    if let Some(proto) = head.upgrade {
        // An upgrade goes on a connection of its own: `close` would say nothing more.
        out.extend_from_slice(b"Connection: upgrade\r\n");
        field(out, b"Upgrade", proto.of(buf));
    } else if f.close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn response_head_reference(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    fields: &[Field],
    r: &Reply<'_>,
) {
    out.reserve(head.len + 160);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason.of(buf));
    out.extend_from_slice(b"\r\n");
    let drop_length = matches!(r.body, Body::Length(_) | Body::Chunked | Body::Close);
    let mut cache_control = false;
    for fl in fields {
        if fl.hop {
            continue;
        }
        let name = fl.name.of(buf);
        match fl.kind {
            Name::ContentLength if drop_length => continue,
            Name::CacheControl => cache_control = true,
            _ => {}
        }
        if r.token.is_some_and(|(t, _)| name.eq_ignore_ascii_case(t)) {
            continue;
        }
        field(out, name, fl.value.of(buf));
    }
    if let Some((name, value)) = r.token {
        field(out, name, value);
    }
    if let Some(c) = r.set_cookie {
        field(out, b"Set-Cookie", c);
    }
    if r.private && !cache_control {
        out.extend_from_slice(b"Cache-Control: private\r\n");
    }
    framing(out, r.body);
    match r.connection {
        Connection::Default => {}
        Connection::Close => out.extend_from_slice(b"Connection: close\r\n"),
        Connection::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Connection::Upgrade(proto) => {
            out.extend_from_slice(b"Connection: upgrade\r\n");
            field(out, b"Upgrade", proto);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Separators a received line may have around its value (httparse trims the value).
const SEPARATORS: &[(&str, &str)] = &[
    (": ", ""),
    (":", ""),
    (":  ", ""),
    (":\t", " "),
    (": ", " \t"),
];

/// Lines a generated head picks from.
const LINES: &[(&str, &str)] = &[
    ("User-Agent", "h2load nghttp2/1.52.0"),
    ("Accept", "*/*"),
    ("cookie", "sid=TOKEN"),
    ("Cookie", " sid = TOKEN "),
    ("Cookie", "a=1; sid=TOKEN; b"),
    ("Cookie", "sid=1; sid=2"),
    ("Cookie", "sidx=1"),
    ("Cookie", "a=1;b=2"),
    ("Cookie", "sid"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "front"),
    ("Connection", "x-a"),
    ("X-A", "1"),
    ("X-Token", "t"),
    ("Expect", "100-continue"),
    ("Content-Length", "0"),
    ("Cache-Control", "no-cache"),
    ("Empty", ""),
];

/// A request head from picked lines, each with picked separators, parsed by the engine.
fn picked(picks: &[(usize, usize)], response: bool) -> Option<(Vec<u8>, Vec<Field>)> {
    let mut raw = if response {
        String::from("HTTP/1.1 200 OK\r\n")
    } else {
        String::from("GET / HTTP/1.1\r\nHost: x\r\n")
    };
    for &(line, sep) in picks {
        let (n, v) = LINES[line % LINES.len()];
        let (before, after) = SEPARATORS[sep % SEPARATORS.len()];
        raw.push_str(&format!("{n}{before}{v}{after}\r\n"));
    }
    raw.push_str("\r\n");
    let raw = raw.into_bytes();
    let limits = crate::h1::parse::Limits {
        max_head: 8192,
        max_headers: 64,
    };
    let mut fields = Vec::new();
    let ok = if response {
        crate::h1::parse::response(&raw, &limits, super::super::Method::Get, &mut fields)
            .is_ok_and(|h| h.is_some())
    } else {
        crate::h1::parse::request(&raw, &limits, &mut fields).is_ok_and(|h| h.is_some())
    };
    ok.then_some((raw, fields))
}

proptest! {
    #[test]
    fn received_lines_copied_as_ranges_send_the_bytes_the_three_part_writer_sent(
        picks in prop::collection::vec((0..64usize, 0..16usize), 0..8),
        trusted in any::<bool>(),
        mode in 0..3usize,
        close in any::<bool>(),
    ) {
        let Some((buf, fields)) = picked(&picks, false) else {
            return Ok(());
        };
        let mut limits_fields = Vec::new();
        let limits = crate::h1::parse::Limits { max_head: 8192, max_headers: 64 };
        let head = crate::h1::parse::request(&buf, &limits, &mut limits_fields).unwrap().unwrap();
        let f = Forward {
            peer: b"192.0.2.7",
            trusted,
            proto: b"http",
            via: Some(b"1.1 stickyd"),
            cookie: (mode == 1).then_some(b"sid".as_slice()),
            token_header: (mode == 2).then_some(b"x-token".as_slice()),
            close,
        };
        let (mut new, mut old) = (b"prefix".to_vec(), b"prefix".to_vec());
        request_head(&mut new, &buf, &head, &fields, &f);
        request_head_reference(&mut old, &buf, &head, &fields, &f);
        prop_assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(&old));
    }

    #[test]
    fn received_response_lines_copied_as_ranges_send_the_same_bytes(
        picks in prop::collection::vec((0..64usize, 0..16usize), 0..8),
        body in 0..4usize,
        token in any::<bool>(),
        private in any::<bool>(),
    ) {
        let Some((buf, fields)) = picked(&picks, true) else {
            return Ok(());
        };
        let mut f2 = Vec::new();
        let limits = crate::h1::parse::Limits { max_head: 8192, max_headers: 64 };
        let head = crate::h1::parse::response(&buf, &limits, super::super::Method::Get, &mut f2)
            .unwrap()
            .unwrap();
        let r = Reply {
            body: [Body::None, Body::Length(3), Body::Chunked, Body::Close][body],
            connection: Connection::Default,
            set_cookie: Some(b"sid=T"),
            token: token.then_some((b"X-Token".as_slice(), b"T".as_slice())),
            private,
        };
        let (mut new, mut old) = (Vec::new(), Vec::new());
        response_head(&mut new, &buf, &head, &fields, &r);
        response_head_reference(&mut old, &buf, &head, &fields, &r);
        prop_assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(&old));
    }
}

#[test]
fn a_cookie_field_holding_only_the_affinity_cookie_is_dropped_and_the_rest_copied_whole() {
    let (buf, fields) = picked(&[(0, 0), (2, 0), (1, 0)], false).unwrap();
    let mut f = Vec::new();
    let limits = crate::h1::parse::Limits {
        max_head: 8192,
        max_headers: 64,
    };
    let head = crate::h1::parse::request(&buf, &limits, &mut f)
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    let fw = Forward {
        cookie: Some(b"sid"),
        ..fwd()
    };
    request_head(&mut out, &buf, &head, &fields, &fw);
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.starts_with(
            "GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: h2load nghttp2/1.52.0\r\nAccept: */*\r\nX-Forwarded-For: "
        ),
        "{out}"
    );
    assert!(!out.contains("sid"), "{out}");
}

#[test]
fn replication_fields_go_before_the_blank_line_and_a_clients_copies_never_pass() {
    let (buf, head, fields) = request(
        "GET",
        "/",
        &[
            ("Host", "h"),
            ("X-Stickyd-Takeover", "forged"),
            ("x-stickyd-backup", "z=10.0.0.1:1"),
            ("X-STICKYD-BACKEND", "z"),
        ],
    );
    let mut out = Vec::new();
    request_head(&mut out, &buf, &head, &fields, &fwd());
    let plain = String::from_utf8(out.clone()).unwrap();
    assert!(!plain.to_ascii_lowercase().contains("x-stickyd"), "{plain}");
    let len = out.len();
    replica_fields(
        &mut out,
        len,
        &Replica {
            backend: b"app-1",
            backups: [Some(b"app-3=10.0.0.13:7000"), Some(b"app-4=10.0.0.14:7000")],
            takeover: true,
        },
    );
    let f = parsed(&out);
    assert_eq!(values(&f, "x-stickyd-backend"), ["app-1"]);
    assert_eq!(
        values(&f, "x-stickyd-backup"),
        ["app-3=10.0.0.13:7000, app-4=10.0.0.14:7000"]
    );
    assert_eq!(values(&f, "x-stickyd-takeover"), ["app-1"]);
    assert!(out.ends_with(b"\r\n\r\n") && !out.ends_with(b"\r\n\r\n\r\n"));
    // One backup, no takeover; written again over the same head (a retry).
    out.truncate(len);
    replica_fields(
        &mut out,
        len,
        &Replica {
            backend: b"app-2",
            backups: [Some(b"app-1=h:1"), None],
            takeover: false,
        },
    );
    let f = parsed(&out);
    assert_eq!(values(&f, "x-stickyd-backend"), ["app-2"]);
    assert_eq!(values(&f, "x-stickyd-backup"), ["app-1=h:1"]);
    assert!(values(&f, "x-stickyd-takeover").is_empty());
    // No usable backup: only the backend is named.
    out.truncate(len);
    replica_fields(
        &mut out,
        len,
        &Replica {
            backend: b"app-2",
            backups: [None, None],
            takeover: false,
        },
    );
    assert!(values(&parsed(&out), "x-stickyd-backup").is_empty());
}
