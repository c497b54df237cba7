//! `cargo bench --bench load`: the load-test harness, which lives in its own crate
//! (`benches/load/`, `stickyd-load`; options: `cargo bench --bench load -- --help`). This
//! target is stickyd's so that Cargo builds the stickyd binary in the bench profile and names
//! it here; the harness starts that binary unless `--stickyd` names another.

fn main() -> std::process::ExitCode {
    stickyd_load::main(env!("CARGO_BIN_EXE_stickyd"))
}
