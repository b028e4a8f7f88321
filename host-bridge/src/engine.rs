//! The wasmtime configuration that makes Chorus' host beat the stock lunatic
//! runtime, and the compilation of a guest with our own linker.
//!
//! Stock lunatic forces static 4 GiB memories allocated on demand: every
//! process costs several fresh mappings and `vm.max_map_count` runs out near
//! 8 k processes. We use wasmtime's pooling allocator instead: one up-front
//! reservation of `max_processes` slots, each memory capped at
//! `process_memory_mib`, copy-on-write images so instantiation maps the
//! module's data instead of copying it, and small fiber stacks so an idle
//! process costs a few pages.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use chorus_core::config::RuntimeConfig;
use lunatic_process::runtimes::wasmtime::{WasmtimeCompiledModule, WasmtimeRuntime};
use lunatic_process::runtimes::RawWasm;
use lunatic_process::state::ProcessState;
use lunatic_runtime::DefaultProcessState;

use crate::hostapi::HostApi;

const WASM_PAGE: u64 = 64 * 1024;

/// Builds the engine configuration from the node's `[runtime]` section.
pub fn wasmtime_config(rt: &RuntimeConfig) -> wasmtime::Config {
    let memory_pages = u64::from(rt.process_memory_mib) * 1024 * 1024 / WASM_PAGE;
    let stack = rt.process_stack_kib as usize * 1024;
    let keep = rt.freed_slot_resident_kib as usize * 1024;

    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.instance_count(rt.max_processes)
        .instance_memories(1)
        .instance_memory_pages(memory_pages)
        .instance_tables(1)
        .instance_table_elements(20_000)
        // A freed slot returns its pages to the system (`madvise`) except
        // the first `freed_slot_resident_kib` of each part, kept for the next
        // process in it. Kept pages are what stayed resident after the
        // sessions of a load left: 64 KiB of memory, 16 of table and 4 of
        // stack per slot ever used (1.6 GB after 19,000 idle sessions).
        .linear_memory_keep_resident(keep)
        .table_keep_resident(keep)
        // Instantiation runs deep host frames on the fiber stack; without
        // zeroing (which is also what releases the pages past
        // `keep_resident`) those ~36 KiB stayed resident for the life of
        // every idle process.
        .async_stack_zeroing(true)
        .async_stack_keep_resident(keep.min(stack));

    let mut config = wasmtime::Config::new();
    config
        .async_support(true)
        .debug_info(false)
        // Fuel drives lunatic's preemption: it must stay on.
        .consume_fuel(true)
        .wasm_reference_types(true)
        .wasm_bulk_memory(true)
        .wasm_multi_value(true)
        .wasm_multi_memory(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool))
        .static_memory_maximum_size(memory_pages * WASM_PAGE)
        .static_memory_guard_size(WASM_PAGE)
        .dynamic_memory_guard_size(WASM_PAGE)
        .guard_before_linear_memory(false)
        .memory_init_cow(true)
        // The wasm frames get half the fiber stack, host calls the rest.
        .async_stack_size(stack)
        .max_wasm_stack(stack / 2);
    config
}

/// A compiled guest plus the runtime that runs it and its children.
pub struct Engine {
    pub runtime: WasmtimeRuntime,
}

impl Engine {
    pub fn new(rt: &RuntimeConfig) -> Result<Self> {
        let runtime = WasmtimeRuntime::new(&wasmtime_config(rt)).context(
            "creating the wasmtime engine (the pooling allocator reserves \
             runtime.max_processes slots; lower it if the machine refuses)",
        )?;
        Ok(Self { runtime })
    }

    /// Compiles `wasm` with lunatic's host APIs plus Chorus' own module.
    /// Processes the guest spawns from this module inherit the same linker,
    /// so they can call our functions too. With a `cache` directory the
    /// compiled code is kept there and reused by the next start.
    pub fn compile(
        &self,
        wasm: Vec<u8>,
        api: Arc<HostApi>,
        cache: Option<&Path>,
    ) -> Result<WasmtimeCompiledModule<DefaultProcessState>> {
        // WasmtimeRuntime keeps its Engine private; any module it compiles
        // exposes it. The empty module is the cheapest one to compile.
        let empty = self
            .runtime
            .compile_module::<DefaultProcessState>(RawWasm::from(b"\0asm\x01\0\0\0".to_vec()))?;
        let engine = empty.instantiator().module().engine().clone();

        let module = match cache {
            Some(dir) => cached_module(&engine, &wasm, dir)?.0,
            None => compile_module(&engine, &wasm)?,
        };
        let mut linker = wasmtime::Linker::new(&engine);
        <DefaultProcessState as ProcessState>::register(&mut linker)?;
        api.register(&mut linker)?;
        let instance_pre = linker
            .instantiate_pre(&module)
            .context("linking the guest (does it import a function this host lacks?)")?;
        Ok(WasmtimeCompiledModule::new(
            RawWasm::from(wasm),
            module,
            instance_pre,
        ))
    }
}

/// The module cache directory `runtime.module_cache` names: empty is
/// `$XDG_CACHE_HOME/chorus` (else `$HOME/.cache/chorus`), `off` is none.
pub fn cache_dir(setting: &str) -> Option<PathBuf> {
    match setting {
        "off" => None,
        "" => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("chorus")),
        dir => Some(PathBuf::from(dir)),
    }
}

fn compile_module(engine: &wasmtime::Engine, wasm: &[u8]) -> Result<wasmtime::Module> {
    let started = Instant::now();
    let module = wasmtime::Module::new(engine, wasm).context("compiling the guest")?;
    tracing::info!(ms = started.elapsed().as_millis() as u64, "guest compiled");
    Ok(module)
}

/// Loads the compiled guest from `dir` when an earlier start left it there,
/// else compiles it and stores it for the next start. The file is named by
/// the SHA-256 of the wasm bytes; wasmtime refuses a file compiled by another
/// version or configuration, which is then recompiled. A cache that cannot
/// be read or written only costs the compilation. The flag tells whether the
/// module came from the cache.
fn cached_module(
    engine: &wasmtime::Engine,
    wasm: &[u8],
    dir: &Path,
) -> Result<(wasmtime::Module, bool)> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(wasm);
    let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("guest-{name}.cwasm"));
    if path.exists() {
        let started = Instant::now();
        // SAFETY: the file was written by `Module::serialize` of this host
        // into the operator's own cache directory; wasmtime checks that it
        // was compiled by the same version with the same settings.
        match unsafe { wasmtime::Module::deserialize_file(engine, &path) } {
            Ok(module) => {
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    path = %path.display(),
                    "guest loaded from the module cache"
                );
                return Ok((module, true));
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                "module cache entry unusable, recompiling: {e:#}"
            ),
        }
    }
    let module = compile_module(engine, wasm)?;
    let stored = std::fs::create_dir_all(dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| module.serialize())
        .and_then(|bytes| {
            // Written aside and renamed, so a concurrent start never reads
            // half a file.
            let tmp = dir.join(format!("guest-{name}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        });
    if let Err(e) = stored {
        tracing::warn!(dir = %dir.display(), "cannot store the compiled guest: {e:#}");
    }
    Ok((module, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_setting() {
        assert_eq!(cache_dir("off"), None);
        assert_eq!(cache_dir("/x/y"), Some(PathBuf::from("/x/y")));
    }

    #[test]
    fn a_cached_module_is_reused_and_a_corrupt_one_recompiled() {
        let engine = wasmtime::Engine::default();
        let dir = std::env::temp_dir().join(format!("chorus-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The smallest valid module: magic and version.
        let wasm = b"\0asm\x01\0\0\0".to_vec();
        let from_cache = |dir: &Path| cached_module(&engine, &wasm, dir).map(|(_, c)| c).ok();
        assert_eq!(from_cache(&dir), Some(false), "first start compiles");
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.count())
            .into_iter()
            .collect();
        assert_eq!(entries, vec![1], "one cache file, no leftover temp file");
        assert_eq!(from_cache(&dir), Some(true), "second start loads");
        // A corrupt entry is recompiled and replaced.
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            std::fs::write(e.path(), b"garbage").ok();
        }
        assert_eq!(from_cache(&dir), Some(false));
        assert_eq!(from_cache(&dir), Some(true), "the entry was rewritten");
        // A directory that cannot be created only costs the compilation.
        let blocked = dir.join("guest-file-in-the-way");
        std::fs::write(&blocked, b"x").ok();
        assert_eq!(from_cache(&blocked.join("sub")), Some(false));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
