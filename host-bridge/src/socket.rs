//! Sockets: every client connection, owned by the host.
//!
//! The host reads and writes every socket itself; a session process only
//! ever sees whole client messages and hands back whole frames.
//!
//! * **Inlet.** A task per socket reads it, decodes WebSocket frames with
//!   `core::ws`, answers pings, enforces frame limits and idleness, and
//!   queues each complete client message. When the queue goes from empty to
//!   non-empty the owning session gets one small wake message (tag
//!   [`INLET_TAG`]) and takes the queued messages ([`Sockets::inlet_next`]).
//!   While the session has `limits.inlet_queue_messages` (or
//!   `limits.inlet_queue_bytes`) unprocessed, the task stops reading: TCP
//!   backpressure falls on that client only.
//! * **Outlet.** Everything the client receives — the session's replies and
//!   every channel's fan-out (`fanout`: the same shared bytes pushed on many
//!   sockets) — goes through the socket's lane queue ([`OutQ`], which makes
//!   every decision: priorities, audio replacement, reaction counts, slow
//!   consumers), drained by a writer task that coalesces queued frames into
//!   few `write` calls. A guest process's pushes wake idle writers only when
//!   the process is about to wait (its batch of wakes, [`crate::wakes`]), so
//!   a channel draining a backlog wakes each writer once and each writer
//!   writes the backlog's frames in one call.
//!
//! Each socket has its own lock: a fan-out to 5,000 sockets takes 5,000
//! short uncontended locks instead of holding one node-wide lock across all
//! of them (which stalled every writer and reader of the node meanwhile).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use chorus_core::deflate;
use chorus_core::lanes::Lane;
use chorus_core::metrics::Histogram;
use chorus_core::outq::{self, FanoutDelay, Frame, Out, OutQ, OutqLimits, Pushed, Route, Status};
use chorus_core::phoenix::Vsn;
use chorus_core::ws::{self, FrameDecoder, WsEvent};
use lunatic_process::message::{DataMessage, Message};
use lunatic_process::{Process, Signal};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::wakes::{Deferred, DrainToken, Limits, Wake};

/// Tag of the message that tells a session its socket has client messages
/// waiting (lunatic leaves tags 64..=128 to applications).
pub const INLET_TAG: i64 = 64;

/// Bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// A write that takes longer than this ends the socket (slow consumer).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read per `read` call into a worker thread's scratch buffer.
const READ_CHUNK: usize = 16 * 1024;

/// Status of a send, as returned to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Sent {
    Ok = 0,
    /// A lane is full: the socket is being closed as a slow consumer.
    Slow = 1,
    /// No such socket (closed, or its connection failed).
    Gone = 2,
}

/// One complete message from the client, or the end of the stream.
#[derive(Debug)]
pub enum Inbound {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    /// The client closed, broke the protocol or went silent: `code` is the
    /// close code to answer with (0: none, the connection is gone).
    Closed {
        code: u16,
        reason: String,
    },
}

impl Inbound {
    pub fn len(&self) -> usize {
        match self {
            Inbound::Text(b) | Inbound::Binary(b) => b.len(),
            Inbound::Closed { reason, .. } => reason.len(),
        }
    }
}

/// Limits of the sockets of a node.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    pub out: OutqLimits,
    pub inlet_messages: usize,
    pub inlet_bytes: usize,
    pub max_frame: usize,
    pub idle: Duration,
    /// `node.deflate_min_bytes`: payloads shorter than this go uncompressed
    /// to `permessage-deflate` sockets.
    pub deflate_min: usize,
    /// `node.fanout_write_delay_*`: when the writers of a large fan-out
    /// wake.
    pub fanout_delay: FanoutDelay,
}

/// What a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    /// One HTTP exchange answered by a guest handler.
    Http,
    /// A WebSocket session; `deflate`: it agreed to `permessage-deflate`.
    WebSocket { deflate: bool },
}

struct State {
    out: OutQ,
    /// The writer found nothing to write and waits: the next push wakes it.
    writer_idle: bool,
    /// When the push that woke the idle writer happened (for
    /// `chorus_outlet_wait_seconds`).
    woken_at: Option<std::time::Instant>,
    inlet: VecDeque<Inbound>,
    inlet_bytes: usize,
    /// A wake message is in the owner's mailbox (or the owner is draining).
    wake_sent: bool,
    /// The reader waits for the session to take messages.
    reader_paused: bool,
    /// What the session process reads when it starts (taken once).
    start: Option<Vec<u8>>,
    /// The writer was woken by a delayed fan-out batch: dropped once it has
    /// written (times the batch, which adapts the delay).
    drain: Option<DrainToken>,
}

/// One client connection.
pub struct Socket {
    pub id: u64,
    vsn: Vsn,
    /// A WebSocket session's connection (not a one-shot HTTP exchange).
    websocket: bool,
    /// It agreed to `permessage-deflate`: data frames of at least
    /// `deflate_min` payload bytes are queued compressed.
    deflate: bool,
    state: Mutex<State>,
    /// The process that owns the socket (set once it is spawned).
    owner: OnceLock<Arc<dyn Process>>,
    write_wake: Notify,
    read_wake: Notify,
}

impl Wake for Arc<Socket> {
    fn wake(&self) {
        self.write_wake.notify_one();
    }

    fn wake_late(&self, token: DrainToken) {
        // A token still here from an earlier batch (the writer has not
        // taken it yet) is dropped: that writer counts as done for it.
        self.lock().drain = Some(token);
        self.write_wake.notify_one();
    }
}

impl Socket {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` inconsistent
        // in a way that matters more than losing the socket; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the owner its wake message if messages wait and none is on its
    /// way.
    fn wake_owner(&self, state: &mut State) {
        if state.inlet.is_empty() || state.wake_sent {
            return;
        }
        if let Some(owner) = self.owner.get() {
            state.wake_sent = true;
            owner.send(Signal::Message(Message::Data(DataMessage::new(
                Some(INLET_TAG),
                0,
            ))));
        }
    }
}

/// What pushes leave to do once the socket locks are released: counters
/// to bump and writers to wake.
#[derive(Default)]
struct After {
    /// One clock read per call, shared by every writer it wakes.
    now: Option<std::time::Instant>,
    counted: u64,
    replaced: u64,
    slow: u64,
    /// The idle writers to wake, each marked with `fanout`.
    wake: Vec<(Arc<Socket>, bool)>,
    /// The pushes are a broadcast's (their wakes may be delayed, see
    /// [`Deferred::issue`]), not a reply's.
    fanout: bool,
}

/// Hashes socket ids, which this node hands out itself from a counter (no
/// client chooses one, so no flooding of a bucket): one multiply instead of
/// SipHash, for the thousands of look-ups of each fan-out.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: an odd multiplier maps consecutive ids to
        // distinct low bits (the table's bucket) and mixes them into the top
        // bits (the table's control byte).
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// All sockets of the node.
pub struct Sockets {
    next: AtomicU64,
    limits: SocketLimits,
    map: RwLock<HashMap<u64, Arc<Socket>, BuildHasherDefault<IdHasher>>>,
    /// Frames and bytes written by writer tasks, and the writes that
    /// carried them, for /metrics.
    pub frames_out: AtomicU64,
    pub writes: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Reactions counted into `reaction_counts` instead of queued.
    pub reactions_aggregated: AtomicU64,
    /// Unwritten audio frames replaced by a newer one of their topic.
    pub audio_replaced: AtomicU64,
    /// Sockets closed as slow consumers (a full lane or a stuck write).
    pub slow_consumers: AtomicU64,
    /// Times a socket's reading paused because its session was behind.
    pub inlet_paused: AtomicU64,
    /// `permessage-deflate`: sockets that agreed, frames compressed, bytes
    /// saved.
    pub deflate_sockets: AtomicU64,
    pub deflated_frames: AtomicU64,
    pub deflate_saved: AtomicU64,
    /// Where message sizes and queue depths are recorded.
    metrics: Arc<Metrics>,
    /// Writer wakes held until the pushing process waits.
    wakes: Arc<Deferred<Arc<Socket>>>,
}

impl Sockets {
    pub fn new(limits: SocketLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            next: AtomicU64::new(1),
            limits,
            map: RwLock::new(HashMap::default()),
            frames_out: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            reactions_aggregated: AtomicU64::new(0),
            audio_replaced: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            inlet_paused: AtomicU64::new(0),
            deflate_sockets: AtomicU64::new(0),
            deflated_frames: AtomicU64::new(0),
            deflate_saved: AtomicU64::new(0),
            metrics,
            wakes: Deferred::new(Limits::default(), limits.fanout_delay),
        })
    }

    /// The writer wakes guest processes hold (see [`crate::wakes`]).
    pub fn deferred(&self) -> &Arc<Deferred<Arc<Socket>>> {
        &self.wakes
    }

    pub fn limits(&self) -> &SocketLimits {
        &self.limits
    }

    /// The node's metrics, which the sockets record into (the host API
    /// renders them).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn get(&self, id: u64) -> Option<Arc<Socket>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Registers a connection whose writes go to `writer` (serializer
    /// `vsn`), with `start(id)` for its process to read; starts its writer
    /// task.
    pub fn open(
        self: &Arc<Self>,
        writer: OwnedWriteHalf,
        vsn: Vsn,
        conn: Conn,
        start: impl FnOnce(u64) -> Vec<u8>,
    ) -> Arc<Socket> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let start = start(id);
        let deflate = conn == Conn::WebSocket { deflate: true };
        if deflate {
            self.deflate_sockets.fetch_add(1, Ordering::Relaxed);
        }
        let socket = Arc::new(Socket {
            id,
            vsn,
            websocket: conn != Conn::Http,
            deflate,
            state: Mutex::new(State {
                out: OutQ::new(),
                writer_idle: false,
                woken_at: None,
                inlet: VecDeque::new(),
                inlet_bytes: 0,
                wake_sent: false,
                reader_paused: false,
                start: Some(start),
                drain: None,
            }),
            owner: OnceLock::new(),
            write_wake: Notify::new(),
            read_wake: Notify::new(),
        });
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, socket.clone());
        tokio::spawn(write_loop(self.clone(), socket.clone(), writer));
        socket
    }

    /// Gives the socket its owning process, and wakes it if client messages
    /// arrived before it existed.
    pub fn set_owner(&self, socket: &Socket, owner: Arc<dyn Process>) {
        let _ = socket.owner.set(owner);
        let mut state = socket.lock();
        socket.wake_owner(&mut state);
    }

    /// The start record of socket `id`, once (for its process).
    pub fn take_start(&self, id: u64) -> Option<Vec<u8>> {
        self.get(id)?.lock().start.take()
    }

    /// The next client message of socket `id` for its session; `None` when
    /// none waits (the next arrival sends a new wake message). A socket that
    /// is no longer registered has ended: its writer failed or found a slow
    /// consumer and removed it, then queued the `Closed` its session would
    /// now look for under an id that is gone; without this the session
    /// never ended (after a chat-presence run, ~480 of its 2,000 sessions
    /// stayed, holding their channels and their memory).
    pub fn inlet_next(&self, id: u64) -> Option<Inbound> {
        let Some(socket) = self.get(id) else {
            return Some(Inbound::Closed {
                code: 0,
                reason: String::new(),
            });
        };
        let mut state = socket.lock();
        let Some(next) = state.inlet.pop_front() else {
            state.wake_sent = false;
            if state.inlet.capacity() > 4 {
                state.inlet = VecDeque::new();
            }
            return None;
        };
        let len = next.len();
        state.inlet_bytes = state.inlet_bytes.saturating_sub(len);
        if state.reader_paused
            && state.inlet.len() * 2 <= self.limits.inlet_messages
            && state.inlet_bytes * 2 <= self.limits.inlet_bytes
        {
            state.reader_paused = false;
            socket.read_wake.notify_one();
        }
        Some(next)
    }

    /// Queues one frame on `lane` (`topic` and `key` matter on the audio and
    /// reactions lanes). `by`: the guest process that sends, whose next wait
    /// wakes the writer; `None` (the host) wakes it at once.
    pub fn send(
        &self,
        by: Option<u64>,
        id: u64,
        lane: Lane,
        topic: &str,
        key: &str,
        bytes: &[u8],
    ) -> Sent {
        let Some(socket) = self.get(id) else {
            return Sent::Gone;
        };
        self.metrics
            .observe(Histogram::MessageSizeOut, bytes.len() as u64);
        let frame: Frame = match socket.deflate.then(|| self.deflated(bytes)).flatten() {
            Some(small) => {
                self.deflate_saved
                    .fetch_add((bytes.len() - small.len()) as u64, Ordering::Relaxed);
                small
            }
            None => Arc::from(bytes),
        };
        let topic = shared_topic(lane, topic);
        let route = route(lane, topic.as_ref(), key);
        let mut after = After::default();
        let sent = self.push(&socket, route, &frame, &mut after);
        let took = usize::from(sent == Sent::Ok);
        self.finish(after, by, took, took * bytes.len());
        sent
    }

    /// Queues one frame on many sockets; returns how many took it. `by` as
    /// for [`Sockets::send`].
    pub fn fanout(
        &self,
        by: Option<u64>,
        ids: &[u64],
        lane: Lane,
        topic: &str,
        key: &str,
        bytes: &[u8],
    ) -> u32 {
        // Once per fan-out, not per socket: the size of what was sent.
        self.metrics
            .observe(Histogram::MessageSizeOut, bytes.len() as u64);
        let frame: Frame = Arc::from(bytes);
        // Compressed once, on the first socket that agreed to
        // permessage-deflate, and shared by all of them.
        let mut deflated: Option<Option<Frame>> = None;
        let mut saved = 0u64;
        let topic = shared_topic(lane, topic);
        let route = route(lane, topic.as_ref(), key);
        let mut after = After {
            fanout: true,
            ..After::default()
        };
        // Pushed under the map's read lock: no copy of thousands of `Arc`s
        // per frame. Deadlock-free: the map's write lock (open, remove) is
        // never taken while a socket's lock is held.
        let took = {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            let mut took = 0;
            for socket in ids.iter().filter_map(|id| map.get(id)) {
                let small = if socket.deflate {
                    deflated
                        .get_or_insert_with(|| self.deflated(bytes))
                        .as_ref()
                } else {
                    None
                };
                let sent = self.push(socket, route, small.unwrap_or(&frame), &mut after);
                if sent == Sent::Ok {
                    took += 1;
                    if let Some(small) = small {
                        saved += (bytes.len() - small.len()) as u64;
                    }
                }
            }
            took
        };
        if saved > 0 {
            self.deflate_saved.fetch_add(saved, Ordering::Relaxed);
        }
        self.finish(after, by, took, took.saturating_mul(bytes.len()));
        took as u32
    }

    /// `bytes` compressed for permessage-deflate sockets, when that makes
    /// them smaller (see `chorus_core::deflate::deflate_frame`).
    fn deflated(&self, bytes: &[u8]) -> Option<Frame> {
        let small = deflate::deflate_frame(bytes, self.limits.deflate_min)?;
        self.deflated_frames.fetch_add(1, Ordering::Relaxed);
        Some(Arc::from(small))
    }

    fn push(
        &self,
        socket: &Arc<Socket>,
        route: Route<'_>,
        frame: &Frame,
        after: &mut After,
    ) -> Sent {
        let mut state = socket.lock();
        let sent = match state.out.push(route, frame, &self.limits.out) {
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
                after.slow += 1;
                tracing::warn!(
                    socket = socket.id,
                    lane = ?route.lane(),
                    "slow consumer: send queue full, closing the socket"
                );
                Sent::Slow
            }
            Pushed::Refused => return Sent::Gone,
        };
        if state.writer_idle {
            state.writer_idle = false;
            state.woken_at = Some(*after.now.get_or_insert_with(std::time::Instant::now));
            after.wake.push((socket.clone(), after.fanout));
        } else if !after.fanout && state.woken_at.is_some() {
            // The writer waits for a wake not yet issued — a large
            // fan-out's, held up to `node.fanout_write_delay_max_ms`: a
            // reply does not wait with it (the writer then writes the held
            // broadcasts too).
            after.wake.push((socket.clone(), false));
        }
        sent
    }

    /// Counts what the pushes did and wakes their idle writers: at once
    /// for the host, at process `by`'s next wait for a guest process (it
    /// queued `frames` frames of `bytes` bytes); a large fan-out's later
    /// (see [`Deferred::issue`]).
    fn finish(&self, after: After, by: Option<u64>, frames: usize, bytes: usize) {
        if after.counted > 0 {
            self.reactions_aggregated
                .fetch_add(after.counted, Ordering::Relaxed);
        }
        if after.replaced > 0 {
            self.audio_replaced
                .fetch_add(after.replaced, Ordering::Relaxed);
        }
        if after.slow > 0 {
            self.slow_consumers.fetch_add(after.slow, Ordering::Relaxed);
        }
        match by {
            Some(pid) => self.wakes.defer(pid, after.wake, frames, bytes),
            None => self.wakes.issue(after.wake),
        }
    }

    /// Batches of writer wakes issued `node.fanout_write_delay_ms` late.
    pub fn delayed_fanouts(&self) -> u64 {
        self.wakes.delayed()
    }

    /// Process `pid` is about to wait: wakes the writers it holds.
    pub fn flush_wakes(&self, pid: u64) {
        self.wakes.flush(pid);
    }

    /// Closes socket `id` after the frames already queued are written; with
    /// a `code`, a close frame `(code, reason)` is written last.
    pub fn close(&self, id: u64, code: Option<u16>, reason: &str) {
        let Some(socket) = self.get(id) else {
            return;
        };
        let frame = code.map(|code| {
            let mut bytes = Vec::new();
            ws::encode_close(&mut bytes, code, reason);
            Frame::from(bytes)
        });
        let wake = {
            let mut state = socket.lock();
            state.out.close(frame);
            std::mem::replace(&mut state.writer_idle, false)
        };
        if wake {
            socket.write_wake.notify_one();
        }
        // A reader parked on backpressure must see the end too.
        socket.read_wake.notify_one();
    }

    /// Items queued in all sockets' send queues, and in the fullest one
    /// (for scrapes and the dashboard, not the hot path: one short lock per
    /// socket).
    pub fn queued_frames(&self) -> (u64, u64) {
        let sockets: Vec<Arc<Socket>> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        sockets.iter().fold((0, 0), |(sum, max), socket| {
            let n = socket.lock().out.len() as u64;
            (sum + n, max.max(n))
        })
    }

    /// The WebSocket connections whose writer still runs (a closed one
    /// leaves once its queued frames and its close frame are written).
    pub fn websockets(&self) -> Vec<u64> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.websocket)
            .map(|s| s.id)
            .collect()
    }

    /// Sockets open now.
    pub fn count(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    fn remove(&self, id: u64) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.remove(&id);
        // A map that held a connect storm keeps its table otherwise.
        if map.capacity() > 1024 && map.len() * 4 < map.capacity() {
            map.shrink_to_fit();
        }
    }

    /// Queues a client message for the session; false when the socket is
    /// gone. Wakes the session if it may be waiting.
    fn deliver(&self, socket: &Socket, message: Inbound) {
        if let Inbound::Text(b) | Inbound::Binary(b) = &message {
            self.metrics
                .observe(Histogram::MessageSizeIn, b.len() as u64);
        }
        let mut state = socket.lock();
        state.inlet_bytes += message.len();
        state.inlet.push_back(message);
        socket.wake_owner(&mut state);
    }

    /// Whether the session has as much unprocessed input as it may; then the
    /// reader is marked paused (and woken by `inlet_next`).
    fn inlet_full(&self, socket: &Socket) -> bool {
        let mut state = socket.lock();
        let full = state.inlet.len() >= self.limits.inlet_messages
            || state.inlet_bytes >= self.limits.inlet_bytes;
        if full && !state.out.is_closing() {
            state.reader_paused = true;
            return true;
        }
        false
    }

    fn is_closing(&self, socket: &Socket) -> bool {
        socket.lock().out.is_closing()
    }
}

/// Reads socket `socket` until the client closes, breaks the protocol, goes
/// silent for `limits.idle`, or the socket is closed by its session; every
/// client message is queued for the session, pings are answered here.
/// `early` holds bytes read with the request head.
pub async fn read_loop(
    sockets: Arc<Sockets>,
    socket: Arc<Socket>,
    reader: OwnedReadHalf,
    early: Vec<u8>,
) {
    let limits = *sockets.limits();
    let mut decoder = FrameDecoder::new(limits.max_frame).with_deflate(socket.deflate);
    decoder.push(&early);
    let end = 'read: loop {
        loop {
            match decoder.next() {
                Ok(Some(WsEvent::Text(t))) => {
                    sockets.deliver(&socket, Inbound::Text(t.into_bytes()));
                }
                Ok(Some(WsEvent::Binary(b))) => sockets.deliver(&socket, Inbound::Binary(b)),
                Ok(Some(WsEvent::Ping(p))) => {
                    let mut pong = Vec::new();
                    ws::encode_pong(&mut pong, &p);
                    sockets.send(None, socket.id, Lane::Control, "", "", &pong);
                }
                Ok(Some(WsEvent::Pong)) => {}
                Ok(Some(WsEvent::Close(_))) => {
                    break 'read Inbound::Closed {
                        code: 1000,
                        reason: String::new(),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    break 'read Inbound::Closed {
                        code: e.close_code(),
                        reason: e.to_string(),
                    }
                }
            }
        }
        decoder.release_idle();
        if sockets.is_closing(&socket) {
            return;
        }
        // Backpressure: wait until the session has taken its messages.
        while sockets.inlet_full(&socket) {
            sockets.inlet_paused.fetch_add(1, Ordering::Relaxed);
            let resumed = socket.read_wake.notified();
            if !sockets.inlet_full(&socket) {
                break;
            }
            resumed.await;
            if sockets.is_closing(&socket) {
                return;
            }
        }
        let readable = tokio::select! {
            r = tokio::time::timeout(limits.idle, reader.readable()) => r,
            // Closed by its session (or the writer ended): stop reading.
            () = socket.read_wake.notified() => continue,
        };
        match readable {
            Err(_) => {
                break 'read Inbound::Closed {
                    code: 1000,
                    reason: "heartbeat timeout".into(),
                }
            }
            Ok(Err(_)) => {
                break 'read Inbound::Closed {
                    code: 0,
                    reason: String::new(),
                }
            }
            Ok(Ok(())) => {}
        }
        let read = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match reader.try_read(&mut scratch[..]) {
                Ok(0) => Err(None),
                Ok(n) => {
                    decoder.push(&scratch[..n]);
                    Ok(n)
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(Some(e)),
            }
        });
        match read {
            Ok(n) => {
                sockets.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                break 'read Inbound::Closed {
                    code: 0,
                    reason: String::new(),
                }
            }
        }
    };
    sockets.deliver(&socket, end);
}

thread_local! {
    /// One read buffer per worker thread, so an idle socket holds none.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

/// The topic of a frame, shared by its queue entries, on the lanes that
/// need it (one allocation per call, not per socket).
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
    /// Closed by its owner and drained.
    Closed,
    /// The socket failed: nothing more can be written.
    Failed,
    /// A slow consumer: send the 1008 close.
    Slow,
}

async fn write_loop(sockets: Arc<Sockets>, socket: Arc<Socket>, mut writer: OwnedWriteHalf) {
    // Grown on demand and dropped after a burst: an idle socket keeps no
    // write buffer.
    let mut batch: Vec<u8> = Vec::new();
    let mut taken: Vec<Out> = Vec::new();
    let end = loop {
        // A delayed fan-out's token is dropped after this round's write.
        let (status, depth, woken_at, drain) = {
            let mut state = socket.lock();
            let depth = state.out.len();
            let status = state.out.take(WRITE_BATCH, &mut taken);
            state.writer_idle = taken.is_empty() && status == Status::Open;
            (status, depth, state.woken_at.take(), state.drain.take())
        };
        if let Some(at) = woken_at {
            sockets
                .metrics
                .observe(Histogram::OutletWait, at.elapsed().as_nanos() as u64);
        }
        if depth > 0 {
            sockets
                .metrics
                .observe(Histogram::OutletQueueDepth, depth as u64);
        }
        if status == Status::Slow {
            break End::Slow;
        }
        if taken.is_empty() && status == Status::Open {
            drop(drain);
            socket.write_wake.notified().await;
            continue;
        }
        batch.clear();
        let frames = taken.len() as u64;
        for out in taken.drain(..) {
            match out {
                Out::Frame(frame) => batch.extend_from_slice(&frame),
                Out::Counts { topic, counts } => batch
                    .extend_from_slice(&outq::reaction_counts_frame(socket.vsn, &topic, &counts)),
            }
        }
        if taken.capacity() > 64 {
            taken = Vec::new();
        }
        if !batch.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&batch)).await {
                Ok(Ok(())) => {
                    sockets.frames_out.fetch_add(frames, Ordering::Relaxed);
                    sockets.writes.fetch_add(1, Ordering::Relaxed);
                    sockets
                        .bytes_out
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if batch.capacity() > 8 * 1024 {
                        batch = Vec::new();
                    }
                }
                Ok(Err(_)) => break End::Failed,
                Err(_) => {
                    sockets.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        socket = socket.id,
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
    sockets.remove(socket.id);
    // The session must learn that its socket is gone (a failed or slow
    // socket): its inlet ends here if the reader has not ended it already.
    sockets.deliver(
        &socket,
        Inbound::Closed {
            code: 0,
            reason: String::new(),
        },
    );
    socket.read_wake.notify_one();
    match end {
        End::Failed => return,
        End::Slow => {
            let mut close = Vec::new();
            ws::encode_close(&mut close, 1008, "slow_consumer");
            let _ = tokio::time::timeout(Duration::from_secs(1), writer.write_all(&close)).await;
        }
        End::Closed => {}
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Small limits for tests, with `fanout_delay`.
    fn test_sockets(fanout_delay: FanoutDelay) -> Arc<Sockets> {
        let limits = SocketLimits {
            out: OutqLimits {
                queue_frames: 16,
                reaction_frames: 16,
                queue_bytes: 1 << 16,
            },
            inlet_messages: 16,
            inlet_bytes: 1 << 16,
            max_frame: 1 << 16,
            idle: Duration::from_secs(60),
            deflate_min: 1 << 16,
            fanout_delay,
        };
        Sockets::new(limits, Arc::new(Metrics::new("test")))
    }

    #[test]
    fn the_inlet_of_a_removed_socket_is_closed() {
        let sockets = test_sockets(FanoutDelay::from_config(&Default::default()));
        assert!(matches!(
            sockets.inlet_next(7),
            Some(Inbound::Closed { code: 0, .. })
        ));
    }

    #[tokio::test]
    async fn a_reply_does_not_wait_for_a_delayed_fanout_wake() {
        use tokio::io::AsyncReadExt;
        // Every fan-out's wakes are held a minute.
        let sockets = test_sockets(FanoutDelay {
            delay: Duration::from_secs(60),
            max: Duration::from_secs(60),
            min_sockets: 1,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let socket = sockets.open(write, Vsn::V2, Conn::WebSocket { deflate: false }, |_| {
            Vec::new()
        });
        while !socket.lock().writer_idle {
            tokio::task::yield_now().await;
        }
        let ids = [socket.id];
        assert_eq!(
            sockets.fanout(None, &ids, Lane::Chat, "t", "", b"broadcast|"),
            1
        );
        assert_eq!(sockets.delayed_fanouts(), 1, "the fan-out's wake is held");
        assert_eq!(
            sockets.send(None, socket.id, Lane::Control, "t", "", b"reply|"),
            Sent::Ok
        );
        // Both frames arrive long before the held wake (a minute).
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < b"broadcast|reply|".len() {
            let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
                .await
                .expect("the reply waited for the fan-out's delayed wake")
                .unwrap();
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
        // In the lanes' order (control first): both written.
        assert_eq!(got, b"reply|broadcast|");
    }

    #[test]
    fn consecutive_ids_spread_over_buckets_and_control_bits() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let n = 4096u64;
        let mut low = std::collections::HashSet::new();
        let mut top = std::collections::HashSet::new();
        for id in 1..=n {
            let h = build.hash_one(id);
            low.insert(h & (n - 1));
            top.insert(h >> 57);
        }
        // A table of 4,096 buckets: every bucket gets one id.
        assert_eq!(low.len() as u64, n);
        // hashbrown's control byte: the top 7 bits must vary too.
        assert!(top.len() > 100, "{} control values", top.len());
    }
}
