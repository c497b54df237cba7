//! Shared state: one immutable [`Snapshot`] of the config (backends, key ring, precomputed
//! tags, cookie attributes) swapped whole behind an `ArcSwap`, and the live per-backend state
//! kept outside it by backend id.
//!
//! A request loads the snapshot once and keeps that `Arc` for its whole life, so it sees one
//! consistent config even if a reload lands mid-request.
//!
//! Nothing here is locked on the request path. Round robin for new sessions is per thread: each
//! worker keeps its own smooth WRR state for the snapshot (in a thread-local keyed by the
//! snapshot's generation), so each worker's sequence is exact smooth WRR and the process-wide
//! one is the interleaving of the workers' sequences. The live state's counters are per worker
//! too, with slots for the workers `[server] worker_threads` starts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderValue;
use http::uri::Authority;

use crate::affinity::{AdminState, Policy, PoolView, Source};
use crate::backend::BackendLive;
use crate::balance::{SmoothWrr, id_hash, ramp_weight};
use crate::config::{Cidr, Config, Initial, Mode};
use crate::headers::CookieAttrs;
use crate::metrics::Metrics;
use crate::token::KeyRing;

/// The pseudo backend id whose tag marks an unpinned session (no configured id can have a NUL).
const UNPINNED_ID: &str = "\0unpinned";

/// The generation of the next snapshot built: distinct for every snapshot of the process, so a
/// thread's round robin state is never taken for another snapshot's.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Round robin states a thread keeps, for its most recently used snapshots: a request that
/// began before a reload may still place on the old snapshot (a retry) while new requests use
/// the new one, and neither should restart the other's sequence.
const RR_STATES: usize = 4;

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
}

impl Backend {
    /// The admin state in force: the admin API's if it set one, else the config's.
    pub fn admin_state(&self) -> AdminState {
        self.live.admin.api_state().unwrap_or(self.admin)
    }
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
    /// The pool, in config order.
    pub backends: Vec<Backend>,
    /// Whether any backend speaks HTTP/2 (the HTTP/1 engine then hands its connections to
    /// hyper, whose client speaks to those).
    pub has_h2: bool,
    /// The key ring.
    pub ring: KeyRing,
    /// The affinity policy.
    pub policy: Policy,
    /// Cookie attributes for Set-Cookie.
    pub cookie: CookieAttrs,
    /// Where requests carry their affinity (`[affinity] mode`, with its cookie or header).
    pub source: Source,
    /// Trusted proxy networks.
    pub trusted: Vec<Cidr>,
    weights: Vec<u32>,
    hashes: Vec<u64>,
    /// Tag of each backend under the signing key.
    tags: Vec<[u8; 8]>,
    /// The unpinned-session tag under each key of the ring.
    unpinned: Vec<[u8; 8]>,
    /// (key index, tag) to backend index, for every key in the ring.
    by_tag: HashMap<(usize, [u8; 8]), usize, BuildHasherDefault<TagHasher>>,
    /// Distinct for every snapshot built (keys the per-thread round robin state).
    generation: u64,
    /// `[balance] slow_start` in milliseconds (0: off).
    slow_start_ms: u64,
    /// `[balance] new_sessions = "least_loaded"`, with its load factor.
    least_loaded: Option<f64>,
}

impl Snapshot {
    /// Builds a snapshot, taking live state from `live` by id and creating it (with counters
    /// for `workers` worker threads) for new ids.
    fn build(
        config: Arc<Config>,
        live: &mut HashMap<Arc<str>, Arc<BackendLive>>,
        workers: usize,
    ) -> Snapshot {
        let h = &config.health;
        let up = !h.enabled || h.initial == Initial::Up;
        let backends: Vec<Backend> = config
            .backends
            .iter()
            .map(|b| {
                let id: Arc<str> = b.id.as_str().into();
                let live = live
                    .entry(id.clone())
                    .or_insert_with(|| Arc::new(BackendLive::new(&id, up, h.rise, h.fall, workers)))
                    .clone();
                Backend {
                    authority: b.address.clone(),
                    weight: b.weight,
                    admin: b.state,
                    origin: b.origin.clone(),
                    h2: b.protocol == crate::config::Protocol::H2,
                    id,
                    live,
                }
            })
            .collect();
        let secrets: Vec<&[u8]> = config
            .affinity
            .secrets
            .iter()
            .map(|s| s.0.as_slice())
            .collect();
        let ring = KeyRing::new(&secrets, &config.affinity.cookie);
        let mut by_tag =
            HashMap::with_capacity_and_hasher(backends.len() * ring.len(), Default::default());
        for k in 0..ring.len() {
            for (i, b) in backends.iter().enumerate() {
                by_tag.insert((k, ring.backend_tag(k, &b.id)), i);
            }
        }
        Snapshot {
            weights: backends.iter().map(|b| b.weight).collect(),
            hashes: backends.iter().map(|b| id_hash(&b.id)).collect(),
            tags: backends
                .iter()
                .map(|b| ring.backend_tag(0, &b.id))
                .collect(),
            unpinned: (0..ring.len())
                .map(|k| ring.backend_tag(k, UNPINNED_ID))
                .collect(),
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            slow_start_ms: u64::try_from(config.balance.slow_start.as_millis()).unwrap_or(u64::MAX),
            least_loaded: (config.balance.new_sessions == crate::config::NewSessions::LeastLoaded)
                .then_some(config.balance.load_factor),
            by_tag,
            has_h2: backends.iter().any(|b| b.h2),
            policy: config.policy(),
            source: source(&config),
            cookie: CookieAttrs {
                name: config.affinity.cookie.clone(),
                secure: config.affinity.secure,
                domain: config.affinity.domain.clone(),
            },
            trusted: config.server.trusted_proxies.clone(),
            ring,
            backends,
            config,
        }
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

/// The hasher of `by_tag`'s keys, (key index, tag): the tag's 8 bytes, the index folded in.
/// Tags are HMAC outputs under the server's keys, uniformly random, so hashing them again
/// (SipHash, per pinned request) buys nothing; and no client chooses a key: the map is built
/// by the server, and only tags of tokens whose HMAC verified are looked up.
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(w);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = self.0.rotate_left(5) ^ n as u64;
    }
}

/// The affinity source `[affinity]` describes.
fn source(config: &Config) -> Source {
    let a = &config.affinity;
    match a.mode {
        Mode::Cookie => Source::Cookie(a.cookie.clone()),
        Mode::Header => Source::Header {
            name: a.header.clone(),
            trusted: a.header_trusted,
        },
        Mode::Ip => Source::Ip,
        Mode::None => Source::None,
    }
}

impl PoolView for Snapshot {
    fn weights(&self) -> &[u32] {
        &self.weights
    }
    fn hashes(&self) -> &[u64] {
        &self.hashes
    }
    fn healthy(&self, i: usize) -> bool {
        self.backends[i].live.health.is_up()
    }
    fn admin(&self, i: usize) -> AdminState {
        self.backends[i].admin_state()
    }
    fn resolve(&self, key_index: usize, tag: &[u8; 8]) -> Option<usize> {
        self.by_tag.get(&(key_index, *tag)).copied()
    }
    fn tag(&self, i: usize) -> [u8; 8] {
        self.tags[i]
    }
    fn unpinned_tag(&self, k: usize) -> [u8; 8] {
        self.unpinned.get(k).copied().unwrap_or([0; 8])
    }
    fn next_new(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        PER_THREAD.with_borrow_mut(|t| {
            if self.slow_start_ms == 0 && self.least_loaded.is_none() {
                return t.rr(self).next(&self.weights, eligible);
            }
            // Weights scaled for the ramp (and loads), in per-thread buffers: no allocation per
            // request.
            let now = crate::clock::epoch_ms();
            let mut w = std::mem::take(&mut t.ramped);
            w.clear();
            w.extend(
                self.backends.iter().map(|b| {
                    ramp_weight(b.weight, b.live.health.up_for_ms(now), self.slow_start_ms)
                }),
            );
            let picked = match self.least_loaded {
                None => t.rr(self).next(&w, eligible),
                Some(c) => {
                    t.loads.clear();
                    t.loads.extend(self.backends.iter().map(|b| b.live.load()));
                    // The two candidates' draw: fastrand's per-thread generator (no lock).
                    let rand = fastrand::u64(..);
                    crate::balance::least_loaded(&w, &t.loads, eligible, rand, c)
                }
            };
            t.ramped = w;
            picked
        })
    }
}

thread_local! {
    /// What placing a new session needs per thread: its round robin states and buffers.
    static PER_THREAD: RefCell<PerThread> = const {
        RefCell::new(PerThread {
            rr: Vec::new(),
            ramped: Vec::new(),
            loads: Vec::new(),
        })
    };
}

/// A thread's state for placing new sessions.
struct PerThread {
    /// Smooth WRR state by snapshot generation, most recently used first, at most
    /// [`RR_STATES`].
    rr: Vec<(u64, SmoothWrr)>,
    /// Weights scaled for slow start.
    ramped: Vec<u32>,
    /// Backend loads, for least_loaded.
    loads: Vec<f64>,
}

impl PerThread {
    /// This thread's round robin state for `snap`: kept while the snapshot is among the last
    /// [`RR_STATES`] this thread placed on, else started afresh (as a new snapshot's is).
    fn rr(&mut self, snap: &Snapshot) -> &mut SmoothWrr {
        match self.rr.iter().position(|(g, _)| *g == snap.generation) {
            // The common case: the snapshot of the previous placement.
            Some(0) => {}
            Some(i) => self.rr[..=i].rotate_right(1),
            None => {
                if self.rr.len() == RR_STATES {
                    self.rr.pop();
                }
                self.rr
                    .insert(0, (snap.generation, SmoothWrr::new(snap.backends.len())));
            }
        }
        &mut self.rr[0].1
    }
}

/// State shared by every connection: the current snapshot, live backend state by id, and
/// process-wide counters.
#[derive(Debug)]
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Taken by reloads only, never by a request.
    live: Mutex<HashMap<Arc<str>, Arc<BackendLive>>>,
    /// Worker threads the counters have slots for (`[server] worker_threads`, read at start:
    /// changing it needs a restart).
    workers: usize,
    /// Process-wide counters.
    pub metrics: Metrics,
    /// The access log, when on (set once at start).
    pub(crate) access: Option<Arc<crate::access::AccessLog>>,
}

impl Shared {
    /// State for a first config, with counter slots for the worker threads it asks for.
    pub fn new(config: Config) -> Shared {
        let workers = match config.server.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut live = HashMap::new();
        let snap = Snapshot::build(Arc::new(config), &mut live, workers);
        Shared {
            snapshot: ArcSwap::from_pointee(snap),
            live: Mutex::new(live),
            workers,
            metrics: Metrics::new(workers),
            access: None,
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
        let known: Vec<Arc<str>> = live.keys().cloned().collect();
        let snap = Arc::new(Snapshot::build(Arc::new(config), &mut live, self.workers));
        // Added by this reload: slow start counts from now.
        let now_ms = crate::clock::epoch_ms();
        for b in &snap.backends {
            if !known.contains(&b.id) {
                b.live.health.mark_up(now_ms);
            }
        }
        live.retain(|id, _| snap.backends.iter().any(|b| b.id == *id));
        for b in &snap.backends {
            if old
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

    /// Sets the admin state of backend `id` through the admin API (`None`: back to the
    /// config's). Returns false if there is no such backend.
    pub(crate) fn set_admin(&self, id: &str, state: Option<AdminState>, now: u64) -> bool {
        let snap = self.load();
        let Some(b) = snap.backends.iter().find(|b| &*b.id == id) else {
            return false;
        };
        b.live.admin.set_api_state(state);
        b.live.admin.note_state(b.admin_state(), now);
        true
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
        let tag_b = s1.tag(1);
        let b = Shared::new(cfg(&[("b", "other:9"), ("a", "h:1")]));
        let s2 = b.load();
        assert_eq!(s2.resolve(0, &tag_b), Some(0));
        assert_eq!(&*s2.backends[0].id, "b");
    }

    #[test]
    fn every_tag_resolves_to_its_backend_under_its_key_only() {
        let ids: Vec<(String, String)> = (0..300)
            .map(|i| (format!("app-{i}"), format!("h:{}", i + 1)))
            .collect();
        let refs: Vec<(&str, &str)> = ids.iter().map(|(i, a)| (&i[..], &a[..])).collect();
        let snap = Shared::new(cfg(&refs)).load();
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
        (0..n)
            .map(|_| snap.next_new(&|i| i != skip).unwrap())
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
            shared.live.lock().unwrap().len(),
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
        let s = shared.load();
        assert_eq!(s.admin(0), AdminState::Draining);
        assert_eq!(s.backends[0].live.admin.draining_since(), Some(100));
        // An unrelated reload keeps it.
        let s = shared.apply(cfg_states(&[
            ("a", "h:1", "active"),
            ("b", "h:2", "draining"),
        ]));
        assert_eq!(s.admin(0), AdminState::Draining);
        assert_eq!(s.admin(1), AdminState::Draining, "b from the file");
        // The file now says something else for a: the file wins.
        let s = shared.apply(cfg_states(&[
            ("a", "h:1", "disabled"),
            ("b", "h:2", "draining"),
        ]));
        assert_eq!(s.admin(0), AdminState::Disabled);
        shared.note_admin_states(200);
        assert_eq!(s.backends[0].live.admin.draining_since(), None);
        assert_eq!(s.backends[1].live.admin.draining_since(), Some(200));
        // Back to the file's state.
        assert!(shared.set_admin("b", Some(AdminState::Active), 300));
        assert_eq!(shared.load().admin(1), AdminState::Active);
        assert!(shared.set_admin("b", None, 300));
        assert_eq!(shared.load().admin(1), AdminState::Draining);
    }
}
