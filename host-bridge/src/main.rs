//! `chorus`: the Chorus node. A native lunatic runtime (the unforked lunatic
//! 0.13 crates) with our own wasmtime configuration and the `chorus`
//! host-function module for the data service.
//!
//! * `chorus run [--config lunatic.toml]` starts a node: it loads the config,
//!   opens the store, compiles the guest and spawns its main process, which
//!   builds the supervision tree (gateway, channels, presence, admin).
//! * `chorus exec <file.wasm> [args…]` runs any lunatic guest, like
//!   `lunatic run`; the benchmarks use it to run the same guest on both.
//! * `chorus check-config`, `chorus gentoken`, `chorus drain`,
//!   `chorus version`: operator tools (cli.rs).
//!
//! The guest is embedded in the binary at build time (build.rs), so the
//! binary alone is the node and runs from any directory.

mod assets;
mod cli;
mod cluster;
mod control;
mod drain;
mod engine;
mod gateway;
mod heap;
mod hostapi;
mod metrics;
mod modules;
mod node;
mod procstat;
mod session;
mod socket;
mod spawn;
mod sysctl;
mod wakes;

use chorus_host::store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "Chorus real-time node: Supabase Realtime / Phoenix Channels over WebSocket, on a lunatic runtime",
    after_help = "Run `chorus <command> --help` for a command's options. Config keys and their CHORUS_* variables: docs/CONFIGURATION.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a node (config: --config FILE, else ./lunatic.toml, else built-in defaults; CHORUS_* variables override keys)
    Run(node::RunArgs),
    /// Run a lunatic guest module, like `lunatic run`
    Exec(node::ExecArgs),
    /// Check a config (file + CHORUS_* variables) the way `run` would load it, without starting
    CheckConfig(cli::CheckConfigArgs),
    /// Print a JWT (HS256) signed with the node's auth.jwt_secret, for development and operators
    Gentoken(cli::GentokenArgs),
    /// Ask a running node to drain and exit (as SIGTERM does): POST /realtime/v1/api/drain, with a service_role token when auth is on
    Drain(cli::DrainArgs),
    /// Run the cluster's control server (cluster.control_bind); nodes with cluster.control join it
    Control(control::ControlArgs),
    /// Make a CA for a cluster's node certificates: --out DIR gets ca.pem and ca-key.pem
    ClusterCa(control::CaArgs),
    /// Print the version of chorus, the lunatic and wasmtime versions it embeds, and its guest
    Version,
}

fn main() -> ExitCode {
    // anyhow captures a backtrace on every error when RUST_BACKTRACE or
    // RUST_LIB_BACKTRACE is set; lunatic builds errors on hot paths (a
    // receive that times out), which made a request/reply 6x slower. Panics
    // still honour RUST_BACKTRACE.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    init_logging();

    let cli = Cli::parse();
    let command = match cli.command {
        Command::CheckConfig(args) => return report(cli::check_config(args)),
        Command::Gentoken(args) => return report(cli::gentoken(args)),
        Command::Drain(args) => return report(cli::drain(args)),
        Command::Version => return cli::version(),
        Command::ClusterCa(args) => return report(control::make_ca(args)),
        command => command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("chorus-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chorus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Run(args) => node::run(args).await,
            Command::Exec(args) => node::exec(args).await,
            Command::Control(args) => control::run(args).await,
            _ => Ok(ExitCode::SUCCESS),
        }
    });
    // Guest processes may still be parked in host calls; do not wait for them.
    runtime.shutdown_background();
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    report(result)
}

/// The exit code of a command; an error is printed to stderr.
fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chorus: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Structured logs to stderr; level from `RUST_LOG` (default `info`), JSON
/// lines when `CHORUS_LOG_FORMAT=json`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CHORUS_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
