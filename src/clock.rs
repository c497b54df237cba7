//! The clocks. The request path reads them once, when a request arrives ([`Now::read`]), and
//! passes that reading down: routing, token lifetimes, the session estimate, latency and the
//! access log all see the same instant. Two reads are later on purpose: a passive ejection is
//! dated when the failure is known (a connect can take `connect_timeout`), and slow start
//! reads [`epoch_ms`] when it places a new session. Policy modules never read a clock.
//!
//! Two clocks, for two jobs: the wall clock for what leaves the process (token times, which
//! move between machines, and the access log), the monotonic clock for durations measured
//! here (latency, ejection time). Outside a request, the admin API, reload and health checks
//! read them through [`unix_secs`] and [`epoch_ms`]; no other module calls the std clocks for
//! these, and the policy modules never do.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// The monotonic clock.
    pub mono: Instant,
    /// The wall clock.
    pub wall: SystemTime,
    /// The wall clock in whole seconds since the Unix epoch (0 before it), worked out once.
    unix: u64,
}

impl Now {
    /// Reads both clocks.
    pub fn read() -> Now {
        Now::at(Instant::now(), SystemTime::now())
    }

    /// A reading made of these two instants.
    pub fn at(mono: Instant, wall: SystemTime) -> Now {
        Now {
            mono,
            wall,
            unix: wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    /// Whole seconds since the Unix epoch (0 before it).
    pub fn unix_secs(&self) -> u64 {
        self.unix
    }

    /// [`Now::unix_secs`] as token times carry it (u32 seconds, saturating).
    pub fn unix_u32(&self) -> u32 {
        u32::try_from(self.unix).unwrap_or(u32::MAX)
    }
}

/// Seconds since the Unix epoch on the wall clock (0 if the clock is before it).
pub(crate) fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds on a monotonic clock that starts with the process (never 0 once read).
pub(crate) fn epoch_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let e = EPOCH.get_or_init(Instant::now);
    u64::try_from(e.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unix_seconds_come_from_the_wall_clock_and_saturate() {
        let at = |secs: u64| Now::at(Instant::now(), UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(1_800_000_000).unix_secs(), 1_800_000_000);
        assert_eq!(at(1_800_000_000).unix_u32(), 1_800_000_000);
        assert_eq!(at(u64::from(u32::MAX) + 5).unix_u32(), u32::MAX);
        let before = Now::at(Instant::now(), UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(before.unix_secs(), 0);
    }
}
