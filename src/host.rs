//! Safe wrappers over the node's `chorus` host-function module (see
//! `host-bridge/src/hostapi.rs` for the ABI). Only the guest calls these; a
//! guest using them runs on `chorus`, not on stock `lunatic`.

use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::metrics::Metric;

mod ffi {
    #[link(wasm_import_module = "chorus")]
    extern "C" {
        pub fn log(level: u32, ptr: *const u8, len: u32);
        pub fn metric_add(index: u32, delta: i64);
        pub fn config() -> u64;
        pub fn metrics_text() -> u64;
        pub fn data(ptr: *const u8, len: u32) -> u64;
        pub fn take(ptr: *mut u8, len: u32) -> u32;
    }
}

/// Copies the answer the host parked for this process.
fn take(len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    // SAFETY: `buf` is a live allocation of exactly `len` bytes.
    let status = unsafe { ffi::take(buf.as_mut_ptr(), len as u32) };
    if status != 0 {
        buf.clear();
    }
    buf
}

/// Log levels understood by the host (mapped onto `tracing`).
#[derive(Clone, Copy)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

/// One structured log line through the host's logger (`RUST_LOG` applies).
pub fn log(level: Level, text: &str) {
    // SAFETY: pointer and length describe `text`.
    unsafe { ffi::log(level as u32, text.as_ptr(), text.len() as u32) }
}

/// Adds `delta` to a node metric.
pub fn metric(m: Metric, delta: i64) {
    // SAFETY: scalar call.
    unsafe { ffi::metric_add(m as u32, delta) }
}

/// The node's resolved configuration, as JSON.
pub fn config_json() -> Vec<u8> {
    // SAFETY: scalar call; the answer is fetched by `take`.
    let len = unsafe { ffi::config() };
    take(len)
}

/// Prometheus text for `/metrics`.
pub fn metrics_text() -> String {
    // SAFETY: scalar call; the answer is fetched by `take`.
    let len = unsafe { ffi::metrics_text() };
    String::from_utf8_lossy(&take(len)).into_owned()
}

/// One request to the data service (blocks this process only).
pub fn data(request: &DataRequest) -> DataResponse {
    let bytes = match serde_json::to_vec(request) {
        Ok(b) => b,
        Err(e) => {
            return DataResponse::Error {
                reason: e.to_string(),
            }
        }
    };
    // SAFETY: pointer and length describe `bytes`.
    let len = unsafe { ffi::data(bytes.as_ptr(), bytes.len() as u32) };
    serde_json::from_slice(&take(len)).unwrap_or_else(|e| DataResponse::Error {
        reason: format!("bad answer from the data service: {e}"),
    })
}
