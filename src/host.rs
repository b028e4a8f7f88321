//! Safe wrappers over the node's `chorus` host-function module (see
//! `host-bridge/src/hostapi.rs` for the ABI). Only the guest calls these; a
//! guest using them runs on `chorus`, not on stock `lunatic`.

use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::lanes::Lane;
use chorus_core::metrics::{Histogram, Metric};
use chorus_core::modules::CallResult;
use serde::Deserialize;

mod ffi {
    #[link(wasm_import_module = "chorus")]
    extern "C" {
        pub fn log(level: u32, ptr: *const u8, len: u32);
        pub fn metric_add(index: u32, delta: i64);
        pub fn metric_observe(index: u32, value: u64);
        pub fn config() -> u64;
        pub fn metrics_text(format: u32, restarts: u64) -> u64;
        pub fn stats_json(restarts: u64) -> u64;
        pub fn cluster_json() -> u64;
        pub fn data(ptr: *const u8, len: u32) -> u64;
        pub fn take(ptr: *mut u8, len: u32) -> u32;
        pub fn listen_start() -> u32;
        pub fn node_drain(start: u32) -> u32;
        pub fn socket_start(socket: u64) -> u64;
        pub fn outlet_send(
            outlet: u64,
            ptr: *const u8,
            len: u32,
            lane: u32,
            topic_ptr: *const u8,
            topic_len: u32,
            key_ptr: *const u8,
            key_len: u32,
        ) -> u32;
        pub fn outlet_close(outlet: u64, code: u32, ptr: *const u8, len: u32);
        pub fn asset(name_ptr: *const u8, name_len: u32) -> u64;
        pub fn modules_generation() -> u64;
        pub fn modules_report() -> u64;
        pub fn modules_reload() -> u64;
        pub fn module_call(name_ptr: *const u8, name_len: u32, ptr: *const u8, len: u32) -> u64;
        pub fn fanout(
            ids: *const u64,
            n: u32,
            ptr: *const u8,
            len: u32,
            lane: u32,
            topic_ptr: *const u8,
            topic_len: u32,
            key_ptr: *const u8,
            key_len: u32,
        ) -> u32;
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

/// Records `value` (the series' raw unit: nanoseconds, bytes, frames) in a
/// histogram series.
pub fn observe(h: Histogram, value: u64) {
    // SAFETY: scalar call.
    unsafe { ffi::metric_observe(h as u32, value) }
}

/// Exposition text for `/metrics`: OpenMetrics when `openmetrics`, else
/// Prometheus text 0.0.4; `restarts` is the supervision tree's count.
pub fn metrics_text(openmetrics: bool, restarts: u64) -> String {
    // SAFETY: scalar call; the answer is fetched by `take`.
    let len = unsafe { ffi::metrics_text(u32::from(openmetrics), restarts) };
    String::from_utf8_lossy(&take(len)).into_owned()
}

/// The `/dashboard` JSON (live numbers of this node).
pub fn stats_json(restarts: u64) -> Vec<u8> {
    // SAFETY: scalar call; the answer is fetched by `take`.
    let len = unsafe { ffi::stats_json(restarts) };
    take(len)
}

/// This node's cluster membership (`host-bridge/src/cluster.rs`): node id,
/// name, region, worker id and the known nodes; `{"enabled": false}` on a
/// single node.
pub fn cluster_json() -> serde_json::Value {
    // SAFETY: scalar call; the answer is fetched by `take`.
    let len = unsafe { ffi::cluster_json() };
    serde_json::from_slice(&take(len)).unwrap_or(serde_json::Value::Null)
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

/// Tells the host the supervision tree is up: it starts accepting
/// connections. False when it could not (or already did).
pub fn listen_start() -> bool {
    // SAFETY: scalar call.
    unsafe { ffi::listen_start() == 0 }
}

/// Whether the node is draining (SIGTERM or the admin route).
pub fn draining() -> bool {
    // SAFETY: scalar call.
    unsafe { ffi::node_drain(0) == 1 }
}

/// Starts the node's drain (see `host-bridge/src/drain.rs`); true once it
/// is draining.
pub fn start_drain() -> bool {
    // SAFETY: scalar call.
    unsafe { ffi::node_drain(1) == 1 }
}

/// The start record of the connection this process was spawned for (see
/// `host-bridge/src/gateway.rs`), once.
pub fn socket_start(socket: u64) -> Option<Vec<u8>> {
    // SAFETY: scalar call; the answer is fetched by `take`.
    let len = unsafe { ffi::socket_start(socket) };
    (len > 0).then(|| take(len))
}

/// Where a frame goes in an outlet: its lane, the topic (the unit of
/// replacement on the audio lane and of counting on the reactions lane) and
/// the reaction key (what a reaction counts as when aggregated).
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// The lane, written in priority order (see `chorus_core::lanes::Lane`).
    pub lane: Lane,
    /// The broadcast's topic (audio and reactions lanes).
    pub topic: &'a str,
    /// What a reaction counts as (reactions lane).
    pub key: &'a str,
}

impl Route<'static> {
    /// Replies, presence, `system`, errors, closes.
    pub const CONTROL: Route<'static> = Route {
        lane: Lane::Control,
        topic: "",
        key: "",
    };
}

/// How a queued write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Ok,
    /// The client does not keep up; the host is closing the socket.
    SlowConsumer,
    /// The socket is gone.
    Gone,
}

/// Queues frame bytes on a lane of a socket's outlet.
pub fn outlet_send(outlet: u64, bytes: &[u8], route: Route<'_>) -> Sent {
    // SAFETY: the pointer/length pairs describe `bytes`, the topic and the key.
    let status = unsafe {
        ffi::outlet_send(
            outlet,
            bytes.as_ptr(),
            bytes.len() as u32,
            route.lane as u32,
            route.topic.as_ptr(),
            route.topic.len() as u32,
            route.key.as_ptr(),
            route.key.len() as u32,
        )
    };
    match status {
        0 => Sent::Ok,
        1 => Sent::SlowConsumer,
        _ => Sent::Gone,
    }
}

/// Closes an outlet once its queued frames are written; with `Some((code,
/// reason))` a WebSocket close frame is written last.
pub fn outlet_close(outlet: u64, close: Option<(u16, &str)>) {
    let (code, reason) = close.unwrap_or((0, ""));
    // SAFETY: pointer and length describe `reason`.
    unsafe {
        ffi::outlet_close(
            outlet,
            u32::from(code),
            reason.as_ptr(),
            reason.len() as u32,
        )
    }
}

/// Queues the same frame bytes on a lane of many outlets; returns how many
/// took them.
pub fn fanout(outlets: &[u64], bytes: &[u8], route: Route<'_>) -> u32 {
    if outlets.is_empty() {
        return 0;
    }
    // SAFETY: every pointer/length pair describes a live slice.
    unsafe {
        ffi::fanout(
            outlets.as_ptr(),
            outlets.len() as u32,
            bytes.as_ptr(),
            bytes.len() as u32,
            route.lane as u32,
            route.topic.as_ptr(),
            route.topic.len() as u32,
            route.key.as_ptr(),
            route.key.len() as u32,
        )
    }
}

/// What the host's process modules look like now (the part the guest
/// reads; the admin API passes the whole JSON through).
#[derive(Debug, Default, Deserialize)]
pub struct ModulesReport {
    /// The order chat lanes ask modules in.
    #[serde(default)]
    pub pipeline: Vec<String>,
    /// Modules that should have a process.
    #[serde(default)]
    pub ready: Vec<String>,
}

/// Changes whenever the host's process modules change (one scalar call).
pub fn modules_generation() -> u64 {
    // SAFETY: scalar call.
    unsafe { ffi::modules_generation() }
}

/// The host's modules report, as JSON text.
pub fn modules_report_json() -> Vec<u8> {
    // SAFETY: scalar call; the answer is fetched by `take`.
    let len = unsafe { ffi::modules_report() };
    take(len)
}

/// The host's modules report.
pub fn modules_report() -> ModulesReport {
    serde_json::from_slice(&modules_report_json()).unwrap_or_default()
}

/// Reloads `modules.dir` (blocks this process only); the report as JSON.
pub fn modules_reload() -> Vec<u8> {
    // SAFETY: scalar call; the answer is fetched by `take`.
    let len = unsafe { ffi::modules_reload() };
    take(len)
}

/// One module-ABI message to module `name`'s instance in this process.
pub fn module_call(name: &str, message: &[u8]) -> CallResult {
    // SAFETY: the pointer/length pairs describe `name` and `message`.
    let len = unsafe {
        ffi::module_call(
            name.as_ptr(),
            name.len() as u32,
            message.as_ptr(),
            message.len() as u32,
        )
    };
    CallResult::decode(&take(len))
}

/// A demo room file: its content type and bytes.
pub fn asset(name: &str) -> Option<(String, Vec<u8>)> {
    // SAFETY: pointer and length describe `name`.
    let len = unsafe { ffi::asset(name.as_ptr(), name.len() as u32) };
    let bytes = take(len);
    let split = bytes.iter().position(|b| *b == b'\n')?;
    let content_type = String::from_utf8_lossy(&bytes[..split]).into_owned();
    Some((content_type, bytes[split + 1..].to_vec()))
}
