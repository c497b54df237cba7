//! The `stickyd` binary: check, exit codes, version, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// Signals through rustix's safe kill(2): no kill(1) to spawn, no `unsafe`.
use rustix::process::{Pid, Signal, kill_process};

const BIN: &str = env!("CARGO_BIN_EXE_stickyd");

/// A config file in a fresh temporary directory, with a key file beside it.
fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stickyd-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), "cli-test-key-0123456789abcdef0123456789\n").unwrap();
    let path = dir.join("stickyd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = "[server]\nlisten = [\"127.0.0.1:0\"]\n[affinity]\nkeys = [\"file:key\"]\n[health]\nenabled = false\n[[backend]]\nid = \"app-1\"\naddress = \"127.0.0.1:9\"\n";

/// `stickyd check --config PATH`.
fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// [`check`] of a good file: its summary, after asserting status 0.
fn check_ok(path: &std::path::Path) -> String {
    let out = check(path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn check_accepts_a_good_config_and_prints_a_summary() {
    let stdout = check_ok(&write_config("good", GOOD));
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(stdout.contains("app-1 127.0.0.1:9 weight 1"), "{stdout}");
    assert!(stdout.contains("1 key(s)"), "{stdout}");
}

#[test]
fn check_prints_the_pools_and_the_route_table_and_refuses_a_route_to_no_pool() {
    let pools = format!(
        "{GOOD}[[pool]]\nname = \"shop\"\n[[pool.backend]]\nid = \"s1\"\naddress = \"127.0.0.1:9\"\n\
         [[pool]]\nname = \"admin\"\n[[pool.backend]]\nid = \"m1\"\naddress = \"127.0.0.1:9\"\n\
         [[route]]\npath_prefix = \"/admin\"\npool = \"admin\"\n\
         [[route]]\nhost = \"*.example.com\"\npool = \"shop\"\n\
         [[route]]\nhost = \"shop.example.com\"\npath_prefix = \"/cart\"\npool = \"shop\"\n"
    );
    let stdout = check_ok(&write_config("pools", &pools));
    assert!(
        stdout.contains("s1 127.0.0.1:9 weight 1 active pool shop"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  shop: cookie \"stickyd_shop\""),
        "{stdout}"
    );
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("routes"))
        .skip(1)
        .collect();
    assert_eq!(
        table,
        [
            "  shop.example.com /cart -> shop",
            "  *.example.com / -> shop",
            "  * /admin -> admin",
            "  anything else -> default",
        ],
        "{stdout}"
    );

    let bad = pools.replace("pool = \"admin\"", "pool = \"nope\"");
    let path = write_config("pools-bad", &bad);
    let out = check(&path);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let line = bad.lines().position(|l| l == "pool = \"nope\"").unwrap() + 1;
    assert!(
        stderr.starts_with(&format!("{}:{line}:8: ", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown pool \"nope\""), "{stderr}");
}

#[test]
fn a_bad_config_exits_64_with_one_positioned_line() {
    let path = write_config(
        "bad",
        "[server]\nlisten = [\"127.0.0.1:0\"]\nlisten_tpyo = 3\n",
    );
    for args in [vec!["check", "--config"], vec!["--config"]] {
        let out = Command::new(BIN).args(&args).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(64));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("{}:3:1: ", path.display())),
            "{stderr}"
        );
        assert!(stderr.contains("listen_tpyo"), "{stderr}");
    }
}

#[test]
fn a_missing_config_file_or_flag_exits_64() {
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/stickyd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("/nonexistent/stickyd.toml:1:1: cannot read config")
    );
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("stickyd {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("--config") && help.contains("check"),
        "{help}"
    );
}

#[test]
fn sigterm_stops_the_daemon_with_status_0() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = GOOD.replace("127.0.0.1:9", &backend.local_addr().unwrap().to_string());
    let path = write_config("term", &text);
    let (mut child, lines) = daemon(&path);
    let child = &mut child.0;
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("stickyd kept logging")
    };
    // The log line "listening address=127.0.0.1:PORT" says where it is.
    let addr = loop {
        if let Some(a) = next().split("address=").nth(1) {
            break a.split_whitespace().next().unwrap().to_string();
        }
    };
    // It serves: a request reaches the backend, which answers.
    let mut client = TcpStream::connect(&addr).unwrap();
    client
        .write_all(b"GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .unwrap();
    let (mut up, _) = backend.accept().unwrap();
    let mut head = [0u8; 1024];
    let n = up.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"GET /x HTTP/1.1"));
    up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .unwrap();
    let mut resp = String::new();
    client.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200 OK") && resp.ends_with("ok"),
        "{resp}"
    );

    kill_process(Pid::from_child(child), Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "stickyd did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    // The child has exited, so its stderr is closed and this iteration ends.
    let rest: Vec<String> = lines.iter().collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}

#[test]
fn with_a_shutdown_delay_sigterm_makes_it_unready_first_and_it_serves_on_until_drained() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = GOOD
        .replace("127.0.0.1:9", &backend.local_addr().unwrap().to_string())
        .replace(
            "listen = [\"127.0.0.1:0\"]\n",
            "listen = [\"127.0.0.1:0\"]\nshutdown_delay = \"1h\"\n",
        )
        + "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"file:key\"\n";
    let path = write_config("delay", &text);
    let (mut child, lines) = daemon(&path);
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("stickyd kept logging")
    };
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        let l = next();
        let at = l
            .split("address=")
            .nth(1)
            .map(|a| a.split_whitespace().next().unwrap().to_string());
        if l.contains("admin API listening") {
            admin = at;
        } else if l.contains("listening") {
            addr = at;
        }
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    // The probes answer without the token; the rest still needs it.
    assert!(http(&admin, "GET", "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http(&admin, "GET", "/readyz").starts_with("HTTP/1.1 200"));
    assert!(http(&admin, "GET", "/backends").starts_with("HTTP/1.1 401"));

    kill_process(Pid::from_child(&child.0), Signal::TERM).unwrap();
    while !next().contains("not ready") {}
    // Not ready, still alive, and still serving new connections.
    let ready = http(&admin, "GET", "/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.ends_with("draining\n"),
        "{ready}"
    );
    assert!(http(&admin, "GET", "/healthz").starts_with("HTTP/1.1 200"));
    let mut client = TcpStream::connect(&addr).unwrap();
    client
        .write_all(b"GET /late HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .unwrap();
    let (mut up, _) = backend.accept().unwrap();
    let mut head = [0u8; 1024];
    let n = up.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"GET /late HTTP/1.1"));
    up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .unwrap();
    let mut resp = String::new();
    client.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    // A second signal ends the delay: it drains and exits 0.
    kill_process(Pid::from_child(&child.0), Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "stickyd did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn with_watch_config_a_changed_file_or_a_swapped_symlink_is_reloaded() {
    let base = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        GOOD.replace(
            "listen = [\"127.0.0.1:0\"]\n",
            "listen = [\"127.0.0.1:0\"]\nwatch_config = true\n"
        )
    );
    // The config path is a symlink to a file in a data directory, as a ConfigMap mounts it.
    let real = write_config("watch", &base);
    let dir = real.parent().unwrap().to_path_buf();
    let link = dir.join("linked.toml");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let (_child, lines) = daemon(&link);
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("stickyd kept logging")
    };
    let admin = loop {
        let l = next();
        if l.contains("admin API listening") {
            let a = l.split("address=").nth(1).unwrap();
            break a.split_whitespace().next().unwrap().to_string();
        }
    };
    let add = |text: &str, id: &str, port: u16| {
        text.replace(
            "[admin]",
            &format!("[[backend]]\nid = \"{id}\"\naddress = \"127.0.0.1:{port}\"\n[admin]"),
        )
    };
    // The file changes: reloaded.
    let two = add(&base, "app-2", 10);
    std::fs::write(&real, &two).unwrap();
    while !next().contains("configuration reloaded") {}
    assert!(http(&admin, "GET", "/backends").contains("\"app-2\""));
    // A broken file: refused, the running config keeps serving.
    std::fs::write(&real, two.replace("id = \"app-2\"", "id = 7")).unwrap();
    while !next().contains("reload refused") {}
    assert!(http(&admin, "GET", "/backends").contains("\"app-2\""));
    // The symlink swapped to another file, as a ConfigMap update does: reloaded.
    let other = dir.join("other.toml");
    std::fs::write(&other, add(&two, "app-3", 11)).unwrap();
    let tmp = dir.join("linked.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&other, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    while !next().contains("configuration reloaded") {}
    assert!(http(&admin, "GET", "/backends").contains("\"app-3\""));
}

/// Starts the daemon on `path` with info logs; its log lines arrive through the channel, so
/// that every wait on them can have a deadline.
fn daemon(path: &std::path::Path) -> (Reaped, std::sync::mpsc::Receiver<String>) {
    daemon_logging(path, "info")
}

/// [`daemon`] with `rust_log` as RUST_LOG.
fn daemon_logging(
    path: &std::path::Path,
    rust_log: &str,
) -> (Reaped, std::sync::mpsc::Receiver<String>) {
    let mut child = Reaped(
        Command::new(BIN)
            .arg("--config")
            .arg(path)
            .env("RUST_LOG", rust_log)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (child, lines)
}

/// A child process killed if the test fails before it exits, so no daemon outlives its test.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One HTTP/1.1 call with `Connection: close`; the whole response as text.
fn http(addr: &str, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn post_reload_rereads_the_file_and_refuses_a_bad_one_with_its_position() {
    let text = format!("{GOOD}[admin]\nlisten = \"127.0.0.1:0\"\n");
    let path = write_config("reload", &text);
    let (_child, lines) = daemon(&path);
    let admin = loop {
        let l = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("stickyd kept logging");
        if l.contains("admin API listening") {
            let a = l.split("address=").nth(1).unwrap();
            break a.split_whitespace().next().unwrap().to_string();
        }
    };

    // A broken file: 400 with PATH:LINE:COL, and the old config keeps serving.
    std::fs::write(&path, text.replace("id = \"app-1\"", "id = 7")).unwrap();
    let resp = http(&admin, "POST", "/reload");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("stickyd.toml:8:6"), "{resp}");
    let backends = http(&admin, "GET", "/backends");
    assert!(backends.contains("\"app-1\""), "{backends}");

    // A good file with a second backend: 200, and it is in the pool.
    let two = text.replace(
        "[admin]",
        "[[backend]]\nid = \"app-2\"\naddress = \"127.0.0.1:10\"\n[admin]",
    );
    std::fs::write(&path, two).unwrap();
    let resp = http(&admin, "POST", "/reload");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"backends\": 2"), "{resp}");
    let backends = http(&admin, "GET", "/backends");
    assert!(backends.contains("\"app-2\""), "{backends}");
    assert!(http(&admin, "GET", "/healthz").starts_with("HTTP/1.1 200"));
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let path = write_config("notify", GOOD);
    let sock_path = path.with_file_name("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Reaped(
        Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .env("NOTIFY_SOCKET", &sock_path)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let next = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving on 127.0.0.1:"),
        "{ready}"
    );
    let pid = Pid::from_child(&child.0);
    kill_process(pid, Signal::HUP).unwrap();
    // systemd 253+ (Type=notify-reload) wants the reload's CLOCK_MONOTONIC time with it.
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next().starts_with("READY=1"));
    kill_process(pid, Signal::TERM).unwrap();
    assert!(next().starts_with("STOPPING=1"));
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_rust_log_with_spaces_and_non_ascii_neither_panics_nor_is_refused() {
    // tracing-subscriber 0.3 panics on this filter unless its directives are trimmed (the
    // config loader's twin was found by fuzzing: fuzz/regressions/config/).
    let path = write_config("rust-log", GOOD);
    let (mut child, lines) = daemon_logging(&path, "info,   WWW\u{feff}=am");
    let mut seen = Vec::new();
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(20)) {
        let listening = l.contains("listening");
        seen.push(l);
        if listening {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("listening")),
        "the daemon did not start: {}",
        seen.first().map_or("", String::as_str)
    );
    assert_eq!(child.0.try_wait().unwrap(), None, "still running");
}
