//! One pool of a snapshot: its backends (as indexes into the snapshot's), its key rings, policy,
//! cookie and placement tables, and the per-thread placement of new sessions; plus a pool's
//! live counters ([`PoolLive`]), kept outside snapshots by pool name like a backend's.
//!
//! A pool sees its backends by local index (0..its size): affinity and balance work on local
//! indexes through [`View`], and [`Pool::global`] turns the chosen one into the snapshot's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Backend;
use crate::affinity::{AdminState, Outcome, Policy, PoolView, Rings, Source, Takeover};
use crate::balance::{SmoothWrr, id_hash, ramp_weight};
use crate::config::{self, Mode};
use crate::headers::CookieAttrs;
use crate::metrics::{Counter, Shards};
use crate::token::KeyRing;

/// The pseudo backend id whose tag marks an unpinned session (no configured id can have a NUL).
const UNPINNED_ID: &str = "\0unpinned";

/// The pool of the top-level `[[backend]]`s.
pub const DEFAULT: &str = "default";

/// One pool as one snapshot sees it.
#[derive(Debug)]
pub struct Pool {
    /// `name`.
    pub name: Arc<str>,
    /// Its backends, as indexes into the snapshot's, in config order.
    pub members: Vec<usize>,
    /// The key rings its tokens are checked with.
    pub rings: Rings,
    /// The affinity policy.
    pub policy: Policy,
    /// Cookie attributes for Set-Cookie.
    pub cookie: CookieAttrs,
    /// Where its requests carry their affinity.
    pub source: Source,
    /// Whether any of its backends speaks HTTP/2.
    pub has_h2: bool,
    /// The affinity cookies of the other pools (cookie mode) that are not this pool's: left out
    /// of requests to this pool's backends, as its own is.
    pub other_cookies: Vec<Box<[u8]>>,
    /// Live counters, shared with every snapshot that has a pool of this name.
    pub live: Arc<PoolLive>,
    /// `[replication]`: backups named per session, and the port named for them.
    pub replication: config::Replication,
    /// Each member as `X-Stickyd-Backup` names it: `id=host:port` (the replication port when
    /// set, else the backend's own).
    replica_names: Vec<Box<[u8]>>,
    weights: Vec<u32>,
    hashes: Vec<u64>,
    /// Tag of each member under the signing key.
    tags: Vec<[u8; 8]>,
    /// The unpinned-session tag under each key of the ring.
    unpinned: Vec<[u8; 8]>,
    /// (key index, tag) to member index, for every key in the ring.
    by_tag: HashMap<(usize, [u8; 8]), usize, BuildHasherDefault<TagHasher>>,
    /// Distinct for every pool of every snapshot built (keys the per-thread round robin).
    rr_key: u64,
    /// Round robin states a thread keeps: one per pool of this snapshot and of the one before,
    /// and a few more.
    rr_cap: usize,
    /// `[balance] slow_start` in milliseconds (0: off).
    slow_start_ms: u64,
    /// `[balance] new_sessions = "least_loaded"`, with its load factor.
    least_loaded: Option<f64>,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rings")
            .field("keys", &self.own.len())
            .field("others", &self.others.len())
            .finish()
    }
}

/// What a pool's MACs are bound to: the cookie name for the pool "default" (so tokens issued
/// before pools existed stay valid), the cookie name and the pool's name for the others (a NUL
/// between them, which no cookie name has). A token of one pool therefore never verifies in
/// another, even when both use the same cookie name and keys.
pub fn binding(pool: &str, cookie: &str) -> String {
    if pool == DEFAULT {
        cookie.to_string()
    } else {
        format!("{cookie}\0{pool}")
    }
}

/// The key ring of `pool` as configured.
fn ring(pool: &config::Pool) -> KeyRing {
    let secrets: Vec<&[u8]> = pool
        .affinity
        .secrets
        .iter()
        .map(|s| s.0.as_slice())
        .collect();
    KeyRing::new(&secrets, &binding(&pool.name, &pool.affinity.cookie))
}

/// The affinity source `[affinity]` describes.
fn source(a: &config::Affinity) -> Source {
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

/// Whether two sources carry tokens in the same place (the same cookie, or the same header).
fn same_carrier(a: &Source, b: &Source) -> bool {
    match (a, b) {
        (Source::Cookie(x), Source::Cookie(y)) => x == y,
        (
            Source::Header {
                name: x,
                trusted: false,
            },
            Source::Header {
                name: y,
                trusted: false,
            },
        ) => x == y,
        _ => false,
    }
}

/// The pools of `config`, over the snapshot's `backends` (`config.backends`, same order, then
/// the discovered ones), each pool with the `members` given for it (indexes into `backends`),
/// with live counters taken from `live` by name or created.
pub(super) fn build(
    config: &config::Config,
    backends: &[Backend],
    members: &[Vec<usize>],
    live: &mut HashMap<Arc<str>, Arc<PoolLive>>,
    workers: usize,
    next_key: &mut dyn FnMut() -> u64,
) -> Vec<Pool> {
    let rings: Vec<KeyRing> = config.pools.iter().map(ring).collect();
    let sources: Vec<Source> = config.pools.iter().map(|p| source(&p.affinity)).collect();
    config
        .pools
        .iter()
        .enumerate()
        .map(|(ix, p)| {
            let own = rings[ix].clone();
            let others = (0..config.pools.len())
                .filter(|&o| o != ix && same_carrier(&sources[ix], &sources[o]))
                .map(|o| rings[o].clone())
                .collect();
            let name: Arc<str> = p.name.as_str().into();
            let live = live
                .entry(name.clone())
                .or_insert_with(|| Arc::new(PoolLive::new(workers)))
                .clone();
            let members = members[ix].clone();
            let ids = || members.iter().map(|&g| &backends[g].id);
            let mut by_tag =
                HashMap::with_capacity_and_hasher(members.len() * own.len(), Default::default());
            for k in 0..own.len() {
                for (i, id) in ids().enumerate() {
                    by_tag.insert((k, own.backend_tag(k, id)), i);
                }
            }
            Pool {
                weights: members.iter().map(|&g| backends[g].weight).collect(),
                hashes: ids().map(|id| id_hash(id)).collect(),
                tags: ids().map(|id| own.backend_tag(0, id)).collect(),
                unpinned: (0..own.len())
                    .map(|k| own.backend_tag(k, UNPINNED_ID))
                    .collect(),
                by_tag,
                rr_key: next_key(),
                rr_cap: 2 * config.pools.len() + RR_SPARE,
                slow_start_ms: u64::try_from(p.balance.slow_start.as_millis()).unwrap_or(u64::MAX),
                least_loaded: (p.balance.new_sessions == config::NewSessions::LeastLoaded)
                    .then_some(p.balance.load_factor),
                has_h2: members.iter().any(|&g| backends[g].h2),
                other_cookies: {
                    let mut names: Vec<Box<[u8]>> = Vec::new();
                    for s in &sources {
                        if let Source::Cookie(n) = s
                            && sources[ix] != Source::Cookie(n.clone())
                            && !names.iter().any(|x| **x == *n.as_bytes())
                        {
                            names.push(n.as_bytes().into());
                        }
                    }
                    names
                },
                policy: p.policy(),
                source: sources[ix].clone(),
                cookie: CookieAttrs {
                    name: p.affinity.cookie.clone(),
                    secure: p.affinity.secure,
                    domain: p.affinity.domain.clone(),
                    same_site: p.affinity.same_site,
                    partitioned: p.affinity.partitioned,
                },
                rings: Rings { own, others },
                live,
                replication: p.replication,
                replica_names: members
                    .iter()
                    .map(|&g| replica_name(&backends[g], p.replication.port))
                    .collect(),
                members,
                name,
            }
        })
        .collect()
}

/// `id=host:port` of `b` for `X-Stickyd-Backup`: its address's host with `port`, or its own
/// port.
fn replica_name(b: &Backend, port: Option<u16>) -> Box<[u8]> {
    let a = &b.authority;
    let port = port.or(a.port_u16()).unwrap_or(80);
    format!("{}={}:{port}", b.id, a.host()).into_bytes().into()
}

impl Pool {
    /// Member `local` as `X-Stickyd-Backup` names it (`id=host:port`).
    pub fn replica_name(&self, local: usize) -> &[u8] {
        &self.replica_names[local]
    }

    /// The snapshot's index of member `local`.
    pub fn global(&self, local: usize) -> usize {
        self.members[local]
    }

    /// This pool as the affinity decision sees it, over the snapshot's `backends`.
    pub fn view<'a>(&'a self, backends: &'a [Backend]) -> View<'a> {
        View {
            pool: self,
            backends,
        }
    }
}

/// A pool with the backends it indexes into: what affinity decides on ([`PoolView`]), by
/// local index.
pub struct View<'a> {
    pool: &'a Pool,
    backends: &'a [Backend],
}

impl View<'_> {
    fn backend(&self, i: usize) -> &Backend {
        &self.backends[self.pool.members[i]]
    }
}

impl PoolView for View<'_> {
    fn weights(&self) -> &[u32] {
        &self.pool.weights
    }
    fn hashes(&self) -> &[u64] {
        &self.pool.hashes
    }
    fn healthy(&self, i: usize) -> bool {
        self.backend(i).live.health.is_up()
    }
    fn admin(&self, i: usize) -> AdminState {
        self.backend(i).admin_state()
    }
    fn resolve(&self, key_index: usize, tag: &[u8; 8]) -> Option<usize> {
        self.pool.by_tag.get(&(key_index, *tag)).copied()
    }
    fn tag(&self, i: usize) -> [u8; 8] {
        self.pool.tags[i]
    }
    fn unpinned_tag(&self, k: usize) -> [u8; 8] {
        self.pool.unpinned.get(k).copied().unwrap_or([0; 8])
    }
    fn restarted_at(&self, i: usize) -> u32 {
        self.backend(i).live.incarnation.restarted_at()
    }
    fn handoff(&self, i: usize) -> bool {
        self.backend(i).live.admin.handoff()
    }
    fn next_new(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let p = self.pool;
        PER_THREAD.with_borrow_mut(|t| {
            if p.slow_start_ms == 0 && p.least_loaded.is_none() {
                return t.rr(p).next(&p.weights, eligible);
            }
            // Weights scaled for the ramp (and loads), in per-thread buffers: no allocation per
            // request.
            let now = crate::clock::epoch_ms();
            let mut w = std::mem::take(&mut t.ramped);
            w.clear();
            w.extend(p.members.iter().map(|&g| {
                let b = &self.backends[g];
                ramp_weight(b.weight, b.live.health.up_for_ms(now), p.slow_start_ms)
            }));
            let picked = match p.least_loaded {
                None => t.rr(p).next(&w, eligible),
                Some(c) => {
                    t.loads.clear();
                    t.loads
                        .extend(p.members.iter().map(|&g| self.backends[g].live.load()));
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

/// Round robin states a thread keeps beyond one per pool of the current snapshot: a request
/// that began before a reload may still place on the old snapshot's pool (a retry) while new
/// requests use the new one, and neither should restart the other's sequence.
const RR_SPARE: usize = 4;

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
    /// Smooth WRR state by pool (`rr_key`), most recently used first.
    rr: Vec<(u64, SmoothWrr)>,
    /// Weights scaled for slow start.
    ramped: Vec<u32>,
    /// Backend loads, for least_loaded.
    loads: Vec<f64>,
}

impl PerThread {
    /// This thread's round robin state for `pool`: kept while it is among the pools this
    /// thread placed on most recently, else started afresh (as a new snapshot's is).
    fn rr(&mut self, pool: &Pool) -> &mut SmoothWrr {
        match self.rr.iter().position(|(k, _)| *k == pool.rr_key) {
            // The common case: the pool of the previous placement.
            Some(0) => {}
            Some(i) => self.rr[..=i].rotate_right(1),
            None => {
                // Room for every pool of a config of this size and a few of the one before.
                self.rr.truncate(pool.rr_cap.saturating_sub(1));
                self.rr
                    .insert(0, (pool.rr_key, SmoothWrr::new(pool.members.len())));
            }
        }
        &mut self.rr[0].1
    }
}

/// A pool's live counters, outside snapshots, keyed by pool name: they survive reloads that
/// keep the name. Per worker ([`Shards`]); the accessors return sums.
#[derive(Debug)]
pub struct PoolLive {
    counts: Shards<PoolCounts>,
    /// max/mean of the pool's usable backends' recent request rates, as `f64` bits.
    imbalance: AtomicU64,
}

/// One worker's slot of [`PoolLive`].
#[derive(Debug, Default)]
struct PoolCounts {
    affinity: [Counter; Outcome::ALL.len()],
    repins: Counter,
    takeovers: [Counter; Takeover::ALL.len()],
}

impl PoolLive {
    /// Zeroed counters with slots for `workers` worker threads.
    pub fn new(workers: usize) -> PoolLive {
        PoolLive {
            counts: Shards::new(workers),
            imbalance: AtomicU64::default(),
        }
    }

    /// Counts one request's affinity outcome.
    pub fn outcome(&self, o: Outcome) {
        self.counts.local().add(|c| &c.affinity[o.index()], 1);
    }

    /// Requests with outcome `o`.
    pub fn outcomes(&self, o: Outcome) -> u64 {
        self.counts.sum(|c| &c.affinity[o.index()])
    }

    /// Counts a session moved to another backend.
    pub fn repin(&self) {
        self.counts.local().add(|c| &c.repins, 1);
    }

    /// Sessions moved to another backend.
    pub fn repins(&self) -> u64 {
        self.counts.sum(|c| &c.repins)
    }

    /// Counts a session taken over by its backup (replication).
    pub fn takeover(&self, why: Takeover) {
        self.counts.local().add(|c| &c.takeovers[why.index()], 1);
    }

    /// Sessions taken over for `why`.
    pub fn takeovers(&self, why: Takeover) -> u64 {
        self.counts.sum(|c| &c.takeovers[why.index()])
    }

    /// Sets the imbalance ratio (see [`crate::metrics::imbalance_ratio`]).
    pub(crate) fn set_imbalance(&self, r: f64) {
        self.imbalance.store(r.to_bits(), Ordering::Relaxed);
    }

    /// The imbalance ratio last set.
    pub fn imbalance(&self) -> f64 {
        f64::from_bits(self.imbalance.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
