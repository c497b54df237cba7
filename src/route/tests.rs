use proptest::prelude::*;

use super::*;

fn route(host: Option<&str>, prefix: &str, pool: PoolIx) -> Route {
    Route {
        host: host.map_or(HostPattern::Any, |h| HostPattern::parse(h).unwrap()),
        path_prefix: prefix.into(),
        pool,
    }
}

fn table(routes: Vec<Route>, default: Option<PoolIx>) -> Table {
    Table::new(routes, default).unwrap()
}

#[test]
fn host_patterns_parse_lowercase_and_refuse_what_cannot_match() {
    use HostPattern::*;
    assert_eq!(
        HostPattern::parse("Shop.Example.COM"),
        Ok(Exact("shop.example.com".into()))
    );
    assert_eq!(
        HostPattern::parse("shop.example.com."),
        Ok(Exact("shop.example.com".into()))
    );
    assert_eq!(
        HostPattern::parse("*.Example.com"),
        Ok(Wildcard(".example.com".into()))
    );
    assert_eq!(HostPattern::parse("10.0.0.1"), Ok(Exact("10.0.0.1".into())));
    assert_eq!(HostPattern::parse("[::1]"), Ok(Exact("[::1]".into())));
    assert_eq!(
        HostPattern::parse("[0:0::0:1]"),
        Ok(Exact("[::1]".into())),
        "IPv6 in canonical text"
    );
    assert_eq!(
        HostPattern::parse("[2001:DB8::A]"),
        Ok(Exact("[2001:db8::a]".into()))
    );
    assert!(HostPattern::parse("[127.0.0.1]").is_err());
    assert_eq!(
        HostPattern::parse("in_ternal-1"),
        Ok(Exact("in_ternal-1".into()))
    );
    for bad in [
        "",
        "*",
        "*.",
        "a.*.com",
        "*example.com",
        "shop.example.com:443",
        "a..b",
        ".a",
        "a b",
        "[::1",
        "[nope]",
        "é.com",
        &"a".repeat(64),
        &["a"; 128].join("."),
    ] {
        assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn wildcards_match_deeper_names_only() {
    let w = HostPattern::parse("*.example.com").unwrap();
    assert!(w.matches(Some("a.example.com")));
    assert!(w.matches(Some("a.b.example.com")));
    assert!(!w.matches(Some("example.com")));
    assert!(!w.matches(Some("badexample.com")));
    assert!(!w.matches(None));
    assert!(HostPattern::Any.matches(None));
}

#[test]
fn prefixes_match_whole_segments() {
    assert!(under(b"/api", b"/api"));
    assert!(under(b"/api/", b"/api"));
    assert!(under(b"/api/x", b"/api"));
    assert!(!under(b"/apiary", b"/api"));
    assert!(under(b"/anything", b"/"));
    assert!(under(b"/api/x", b"/api/"));
    assert!(!under(b"/api", b"/api/"));
    assert!(check_prefix("/").is_ok());
    assert!(check_prefix("/api/v1").is_ok());
    for bad in [
        "", "api", "/a?b", "/a#b", "/a%20b", "/a b", "/a//b", "/a/./b", "/a/..", "/é",
    ] {
        assert!(check_prefix(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn paths_are_matched_as_a_backend_reads_them() {
    let n = |p: &str| String::from_utf8(normal_path(p.as_bytes()).into_owned()).unwrap();
    assert_eq!(n("/admin"), "/admin");
    assert!(
        matches!(normal_path(b"/admin/x"), Cow::Borrowed(_)),
        "the usual path is not copied"
    );
    assert_eq!(n("/%61dmin"), "/admin");
    assert_eq!(n("/%41dmin"), "/Admin");
    assert_eq!(n("/x/../admin"), "/admin");
    assert_eq!(n("/x/%2e%2E/admin"), "/admin");
    assert_eq!(n("//admin"), "/admin");
    assert_eq!(n("/./admin/."), "/admin/");
    assert_eq!(n("/../../admin"), "/admin");
    assert_eq!(n("/a/b/.."), "/a/");
    assert_eq!(n("/a%2fb"), "/a%2fb", "an escaped slash is not a separator");
    assert_eq!(n("/a%zz"), "/a%zz");
    assert_eq!(n("/a%4"), "/a%4");
    assert_eq!(n("*"), "/*");
}

#[test]
fn request_hosts_lose_port_case_and_final_dot() {
    let mut buf = [0u8; MAX_HOST];
    assert_eq!(
        request_host(b"Shop.Example.com:8443", &mut buf),
        Some("shop.example.com")
    );
    assert_eq!(
        request_host(b"shop.example.com.", &mut buf),
        Some("shop.example.com")
    );
    assert_eq!(request_host(b"[::1]:8080", &mut buf), Some("[::1]"));
    assert_eq!(
        request_host(b"[0::1]", &mut buf),
        Some("[::1]"),
        "canonical text"
    );
    assert_eq!(
        request_host(b"[2001:DB8:0::A]:1", &mut buf),
        Some("[2001:db8::a]")
    );
    assert_eq!(request_host(b"[nope]", &mut buf), None);
    assert_eq!(request_host(b"[::1", &mut buf), None);
    assert_eq!(request_host(b"", &mut buf), None);
    assert_eq!(request_host(b":80", &mut buf), None);
    assert_eq!(request_host(&[b'a'; 300], &mut buf), None);
    assert_eq!(request_host(b"\xff", &mut buf), None);
}

#[test]
fn the_most_specific_host_wins_then_the_longest_prefix() {
    let t = table(
        vec![
            route(None, "/", 0),
            route(None, "/admin", 1),
            route(Some("*.example.com"), "/", 2),
            route(Some("*.shop.example.com"), "/", 3),
            route(Some("shop.example.com"), "/", 4),
            route(Some("shop.example.com"), "/api", 5),
        ],
        Some(9),
    );
    let pick = |h: &str, p: &str| t.pick(Some(h.as_bytes()), p.as_bytes());
    assert_eq!(pick("shop.example.com", "/"), Some(4));
    assert_eq!(pick("SHOP.example.com:443", "/api/cart?x=1"), Some(5));
    assert_eq!(pick("shop.example.com", "/apiary"), Some(4));
    assert_eq!(
        pick("shop.example.com", "/admin"),
        Some(4),
        "host before path"
    );
    assert_eq!(
        pick("eu.shop.example.com", "/"),
        Some(3),
        "longest wildcard"
    );
    assert_eq!(pick("www.example.com", "/"), Some(2));
    assert_eq!(pick("example.com", "/admin/x"), Some(1));
    assert_eq!(pick("other.test", "/"), Some(0));
    assert_eq!(t.pick(None, b"/admin"), Some(1));
    assert_eq!(pick("other.test", "/x/../%61dmin"), Some(1));
}

#[test]
fn a_host_route_whose_prefixes_miss_falls_to_less_specific_hosts_then_the_default() {
    let t = table(
        vec![
            route(Some("shop.example.com"), "/api", 0),
            route(None, "/static", 1),
        ],
        Some(2),
    );
    let pick = |h: &str, p: &str| t.pick(Some(h.as_bytes()), p.as_bytes());
    assert_eq!(pick("shop.example.com", "/api"), Some(0));
    assert_eq!(pick("shop.example.com", "/static/a.css"), Some(1));
    assert_eq!(pick("shop.example.com", "/"), Some(2));
    let no_default = table(vec![route(Some("shop.example.com"), "/", 0)], None);
    assert_eq!(no_default.pick(Some(b"other.test"), b"/"), None, "404");
    assert_eq!(no_default.pick(None, b"/"), None);
}

#[test]
fn no_routes_means_the_default_pool_for_everything() {
    let t = table(vec![], Some(0));
    assert_eq!(t.pick(Some(b"anything"), b"/x"), Some(0));
    assert_eq!(t.pick(None, b"garbage"), Some(0));
}

#[test]
fn two_routes_with_one_host_and_prefix_are_refused() {
    let dup = Table::new(
        vec![
            route(Some("a.test"), "/x", 0),
            route(Some("b.test"), "/x", 1),
            route(Some("A.test"), "/x", 2),
        ],
        None,
    );
    assert_eq!(dup.unwrap_err(), Duplicate(0, 2));
    assert!(Table::new(vec![route(None, "/", 0), route(None, "/", 1)], None).is_err());
    assert!(Table::new(vec![route(None, "/a", 0), route(None, "/a/", 1)], None).is_ok());
}

/// The rank of a route for a request it matches: host class, wildcard length, prefix length.
fn rank(r: &Route) -> (u8, usize, usize) {
    let host = match &r.host {
        HostPattern::Any => (0, 0),
        HostPattern::Wildcard(s) => (1, s.len()),
        HostPattern::Exact(_) => (2, 0),
    };
    (host.0, host.1, r.path_prefix.len())
}

fn arb_host() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a.test",
        "b.a.test",
        "c.b.a.test",
        "A.TEST",
        "x.test",
        "test",
        "a.test:8080",
        "a.test.",
    ])
    .prop_map(String::from)
}

fn arb_pattern() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        None,
        Some("a.test"),
        Some("b.a.test"),
        Some("*.test"),
        Some("*.a.test"),
        Some("*.b.a.test"),
        Some("x.test"),
    ])
}

fn arb_prefix() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["/", "/a", "/a/", "/a/b", "/ab", "/b", "/a/b/c"])
}

fn arb_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "ab", "c", ".", "..", "", "%61", "%2F"]),
        0..5,
    )
    .prop_map(|segs| format!("/{}", segs.join("/")))
}

proptest! {
    /// The table picks exactly what a brute-force search over every route picks: the route
    /// of highest rank among those the normal host and path match, else the default; and no
    /// two matching routes ever share the highest rank.
    #[test]
    fn the_table_agrees_with_a_search_of_every_route(
        specs in prop::collection::vec((arb_pattern(), arb_prefix()), 0..12),
        host in prop::option::of(arb_host()),
        path in arb_path(),
        query in prop::option::of("[a-z=&/]{0,6}"),
        default in prop::option::of(0usize..3),
    ) {
        let mut routes: Vec<Route> = Vec::new();
        for (i, (h, p)) in specs.into_iter().enumerate() {
            let r = route(h, p, 100 + i);
            if !routes.iter().any(|o| o.host == r.host && o.path_prefix == r.path_prefix) {
                routes.push(r);
            }
        }
        let t = table(routes.clone(), default);
        let target = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let got = t.pick(host.as_deref().map(str::as_bytes), target.as_bytes());

        let mut buf = [0u8; MAX_HOST];
        let h = host.as_deref().and_then(|h| request_host(h.as_bytes(), &mut buf));
        let normal = normal_path(path.as_bytes());
        let matching: Vec<&Route> = routes
            .iter()
            .filter(|r| r.host.matches(h) && under(&normal, r.path_prefix.as_bytes()))
            .collect();
        let best = matching.iter().map(|r| rank(r)).max();
        if let Some(best) = best {
            let top: Vec<_> = matching.iter().filter(|r| rank(r) == best).collect();
            prop_assert_eq!(top.len(), 1, "two matching routes of equal rank: {:?}", top);
            prop_assert_eq!(got, Some(top[0].pool));
        } else {
            prop_assert_eq!(got, default);
        }
        // The order `stickyd check` prints is the order of the search: the first route in it
        // that matches is the one picked.
        let first = t
            .in_order()
            .into_iter()
            .find(|r| r.host.matches(h) && under(&normal, r.path_prefix.as_bytes()))
            .map(|r| r.pool);
        prop_assert_eq!(first.or(default), got);
    }

    /// Normalising is idempotent, always yields an absolute path without `//` or dot
    /// segments, and never panics.
    #[test]
    fn normal_paths_are_normal(path in "[/a.%2eEfF~]{0,16}") {
        let once = normal_path(path.as_bytes()).into_owned();
        prop_assert!(once.starts_with(b"/"));
        prop_assert!(!once.windows(2).any(|w| w == b"//"));
        let s = String::from_utf8(once.clone()).unwrap();
        prop_assert!(!s.split('/').any(|seg| seg == "." || seg == ".."), "{}", s);
        let twice = normal_path(&once).into_owned();
        prop_assert_eq!(twice, once);
    }
}
