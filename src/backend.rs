//! Live per-backend state that outlives config snapshots. Keyed by backend id in
//! [`crate::state::Shared`], so a reload neither resets the health nor the counters of a backend
//! that stays.
//!
//! [`BackendLive`] composes parts with one job each:
//!
//! | part | owns | written by |
//! |---|---|---|
//! | [`Health`] | up or down, the rise/fall machine, connect failures, ejection and up-since times | checker; request path on connect failure |
//! | [`AdminCell`] | the admin API's state override, the drain clock | admin API, start and reload |
//! | [`Counters`] | in flight, requests, responses by class, failures (per worker) | request path |
//! | [`LoadEstimate`] | recent pins (decaying) and request rate, for least_loaded | maintenance task (decay, rate), from the pins [`Sessions`] counts |
//! | [`Sessions`] | pins since start, last request time, distinct sessions lately | request path; maintenance task (rotation) |
//! | [`Incarnation`] | the process identity its health checks name, and when it changed (replication) | checker |
//!
//! The pure arithmetic that keeps the estimates current (rates, decay) is in [`rate`].
//!
//! The request path never takes a lock here nor allocates, and writes no line another worker
//! writes with a read-modify-write: its counters are per worker ([`crate::metrics::Shards`],
//! each worker its own slot, a relaxed load and store), the other parts are read with relaxed
//! loads and written only when they change (health on a transition, under the health mutex; the
//! last request time once a second; a session sketch register when it grows). The parts read
//! no clock: time comes in from `crate::clock`, passed by the callers.

mod admin_cell;
mod counters;
mod health;
mod incarnation;
mod load;
pub mod rate;
mod sessions;

use std::sync::Arc;

pub use admin_cell::AdminCell;
pub use counters::Counters;
pub use health::Health;
pub use incarnation::Incarnation;
pub use load::{LoadEstimate, PIN_HALF_LIFE};
pub use sessions::Sessions;

/// Live state of one backend: its parts, each with one job.
///
/// Aligned to 128 bytes so that, behind its `Arc`, the reference counts (bumped by every
/// request's [`InFlight`], on every worker) sit on a cache line of their own, not on the one
/// with the health flag and the counters' slots that every request reads.
#[repr(align(128))]
pub struct BackendLive {
    id: Arc<str>,
    /// Up or down, and why.
    pub health: Health,
    /// The admin API's state and the drain clock.
    pub admin: AdminCell,
    /// Request counters.
    pub counters: Counters,
    /// What least_loaded weighs besides in flight.
    pub load: LoadEstimate,
    /// Sessions served.
    pub sessions: Sessions,
    /// Its process identity (`X-Stickyd-Incarnation`).
    pub incarnation: Incarnation,
}

impl std::fmt::Debug for BackendLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendLive")
            .field("id", &self.id)
            .field("healthy", &self.health.is_up())
            .field("in_flight", &self.counters.in_flight())
            .field("requests", &self.counters.requests())
            .finish()
    }
}

impl BackendLive {
    /// New live state for backend `id`, starting healthy or not, with the health machine's
    /// `rise` and `fall`, and counters for `workers` worker threads.
    pub fn new(id: &str, up: bool, rise: u32, fall: u32, workers: usize) -> BackendLive {
        BackendLive {
            id: id.into(),
            health: Health::new(up, rise, fall),
            admin: AdminCell::default(),
            counters: Counters::new(workers),
            load: LoadEstimate::default(),
            sessions: Sessions::new(workers),
            incarnation: Incarnation::default(),
        }
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The load least_loaded weighs now (see [`LoadEstimate::load`]).
    pub fn load(&self) -> f64 {
        self.load
            .load(self.counters.in_flight(), self.sessions.pins())
    }

    /// Sessions pinned here lately (see [`LoadEstimate::recent_pins`]).
    pub fn recent_pins(&self) -> f64 {
        self.load.recent_pins(self.sessions.pins())
    }

    /// At a maintenance tick: decays the recent pins over `elapsed`.
    pub(crate) fn decay_pins(&self, elapsed: std::time::Duration) {
        self.load.decay_pins(self.sessions.pins(), elapsed);
    }

    /// Records a request of session `nonce` served at unix time `now`; `pinned_here` when the
    /// response pins the session here (a new session or a re-pin), which also counts toward
    /// the load.
    pub(crate) fn record_session(&self, nonce: u64, now: u64, pinned_here: bool) {
        self.sessions.record(nonce, now, pinned_here);
    }

    /// Whether a draining backend has served nothing for `quiet` seconds up to unix time
    /// `now` (counted from the start of the drain at the earliest).
    pub fn drained(&self, now: u64, quiet: u64) -> bool {
        self.admin
            .drained(self.sessions.last_request_at(), now, quiet)
    }
}

/// Holds one in-flight request on a backend; released on drop (when the response body is done
/// or abandoned), on whatever thread that happens.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<BackendLive>);

impl InFlight {
    /// Starts a request on `live`: counts it sent and in flight.
    pub fn start(live: &Arc<BackendLive>) -> InFlight {
        live.counters.start();
        InFlight(live.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.counters.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::AdminState;

    #[test]
    fn a_drained_backend_is_one_whose_sessions_stopped_after_the_drain_began() {
        let b = BackendLive::new("a", true, 2, 3, 0);
        b.admin.note_state(AdminState::Draining, 1000);
        assert!(b.drained(1060, 60));
        b.record_session(7, 1070, false);
        assert!(!b.drained(1100, 60), "a session came back");
        assert!(b.drained(1130, 60));
    }

    #[test]
    fn load_is_in_flight_plus_a_quarter_of_new_pins_only() {
        let b = Arc::new(BackendLive::new("a", true, 2, 3, 0));
        let _g = InFlight::start(&b);
        for n in 0..4 {
            b.record_session(n, 10, true);
        }
        assert_eq!(b.load(), 2.0);
        b.decay_pins(PIN_HALF_LIFE);
        assert_eq!(b.load(), 1.5);
        b.record_session(9, 11, false);
        assert_eq!(
            b.load(),
            1.5,
            "a request of a pinned session is not a new pin"
        );
        assert_eq!(b.sessions.pins(), 4);
    }

    #[test]
    fn the_reference_counts_behind_the_arc_share_no_line_with_the_state() {
        let b = Arc::new(BackendLive::new("a", true, 1, 1, 0));
        // The counts come first in an Arc's allocation; the state starts a line-pair later.
        assert_eq!(std::ptr::from_ref::<BackendLive>(&b) as usize % 128, 0);
    }

    #[test]
    fn in_flight_follows_the_guards() {
        let b = Arc::new(BackendLive::new("a", true, 1, 1, 0));
        let g1 = InFlight::start(&b);
        let g2 = InFlight::start(&b);
        assert_eq!(b.counters.in_flight(), 2);
        drop(g1);
        assert_eq!(b.counters.in_flight(), 1);
        drop(g2);
        assert_eq!((b.counters.in_flight(), b.counters.requests()), (0, 2));
    }
}
