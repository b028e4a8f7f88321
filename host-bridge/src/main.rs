//! `chorus`: the Chorus node. A native lunatic runtime (the unforked lunatic
//! 0.13 crates) with our own wasmtime configuration and the `chorus`
//! host-function module for the data service.
//!
//! * `chorus run [--config lunatic.toml]` starts a node: it loads the config,
//!   opens the store, compiles the guest and spawns its main process, which
//!   builds the supervision tree (gateway, channels, presence, admin).
//! * `chorus exec <file.wasm> [args…]` runs any lunatic guest, like
//!   `lunatic run`; the benchmarks use it to run the same guest on both.

mod assets;
mod engine;
mod hostapi;
mod modules;
mod node;
mod outlet;
mod sysctl;

use chorus_host::store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "Chorus real-time node (a lunatic runtime)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a node with the given config (defaults: lunatic.toml, then built-in defaults)
    Run(node::RunArgs),
    /// Run a lunatic guest module, like `lunatic run`
    Exec(node::ExecArgs),
}

fn main() -> ExitCode {
    // anyhow captures a backtrace on every error when RUST_BACKTRACE or
    // RUST_LIB_BACKTRACE is set; lunatic builds errors on hot paths (a
    // receive that times out), which made a request/reply 6x slower. Panics
    // still honour RUST_BACKTRACE.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    init_logging();

    let cli = Cli::parse();
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
        match cli.command {
            Command::Run(args) => node::run(args).await,
            Command::Exec(args) => node::exec(args).await,
        }
    });
    // Guest processes may still be parked in host calls; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
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
