//! stickyd: an L7 HTTP reverse-proxy load balancer whose core job is session affinity.
//!
//! Module map (policy modules do no I/O and read no clock; time and randomness come in as
//! arguments):
//!
//! | module | owns | kind |
//! |---|---|---|
//! | [`token`] | cookie value format, HMAC key ring, sign/verify | policy |
//! | [`affinity`] | the routing decision: pinned, fallback, new; lifetimes | policy |
//! | [`balance`] | smooth weighted round robin, rendezvous hashing | policy |
//! | [`health`] | rise/fall state machine, status ranges | policy |
//! | [`headers`] | cookie strip, hop-by-hop, framing checks, X-Forwarded-*, Set-Cookie | policy |
//! | [`error`] | proxy errors and their one status mapping | policy |
//! | [`config`] | TOML schema, defaults, validation, key loading | edge |
//! | [`backend`] | live per-backend state in parts: health, admin cell, counters, load estimate, sessions | state |
//! | [`state`] | the immutable snapshot behind an ArcSwap; live state by id | state |
//! | [`metrics`] | process-wide counters | state |
//! | [`upstream`] | the connection pool to backends | I/O |
//! | [`io`] | the client stream's send deadline | I/O |
//! | [`checker`] | active health probes | I/O |
//! | [`maintain`] | the 100 ms ticker: rates, pin decay, imbalance ratio, session rotation | task |
//! | [`proxy`] | the request path | I/O |
//! | [`server`] | listeners, connections, reload, shutdown | I/O |

pub mod access;
pub mod admin;
pub mod affinity;
pub mod backend;
pub mod balance;
pub mod body;
pub mod checker;
pub mod clock;
pub mod config;
pub mod connect;
pub mod error;
pub mod headers;
pub mod health;
pub mod io;
pub mod maintain;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub(crate) mod rt;
pub mod server;
pub mod state;
pub mod tls;
pub mod token;
pub mod tunnel;
pub mod upstream;
