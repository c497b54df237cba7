//! Discovery's I/O: one task per `[[discover]]` entry looks its name up every `interval` with
//! hickory's resolver, hands the answer to the rules in [`crate::discover`], and publishes the
//! pool's new backends (a new snapshot) when they change. [`Discovery`] keeps the tasks in step
//! with the config across reloads: an entry whose lookup is unchanged keeps its task and its
//! backends.
//!
//! A failed or empty lookup keeps the last good set; it is logged once when the failures
//! start, once when answers are back, and counted every time
//! (`stickyd_discovery_lookups_total`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Discover, Lookup, Resolver};
use crate::discover::{self, Answer};
use crate::state::{DiscoverKey, Shared, discover_entries};

/// Called after discovery published a new snapshot (the server restarts health checks to
/// match it).
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

/// The longest one lookup (with its retries) may take before it counts as failed.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);

/// The running discovery tasks, by entry; stopped when dropped.
#[derive(Default)]
pub struct Discovery {
    tasks: HashMap<DiscoverKey, (Discover, JoinHandle<()>)>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("entries", &self.tasks.len())
            .finish()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for (_, t) in self.tasks.values() {
            t.abort();
        }
    }
}

impl Discovery {
    /// Starts, restarts and stops tasks to match the current config's `[[discover]]` entries.
    /// Returns, for each task started, a receiver that fires after its first lookup was
    /// applied.
    pub fn sync(
        &mut self,
        shared: &Arc<Shared>,
        on_change: &OnChange,
    ) -> Vec<oneshot::Receiver<()>> {
        let snap = shared.load();
        let wanted: HashMap<DiscoverKey, &Discover> = discover_entries(&snap.config)
            .map(|(key, _, d)| (key, d))
            .collect();
        self.tasks.retain(|key, (d, task)| {
            let keep = wanted.get(key).is_some_and(|w| w.same_lookup(d));
            if !keep {
                task.abort();
            }
            keep
        });
        let mut firsts = Vec::new();
        for (key, d) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let task = tokio::spawn(run(
                shared.clone(),
                key.clone(),
                d.clone(),
                on_change.clone(),
                tx,
            ));
            self.tasks.insert(key, (d.clone(), task));
            firsts.push(rx);
        }
        firsts
    }
}

/// The resolver an entry asks: the system's, or one name server over UDP and TCP. Answers are
/// not cached: each lookup asks.
fn resolver(d: &Discover) -> Result<TokioResolver, String> {
    let mut builder = match d.resolver {
        Resolver::System => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
        Resolver::At(addr) => {
            let mut c = ResolverConfig::new();
            c.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            c.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            TokioResolver::builder_with_config(c, TokioConnectionProvider::default())
        }
    };
    let o: &mut ResolverOpts = builder.options_mut();
    o.cache_size = 0;
    o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // A query unanswered for the interval (within 200 ms to 2 s) is asked again, once.
    o.timeout = d
        .interval
        .clamp(Duration::from_millis(200), Duration::from_secs(2));
    o.attempts = 2;
    Ok(builder.build())
}

/// One lookup of `d`, as an [`Answer`] (with the error, when it failed).
async fn lookup(r: &TokioResolver, d: &Discover) -> (Answer, Option<String>) {
    let done = tokio::time::timeout(LOOKUP_DEADLINE, async {
        match &d.lookup {
            Lookup::Dns { host, port } => match r.lookup_ip(host.as_str()).await {
                Ok(ips) => (found(discover::from_addresses(ips.iter(), *port)), None),
                Err(e) => (failure(&e), Some(e.to_string())),
            },
            Lookup::Srv(name) => srv(r, name, d).await,
        }
    })
    .await;
    done.unwrap_or_else(|_| {
        (
            Answer::Failed,
            Some(format!("no answer within {LOOKUP_DEADLINE:?}")),
        )
    })
}

/// An SRV lookup, each target's addresses looked up in turn. A target that does not resolve
/// is left out; if none resolves, the lookup failed (the last good set stays).
async fn srv(r: &TokioResolver, name: &str, d: &Discover) -> (Answer, Option<String>) {
    let records = match r.srv_lookup(name).await {
        Ok(l) => l,
        Err(e) => return (failure(&e), Some(e.to_string())),
    };
    let mut targets: Vec<(String, u16, Vec<IpAddr>)> = Vec::new();
    let mut error = None;
    for rec in records.iter() {
        let target = rec.target().to_ascii();
        match r.lookup_ip(target.as_str()).await {
            Ok(ips) => targets.push((target, rec.port(), ips.iter().collect())),
            Err(e) => error = Some(format!("{target}: {e}")),
        }
    }
    if targets.is_empty() {
        return (
            Answer::Failed,
            error.or(Some("no SRV target resolved".into())),
        );
    }
    let found_all = discover::from_srv(
        targets
            .iter()
            .map(|(t, port, ips)| (t.as_str(), *port, ips.as_slice())),
        d.id,
    );
    (found(found_all), error)
}

/// What a lookup error is: an answer with nothing in it (the name does not exist, or has no
/// records of the type: NXDOMAIN or NOERROR) is empty; anything else (SERVFAIL, REFUSED, a
/// timeout, a connection error) failed.
fn failure(e: &hickory_resolver::ResolveError) -> Answer {
    use hickory_resolver::proto::ProtoErrorKind;
    use hickory_resolver::proto::op::ResponseCode;
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. })
            if matches!(
                *response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) =>
        {
            Answer::Empty
        }
        _ => Answer::Failed,
    }
}

fn found(f: Vec<discover::Found>) -> Answer {
    if f.is_empty() {
        Answer::Empty
    } else {
        Answer::Found(f)
    }
}

/// One entry's task: look up, apply, publish, wait; forever (until aborted).
async fn run(
    shared: Arc<Shared>,
    key: DiscoverKey,
    d: Discover,
    on_change: OnChange,
    first: oneshot::Sender<()>,
) {
    let (pool, label) = (key.0.clone(), key.1.clone());
    let resolver = match resolver(&d) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(pool = %pool, discover = %label, error = %e, "discovery cannot start its resolver");
            None
        }
    };
    let mut first = Some(first);
    let mut failing = false;
    loop {
        let (answer, error) = match &resolver {
            Some(r) => lookup(r, &d).await,
            None => (Answer::Failed, Some("no resolver".into())),
        };
        match (&answer, failing) {
            (Answer::Found(_), true) => {
                failing = false;
                info!(pool = %pool, discover = %label, "discovery answers again");
            }
            (Answer::Empty | Answer::Failed, false) => {
                failing = true;
                warn!(
                    pool = %pool,
                    discover = %label,
                    outcome = answer.outcome().label(),
                    error = error.as_deref().unwrap_or(""),
                    "discovery lookup gave no backends: keeping the last good set (logged once until it answers again)"
                );
            }
            _ => {}
        }
        let prev = shared.discovered(&key);
        let now_ms = crate::clock::epoch_ms();
        let snap = shared.load();
        let down = |id: &str| snap.backend(id).is_some_and(|b| !b.live.health.is_up());
        let next = discover::next(&prev, &answer, now_ms, d.remove_grace, down);
        drop(snap);
        log_changes(&pool, &label, &prev, &next);
        let expiry = discover::next_expiry(&next, d.remove_grace);
        if shared
            .set_discovered(&key, answer.outcome(), next)
            .is_some()
        {
            on_change();
        }
        if let Some(f) = first.take() {
            let _ = f.send(());
        }
        let mut wait = d.interval;
        if let Some(at) = expiry {
            let until = Duration::from_millis(at.saturating_sub(crate::clock::epoch_ms()));
            wait = wait.min(until.max(Duration::from_millis(10)));
        }
        tokio::time::sleep(wait).await;
    }
}

/// One line per backend that discovery added, started draining, brought back or removed.
fn log_changes(pool: &str, label: &str, prev: &[discover::Member], next: &[discover::Member]) {
    for m in next {
        match prev.iter().find(|p| p.id == m.id) {
            None => {
                info!(pool, discover = label, backend = %m.id, address = %m.address, "discovered backend added")
            }
            Some(p) if p.leaving_since.is_none() && m.leaving_since.is_some() => {
                info!(pool, discover = label, backend = %m.id, "discovered backend gone from DNS: draining until its remove_grace is over")
            }
            Some(p) if p.leaving_since.is_some() && m.leaving_since.is_none() => {
                info!(pool, discover = label, backend = %m.id, "discovered backend back in DNS")
            }
            Some(p) if p.address != m.address => {
                info!(pool, discover = label, backend = %m.id, address = %m.address, "discovered backend moved")
            }
            _ => {}
        }
    }
    for p in prev {
        if !next.iter().any(|m| m.id == p.id) {
            info!(pool, discover = label, backend = %p.id, "discovered backend removed");
        }
    }
}
