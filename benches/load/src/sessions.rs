//! The app side of the harness's backends: their own session cookie (`sid`), the per-session
//! counter they keep in memory, the replica table of the replication protocol, and the parsing
//! of what stickyd sends them (`X-Stickyd-Backup`).
//!
//! Pure: no I/O. The clock is read only to age idle sessions out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The backends' own session cookie.
pub const SID_COOKIE: &str = "sid";
/// The response header with the session's counter after this request.
pub const COUNT_HEADER: &str = "x-session-count";
/// Path prefix of the replication endpoint: `PUT /_stickyd/replica/{sid}`.
pub const REPLICA_PREFIX: &str = "/_stickyd/replica/";
/// Largest replica body accepted (a decimal counter is at most 20 bytes).
pub const MAX_REPLICA_BODY: usize = 64;
/// A session (live or replica) untouched for between this long and twice this long is
/// forgotten, so that a long run's tables stay bounded, as an app's sessions expire.
pub const SESSION_IDLE: Duration = Duration::from_secs(60);
/// Lock shards of a store.
const SHARDS: usize = 16;

/// A session id: 16 lowercase hex digits on the wire.
pub type Sid = u64;

pub fn format_sid(sid: Sid) -> String {
    format!("{sid:016x}")
}

/// A `sid` value: exactly 16 hex digits.
pub fn parse_sid(v: &[u8]) -> Option<Sid> {
    if v.len() != 16 || !v.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()
}

/// The `sid` cookie among a request's `Cookie` header values (the first valid one).
pub fn sid_from_cookies<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Sid> {
    values.into_iter().find_map(|v| {
        v.split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == SID_COOKIE.as_bytes())
                .then(|| parse_sid(pair[eq + 1..].trim_ascii()))
                .flatten()
        })
    })
}

/// One backup named in `X-Stickyd-Backup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub id: String,
    pub addr: SocketAddr,
}

/// Parses `X-Stickyd-Backup: b3=127.0.0.1:7000, b4=[::1]:7000`: `id=host:port` entries,
/// comma separated (whitespace around them ignored), in order. The harness's backends push
/// to IP addresses only: a host name is refused, as is an entry without `=`, an empty id, a
/// bad address or an empty entry between commas. An empty value names no backup.
pub fn parse_backups(value: &[u8]) -> Result<Vec<Backup>, String> {
    let text = std::str::from_utf8(value).map_err(|_| "X-Stickyd-Backup is not UTF-8")?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|entry| {
            let entry = entry.trim();
            let (id, addr) = entry
                .split_once('=')
                .ok_or_else(|| format!("backup {entry:?} is not id=host:port"))?;
            let (id, addr) = (id.trim(), addr.trim());
            if id.is_empty() {
                return Err(format!("backup {entry:?} has no id"));
            }
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| format!("backup {entry:?}: {addr:?} is not an IP address and port"))?;
            Ok(Backup {
                id: id.to_string(),
                addr,
            })
        })
        .collect()
}

/// What a session holds: the number of requests it has made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionState {
    pub count: u64,
}

impl SessionState {
    /// The replica body: the counter in decimal.
    pub fn encode(&self) -> String {
        self.count.to_string()
    }

    pub fn decode(body: &[u8]) -> Option<SessionState> {
        if body.is_empty() || body.len() > 20 || !body.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(SessionState {
            count: std::str::from_utf8(body).ok()?.parse().ok()?,
        })
    }
}

/// A replica held for another backend: the state and who pushed it (`X-Replica-From`), which
/// is the session's home when it was pushed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replica {
    pub state: SessionState,
    pub from: Option<Arc<str>>,
}

/// What a takeover found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// The replica became the live session; `from` is the backend that pushed it.
    Promoted { from: Option<Arc<str>> },
    /// There was no replica: the session starts empty (its state is lost).
    NoReplica,
}

/// What one request did to its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advanced {
    pub sid: Sid,
    /// The state after this request (to answer with and to replicate).
    pub state: SessionState,
    /// The request carried no valid `sid`: a new one must be set.
    pub new_cookie: bool,
    /// The request carried a `sid` this process did not know and no takeover: it started
    /// over (a new session for the app, state lost for the user).
    pub unknown: bool,
    /// It was unknown, and a replica of it was here that was not promoted because stickyd
    /// sent no takeover: a sign that a failover reached the backup without one.
    pub unknown_with_replica: bool,
    pub takeover: Option<Takeover>,
}

/// Two generations of a table: lookups move entries to the current one, and every
/// [`SESSION_IDLE`] the previous one is dropped.
#[derive(Debug)]
struct Aged<V> {
    cur: HashMap<Sid, V>,
    old: HashMap<Sid, V>,
    rotated: Instant,
}

impl<V> Aged<V> {
    fn new(now: Instant) -> Aged<V> {
        Aged {
            cur: HashMap::new(),
            old: HashMap::new(),
            rotated: now,
        }
    }

    fn age(&mut self, now: Instant, idle: Duration) {
        if now.saturating_duration_since(self.rotated) >= idle {
            self.old = std::mem::take(&mut self.cur);
            self.rotated = now;
        }
    }

    fn get_mut(&mut self, sid: Sid) -> Option<&mut V> {
        if !self.cur.contains_key(&sid) {
            let s = self.old.remove(&sid)?;
            self.cur.insert(sid, s);
        }
        self.cur.get_mut(&sid)
    }

    fn remove(&mut self, sid: Sid) -> Option<V> {
        let a = self.cur.remove(&sid);
        let b = self.old.remove(&sid);
        a.or(b)
    }

    fn contains(&self, sid: Sid) -> bool {
        self.cur.contains_key(&sid) || self.old.contains_key(&sid)
    }

    fn insert(&mut self, sid: Sid, s: V) {
        self.old.remove(&sid);
        self.cur.insert(sid, s);
    }

    fn len(&self) -> usize {
        self.cur.len() + self.old.len()
    }
}

#[derive(Debug)]
struct Shard {
    live: Aged<SessionState>,
    replicas: Aged<Replica>,
}

/// One process's sessions and the replicas it holds for other backends, in lock shards by
/// session id.
#[derive(Debug)]
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    idle: Duration,
}

impl Store {
    pub fn new(idle: Duration) -> Store {
        let now = Instant::now();
        Store {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        live: Aged::new(now),
                        replicas: Aged::new(now),
                    })
                })
                .collect(),
            idle,
        }
    }

    fn shard(&self, sid: Sid) -> std::sync::MutexGuard<'_, Shard> {
        // Ids are random: their low bits spread evenly.
        let m = &self.shards[(sid as usize) % SHARDS];
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles one request's session: `sid` from its cookie, `takeover` whether stickyd sent
    /// `X-Stickyd-Takeover`, `new_sid` the id to use for a new session.
    pub fn advance(&self, sid: Option<Sid>, takeover: bool, new_sid: Sid) -> Advanced {
        let (sid, new_cookie) = match sid {
            Some(s) => (s, false),
            None => (new_sid, true),
        };
        let now = Instant::now();
        let mut sh = self.shard(sid);
        sh.live.age(now, self.idle);
        sh.replicas.age(now, self.idle);
        let mut out = Advanced {
            sid,
            state: SessionState::default(),
            new_cookie,
            unknown: false,
            unknown_with_replica: false,
            takeover: None,
        };
        if takeover && !new_cookie {
            // Promote: the replica replaces whatever this process had (a live copy here is
            // older than the home's pushes). No replica: the session starts over.
            let (state, takeover) = match sh.replicas.remove(sid) {
                Some(r) => (r.state, Takeover::Promoted { from: r.from }),
                None => (SessionState::default(), Takeover::NoReplica),
            };
            out.takeover = Some(takeover);
            sh.live.insert(sid, state);
        } else if takeover {
            // A takeover without a session cookie has nothing to promote.
            out.takeover = Some(Takeover::NoReplica);
        }
        let state = match sh.live.get_mut(sid) {
            Some(s) => s,
            None => {
                out.unknown = !new_cookie;
                out.unknown_with_replica = !new_cookie && sh.replicas.contains(sid);
                sh.live.insert(sid, SessionState::default());
                sh.live.get_mut(sid).expect("just inserted")
            }
        };
        state.count += 1;
        out.state = *state;
        out
    }

    /// Stores (or replaces) the replica of `sid`, pushed by `from`.
    pub fn put_replica(&self, sid: Sid, state: SessionState, from: Option<Arc<str>>) {
        let mut sh = self.shard(sid);
        sh.replicas.age(Instant::now(), self.idle);
        sh.replicas.insert(sid, Replica { state, from });
    }

    /// Forgets the replica of `sid`; whether there was one.
    pub fn delete_replica(&self, sid: Sid) -> bool {
        self.shard(sid).replicas.remove(sid).is_some()
    }

    /// The replica of `sid`, if held.
    #[cfg(test)]
    pub fn replica(&self, sid: Sid) -> Option<Replica> {
        let mut sh = self.shard(sid);
        sh.replicas.get_mut(sid).cloned()
    }

    /// (live sessions, replicas) held.
    pub fn sizes(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(l, r), m| {
            let sh = m.lock().unwrap_or_else(|p| p.into_inner());
            (l + sh.live.len(), r + sh.replicas.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn the_backup_header_lists_ids_and_addresses_in_order() {
        assert_eq!(
            parse_backups(b"b3=127.0.0.1:7000, b4=[::1]:7001"),
            Ok(vec![
                Backup {
                    id: "b3".into(),
                    addr: addr("127.0.0.1:7000")
                },
                Backup {
                    id: "b4".into(),
                    addr: addr("[::1]:7001")
                },
            ])
        );
        assert_eq!(
            parse_backups(b"  app-3 = 10.0.0.13:7000  ")
                .expect("one")
                .iter()
                .map(|b| (b.id.as_str(), b.addr))
                .collect::<Vec<_>>(),
            [("app-3", addr("10.0.0.13:7000"))]
        );
        assert_eq!(parse_backups(b""), Ok(vec![]));
        assert_eq!(parse_backups(b"  "), Ok(vec![]));
        for (bad, needle) in [
            (&b"b3"[..], "not id=host:port"),
            (b"=127.0.0.1:1", "no id"),
            (b"b3=app.internal:7000", "not an IP address"),
            (b"b3=127.0.0.1", "not an IP address"),
            (b"b3=127.0.0.1:70000", "not an IP address"),
            (b"b3=127.0.0.1:1,,b4=127.0.0.1:2", "not id=host:port"),
            (b"b3=127.0.0.1:1,", "not id=host:port"),
            (b"b3=\xff", "UTF-8"),
        ] {
            let e = parse_backups(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(e.contains(needle), "{}: {e}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_sid_cookie_is_found_among_others() {
        let sid = 0x0123_4567_89ab_cdef;
        assert_eq!(format_sid(sid), "0123456789abcdef");
        assert_eq!(parse_sid(b"0123456789abcdef"), Some(sid));
        assert_eq!(parse_sid(b"0123456789ABCDEF"), Some(sid));
        for bad in [&b""[..], b"123", b"0123456789abcdeg", b"+123456789abcdef"] {
            assert_eq!(parse_sid(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let one = [&b"a=1; sid=0123456789abcdef; b=2"[..]];
        assert_eq!(sid_from_cookies(one), Some(sid));
        let split = [&b"a=1"[..], b" sid = 0123456789abcdef "];
        assert_eq!(sid_from_cookies(split), Some(sid));
        let first_valid = [&b"sid=bad; sid=0123456789abcdef"[..]];
        assert_eq!(sid_from_cookies(first_valid), Some(sid));
        assert_eq!(sid_from_cookies([&b"xsid=0123456789abcdef"[..]]), None);
        assert_eq!(sid_from_cookies([&b"stickyd=abc"[..]]), None);
        assert_eq!(sid_from_cookies(std::iter::empty()), None);
    }

    #[test]
    fn replica_bodies_are_decimal_counters() {
        let s = SessionState { count: 42 };
        assert_eq!(SessionState::decode(s.encode().as_bytes()), Some(s));
        for bad in [&b""[..], b"-1", b"4 2", b"99999999999999999999999", b"x"] {
            assert_eq!(SessionState::decode(bad), None);
        }
    }

    #[test]
    fn requests_advance_their_session_and_new_ones_get_a_cookie() {
        let st = Store::new(SESSION_IDLE);
        let a = st.advance(None, false, 7);
        assert_eq!(
            (a.sid, a.state.count, a.new_cookie, a.unknown),
            (7, 1, true, false)
        );
        let a = st.advance(Some(7), false, 99);
        assert_eq!((a.sid, a.state.count, a.new_cookie), (7, 2, false));
        // A sid this process never saw: it starts over, with the same id.
        let a = st.advance(Some(8), false, 99);
        assert_eq!(
            (a.sid, a.state.count, a.new_cookie, a.unknown),
            (8, 1, false, true)
        );
        assert_eq!(st.sizes(), (2, 0));
    }

    #[test]
    fn a_takeover_promotes_the_replica_and_without_one_the_session_is_lost() {
        let st = Store::new(SESSION_IDLE);
        let home: Arc<str> = Arc::from("b1");
        st.put_replica(5, SessionState { count: 9 }, Some(home.clone()));
        assert_eq!(st.replica(5).map(|r| r.state.count), Some(9));
        // Without a takeover the replica is left alone: a new session.
        let a = st.advance(Some(5), false, 0);
        assert_eq!(
            (a.state.count, a.unknown, a.unknown_with_replica),
            (1, true, true)
        );
        assert_eq!(a.takeover, None);
        // The takeover replaces the live copy with the replica and removes the replica.
        let a = st.advance(Some(5), true, 0);
        assert_eq!(a.takeover, Some(Takeover::Promoted { from: Some(home) }));
        assert_eq!(a.state.count, 10);
        assert_eq!(st.replica(5), None);
        let a = st.advance(Some(6), true, 0);
        assert_eq!(a.takeover, Some(Takeover::NoReplica));
        assert_eq!(a.state.count, 1);
        let a = st.advance(None, true, 3);
        assert_eq!(a.takeover, Some(Takeover::NoReplica));
        assert!(a.new_cookie);
        st.put_replica(11, SessionState { count: 1 }, None);
        assert!(st.delete_replica(11));
        assert!(!st.delete_replica(11));
    }

    #[test]
    fn idle_sessions_age_out_after_two_rotations() {
        let st = Store::new(Duration::ZERO);
        // With a zero idle time every access rotates: the entry written by one access is in
        // the previous generation at the next, and gone at the one after.
        st.advance(Some(1), false, 0);
        assert_eq!(
            st.advance(Some(1), false, 0).state.count,
            2,
            "kept one rotation"
        );
        let st = Store::new(Duration::ZERO);
        st.advance(Some(1), false, 0);
        st.advance(Some(17), false, 0); // same shard (17 % 16 == 1): rotates it again
        assert!(st.advance(Some(1), false, 0).unknown, "gone after two");
        let long = Store::new(Duration::from_secs(3600));
        for _ in 0..5 {
            long.advance(Some(1), false, 0);
        }
        assert_eq!(long.advance(Some(1), false, 0).state.count, 6);
    }
}
