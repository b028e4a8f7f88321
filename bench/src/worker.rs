//! A loader process: opens its share of the clients, joins them to their
//! rooms, then publishes and receives on the driver's signal, and prints
//! JSON lines (`ready`, `progress`, `done`) that the driver aggregates.
//!
//! Control on stdin: `go` starts publishing, `stop` ends the run (as does
//! stdin closing, or the worker's own deadline, so it always stops).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{watch, Semaphore};
use tokio::time::{interval_at, sleep, timeout, MissedTickBehavior};

use crate::loader::{self, emit, tick, Ready, Tally};
use crate::payload;
use crate::proto::{Adapter, Event, System};
use crate::stats;
use crate::ws::{Data, WsConn};

/// What one worker process does; the driver passes it as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub system: System,
    pub server: SocketAddr,
    /// Several nodes: client `id` connects to `servers[id % len]` (round
    /// robin, as a load balancer would place them) instead of `server`.
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    /// Local address to connect from (127.0.0.x), `None` for the default.
    pub source: Option<IpAddr>,
    /// Global id of this worker's first client; ids are unique per run.
    pub first_id: u64,
    pub count: u64,
    /// Clients `id / members_per_room` share a room; 0 puts all in `r0`.
    pub members_per_room: u64,
    /// Messages per second each client publishes once told to go.
    pub publish_rate: f64,
    pub payload_bytes: usize,
    /// How long publishers publish after `go`.
    pub duration_ms: u64,
    /// Hard limit on the whole worker life after `go`.
    pub max_run_ms: u64,
    pub connect_timeout_ms: u64,
    pub connect_concurrency: usize,
    /// chat-presence: join with presence on, track once joined, and
    /// update the presence meta this often after `go` (0: no presence).
    #[serde(default)]
    pub presence_every_ms: u64,
    /// Offer `permessage-deflate` in the upgrade.
    #[serde(default)]
    pub deflate: bool,
}

impl WorkerSpec {
    /// The node client `id` connects to, by index (0 on one server).
    fn node_of(&self, id: u64) -> usize {
        match self.servers.len() {
            0 | 1 => 0,
            n => (id % n as u64) as usize,
        }
    }

    fn server_of(&self, id: u64) -> SocketAddr {
        self.servers
            .get(self.node_of(id))
            .copied()
            .unwrap_or(self.server)
    }

    fn room(&self, id: u64) -> String {
        match self.members_per_room {
            0 => "r0".to_string(),
            m => format!("r{}", id / m),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Joining,
    Run,
    Stop,
}

/// Counters of this worker, shared by its client tasks (one thread).
struct Shared {
    tally: Tally,
    sent: u64,
    received: u64,
    first_recv_ns: u64,
    last_recv_ns: u64,
    latency_us: Histogram<u64>,
    /// Multi-node runs: deliveries whose publisher is on another node than
    /// the receiver, with their latency, and the others' latency.
    cross_node: u64,
    cross_us: Histogram<u64>,
    same_us: Histogram<u64>,
    joined_per_server: Vec<u64>,
    /// Joins sent again after a refusal that said to retry.
    rejoins: u64,
    wire: Wire,
}

/// Bytes the server wrote to this loader's clients.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Wire {
    /// Everything read from the sockets after the upgrade, frame headers
    /// included, over the clients' whole lives.
    pub socket_bytes: u64,
    /// WebSocket message payloads that carried room messages.
    pub chat_bytes: u64,
    /// WebSocket message payloads that carried presence.
    pub presence_bytes: u64,
    /// All other WebSocket message payloads (replies, pings, …).
    pub other_bytes: u64,
    pub messages: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub sent: u64,
    pub received: u64,
    pub alive: u64,
}

/// The `done` line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Done {
    pub sent: u64,
    pub received: u64,
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    pub alive_at_end: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency_hist: String,
    #[serde(default)]
    pub wire: Wire,
    #[serde(default)]
    pub cross_node: u64,
    #[serde(default)]
    pub cross_hist: String,
    #[serde(default)]
    pub same_hist: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Line {
    Ready(Ready),
    Progress(Progress),
    Done(Done),
}

pub fn main(spec: WorkerSpec) -> Result<(), String> {
    loader::block_on(run(spec))
}

async fn run(spec: WorkerSpec) {
    let spec = Rc::new(spec);
    let shared = Rc::new(RefCell::new(Shared {
        tally: Tally::default(),
        sent: 0,
        received: 0,
        first_recv_ns: 0,
        last_recv_ns: 0,
        latency_us: stats::new_histogram(),
        cross_node: 0,
        cross_us: stats::new_histogram(),
        same_us: stats::new_histogram(),
        joined_per_server: vec![0; spec.servers.len()],
        rejoins: 0,
        wire: Wire::default(),
    }));
    let (phase_tx, phase_rx) = watch::channel(Phase::Joining);
    let permits = Rc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let (settled_tx, mut settled_rx) = tokio::sync::mpsc::unbounded_channel::<()>();

    let mut tasks = Vec::new();
    for i in 0..spec.count {
        let id = spec.first_id + i;
        tasks.push(tokio::task::spawn_local(client(
            id,
            spec.clone(),
            shared.clone(),
            phase_rx.clone(),
            permits.clone(),
            settled_tx.clone(),
        )));
    }
    drop(settled_tx);
    // Every client reports once: joined or failed.
    loader::all_settled(&mut settled_rx, spec.count).await;
    {
        let s = shared.borrow();
        let mut ready = s.tally.ready();
        ready.joined_per_server = s.joined_per_server.clone();
        ready.rejoins = s.rejoins;
        emit(&Line::Ready(ready));
    }

    // Wait for `go`, then for `stop`; stdin EOF or the deadline also stop.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut go = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "go" {
            go = true;
            break;
        }
        if line.trim() == "stop" {
            break;
        }
    }
    if go {
        let _ = phase_tx.send(Phase::Run);
        let deadline = sleep(Duration::from_millis(spec.max_run_ms));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                line = lines.next_line() => match line {
                    Ok(Some(l)) if l.trim() != "stop" => {}
                    _ => break,
                },
                _ = tick.tick() => {
                    let s = shared.borrow();
                    emit(&Line::Progress(Progress { sent: s.sent, received: s.received, alive: s.tally.alive }));
                }
            }
        }
    }
    // Sessions still open when told to stop (closing them is not a loss).
    let alive_at_stop = shared.borrow().tally.alive;
    let _ = phase_tx.send(Phase::Stop);
    loader::wind_down(tasks).await;
    let s = shared.borrow();
    emit(&Line::Done(Done {
        sent: s.sent,
        received: s.received,
        first_recv_ns: s.first_recv_ns,
        last_recv_ns: s.last_recv_ns,
        alive_at_end: alive_at_stop,
        errors: s.tally.errors.clone(),
        latency_hist: stats::encode_histogram(&s.latency_us),
        wire: s.wire,
        cross_node: s.cross_node,
        cross_hist: if spec.servers.len() > 1 {
            stats::encode_histogram(&s.cross_us)
        } else {
            String::new()
        },
        same_hist: if spec.servers.len() > 1 {
            stats::encode_histogram(&s.same_us)
        } else {
            String::new()
        },
    }));
}

/// Connects, says hello, joins, and waits for the confirmations; a join
/// refused with "retry" is sent again (its reasons go to `retries`).
async fn open(
    id: u64,
    spec: &WorkerSpec,
    adapter: &mut Adapter,
    retries: &mut Vec<String>,
) -> Result<WsConn, String> {
    let mut conn = WsConn::connect(
        spec.server_of(id),
        spec.source,
        spec.system.ws_path(),
        spec.system.subprotocol(),
        id,
        spec.deflate,
    )
    .await
    .map_err(|e| format!("connect: {e}"))?;
    let room = spec.room(id);
    let mut connected = adapter.connected_on_open();
    for out in adapter.hello() {
        conn.queue(out.opcode, &out.data);
    }
    if connected {
        for out in adapter.subscribe(&room) {
            conn.queue(out.opcode, &out.data);
        }
    }
    conn.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut events = Vec::new();
    loop {
        let data = conn.recv().await.map_err(|e| format!("join: {e}"))?;
        events.clear();
        feed(adapter, data, &mut events, &mut Wire::default());
        for ev in events.drain(..) {
            match ev {
                Event::Connected if !connected => {
                    connected = true;
                    for out in adapter.subscribe(&room) {
                        conn.queue(out.opcode, &out.data);
                    }
                }
                Event::Subscribed => {
                    let meta = serde_json::json!({"t": payload::now_ns(), "s": 0});
                    if let Some(out) = adapter.track(&room, meta) {
                        conn.queue(out.opcode, &out.data);
                    }
                    conn.flush().await.map_err(|e| format!("send: {e}"))?;
                    return Ok(conn);
                }
                Event::Reply(out) => conn.queue(out.opcode, &out.data),
                Event::Error(why)
                    if why.contains("retry") && retries.len() < REJOIN_AFTER_S.len() =>
                {
                    // As realtime-js: rejoin after 1, 2, 5, 10 s.
                    sleep(Duration::from_secs(REJOIN_AFTER_S[retries.len()])).await;
                    retries.push(why);
                    if let Some(out) = adapter.rejoin(&room) {
                        conn.queue(out.opcode, &out.data);
                    }
                }
                Event::Error(why) => return Err(why),
                Event::Connected | Event::Message(_) | Event::Presence => {}
            }
        }
        conn.flush().await.map_err(|e| format!("send: {e}"))?;
    }
}

/// realtime-js' rejoin delays (seconds) after a join the server refused
/// with a reason that says to retry.
const REJOIN_AFTER_S: [u64; 4] = [1, 2, 5, 10];

/// Decodes one WebSocket message and counts its bytes by what it carried.
fn feed(adapter: &mut Adapter, data: Data, events: &mut Vec<Event>, wire: &mut Wire) {
    let before = events.len();
    let len = match data {
        Data::Text(t) => {
            adapter.on_message(false, t.as_bytes(), events);
            t.len()
        }
        Data::Binary(b) => {
            adapter.on_message(true, &b, events);
            b.len()
        }
    } as u64;
    wire.messages += 1;
    let new = &events[before..];
    if new.iter().any(|e| matches!(e, Event::Message(_))) {
        wire.chat_bytes += len;
    } else if new.iter().any(|e| matches!(e, Event::Presence)) {
        wire.presence_bytes += len;
    } else {
        wire.other_bytes += len;
    }
}

async fn client(
    id: u64,
    spec: Rc<WorkerSpec>,
    shared: Rc<RefCell<Shared>>,
    mut phase: watch::Receiver<Phase>,
    permits: Rc<Semaphore>,
    settled: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let mut adapter = Adapter::new(spec.system, id, spec.presence_every_ms > 0);
    let started = Instant::now();
    let mut retries = Vec::new();
    let opened = loader::open_within(
        &permits,
        spec.connect_timeout_ms,
        open(id, &spec, &mut adapter, &mut retries),
    )
    .await;
    for why in retries {
        let mut s = shared.borrow_mut();
        s.tally.error(format!("rejoined after: {why}"));
        s.rejoins += 1;
    }
    let mut conn = match opened {
        Ok(conn) => {
            let mut s = shared.borrow_mut();
            s.tally.opened(started);
            if let Some(n) = s.joined_per_server.get_mut(spec.node_of(id)) {
                *n += 1;
            }
            drop(s);
            let _ = settled.send(());
            conn
        }
        Err(why) => {
            shared.borrow_mut().tally.open_failed(why);
            let _ = settled.send(());
            return;
        }
    };
    drop(settled);

    let room = spec.room(id);
    let hb_every = Duration::from_secs(adapter.heartbeat_every_s());
    let mut heartbeat = interval_at(tokio::time::Instant::now() + hb_every, hb_every);
    let publishing = spec.publish_rate > 0.0;
    let period = if publishing {
        Duration::from_secs_f64(1.0 / spec.publish_rate)
    } else {
        Duration::from_secs(3600)
    };
    let mut publish_timer: Option<tokio::time::Interval> = None;
    let mut publish_until = tokio::time::Instant::now();
    let mut publish_started = false;
    let mut presence_timer: Option<tokio::time::Interval> = None;
    let mut wire = Wire::default();
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut failure: Option<String> = None;
    loop {
        let current = *phase.borrow_and_update();
        match current {
            Phase::Stop => break,
            Phase::Run if publishing && !publish_started => {
                publish_started = true;
                let now = tokio::time::Instant::now();
                // Spread the first publish of each client over one period.
                let frac =
                    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64;
                let mut t = interval_at(now + period.mul_f64(frac), period);
                t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                publish_timer = Some(t);
                publish_until = now + Duration::from_millis(spec.duration_ms);
                if spec.presence_every_ms > 0 {
                    let every = Duration::from_millis(spec.presence_every_ms);
                    let mut p = interval_at(now + every.mul_f64(frac), every);
                    p.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    presence_timer = Some(p);
                }
            }
            _ => {}
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            data = conn.recv() => {
                let data = match data {
                    Ok(d) => d,
                    Err(e) => { failure = Some(format!("connection lost: {e}")); break; }
                };
                events.clear();
                feed(&mut adapter, data, &mut events, &mut wire);
                // Whatever else the same read brought in, in one go.
                loop {
                    match conn.recv_buffered() {
                        Ok(Some(more)) => feed(&mut adapter, more, &mut events, &mut wire),
                        Ok(None) => break,
                        Err(e) => {
                            events.push(Event::Error(format!("connection lost: {e}")));
                            break;
                        }
                    }
                }
                let mut stop = false;
                for ev in events.drain(..) {
                    match ev {
                        Event::Message(Some(stamp)) if stamp.client != id => {
                            let now = payload::now_ns();
                            let mut s = shared.borrow_mut();
                            s.received += 1;
                            if s.first_recv_ns == 0 {
                                s.first_recv_ns = now;
                            }
                            s.last_recv_ns = now;
                            let us = now.saturating_sub(stamp.sent_ns) / 1000;
                            let _ = s.latency_us.record(us.max(1));
                            if spec.servers.len() > 1 {
                                if spec.node_of(stamp.client) != spec.node_of(id) {
                                    s.cross_node += 1;
                                    let _ = s.cross_us.record(us.max(1));
                                } else {
                                    let _ = s.same_us.record(us.max(1));
                                }
                            }
                        }
                        Event::Message(_) | Event::Presence | Event::Connected | Event::Subscribed => {}
                        Event::Reply(out) => conn.queue(out.opcode, &out.data),
                        Event::Error(why) => { failure = Some(why); stop = true; }
                    }
                }
                if stop {
                    break;
                }
                if conn.has_pending() {
                    if let Err(e) = conn.flush().await {
                        failure = Some(format!("send: {e}"));
                        break;
                    }
                }
            }
            _ = heartbeat.tick() => {
                if let Some(out) = adapter.heartbeat() {
                    if let Err(e) = conn.send(out.opcode, &out.data).await {
                        failure = Some(format!("heartbeat: {e}"));
                        break;
                    }
                }
            }
            _ = tick(&mut presence_timer) => {
                if tokio::time::Instant::now() >= publish_until {
                    presence_timer = None;
                    continue;
                }
                let meta = serde_json::json!({"t": payload::now_ns(), "s": seq});
                if let Some(out) = adapter.track(&room, meta) {
                    if let Err(e) = conn.send(out.opcode, &out.data).await {
                        failure = Some(format!("track: {e}"));
                        break;
                    }
                }
            }
            _ = tick(&mut publish_timer) => {
                if tokio::time::Instant::now() >= publish_until {
                    publish_timer = None;
                    continue;
                }
                let body = payload::make(payload::now_ns(), id, seq, spec.payload_bytes);
                seq += 1;
                let out = adapter.publish(&room, &body);
                if let Err(e) = conn.send(out.opcode, &out.data).await {
                    failure = Some(format!("publish: {e}"));
                    break;
                }
                shared.borrow_mut().sent += 1;
            }
        }
    }
    {
        let mut s = shared.borrow_mut();
        s.tally.closed(failure);
        wire.socket_bytes = conn.bytes_read();
        s.wire.add(&wire);
    }
    let _ = timeout(Duration::from_millis(500), conn.close()).await;
}

impl Wire {
    pub fn add(&mut self, o: &Wire) {
        self.socket_bytes += o.socket_bytes;
        self.chat_bytes += o.chat_bytes;
        self.presence_bytes += o.presence_bytes;
        self.other_bytes += o.other_bytes;
        self.messages += o.messages;
    }
}
