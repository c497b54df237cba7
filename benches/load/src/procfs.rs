//! Reading a process's memory and CPU time from Linux's /proc: the parsers are pure, the
//! readers return `None` where /proc is missing or a process is gone.

use std::path::Path;

/// Clock ticks per second of /proc's CPU times (USER_HZ). It is 100 on every Linux
/// architecture the harness runs on; reading it for real needs sysconf, which needs `unsafe`.
const USER_HZ: f64 = 100.0;

/// `VmRSS` of a `/proc/<pid>/status` text, in KiB.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(n),
        Some(_) => None,
    }
}

/// User plus system CPU ticks of a `/proc/<pid>/stat` (or `task/<tid>/stat`) line, and the
/// command name. The name may hold spaces and parentheses, so fields are counted after the
/// last `)`.
pub fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // After ")": state(3) ppid(4) ... utime(14) stime(15); index 0 here is field 3.
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_vmrss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// CPU seconds used by process `pid` (all threads, user and system).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, t)| t as f64 / USER_HZ)
}

/// CPU seconds used so far by the calling thread.
pub fn this_thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    parse_stat(&stat).map(|(_, t)| t as f64 / USER_HZ)
}

/// CPU seconds used by this process's live threads whose name starts with `prefix`.
pub fn own_threads_cpu_secs(prefix: &str) -> Option<f64> {
    let dir = std::fs::read_dir(Path::new("/proc/self/task")).ok()?;
    let mut ticks = 0;
    for task in dir.flatten() {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) {
            if let Some((comm, t)) = parse_stat(&stat) {
                if comm.starts_with(prefix) {
                    ticks += t;
                }
            }
        }
    }
    Some(ticks as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss_is_read_in_kib() {
        let s = "Name:\tstickyd\nVmPeak:\t  20000 kB\nVmRSS:\t    8123 kB\nThreads:\t2\n";
        assert_eq!(parse_vmrss(s), Some(8123));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
        assert_eq!(parse_vmrss("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vmrss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let s =
            "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(s), Some(("a (weird) name", 300)));
        assert_eq!(parse_stat("1 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }
}
