//! Chorus' own host-function module, `chorus`, linked next to lunatic's APIs.
//!
//! The ABI is deliberately small. Calls that answer with bytes (`config`,
//! `metrics_text`, `data`) return the answer's length and park the bytes in a
//! per-process slot; the guest allocates that many bytes and calls `take` to
//! copy them in. Everything else is a plain scalar call.
//!
//! | function | signature | what |
//! |---|---|---|
//! | `log` | `(level: u32, ptr: u32, len: u32)` | structured log line at a level (1 error … 5 trace) |
//! | `metric_add` | `(index: u32, delta: i64)` | bump a [`Metric`] |
//! | `metric_observe` | `(index: u32, value: u64)` | record a value (raw unit: ns, bytes, frames) in a [`Histogram`] series |
//! | `config` | `() -> u64` | the node config as JSON |
//! | `metrics_text` | `(format: u32, restarts: u64) -> u64` | every metric as Prometheus text 0.0.4 (`format` 0) or OpenMetrics (1); `restarts` is the supervision tree's count |
//! | `stats_json` | `(restarts: u64) -> u64` | the `/dashboard` JSON (see [`crate::metrics::Metrics::stats`]) |
//! | `send_remote` | `(node: u64, pid: u64) -> u32` | send the message being built (lunatic's `message::create_data`/`write_data`) to process `pid` on cluster node `node` without waiting for that node (see [`crate::cluster::Cluster::send`]); 0 queued, 2 `node` is not a member (or no cluster), 3 no data message was built |
//! | `cluster_json` | `() -> u64` | this node's cluster membership as JSON (see [`crate::cluster::Cluster::json`]); `{"enabled": false}` outside a cluster |
//! | `data` | `(ptr: u32, len: u32) -> u64` | a JSON [`chorus_core::data::DataRequest`], answered with a `DataResponse` |
//! | `take` | `(ptr: u32, len: u32) -> u32` | copy the parked answer; 0 ok, 1 nothing parked / wrong length |
//! | `listen_start` | `() -> u32` | the tree is up: start accepting connections (see [`crate::gateway`]); 0 ok, 1 already started or impossible |
//! | `socket_start` | `(socket: u64) -> u64` | the start record of the HTTP request a process was spawned for (the request head and body), fetched with `take`; 0 when there is none |
//! | `outlet_send` | `(socket: u64, ptr: u32, len: u32, lane: u32, topic_ptr: u32, topic_len: u32, key_ptr: u32, key_len: u32) -> u32` | queue frame bytes on a lane of the socket's outlet; 0 ok, 1 slow consumer, 2 gone |
//! | `outlet_close` | `(socket: u64, code: u32, ptr: u32, len: u32)` | close after the queued frames are written; a `code` other than 0 writes a close frame with that reason last |
//! | `fanout` | `(ids: u32, n: u32, ptr: u32, len: u32, lane: u32, topic_ptr: u32, topic_len: u32, key_ptr: u32, key_len: u32) -> u32` | queue the same bytes on a lane of `n` sockets (`u64` ids); returns how many took them |
//! | `modules_generation` | `() -> u64` | changes whenever the loaded process modules change (see [`crate::modules`]) |
//! | `modules_report` | `() -> u64` | the modules report as JSON (pipeline, ready modules, errors) |
//! | `modules_reload` | `() -> u64` | reload `modules.dir`, answered with the report |
//! | `asset` | `(name_ptr: u32, name_len: u32) -> u64` | a demo room file, or a page of the node's own when `name` starts with `/` (see [`crate::assets`]): `content-type\n` + bytes, empty when there is none |
//! | `module_call` | `(name_ptr: u32, name_len: u32, ptr: u32, len: u32) -> u64` | one ABI message to module `name`'s instance of this process, answered with a status byte + bytes (`chorus_core::modules::CallResult`) |
//!
//! `lane` is a [`chorus_core::lanes::Lane`] number (0 control, 1 audio,
//! 2 chat, 3 reactions); the topic matters on the audio and reactions lanes
//! (the unit of replacement and of counting), the key on the reactions lane
//! (what the reaction counts as).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, Result};
use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::lanes::Lane;
use chorus_core::metrics::{Histogram, HostMetric, Metric};
use lunatic_process::state::ProcessState;
use wasmtime::{Caller, Linker};

use crate::assets::Assets;
use crate::gateway::Gateway;
use crate::metrics::{Format, HostValues, Metrics};
use crate::modules::ModuleHost;
use crate::socket::Sockets;
use crate::spawn::State;
use crate::store::{DataService, Op};

/// Shared by every process of the node.
pub struct HostApi {
    config_json: Vec<u8>,
    metrics: Arc<Metrics>,
    /// Answers waiting for the guest's `take`, by process id.
    parked: Mutex<HashMap<u64, Vec<u8>>>,
    data: Option<DataService>,
    /// Data-service requests waiting for an answer.
    store_in_flight: AtomicU64,
    env: Arc<lunatic_process::env::LunaticEnvironment>,
    sockets: Arc<Sockets>,
    /// The node's listener and connection handling (`chorus run` only).
    gateway: Option<Arc<Gateway>>,
    modules: Option<Arc<ModuleHost>>,
    assets: Assets,
    /// This node's cluster, when it joined one (`set_cluster`).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl HostApi {
    pub fn new(
        config_json: Vec<u8>,
        data: Option<DataService>,
        env: Arc<lunatic_process::env::LunaticEnvironment>,
        sockets: Arc<Sockets>,
        gateway: Option<Arc<Gateway>>,
        modules: Option<Arc<ModuleHost>>,
        assets: Assets,
    ) -> Arc<Self> {
        Arc::new(Self {
            config_json,
            metrics: sockets.metrics().clone(),
            parked: Mutex::new(HashMap::new()),
            data,
            store_in_flight: AtomicU64::new(0),
            env,
            sockets,
            gateway,
            modules,
            assets,
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// The cluster this node joined (before the guest starts).
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    fn cluster_json(&self) -> serde_json::Value {
        match self.cluster.get() {
            Some(c) => c.json(),
            None => crate::cluster::single_json(),
        }
    }

    fn park(&self, process: u64, bytes: Vec<u8>) -> u64 {
        let len = bytes.len() as u64;
        if let Ok(mut parked) = self.parked.lock() {
            parked.insert(process, bytes);
        }
        len
    }

    /// Drops answers parked for processes that died before taking them (a
    /// process killed while its data request was in flight), so they do not
    /// stay in the host's memory. Returns how many were dropped.
    pub fn sweep_parked(&self) -> usize {
        use lunatic_process::env::Environment;
        let Ok(mut parked) = self.parked.lock() else {
            return 0;
        };
        let before = parked.len();
        parked.retain(|process, _| self.env.get_process(*process).is_some());
        before - parked.len()
    }

    /// Answers parked for processes and not yet taken.
    pub fn parked_answers(&self) -> usize {
        self.parked.lock().map_or(0, |p| p.len())
    }

    /// Drops, every second, the answers parked for processes that are gone
    /// and the module instances they held, takes the dashboard's sample, and
    /// trims the heap once the process count has halved
    /// ([`crate::heap`]). Call once, inside the runtime.
    pub fn start_sweeper(self: &Arc<Self>) {
        let api = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut trim = crate::heap::Trim::default();
            use lunatic_process::env::Environment;
            loop {
                tick.tick().await;
                let Some(api) = api.upgrade() else { return };
                api.metrics.sample(&api.host_values(0));
                if let Some(modules) = &api.modules {
                    modules.sweep(|pid| api.env.get_process(pid).is_some());
                }
                let dropped = api.sweep_parked();
                if dropped > 0 {
                    tracing::debug!(dropped, "answers parked for dead processes dropped");
                }
                if trim.after(api.env.process_count()) {
                    crate::heap::trim();
                }
            }
        });
    }

    /// What only the host knows, for a scrape or the dashboard;
    /// `restarts` comes from the guest (the supervision tree counts them).
    fn host_values(&self, restarts: u64) -> HostValues {
        use lunatic_process::env::Environment;
        let o = &self.sockets;
        let (queued_frames, largest_queue_frames) = o.queued_frames();
        let (crashes, pending, refused) = self.gateway.as_ref().map_or((0, 0, 0), |g| {
            (g.crashes(), u64::from(g.pending()), g.refused())
        });
        let counter = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut host = HostValues::default();
        host.largest_queue_frames = largest_queue_frames;
        host.frames_out = counter(&o.frames_out);
        host.bytes_out = counter(&o.bytes_out);
        host.bytes_in = counter(&o.bytes_in);
        host.set(HostMetric::Processes, self.env.process_count() as u64)
            .set(HostMetric::Sockets, o.count() as u64)
            .set(HostMetric::PendingConnections, pending)
            .set(HostMetric::ConnectionsRefused, refused)
            .set(HostMetric::SessionCrashes, crashes)
            .set(HostMetric::InletPauses, counter(&o.inlet_paused))
            .set(HostMetric::DeflateSockets, counter(&o.deflate_sockets))
            .set(HostMetric::DeflatedFrames, counter(&o.deflated_frames))
            .set(HostMetric::DeflateSavedBytes, counter(&o.deflate_saved))
            .set(HostMetric::ParkedAnswers, self.parked_answers() as u64)
            .set(HostMetric::QueuedFrames, queued_frames)
            .set(HostMetric::StoreInFlight, counter(&self.store_in_flight))
            .set(
                HostMetric::ReactionsAggregated,
                counter(&o.reactions_aggregated),
            )
            .set(HostMetric::AudioReplaced, counter(&o.audio_replaced))
            .set(HostMetric::SlowConsumers, counter(&o.slow_consumers))
            .set(HostMetric::DelayedFanouts, o.delayed_fanouts())
            .set(HostMetric::SocketWrites, counter(&o.writes))
            .set(HostMetric::Restarts, restarts)
            .set(
                HostMetric::ClusterNodes,
                self.cluster.get().map_or(1, |c| c.members().len() as u64),
            );
        let outbox = self
            .cluster
            .get()
            .map(|c| c.outbox_stats())
            .unwrap_or_default();
        host.set(HostMetric::OutboxQueuedMessages, outbox.queued_messages)
            .set(HostMetric::OutboxQueuedBytes, outbox.queued_bytes)
            .set(HostMetric::OutboxMessages, outbox.messages)
            .set(HostMetric::OutboxBatches, outbox.batches)
            .set(HostMetric::OutboxWaits, outbox.waits)
            .set(HostMetric::OutboxDropped, outbox.dropped);
        host
    }

    /// Every metric as exposition text in `format`.
    pub fn render_metrics(&self, format: Format, restarts: u64) -> String {
        self.release_dead_gauge_shares();
        let store: Vec<(&str, u64, u64)> = match &self.data {
            Some(data) => Op::ALL
                .iter()
                .map(|op| {
                    let m = data.metrics();
                    (op.label(), m.requests(*op), m.backend_queries(*op))
                })
                .collect(),
            None => Vec::new(),
        };
        self.metrics
            .render(&self.host_values(restarts), &store, format)
    }

    /// Channel processes running on this node now (`chorus_channels`, the
    /// shares of channels that died without their decrement taken out).
    pub fn channels_running(&self) -> usize {
        self.release_dead_gauge_shares();
        usize::try_from(self.metrics.recorded(Metric::ChannelsActive)).unwrap_or(0)
    }

    /// Takes the gauge shares of processes that are gone out of the gauges.
    fn release_dead_gauge_shares(&self) {
        use lunatic_process::env::Environment;
        self.metrics
            .release_dead(|process| self.env.get_process(process).is_some());
    }

    /// One data-service call, timed into its histogram series.
    async fn data_call(&self, request: DataRequest) -> DataResponse {
        let Some(data) = &self.data else {
            return DataResponse::Error {
                reason: "this node runs without a data service".into(),
            };
        };
        let series = match &request {
            DataRequest::Append { .. } => Histogram::StoreAppend,
            DataRequest::History { .. } => Histogram::StoreHistory,
            DataRequest::GetRoomState { .. } => Histogram::StoreGetRoomState,
            DataRequest::PutRoomState { .. } => Histogram::StorePutRoomState,
        };
        self.store_in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let response = data.call(request).await;
        self.metrics
            .observe(series, started.elapsed().as_nanos() as u64);
        self.store_in_flight.fetch_sub(1, Ordering::Relaxed);
        response
    }

    /// Adds the `chorus` module to a linker.
    pub fn register(self: &Arc<Self>, linker: &mut Linker<State>) -> Result<()> {
        linker.func_wrap(
            "chorus",
            "log",
            |mut caller: Caller<'_, State>, level: u32, ptr: u32, len: u32| -> Result<()> {
                let text = read_guest(&mut caller, ptr, len)?;
                let text = String::from_utf8_lossy(&text);
                let process = caller.data().id();
                match level {
                    1 => tracing::error!(target: "guest", process, "{text}"),
                    2 => tracing::warn!(target: "guest", process, "{text}"),
                    3 => tracing::info!(target: "guest", process, "{text}"),
                    4 => tracing::debug!(target: "guest", process, "{text}"),
                    _ => tracing::trace!(target: "guest", process, "{text}"),
                }
                Ok(())
            },
        )?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "metric_add",
            move |caller: Caller<'_, State>, index: u32, delta: i64| {
                if let Some(m) = Metric::from_index(index) {
                    api.metrics.add(caller.data().id(), m, delta);
                }
            },
        )?;

        let api = self.clone();
        linker.func_wrap("chorus", "metric_observe", move |index: u32, value: u64| {
            if let Some(h) = Histogram::from_index(index) {
                api.metrics.observe(h, value);
            }
        })?;

        let api = self.clone();
        linker.func_wrap("chorus", "config", move |caller: Caller<'_, State>| {
            api.park(caller.data().id(), api.config_json.clone())
        })?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "metrics_text",
            move |caller: Caller<'_, State>, format: u32, restarts: u64| {
                let text = api.render_metrics(Format::from_u32(format), restarts);
                api.park(caller.data().id(), text.into_bytes())
            },
        )?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "stats_json",
            move |caller: Caller<'_, State>, restarts: u64| {
                api.release_dead_gauge_shares();
                let stats = api.metrics.stats(&api.host_values(restarts));
                api.park(caller.data().id(), stats.to_string().into_bytes())
            },
        )?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "cluster_json",
            move |caller: Caller<'_, State>| {
                let json = api.cluster_json().to_string().into_bytes();
                api.park(caller.data().id(), json)
            },
        )?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "send_remote",
            move |mut caller: Caller<'_, State>, node: u64, pid: u64| -> u32 {
                use lunatic_distributed::DistributedCtx;
                use lunatic_process::message::{DataMessage, Message};
                use lunatic_process_api::ProcessCtx;
                let message = caller.data_mut().message_scratch_area().take();
                let Some(Message::Data(DataMessage { tag, buffer, .. })) = message else {
                    return 3;
                };
                let env = caller.data().environment_id();
                match api.cluster.get() {
                    Some(c) if c.send(node, env, pid, tag, buffer) => 0,
                    _ => 2,
                }
            },
        )?;

        let api = self.clone();
        linker.func_wrap2_async(
            "chorus",
            "data",
            move |mut caller: Caller<'_, State>, ptr: u32, len: u32| {
                let api = api.clone();
                Box::new(async move {
                    // About to wait: frames queued so far go out now.
                    api.sockets.flush_wakes(caller.data().id());
                    let bytes = read_guest(&mut caller, ptr, len)?;
                    let response = match serde_json::from_slice::<DataRequest>(&bytes) {
                        Err(e) => DataResponse::Error {
                            reason: format!("malformed data request: {e}"),
                        },
                        Ok(request) => api.data_call(request).await,
                    };
                    let out = serde_json::to_vec(&response)?;
                    Ok(api.park(caller.data().id(), out))
                })
            },
        )?;

        let api = self.clone();
        linker.func_wrap("chorus", "listen_start", move || -> u32 {
            match &api.gateway {
                Some(g) if g.start() => 0,
                _ => 1,
            }
        })?;

        // `node_drain(1)` starts the node's drain; both answer 1 while
        // draining, 0 while serving.
        let api = self.clone();
        linker.func_wrap("chorus", "node_drain", move |start: u32| -> u32 {
            match &api.gateway {
                Some(g) => {
                    if start == 1 {
                        g.request_drain();
                    }
                    u32::from(g.draining())
                }
                None => 0,
            }
        })?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "socket_start",
            move |caller: Caller<'_, State>, socket: u64| -> u64 {
                match api.sockets.take_start(socket) {
                    Some(start) => api.park(caller.data().id(), start),
                    None => 0,
                }
            },
        )?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "outlet_send",
            move |mut caller: Caller<'_, State>,
                  id: u64,
                  ptr: u32,
                  len: u32,
                  lane: u32,
                  topic_ptr: u32,
                  topic_len: u32,
                  key_ptr: u32,
                  key_len: u32|
                  -> Result<u32> {
                let mem = memory(&mut caller)?;
                let data = mem.data(&caller);
                let bytes = guest_slice(data, ptr, len)?;
                let (lane, topic, key) =
                    read_route(data, lane, (topic_ptr, topic_len), (key_ptr, key_len))?;
                let by = Some(caller.data().id());
                Ok(api.sockets.send(by, id, lane, &topic, &key, bytes) as u32)
            },
        )?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "outlet_close",
            move |mut caller: Caller<'_, State>,
                  id: u64,
                  code: u32,
                  ptr: u32,
                  len: u32|
                  -> Result<()> {
                let reason = read_guest(&mut caller, ptr, len)?;
                let code = u16::try_from(code).ok().filter(|c| *c != 0);
                api.sockets
                    .close(id, code, &String::from_utf8_lossy(&reason));
                // A process done with its socket is likely to end: what it
                // queued goes out now, not at the backstop sweep.
                api.sockets.flush_wakes(caller.data().id());
                Ok(())
            },
        )?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "fanout",
            move |mut caller: Caller<'_, State>,
                  ids: u32,
                  n: u32,
                  ptr: u32,
                  len: u32,
                  lane: u32,
                  topic_ptr: u32,
                  topic_len: u32,
                  key_ptr: u32,
                  key_len: u32|
                  -> Result<u32> {
                // One lookup of the guest's memory for the whole call, and
                // no copies: ids, frame and route are read in place.
                let mem = memory(&mut caller)?;
                let data = mem.data(&caller);
                let ids: Vec<u64> = guest_slice(data, ids, n.saturating_mul(8))?
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect();
                let bytes = guest_slice(data, ptr, len)?;
                let (lane, topic, key) =
                    read_route(data, lane, (topic_ptr, topic_len), (key_ptr, key_len))?;
                let by = Some(caller.data().id());
                Ok(api.sockets.fanout(by, &ids, lane, &topic, &key, bytes))
            },
        )?;

        self.register_modules(linker)?;
        // lunatic's receive, shadowed: it wakes the socket writers this
        // process's sends left waiting before the process blocks.
        crate::wakes::register_receive(linker, self.sockets.deferred().clone())?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "take",
            move |mut caller: Caller<'_, State>, ptr: u32, len: u32| -> Result<u32> {
                let process = caller.data().id();
                let bytes = match api.parked.lock() {
                    Ok(mut parked) => parked.remove(&process),
                    Err(_) => None,
                };
                match bytes {
                    Some(bytes) if bytes.len() == len as usize => {
                        write_guest(&mut caller, ptr, &bytes)?;
                        Ok(0)
                    }
                    _ => Ok(1),
                }
            },
        )?;
        Ok(())
    }
}

impl HostApi {
    /// The process-module functions (see [`crate::modules`]; a node
    /// without modules, `chorus exec`, answers as if the directory were
    /// empty) and the demo room's files.
    fn register_modules(self: &Arc<Self>, linker: &mut Linker<State>) -> Result<()> {
        let api = self.clone();
        linker.func_wrap("chorus", "modules_generation", move || {
            api.modules.as_ref().map_or(0, |m| m.generation())
        })?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "modules_report",
            move |caller: Caller<'_, State>| -> Result<u64> {
                let report = match &api.modules {
                    Some(m) => serde_json::to_vec(&m.report())?,
                    None => b"{}".to_vec(),
                };
                Ok(api.park(caller.data().id(), report))
            },
        )?;

        let api = self.clone();
        linker.func_wrap0_async(
            "chorus",
            "modules_reload",
            move |caller: Caller<'_, State>| {
                let api = api.clone();
                Box::new(async move {
                    let report = match &api.modules {
                        Some(m) => serde_json::to_vec(&m.reload().await)?,
                        None => b"{}".to_vec(),
                    };
                    Ok(api.park(caller.data().id(), report))
                })
            },
        )?;

        let api = self.clone();
        linker.func_wrap(
            "chorus",
            "asset",
            move |mut caller: Caller<'_, State>, ptr: u32, len: u32| -> Result<u64> {
                let name = read_guest(&mut caller, ptr, len.min(256))?;
                let bytes = api.assets.get(&String::from_utf8_lossy(&name));
                Ok(api.park(caller.data().id(), bytes))
            },
        )?;

        let api = self.clone();
        linker.func_wrap4_async(
            "chorus",
            "module_call",
            move |mut caller: Caller<'_, State>,
                  name_ptr: u32,
                  name_len: u32,
                  ptr: u32,
                  len: u32| {
                let api = api.clone();
                Box::new(async move {
                    let name = read_guest(&mut caller, name_ptr, name_len.min(256))?;
                    let name = String::from_utf8_lossy(&name).into_owned();
                    let message = read_guest(&mut caller, ptr, len)?;
                    let pid = caller.data().id();
                    api.sockets.flush_wakes(pid);
                    let result = match &api.modules {
                        Some(m) => m.call(pid, &name, &message).await,
                        None => chorus_core::modules::CallResult::Unavailable(
                            "this node runs without process modules".into(),
                        ),
                    };
                    Ok(api.park(pid, result.encode()))
                })
            },
        )?;
        Ok(())
    }
}

/// The lane, topic and reaction key of an outlet call (an unknown lane
/// number is chat: queued, never dropped).
fn read_route<'a>(
    data: &'a [u8],
    lane: u32,
    (topic_ptr, topic_len): (u32, u32),
    (key_ptr, key_len): (u32, u32),
) -> Result<(Lane, Cow<'a, str>, Cow<'a, str>)> {
    Ok((
        Lane::from_u32(lane).unwrap_or(Lane::Chat),
        String::from_utf8_lossy(guest_slice(data, topic_ptr, topic_len)?),
        String::from_utf8_lossy(guest_slice(data, key_ptr, key_len)?),
    ))
}

/// `len` bytes at `ptr` of the guest's memory `data`, in place.
fn guest_slice(data: &[u8], ptr: u32, len: u32) -> Result<&[u8]> {
    let start = ptr as usize;
    start
        .checked_add(len as usize)
        .and_then(|end| data.get(start..end))
        .ok_or_else(|| anyhow!("guest pointer out of bounds"))
}

fn memory(caller: &mut Caller<'_, State>) -> Result<wasmtime::Memory> {
    caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or_else(|| anyhow!("guest exports no memory"))
}

fn read_guest(caller: &mut Caller<'_, State>, ptr: u32, len: u32) -> Result<Vec<u8>> {
    let mem = memory(caller)?;
    let mut buf = vec![0; len as usize];
    mem.read(&*caller, ptr as usize, &mut buf)
        .map_err(|_| anyhow!("guest pointer out of bounds"))?;
    Ok(buf)
}

fn write_guest(caller: &mut Caller<'_, State>, ptr: u32, bytes: &[u8]) -> Result<()> {
    let mem = memory(caller)?;
    mem.write(&mut *caller, ptr as usize, bytes)
        .map_err(|_| anyhow!("guest pointer out of bounds"))
}
