//! The unit tests of the load harness (`benches/load/`). Cargo builds the `harness = false`
//! bench without libtest, so its modules' `#[cfg(test)]` tests run from here: this target
//! includes the same files. Items only the bench's `main` uses are dead code here.
#![allow(dead_code)]

#[path = "../benches/load/backends.rs"]
mod backends;
#[path = "../benches/load/cli.rs"]
mod cli;
#[path = "../benches/load/client.rs"]
mod client;
#[path = "../benches/load/drive.rs"]
mod drive;
#[path = "../benches/load/html.rs"]
mod html;
#[path = "../benches/load/idle.rs"]
mod idle;
#[path = "../benches/load/procfs.rs"]
mod procfs;
#[path = "../benches/load/report.rs"]
mod report;
#[path = "../benches/load/run.rs"]
mod run;
#[path = "../benches/load/scenario.rs"]
mod scenario;
#[path = "../benches/load/stats.rs"]
mod stats;
#[path = "../benches/load/stickyd.rs"]
mod stickyd;
#[path = "../benches/load/svg.rs"]
mod svg;
#[path = "../benches/load/users.rs"]
mod users;
