//! Spawning guest processes from the host (sessions and HTTP handlers), with
//! the same module, configuration and registry as the processes the guest
//! spawns itself.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use lunatic_process::env::{Environment, LunaticEnvironment};
use lunatic_process::runtimes::wasmtime::{WasmtimeCompiledModule, WasmtimeRuntime};
use lunatic_process::wasm::spawn_wasm;
use lunatic_process::Process;
use lunatic_runtime::{DefaultProcessConfig, DefaultProcessState};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;

/// The process state of every guest process.
pub type State = DefaultProcessState;

/// The registry of process names (`lunatic::registry`), shared by every
/// process of the node.
pub type Registry = Arc<RwLock<HashMap<String, (u64, u64)>>>;

/// Everything needed to start a guest process.
#[derive(Clone)]
pub struct Spawner {
    pub env: Arc<LunaticEnvironment>,
    pub runtime: WasmtimeRuntime,
    pub module: Arc<WasmtimeCompiledModule<State>>,
    pub config: Arc<DefaultProcessConfig>,
    pub registry: Registry,
    /// lunatic's distributed state when the node is in a cluster: every
    /// process may then send to processes on the other nodes.
    pub distributed: Option<lunatic_distributed::DistributedProcessState>,
}

/// A running process: its handle, and what its task returns when it ends
/// (`Ok(Ok(_))` for a normal return, anything else is a crash or a kill).
pub type Spawned = (JoinHandle<Result<State>>, Arc<dyn Process>);

impl Spawner {
    /// A fresh state for a new process.
    pub fn state(&self) -> Result<State> {
        DefaultProcessState::new(
            self.env.clone(),
            self.distributed.clone(),
            self.runtime.clone(),
            self.module.clone(),
            self.config.clone(),
            self.registry.clone(),
        )
    }

    /// Starts the guest's exported `function(arg: i64)` as a new process.
    pub async fn spawn(&self, function: &str, arg: u64) -> Result<Spawned> {
        let state = self.state()?;
        self.env.can_spawn_next_process().await?;
        spawn_wasm(
            self.env.clone(),
            self.runtime.clone(),
            &self.module,
            state,
            function,
            vec![wasmtime::Val::I64(arg as i64)],
            None,
        )
        .await
    }
}
