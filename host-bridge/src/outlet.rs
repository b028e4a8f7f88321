//! Outlets: the write side of every WebSocket, owned by the host.
//!
//! A channel with 10,000 subscribers used to mail the same frame to 10,000
//! session processes, each of which copied it in and wrote it out: two
//! process switches and three copies per delivery. Instead a session hands
//! its socket's write half to the host once (`outlet_open`), and everything
//! written to the client — the session's own replies and the channel's
//! fan-out (`fanout`: one call, one shared buffer, one lock, N queue
//! pushes) — goes through the socket's queue, drained by a host task that
//! coalesces queued frames into few `write` calls.
//!
//! The queue is split by lane ([`chorus_core::outq::OutQ`], which makes
//! every decision): control and audio are written first, then chat, then
//! reactions. Under backpressure an unwritten audio frame is replaced by a
//! newer one of its topic, and reactions past `limits.reaction_queue_frames`
//! are counted and delivered as one `reaction_counts` broadcast, encoded here
//! for the socket's serializer. A socket whose control or chat lane passes
//! `limits.outlet_queue_frames` is a slow consumer: it is sent a close frame
//! with reason `slow_consumer` and shut down, instead of growing memory.
//! An outlet dies with its owner process (a sweeper drops the outlets of
//! processes that are gone, so a crashed session's socket closes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_core::lanes::Lane;
use chorus_core::metrics::Histogram;
use chorus_core::outq::{self, Frame, Out, OutQ, OutqLimits, Pushed, Route, Status};
use chorus_core::phoenix::Vsn;
use lunatic_networking_api::TcpConnection;
use lunatic_process::env::{Environment, LunaticEnvironment};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// Bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// A write that takes longer than this ends the socket (slow consumer).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct Entry {
    owner: u64,
    queue: OutQ,
    /// Wakes the writer task.
    wake: Arc<Notify>,
    /// The writer found nothing to write and waits: the next push wakes it.
    idle: bool,
}

impl Entry {
    /// The writer to wake after a push, if it waits (each wait is woken
    /// once).
    fn take_waiting_writer(&mut self) -> Option<Arc<Notify>> {
        self.idle.then(|| {
            self.idle = false;
            self.wake.clone()
        })
    }
}

/// Status of a send, as returned to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Sent {
    Ok = 0,
    /// A lane is full: the socket is being closed as a slow consumer.
    Slow = 1,
    /// No such outlet (closed, or its socket failed).
    Gone = 2,
}

/// What pushes leave to do once the lock is released: counters to bump and
/// writers to wake (woken outside the lock, so they do not run straight into
/// it while a fan-out still holds it).
#[derive(Default)]
struct After {
    counted: u64,
    replaced: u64,
    wake: Vec<Arc<Notify>>,
}

/// All outlets of the node.
pub struct Outlets {
    next: AtomicU64,
    limits: OutqLimits,
    map: Mutex<HashMap<u64, Entry>>,
    /// Frames and bytes written by outlet tasks, for /metrics.
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Reactions counted into `reaction_counts` instead of queued.
    pub reactions_aggregated: AtomicU64,
    /// Unwritten audio frames replaced by a newer one of their topic.
    pub audio_replaced: AtomicU64,
    /// Sockets closed as slow consumers (a full lane or a stuck write).
    pub slow_consumers: AtomicU64,
    /// Where writers record the queue depth they find.
    metrics: Arc<Metrics>,
}

impl Outlets {
    /// The outlets of a node whose queues are bounded by `limits`.
    pub fn new(limits: OutqLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            next: AtomicU64::new(1),
            limits,
            map: Mutex::new(HashMap::new()),
            frames_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            reactions_aggregated: AtomicU64::new(0),
            audio_replaced: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            metrics,
        })
    }

    /// Starts the writer task of `conn` (serializer `vsn`), owned by process
    /// `owner`.
    pub fn open(self: &Arc<Self>, owner: u64, conn: Arc<TcpConnection>, vsn: Vsn) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        if let Ok(mut map) = self.map.lock() {
            map.insert(
                id,
                Entry {
                    owner,
                    queue: OutQ::new(),
                    wake: wake.clone(),
                    idle: false,
                },
            );
        }
        tokio::spawn(write_loop(self.clone(), id, conn, vsn, wake));
        id
    }

    /// Queues one frame on `lane` (`topic` and `key` matter on the audio and
    /// reactions lanes).
    pub fn send(&self, id: u64, lane: Lane, topic: &str, key: &str, bytes: &[u8]) -> Sent {
        let frame: Frame = Arc::from(bytes);
        let topic = shared_topic(lane, topic);
        let route = route(lane, topic.as_ref(), key);
        let mut after = After::default();
        let sent = match self.map.lock() {
            Ok(mut map) => self.push(&mut map, id, route, &frame, &mut after),
            Err(_) => Sent::Gone,
        };
        self.finish(after);
        sent
    }

    /// Queues one frame on many outlets; returns how many took it.
    pub fn fanout(&self, ids: &[u64], lane: Lane, topic: &str, key: &str, bytes: &[u8]) -> u32 {
        let frame: Frame = Arc::from(bytes);
        let topic = shared_topic(lane, topic);
        let route = route(lane, topic.as_ref(), key);
        let mut after = After::default();
        let took = match self.map.lock() {
            Ok(mut map) => ids
                .iter()
                .filter(|id| self.push(&mut map, **id, route, &frame, &mut after) == Sent::Ok)
                .count() as u32,
            Err(_) => 0,
        };
        self.finish(after);
        took
    }

    fn push(
        &self,
        map: &mut HashMap<u64, Entry>,
        id: u64,
        route: Route<'_>,
        frame: &Frame,
        after: &mut After,
    ) -> Sent {
        let Some(entry) = map.get_mut(&id) else {
            return Sent::Gone;
        };
        let sent = match entry.queue.push(route, frame, &self.limits) {
            Pushed::Queued => Sent::Ok,
            Pushed::Replaced => {
                after.replaced += 1;
                Sent::Ok
            }
            Pushed::Counted => {
                after.counted += 1;
                Sent::Ok
            }
            Pushed::Slow => {
                self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    outlet = id,
                    lane = ?route.lane(),
                    "slow consumer: send queue full, closing the socket"
                );
                Sent::Slow
            }
            Pushed::Refused => return Sent::Gone,
        };
        after.wake.extend(entry.take_waiting_writer());
        sent
    }

    fn finish(&self, after: After) {
        if after.counted > 0 {
            self.reactions_aggregated
                .fetch_add(after.counted, Ordering::Relaxed);
        }
        if after.replaced > 0 {
            self.audio_replaced
                .fetch_add(after.replaced, Ordering::Relaxed);
        }
        for writer in after.wake {
            writer.notify_one();
        }
    }

    /// Closes an outlet after the frames already queued are written; with a
    /// `code`, a close frame `(code, reason)` is written last.
    pub fn close(&self, id: u64, code: Option<u16>, reason: &str) {
        let frame = code.map(|code| {
            let mut bytes = Vec::new();
            chorus_core::ws::encode_close(&mut bytes, code, reason);
            Frame::from(bytes)
        });
        if let Ok(mut map) = self.map.lock() {
            if let Some(entry) = map.get_mut(&id) {
                entry.queue.close(frame);
                if let Some(writer) = entry.take_waiting_writer() {
                    writer.notify_one();
                }
            }
        }
    }

    /// Drops the outlets whose owner process is gone; their writers end.
    pub fn sweep(&self, env: &LunaticEnvironment) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, e| {
                let alive = env.get_process(e.owner).is_some();
                if !alive {
                    e.wake.notify_one();
                }
                alive
            });
        }
    }

    /// Items queued in all outlets, and in the fullest one (one pass under
    /// the lock; for scrapes and the dashboard, not the hot path).
    pub fn queued_frames(&self) -> (u64, u64) {
        self.map
            .lock()
            .map(|m| {
                m.values().fold((0, 0), |(sum, max), e| {
                    let n = e.queue.len() as u64;
                    (sum + n, max.max(n))
                })
            })
            .unwrap_or((0, 0))
    }

    /// Outlets open now.
    pub fn count(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&id);
        }
    }
}

/// The topic of a frame, shared by its queue entries, on the lanes that
/// need it (one allocation per call, not per outlet).
fn shared_topic(lane: Lane, topic: &str) -> Option<Arc<str>> {
    matches!(lane, Lane::Audio | Lane::Reactions).then(|| Arc::from(topic))
}

/// The queue route of a frame on `lane`.
fn route<'a>(lane: Lane, topic: Option<&'a Arc<str>>, key: &'a str) -> Route<'a> {
    match (lane, topic) {
        (Lane::Control, _) => Route::Control,
        (Lane::Audio, Some(topic)) => Route::Audio { topic },
        (Lane::Reactions, Some(topic)) => Route::Reactions { topic, key },
        _ => Route::Chat,
    }
}

/// How a writer ended.
enum End {
    /// Closed by its owner and drained, or dropped by the sweeper.
    Closed,
    /// The socket failed: nothing more can be written.
    Failed,
    /// A slow consumer: send the 1008 close.
    Slow,
}

async fn write_loop(
    outlets: Arc<Outlets>,
    id: u64,
    conn: Arc<TcpConnection>,
    vsn: Vsn,
    wake: Arc<Notify>,
) {
    // Grown on demand and shrunk after a burst: an idle socket keeps no
    // write buffer.
    let mut batch: Vec<u8> = Vec::new();
    let mut taken: Vec<Out> = Vec::new();
    let end = loop {
        let (status, depth) = {
            let Ok(mut map) = outlets.map.lock() else {
                break End::Failed;
            };
            let Some(entry) = map.get_mut(&id) else {
                break End::Closed;
            };
            let depth = entry.queue.len();
            let status = entry.queue.take(WRITE_BATCH, &mut taken);
            entry.idle = taken.is_empty() && status == Status::Open;
            (status, depth)
        };
        if depth > 0 {
            outlets
                .metrics
                .observe(Histogram::OutletQueueDepth, depth as u64);
        }
        if status == Status::Slow {
            break End::Slow;
        }
        if taken.is_empty() && status == Status::Open {
            wake.notified().await;
            continue;
        }
        batch.clear();
        let frames = taken.len() as u64;
        for out in taken.drain(..) {
            match out {
                Out::Frame(frame) => batch.extend_from_slice(&frame),
                Out::Counts { topic, counts } => {
                    batch.extend_from_slice(&outq::reaction_counts_frame(vsn, &topic, &counts))
                }
            }
        }
        if taken.capacity() > 1024 {
            taken = Vec::new();
        }
        if !batch.is_empty() {
            let mut writer = conn.writer.lock().await;
            match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&batch)).await {
                Ok(Ok(())) => {
                    outlets.frames_out.fetch_add(frames, Ordering::Relaxed);
                    outlets
                        .bytes_out
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if batch.capacity() > 8 * 1024 {
                        batch = Vec::new();
                    }
                }
                Ok(Err(_)) => break End::Failed,
                Err(_) => {
                    outlets.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        outlet = id,
                        "slow consumer: a write took over {WRITE_TIMEOUT:?}, closing the socket"
                    );
                    break End::Slow;
                }
            }
        }
        if status == Status::Finished {
            break End::Closed;
        }
    };
    outlets.remove(id);
    let mut writer = conn.writer.lock().await;
    match end {
        End::Failed => return,
        End::Slow => {
            let mut close = Vec::new();
            chorus_core::ws::encode_close(&mut close, 1008, "slow_consumer");
            let _ = tokio::time::timeout(Duration::from_secs(1), writer.write_all(&close)).await;
        }
        End::Closed => {}
    }
    let _ = writer.shutdown().await;
}
