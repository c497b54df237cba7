//! Backends discovered from DNS (`[[discover]]`), against a DNS server the test runs on
//! 127.0.0.1:0 with backends on 127.0.0.2-9 (all of 127/8 is local): shuffled answers move no
//! session, scale-out and scale-in within the grace, an address change, DNS gone, SRV targets,
//! and two instances that agree.

mod support;

use std::net::{IpAddr, SocketAddr};

use stickyd::server::Running;
use support::dns::{Srv, TestDns};
use support::{Browser, Cfg, Jar, TestBackend, config_text, eventually, parse_config};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Backends on 127.0.0.N for each N, all on one port (a `dns` entry names one port), each
/// named by its discovered id `127.0.0.N:PORT`.
async fn backends_at(lasts: &[u8]) -> (u16, Vec<TestBackend>) {
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind((ip(lasts[0]), 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let mut out = Vec::new();
        for &l in lasts {
            let at = SocketAddr::new(ip(l), port);
            match TestBackend::start_at(&at.to_string(), at).await {
                Ok(b) => out.push(b),
                Err(_) => break,
            }
        }
        if out.len() == lasts.len() {
            return (port, out);
        }
    }
    panic!("no port free on every address");
}

/// One more backend on 127.0.0.`last`:`port`.
async fn backend_at(last: u8, port: u16) -> TestBackend {
    let at = SocketAddr::new(ip(last), port);
    TestBackend::start_at(&at.to_string(), at).await.unwrap()
}

fn id(last: u8, port: u16) -> String {
    format!("127.0.0.{last}:{port}")
}

/// A config whose default pool is discovered: `discover` is the body of its `[[discover]]`
/// (the resolver is the test's DNS server, re-asked every 100 ms).
fn config(cfg: &Cfg, dns: &TestDns, discover: &str) -> String {
    format!(
        "{}[[discover]]\nresolver = \"{}\"\ninterval = \"100ms\"\n{discover}\n",
        config_text(cfg, &[]),
        dns.addr
    )
}

async fn start(text: &str) -> Running {
    stickyd::server::start(parse_config(text)).await.unwrap()
}

fn admin() -> Cfg {
    Cfg {
        admin: Some(""),
        ..Cfg::default()
    }
}

/// The ids of the current snapshot's backends, in order.
fn ids(r: &Running) -> Vec<String> {
    r.shared()
        .load()
        .backends
        .iter()
        .map(|b| b.id.to_string())
        .collect()
}

/// Lookups of the only `[[discover]]` entry by outcome: ok, empty, failed.
fn lookups(r: &Running) -> [u64; 3] {
    r.shared().lookups().first().map_or([0; 3], |(_, c)| *c)
}

/// Waits until the entry made `n` more lookups with outcome index `o` than `from`.
async fn more_lookups(r: &Running, o: usize, n: u64) {
    let from = lookups(r)[o];
    eventually(
        &format!(
            "more lookups of outcome {o} than {from} (now {:?})",
            lookups(r)
        ),
        || lookups(r)[o] >= from + n,
    )
    .await;
}

fn backend_state(r: &Running, id: &str) -> Option<stickyd::affinity::AdminState> {
    r.shared().load().backend(id).map(|b| b.admin_state())
}

async fn admin_get(r: &Running, path: &str) -> String {
    let mut b = Browser::new(r.admin_addr().unwrap());
    b.get(path).await.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_answers_move_no_session_and_admin_states_survive_re_resolution() {
    let (port, _backends) = backends_at(&[2, 3, 4]).await;
    let dns = TestDns::start().await;
    dns.set("app.test", &[ip(4), ip(2), ip(3)]);
    let r = start(&config(
        &admin(),
        &dns,
        &format!("dns = \"app.test:{port}\""),
    ))
    .await;
    // start() waited for the first lookup: the pool is there before the first request.
    assert_eq!(ids(&r), [id(2, port), id(3, port), id(4, port)]);

    let addr = r.local_addrs()[0];
    let mut clients: Vec<(Jar, String)> = Vec::new();
    for _ in 0..30 {
        let mut j = Jar::new(addr);
        let got = j.get("app", "/").await;
        assert_eq!(got.status, 200);
        clients.push((j, got.backend()));
    }
    let spread: std::collections::HashSet<&String> = clients.iter().map(|(_, b)| b).collect();
    assert_eq!(spread.len(), 3, "new sessions are placed on all three");

    // An operator drains one; answers keep coming in every order.
    let drained = id(3, port);
    let mut adm = Browser::new(r.admin_addr().unwrap());
    let got = adm
        .send(
            "POST",
            &format!("/backends/{drained}/drain"),
            Default::default(),
            &[],
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    more_lookups(&r, 0, 10).await;

    for (j, first) in &mut clients {
        for _ in 0..3 {
            let got = j.get("app", "/").await;
            assert_eq!(got.status, 200);
            assert_eq!(&got.backend(), first, "a session never moves");
        }
    }
    assert_eq!(r.shared().repins(), 0);
    assert_eq!(ids(&r), [id(2, port), id(3, port), id(4, port)]);
    assert_eq!(
        backend_state(&r, &drained),
        Some(stickyd::affinity::AdminState::Draining),
        "the admin API's drain outlives re-resolution"
    );

    let backends: serde_json::Value =
        serde_json::from_str(&admin_get(&r, "/backends").await).unwrap();
    let list = backends.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|b| b["source"] == "dns"), "{backends}");
    let metrics = admin_get(&r, "/metrics").await;
    assert!(
        metrics.contains("stickyd_backends{pool=\"default\",source=\"dns\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "stickyd_discovery_lookups_total{{pool=\"default\",name=\"dns:app.test:{port}\",outcome=\"failed\"}} 0\n"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_then_scale_in_drains_for_the_grace_then_removes() {
    let (port, mut backends) = backends_at(&[2, 3]).await;
    let dns = TestDns::start().await;
    dns.set("app.test", &[ip(2), ip(3)]);
    let r = start(&config(
        &admin(),
        &dns,
        &format!("dns = \"app.test:{port}\"\nremove_grace = \"1500ms\""),
    ))
    .await;
    let addr = r.local_addrs()[0];
    let mut old: Vec<(Jar, String)> = Vec::new();
    for _ in 0..6 {
        let mut j = Jar::new(addr);
        let b = j.get("app", "/").await.backend();
        old.push((j, b));
    }

    // Scale out: a third instance appears in DNS.
    backends.push(backend_at(4, port).await);
    let third = id(4, port);
    dns.set("app.test", &[ip(3), ip(4), ip(2)]);
    eventually("the third backend is discovered", || {
        ids(&r).contains(&third)
    })
    .await;
    let mut on_third: Vec<Jar> = Vec::new();
    for _ in 0..9 {
        let mut j = Jar::new(addr);
        if j.get("app", "/").await.backend() == third {
            on_third.push(j);
        }
    }
    assert!(!on_third.is_empty(), "new sessions reach the new backend");
    for (j, first) in &mut old {
        assert_eq!(&j.get("app", "/").await.backend(), first);
    }

    // Scale in: it leaves DNS. It drains: its sessions stay, new ones go elsewhere.
    dns.set("app.test", &[ip(2), ip(3)]);
    eventually("the leaver drains", || {
        backend_state(&r, &third) == Some(stickyd::affinity::AdminState::Draining)
    })
    .await;
    let view: serde_json::Value =
        serde_json::from_str(&admin_get(&r, &format!("/backends/{third}")).await).unwrap();
    assert_eq!(view["state"], "draining", "{view}");
    assert_eq!(view["state_source"], "dns", "{view}");
    for j in &mut on_third {
        assert_eq!(
            j.get("app", "/").await.backend(),
            third,
            "kept within the grace"
        );
    }
    for _ in 0..9 {
        let mut j = Jar::new(addr);
        assert_ne!(j.get("app", "/").await.backend(), third, "no new session");
    }

    // Grace over: it is gone, and its sessions are served by the others.
    eventually("the leaver is removed", || !ids(&r).contains(&third)).await;
    for j in &mut on_third {
        let got = j.get("app", "/").await;
        assert_eq!(got.status, 200);
        assert_ne!(got.backend(), third);
    }
    for (j, first) in &mut old {
        assert_eq!(&j.get("app", "/").await.backend(), first, "untouched");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_change_sends_the_sessions_there_to_their_fallback() {
    let (port, mut backends) = backends_at(&[2, 3]).await;
    let dns = TestDns::start().await;
    dns.set("app.test", &[ip(2), ip(3)]);
    let cfg = Cfg {
        health: "enabled = true\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1",
        ..admin()
    };
    let r = start(&config(
        &cfg,
        &dns,
        &format!("dns = \"app.test:{port}\"\nremove_grace = \"30s\""),
    ))
    .await;
    let addr = r.local_addrs()[0];
    let moved = id(3, port);
    let mut clients: Vec<(Jar, String)> = Vec::new();
    for _ in 0..8 {
        let mut j = Jar::new(addr);
        let b = j.get("app", "/").await.backend();
        clients.push((j, b));
    }
    assert!(clients.iter().any(|(_, b)| *b == moved));

    // The instance at .3 is rescheduled at .5: the old address stops answering.
    backends[1].kill().await;
    backends.push(backend_at(5, port).await);
    dns.set("app.test", &[ip(2), ip(5)]);
    eventually(
        "the old address is removed (gone from DNS and down)",
        || {
            let ids = ids(&r);
            !ids.contains(&moved) && ids.contains(&id(5, port))
        },
    )
    .await;
    for (j, first) in &mut clients {
        let got = j.get("app", "/").await;
        assert_eq!(got.status, 200);
        if *first == moved {
            // Its fallback, and it stays there.
            let now = got.backend();
            assert_ne!(now, moved);
            for _ in 0..3 {
                assert_eq!(j.get("app", "/").await.backend(), now);
            }
        } else {
            assert_eq!(&got.backend(), first, "other sessions stay");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dns_gone_or_failing_the_pool_keeps_its_last_good_set() {
    let (port, _backends) = backends_at(&[2, 3]).await;
    let mut dns = TestDns::start().await;
    dns.set("app.test", &[ip(2), ip(3)]);
    let r = start(&config(
        &admin(),
        &dns,
        &format!("dns = \"app.test:{port}\""),
    ))
    .await;
    let addr = r.local_addrs()[0];
    let want = [id(2, port), id(3, port)];

    dns.set_failing(true);
    more_lookups(&r, 2, 2).await;
    assert_eq!(ids(&r), want);
    dns.set_failing(false);
    dns.set("app.test", &[]);
    more_lookups(&r, 1, 2).await;
    assert_eq!(ids(&r), want, "an empty answer keeps the set too");
    dns.stop().await;
    more_lookups(&r, 2, 2).await;
    assert_eq!(ids(&r), want);
    let mut j = Jar::new(addr);
    for _ in 0..4 {
        assert_eq!(j.get("app", "/").await.status, 200);
    }
    let metrics = admin_get(&r, "/metrics").await;
    let failed = metrics
        .lines()
        .find(|l| {
            l.starts_with("stickyd_discovery_lookups_total") && l.contains("outcome=\"failed\"")
        })
        .unwrap();
    assert!(!failed.ends_with(" 0"), "{failed}");
    let ready = Browser::new(r.admin_addr().unwrap()).get("/readyz").await;
    assert_eq!(ready.status, 200, "still ready: the backends are");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_name_backends_that_keep_their_id_when_they_move() {
    let a = backend_at_named("pod-0.app.test", 2).await;
    let mut b = backend_at_named("pod-1.app.test", 3).await;
    let dns = TestDns::start().await;
    dns.set("pod-0.app.test", &[ip(2)]);
    dns.set("pod-1.app.test", &[ip(3)]);
    dns.set_srv(
        "_http._tcp.app.test",
        &[
            Srv {
                target: "pod-1.app.test".into(),
                port: b.addr.port(),
            },
            Srv {
                target: "pod-0.app.test".into(),
                port: a.addr.port(),
            },
        ],
    );
    let r = start(&config(
        &Cfg::default(),
        &dns,
        "srv = \"_http._tcp.app.test\"\nid = \"srv-target\"",
    ))
    .await;
    assert_eq!(ids(&r), ["pod-0.app.test", "pod-1.app.test"]);
    let addr = r.local_addrs()[0];
    let mut on_pod1 = None;
    for _ in 0..6 {
        let mut j = Jar::new(addr);
        if j.get("app", "/").await.backend() == "pod-1.app.test" {
            on_pod1 = Some(j);
        }
    }
    let mut j = on_pod1.expect("a session on pod-1");

    // pod-1 is rescheduled at another address, under the same name.
    b.kill().await;
    let moved = backend_at_named("pod-1.app.test", 5).await;
    dns.set("pod-1.app.test", &[ip(5)]);
    dns.set_srv(
        "_http._tcp.app.test",
        &[
            Srv {
                target: "pod-0.app.test".into(),
                port: a.addr.port(),
            },
            Srv {
                target: "pod-1.app.test".into(),
                port: moved.addr.port(),
            },
        ],
    );
    eventually("pod-1's new address is taken", || {
        r.shared()
            .load()
            .backend("pod-1.app.test")
            .is_some_and(|b| b.authority.as_str() == moved.addr.to_string())
    })
    .await;
    let got = j.get("app", "/").await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.backend(),
        "pod-1.app.test",
        "the session keeps its backend"
    );
    assert_eq!(moved.requests(), 1);
    assert_eq!(r.shared().repins(), 0);
}

async fn backend_at_named(name: &str, last: u8) -> TestBackend {
    TestBackend::start_at(name, SocketAddr::new(ip(last), 0))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_the_same_dns_agree_on_every_session_and_every_fallback() {
    let (port, _backends) = backends_at(&[2, 3, 4, 5, 6]).await;
    let dns = TestDns::start().await;
    dns.set("app.test", &[ip(6), ip(2), ip(5), ip(3), ip(4)]);
    let text = config(
        &Cfg::default(),
        &dns,
        &format!("dns = \"app.test:{port}\"\nremove_grace = \"0s\""),
    );
    let (one, two) = (start(&text).await, start(&text).await);
    assert_eq!(ids(&one), ids(&two));
    let (a, b) = (one.local_addrs()[0], two.local_addrs()[0]);
    let mut sessions: Vec<(Jar, String)> = Vec::new();
    for _ in 0..20 {
        let mut j = Jar::new(a);
        let first = j.get("app", "/").await.backend();
        // The same cookie on the other instance names the same backend there.
        let mut other = Jar::new(b);
        other.jar = j.jar.clone();
        assert_eq!(other.get("app", "/").await.backend(), first);
        sessions.push((j, first));
    }
    // One backend leaves DNS (no grace): both drop it, and both send each of its sessions to
    // the same fallback.
    let gone = id(4, port);
    assert!(sessions.iter().any(|(_, s)| *s == gone));
    dns.set("app.test", &[ip(6), ip(2), ip(5), ip(3)]);
    eventually("both instances drop it", || {
        !ids(&one).contains(&gone) && !ids(&two).contains(&gone)
    })
    .await;
    for (j, first) in sessions.iter().filter(|(_, s)| *s == gone) {
        let mut on_a = Jar::new(a);
        on_a.jar = j.jar.clone();
        let mut on_b = Jar::new(b);
        on_b.jar = j.jar.clone();
        let (fa, fb) = (
            on_a.get("app", "/").await.backend(),
            on_b.get("app", "/").await.backend(),
        );
        assert_ne!(&fa, first);
        assert_eq!(fa, fb, "the same fallback on both");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_name_has_no_records_yet_answers_503_until_it_has() {
    let (port, _backends) = backends_at(&[2]).await;
    let dns = TestDns::start().await;
    let r = start(&config(
        &admin(),
        &dns,
        &format!("dns = \"app.test:{port}\""),
    ))
    .await;
    assert!(ids(&r).is_empty());
    let addr = r.local_addrs()[0];
    let mut j = Jar::new(addr);
    assert_eq!(j.get("app", "/").await.status, 503);
    let mut probe = Browser::new(r.admin_addr().unwrap());
    assert_eq!(probe.get("/readyz").await.status, 503, "not ready");
    dns.set("app.test", &[ip(2)]);
    eventually("discovered", || !ids(&r).is_empty()).await;
    let got = j.get("app", "/").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.backend(), id(2, port));
    assert_eq!(probe.get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replication_an_address_change_sends_the_sessions_there_to_their_backup() {
    let (port, mut backends) = backends_at(&[2, 3, 4]).await;
    let dns = TestDns::start().await;
    dns.set("app.test", &[ip(2), ip(3), ip(4)]);
    let cfg = Cfg {
        health: "enabled = true\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1",
        ..Cfg::default()
    };
    let text = format!(
        "{}[replication]\nbackups = 1\n",
        config(&cfg, &dns, &format!("dns = \"app.test:{port}\""))
    );
    let r = start(&text).await;
    let addr = r.local_addrs()[0];
    let moved = id(3, port);
    // Sessions on .3, each with the backup its request named.
    let mut on_moved: Vec<(Jar, String)> = Vec::new();
    for _ in 0..12 {
        let mut j = Jar::new(addr);
        if j.get("app", "/").await.backend() == moved {
            let seen = backends[1].last();
            let backup = seen.headers["x-stickyd-backup"]
                .to_str()
                .unwrap()
                .to_string();
            let backup_id = backup.split('=').next().unwrap().to_string();
            on_moved.push((j, backup_id));
        }
    }
    assert!(!on_moved.is_empty());
    backends[1].kill().await;
    backends.push(backend_at(5, port).await);
    dns.set("app.test", &[ip(2), ip(4), ip(5)]);
    eventually("the old address is removed", || !ids(&r).contains(&moved)).await;
    for (j, backup) in &mut on_moved {
        let got = j.get("app", "/").await;
        assert_eq!(got.status, 200);
        assert_eq!(&got.backend(), backup, "served by its backup");
        let at = backends.iter().find(|b| b.name == *backup).unwrap();
        assert_eq!(
            at.last().headers["x-stickyd-takeover"].to_str().unwrap(),
            backup,
            "with a takeover"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_discovered_backends_and_a_removed_entry_takes_them_away() {
    let (port, _backends) = backends_at(&[2, 3]).await;
    let dns = TestDns::start().await;
    dns.set("app.test", &[ip(2), ip(3)]);
    let text = config(&Cfg::default(), &dns, &format!("dns = \"app.test:{port}\""));
    let mut r = start(&text).await;
    let want = [id(2, port), id(3, port)];
    assert_eq!(ids(&r), want);
    let mut j = Jar::new(r.local_addrs()[0]);
    let first = j.get("app", "/").await.backend();

    // The same lookup with another weight: the backends stay through the swap, re-weighted.
    r.reload(parse_config(&format!("{text}weight = 7\n")))
        .unwrap();
    assert_eq!(ids(&r), want, "no window without them");
    assert!(r.shared().load().backends.iter().all(|b| b.weight == 7));
    assert_eq!(j.get("app", "/").await.backend(), first);

    // The entry removed (a listed backend instead): its backends go with it.
    let listed = config_text(&Cfg::default(), &[("static", SocketAddr::new(ip(2), port))]);
    r.reload(parse_config(&listed)).unwrap();
    assert_eq!(ids(&r), ["static"]);
    assert!(
        r.shared().lookups().is_empty(),
        "nothing is looked up any more"
    );
}
