//! A loader process of the room scenarios (this binary run as
//! `room-worker <spec JSON>`): its clients join their lanes, then follow the
//! driver's words on stdin: `go` (churn / playback starts), `flood`
//! (flooders start), `end` (churners, host and flooders stop), `stop`.
//! It writes `ready`, `progress` and `done` JSON lines on stdout.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{watch, Semaphore};
use tokio::time::{interval_at, sleep, timeout, MissedTickBehavior};

use super::session::{self, Op, RoomEvent, Session};
use crate::loader::{self, emit, tick, Ready, Tally};
use crate::payload;
use crate::proto::Out;
use crate::stats;
use crate::ws::{Data, WsConn};

/// What a client does in its scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// presence-churn: leaves and rejoins the chat lane on a schedule.
    Churner,
    /// presence-churn: a member that stays and whose inbound bytes count.
    Observer,
    /// audio-flood: the room host, publishing `playback`.
    Host,
    /// audio-flood: joined to the audio and reactions lanes.
    Listener,
    /// audio-flood: sends `reaction` broadcasts once told to flood.
    Flooder,
}

/// A run of consecutive client ids with one role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub role: Role,
    pub first_id: u64,
    pub count: u64,
}

/// What one room loader does; the driver passes it as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomWorkerSpec {
    pub server: SocketAddr,
    pub source: Option<IpAddr>,
    /// The room id (`room:<id>:chat` etc.).
    pub room: String,
    pub groups: Vec<Group>,
    /// presence-churn: churners are ids `0..churners`, each leaving once
    /// per `churn_period_ms` and rejoining half a period later.
    pub churners: u64,
    pub members: u64,
    pub churn_period_ms: u64,
    /// presence-churn: observers with an odd id push `presence_subscribe`
    /// with `subscribe_keys` keys, `subscribed_churners` of them churning
    /// (the even ones stay plain: both kinds in one room, one run).
    pub selective: bool,
    pub subscribe_keys: u64,
    pub subscribed_churners: u64,
    /// audio-flood: the host's presence key and `playback` rate.
    pub host_key: String,
    pub playback_per_s: f64,
    /// audio-flood: reactions per second of each flooder.
    pub flood_per_s: f64,
    pub connect_timeout_ms: u64,
    pub connect_concurrency: usize,
    /// Hard limit on the worker's life after `go`.
    pub max_run_ms: u64,
}

impl RoomWorkerSpec {
    fn chat(&self) -> String {
        session::topic(&format!("room:{}:chat", self.room))
    }
    fn audio(&self) -> String {
        session::topic(&format!("room:{}:audio", self.room))
    }
    fn reactions(&self) -> String {
        session::topic(&format!("room:{}:reactions", self.room))
    }

    /// Whether observer `id` subscribes (see `selective`).
    pub fn is_selective(&self, id: u64) -> bool {
        self.selective && id % 2 == 1
    }

    /// The keys observer `id` subscribes to: some churners, then other
    /// observers, all distinct and never itself.
    pub fn subscription(&self, id: u64) -> Vec<String> {
        let mut keys = Vec::new();
        let churners = self.subscribed_churners.min(self.churners);
        for j in 0..churners {
            keys.push(member_key((id + j * 7) % self.churners.max(1)));
        }
        let stable = self.members.saturating_sub(self.churners).max(1);
        let mut k = 0;
        while (keys.len() as u64) < self.subscribe_keys && k < stable {
            let other = self.churners + (id + 1 + k * 13) % stable;
            let key = member_key(other);
            if other != id && !keys.contains(&key) {
                keys.push(key);
            }
            k += 1;
        }
        keys
    }
}

/// The presence key of member `id`.
pub fn member_key(id: u64) -> String {
    format!("u{id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Joining,
    Run,
    Flood,
    End,
    Stop,
}

/// The `progress` line (every half second after `ready`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes read by every client of this loader so far.
    pub bytes_in: u64,
    pub churn_done: u64,
    pub playbacks_received: u64,
    pub reactions_sent: u64,
}

/// The `done` line: this loader's counts. Index 0 of the per-phase arrays
/// is before the flood, 1 during it; of the per-observer arrays, plain
/// observers then selective ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Done {
    pub alive_at_end: u64,
    pub errors: BTreeMap<String, u64>,
    pub leaves: u64,
    pub rejoins: u64,
    pub observers: [u64; 2],
    pub observer_bytes: [u64; 2],
    pub diff_frames: [u64; 2],
    pub diff_joins: [u64; 2],
    pub subscribed: u64,
    pub subscribe_refused: u64,
    pub diff_hists: [String; 2],
    pub playbacks_sent: [u64; 2],
    pub playbacks_received: [u64; 2],
    pub playback_hists: [String; 2],
    pub listeners: u64,
    pub reactions_sent: u64,
    pub rate_limited: u64,
    pub reactions_individual: u64,
    pub reaction_counts_frames: u64,
    pub reactions_counted: u64,
    pub peak_on_seen: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Line {
    Ready(Ready),
    Progress(Progress),
    Done(Box<Done>),
}

/// Counters shared by this loader's client tasks (one thread).
struct Shared {
    tally: Tally,
    bytes_in: u64,
    diff_us: [Histogram<u64>; 2],
    playback_us: [Histogram<u64>; 2],
    done: Done,
}

pub fn main(spec: RoomWorkerSpec) -> Result<(), String> {
    loader::block_on(run(spec))
}

async fn run(spec: RoomWorkerSpec) {
    let spec = Rc::new(spec);
    let shared = Rc::new(RefCell::new(Shared {
        tally: Tally::default(),
        bytes_in: 0,
        diff_us: [stats::new_histogram(), stats::new_histogram()],
        playback_us: [stats::new_histogram(), stats::new_histogram()],
        done: Done::default(),
    }));
    let (phase_tx, phase_rx) = watch::channel(Phase::Joining);
    let permits = Rc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let (settled_tx, mut settled_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::new();
    let mut total = 0;
    for g in &spec.groups {
        for id in g.first_id..g.first_id + g.count {
            total += 1;
            tasks.push(tokio::task::spawn_local(client(
                id,
                g.role,
                spec.clone(),
                shared.clone(),
                phase_rx.clone(),
                permits.clone(),
                settled_tx.clone(),
            )));
        }
    }
    drop(settled_tx);
    loader::all_settled(&mut settled_rx, total).await;
    emit(&Line::Ready(shared.borrow().tally.ready()));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let deadline = sleep(Duration::from_millis(spec.max_run_ms));
    tokio::pin!(deadline);
    let mut started = false;
    loop {
        tokio::select! {
            // Only bounded once running: joins may take their time.
            _ = &mut deadline, if started => break,
            line = lines.next_line() => {
                let next = match line {
                    Ok(Some(l)) => match l.trim() {
                        "go" => Phase::Run,
                        "flood" => Phase::Flood,
                        "end" => Phase::End,
                        "stop" => Phase::Stop,
                        _ => continue,
                    },
                    _ => Phase::Stop,
                };
                if next == Phase::Run && !started {
                    started = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(spec.max_run_ms));
                }
                let _ = phase_tx.send(next);
                if next == Phase::Stop {
                    break;
                }
            }
            _ = tick.tick() => {
                let s = shared.borrow();
                emit(&Line::Progress(Progress {
                    bytes_in: s.bytes_in,
                    churn_done: s.done.leaves + s.done.rejoins,
                    playbacks_received: s.done.playbacks_received.iter().sum(),
                    reactions_sent: s.done.reactions_sent,
                }));
            }
        }
    }
    let _ = phase_tx.send(Phase::Stop);
    loader::wind_down(tasks).await;
    let s = shared.borrow();
    let mut done = s.done.clone();
    done.alive_at_end = s.tally.alive;
    done.errors = s.tally.errors.clone();
    done.diff_hists = [
        stats::encode_histogram(&s.diff_us[0]),
        stats::encode_histogram(&s.diff_us[1]),
    ];
    done.playback_hists = [
        stats::encode_histogram(&s.playback_us[0]),
        stats::encode_histogram(&s.playback_us[1]),
    ];
    emit(&Line::Done(Box::new(done)));
}

fn feed(session: &mut Session, data: &Data) -> RoomEvent {
    match data {
        Data::Text(t) => session.on_message(false, t.as_bytes()),
        Data::Binary(b) => session.on_message(true, b),
    }
}

fn queue(conn: &mut WsConn, out: &Out) {
    conn.queue(out.opcode, &out.data);
}

/// The lanes a role joins, with its presence key and whether it tracks.
fn lanes(id: u64, role: Role, spec: &RoomWorkerSpec) -> (Vec<String>, String, bool) {
    match role {
        Role::Churner | Role::Observer => (vec![spec.chat()], member_key(id), true),
        Role::Host => (vec![spec.audio()], spec.host_key.clone(), false),
        Role::Listener => (vec![spec.audio(), spec.reactions()], String::new(), false),
        Role::Flooder => (vec![spec.reactions()], String::new(), false),
    }
}

/// Waits for the reply to the push just sent (other frames are skipped).
async fn await_reply(
    conn: &mut WsConn,
    session: &mut Session,
    want: Op,
) -> Result<Result<Value, String>, String> {
    loop {
        let data = conn.recv().await.map_err(|e| format!("joining: {e}"))?;
        match feed(session, &data) {
            RoomEvent::Ok { op, response, .. } if op == want => return Ok(Ok(response)),
            RoomEvent::Refused { op, reason, .. } if op == want => return Ok(Err(reason)),
            RoomEvent::Garbage(why) => return Err(why),
            _ => {}
        }
        if conn.has_pending() {
            conn.flush().await.map_err(|e| format!("send: {e}"))?;
        }
    }
}

/// Connects, joins the role's lanes, tracks presence, subscribes.
async fn open(
    id: u64,
    role: Role,
    spec: &RoomWorkerSpec,
    session: &mut Session,
    shared: &RefCell<Shared>,
) -> Result<WsConn, String> {
    let mut conn = WsConn::connect(
        spec.server,
        spec.source,
        "/realtime/v1/websocket?apikey=bench&vsn=2.0.0",
        None,
        id,
        false,
    )
    .await
    .map_err(|e| format!("connect: {e}"))?;
    let (topics, key, track) = lanes(id, role, spec);
    for t in &topics {
        let out = session.join(t, &key, track);
        conn.send(out.opcode, &out.data)
            .await
            .map_err(|e| format!("send: {e}"))?;
        await_reply(&mut conn, session, Op::Join)
            .await?
            .map_err(|r| format!("join of {t} refused: {r}"))?;
    }
    if track {
        let out = session.track(&topics[0], stamp_meta(id));
        conn.send(out.opcode, &out.data)
            .await
            .map_err(|e| format!("send: {e}"))?;
        await_reply(&mut conn, session, Op::Track)
            .await?
            .map_err(|r| format!("track refused: {r}"))?;
    }
    if role == Role::Observer && spec.is_selective(id) {
        let keys = spec.subscription(id);
        let out = session.presence_subscribe(&topics[0], &keys);
        conn.send(out.opcode, &out.data)
            .await
            .map_err(|e| format!("send: {e}"))?;
        // A node without selective presence refuses the push: the client
        // stays (as a plain observer) and the refusal is reported.
        match await_reply(&mut conn, session, Op::Subscribe).await? {
            Ok(_) => shared.borrow_mut().done.subscribed += 1,
            Err(reason) => {
                let mut s = shared.borrow_mut();
                s.done.subscribe_refused += 1;
                s.tally
                    .error(format!("presence_subscribe refused: {reason}"));
            }
        }
    }
    Ok(conn)
}

/// A presence meta stamped with the send time, for the diff latency.
fn stamp_meta(id: u64) -> Value {
    json!({"t": payload::now_ns(), "c": id})
}

/// Where in [0, 1) client `id`'s first action falls within a period.
fn spread(id: u64, of: u64) -> f64 {
    if of == 0 {
        return 0.0;
    }
    (id % of) as f64 / of as f64
}

async fn client(
    id: u64,
    role: Role,
    spec: Rc<RoomWorkerSpec>,
    shared: Rc<RefCell<Shared>>,
    mut phase: watch::Receiver<Phase>,
    permits: Rc<Semaphore>,
    settled: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let mut session = Session::new();
    let started = Instant::now();
    let opened = loader::open_within(
        &permits,
        spec.connect_timeout_ms,
        open(id, role, &spec, &mut session, &shared),
    )
    .await;
    let mut conn = match opened {
        Ok(conn) => {
            let mut s = shared.borrow_mut();
            s.tally.opened(started);
            match role {
                Role::Observer => s.done.observers[usize::from(spec.is_selective(id))] += 1,
                Role::Listener => s.done.listeners += 1,
                _ => {}
            }
            drop(s);
            let _ = settled.send(());
            conn
        }
        Err(why) => {
            shared
                .borrow_mut()
                .tally
                .open_failed(format!("{role:?}: {why}"));
            let _ = settled.send(());
            return;
        }
    };
    drop(settled);

    let (topics, _, _) = lanes(id, role, &spec);
    let lane = topics[0].clone();
    let hb_every = Duration::from_secs(25);
    let mut heartbeat = interval_at(tokio::time::Instant::now() + hb_every, hb_every);
    let mut timer: Option<tokio::time::Interval> = None;
    let mut current = Phase::Joining;
    // Churner state: in the room or out of it.
    let mut inside = true;
    let mut position_ms = 0u64;
    let mut flood_start: Option<Instant> = None;
    let mut flood_sent = 0u64;
    let mut window_start_bytes = 0u64;
    let mut counted_bytes = conn.bytes_read();
    let mut failure: Option<String> = None;
    let churn_half = Duration::from_millis((spec.churn_period_ms / 2).max(1));
    loop {
        let next = *phase.borrow_and_update();
        if next != current {
            let now = tokio::time::Instant::now();
            match (role, next) {
                (_, Phase::Stop) => break,
                (Role::Churner, Phase::Run) => {
                    // Churners act every half period, spread over it.
                    let offset = churn_half.mul_f64(spread(id, spec.churners));
                    let mut t = interval_at(now + offset, churn_half);
                    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    timer = Some(t);
                }
                (Role::Observer, Phase::Run) => window_start_bytes = conn.bytes_read(),
                (Role::Host, Phase::Run) => {
                    let every = Duration::from_secs_f64(1.0 / spec.playback_per_s.max(0.1));
                    let mut t = interval_at(now, every);
                    t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                    timer = Some(t);
                }
                (Role::Flooder, Phase::Flood) => {
                    flood_start = Some(Instant::now());
                    let mut t = interval_at(now, Duration::from_millis(10));
                    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                    timer = Some(t);
                }
                (_, Phase::End) => timer = None,
                _ => {}
            }
            current = next;
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
                    Err(e) => { failure = Some(format!("{role:?}: connection lost: {e}")); break; }
                };
                let mut batch = vec![data];
                loop {
                    match conn.recv_buffered() {
                        Ok(Some(more)) => batch.push(more),
                        Ok(None) => break,
                        Err(e) => { failure = Some(format!("{role:?}: connection lost: {e}")); break; }
                    }
                }
                let read = conn.bytes_read();
                shared.borrow_mut().bytes_in += read - counted_bytes;
                counted_bytes = read;
                let running = current >= Phase::Run;
                for data in &batch {
                    // The join storm's diffs are only counted (bytes), not read.
                    if !running {
                        if let Data::Text(t) = data {
                            if session::looks_like_presence_diff(t.as_bytes()) {
                                continue;
                            }
                        }
                    }
                    let ev = feed(&mut session, data);
                    if let Some(out) = handle(id, role, spec.is_selective(id), &mut session, &shared, running, &lane, &mut inside, ev) {
                        queue(&mut conn, &out);
                    }
                }
                if failure.is_some() {
                    break;
                }
                if conn.has_pending() {
                    if let Err(e) = conn.flush().await {
                        failure = Some(format!("{role:?}: send: {e}"));
                        break;
                    }
                }
            }
            _ = heartbeat.tick() => {
                let out = session.heartbeat();
                if let Err(e) = conn.send(out.opcode, &out.data).await {
                    failure = Some(format!("{role:?}: heartbeat: {e}"));
                    break;
                }
            }
            _ = tick(&mut timer) => {
                let out: Vec<Out> = match role {
                    Role::Churner => {
                        inside = !inside;
                        if inside {
                            vec![session.join(&lane, &member_key(id), true)]
                        } else {
                            let out = session.leave(&lane);
                            // The next join gets a new ref; the old one's
                            // phx_close is then recognised as expected.
                            session.forget(&lane);
                            vec![out]
                        }
                    }
                    Role::Host => {
                        let ph = usize::from(current == Phase::Flood);
                        position_ms += (1000.0 / spec.playback_per_s.max(0.1)) as u64;
                        let body = json!({
                            "t": payload::now_ns(),
                            "c": id,
                            "ph": ph,
                            "track": "bench-track",
                            "position_ms": position_ms,
                            "playing": true,
                            "taken_at_ms": payload::now_ns() / 1_000_000,
                        });
                        shared.borrow_mut().done.playbacks_sent[ph] += 1;
                        vec![session.broadcast(&lane, "playback", body)]
                    }
                    Role::Flooder => {
                        let elapsed = flood_start.map_or(0.0, |s| s.elapsed().as_secs_f64());
                        let due = (elapsed * spec.flood_per_s) as u64;
                        let n = due.saturating_sub(flood_sent).min(50);
                        flood_sent += n;
                        shared.borrow_mut().done.reactions_sent += n;
                        (0..n)
                            .map(|_| session.broadcast(&lane, "reaction", json!({"emoji": "🔥"})))
                            .collect()
                    }
                    Role::Observer | Role::Listener => Vec::new(),
                };
                for o in &out {
                    queue(&mut conn, o);
                }
                if let Err(e) = conn.flush().await {
                    failure = Some(format!("{role:?}: send: {e}"));
                    break;
                }
            }
        }
    }
    {
        let mut s = shared.borrow_mut();
        if role == Role::Observer && current >= Phase::Run {
            s.done.observer_bytes[usize::from(spec.is_selective(id))] +=
                conn.bytes_read() - window_start_bytes;
        }
        s.tally.closed(failure);
    }
    let _ = timeout(Duration::from_millis(500), conn.close()).await;
}

/// Accounts for one server event; returns a push to send, if any.
#[allow(clippy::too_many_arguments)]
fn handle(
    id: u64,
    role: Role,
    selective: bool,
    session: &mut Session,
    shared: &RefCell<Shared>,
    running: bool,
    lane: &str,
    inside: &mut bool,
    ev: RoomEvent,
) -> Option<Out> {
    let mut s = shared.borrow_mut();
    match ev {
        RoomEvent::Ok { op: Op::Join, .. } if role == Role::Churner => {
            // Rejoined: track again, stamped now (the diff latency's start).
            drop(s);
            return Some(session.track(lane, stamp_meta(id)));
        }
        RoomEvent::Ok { op: Op::Track, .. } if running => s.done.rejoins += 1,
        RoomEvent::Ok { op: Op::Leave, .. } if running => s.done.leaves += 1,
        RoomEvent::Ok { .. } | RoomEvent::Other => {}
        RoomEvent::Refused { op, reason, .. } => {
            if reason.starts_with("rate_limited") {
                s.done.rate_limited += 1;
            } else {
                s.tally
                    .error(format!("{role:?}: {} refused: {reason}", op.name()));
            }
            if role == Role::Churner && op == Op::Join {
                *inside = false;
            }
        }
        RoomEvent::PresenceDiff { joins, .. } if running && role == Role::Observer => {
            let kind = usize::from(selective);
            s.done.diff_frames[kind] += 1;
            let now = payload::now_ns();
            for (key, stamps) in joins {
                // Only the churn's rejoins carry a stamp taken after `go`.
                if key == member_key(id) {
                    continue;
                }
                for t in stamps {
                    s.done.diff_joins[kind] += 1;
                    let us = now.saturating_sub(t) / 1000;
                    let _ = s.diff_us[kind].record(us.max(1));
                }
            }
        }
        RoomEvent::PresenceDiff { .. } => {}
        RoomEvent::Broadcast {
            event,
            payload,
            retained,
            ..
        } if running && role == Role::Listener => match event.as_str() {
            "playback" if !retained => {
                let Some(stamp) = payload::parse_json(&payload) else {
                    s.tally.error("playback without a stamp".into());
                    return None;
                };
                let ph = payload
                    .get("ph")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    .min(1) as usize;
                s.done.playbacks_received[ph] += 1;
                let us = payload::now_ns().saturating_sub(stamp.sent_ns) / 1000;
                let _ = s.playback_us[ph].record(us.max(1));
            }
            "reaction" => s.done.reactions_individual += 1,
            "reaction_counts" => {
                s.done.reaction_counts_frames += 1;
                let counted: u64 = payload
                    .get("counts")
                    .and_then(Value::as_object)
                    .map(|c| c.values().filter_map(Value::as_u64).sum())
                    .unwrap_or(0);
                s.done.reactions_counted += counted;
            }
            _ => {}
        },
        RoomEvent::Broadcast { .. } => {}
        RoomEvent::System(v) => {
            if v.get("status").and_then(Value::as_str) == Some("error") {
                s.tally.error(format!("{role:?}: system error: {v}"));
            } else if v.get("peak").and_then(Value::as_bool) == Some(true) && role == Role::Listener
            {
                s.done.peak_on_seen += 1;
            }
        }
        RoomEvent::Closed { topic, event } => {
            s.tally.error(format!("{role:?}: {event} on {topic}"));
        }
        RoomEvent::Garbage(why) => s.tally.error(format!("{role:?}: {why}")),
    }
    None
}
