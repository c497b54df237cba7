//! A backend's process identity, as its health-check responses name it
//! (`X-Stickyd-Incarnation`, any opaque value), and when it last changed.
//!
//! A backend that restarts at the same address comes back healthy but empty: the sessions
//! pinned to its previous process are gone from it. With replication, a session whose token was
//! signed before the change is served by its backup with a takeover (`affinity::route`). Reads
//! no clock: the time comes in. Written by the checker only; read by the request path with one
//! relaxed load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The longest incarnation value kept; a longer one is compared by its first bytes.
const MAX_LEN: usize = 128;

/// The last incarnation seen and the time it changed.
#[derive(Debug, Default)]
pub struct Incarnation {
    /// The value of the last health check that carried one.
    seen: Mutex<Option<Box<[u8]>>>,
    /// Unix seconds when a value different from the one before was seen (0: never).
    changed_at: AtomicU32,
}

impl Incarnation {
    /// Notes the value a health check carried (`None`: the backend sends none) at unix time
    /// `now`. Returns true when it differs from the one before: the backend restarted. The
    /// first value seen is no restart.
    pub fn note(&self, value: Option<&[u8]>, now: u32) -> bool {
        let Some(v) = value else {
            return false;
        };
        let v = &v[..v.len().min(MAX_LEN)];
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.as_deref() {
            Some(old) if old == v => false,
            Some(_) => {
                *seen = Some(v.into());
                self.changed_at.store(now.max(1), Ordering::Relaxed);
                true
            }
            None => {
                *seen = Some(v.into());
                false
            }
        }
    }

    /// Unix seconds of the last change of incarnation (0: never).
    pub fn restarted_at(&self) -> u32 {
        self.changed_at.load(Ordering::Relaxed)
    }

    /// The value last seen, as text (lossy), for the admin API.
    pub fn current(&self) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_value_is_a_restart_and_the_first_value_is_not() {
        let i = Incarnation::default();
        assert_eq!(i.restarted_at(), 0);
        assert!(!i.note(None, 10), "no header: nothing known");
        assert!(!i.note(Some(b"a"), 11), "the first value seen");
        assert!(!i.note(Some(b"a"), 12));
        assert_eq!(i.restarted_at(), 0);
        assert!(
            !i.note(None, 13),
            "a check without the header changes nothing"
        );
        assert!(i.note(Some(b"b"), 14));
        assert_eq!(i.restarted_at(), 14);
        assert!(!i.note(Some(b"b"), 20));
        assert_eq!(i.restarted_at(), 14, "kept until the next change");
        assert!(
            i.note(Some(b"a"), 30),
            "back to an earlier value is a restart too"
        );
        assert_eq!(i.restarted_at(), 30);
        assert_eq!(i.current().as_deref(), Some("a"));
    }

    #[test]
    fn long_values_are_compared_by_their_first_bytes_and_never_panic() {
        let i = Incarnation::default();
        let long = vec![b'x'; 10_000];
        assert!(!i.note(Some(&long), 1));
        let mut other = long.clone();
        other[9_999] = b'y';
        assert!(!i.note(Some(&other), 2), "differs past the kept prefix");
        assert!(i.note(Some(b""), 3), "an empty value is a value");
        assert_eq!(i.restarted_at(), 3);
    }
}
