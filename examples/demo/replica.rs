//! The app's side of stickyd's session replication (`--replicate`): all an app adds to keep its
//! sessions alive when an instance goes away.
//!
//! 1. **Replicate.** stickyd names each session's backups on every request it forwards
//!    (`X-Stickyd-Backup: app-2=127.0.0.1:40001`). After every change the app PUTs the whole
//!    session to each of them ([`App::replicate`]), before it answers. A backup keeps the copy
//!    apart from its own sessions ([`receive_replica`], [`Replicas`]).
//! 2. **Take over.** When a session's home is gone (down, removed, restarted, handed off),
//!    stickyd sends the request to the backup with `X-Stickyd-Takeover` and re-pins the session
//!    there. The backup makes its copy the live session before it handles the request
//!    ([`take_over_if_asked`]).
//! 3. **Say who you are.** The health check answers with this process's incarnation, so stickyd
//!    can tell a restart (same address, empty memory) from a blip ([`health`]).
//!
//! Sessions are keyed by the app's own `app_session` cookie: stickyd's cookie never reaches the
//! app. The rest of the demo calls in here four times: `take_over_if_asked` first thing on every
//! request, `App::replicate` after every change, and `receive_replica` and `health` as routes.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{
    App, Body, ITEMS, MAX_CART, Session, instance_named, is_session_id, plain, random_hex,
    read_body, session_id,
};

/// stickyd's request header naming the session's backups: `app-2=127.0.0.1:40001` (comma and
/// space between several).
const BACKUP: &str = "x-stickyd-backup";
/// stickyd's request header saying this request takes the session over from its lost home.
const TAKEOVER: &str = "x-stickyd-takeover";
/// stickyd's request header naming the backend that serves the request. stickyd adds it to every
/// request it forwards, and removes a client's copy.
const BACKEND: &str = "x-stickyd-backend";
/// The health-check response header telling stickyd which process answers.
const INCARNATION: &str = "x-stickyd-incarnation";
/// Who sent a copy: the session's home. After a takeover the page names it.
const REPLICA_FROM: &str = "x-replica-from";
/// Where copies are sent: `PUT /_stickyd/replica/{session id}`.
pub(super) const REPLICA_PATH: &str = "/_stickyd/replica/";
/// A push that takes longer is given up (and logged): a slow backup must not hang the visitor.
const PUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// One backup named in `X-Stickyd-Backup`.
#[derive(Debug, PartialEq)]
pub(super) struct Backup {
    /// The backend id from stickyd's config.
    id: String,
    /// Where to send copies: `host:port`.
    addr: String,
}

/// Parses `X-Stickyd-Backup`: `id=host:port` entries, in stickyd's order, comma separated.
/// Entries that do not look like that are skipped rather than failing the request.
fn parse_backups(value: &str) -> Vec<Backup> {
    value
        .split(',')
        .filter_map(|entry| entry.trim().split_once('='))
        .filter(|(id, addr)| is_backend_id(id) && is_host_port(addr))
        .map(|(id, addr)| Backup {
            id: id.to_string(),
            addr: addr.to_string(),
        })
        .collect()
}

/// The backups stickyd named for this request's session (none without the header).
pub(super) fn backups_named(headers: &HeaderMap) -> Vec<Backup> {
    headers
        .get(BACKUP)
        .and_then(|v| v.to_str().ok())
        .map(parse_backups)
        .unwrap_or_default()
}

/// A backend id as stickyd's config allows: letters, digits, `-`, `_`, `.`.
fn is_backend_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `host:port` or `[v6]:port`, and nothing that could change the URL's path or query once
/// pasted into `http://{addr}/...`.
fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// The copies this instance holds of other instances' sessions, by session id.
pub(super) struct Replicas {
    copies: HashMap<String, Replica>,
    /// Most copies kept; past it an arbitrary one is dropped for a new one.
    limit: usize,
}

impl Replicas {
    pub(super) fn new(limit: usize) -> Self {
        Replicas {
            copies: HashMap::new(),
            limit,
        }
    }

    /// Keeps `copy` as the copy of session `id`, replacing the one before: every push carries
    /// the whole session, so the latest one is all there is to know. (A browser sends one
    /// change at a time, so pushes arrive in order; an app whose clients change a session from
    /// several requests at once would number its copies and keep the highest.)
    pub(super) fn put(&mut self, id: String, copy: Replica) {
        if self.copies.len() >= self.limit && !self.copies.contains_key(&id) {
            if let Some(victim) = self.copies.keys().next().cloned() {
                self.copies.remove(&victim);
            }
        }
        self.copies.insert(id, copy);
    }

    /// Removes the copy of session `id` and hands it over: on a takeover it becomes live here.
    pub(super) fn take(&mut self, id: &str) -> Option<Replica> {
        self.copies.remove(id)
    }

    pub(super) fn len(&self) -> usize {
        self.copies.len()
    }
}

/// One copy of another instance's session.
pub(super) struct Replica {
    pub(super) session: Session,
    /// The instance that sent it: the session's home when it did.
    pub(super) from: &'static str,
}

/// The body of a push: the session as JSON.
pub(super) fn encode_copy(session: &Session) -> Bytes {
    // A struct of a number and strings always serializes.
    Bytes::from(serde_json::to_vec(session).unwrap_or_default())
}

/// A pushed body back into a session, if it is one this app could have made: a copy arrives
/// from the network, so it gets the checks a form would.
fn decode_copy(body: &[u8]) -> Option<Session> {
    let session: Session = serde_json::from_slice(body).ok()?;
    let cart_ok =
        session.cart.len() <= MAX_CART && session.cart.iter().all(|i| ITEMS.contains(&i.as_str()));
    cart_ok.then_some(session)
}

/// What became of one push, for the page.
pub(super) struct Copied {
    /// The backup's instance name (its id in stickyd's config).
    pub(super) backup: &'static str,
    pub(super) ok: bool,
}

/// Why a session is live here: this instance took it over (the page says so once).
#[derive(Clone, Copy)]
pub(super) enum Takeover {
    /// From the copy that `from`, the old home, sent.
    Restored { from: &'static str },
    /// There was no copy: the session starts empty.
    Lost,
}

impl App {
    /// Protocol step 1: sends session `id`'s new state to every backup stickyd named, and waits
    /// for them before the visitor gets the answer, so a copy is never behind what the visitor
    /// saw. Called after every change. A failed push is logged and shown, never fatal: the
    /// visitor is served either way, only a failover would lose this change.
    ///
    /// Every request to `/` counts a visit, so every request that touches a session changes it
    /// and pushes. An app whose reads change nothing must also push when the first backup named
    /// differs from the one it last pushed to: stickyd names a new backup when the old one goes
    /// away, and that one has no copy yet.
    pub(super) async fn replicate(
        &self,
        backups: &[Backup],
        id: &str,
        copy: Option<Bytes>,
    ) -> Vec<Copied> {
        let Some(copy) = copy else {
            return Vec::new(); // Replication is off.
        };
        let mut copies = Vec::new();
        for backup in backups {
            let pushed = self.push(backup, id, copy.clone()).await;
            if let Err(e) = &pushed {
                tracing::warn!(from = self.instance.name, to = %backup.id, session = short(id),
                    error = %e, "copy not pushed");
            }
            copies.push(Copied {
                backup: instance_named(&backup.id).0,
                ok: pushed.is_ok(),
            });
        }
        copies
    }

    /// `PUT http://{backup}/_stickyd/replica/{id}` with the session as the body.
    async fn push(&self, backup: &Backup, id: &str, copy: Bytes) -> Result<(), String> {
        let req = Request::put(format!("http://{}{REPLICA_PATH}{id}", backup.addr))
            .header(CONTENT_TYPE, "application/json")
            .header(REPLICA_FROM, self.instance.name)
            .body(Full::new(copy))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(PUSH_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("no answer in {PUSH_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(format!("answered {s}")),
        }
    }
}

/// `PUT /_stickyd/replica/{id}`: another instance sends its latest copy of a session whose
/// backup this instance is. Stored apart from the live sessions, answered 204.
///
/// The path is reachable through stickyd too, and a visitor must not plant a cart in someone
/// else's session. Copies come straight from the other instances, never through stickyd, and
/// stickyd marks every request it forwards with `X-Stickyd-Backend` (removing a client's copy),
/// so a request carrying it is refused. (On a real network, also keep the app's port away from
/// anyone but stickyd and the other instances.)
pub(super) async fn receive_replica(app: &App, req: Request<Incoming>) -> Response<Body> {
    if req.headers().contains_key(BACKEND) {
        return plain(
            StatusCode::FORBIDDEN,
            "copies come from instances, not through stickyd\n",
        );
    }
    let Some(id) = req
        .uri()
        .path()
        .strip_prefix(REPLICA_PATH)
        .filter(|id| is_session_id(id))
    else {
        return plain(StatusCode::NOT_FOUND, "not a session id\n");
    };
    let id = id.to_string();
    let from = req
        .headers()
        .get(REPLICA_FROM)
        .and_then(|v| v.to_str().ok());
    let from = instance_named(from.unwrap_or_default()).0;
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let Some(session) = decode_copy(&body) else {
        return plain(StatusCode::BAD_REQUEST, "not a session of this app\n");
    };
    app.lock_replicas().put(id, Replica { session, from });
    plain(StatusCode::NO_CONTENT, "")
}

/// Protocol step 2: on `X-Stickyd-Takeover`, stickyd sends this session here because its home
/// is gone, and re-pins it here. Before anything reads the session, the copy becomes the live
/// session, replacing whatever this instance had under that id (older, if the session lived
/// here before). No copy: the session starts empty, and is lost. The header's presence is all
/// that counts; the old home's name comes with the copy (who sent it).
pub(super) fn take_over_if_asked(app: &App, headers: &HeaderMap) {
    if !headers.contains_key(TAKEOVER) {
        return;
    }
    let Some(id) = session_id(headers) else {
        return; // No app session yet: nothing to take over, the visit starts a new one.
    };
    let copy = app.lock_replicas().take(&id);
    let takeover = match &copy {
        Some(copy) => Takeover::Restored { from: copy.from },
        None => Takeover::Lost,
    };
    let outcome = match takeover {
        Takeover::Restored { from } => format!("restored from the copy {from} sent"),
        Takeover::Lost => "no copy here, it starts empty (lost)".to_string(),
    };
    println!(
        "{} took session {} over: {outcome}",
        app.instance.name,
        short(&id)
    );
    app.with_session(&id, |live| {
        *live = copy.map(|copy| copy.session).unwrap_or_default();
        live.taken_over = Some(takeover);
    });
}

/// `GET /healthz`: stickyd's health check. Step 3: with replication on, the answer names this
/// life of the instance. An instance that stopped and came back on the same address is healthy
/// but empty; seeing a new incarnation, stickyd sends the sessions pinned to the old one to their
/// backups with a takeover, instead of home to an instance that forgot them.
pub(super) fn health(app: &App) -> Response<Body> {
    let mut resp = plain(StatusCode::OK, "ok\n");
    if app.instance.replicate {
        if let Ok(v) = HeaderValue::from_str(&app.incarnation) {
            resp.headers_mut().insert(INCARNATION, v);
        }
    }
    resp
}

/// A value drawn once per start of an instance: random, or the start time if there is no
/// randomness. Any value works as long as a restart changes it.
pub(super) fn new_incarnation() -> String {
    random_hex::<8>().unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
        format!("t{}", now.unwrap_or_default().as_nanos())
    })
}

/// The start of a session id, enough to follow it in the log.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(id: &str, addr: &str) -> Backup {
        Backup {
            id: id.into(),
            addr: addr.into(),
        }
    }

    #[test]
    fn backups_in_stickyds_order() {
        assert_eq!(
            parse_backups("app-3=10.0.0.13:7000, app-4=10.0.0.14:7000"),
            [
                backup("app-3", "10.0.0.13:7000"),
                backup("app-4", "10.0.0.14:7000")
            ]
        );
        assert_eq!(
            parse_backups("app-2=127.0.0.1:40001"),
            [backup("app-2", "127.0.0.1:40001")]
        );
        assert_eq!(
            parse_backups("b=[::1]:8080,c=host.example:80"),
            [backup("b", "[::1]:8080"), backup("c", "host.example:80")]
        );
        assert!(parse_backups("").is_empty());
    }

    #[test]
    fn backups_that_are_not_id_host_port_are_skipped() {
        for bad in [
            "app-2",
            "=127.0.0.1:1",
            "app-2=",
            "app-2=127.0.0.1",
            "app-2=127.0.0.1:0",
            "app-2=127.0.0.1:99999",
            "app-2=evil/x?:80",
            "app-2=h:80/x",
            "app 2=127.0.0.1:1",
            "<b>=127.0.0.1:1",
        ] {
            assert!(parse_backups(bad).is_empty(), "{bad}");
        }
        assert_eq!(
            parse_backups("junk, app-3=127.0.0.1:3"),
            [backup("app-3", "127.0.0.1:3")]
        );
    }

    #[test]
    fn a_copy_replaces_the_one_before_and_a_takeover_takes_it() {
        let mut replicas = Replicas::new(10);
        replicas.put("s".into(), replica(1, &["apple"]));
        replicas.put("s".into(), replica(2, &["apple", "bread"]));
        assert_eq!(replicas.len(), 1);
        let copy = replicas.take("s").unwrap();
        assert_eq!((copy.session.visits, copy.session.cart.len()), (2, 2));
        assert_eq!(copy.from, "app-1");
        assert!(replicas.take("s").is_none());
        assert_eq!(replicas.len(), 0);
    }

    #[test]
    fn replicas_stay_under_their_limit() {
        let mut replicas = Replicas::new(3);
        for i in 0..10 {
            replicas.put(format!("s{i}"), replica(i, &[]));
        }
        assert_eq!(replicas.len(), 3);
        assert!(replicas.take("s9").is_some(), "the newest copy is kept");
        replicas.put("s9".into(), replica(1, &[]));
        replicas.put("s9".into(), replica(2, &[]));
        assert_eq!(replicas.len(), 3, "replacing a copy drops no other");
    }

    #[test]
    fn a_copy_round_trips_without_the_takeover_note() {
        let mut s = session(7, &["coffee", "apple"]);
        s.taken_over = Some(Takeover::Restored { from: "app-1" });
        let copy = decode_copy(&encode_copy(&s)).unwrap();
        assert_eq!(copy.visits, 7);
        assert_eq!(copy.cart, ["coffee", "apple"]);
        assert!(copy.taken_over.is_none());
    }

    #[test]
    fn a_copy_this_app_could_not_have_made_is_refused() {
        assert!(decode_copy(br#"{"visits":1,"cart":["knife"]}"#).is_none());
        let full = vec!["apple"; MAX_CART + 1];
        let body = serde_json::json!({ "visits": 1, "cart": full }).to_string();
        assert!(decode_copy(body.as_bytes()).is_none());
        assert!(decode_copy(b"visits=1").is_none());
        assert!(decode_copy(br#"{"visits":-1,"cart":[]}"#).is_none());
    }

    fn replica(visits: u64, cart: &[&str]) -> Replica {
        Replica {
            session: session(visits, cart),
            from: "app-1",
        }
    }

    fn session(visits: u64, cart: &[&str]) -> Session {
        Session {
            visits,
            cart: cart.iter().map(|s| s.to_string()).collect(),
            taken_over: None,
        }
    }
}
