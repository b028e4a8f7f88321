//! Starting a node (`chorus run`) or a plain guest (`chorus exec`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use chorus_core::config::Config;
use lunatic_process::env::{Environment, Environments, LunaticEnvironments};
use lunatic_process::wasm::spawn_wasm;
use lunatic_process_api::ProcessConfigCtx;
use lunatic_runtime::DefaultProcessConfig;

use crate::engine::Engine;
use crate::gateway::Gateway;
use crate::hostapi::HostApi;
use crate::metrics::Metrics;
use crate::modules::ModuleHost;
use crate::socket::{SocketLimits, Sockets};
use crate::spawn::Spawner;
use crate::store::DataService;
use crate::sysctl;

/// The guest built into this binary by build.rs (the release build of
/// `chorus-guest`); empty when the binary was built before the guest.
pub static EMBEDDED_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.wasm"));

/// Where the config comes from: `--config FILE` (or `CHORUS_CONFIG`); without
/// one, `./lunatic.toml` when there is one, else built-in defaults.
#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// Config file (default: ./lunatic.toml if present, else built-in defaults)
    #[arg(long, value_name = "FILE", env = "CHORUS_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// A guest module to run instead of the one built into this binary (development)
    #[arg(long, value_name = "FILE", env = "CHORUS_GUEST")]
    guest: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// The .wasm module to run
    wasm: PathBuf,
    /// Host directories the guest may access
    #[arg(long, value_name = "DIRECTORY")]
    dir: Vec<String>,
    /// Arguments passed to the guest
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Loads the config (file, then `CHORUS_*` variables) and logs its warnings.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let loaded = load_config_quiet(path)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.config)
}

/// Loads the config and hands back its warnings (for `check-config`).
pub fn load_config_quiet(path: Option<&Path>) -> Result<chorus_core::config::Loaded> {
    let (text, source) = match path {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?,
            p.display().to_string(),
        ),
        None => match std::fs::read_to_string("lunatic.toml") {
            Ok(text) => (text, "lunatic.toml".to_string()),
            Err(_) => {
                tracing::info!("no lunatic.toml here; using built-in defaults");
                (String::new(), "defaults".to_string())
            }
        },
    };
    Ok(Config::load(Some((&text, &source)), std::env::vars())?)
}

/// The guest to run: `--guest FILE`, else the embedded one.
fn guest_bytes(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p)
            .map_err(|e| anyhow!("cannot read the guest module {}: {e}", p.display())),
        None if !EMBEDDED_GUEST.is_empty() => Ok(EMBEDDED_GUEST.to_vec()),
        None => bail!(
            "this chorus binary was built without its guest (the guest was not built \
             before the host); `./scripts/run.sh` builds both in order, or pass \
             --guest FILE / CHORUS_GUEST=FILE"
        ),
    }
}

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let config = load_config(args.config.config.as_deref())?;
    let wasm = guest_bytes(args.guest.as_deref())?;

    // Bound now, so a busy port fails the start naming it; connections are
    // accepted once the guest's tree is up (`chorus::listen_start`).
    // Every metric of the node: the sockets record into it, the host API
    // renders it.
    let metrics = Arc::new(Metrics::new(&config.node.name));
    let sockets = Sockets::new(socket_limits(&config), metrics);
    let gateway = Gateway::bind(&config, sockets.clone())?;

    if config.auth.jwt_secret.is_empty() {
        tracing::warn!(
            "AUTH DISABLED: no auth.jwt_secret / CHORUS_JWT_SECRET set; any client may connect and join any topic"
        );
    }
    sysctl::ensure_max_map_count(config.runtime.min_max_map_count);

    // In a cluster (cluster.control set): refused here on SQLite, then joined
    // before the store opens; the control server assigns the worker id.
    let cluster = if config.cluster.control.is_empty() {
        None
    } else {
        Some(crate::cluster::Cluster::join(&config).await?)
    };
    // Validated at load: 0..=1023.
    let worker_id = match &cluster {
        Some(c) => {
            tracing::info!(
                worker_id = c.worker_id,
                "Snowflake worker id assigned by the control server (node.worker_id is not used in a cluster)"
            );
            c.worker_id
        }
        None => u16::try_from(config.node.worker_id)?,
    };
    let data = match config.store.backend.as_str() {
        "sqlite" => DataService::with_config(
            Arc::new(crate::store::sqlite::Sqlite::open(Path::new(
                &config.node.data_dir,
            ))?),
            worker_id,
            &config,
        )?,
        // CQL (ScyllaDB / Cassandra); a failed connection names the nodes
        // and CHORUS_SCYLLA_NODES (store/cql.rs).
        "scylla" => DataService::with_config(
            Arc::new(
                crate::store::cql::Cql::connect(&crate::store::cql::CqlOptions {
                    nodes: config.store.scylla_nodes.clone(),
                    keyspace: config.store.keyspace.clone(),
                    replication_factor: config.store.replication_factor,
                })
                .await?,
            ),
            worker_id,
            &config,
        )?,
        other => bail!("store.backend = {other:?} is not available in this build yet"),
    };
    let modules = ModuleHost::new(&config.modules, &config.limits)?;
    let report = modules.reload().await;
    tracing::info!(
        dir = %report.dir,
        ready = ?report.ready,
        pipeline = ?report.pipeline,
        "process modules"
    );
    reload_modules_on_sighup(modules.clone());
    let config_json = serde_json::to_vec(&config)?;
    let code = spawn_main(
        &config,
        wasm,
        vec!["chorus-guest".into()],
        Vec::new(),
        Host {
            data: Some(data),
            sockets,
            gateway: Some(gateway),
            modules: Some(modules),
            cluster,
        },
        config_json,
        true,
    )
    .await?;
    Ok(code)
}

/// `SIGHUP` reloads `modules.dir`; the guest's module manager notices the
/// new generation within a second.
fn reload_modules_on_sighup(modules: Arc<ModuleHost>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload modules through the admin API");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let report = modules.reload().await;
            tracing::info!(ready = ?report.ready, "SIGHUP: process modules reloaded");
        }
    });
}

pub async fn exec(args: ExecArgs) -> Result<ExitCode> {
    let config = load_config(None)?;
    let wasm = std::fs::read(&args.wasm)
        .with_context(|| format!("reading module {}", args.wasm.display()))?;
    let name = args
        .wasm
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut argv = vec![name];
    argv.extend(args.args);
    sysctl::ensure_max_map_count(config.runtime.min_max_map_count);
    let config_json = serde_json::to_vec(&config)?;
    // A plain guest may join a cluster too (the cluster test's ping guest).
    let cluster = if config.cluster.control.is_empty() {
        None
    } else {
        Some(crate::cluster::Cluster::join(&config).await?)
    };
    let host = Host {
        data: None,
        sockets: Sockets::new(
            socket_limits(&config),
            Arc::new(Metrics::new(&config.node.name)),
        ),
        gateway: None,
        modules: None,
        cluster,
    };
    spawn_main(&config, wasm, argv, args.dir, host, config_json, false).await
}

/// What the host serves a guest besides lunatic's APIs.
struct Host {
    data: Option<DataService>,
    sockets: Arc<Sockets>,
    gateway: Option<Arc<Gateway>>,
    modules: Option<Arc<ModuleHost>>,
    /// The cluster this node joined (`cluster.control`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

fn socket_limits(config: &Config) -> SocketLimits {
    let l = &config.limits;
    SocketLimits {
        out: chorus_core::outq::OutqLimits::from_config(l),
        inlet_messages: l.inlet_queue_messages as usize,
        inlet_bytes: l.inlet_queue_bytes as usize,
        max_frame: l.max_frame_bytes as usize,
        idle: std::time::Duration::from_millis(l.heartbeat_timeout_ms),
        deflate_min: config.node.deflate_min_bytes as usize,
        fanout_delay: chorus_core::outq::FanoutDelay::from_config(&config.node),
    }
}

/// Compiles `wasm`, spawns its `_start` as the root process and waits for it
/// (or for SIGINT/SIGTERM when `serve` is set).
#[allow(clippy::too_many_arguments)]
async fn spawn_main(
    config: &Config,
    wasm: Vec<u8>,
    argv: Vec<String>,
    dirs: Vec<String>,
    host: Host,
    config_json: Vec<u8>,
    serve: bool,
) -> Result<ExitCode> {
    let engine = Engine::new(&config.runtime)?;
    // Kept for a drain: the outlets to close and the store to flush.
    let drain_with = (host.sockets.clone(), host.data.clone());
    let envs = Arc::new(LunaticEnvironments::default());
    let env = envs.create(1).await;
    let assets = if serve {
        crate::assets::Assets::load(&config.node.demo_dir)
    } else {
        crate::assets::Assets::default()
    };
    let api = HostApi::new(
        config_json,
        host.data,
        env.clone(),
        host.sockets,
        host.gateway.clone(),
        host.modules,
        assets,
    );
    if let Some(cluster) = &host.cluster {
        api.set_cluster(cluster.clone());
    }
    api.start_sweeper();
    let channels = api.clone();
    let cache = crate::engine::cache_dir(&config.runtime.module_cache);
    let module = Arc::new(engine.compile(wasm, api, cache.as_deref())?);

    let mut pconfig = DefaultProcessConfig::default();
    pconfig.set_can_compile_modules(false);
    pconfig.set_can_create_configs(true);
    pconfig.set_can_spawn_processes(true);
    pconfig.set_command_line_arguments(argv);
    // Children inherit this config: no environment copied into every
    // process and no preopened directory (each would cost a descriptor per
    // process, and a process may hold at most ~20 k files here).
    pconfig.set_environment_variables(Vec::new());
    for d in dirs {
        pconfig.preopen_dir(d);
    }
    let max_memory = config.runtime.process_memory_mib as usize * 1024 * 1024;
    lunatic_process::config::ProcessConfig::set_max_memory(&mut pconfig, max_memory);

    let spawner = Spawner {
        env: env.clone(),
        runtime: engine.runtime.clone(),
        module: module.clone(),
        config: Arc::new(pconfig),
        registry: Default::default(),
        distributed: host.cluster.as_ref().map(|c| c.dist.clone()),
    };
    // Messages from other nodes reach this node's processes (environment 1
    // on every node, so a process id means the same on each).
    if let Some(cluster) = &host.cluster {
        cluster.serve(
            envs.clone(),
            &env,
            engine.runtime.clone(),
            drain_with.0.clone(),
        );
    }
    if let Some(gateway) = &host.gateway {
        gateway.set_spawner(spawner.clone(), host.cluster.clone());
    }
    let state = spawner.state()?;
    env.can_spawn_next_process().await?;
    let (task, _) = spawn_wasm(
        env.clone(),
        engine.runtime.clone(),
        &module,
        state,
        "_start",
        Vec::new(),
        None,
    )
    .await
    .context("spawning the guest's main process")?;

    let outcome = if serve {
        tokio::select! {
            r = task => Some(r),
            () = drain_requested(host.gateway.as_deref()) => None,
        }
    } else {
        Some(task.await)
    };
    if let Some(cluster) = &host.cluster {
        cluster.leave().await;
    }
    match outcome {
        None => {
            let (sockets, store) = drain_with;
            let running = || channels.channels_running();
            let drain = crate::drain::run(
                &sockets,
                store.as_ref(),
                &running,
                chorus_core::drain::DrainConfig::from_config(config),
                if host.cluster.is_some() {
                    crate::drain::CLUSTER_HANDOVER_MS
                } else {
                    0
                },
            );
            tokio::select! {
                () = drain => {}
                () = shutdown_signal() => tracing::warn!("second signal: exiting without finishing the drain"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Ok(Ok(_))) => Ok(ExitCode::SUCCESS),
        Some(Ok(Err(e))) => {
            let text = e.to_string();
            match exit_status(&text) {
                Some(code) => Ok(ExitCode::from(code)),
                None => Err(anyhow!("the guest's main process failed: {text}")),
            }
        }
        Some(Err(join)) => Err(anyhow!("the guest's main process panicked: {join}")),
    }
}

/// `proc_exit(n)` in the guest surfaces as "Exited with i32 exit status n".
fn exit_status(failure: &str) -> Option<u8> {
    let rest = failure.split("exit status ").nth(1)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse::<u32>().ok().map(|n| n.min(255) as u8)
}

/// Resolves when a drain starts: SIGTERM/SIGINT (which starts it) or the
/// admin route (`POST /realtime/v1/api/drain`, through the gateway).
async fn drain_requested(gateway: Option<&Gateway>) {
    match gateway {
        Some(g) => {
            tokio::select! {
                () = shutdown_signal() => {
                    tracing::info!("signal received; draining");
                    g.request_drain();
                }
                () = g.drain_requested() => tracing::info!("drain requested through the admin API"),
            }
        }
        None => shutdown_signal().await,
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exit_status;

    #[test]
    fn exit_status_is_read_from_the_trap_text() {
        assert_eq!(
            exit_status("Exited with i32 exit status 3\nwasm backtrace"),
            Some(3)
        );
        assert_eq!(exit_status("unreachable executed"), None);
    }
}
