//! Discovery's rules: which backends a pool's `[[discover]]` entry has after each DNS answer.
//! Pure: the lookups are made by [`crate::dns`], which feeds their answers here with the time.
//!
//! - A backend's id comes from what it is (its `ip:port`, or its SRV target), never from where
//!   it sits in an answer: the same records in any order give the same backends, so every
//!   replica of stickyd that sees the same answer has the same ids, rings and fallbacks.
//! - A lookup that fails or answers nothing keeps the last good set: a DNS outage never empties
//!   a pool.
//! - A backend gone from a good answer drains (no new sessions; its sessions stay) for
//!   `remove_grace`, then goes; it goes at once if it is down, and it is back to normal if it
//!   returns to the answers first.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// What names a discovered backend (`[[discover]] id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscoverId {
    /// Its `ip:port` (`[v6]:port`).
    #[default]
    Address,
    /// The SRV record's target name (its trailing dot left out, in lower case).
    SrvTarget,
}

/// One backend a lookup found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// Its id.
    pub id: String,
    /// Where to connect.
    pub address: SocketAddr,
}

/// What one lookup gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// At least one backend.
    Found(Vec<Found>),
    /// The name exists but has no records (or no name: NXDOMAIN).
    Empty,
    /// No answer: timeout, refusal, a server failure.
    Failed,
}

impl Answer {
    /// What the lookup metric counts it as.
    pub fn outcome(&self) -> Outcome {
        match self {
            Answer::Found(_) => Outcome::Ok,
            Answer::Empty => Outcome::Empty,
            Answer::Failed => Outcome::Failed,
        }
    }
}

/// A lookup's outcome, as `stickyd_discovery_lookups_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Backends found.
    Ok,
    /// Nothing found: the last good set is kept.
    Empty,
    /// No answer: the last good set is kept.
    Failed,
}

impl Outcome {
    /// Every outcome, in the order counters keep them.
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Empty, Outcome::Failed];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Empty => "empty",
            Outcome::Failed => "failed",
        }
    }
}

/// A discovered backend as the pool has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: Arc<str>,
    /// Where to connect.
    pub address: SocketAddr,
    /// When it left the answers (ms since the epoch): it drains until its grace is over.
    pub leaving_since: Option<u64>,
}

/// The id of a backend at `address` found by a lookup with ids `from` (SRV `target` when it
/// came from an SRV record).
fn id_of(from: DiscoverId, address: SocketAddr, target: Option<&str>) -> String {
    match (from, target) {
        (DiscoverId::SrvTarget, Some(t)) => t.trim_end_matches('.').to_ascii_lowercase(),
        _ => address.to_string(),
    }
}

/// The backends of an A/AAAA answer: each address with `port`, id `ip:port`.
pub fn from_addresses(ips: impl IntoIterator<Item = IpAddr>, port: u16) -> Vec<Found> {
    ips.into_iter()
        .map(|ip| {
            let address = SocketAddr::new(ip, port);
            Found {
                id: id_of(DiscoverId::Address, address, None),
                address,
            }
        })
        .collect()
}

/// The backends of an SRV answer, given as (target, port, the target's addresses): each
/// address with its record's port, named by `id`.
pub fn from_srv<'a>(
    records: impl IntoIterator<Item = (&'a str, u16, &'a [IpAddr])>,
    id: DiscoverId,
) -> Vec<Found> {
    let mut out = Vec::new();
    for (target, port, ips) in records {
        for &ip in ips {
            let address = SocketAddr::new(ip, port);
            out.push(Found {
                id: id_of(id, address, Some(target)),
                address,
            });
        }
    }
    out
}

/// The members after `answer` at `now_ms`, from `prev`. `down` says whether a backend's
/// checks fail now. Sorted by id, each id once (an id found at several addresses takes the
/// lowest, so every replica picks the same one).
pub fn next(
    prev: &[Member],
    answer: &Answer,
    now_ms: u64,
    grace: Duration,
    down: impl Fn(&str) -> bool,
) -> Vec<Member> {
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let gone = |m: &Member| {
        m.leaving_since
            .is_some_and(|t| now_ms.saturating_sub(t) >= grace_ms || down(&m.id))
    };
    let found = match answer {
        Answer::Found(found) if !found.is_empty() => found,
        // The last good set stays; only leavers whose time is up go.
        _ => return prev.iter().filter(|m| !gone(m)).cloned().collect(),
    };
    let mut found: Vec<&Found> = found.iter().collect();
    found.sort();
    found.dedup_by(|b, a| a.id == b.id);
    let mut out: Vec<Member> = found
        .iter()
        .map(|f| Member {
            id: prev
                .iter()
                .find(|m| *m.id == *f.id)
                .map_or_else(|| f.id.as_str().into(), |m| m.id.clone()),
            address: f.address,
            leaving_since: None,
        })
        .collect();
    for m in prev {
        if found.iter().any(|f| *f.id == *m.id) {
            continue;
        }
        let left = Member {
            leaving_since: Some(m.leaving_since.unwrap_or(now_ms)),
            ..m.clone()
        };
        if !gone(&left) {
            out.push(left);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// When the first leaver's grace is over (ms since the epoch), if any is leaving.
pub fn next_expiry(members: &[Member], grace: Duration) -> Option<u64> {
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    members
        .iter()
        .filter_map(|m| m.leaving_since)
        .map(|t| t.saturating_add(grace_ms))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn found(lasts: &[u8]) -> Answer {
        Answer::Found(from_addresses(lasts.iter().map(|&l| ip(l)), 8080))
    }

    fn ids(m: &[Member]) -> Vec<&str> {
        m.iter().map(|m| &*m.id).collect()
    }

    fn never_down(_: &str) -> bool {
        false
    }

    #[test]
    fn ids_are_addresses_with_the_port_or_srv_targets() {
        let f = from_addresses([ip(2), "::1".parse().unwrap()], 80);
        assert_eq!(f[0].id, "127.0.0.2:80");
        assert_eq!(f[1].id, "[::1]:80");
        let ips = [ip(3)];
        let srv = from_srv(
            [("App-0.app.shop.svc.cluster.local.", 8080, &ips[..])],
            DiscoverId::SrvTarget,
        );
        assert_eq!(srv[0].id, "app-0.app.shop.svc.cluster.local");
        assert_eq!(srv[0].address, "127.0.0.3:8080".parse().unwrap());
        let by_addr = from_srv([("a.", 81, &ips[..])], DiscoverId::Address);
        assert_eq!(by_addr[0].id, "127.0.0.3:81");
    }

    #[test]
    fn a_first_answer_gives_its_backends_sorted_by_id() {
        let m = next(&[], &found(&[4, 2, 3]), 0, GRACE, never_down);
        assert_eq!(
            ids(&m),
            ["127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.4:8080"]
        );
        assert!(m.iter().all(|m| m.leaving_since.is_none()));
    }

    #[test]
    fn failed_or_empty_answers_keep_the_last_good_set() {
        let m = next(&[], &found(&[2, 3]), 0, GRACE, never_down);
        for a in [Answer::Failed, Answer::Empty, Answer::Found(vec![])] {
            assert_eq!(next(&m, &a, 1_000_000, GRACE, |_| true), m, "{a:?}");
        }
    }

    #[test]
    fn a_backend_gone_from_the_answers_drains_for_its_grace_then_goes() {
        let m = next(&[], &found(&[2, 3]), 0, GRACE, never_down);
        let m = next(&m, &found(&[2]), 1_000, GRACE, never_down);
        assert_eq!(ids(&m), ["127.0.0.2:8080", "127.0.0.3:8080"]);
        assert_eq!(m[1].leaving_since, Some(1_000));
        assert_eq!(next_expiry(&m, GRACE), Some(31_000));
        // Its leaving time is kept by later answers, and by failures.
        let m = next(&m, &found(&[2]), 20_000, GRACE, never_down);
        assert_eq!(m[1].leaving_since, Some(1_000));
        let m = next(&m, &Answer::Failed, 30_999, GRACE, never_down);
        assert_eq!(m.len(), 2);
        // Time is up, even on a failed lookup.
        let gone = next(&m, &Answer::Failed, 31_000, GRACE, never_down);
        assert_eq!(ids(&gone), ["127.0.0.2:8080"]);
        assert_eq!(next_expiry(&gone, GRACE), None);
    }

    #[test]
    fn a_leaver_that_is_down_goes_at_once_and_one_that_returns_is_back() {
        let m = next(&[], &found(&[2, 3]), 0, GRACE, never_down);
        let down3 = |id: &str| id == "127.0.0.3:8080";
        let m2 = next(&m, &found(&[2]), 1_000, GRACE, down3);
        assert_eq!(ids(&m2), ["127.0.0.2:8080"]);
        // Down but still in the answers: it stays (its checks decide, not discovery).
        assert_eq!(next(&m, &found(&[2, 3]), 1_000, GRACE, down3), m);
        let left = next(&m, &found(&[2]), 1_000, GRACE, never_down);
        let back = next(&left, &found(&[3, 2]), 2_000, GRACE, never_down);
        assert_eq!(back, m);
    }

    #[test]
    fn an_id_found_at_several_addresses_takes_the_lowest() {
        let (a, b) = ([ip(9)], [ip(5)]);
        let f = from_srv(
            [("pod-0.", 80, &a[..]), ("pod-0.", 80, &b[..])],
            DiscoverId::SrvTarget,
        );
        let m = next(&[], &Answer::Found(f), 0, GRACE, never_down);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].address, "127.0.0.5:80".parse().unwrap());
    }

    #[test]
    fn an_address_change_under_a_srv_target_keeps_the_id_and_takes_the_new_address() {
        let (old, new) = ([ip(2)], [ip(7)]);
        let m = next(
            &[],
            &Answer::Found(from_srv([("pod-0.", 80, &old[..])], DiscoverId::SrvTarget)),
            0,
            GRACE,
            never_down,
        );
        let m2 = next(
            &m,
            &Answer::Found(from_srv([("pod-0.", 80, &new[..])], DiscoverId::SrvTarget)),
            5,
            GRACE,
            never_down,
        );
        assert_eq!(ids(&m2), ["pod-0"]);
        assert_eq!(m2[0].address, "127.0.0.7:80".parse().unwrap());
        assert!(
            Arc::ptr_eq(&m[0].id, &m2[0].id),
            "the id is kept, not rebuilt"
        );
    }

    proptest! {
        /// The order of an answer never matters, and the result is sorted, each id once, with
        /// every found backend active and every previous one still there or leaving.
        #[test]
        fn answers_in_any_order_give_the_same_members(
            first in proptest::collection::vec(2u8..40, 0..12),
            second in proptest::collection::vec(2u8..40, 1..12),
            seed in any::<u64>(),
            now in 0u64..100_000,
        ) {
            let prev = next(&[], &found(&first), 0, GRACE, never_down);
            let a = next(&prev, &found(&second), now, GRACE, never_down);
            let mut shuffled = second.clone();
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut shuffled);
            shuffled.extend_from_slice(&second[..1]);
            let b = next(&prev, &found(&shuffled), now, GRACE, never_down);
            prop_assert_eq!(&a, &b);
            prop_assert!(a.windows(2).all(|w| w[0].id < w[1].id));
            for l in &second {
                let id = format!("127.0.0.{l}:8080");
                let m = a.iter().find(|m| *m.id == *id);
                prop_assert!(m.is_some_and(|m| m.leaving_since.is_none()));
            }
            // A backend that just left drains: none is dropped by the answer that drops it.
            for p in &prev {
                prop_assert!(a.iter().any(|m| m.id == p.id));
            }
        }
    }
}
