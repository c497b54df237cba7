//! Heavy runs against the real binary, as a separate process so its memory and CPU can be read
//! from /proc: 10,000 slowloris connections, and a connection storm past the open-files limit.
//! Ignored by default (they need ~10k file descriptors per process and some seconds); run with
//! `cargo test --release --test storm -- --ignored --nocapture --test-threads 1`. The figures
//! they print go in the table of docs/reliability.md.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_stickyd");

/// The daemon as a child process, killed when dropped.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts stickyd with `server` settings in front of `backend`; returns once it listens.
    fn start(server: &str, backend: SocketAddr) -> Daemon {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(
            dir.join("key"),
            "storm-test-key-0123456789abcdef0123456789\n",
        )
        .unwrap();
        let path = dir.join("stickyd.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n[affinity]\nkeys = [\"file:key\"]\n[health]\nenabled = false\n[log]\nlevel = \"info\"\n[[backend]]\nid = \"a\"\naddress = \"{backend}\"\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = l.split("address=").nth(1)
                    && l.contains("listening")
                {
                    let _ = tx.send(a.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("stickyd says where it listens")
            .parse()
            .unwrap();
        Daemon { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// User plus system CPU time so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Raises this process's soft open-files limit to its hard one (the test's own sockets).
fn raise_nofile() -> u64 {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).unwrap();
    hard
}

/// One plain request on a new connection: its status, if it got one.
async fn one_request(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: 10,000 connections; run with --ignored"]
async fn ten_thousand_slowloris_connections_are_each_closed_at_the_header_deadline() {
    const ATTACKERS: usize = 10_000;
    let hard = raise_nofile();
    assert!(
        hard as usize > ATTACKERS + 500,
        "open-files hard limit {hard} is too low"
    );
    let backend = TestBackend::start("a").await;
    let lb = Daemon::start(
        "worker_threads = 2\nmax_connections = 15000\nheader_read_timeout = \"5s\"",
        backend.addr,
    );
    let addr = lb.addr;
    let rss_before = lb.rss_kib();
    let fds_before = lb.open_files();
    let opened = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut attackers = Vec::with_capacity(ATTACKERS);
    for i in 0..ATTACKERS {
        let opened = opened.clone();
        attackers.push(tokio::spawn(async move {
            // Spread the connects a little so the accept backlog never overflows.
            tokio::time::sleep(Duration::from_millis((i / 250) as u64 * 20)).await;
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .await
                .ok()?;
            let at = Instant::now();
            opened.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 256];
            // A byte a second, for at most 60 s: never a whole head.
            for _ in 0..60 {
                if s.write_all(b"a").await.is_err() {
                    return Some(at.elapsed());
                }
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(at.elapsed()),
                    _ => {}
                }
            }
            None
        }));
    }
    // Every attacker connected: stickyd's memory now holds 10,000 half-read heads.
    while opened.load(Ordering::SeqCst) < ATTACKERS && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = opened.load(Ordering::SeqCst);
    // ... and stickyd has accepted them all (not just the kernel).
    let mut fds = lb.open_files();
    while fds < fds_before + ATTACKERS && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        fds = lb.open_files();
    }
    let held = fds - fds_before;
    let rss_during = lb.rss_kib();
    // A normal client meanwhile.
    let mut ok = 0;
    for _ in 0..100 {
        if one_request(addr).await == Some(200) {
            ok += 1;
        }
    }
    let mut closed = Vec::new();
    for t in attackers {
        if let Some(after) = t.await.unwrap() {
            closed.push(after);
        }
    }
    closed.sort();
    let per_conn = (rss_during.saturating_sub(rss_before)) as f64 * 1024.0 / held as f64;
    println!(
        "slowloris: {connected} connected (stickyd held {held} of them at once), {} closed by stickyd, \
         after {:?} (first) .. {:?} (last) of a 5 s deadline; normal client {ok}/100; \
         RSS {rss_before} KiB -> {rss_during} KiB, {:.1} KB per connection",
        closed.len(),
        closed.first(),
        closed.last(),
        per_conn / 1000.0
    );
    assert_eq!(connected, ATTACKERS);
    assert_eq!(held, ATTACKERS, "stickyd held every connection at once");
    assert_eq!(
        closed.len(),
        ATTACKERS,
        "every slowloris connection was closed"
    );
    assert!(
        *closed.last().unwrap() < Duration::from_secs(15),
        "closed long after the deadline"
    );
    assert_eq!(ok, 100, "the normal client was served throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: a connection storm past the open-files limit; run with --ignored"]
async fn a_connection_storm_past_the_fd_limit_does_not_spin_and_service_resumes_at_once() {
    const STORM: usize = 3000;
    const LIMIT: usize = 1024;
    raise_nofile();
    let backend = TestBackend::start("a").await;
    // max_connections far above what the open-files limit allows: the limit is what stops it.
    let lb = Daemon::start("worker_threads = 2\nmax_connections = 100000", backend.addr);
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", lb.pid()))
        .arg(format!("--nofile={LIMIT}:{LIMIT}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());
    assert_eq!(
        one_request(lb.addr).await,
        Some(200),
        "served before the storm"
    );

    // The storm: connections that send nothing, held open.
    let mut storm = Vec::with_capacity(STORM);
    for _ in 0..STORM {
        match TcpStream::connect(lb.addr).await {
            Ok(s) => storm.push(s),
            Err(_) => break,
        }
    }
    let connected = storm.len();
    // Let stickyd take what it can, then read its CPU over the next two seconds.
    let mut fds = 0;
    for _ in 0..100 {
        fds = lb.open_files();
        if fds + 16 >= LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (cpu0, t0) = (lb.cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let share = (lb.cpu() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    // The storm ends; how soon is a normal client served again?
    drop(storm);
    let ended = Instant::now();
    let mut attempts = 0;
    let back = loop {
        attempts += 1;
        if one_request(lb.addr).await == Some(200) {
            break ended.elapsed();
        }
        assert!(
            ended.elapsed() < Duration::from_secs(10),
            "not serving 10 s after the storm"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "storm: {connected} connections against a {LIMIT}-file limit; stickyd held {fds} fds, \
         used {:.1}% of a CPU while at the limit; served again {back:?} after the storm ended \
         ({attempts} attempts)",
        share * 100.0
    );
    assert!(
        fds + 16 >= LIMIT,
        "the storm reached the open-files limit ({fds})"
    );
    assert!(
        share < 0.5,
        "busy at the fd limit: {:.0}% of a CPU",
        share * 100.0
    );
    assert!(
        back < Duration::from_secs(1),
        "served again only after {back:?}"
    );
}
