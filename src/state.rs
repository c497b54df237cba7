//! Shared state: one immutable [`Snapshot`] of the config (backends, key ring, precomputed
//! tags, cookie attributes) swapped whole behind an `ArcSwap`, and the live per-backend state
//! kept outside it by backend id.
//!
//! A request loads the snapshot once and keeps that `Arc` for its whole life, so it sees one
//! consistent config even if a reload lands mid-request.
//!
//! The backends are the snapshot's, global by index; each [`Pool`] names its own by index into
//! them, with its own key rings, policy, cookie and placement ([`pool`]). A backend id is unique
//! across pools, so live state keyed by id follows a backend that moves between pools.
//!
//! Nothing here is locked on the request path. Round robin for new sessions is per thread: each
//! worker keeps its own smooth WRR state per pool (in a thread-local keyed by a number distinct
//! for every pool of every snapshot), so each worker's sequence is exact smooth WRR and the
//! process-wide one is the interleaving of the workers' sequences. The live state's counters
//! are per worker too, with slots for the workers `[server] worker_threads` starts.

mod pool;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderValue;
use http::uri::Authority;

use crate::affinity::AdminState;
use crate::backend::BackendLive;
use crate::config::{Cidr, Config, Initial};
use crate::discover::Member;
use crate::metrics::Metrics;

pub use pool::{DEFAULT, Pool, PoolLive, View, binding};

/// The number of the next pool built: distinct for every pool of every snapshot of the process,
/// so a thread's round robin state is never taken for another pool's.
static NEXT_POOL_KEY: AtomicU64 = AtomicU64::new(1);

/// A backend as one snapshot sees it.
#[derive(Debug)]
pub struct Backend {
    /// Stable id.
    pub id: Arc<str>,
    /// Where to connect.
    pub authority: Authority,
    /// Share of new sessions.
    pub weight: u32,
    /// Admin state.
    pub admin: AdminState,
    /// Live state, shared with every snapshot that has this id.
    pub live: Arc<BackendLive>,
    /// TLS to this backend, when on.
    pub origin: Option<crate::tls::Origin>,
    /// Whether it speaks HTTP/2.
    pub h2: bool,
    /// Index of its pool in the snapshot.
    pub pool: usize,
    /// Where it comes from.
    pub source: BackendSource,
    /// Discovered, and gone from DNS: it drains until its `remove_grace` is over.
    pub leaving: bool,
}

/// Where a backend comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendSource {
    /// A `[[backend]]` of the config file.
    Config,
    /// A `[[discover]]` entry's DNS answers.
    Dns,
}

impl BackendSource {
    /// The name `/backends` and the metrics give it.
    pub fn label(self) -> &'static str {
        match self {
            BackendSource::Config => "config",
            BackendSource::Dns => "dns",
        }
    }
}

impl Backend {
    /// The admin state in force: the admin API's if it set one, else the config's; a backend
    /// leaving DNS is at least draining.
    pub fn admin_state(&self) -> AdminState {
        let s = self.live.admin.api_state().unwrap_or(self.admin);
        if self.leaving && s == AdminState::Active {
            AdminState::Draining
        } else {
            s
        }
    }
}

/// What a pool's `[[discover]]` entry keeps its backends under: the pool's name and the
/// entry's label ([`crate::config::Discover::label`]).
pub type DiscoverKey = (Arc<str>, String);

/// Every `[[discover]]` entry of `config`: its key, its pool's index, the entry.
pub fn discover_entries(
    config: &Config,
) -> impl Iterator<Item = (DiscoverKey, usize, &crate::config::Discover)> {
    config.pools.iter().enumerate().flat_map(|(ix, p)| {
        p.discover
            .iter()
            .map(move |d| ((p.name.as_str().into(), d.label()), ix, d))
    })
}

/// One `[[discover]]` entry's backends and lookup counts, kept across snapshots.
#[derive(Debug, Default)]
struct Discovered {
    members: Vec<Member>,
    /// Lookups by outcome, in [`crate::discover::Outcome::ALL`] order.
    lookups: [u64; 3],
}

/// Everything a request needs from the config, precomputed.
///
/// Aligned to 128 bytes so that, behind its `Arc`, the reference counts (bumped by every
/// request that loads the snapshot, on every worker) sit on a cache line of their own, not on
/// the one with the fields every request reads.
#[derive(Debug)]
#[repr(align(128))]
pub struct Snapshot {
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
    /// Every backend of every pool, in config order (`Config::backends`).
    pub backends: Vec<Backend>,
    /// The pools, in config order (`Config::pools`): "default" first when it exists.
    pub pools: Vec<Pool>,
    /// Trusted proxy networks.
    pub trusted: Vec<Cidr>,
}

/// Live state kept across snapshots: backends by id, pools by name, discovered backends by
/// `[[discover]]` entry.
#[derive(Debug, Default)]
struct Live {
    backends: HashMap<Arc<str>, Arc<BackendLive>>,
    pools: HashMap<Arc<str>, Arc<PoolLive>>,
    discovered: BTreeMap<DiscoverKey, Discovered>,
}

impl Snapshot {
    /// Builds a snapshot, taking live state from `live` by id (and name) and creating it (with
    /// counters for `workers` worker threads) for new ones.
    ///
    /// The backends are the config's, then each pool's discovered ones (from `live`, entry by
    /// entry in config order, each entry's sorted by id). A discovered id that is already
    /// taken is left out: ids are unique across pools.
    fn build(config: Arc<Config>, live: &mut Live, workers: usize) -> Snapshot {
        let mut pool_of = vec![0; config.backends.len()];
        let mut members: Vec<Vec<usize>> = Vec::with_capacity(config.pools.len());
        for (ix, p) in config.pools.iter().enumerate() {
            for &g in &p.backends {
                pool_of[g] = ix;
            }
            members.push(p.backends.clone());
        }
        let mut backends: Vec<Backend> = Vec::with_capacity(config.backends.len());
        let mut live_of = |id: &Arc<str>, pool: usize| {
            let h = &config.pools[pool].health;
            let up = !h.enabled || h.initial == Initial::Up;
            live.backends
                .entry(id.clone())
                .or_insert_with(|| Arc::new(BackendLive::new(id, up, h.rise, h.fall, workers)))
                .clone()
        };
        for (g, b) in config.backends.iter().enumerate() {
            let id: Arc<str> = b.id.as_str().into();
            backends.push(Backend {
                authority: b.address.clone(),
                weight: b.weight,
                admin: b.state,
                origin: b.origin.clone(),
                h2: b.protocol == crate::config::Protocol::H2,
                pool: pool_of[g],
                live: live_of(&id, pool_of[g]),
                id,
                source: BackendSource::Config,
                leaving: false,
            });
        }
        for (key, ix, d) in discover_entries(&config) {
            let Some(found) = live.discovered.get(&key) else {
                continue;
            };
            for m in found.members.clone() {
                if backends.iter().any(|b| b.id == m.id) {
                    tracing::warn!(
                        backend = %m.id,
                        pool = %key.0,
                        discover = %key.1,
                        "a discovered backend has the id of another backend: left out"
                    );
                    continue;
                }
                members[ix].push(backends.len());
                backends.push(Backend {
                    authority: authority(m.address),
                    weight: d.weight,
                    admin: AdminState::Active,
                    origin: d.origin.clone(),
                    h2: d.protocol == crate::config::Protocol::H2,
                    pool: ix,
                    live: live_of(&m.id, ix),
                    id: m.id,
                    source: BackendSource::Dns,
                    leaving: m.leaving_since.is_some(),
                });
            }
        }
        let pools = pool::build(
            &config,
            &backends,
            &members,
            &mut live.pools,
            workers,
            &mut || NEXT_POOL_KEY.fetch_add(1, Ordering::Relaxed),
        );
        Snapshot {
            trusted: config.server.trusted_proxies.clone(),
            pools,
            backends,
            config,
        }
    }

    /// Pool `ix`'s config section (the same order as [`Snapshot::pools`]).
    pub fn pool_config(&self, ix: usize) -> &crate::config::Pool {
        &self.config.pools[ix]
    }

    /// The backend with id `id`, of any pool.
    pub fn backend(&self, id: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| &*b.id == id)
    }

    /// The pool named `name`.
    pub fn pool_named(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| &*p.name == name)
    }

    /// Whether `ip` is a trusted proxy.
    pub(crate) fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// The `Via` value for a client of HTTP `version`, if Via is on.
    pub fn via(&self, version: http::Version) -> Option<&'static HeaderValue> {
        static V10: HeaderValue = HeaderValue::from_static("1.0 stickyd");
        static V11: HeaderValue = HeaderValue::from_static("1.1 stickyd");
        static V2: HeaderValue = HeaderValue::from_static("2 stickyd");
        self.config.server.via.then_some(match version {
            http::Version::HTTP_10 => &V10,
            http::Version::HTTP_2 => &V2,
            _ => &V11,
        })
    }
}

/// A socket address as an authority (`1.2.3.4:80`, `[::1]:80`).
fn authority(a: SocketAddr) -> Authority {
    Authority::try_from(a.to_string().as_str()).expect("a socket address is a valid authority")
}

/// Why a handoff was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandoffRefused {
    /// No backend has that id.
    NoSuchBackend,
    /// Its pool has `[replication] backups = 0`.
    NotReplicated,
}

/// State shared by every connection: the current snapshot, live backend state by id, and
/// process-wide counters.
#[derive(Debug)]
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Taken by reloads only, never by a request.
    live: Mutex<Live>,
    /// Worker threads the counters have slots for (`[server] worker_threads`, read at start:
    /// changing it needs a restart).
    workers: usize,
    /// Process-wide counters.
    pub metrics: Metrics,
    /// The access log, when on (set once at start).
    pub(crate) access: Option<Arc<crate::access::AccessLog>>,
    /// The dashboard's per-second series, written by the maintenance task once a second and
    /// read by the admin API (never by a request).
    pub history: Mutex<crate::series::History>,
}

impl Shared {
    /// State for a first config, with counter slots for the worker threads it asks for.
    pub fn new(config: Config) -> Shared {
        let workers = match config.server.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut live = Live::default();
        let snap = Snapshot::build(Arc::new(config), &mut live, workers);
        Shared {
            snapshot: ArcSwap::from_pointee(snap),
            live: Mutex::new(live),
            workers,
            metrics: Metrics::new(workers),
            access: None,
            history: Mutex::default(),
        }
    }

    /// The current snapshot; keep it for the life of one request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new config. Backends that keep their id keep their live state; live state of
    /// removed backends is dropped once no snapshot refers to it.
    ///
    /// A state set through the admin API outlives reloads, unless the reload changes that
    /// backend's `state` in the file: then the file's new state wins.
    pub fn apply(&self, config: Config) -> Arc<Snapshot> {
        let old = self.load();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // The backends of a `[[discover]]` entry the new config no longer has go with it.
        let kept: Vec<DiscoverKey> = discover_entries(&config).map(|(k, ..)| k).collect();
        live.discovered.retain(|key, _| kept.contains(key));
        let snap = self.rebuild(&mut live, Arc::new(config));
        for b in &snap.backends {
            if b.source == BackendSource::Config
                && old
                    .backends
                    .iter()
                    .any(|o| o.id == b.id && o.admin != b.admin)
            {
                b.live.admin.set_api_state(None);
            }
        }
        self.snapshot.store(snap.clone());
        snap
    }

    /// Builds a snapshot of `config` with `live`'s discovered backends, starts the slow start
    /// of the backends it adds, and drops the live state of those it removes. The caller
    /// holds the lock and stores the snapshot.
    fn rebuild(&self, live: &mut Live, config: Arc<Config>) -> Arc<Snapshot> {
        let known: Vec<Arc<str>> = live.backends.keys().cloned().collect();
        let snap = Arc::new(Snapshot::build(config, live, self.workers));
        // Added now: slow start counts from now.
        let now_ms = crate::clock::epoch_ms();
        for b in &snap.backends {
            if !known.contains(&b.id) {
                b.live.health.mark_up(now_ms);
            }
        }
        live.backends
            .retain(|id, _| snap.backends.iter().any(|b| b.id == *id));
        live.pools
            .retain(|name, _| snap.pools.iter().any(|p| p.name == *name));
        snap
    }

    /// The backends `[[discover]]` entry `key` has now.
    pub fn discovered(&self, key: &DiscoverKey) -> Vec<Member> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.discovered
            .get(key)
            .map(|d| d.members.clone())
            .unwrap_or_default()
    }

    /// Counts a lookup of `[[discover]]` entry `key` and sets its backends to `members`.
    /// Returns the new snapshot when they changed (`None` when they did not, or when the
    /// current config has no such entry: a reload removed it).
    pub fn set_discovered(
        &self,
        key: &DiscoverKey,
        outcome: crate::discover::Outcome,
        members: Vec<Member>,
    ) -> Option<Arc<Snapshot>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let config = self.load().config.clone();
        if !discover_entries(&config).any(|(k, ..)| k == *key) {
            return None;
        }
        let entry = live.discovered.entry(key.clone()).or_default();
        if let Some(i) = crate::discover::Outcome::ALL
            .iter()
            .position(|&o| o == outcome)
        {
            entry.lookups[i] += 1;
        }
        if entry.members == members {
            return None;
        }
        entry.members = members;
        let snap = self.rebuild(&mut live, config);
        self.snapshot.store(snap.clone());
        drop(live);
        self.note_admin_states(crate::clock::unix_secs());
        Some(snap)
    }

    /// Lookups of every `[[discover]]` entry so far, by outcome (in
    /// [`crate::discover::Outcome::ALL`] order).
    pub fn lookups(&self) -> Vec<(DiscoverKey, [u64; 3])> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.discovered
            .iter()
            .map(|(k, d)| (k.clone(), d.lookups))
            .collect()
    }

    /// Requests with affinity outcome `o`, over the current snapshot's pools.
    pub fn outcomes(&self, o: crate::affinity::Outcome) -> u64 {
        self.load().pools.iter().map(|p| p.live.outcomes(o)).sum()
    }

    /// Sessions moved to another backend, over the current snapshot's pools.
    pub fn repins(&self) -> u64 {
        self.load().pools.iter().map(|p| p.live.repins()).sum()
    }

    /// Sets the admin state of backend `id` through the admin API (`None`: back to the
    /// config's). Returns false if there is no such backend.
    pub(crate) fn set_admin(&self, id: &str, state: Option<AdminState>, now: u64) -> bool {
        let snap = self.load();
        let Some(b) = snap.backend(id) else {
            return false;
        };
        b.live.admin.set_api_state(state);
        b.live.admin.note_state(b.admin_state(), now);
        true
    }

    /// Starts a handoff of backend `id` (replication): it drains, and every session pinned to
    /// it goes to its backup with a takeover on its next request. `Err` says why not: no such
    /// backend, or its pool does not replicate (nothing holds a copy: use a drain).
    pub(crate) fn handoff(&self, id: &str, now: u64) -> Result<(), HandoffRefused> {
        let snap = self.load();
        let Some(b) = snap.backend(id) else {
            return Err(HandoffRefused::NoSuchBackend);
        };
        if snap.pools[b.pool].replication.backups == 0 {
            return Err(HandoffRefused::NotReplicated);
        }
        b.live.admin.start_handoff();
        b.live.admin.note_state(b.admin_state(), now);
        Ok(())
    }

    /// Starts or stops each backend's drain clock to match its admin state (after a start or
    /// a reload).
    pub(crate) fn note_admin_states(&self, now: u64) {
        for b in &self.load().backends {
            b.live.admin.note_state(b.admin_state(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::PoolView;
    use crate::balance::SmoothWrr;
    use crate::config;

    fn cfg(backends: &[(&str, &str)]) -> Config {
        let with: Vec<(&str, &str, &str)> =
            backends.iter().map(|(i, a)| (*i, *a, "active")).collect();
        cfg_states(&with)
    }

    fn cfg_states(backends: &[(&str, &str, &str)]) -> Config {
        let mut text = String::from("[affinity]\nkeys = [\"env:K\"]\n");
        for (id, addr, state) in backends {
            text.push_str(&format!(
                "[[backend]]\nid = \"{id}\"\naddress = \"{addr}\"\nstate = \"{state}\"\n"
            ));
        }
        config::parse_for_tests(&text)
    }

    #[test]
    fn tags_resolve_to_backends_independently_of_order_and_address() {
        let a = Shared::new(cfg(&[("a", "h:1"), ("b", "h:2")]));
        let s1 = a.load();
        let tag_b = s1.pools[0].view(&s1.backends).tag(1);
        let b = Shared::new(cfg(&[("b", "other:9"), ("a", "h:1")]));
        let s2 = b.load();
        assert_eq!(s2.pools[0].view(&s2.backends).resolve(0, &tag_b), Some(0));
        assert_eq!(&*s2.backends[0].id, "b");
    }

    #[test]
    fn every_tag_resolves_to_its_backend_under_its_key_only() {
        let ids: Vec<(String, String)> = (0..300)
            .map(|i| (format!("app-{i}"), format!("h:{}", i + 1)))
            .collect();
        let refs: Vec<(&str, &str)> = ids.iter().map(|(i, a)| (&i[..], &a[..])).collect();
        let s = Shared::new(cfg(&refs)).load();
        let snap = s.pools[0].view(&s.backends);
        for i in 0..refs.len() {
            let tag = snap.tag(i);
            assert_eq!(snap.resolve(0, &tag), Some(i));
            assert_eq!(snap.resolve(1, &tag), None, "no second key in the ring");
            let mut other = tag;
            other[7] ^= 1;
            assert_ne!(snap.resolve(0, &other), Some(i));
        }
        assert_eq!(snap.resolve(0, &[0; 8]), None);
    }

    fn weighted(weights: &[u32]) -> Config {
        let mut text = String::from("[affinity]\nkeys = [\"env:K\"]\n");
        for (i, w) in weights.iter().enumerate() {
            text.push_str(&format!(
                "[[backend]]\nid = \"b{i}\"\naddress = \"h:{}\"\nweight = {w}\n",
                i + 1
            ));
        }
        config::parse_for_tests(&text)
    }

    /// `n` placements on `snap` from this thread, with backend `skip` ineligible.
    fn place(snap: &Snapshot, n: usize, skip: usize) -> Vec<usize> {
        let view = snap.pools[0].view(&snap.backends);
        (0..n)
            .map(|_| view.next_new(&|i| i != skip).unwrap())
            .collect()
    }

    #[test]
    fn each_worker_places_new_sessions_in_the_exact_smooth_wrr_order_of_its_own() {
        let weights = [3, 1, 2, 5];
        let shared = Shared::new(weighted(&weights));
        let snap = shared.load();
        let mut alone = SmoothWrr::new(weights.len());
        let want: Vec<usize> = (0..300)
            .map(|_| alone.next(&weights, |i| i != 3).unwrap())
            .collect();
        let seqs: Vec<Vec<usize>> = std::thread::scope(|t| {
            let workers: Vec<_> = (0..3)
                .map(|w| {
                    let snap = &snap;
                    t.spawn(move || {
                        crate::metrics::shard::enter_worker(w);
                        place(snap, 300, 3)
                    })
                })
                .collect();
            workers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for seq in &seqs {
            assert_eq!(
                seq, &want,
                "each worker's sequence is a whole smooth WRR sequence"
            );
        }
        // 50 whole cycles each: the process-wide split is exact too.
        let mut counts = [0; 4];
        for &i in seqs.iter().flatten() {
            counts[i] += 1;
        }
        assert_eq!(counts, [450, 150, 300, 0]);
    }

    #[test]
    fn placements_on_the_old_snapshot_after_a_reload_do_not_restart_either_sequence() {
        let shared = Shared::new(weighted(&[1, 1, 1]));
        let old = shared.load();
        assert_eq!(place(&old, 1, 9), [0]);
        let new = shared.apply(weighted(&[1, 1, 1]));
        assert_eq!(
            place(&new, 1, 9),
            [0],
            "a new snapshot starts its own sequence"
        );
        // A retry still on the old snapshot, then new requests: both go on where they were.
        assert_eq!(place(&old, 2, 9), [1, 2]);
        assert_eq!(place(&new, 2, 9), [1, 2]);
        assert_eq!(place(&old, 1, 9), [0]);
    }

    #[test]
    fn reload_keeps_live_state_of_backends_that_stay() {
        let shared = Shared::new(cfg(&[("a", "h:1"), ("b", "h:2")]));
        let old = shared.load();
        old.backends[0]
            .live
            .health
            .connect_failed(1, std::time::Instant::now());
        assert!(!old.backends[0].live.health.is_up());
        let new = shared.apply(cfg(&[("c", "h:3"), ("a", "h:9")]));
        assert!(Arc::ptr_eq(&old.backends[0].live, &new.backends[1].live));
        assert!(!new.backends[1].live.health.is_up(), "health carried over");
        assert!(
            new.backends[0].live.health.is_up(),
            "a new backend starts up"
        );
        assert_eq!(
            shared.live.lock().unwrap().backends.len(),
            2,
            "b's live state is gone"
        );
    }

    #[test]
    fn an_api_state_outlives_reloads_until_the_file_changes_that_backend() {
        let shared = Shared::new(cfg_states(&[
            ("a", "h:1", "active"),
            ("b", "h:2", "active"),
        ]));
        assert!(shared.set_admin("a", Some(AdminState::Draining), 100));
        assert!(!shared.set_admin("nope", Some(AdminState::Draining), 100));
        let admin = |s: &Snapshot, i: usize| s.pools[0].view(&s.backends).admin(i);
        let s = shared.load();
        assert_eq!(admin(&s, 0), AdminState::Draining);
        assert_eq!(s.backends[0].live.admin.draining_since(), Some(100));
        // An unrelated reload keeps it.
        let s = shared.apply(cfg_states(&[
            ("a", "h:1", "active"),
            ("b", "h:2", "draining"),
        ]));
        assert_eq!(admin(&s, 0), AdminState::Draining);
        assert_eq!(admin(&s, 1), AdminState::Draining, "b from the file");
        // The file now says something else for a: the file wins.
        let s = shared.apply(cfg_states(&[
            ("a", "h:1", "disabled"),
            ("b", "h:2", "draining"),
        ]));
        assert_eq!(admin(&s, 0), AdminState::Disabled);
        shared.note_admin_states(200);
        assert_eq!(s.backends[0].live.admin.draining_since(), None);
        assert_eq!(s.backends[1].live.admin.draining_since(), Some(200));
        // Back to the file's state.
        assert!(shared.set_admin("b", Some(AdminState::Active), 300));
        assert_eq!(admin(&shared.load(), 1), AdminState::Active);
        assert!(shared.set_admin("b", None, 300));
        assert_eq!(admin(&shared.load(), 1), AdminState::Draining);
    }

    #[test]
    fn discovered_backends_join_their_pool_and_keep_live_state_across_answers() {
        use crate::discover::Outcome;
        let text = "[affinity]\nkeys = [\"env:K\"]\n[[backend]]\nid = \"a\"\naddress = \"h:1\"\n[[discover]]\ndns = \"app.test:80\"\n";
        let shared = Shared::new(config::parse_for_tests(text));
        let key: DiscoverKey = ("default".into(), "dns:app.test:80".into());
        let member = |id: &str, last: u8, leaving: Option<u64>| Member {
            id: id.into(),
            address: SocketAddr::from(([127, 0, 0, last], 80)),
            leaving_since: leaving,
        };
        let found = vec![
            member("127.0.0.2:80", 2, None),
            member("a", 9, None),
            member("127.0.0.3:80", 3, Some(5)),
        ];
        let s = shared
            .set_discovered(&key, Outcome::Ok, found.clone())
            .expect("changed");
        let ids: Vec<&str> = s.backends.iter().map(|b| &*b.id).collect();
        assert_eq!(
            ids,
            ["a", "127.0.0.2:80", "127.0.0.3:80"],
            "a taken id is left out"
        );
        assert_eq!(s.pools[0].members, [0, 1, 2]);
        assert_eq!(s.backends[0].source, BackendSource::Config);
        assert_eq!(s.backends[1].source, BackendSource::Dns);
        assert_eq!(s.backends[1].authority.as_str(), "127.0.0.2:80");
        assert_eq!(s.backends[2].admin_state(), AdminState::Draining, "leaving");
        assert_eq!(s.backends[1].admin_state(), AdminState::Active);

        // The same answer: nothing to rebuild, but the lookup is counted.
        assert!(shared.set_discovered(&key, Outcome::Ok, found).is_none());
        assert_eq!(shared.lookups(), [(key.clone(), [2, 0, 0])]);
        assert!(shared.set_admin("127.0.0.2:80", Some(AdminState::Disabled), 1));
        let live = s.backends[1].live.clone();
        let s = shared
            .set_discovered(&key, Outcome::Ok, vec![member("127.0.0.2:80", 2, None)])
            .expect("changed");
        assert_eq!(s.backends.len(), 2);
        assert!(
            Arc::ptr_eq(&s.backends[1].live, &live),
            "live state kept by id"
        );
        assert_eq!(
            s.backends[1].admin_state(),
            AdminState::Disabled,
            "admin state kept"
        );
        assert!(
            shared
                .set_discovered(&("shop".into(), "x".into()), Outcome::Ok, vec![])
                .is_none(),
            "no such entry"
        );
        // A reload without the entry drops its backends.
        let s = shared.apply(cfg(&[("a", "h:1")]));
        assert_eq!(s.backends.len(), 1);
        assert!(shared.discovered(&key).is_empty());
    }

    #[test]
    fn a_pool_with_nothing_discovered_yet_places_nothing() {
        let text = "[affinity]\nkeys = [\"env:K\"]\n[[discover]]\ndns = \"app.test:80\"\n";
        let s = Shared::new(config::parse_for_tests(text)).load();
        assert!(s.backends.is_empty());
        let view = s.pools[0].view(&s.backends);
        assert_eq!(view.next_new(&|_| true), None);
        assert_eq!(view.resolve(0, &[0; 8]), None);
    }
}
