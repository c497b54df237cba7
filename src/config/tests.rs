use super::*;
use std::collections::HashMap;

use toml::Spanned;

use super::raw::Dur;

#[derive(Default)]
struct FakeKeys {
    files: HashMap<PathBuf, Vec<u8>>,
    env: HashMap<String, Vec<u8>>,
}

impl KeySource for FakeKeys {
    fn file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"))
    }
    fn env(&self, name: &str) -> Option<Vec<u8>> {
        self.env.get(name).cloned()
    }
}

const MINIMAL: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[[backend]]
id = "app-1"
address = "127.0.0.1:3001"
"#;

fn parse_ok(text: &str) -> Config {
    parse(
        text,
        "t.toml",
        Path::new("/etc/stickyd"),
        &FakeKeys::default(),
    )
    .unwrap()
}

fn parse_err(text: &str) -> ConfigError {
    parse(
        text,
        "t.toml",
        Path::new("/etc/stickyd"),
        &FakeKeys::default(),
    )
    .unwrap_err()
}

fn err_at(text: &str, line: usize, col: usize, needle: &str) {
    let e = parse_err(text);
    assert_eq!((e.line, e.col), (line, col), "{e}");
    assert!(e.message.contains(needle), "{e} should mention {needle:?}");
    assert!(
        e.to_string().starts_with(&format!("t.toml:{line}:{col}: ")),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'), "one line: {e}");
}

#[test]
fn a_minimal_config_takes_every_default() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.backends.len(), 1);
    assert_eq!(c.backends[0].weight, 1);
    assert_eq!(c.backends[0].state, AdminState::Active);
    assert_eq!(c.affinity.cookie, "stickyd");
    assert_eq!(c.affinity.on_pinned_down, OnPinnedDown::Repin);
    assert!(c.affinity.generated_key);
    assert_eq!(c.affinity.secrets.len(), 1);
    assert_eq!(c.affinity.secrets[0].0.len(), 32);
    let p = c.policy();
    assert_eq!(
        (p.max_idle, p.max_life, p.refresh_after, p.skew),
        (1800, 86_400, 450, 30)
    );
    assert_eq!(c.health.expect_status, StatusRange { lo: 200, hi: 399 });
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(3));
    assert!(c.admin.is_none() && c.tls.is_none());
}

#[test]
fn the_example_configs_commented_pool_works_when_uncommented() {
    let text = include_str!("../../config/example.toml");
    let start = text.find("# [[pool]]").expect("the pools example");
    let uncommented: String = text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").or(l.strip_prefix("#")).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let text = format!("{}{uncommented}\n", &text[..start]);
    let mut keys = FakeKeys::default();
    keys.files
        .insert(PathBuf::from("/etc/stickyd/key.current"), vec![b'k'; 48]);
    keys.env
        .insert("STICKYD_KEY_PREVIOUS".into(), vec![b'p'; 40]);
    let c = parse(&text, "example.toml", Path::new("/etc/stickyd"), &keys).unwrap();
    let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default", "shop"]);
    let shop = &c.pools[1];
    assert_eq!(shop.affinity.cookie, "shop_sticky");
    assert_eq!(shop.health.path, "/ready");
    assert_eq!(
        shop.balance.new_sessions,
        crate::config::NewSessions::LeastLoaded
    );
    assert_eq!(shop.affinity.secrets.len(), 2, "the top-level keys");
    assert_eq!(c.routes.pick(Some(b"shop.example.com"), b"/x"), Some(1));
    assert_eq!(c.routes.pick(Some(b"other"), b"/x"), Some(0));
}

#[test]
fn same_site_none_and_partitioned_are_accepted_with_secure_and_reach_the_pools() {
    let c = parse_for_tests(
        "[affinity]\nsame_site = \"none\"\npartitioned = true\nsecure = true\n\
         [[backend]]\nid = \"a\"\naddress = \"h:1\"\n\
         [[pool]]\nname = \"p\"\n[pool.affinity]\nsame_site = \"strict\"\npartitioned = false\n\
         [[pool.backend]]\nid = \"b\"\naddress = \"h:2\"\n",
    );
    use crate::headers::SameSite;
    assert_eq!(
        (
            c.pools[0].affinity.same_site,
            c.pools[0].affinity.partitioned
        ),
        (SameSite::None, true)
    );
    assert_eq!(
        (
            c.pools[1].affinity.same_site,
            c.pools[1].affinity.partitioned
        ),
        (SameSite::Strict, false)
    );
    // TLS listeners only: the default Secure (on TLS) is every cookie.
    let tls_only = "[server]\nlisten = []\n[affinity]\nsame_site = \"none\"\n\
                    [[backend]]\nid = \"a\"\naddress = \"h:1\"\n";
    let e = parse(
        tls_only,
        "t.toml",
        Path::new("/etc/stickyd"),
        &FakeKeys::default(),
    );
    assert!(
        e.as_ref()
            .err()
            .is_none_or(|e| !e.message.contains("same_site")),
        "{e:?}"
    );
}

#[test]
fn the_shipped_example_config_is_valid_and_documents_every_key() {
    let text = include_str!("../../config/example.toml");
    let mut keys = FakeKeys::default();
    keys.files
        .insert(PathBuf::from("/etc/stickyd/key.current"), vec![b'k'; 48]);
    keys.env
        .insert("STICKYD_KEY_PREVIOUS".into(), vec![b'p'; 40]);
    let c = parse(text, "example.toml", Path::new("/etc/stickyd"), &keys).unwrap();
    assert_eq!(c.affinity.secrets.len(), 2);
    assert!(!c.affinity.generated_key);
    // Every field of every section of the schema appears in the example (as a key or commented
    // key). [tls] is commented out in the example (it needs certificate files): its fields are
    // checked against an empty section.
    let schema: raw::Config = toml::from_str(text).unwrap();
    let tls = raw::Tls {
        certs: Spanned::new(0..0, Vec::new()),
        handshake_timeout: Dur(Duration::from_secs(10)),
        versions: Spanned::new(0..0, Vec::new()),
    };
    let debug = format!("{schema:?}{tls:?}");
    for section in [
        "server",
        "affinity",
        "balance",
        "upstream",
        "health",
        "replication",
        "log",
        "admin",
    ] {
        assert!(
            text.contains(&format!("[{section}]")),
            "[{section}] missing"
        );
    }
    for key in [
        "backups",
        "port",
        "listen",
        "listen_tls",
        "certs",
        "handshake_timeout",
        "versions",
        "worker_threads",
        "max_connections",
        "header_read_timeout",
        "max_header_bytes",
        "max_headers",
        "shutdown_grace",
        "shutdown_delay",
        "proxy_protocol",
        "watch_config",
        "proxy_protocol_from",
        "trusted_proxies",
        "via",
        "h2_max_concurrent_streams",
        "mode",
        "header",
        "header_trusted",
        "sticky_fraction",
        "cookie",
        "max_idle",
        "max_life",
        "refresh_fraction",
        "clock_skew",
        "keys",
        "on_pinned_down",
        "secure",
        "domain",
        "same_site",
        "partitioned",
        "all_down",
        "retry_after",
        "slow_start",
        "new_sessions",
        "load_factor",
        "connect_timeout",
        "response_timeout",
        "pool_idle_timeout",
        "pool_max_idle",
        "retries",
        "tunnel_idle_timeout",
        "enabled",
        "path",
        "host",
        "interval",
        "timeout",
        "rise",
        "fall",
        "expect_status",
        "initial",
        "passive_failures",
        "eject_time",
        "level",
        "format",
        "access",
        "access_file",
        "token",
        "drain_quiet",
        "id",
        "address",
        "weight",
        "state",
        "tls",
        "tls_ca",
        "server_name",
        "protocol",
    ] {
        assert!(
            text.contains(&format!("{key} =")),
            "example.toml does not document {key}"
        );
        assert!(
            debug.contains(key),
            "{key} is documented but is not a config field"
        );
    }
}

#[test]
fn durations_and_enums_parse() {
    let c = parse_ok(&format!(
        "{MINIMAL}\n[affinity]\nmax_idle = \"1h30m\"\nmax_life = \"7d\"\non_pinned_down = \"return\"\n[balance]\nall_down = \"open\"\n"
    ));
    assert_eq!(c.affinity.max_idle, Duration::from_secs(5400));
    assert_eq!(c.affinity.max_life, Duration::from_secs(7 * 86_400));
    assert_eq!(c.affinity.on_pinned_down, OnPinnedDown::Return);
    assert_eq!(c.balance.all_down, AllDown::Open);
}

#[test]
fn unknown_keys_are_rejected_with_their_position() {
    err_at(
        "[server]\nlisten = [\"127.0.0.1:1\"]\nlisten_typo = 1\n",
        3,
        1,
        "listen_typo",
    );
    err_at("[serve]\n", 1, 2, "serve");
    err_at(&format!("{MINIMAL}color = \"red\"\n"), 8, 1, "color");
}

#[test]
fn bad_values_point_at_the_value() {
    err_at(
        "[affinity]\nmax_idle = \"30 lightyears\"\n",
        2,
        12,
        "duration",
    );
    err_at("[affinity]\nmax_idle = 30\n", 2, 12, "duration");
    err_at("[affinity]\non_pinned_down = \"retry\"\n", 2, 18, "retry");
    err_at(
        "[server]\nlisten = [\"127.0.0.1:8080\", \"nope\"]\n",
        2,
        29,
        "socket address",
    );
    err_at(
        "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
        2,
        20,
        "invalid network",
    );
    err_at("[health]\nexpect_status = \"200-99\"\n", 2, 17, "status");
    err_at("[server\n", 1, 8, "");
}

#[test]
fn semantic_errors_point_at_the_offending_value() {
    let dup = format!("{MINIMAL}\n[[backend]]\nid = \"app-1\"\naddress = \"127.0.0.1:3002\"\n");
    err_at(&dup, 10, 6, "duplicate backend id");
    let bad_addr = "[[backend]]\nid = \"a\"\naddress = \"http://x:1/\"\n";
    err_at(bad_addr, 3, 11, "invalid backend address");
    err_at(
        "[[backend]]\nid = \"a\"\naddress = \"localhost\"\n",
        3,
        11,
        "host:port",
    );
    err_at(
        "[[backend]]\nid = \"a b\"\naddress = \"h:1\"\n",
        2,
        6,
        "invalid backend id",
    );
    err_at(
        "[[backend]]\nid = \"a\"\naddress = \"h:1\"\nweight = 0\n",
        4,
        10,
        "weight",
    );
    err_at(
        &format!("{MINIMAL}[affinity]\ncookie = \"a;b\"\n"),
        9,
        10,
        "cookie name",
    );
    err_at(
        &format!("{MINIMAL}[affinity]\nrefresh_fraction = 1.5\n"),
        9,
        20,
        "refresh_fraction",
    );
    err_at(
        &format!("{MINIMAL}[health]\npath = \"healthz\"\n"),
        9,
        8,
        "health.path",
    );
    err_at(&format!("{MINIMAL}[health]\nrise = 0\n"), 9, 8, "rise");
    err_at(&format!("{MINIMAL}[server]\n"), 8, 2, "duplicate key");
    err_at(
        "[server]\nlisten = []\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n",
        2,
        10,
        "at least one",
    );
    err_at(
        "[server]\nmax_header_bytes = 100\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n",
        2,
        20,
        "8192",
    );
    err_at(
        "[log]\nlevel = \"loud=!!\"\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n",
        2,
        9,
        "log.level",
    );
}

#[test]
fn log_level_directives_are_trimmed() {
    // Spaces after the commas are common; tracing-subscriber misread them, and panicked when a
    // non-ASCII character followed them.
    let c = parse_ok(
        "[log]\nlevel = \" info,  stickyd=debug \"\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n",
    );
    assert_eq!(c.log.level, "info,stickyd=debug");
    err_at(
        "[log]\nlevel = \"   WWW\u{feff}=am\"\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n",
        2,
        9,
        "log.level",
    );
}

#[test]
fn a_config_without_backends_is_refused() {
    err_at(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n",
        1,
        1,
        "no [[backend]]",
    );
}

#[test]
fn keys_load_from_files_relative_to_the_config_and_from_env() {
    let mut keys = FakeKeys::default();
    keys.files.insert(
        PathBuf::from("/etc/stickyd/k1"),
        b"  0123456789abcdef0123456789abcdef\n".to_vec(),
    );
    keys.files.insert(PathBuf::from("/abs/k2"), vec![b'x'; 32]);
    keys.env.insert("K3".into(), vec![b'y'; 64]);
    let text = format!("{MINIMAL}[affinity]\nkeys = [\"file:k1\", \"file:/abs/k2\", \"env:K3\"]\n");
    let c = parse(&text, "t.toml", Path::new("/etc/stickyd"), &keys).unwrap();
    assert_eq!(c.affinity.secrets.len(), 3);
    assert_eq!(
        c.affinity.secrets[0].0, b"0123456789abcdef0123456789abcdef",
        "whitespace trimmed"
    );
    assert!(!c.affinity.generated_key);
    assert!(
        !format!("{c:?}").contains("0123"),
        "secrets are not printed"
    );
}

#[test]
fn key_errors_point_at_the_key_spec() {
    let mut keys = FakeKeys::default();
    keys.files
        .insert(PathBuf::from("/etc/stickyd/short"), vec![b'x'; 31]);
    let cases = [
        ("\"file:short\"", "at least 32"),
        ("\"file:missing\"", "cannot read key file"),
        ("\"env:NOPE\"", "NOPE is not set"),
        (
            "\"hunter2hunter2hunter2hunter2hunter2\"",
            "never written inline",
        ),
    ];
    for (spec, needle) in cases {
        let text = format!("{MINIMAL}[affinity]\nkeys = [{spec}]\n");
        let e = parse(&text, "t.toml", Path::new("/etc/stickyd"), &keys).unwrap_err();
        assert_eq!((e.line, e.col), (9, 9), "{e}");
        assert!(e.message.contains(needle), "{e}");
    }
}

#[test]
fn trusted_proxy_networks_match_addresses() {
    let c = parse_ok(
        &format!("{MINIMAL}[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\"]\n")
            .replace("[server]\nlisten = [\"127.0.0.1:0\"]\n", ""),
    );
    let t = &c.server.trusted_proxies;
    let any = |ip: &str| t.iter().any(|n| n.contains(ip.parse().unwrap()));
    assert!(any("10.1.2.3") && any("192.0.2.7") && any("::1") && any("::ffff:10.0.0.1"));
    assert!(!any("192.0.2.8") && !any("11.0.0.1"));
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é\nx", 3), (2, 1));
    assert_eq!(line_col("abc", 99), (1, 4));
}

#[test]
fn addresses_need_a_host_and_a_port() {
    assert!(parse_address("127.0.0.1:3001").is_some());
    assert!(parse_address("app.internal:8080").is_some());
    assert!(parse_address("[::1]:80").is_some());
    for bad in ["127.0.0.1", ":80", "user@h:1", "h:1/x", "h:port", ""] {
        assert!(parse_address(bad).is_none(), "{bad:?}");
    }
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let e = parse_err(&format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\n"));
    assert!(e.message.contains("not loopback"), "{e}");
    let c = parse_ok(&format!("{MINIMAL}\n[admin]\n"));
    let a = c.admin.unwrap();
    assert_eq!(a.listen.to_string(), "127.0.0.1:9901");
    assert_eq!(a.drain_quiet, Duration::from_secs(120));
    assert_eq!(
        Admin::default().listen,
        a.listen,
        "the defaults are the section's"
    );
    assert_eq!(Admin::default().drain_quiet, a.drain_quiet);
    assert!(
        parse_ok(MINIMAL).admin.is_none(),
        "no [admin], no admin listener"
    );
}

#[test]
fn admin_allowed_hosts_are_host_names_and_a_bad_one_is_pointed_at() {
    let c = parse_ok(&format!(
        "{MINIMAL}\n[admin]\nallowed_hosts = [\"admin.example.com\", \"lb_1\", \"192.0.2.7\", \"[::1]\"]\n"
    ));
    assert_eq!(c.admin.unwrap().allowed_hosts.len(), 4);
    assert!(
        parse_ok(&format!("{MINIMAL}\n[admin]\n"))
            .admin
            .unwrap()
            .allowed_hosts
            .is_empty()
    );
    for bad in [
        "admin.example.com:9901",
        "http://admin.example.com",
        "",
        "a..b",
        "-a.example",
        "a b",
        "[::1",
        "[evil]",
    ] {
        let text =
            format!("{MINIMAL}\n[admin]\nallowed_hosts = [\n  \"ok.example\",\n  {bad:?},\n]\n");
        let line = text.lines().count() - 1;
        err_at(&text, line, 3, "admin.allowed_hosts");
    }
}

#[test]
fn tls_listeners_need_loadable_certificates_and_errors_point_at_them() {
    let text = MINIMAL.replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = []\nlisten_tls = [\"127.0.0.1:0\"]",
    );
    let e = parse_err(&text);
    assert!(e.message.contains("needs certificates"), "{e}");
    assert_eq!(e.line, 4, "{e}");

    let with =
        format!("{text}\n[tls]\ncerts = [{{ cert = \"missing.pem\", key = \"missing.key\" }}]\n");
    let e = parse_err(&with);
    assert!(e.message.contains("/etc/stickyd/missing.pem"), "{e}");
    assert_eq!(e.line, with.lines().count(), "{e}");

    let none = MINIMAL.replace("listen = [\"127.0.0.1:0\"]", "listen = []");
    let e = parse_err(&none);
    assert!(e.message.contains("at least one address"), "{e}");
}

/// `# line 1` then `[section]` on line 2 and `body` from line 3 on, then a valid backend.
fn section(section: &str, body: &str) -> String {
    format!("# line 1\n[{section}]\n{body}\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n")
}

/// `# line 1`, then `[[backend]]` on line 2 with `body` (its keys) from line 3 on.
fn backend(body: &str) -> String {
    format!("# line 1\n[[backend]]\n{body}\n")
}

#[test]
fn every_validation_error_names_the_offending_keys_own_line_and_column() {
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = crate::tls::self_signed(files.path(), "site");
    let (_, other_key) = crate::tls::self_signed(files.path(), "other");
    let garbage = files.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let certs = |c: &Path, k: &Path| {
        format!(
            "certs = [\n  {{ cert = \"{}\",\n    key = \"{}\" }},\n]",
            c.display(),
            k.display()
        )
    };
    let dup = "id = \"a\"\naddress = \"h:1\"\n[[backend]]\nid = \"a\"\naddress = \"h:2\"";
    let tls_backend = "id = \"a\"\naddress = \"h:1\"\ntls = true";
    // (config text, line, column, a fragment of the message): one row per rule, in the order
    // `validate` checks them, every offending key below line 1.
    let rows: Vec<(String, usize, usize, &str)> = vec![
        // [admin]
        (section("admin", "listen = \"0.0.0.0:9901\""), 3, 10, "is not loopback"),
        (
            "# line 1\n[server]\nlisten = [\"127.0.0.1:9901\"]\n[admin]\nlisten = \"127.0.0.1:9901\"\n"
                .into(),
            5,
            10,
            "admin.listen is also a server.listen address",
        ),
        // The admin address is the default one: the server.listen that takes it is pointed at.
        (
            "# line 1\n[server]\nlisten = [\"127.0.0.1:9901\"]\n[admin]\n".into(),
            3,
            10,
            "admin.listen is also a server.listen address",
        ),
        (
            section("admin", "allowed_hosts = [\"ok.example\",\n  \"a:1\"]"),
            4,
            3,
            "invalid admin.allowed_hosts entry \"a:1\"",
        ),
        // [balance]
        (section("balance", "load_factor = 0.5"), 3, 15, "balance.load_factor must be 1.0 to 100.0"),
        // [server]
        (section("server", "listen = []"), 3, 10, "needs at least one address"),
        (section("server", "listen_tls = [\"127.0.0.1:0\"]"), 3, 14, "server.listen_tls needs certificates"),
        (section("server", "max_connections = 0"), 3, 19, "server.max_connections must be at least 1"),
        (section("server", "max_header_bytes = 100"), 3, 20, "server.max_header_bytes must be 8192 to 1048576"),
        (section("server", "max_headers = 0"), 3, 15, "server.max_headers must be 1 to 1000"),
        (section("server", "header_read_timeout = \"0s\""), 3, 23, "server.header_read_timeout must be more than 0"),
        (section("server", "client_timeout = \"0\""), 3, 18, "server.client_timeout must be more than 0"),
        // [affinity]
        (section("affinity", "sticky_fraction = 1.5"), 3, 19, "affinity.sticky_fraction must be 0.0 to 1.0"),
        (section("affinity", "header = \"x y\""), 3, 10, "invalid header name"),
        (section("affinity", "cookie = \"a;b\""), 3, 10, "invalid cookie name"),
        (section("affinity", "max_idle = \"500ms\""), 3, 12, "affinity.max_idle must be at least 1s"),
        (section("affinity", "max_life = \"0s\""), 3, 12, "affinity.max_life must be at least 1s"),
        (section("affinity", "max_idle = \"100000d\""), 3, 12, "affinity.max_idle is too long"),
        (section("affinity", "max_life = \"100000d\""), 3, 12, "affinity.max_life is too long"),
        (section("affinity", "refresh_fraction = 1.0"), 3, 20, "affinity.refresh_fraction must be at least 0 and below 1"),
        (section("affinity", "domain = \"a b\""), 3, 10, "invalid cookie domain"),
        // [upstream]
        (section("upstream", "retries = 4"), 3, 11, "upstream.retries must be 0 to 3"),
        (section("upstream", "connect_timeout = \"0s\""), 3, 19, "upstream.connect_timeout must be more than 0"),
        (section("upstream", "response_timeout = \"0s\""), 3, 20, "upstream.response_timeout must be more than 0"),
        // [health]
        (section("health", "path = \"healthz\""), 3, 8, "invalid health.path"),
        (section("health", "host = \"a\\u0001b\""), 3, 8, "invalid health.host"),
        (section("health", "interval = \"0s\""), 3, 12, "must be more than 0"),
        (section("health", "timeout = \"0s\""), 3, 11, "must be more than 0"),
        (section("health", "rise = 0"), 3, 8, "health.rise must be at least 1"),
        (section("health", "fall = 0"), 3, 8, "health.fall must be at least 1"),
        // [server] proxy_protocol needs its peers
        (
            section("server", "proxy_protocol = true"),
            3,
            18,
            "needs server.proxy_protocol_from",
        ),
        // [affinity] same_site and partitioned need Secure
        (
            section("affinity", "same_site = \"none\""),
            3,
            13,
            "same_site = \"none\" needs Secure",
        ),
        (
            section("affinity", "secure = false\npartitioned = true"),
            4,
            15,
            "affinity.partitioned needs Secure on every cookie, not affinity.secure = false",
        ),
        // [replication]
        (section("replication", "backups = 3"), 3, 11, "must be 0, 1 or 2"),
        (section("replication", "port = 0"), 3, 8, "replication.port must be 1 to 65535"),
        (
            "# line 1\n[affinity]\nmode = \"ip\"\n[replication]\nbackups = 1\n\
             [[backend]]\nid = \"a\"\naddress = \"h:1\"\n[[backend]]\nid = \"b\"\naddress = \"h:2\"\n"
                .into(),
            5,
            11,
            "replication needs a session token",
        ),
        (
            "# line 1\n[affinity]\non_pinned_down = \"return\"\n[replication]\nbackups = 1\n\
             [[backend]]\nid = \"a\"\naddress = \"h:1\"\n[[backend]]\nid = \"b\"\naddress = \"h:2\"\n"
                .into(),
            5,
            11,
            "on_pinned_down = \"return\"",
        ),
        (section("replication", "backups = 1"), 3, 11, "needs more than 1 backend(s)"),
        // [log]
        (section("log", "level = \"loud=!!\""), 3, 9, "invalid log.level"),
        // [[backend]]
        ("# line 1\n[server]\n".into(), 1, 1, "no [[backend]] is configured"),
        (backend("id = \"a b\"\naddress = \"h:1\""), 3, 6, "invalid backend id"),
        (backend(dup), 6, 6, "duplicate backend id"),
        (backend("id = \"a\"\naddress = \"h\""), 4, 11, "invalid backend address"),
        (backend("id = \"a\"\naddress = \"h:1\"\nweight = 1001"), 5, 10, "backend weight must be 1 to 1000"),
        // Keys, resolved once the rules hold: the spec at fault, wherever it is in the list.
        (section("affinity", "keys = [\"env:K\", \"file:short\"]"), 3, 18, "at least 32"),
        (section("affinity", "keys = [\"env:K\",\n  \"file:missing\"]"), 4, 3, "cannot read key file /etc/stickyd/missing"),
        (section("affinity", "keys = [\"env:NOPE\"]"), 3, 9, "environment variable NOPE is not set"),
        (section("affinity", "keys = [\"hunter2hunter2hunter2hunter2hunter2\"]"), 3, 9, "never written inline"),
        // Backend TLS clients.
        (backend(&format!("{tls_backend}\nserver_name = \"a b\"")), 6, 15, "invalid TLS server name \"a b\""),
        (backend("id = \"a\"\naddress = \"a..b:1\"\ntls = true"), 4, 11, "invalid TLS server name"),
        (backend(&format!("{tls_backend}\ntls_ca = \"missing-ca.pem\"\nserver_name = \"ok\"")), 6, 10, "cannot read CA file /etc/stickyd/missing-ca.pem"),
        (backend(&format!("{tls_backend}\ntls_ca = \"{}\"", garbage.display())), 6, 10, "no usable CA certificate"),
        // [tls] certificates: a certificate error points at its cert, a key error at its key.
        (section("tls", &certs(Path::new("missing.pem"), &key)), 4, 12, "cannot read certificate /etc/stickyd/missing.pem"),
        (section("tls", &certs(&garbage, &key)), 4, 12, "no certificate in"),
        (section("tls", &certs(&cert, Path::new("missing.key"))), 5, 11, "cannot read private key /etc/stickyd/missing.key"),
        (section("tls", &certs(&cert, &garbage)), 5, 11, "cannot read private key"),
        (section("tls", &certs(&cert, &other_key)), 5, 11, "does not belong to the certificate"),
        // [tls] versions: "1.2" and/or "1.3", each once.
        (section("tls", &format!("{}\nversions = [\"1.1\"]", certs(&cert, &key))), 7, 12, "tls.versions takes"),
        (section("tls", &format!("{}\nversions = []", certs(&cert, &key))), 7, 12, "tls.versions takes"),
        (section("tls", &format!("{}\nversions = [\"1.3\", \"1.3\"]", certs(&cert, &key))), 7, 12, "tls.versions takes"),
        (section("tls", "certs = []\nversions = [\"1.1\"]"), 4, 12, "tls.versions takes"),
        // [admin] token, resolved like the keys.
        (section("admin", "token = \"env:NOPE\""), 3, 9, "environment variable NOPE is not set"),
        (section("admin", "token = \"file:short\""), 3, 9, "at least 32"),
    ];
    let mut keys = FakeKeys::default();
    keys.files
        .insert(PathBuf::from("/etc/stickyd/short"), vec![b'x'; 31]);
    keys.env.insert("K".into(), vec![b'k'; 32]);
    for (text, line, col, needle) in &rows {
        let e = parse(text, "t.toml", Path::new("/etc/stickyd"), &keys)
            .expect_err(&format!("{text} should be refused"));
        assert_eq!((e.line, e.col), (*line, *col), "{e}\n--- in ---\n{text}");
        assert!(
            e.message.contains(needle),
            "{e} should say {needle:?}\n--- in ---\n{text}"
        );
        assert!(
            e.to_string().starts_with(&format!("t.toml:{line}:{col}: ")),
            "{e}"
        );
    }
}

#[test]
fn the_summary_shows_durations_as_they_read() {
    let s = parse_ok(MINIMAL).summary();
    assert!(s.contains("max_idle 30m, max_life 1day"), "{s}");
    assert!(
        s.contains("GET /healthz every 2s, timeout 1s, rise 2, fall 3"),
        "{s}"
    );
    assert!(s.contains("app-1 127.0.0.1:3001 weight 1 active"), "{s}");
}

/// Groundwork for pools (issue 14): the raw schema deserialises from toml's spanned
/// `DeTable` as from text, spans included, so per-pool sections can be merged with the
/// top-level ones before typed deserialisation without losing any value's position.
#[test]
fn the_schema_deserialises_from_a_spanned_table_with_the_same_spans() {
    use serde::Deserialize;
    let text = "[affinity]\ncookie = \"c\"\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n";
    let direct: raw::Config = toml::from_str(text).unwrap();
    let table = toml::de::DeTable::parse(text).unwrap();
    let via: raw::Config = raw::Config::deserialize(toml::de::Deserializer::from(table)).unwrap();
    assert_eq!(format!("{direct:?}"), format!("{via:?}"));
}

#[test]
fn pools_and_routes_parse_with_their_defaults_and_errors_at_their_keys() {
    let ok = "[affinity]\nmax_idle = \"1h\"\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n\
              [[pool]]\nname = \"shop\"\n[pool.affinity]\nmax_idle = \"5m\"\n\
              [[pool.backend]]\nid = \"s1\"\naddress = \"h:2\"\n\
              [[route]]\nhost = \"shop.example.com\"\npool = \"shop\"\n";
    let c = parse_for_tests(ok);
    let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default", "shop"]);
    assert_eq!(c.pools[0].affinity.cookie, "stickyd");
    assert_eq!(c.pools[1].affinity.cookie, "stickyd_shop");
    assert_eq!(
        c.pools[1].affinity.max_idle,
        Duration::from_secs(300),
        "its own value"
    );
    assert_eq!(c.pools[1].backends, [1]);
    let bytes = |p: &crate::config::Pool| -> Vec<Vec<u8>> {
        p.affinity.secrets.iter().map(|k| k.0.clone()).collect()
    };
    assert!(
        !c.pools[1].affinity.secrets.is_empty(),
        "a pool signs with a key"
    );
    assert_eq!(
        bytes(&c.pools[1]),
        bytes(&c.pools[0]),
        "the top-level keys, inherited"
    );
    assert_eq!(c.backends[1].id, "s1");
    assert_eq!(c.routes.pick(Some(b"shop.example.com"), b"/"), Some(1));
    assert_eq!(
        c.routes.pick(Some(b"other"), b"/"),
        Some(0),
        "the default pool"
    );

    // Pools inherit [replication]; an inherited value that does not fit a pool is refused at
    // the line that set it, naming the pool.
    let inherited = "[replication]\nbackups = 1\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n\
                     [[backend]]\nid = \"b\"\naddress = \"h:2\"\n\
                     [[pool]]\nname = \"one\"\n[[pool.backend]]\nid = \"o\"\naddress = \"h:3\"\n";
    let e = parse(
        inherited,
        "t.toml",
        Path::new("/etc/stickyd"),
        &FakeKeys::default(),
    )
    .unwrap_err();
    assert_eq!((e.line, e.col), (2, 11), "{e}");
    assert!(e.message.contains("pool \"one\" has 1"), "{e}");
    let fixed = inherited.replace(
        "name = \"one\"\n",
        "name = \"one\"\n[pool.replication]\nbackups = 0\n",
    );
    let c = parse_for_tests(&fixed);
    assert_eq!(
        (
            c.pools[0].replication.backups,
            c.pools[1].replication.backups
        ),
        (1, 0)
    );

    let pool = |body: &str| format!("# line 1\n[[pool]]\n{body}\n");
    let rows = [
        (
            pool("name = \"a b\"\n[[pool.backend]]\nid = \"x\"\naddress = \"h:1\""),
            3,
            8,
            "invalid pool name",
        ),
        (pool("name = \"p\""), 3, 8, "has no backends"),
        (
            pool(
                "name = \"p\"\n[[pool.backend]]\nid = \"x\"\naddress = \"h:1\"\n[[pool.backend]]\nid = \"x\"\naddress = \"h:2\"",
            ),
            8,
            6,
            "duplicate backend id",
        ),
        (
            pool(
                "name = \"p\"\n[[pool.backend]]\nid = \"x\"\naddress = \"h:1\"\n[[route]]\npool = \"q\"",
            ),
            8,
            8,
            "route to unknown pool \"q\"",
        ),
        (
            pool(
                "name = \"p\"\n[[pool.backend]]\nid = \"x\"\naddress = \"h:1\"\n[[route]]\nhost = \"a:1\"\npool = \"p\"",
            ),
            8,
            8,
            "route host",
        ),
        (
            pool(
                "name = \"p\"\n[[pool.backend]]\nid = \"x\"\naddress = \"h:1\"\n[[route]]\npath_prefix = \"api\"\npool = \"p\"",
            ),
            8,
            15,
            "route path_prefix",
        ),
        (
            pool(
                "name = \"p\"\n[[pool.backend]]\nid = \"x\"\naddress = \"h:1\"\n[[route]]\nhost = \"a.test\"\npool = \"p\"\n[[route]]\nhost = \"A.test\"\npool = \"p\"",
            ),
            11,
            8,
            "same host and path_prefix as route 1",
        ),
    ];
    for (text, line, col, needle) in &rows {
        let e = parse(
            text,
            "t.toml",
            Path::new("/etc/stickyd"),
            &FakeKeys::default(),
        )
        .expect_err(&format!("{text} should be refused"));
        assert_eq!((e.line, e.col), (*line, *col), "{e}\n--- in ---\n{text}");
        assert!(e.message.contains(needle), "{e} should say {needle:?}");
    }
}

const DISCOVERED: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[[discover]]
dns = "app.shop.svc.cluster.local:8080"
"#;

#[test]
fn discover_alone_makes_the_default_pool_with_its_defaults() {
    let c = parse_ok(DISCOVERED);
    assert!(c.backends.is_empty());
    assert_eq!(c.pools.len(), 1);
    let p = &c.pools[0];
    assert_eq!(p.name, "default");
    assert!(p.backends.is_empty());
    let d = &p.discover[0];
    assert_eq!(
        d.lookup,
        Lookup::Dns {
            host: "app.shop.svc.cluster.local".into(),
            port: 8080
        }
    );
    assert_eq!(d.label(), "dns:app.shop.svc.cluster.local:8080");
    assert_eq!(d.id, DiscoverId::Address);
    assert_eq!(d.interval, Duration::from_secs(5));
    assert_eq!(d.remove_grace, Duration::from_secs(30));
    assert_eq!(d.resolver, Resolver::System);
    assert_eq!(d.weight, 1);
    assert!(d.origin.is_none());
}

#[test]
fn a_pool_may_discover_beside_its_backends_or_alone() {
    let c = parse_ok(&format!(
        "{MINIMAL}\n[[pool]]\nname = \"shop\"\n[[pool.discover]]\nsrv = \"_http._tcp.shop.test\"\nid = \"srv-target\"\ninterval = \"100ms\"\nresolver = \"127.0.0.1:5353\"\nweight = 3\nprotocol = \"h2\"\n"
    ));
    let shop = &c.pools[1];
    assert!(shop.backends.is_empty());
    let d = &shop.discover[0];
    assert_eq!(d.lookup, Lookup::Srv("_http._tcp.shop.test".into()));
    assert_eq!(d.id, DiscoverId::SrvTarget);
    assert_eq!(d.resolver, Resolver::At("127.0.0.1:5353".parse().unwrap()));
    assert_eq!((d.weight, d.protocol), (3, Protocol::H2));
    assert!(c.pools[0].discover.is_empty());
}

#[test]
fn discover_errors_point_at_the_key() {
    let base = "[server]\nlisten = [\"127.0.0.1:0\"]\n[[discover]]\n";
    err_at(&format!("{base}dns = \"app.test\"\n"), 4, 7, "NAME:PORT");
    err_at(&format!("{base}dns = \"app.test:0\"\n"), 4, 7, "NAME:PORT");
    err_at(&format!("{base}dns = \"bad name:80\"\n"), 4, 7, "NAME:PORT");
    err_at(&format!("{base}srv = \"a..b\"\n"), 4, 7, "DNS name");
    err_at(
        &format!("{base}dns = \"a.test:80\"\nsrv = \"_x._tcp.a.test\"\n"),
        5,
        7,
        "not both",
    );
    err_at(&format!("{base}interval = \"1s\"\n"), 3, 1, "needs dns");
    err_at(
        &format!("{base}dns = \"a.test:80\"\nid = \"srv-target\"\n"),
        5,
        6,
        "needs srv",
    );
    err_at(
        &format!("{base}dns = \"a.test:80\"\nid = \"name\"\n"),
        5,
        6,
        "",
    );
    err_at(
        &format!("{base}dns = \"a.test:80\"\ninterval = \"50ms\"\n"),
        5,
        12,
        "at least 100ms",
    );
    err_at(
        &format!("{base}dns = \"a.test:80\"\nresolver = \"dns.google\"\n"),
        5,
        12,
        "IP:PORT",
    );
    err_at(
        &format!("{base}dns = \"a.test:80\"\nweight = 0\n"),
        5,
        10,
        "1 to 1000",
    );
    err_at(
        &format!("{base}dns = \"a.test:80\"\ntls = true\n"),
        5,
        7,
        "server_name",
    );
    err_at(
        &format!("{base}dns = \"a.test:80\"\n[[discover]]\ndns = \"a.test:80\"\n"),
        6,
        7,
        "duplicate",
    );
    err_at(
        &format!("{base}dns = \"a.test:80\"\nshape = 1\n"),
        5,
        1,
        "unknown field",
    );
}

#[test]
fn a_pool_needs_backends_or_discovery_and_a_config_needs_one_of_them() {
    err_at(
        &format!("{MINIMAL}\n[[pool]]\nname = \"shop\"\n"),
        10,
        8,
        "[[pool.discover]]",
    );
    err_at(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n",
        1,
        1,
        "[[discover]]",
    );
}

#[test]
fn replication_backups_are_not_counted_against_a_discovered_pool() {
    let c = parse_ok(&format!(
        "{DISCOVERED}\n[replication]\nbackups = 2\n[affinity]\nmode = \"cookie\"\n"
    ));
    assert_eq!(c.pools[0].replication.backups, 2);
}
