//! `--idle-conns`: open many keep-alive connections, one request on each, hold them idle, and
//! read the balancer's RSS; plus the file-descriptor and port budget such a run needs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::{Conn, Target, exchange};
use crate::procfs;
use crate::report::IdleReport;
use crate::stats::Failure;
use crate::users::User;

/// Connections opened at once.
const BATCH: usize = 256;

/// Opens `n` connections to `target`, one request each, holds them for `hold`, and samples
/// `pid`'s RSS before and after. Stops early when `interrupted` turns true.
pub async fn hold(
    target: Arc<Target>,
    n: usize,
    pid: Option<u32>,
    hold: Duration,
    timeout: Duration,
    mut interrupted: watch::Receiver<bool>,
) -> IdleReport {
    let rss_before = pid.and_then(procfs::rss_kib);
    let mut conns: Vec<Conn> = Vec::with_capacity(n);
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut left = n;
    while left > 0 && !*interrupted.borrow() {
        let batch = left.min(BATCH);
        left -= batch;
        let mut set = JoinSet::new();
        for _ in 0..batch {
            let target = target.clone();
            set.spawn(async move {
                tokio::time::timeout(timeout, async {
                    let mut conn = Conn::open(target.addr).await?;
                    let mut user = User::new(1, true);
                    exchange(&mut conn, &target, &mut user).await?;
                    Ok::<Conn, Failure>(conn)
                })
                .await
                .unwrap_or(Err(Failure::Timeout))
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(c)) => conns.push(c),
                Ok(Err(f)) => *failed.entry(failure_name(f).into()).or_default() += 1,
                Err(_) => *failed.entry("task".into()).or_default() += 1,
            }
        }
    }
    let opened = conns.len();
    if !*interrupted.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = interrupted.wait_for(|i| *i) => {}
        }
    }
    let rss_held = pid.and_then(procfs::rss_kib);
    let still_open: usize = conns.iter_mut().map(|c| usize::from(!c.is_closed())).sum();
    drop(conns);
    IdleReport {
        requested: n,
        opened,
        still_open,
        failed,
        hold_s: hold.as_secs_f64(),
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        bytes_per_conn: match (rss_before, rss_held) {
            (Some(b), Some(h)) if opened > 0 => {
                Some((h as f64 - b as f64) * 1024.0 / opened as f64)
            }
            _ => None,
        },
    }
}

fn failure_name(f: Failure) -> &'static str {
    match f {
        Failure::Connect => "connect",
        Failure::Timeout => "timeout",
        Failure::Io => "reset/io",
        Failure::Protocol => "other",
    }
}

/// The local port range of `/proc/sys/net/ipv4/ip_local_port_range` ("32768\t60999"), as the
/// number of ports in it.
pub fn parse_port_range(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>());
    let lo = it.next()?.ok()?;
    let hi = it.next()?.ok()?;
    (hi >= lo).then(|| hi - lo + 1)
}

/// Makes sure this process (and so stickyd, which inherits the limit) may open `needed` files,
/// raising the soft RLIMIT_NOFILE up to the hard one; and that one client address has enough
/// local ports for `conns` connections to one server address.
pub fn ensure_budget(needed: u64, conns: u64) -> Result<(), String> {
    if let Some(ports) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .as_deref()
        .and_then(parse_port_range)
    {
        if conns > ports {
            return Err(format!(
                "{conns} connections to one address need more local ports than the {ports} of net.ipv4.ip_local_port_range"
            ));
        }
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_err(|e| format!("cannot read the open-files limit: {e}"))?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        return Err(format!(
            "this run needs about {needed} open files, but the hard limit (ulimit -Hn) is {hard}: raise it or ask for fewer connections"
        ));
    }
    rlimit::setrlimit(rlimit::Resource::NOFILE, needed, hard)
        .map_err(|e| format!("cannot raise the open-files limit to {needed}: {e}"))
}

#[cfg(test)]
mod tests {
    use http::uri::PathAndQuery;
    use http::{HeaderName, Method};

    use super::*;
    use crate::client::recording_server;

    #[test]
    fn idle_connections_carry_the_targets_host() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let (addr, mut heads) = recording_server().await;
                let target = Target::new(
                    addr,
                    "shop.example.com",
                    &PathAndQuery::from_static("/"),
                    Method::GET,
                    HeaderName::from_static("x-backend"),
                )
                .expect("target");
                let (_tx, rx) = watch::channel(false);
                let r = hold(
                    Arc::new(target),
                    3,
                    None,
                    Duration::ZERO,
                    Duration::from_secs(10),
                    rx,
                )
                .await;
                assert_eq!((r.opened, r.failed.len()), (3, 0));
                let mut got = Vec::new();
                while let Ok(h) = heads.try_recv() {
                    got.push(String::from_utf8(h).expect("text"));
                }
                assert_eq!(
                    got, ["GET / HTTP/1.1\r\nhost: shop.example.com\r\n\r\n"; 3],
                    "one cookieless request per connection"
                );
            });
    }

    #[test]
    fn the_port_range_is_counted_inclusively() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28232));
        assert_eq!(parse_port_range("1024 1024"), Some(1));
        assert_eq!(parse_port_range("9 1"), None);
        assert_eq!(parse_port_range("x y"), None);
        assert_eq!(parse_port_range(""), None);
    }
}
