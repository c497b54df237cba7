//! A backend's admin state as the admin API set it, the drain clock, and a handoff in
//! progress (replication: its sessions go to their backups on their next request).
//!
//! The config's state lives in the snapshot; this cell holds only what the API overrides, so it
//! outlives reloads with the rest of the live state. Reads no clock: unix times come in.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crate::affinity::AdminState;

/// The admin API's override and the drain clock of one backend.
#[derive(Debug, Default)]
pub struct AdminCell {
    /// 0: none (the config's state applies); else an [`AdminState`] as [`encode`] writes it.
    api_state: AtomicU8,
    /// Unix time this backend started draining (0: not draining).
    draining_since: AtomicU64,
    /// `POST /backends/{id}/handoff`: draining, and every session pinned here moves to its
    /// backup with a takeover on its next request. Cleared with the API state.
    handoff: AtomicBool,
}

fn encode(state: Option<AdminState>) -> u8 {
    match state {
        None => 0,
        Some(AdminState::Active) => 1,
        Some(AdminState::Draining) => 2,
        Some(AdminState::Disabled) => 3,
    }
}

impl AdminCell {
    /// The admin state set through the admin API, if any.
    pub fn api_state(&self) -> Option<AdminState> {
        match self.api_state.load(Ordering::Relaxed) {
            1 => Some(AdminState::Active),
            2 => Some(AdminState::Draining),
            3 => Some(AdminState::Disabled),
            _ => None,
        }
    }

    /// Sets (or with `None` clears) the admin API's state; a handoff in progress ends with it.
    pub(crate) fn set_api_state(&self, state: Option<AdminState>) {
        self.handoff.store(false, Ordering::Relaxed);
        self.api_state.store(encode(state), Ordering::Relaxed);
    }

    /// Starts a handoff: the API state is draining, and the sessions go to their backups.
    pub(crate) fn start_handoff(&self) {
        self.api_state
            .store(encode(Some(AdminState::Draining)), Ordering::Relaxed);
        self.handoff.store(true, Ordering::Relaxed);
    }

    /// Whether a handoff is in progress.
    pub fn handoff(&self) -> bool {
        self.handoff.load(Ordering::Relaxed)
    }

    /// Notes the state in force at unix time `now`: starts the drain clock (once) or stops it.
    pub(crate) fn note_state(&self, state: AdminState, now: u64) {
        if state == AdminState::Draining {
            let _ = self.draining_since.compare_exchange(
                0,
                now.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.draining_since.store(0, Ordering::Relaxed);
        }
    }

    /// Unix time the drain started, if draining.
    pub fn draining_since(&self) -> Option<u64> {
        match self.draining_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Whether a draining backend whose last request came at unix time `last_request` (0:
    /// none) has been quiet for `quiet` seconds at `now`, counted from the start of the drain
    /// at the earliest.
    pub fn drained(&self, last_request: u64, now: u64, quiet: u64) -> bool {
        self.draining_since()
            .is_some_and(|since| now.saturating_sub(last_request.max(since)) >= quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_state_round_trips() {
        let a = AdminCell::default();
        assert_eq!(a.api_state(), None);
        for s in [
            AdminState::Active,
            AdminState::Draining,
            AdminState::Disabled,
        ] {
            a.set_api_state(Some(s));
            assert_eq!(a.api_state(), Some(s));
        }
        a.set_api_state(None);
        assert_eq!(a.api_state(), None);
        a.start_handoff();
        assert_eq!(
            (a.api_state(), a.handoff()),
            (Some(AdminState::Draining), true)
        );
        a.set_api_state(Some(AdminState::Active));
        assert!(!a.handoff(), "enable ends a handoff");
    }

    #[test]
    fn the_drain_clock_starts_once_and_counts_quiet_time_from_the_last_request() {
        let a = AdminCell::default();
        assert!(!a.drained(0, 1000, 60), "not draining");
        a.note_state(AdminState::Draining, 1000);
        a.note_state(AdminState::Draining, 1050);
        assert_eq!(a.draining_since(), Some(1000), "the clock starts once");
        assert!(!a.drained(0, 1059, 60));
        assert!(a.drained(0, 1060, 60));
        assert!(!a.drained(1070, 1100, 60), "a session came back");
        assert!(a.drained(1070, 1130, 60));
        assert!(
            !a.drained(900, 1059, 60),
            "quiet counts from the drain at the earliest"
        );
        a.note_state(AdminState::Active, 1200);
        assert_eq!(a.draining_since(), None);
        assert!(!a.drained(0, 5000, 60));
    }
}
