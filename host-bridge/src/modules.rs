//! Process modules loaded at run time: `<name>.wasm` files in `modules.dir`,
//! compiled by the host and run, one instance per module process, inside the
//! guest's supervised `chorus-module-<name>` processes (`src/modules/`).
//!
//! A module is plain WebAssembly speaking the module ABI (`chorus-module`
//! crate, docs/MODULES.md): JSON messages in through `chorus_alloc` +
//! `chorus_handle`, JSON answers out. It is compiled here, on an engine of
//! its own, with a linker of our own: WASI preview 1 without files,
//! environment or sleeping, and `chorus_module.log`. Nothing else is
//! importable, so a module cannot reach the node's `chorus` functions or
//! lunatic's.
//!
//! Why the instance lives in the host and not in a lunatic process spawned
//! from the module: the module process stays an ordinary guest process
//! (mailbox, supervision, restart, `call` answers) whatever the module
//! is written in, the module needs no lunatic crate and no bincode, and the
//! host can meter each message (fuel), cap its memory, and tell a trap from
//! a garbage answer, naming the module in every error.
//!
//! Life cycle: [`ModuleHost::reload`] (at start, on `SIGHUP`, on
//! `POST /realtime/v1/api/modules/reload`) compiles new or changed files,
//! checks their exports and ABI version, instantiates each once and runs its
//! `init` with its settings, so a bad module is refused at load with a reason
//! naming it; the node keeps serving with the others. A module process calls
//! [`ModuleHost::call`]; its instance is created on first use and recreated
//! when a reload changed the module. A trap (or running out of fuel) drops
//! the instance and counts a crash; past `modules.crash_limit` crashes in
//! 10 s the module is disabled until the next reload.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use chorus_core::config::{LimitsConfig, ModulesConfig};
use chorus_core::modules::{self as abi, CallResult};
use serde::Serialize;
use serde_json::Value;
use wasi_common::ErrorExt;
use wasmtime::{
    Caller, Engine, InstancePre, Linker, Memory, Store, StoreLimits, StoreLimitsBuilder, Trap,
    TypedFunc,
};
use wasmtime_wasi::WasiCtx;

/// Fuel between two yields of a running module (about a millisecond of
/// work): the module never holds a host thread longer than that.
const FUEL_SLICE: u64 = 1_000_000;
/// The window `modules.crash_limit` counts crashes in.
const CRASH_WINDOW: Duration = Duration::from_secs(10);
/// How much of a module's stderr an error quotes.
const STDERR_TAIL: usize = 1024;

/// The state of one module instance's store.
struct Ctx {
    wasi: WasiCtx,
    limits: StoreLimits,
    /// The module's name, for its log lines.
    name: Arc<str>,
    stderr: Tail,
}

/// The last [`STDERR_TAIL`] bytes a module wrote to stderr (where Rust
/// prints a panic's message before the trap).
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    fn take(&self) -> String {
        let bytes = self.0.lock().map(|mut b| std::mem::take(&mut *b));
        String::from_utf8_lossy(&bytes.unwrap_or_default())
            .trim()
            .to_string()
    }
}

impl Write for Tail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut kept) = self.0.lock() {
            kept.extend_from_slice(buf);
            let excess = kept.len().saturating_sub(STDERR_TAIL);
            kept.drain(..excess);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// WASI scheduling without waiting: a module may not block a host thread.
struct NoSleep;

#[wiggle::async_trait]
impl wasi_common::WasiSched for NoSleep {
    async fn poll_oneoff<'a>(
        &self,
        _poll: &mut wasi_common::sched::Poll<'a>,
    ) -> Result<(), wasi_common::Error> {
        Err(wasi_common::Error::not_supported())
    }
    async fn sched_yield(&self) -> Result<(), wasi_common::Error> {
        Ok(())
    }
    async fn sleep(&self, _duration: Duration) -> Result<(), wasi_common::Error> {
        Err(wasi_common::Error::not_supported())
    }
}

/// A compiled, checked module.
struct Code {
    pre: InstancePre<Ctx>,
    settings: Value,
    /// Changes whenever the file or its settings change.
    version: u64,
}

/// One `.wasm` of `modules.dir`, loaded or not.
struct Entry {
    file: PathBuf,
    /// SHA-256 of the wasm bytes and the settings text.
    digest: String,
    code: Result<Arc<Code>, String>,
    crashes: VecDeque<Instant>,
    disabled: Option<String>,
}

/// A module's instance in one module process.
struct Instance {
    name: String,
    version: u64,
    store: Store<Ctx>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    handle: TypedFunc<(u32, u32), u64>,
}

/// A module as `GET /realtime/v1/api/modules` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleStatus {
    pub name: String,
    pub file: String,
    pub sha256: String,
    /// `ready`, `failed` or `disabled`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the node runs now: the answer of the status and reload calls.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generation: u64,
    pub dir: String,
    /// The order chat lanes ask modules in (`chorus_core::modules::pipeline`).
    pub pipeline: Vec<String>,
    /// The modules that have a process (loaded and not disabled).
    pub ready: Vec<String>,
    pub modules: Vec<ModuleStatus>,
}

/// The node's process modules.
pub struct ModuleHost {
    engine: Engine,
    linker: Linker<Ctx>,
    config: ModulesConfig,
    max_answer: usize,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Serialises reloads (a SIGHUP racing an admin call).
    reloading: tokio::sync::Mutex<()>,
    /// Bumped by every reload that changed something, and when a module is
    /// disabled: guests compare it to know when to re-read the pipeline.
    generation: AtomicU64,
    next_version: AtomicU64,
    /// Instances by the module process that owns them.
    instances: Mutex<HashMap<u64, Instance>>,
}

impl ModuleHost {
    pub fn new(config: &ModulesConfig, limits: &LimitsConfig) -> Result<Arc<Self>> {
        let mut wc = wasmtime::Config::new();
        wc.async_support(true)
            .consume_fuel(true)
            .wasm_bulk_memory(true)
            .wasm_multi_value(true)
            .wasm_reference_types(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            // Instances are few (one per module process): plain allocations,
            // memories grown on demand up to `memory_mib`.
            .static_memory_maximum_size(0)
            .max_wasm_stack(512 * 1024)
            .async_stack_size(1024 * 1024);
        let engine = Engine::new(&wc)?;
        let mut linker: Linker<Ctx> = Linker::new(&engine);
        wasmtime_wasi::add_to_linker(&mut linker, |c: &mut Ctx| &mut c.wasi)?;
        linker.func_wrap(
            "chorus_module",
            "log",
            |mut caller: Caller<'_, Ctx>, level: u32, ptr: u32, len: u32| -> Result<()> {
                let memory = caller
                    .get_export("memory")
                    .and_then(|e| e.into_memory())
                    .ok_or_else(|| anyhow!("module exports no memory"))?;
                let mut buf = vec![0; (len as usize).min(4096)];
                memory
                    .read(&caller, ptr as usize, &mut buf)
                    .map_err(|_| anyhow!("log: pointer out of bounds"))?;
                let text = String::from_utf8_lossy(&buf);
                let module = &*caller.data().name;
                match level {
                    1 => tracing::error!(target: "module", module, "{text}"),
                    2 => tracing::warn!(target: "module", module, "{text}"),
                    3 => tracing::info!(target: "module", module, "{text}"),
                    _ => tracing::debug!(target: "module", module, "{text}"),
                }
                Ok(())
            },
        )?;
        let max_payload = limits.max_payload_bytes as usize;
        Ok(Arc::new(ModuleHost {
            engine,
            linker,
            config: config.clone(),
            // A replacement payload plus the verdict around it.
            max_answer: max_payload + 4096,
            entries: Mutex::new(BTreeMap::new()),
            reloading: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(1),
            next_version: AtomicU64::new(1),
            instances: Mutex::new(HashMap::new()),
        }))
    }

    /// Changes when the set of modules, their code or their state changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// What runs now.
    pub fn report(&self) -> Report {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut ready = Vec::new();
        let modules = entries
            .iter()
            .map(|(name, e)| {
                let (status, error) = match (&e.code, &e.disabled) {
                    (Err(error), _) => ("failed", Some(error.clone())),
                    (Ok(_), Some(why)) => ("disabled", Some(why.clone())),
                    (Ok(_), None) => {
                        ready.push(name.clone());
                        ("ready", None)
                    }
                };
                ModuleStatus {
                    name: name.clone(),
                    file: e.file.display().to_string(),
                    sha256: e.digest.clone(),
                    status,
                    error,
                }
            })
            .collect();
        Report {
            generation: self.generation(),
            dir: self.config.dir.clone(),
            pipeline: abi::pipeline(&self.config.enabled, &ready),
            ready,
            modules,
        }
    }

    /// Reads `modules.dir` again: compiles and checks new or changed
    /// modules, forgets removed ones, gives disabled ones another chance.
    /// Every problem is logged naming the module and shows in the report.
    pub async fn reload(&self) -> Report {
        let _one_at_a_time = self.reloading.lock().await;
        let found = match self.scan() {
            Ok(found) => found,
            Err(error) => {
                tracing::error!("modules.dir: {error}");
                Vec::new()
            }
        };
        let mut changed = false;
        let mut loaded = BTreeMap::new();
        for (name, file) in found {
            let (digest, read) = match read_module(&file, &self.config) {
                Ok((digest, wasm, settings)) => (digest, Ok((wasm, settings))),
                Err(e) => (String::new(), Err(e)),
            };
            let kept = {
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                match entries.remove(&name) {
                    Some(mut old) if read.is_ok() && old.digest == digest && old.code.is_ok() => {
                        if old.disabled.take().is_some() {
                            changed = true;
                        }
                        old.crashes.clear();
                        Some(old)
                    }
                    _ => None,
                }
            };
            let entry = match kept {
                Some(entry) => entry,
                None => {
                    changed = true;
                    let code = match read {
                        Ok((wasm, settings)) => self.load(&name, wasm, settings).await,
                        Err(e) => Err(e),
                    };
                    match &code {
                        Ok(_) => {
                            tracing::info!(module = %name, file = %file.display(), "module loaded")
                        }
                        Err(e) => tracing::error!("module {name} ({}): {e}", file.display()),
                    }
                    Entry {
                        file,
                        digest,
                        code,
                        crashes: VecDeque::new(),
                        disabled: None,
                    }
                }
            };
            loaded.insert(name, entry);
        }
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for name in entries.keys() {
                tracing::info!(module = %name, "module removed");
                changed = true;
            }
            *entries = loaded;
        }
        if changed {
            self.bump();
        }
        for name in &self.config.enabled {
            if !self.report().ready.contains(name) {
                tracing::warn!(
                    "modules.enabled lists {name:?}, which is not loaded: chat lanes ask it anyway and modules.fail_open decides"
                );
            }
        }
        self.report()
    }

    /// The `(name, path)` of every `*.wasm` in the directory, by name.
    fn scan(&self) -> Result<Vec<(String, PathBuf)>, String> {
        if self.config.dir.is_empty() {
            return Ok(Vec::new());
        }
        let dir = Path::new(&self.config.dir);
        let listing =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let mut found = Vec::new();
        for entry in listing.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                continue;
            }
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            if !abi::valid_name(&stem) {
                tracing::error!(
                    "module file {}: the name must be 1 to 64 of a-z, 0-9, _, - (skipped)",
                    path.display()
                );
                continue;
            }
            found.push((stem, path));
        }
        found.sort();
        Ok(found)
    }

    /// Compiles, links and tries one module.
    async fn load(&self, name: &str, wasm: Vec<u8>, settings: Value) -> Result<Arc<Code>, String> {
        let engine = self.engine.clone();
        let module =
            tokio::task::spawn_blocking(move || wasmtime::Module::from_binary(&engine, &wasm))
                .await
                .map_err(|e| format!("compilation did not finish: {e}"))?
                .map_err(|e| format!("not a valid WebAssembly module: {}", root_cause(&e)))?;
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            format!(
                "cannot be linked: {} (a module may import only WASI preview 1 and chorus_module.log)",
                root_cause(&e)
            )
        })?;
        let code = Arc::new(Code {
            pre,
            settings,
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
        });
        // One trial instance: the exports, the ABI version, `_initialize`
        // and `init` with the settings, so that every load error shows now.
        self.instantiate(name, &code).await.map(|_| code)
    }

    /// A new instance of `code`, initialised.
    async fn instantiate(&self, name: &str, code: &Code) -> Result<Instance, String> {
        let stderr = Tail::default();
        let wasi = WasiCtx::new(
            wasmtime_wasi::random_ctx(),
            wasmtime_wasi::clocks_ctx(),
            Box::new(NoSleep),
            wasi_common::table::Table::new(),
        );
        wasi.set_stderr(Box::new(wasi_common::pipe::WritePipe::new(stderr.clone())));
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.config.memory_mib as usize * 1024 * 1024)
            .instances(1)
            .memories(1)
            .tables(4)
            .table_elements(100_000)
            .build();
        let mut store = Store::new(
            &self.engine,
            Ctx {
                wasi,
                limits,
                name: Arc::from(name),
                stderr,
            },
        );
        store.limiter(|c| &mut c.limits);
        self.refuel(&mut store);
        let instance = code
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| trap_text("trapped while starting", &e, &store))?;
        if let Ok(start) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            start
                .call_async(&mut store, ())
                .await
                .map_err(|e| trap_text("trapped in _initialize", &e, &store))?;
        }
        let version = instance
            .get_typed_func::<(), u32>(&mut store, "chorus_abi_version")
            .map_err(|_| {
                "exports no chorus_abi_version() -> i32: not a Chorus module (docs/MODULES.md)"
                    .to_string()
            })?;
        self.refuel(&mut store);
        let abi_version = version
            .call_async(&mut store, ())
            .await
            .map_err(|e| trap_text("trapped in chorus_abi_version", &e, &store))?;
        if abi_version != abi::ABI_VERSION {
            return Err(format!(
                "speaks module ABI version {abi_version}; this node speaks version {}",
                abi::ABI_VERSION
            ));
        }
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("exports no memory named \"memory\"")?;
        let alloc = instance
            .get_typed_func::<u32, u32>(&mut store, "chorus_alloc")
            .map_err(|_| "exports no chorus_alloc(len: i32) -> i32".to_string())?;
        let handle = instance
            .get_typed_func::<(u32, u32), u64>(&mut store, "chorus_handle")
            .map_err(|_| "exports no chorus_handle(ptr: i32, len: i32) -> i64".to_string())?;
        let mut instance = Instance {
            name: name.to_string(),
            version: code.version,
            store,
            memory,
            alloc,
            handle,
        };
        match self
            .exchange(&mut instance, &abi::init_request(name, &code.settings))
            .await
        {
            CallResult::Answer(bytes) => abi::parse_init_answer(&bytes)?,
            CallResult::Crashed(e) => return Err(format!("{e} (in init)")),
            CallResult::Garbage(e) | CallResult::Unavailable(e) => {
                return Err(format!("{e} (in init)"))
            }
        }
        Ok(instance)
    }

    /// Gives the store exactly `modules.fuel_per_message`, yielding every
    /// [`FUEL_SLICE`].
    fn refuel(&self, store: &mut Store<Ctx>) {
        let budget = self.config.fuel_per_message.max(FUEL_SLICE);
        if let Ok(left) = store.consume_fuel(0) {
            let _ = store.consume_fuel(left);
        }
        let _ = store.add_fuel(FUEL_SLICE);
        store.out_of_fuel_async_yield(budget / FUEL_SLICE - 1, FUEL_SLICE);
    }

    /// One message in, one answer out, metered.
    async fn exchange(&self, instance: &mut Instance, message: &[u8]) -> CallResult {
        let Ok(len) = u32::try_from(message.len()) else {
            return CallResult::Garbage("message too large for a module".into());
        };
        self.refuel(&mut instance.store);
        let ptr = match instance.alloc.call_async(&mut instance.store, len).await {
            Ok(ptr) => ptr,
            Err(e) => return self.crashed("chorus_alloc", &e, instance),
        };
        if instance
            .memory
            .write(&mut instance.store, ptr as usize, message)
            .is_err()
        {
            return CallResult::Garbage(format!(
                "chorus_alloc({len}) returned a buffer outside its memory"
            ));
        }
        let packed = match instance
            .handle
            .call_async(&mut instance.store, (ptr, len))
            .await
        {
            Ok(packed) => packed,
            Err(e) => return self.crashed("chorus_handle", &e, instance),
        };
        let (at, size) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        if size > self.max_answer {
            return CallResult::Garbage(format!(
                "answered {size} bytes, more than a verdict can take (limits.max_payload_bytes + 4 KiB)"
            ));
        }
        let mut answer = vec![0; size];
        if instance
            .memory
            .read(&instance.store, at, &mut answer)
            .is_err()
        {
            return CallResult::Garbage(format!(
                "answered bytes {at}..{} outside its memory",
                at + size
            ));
        }
        CallResult::Answer(answer)
    }

    fn crashed(&self, during: &str, error: &anyhow::Error, instance: &Instance) -> CallResult {
        let why = if matches!(error.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)) {
            format!(
                "ran out of fuel in {during}: more than modules.fuel_per_message ({}) instructions for one message",
                self.config.fuel_per_message
            )
        } else {
            trap_text(&format!("trapped in {during}"), error, &instance.store)
        };
        CallResult::Crashed(why)
    }

    /// Module process `pid` asks module `name` about `message` (a `chat`
    /// message of the ABI).
    pub async fn call(&self, pid: u64, name: &str, message: &[u8]) -> CallResult {
        let code = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get(name) {
                None => return CallResult::Unavailable(format!("module {name} is not loaded")),
                Some(Entry { code: Err(e), .. }) => {
                    return CallResult::Unavailable(format!("module {name} failed to load: {e}"))
                }
                Some(Entry {
                    disabled: Some(why),
                    ..
                }) => return CallResult::Unavailable(format!("module {name} is disabled: {why}")),
                Some(Entry { code: Ok(code), .. }) => code.clone(),
            }
        };
        let taken = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
        let mut instance = match taken {
            Some(i) if i.name == name && i.version == code.version => i,
            _ => match self.instantiate(name, &code).await {
                Ok(i) => i,
                Err(e) => {
                    return self.record_crash(name, format!("could not start an instance: {e}"))
                }
            },
        };
        let result = self.exchange(&mut instance, message).await;
        match result {
            CallResult::Crashed(why) => self.record_crash(name, why),
            other => {
                self.instances
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(pid, instance);
                other
            }
        }
    }

    /// Counts a crash of `name` (its instance is already dropped); past the
    /// limit the module is disabled.
    fn record_crash(&self, name: &str, why: String) -> CallResult {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(name) {
            let now = Instant::now();
            entry.crashes.push_back(now);
            while entry
                .crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
            {
                entry.crashes.pop_front();
            }
            if entry.disabled.is_none() && entry.crashes.len() >= self.config.crash_limit as usize {
                let reason = format!(
                    "crashed {} times within 10 s (modules.crash_limit); last: {why}; fix it and reload",
                    entry.crashes.len()
                );
                tracing::error!("module {name} disabled: {reason}");
                entry.disabled = Some(reason);
                drop(entries);
                self.bump();
            }
        }
        CallResult::Crashed(why)
    }

    /// Drops the instances of module processes that are gone.
    pub fn sweep(&self, alive: impl Fn(u64) -> bool) {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|pid, _| alive(*pid));
    }
}

/// The wasm bytes and settings of one module file, with their digest.
fn read_module(file: &Path, config: &ModulesConfig) -> Result<(String, Vec<u8>, Value), String> {
    use sha2::{Digest, Sha256};
    let max = config.max_file_mib as u64 * 1024 * 1024;
    let size = std::fs::metadata(file)
        .map_err(|e| format!("cannot read the file: {e}"))?
        .len();
    if size > max {
        return Err(format!(
            "the file has {size} bytes, over modules.max_file_mib ({} MiB)",
            config.max_file_mib
        ));
    }
    let wasm = std::fs::read(file).map_err(|e| format!("cannot read the file: {e}"))?;
    let settings_file = file.with_extension("toml");
    let settings_text = match std::fs::read_to_string(&settings_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", settings_file.display())),
    };
    let settings: Value = match toml::from_str::<toml::Table>(&settings_text) {
        Ok(table) => serde_json::to_value(table).map_err(|e| e.to_string())?,
        Err(e) => return Err(format!("{}: {e}", settings_file.display())),
    };
    let mut hash = Sha256::new();
    hash.update(&wasm);
    hash.update(settings_text.as_bytes());
    let digest = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((digest, wasm, settings))
}

/// The innermost message of an error chain (wasmtime wraps the useful one).
fn root_cause(e: &anyhow::Error) -> String {
    e.root_cause().to_string()
}

/// A trap as one line: what trapped, the trap, and what the module wrote
/// to stderr just before (a Rust panic's message).
fn trap_text(during: &str, error: &anyhow::Error, store: &Store<Ctx>) -> String {
    let what = match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            "ran out of fuel (more than modules.fuel_per_message instructions)".to_string()
        }
        Some(trap) => trap.to_string(),
        None => match error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => format!("exited with status {}", exit.0),
            None => root_cause(error),
        },
    };
    let stderr = store.data().stderr.take();
    if stderr.is_empty() {
        format!("{during}: {what}")
    } else {
        format!("{during}: {what}; stderr: {stderr}")
    }
}
