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

use std::sync::Arc;

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

    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.instance_count(rt.max_processes)
        .instance_memories(1)
        .instance_memory_pages(memory_pages)
        .instance_tables(1)
        .instance_table_elements(20_000)
        // Freed slots keep their first pages resident so a new process in
        // a reused slot does not fault them in again.
        .linear_memory_keep_resident(64 * 1024)
        .table_keep_resident(16 * 1024)
        // Instantiation runs deep host frames on the fiber stack; without
        // zeroing (which also releases the pages past `keep_resident`) those
        // ~36 KiB stayed resident for the life of every idle process. The
        // platform bench measured 71 -> 39 KiB PSS per idle process with
        // 4 KiB kept, and no slower starts.
        .async_stack_zeroing(true)
        .async_stack_keep_resident(4 * 1024);

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
    /// so they can call our functions too.
    pub fn compile(
        &self,
        wasm: Vec<u8>,
        api: Arc<HostApi>,
    ) -> Result<WasmtimeCompiledModule<DefaultProcessState>> {
        // WasmtimeRuntime keeps its Engine private; any module it compiles
        // exposes it. The empty module is the cheapest one to compile.
        let empty = self
            .runtime
            .compile_module::<DefaultProcessState>(RawWasm::from(b"\0asm\x01\0\0\0".to_vec()))?;
        let engine = empty.instantiator().module().engine().clone();

        let module = wasmtime::Module::new(&engine, &wasm).context("compiling the guest")?;
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
