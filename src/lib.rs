//! stickyd: an L7 HTTP reverse-proxy load balancer whose core job is session affinity.
//!
//! The modules, layer by layer; each imports only from layers below it (no import circles).
//! Policy modules do no I/O and read no clock: time and randomness come in as arguments, so
//! they are unit- and property-tested alone. Public: what a test, a benchmark or an embedder
//! needs (the policy, config, state, `server::start`); the request path's plumbing is the
//! crate's own.
//!
//! | layer | module | owns |
//! |---|---|---|
//! | policy | [`token`] | the cookie value's format, the HMAC key ring, sign and verify |
//! | policy | [`balance`] | smooth weighted round robin, rendezvous hashing, the slow-start ramp |
//! | policy | [`health`] | the rise/fall state machine, status ranges |
//! | policy | [`headers`] | the affinity cookie, hop-by-hop, X-Forwarded-*, Via, framing and Host refusals |
//! | policy | [`h1`] | HTTP/1 heads parsed and written from the received bytes, the chunked coding |
//! | policy | [`affinity`] | the routing decision (pinned, fallback, new) and the request's affinity input |
//! | policy | [`error`] | proxy errors, their one status mapping, retry safety |
//! | policy | [`route`] | the route table of pools: host patterns, path prefixes, the most specific first |
//! | policy | [`proxy_header`] | the PROXY protocol header (v1 and v2) an L4 balancer sends first |
//! | policy | [`discover`] | a pool's discovered backends after each DNS answer: ids, last good set, grace |
//! | edge | [`config`] | TOML text to a raw schema to validated values, every error at its key |
//! | state | [`backend`] | live per-backend state in parts: health, admin, counters, load, sessions |
//! | state | [`metrics`] | process-wide counters and their Prometheus exposition |
//! | state | [`series`] | the dashboard's per-second series: deltas of the counters in fixed rings, latency quantiles |
//! | state | [`state`] | the immutable snapshot behind an `ArcSwap`; live state kept by backend id |
//! | I/O | `clock` | the clocks, read once per request and passed down |
//! | I/O | `rt` | the worker's executor for hyper's tasks |
//! | I/O | `io` | the client stream's send deadline, `Stall`, a connection's one lazily re-armed `Deadline` |
//! | I/O | [`tls`] | certificates, SNI, rustls server and client configs |
//! | I/O | `connect` | connections to backends: TCP, TLS, one deadline, the idle probe |
//! | I/O | `body` | the request body sent upstream, kept for a safe retry |
//! | I/O | `upstream` | the per-worker connection pools to backends (hyper's, the HTTP/1 engine's) |
//! | I/O | `tunnel` | byte copying for upgraded connections (WebSocket) |
//! | I/O | `access` | the access log and its writer thread |
//! | I/O | `proxy` | the request path: check, affinity input, attempts, record, response |
//! | task | `checker` | active health probes, one task per backend |
//! | task | `dns` | discovery: one task per `[[discover]]` entry, its lookups and the snapshots they change |
//! | task | `maintain` | the 100 ms ticker: rates, pin decay, imbalance ratio, session rotation |
//! | task | `notify` | systemd readiness notifications |
//! | top | `admin` | the admin API: Host/Origin guard, token, metrics, backends, drain, reload |
//! | top | [`server`] | start, workers and accept loops, reload, graceful shutdown |

pub mod affinity;
pub mod backend;
pub mod balance;
pub mod config;
pub mod discover;
pub mod error;
pub mod h1;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod proxy_header;
pub mod route;
pub mod series;
pub mod server;
pub mod state;
pub mod tls;
pub mod token;

pub(crate) mod access;
pub(crate) mod admin;
pub(crate) mod body;
pub(crate) mod checker;

pub(crate) mod clock;
pub(crate) mod connect;
pub(crate) mod dns;
pub(crate) mod io;
pub(crate) mod maintain;
pub(crate) mod notify;
pub(crate) mod proxy;
pub(crate) mod rt;
pub(crate) mod tunnel;
pub(crate) mod upstream;
