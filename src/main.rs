//! The `stickyd` binary: command line, logging, runtime. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stickyd::config::{self, Config, LogFormat};

/// mimalloc: measured on the proxy path (many short-lived allocations per request, freed on
/// the thread that made them) against the system allocator; see docs/performance.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a bad config or bad usage (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "stickyd",
    version,
    about = "HTTP load balancer with signed, stateless session affinity",
    after_help = "Run:      stickyd --config /etc/stickyd/stickyd.toml\nValidate: stickyd check --config /etc/stickyd/stickyd.toml\nSignals:  SIGHUP reloads the config, SIGTERM/SIGINT stop gracefully."
)]
struct Cli {
    /// Path of the TOML config file.
    #[arg(short, long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, print a summary and exit (0 if valid, 64 if not).
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(path) = cli.config else {
        eprintln!("stickyd: --config PATH is required (see stickyd --help)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::Check) = cli.command {
        print!("{}: ok\n{}", path.display(), config.summary());
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    // This runtime carries signals, reload and health checks; requests are served by the
    // worker threads that `server::run` starts, each with a runtime of its own.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stickyd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(stickyd::server::run(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stickyd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG, when set, overrides the config; trimmed as the config's level is.
    let filter = std::env::var("RUST_LOG")
        .map_err(|_| ())
        .and_then(|v| EnvFilter::try_new(stickyd::config::trim_directives(&v)).map_err(|_| ()))
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
