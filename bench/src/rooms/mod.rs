//! The room scenarios of issue 5 (Chorus only; the peers have no such
//! features, so each is compared with a Chorus baseline of the same run):
//!
//! * **presence-churn**: one room of M members on `room:<id>:chat`, each
//!   tracking presence under its own key; C churners leave and rejoin on a
//!   schedule. On a node with `presence.large_room_threshold` above M,
//!   half the other members (observers) keep *plain* presence and half
//!   `presence_subscribe` to 20 keys (*selective*); then, on a fresh node
//!   with the default threshold, the *relevant-set* mode. Measures churn
//!   events/s, diff latency (track push → observer sees the key joined) and
//!   bytes received per observer.
//! * **audio-flood**: the host publishes `playback` on `room:<id>:audio` to
//!   N listeners (also joined to `room:<id>:reactions`), first alone, then
//!   while F flooders send `reaction` broadcasts at their rate limit.
//!   Measures playback latency without and with the flood, and how
//!   reactions reached the listeners (one by one or as `reaction_counts`).

pub mod report;
pub mod session;
pub mod worker;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use self::worker::{Done, Group, Line, Role, RoomWorkerSpec};
use crate::driver::RunResult;
use crate::loader::{kill_all, loopback, merge_errors, top_error, LoaderProc, Ready};
use crate::payload;
use crate::proto::System;
use crate::scenario::{Params, Scenario};
use crate::servers::{rss_kib, Paths, Server};
use crate::stats::{self, Latency};

/// A node setting far above any room of these scenarios: plain presence.
const NO_LARGE_ROOMS: u32 = 1_000_000;
/// The host's presence key (set as the room's `host`).
const HOST_KEY: &str = "bench-host";

/// The loads of the room scenarios (recorded in every result).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoomParams {
    /// presence-churn: members of the room.
    pub members: u64,
    /// presence-churn: members that leave and rejoin.
    pub churners: u64,
    /// presence-churn: leaves per second (as many rejoins).
    pub churn_per_s: f64,
    /// presence-churn: keys each selective observer subscribes to, and how
    /// many of them churn.
    pub subscribe_keys: u64,
    pub subscribed_churners: u64,
    /// audio-flood: listeners, flooders, the host's playback rate and each
    /// flooder's reaction rate.
    pub listeners: u64,
    pub flooders: u64,
    pub playback_per_s: f64,
    pub flood_per_s: f64,
    /// Most clients per loader process.
    pub clients_per_worker: u64,
    /// Longest wait for the join storm's traffic to settle before `go`.
    pub settle_max_s: f64,
    /// presence-churn: the relevant-set node's
    /// `presence.large_room_threshold` (`None`: the default; the tiny
    /// suite lowers it below its small room so the mode is exercised).
    #[serde(default)]
    pub large_room_threshold: Option<u32>,
}

/// One presence mode's figures.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PresenceMode {
    /// `plain`, `selective` or `relevant-set`.
    pub mode: String,
    /// The node's `presence.large_room_threshold` in this run.
    pub large_room_threshold: String,
    pub failure: Option<String>,
    pub members_joined: u64,
    pub observers: u64,
    pub subscribed: u64,
    pub subscribe_refused: u64,
    pub leaves: u64,
    pub rejoins: u64,
    pub churn_events_per_s: f64,
    /// Bytes each observer received between `go` and the end of the drain.
    pub bytes_per_observer: f64,
    pub bytes_per_observer_per_s: f64,
    pub diff_frames_per_observer: f64,
    /// Churners' joins seen by observers in diffs, with their latency.
    pub diff_joins_seen: u64,
    pub diff_latency: Latency,
    pub window_s: f64,
    pub rss_peak_kib: u64,
    pub errors: BTreeMap<String, u64>,
}

/// One phase of the audio scenario.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AudioPhase {
    pub playbacks_sent: u64,
    pub playbacks_received: u64,
    pub expected: u64,
    pub delivered_pct: f64,
    pub latency: Latency,
}

/// The audio scenario's figures.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Audio {
    pub listeners_joined: u64,
    pub without_flood: AudioPhase,
    pub with_flood: AudioPhase,
    /// p99 with the flood ÷ p99 without (goal ≤ 2).
    pub p99_ratio: f64,
    pub reactions_sent: u64,
    pub reactions_rate_limited: u64,
    pub reactions_individual: u64,
    pub reaction_counts_frames: u64,
    pub reactions_counted: u64,
    /// (individual + counted) ÷ (accepted × listeners).
    pub reactions_delivered_pct: f64,
    pub peak_mode_entries_seen: u64,
}

/// What a room scenario adds to a [`RunResult`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoomOutcome {
    Presence(Vec<PresenceMode>),
    Audio(Box<Audio>),
}

impl RoomOutcome {
    /// Plain ÷ other bytes per observer, when both ran.
    pub fn bytes_ratio(modes: &[PresenceMode], other: &str) -> Option<f64> {
        let get = |m: &str| {
            modes
                .iter()
                .find(|x| x.mode == m && x.failure.is_none())
                .map(|x| x.bytes_per_observer)
        };
        match (get("plain"), get(other)) {
            (Some(p), Some(o)) if o > 0.0 => Some(p / o),
            _ => None,
        }
    }
}

/// The loader processes of one run and their output lines.
struct Loaders {
    procs: Vec<LoaderProc>,
    rx: mpsc::Receiver<(usize, Line)>,
}

impl Loaders {
    fn start(specs: &[RoomWorkerSpec]) -> Result<Loaders, String> {
        let (tx, rx) = mpsc::channel();
        let mut procs = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match LoaderProc::start("room-worker", spec, i, &tx) {
                Ok(w) => procs.push(w),
                Err(e) => {
                    kill_all(&mut procs);
                    return Err(e);
                }
            }
        }
        Ok(Loaders { procs, rx })
    }

    fn say(&mut self, word: &str) {
        for w in &mut self.procs {
            w.say(word);
        }
    }

    /// Every loader's `ready` line, or why not.
    fn ready(&mut self, within: Duration) -> Result<Vec<Ready>, String> {
        let deadline = Instant::now() + within;
        let mut ready: Vec<Option<Ready>> = vec![None; self.procs.len()];
        while ready.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("loaders did not finish joining in time".into());
            }
            match self.rx.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok((i, Line::Ready(r))) => ready[i] = Some(r),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("a loader process died while joining".into())
                }
            }
        }
        Ok(ready.into_iter().flatten().collect())
    }

    /// Waits `d`, reading progress lines; returns the latest bytes-in
    /// total of each loader.
    fn wait(&mut self, d: Duration, bytes: &mut [u64], rss: &mut Rss) {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok((i, Line::Progress(p))) = self.rx.recv_timeout(left) {
                bytes[i] = p.bytes_in;
                rss.sample();
            }
        }
    }

    /// Waits until the loaders read (almost) nothing in two half-second
    /// windows running, at most `max`: the join storm's presence traffic
    /// is over.
    fn settle(&mut self, max: Duration, rss: &mut Rss) {
        let until = Instant::now() + max;
        let mut bytes = vec![0u64; self.procs.len()];
        self.wait(Duration::from_millis(550), &mut bytes, rss);
        let mut last = bytes.iter().sum::<u64>();
        let mut quiet = 0;
        while Instant::now() < until && quiet < 2 {
            self.wait(Duration::from_millis(500), &mut bytes, rss);
            let now = bytes.iter().sum::<u64>();
            if now.saturating_sub(last) < 4096 {
                quiet += 1;
            } else {
                quiet = 0;
            }
            last = now;
        }
    }

    /// Says `stop` and collects every `done` line (bounded).
    fn finish(mut self) -> Result<Vec<Done>, String> {
        self.say("stop");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut done: Vec<Option<Done>> = vec![None; self.procs.len()];
        while done.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.rx.recv_timeout(left) {
                Ok((i, Line::Done(d))) => done[i] = Some(*d),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.kill();
        if done.iter().any(Option::is_none) {
            return Err("a loader process did not report its results".into());
        }
        Ok(done.into_iter().flatten().collect())
    }

    fn kill(&mut self) {
        kill_all(&mut self.procs);
    }
}

/// The server's peak RSS, sampled along the run.
struct Rss {
    pid: u32,
    peak_kib: u64,
}

impl Rss {
    fn sample(&mut self) {
        if let Some(k) = rss_kib(self.pid) {
            self.peak_kib = self.peak_kib.max(k);
        }
    }
}

/// One loader spec per group, each from its own loopback address.
fn one_per_group(base: &RoomWorkerSpec, groups: Vec<Group>) -> Vec<RoomWorkerSpec> {
    groups
        .into_iter()
        .enumerate()
        .map(|(k, g)| RoomWorkerSpec {
            source: loopback(k),
            groups: vec![g],
            ..base.clone()
        })
        .collect()
}

/// Splits ids `first..first+count` of one role into groups of at most `per`.
fn split(role: Role, first: u64, count: u64, per: u64) -> Vec<Group> {
    let mut out = Vec::new();
    let mut id = first;
    while id < first + count {
        let n = per.max(1).min(first + count - id);
        out.push(Group {
            role,
            first_id: id,
            count: n,
        });
        id += n;
    }
    out
}

fn base_spec(server: SocketAddr, p: &Params, rp: &RoomParams, room: &str) -> RoomWorkerSpec {
    RoomWorkerSpec {
        server,
        source: None,
        room: room.to_string(),
        groups: Vec::new(),
        churners: rp.churners.min(rp.members),
        members: rp.members,
        churn_period_ms: (rp.churners as f64 / rp.churn_per_s.max(0.01) * 1000.0) as u64,
        selective: false,
        subscribe_keys: rp.subscribe_keys,
        subscribed_churners: rp.subscribed_churners,
        host_key: HOST_KEY.to_string(),
        playback_per_s: rp.playback_per_s,
        flood_per_s: rp.flood_per_s,
        connect_timeout_ms: (p.connect_timeout_s * 1000.0) as u64,
        connect_concurrency: p.connect_concurrency,
        max_run_ms: ((2.0 * p.duration_s + p.drain_s) * 1000.0) as u64 + 30_000,
    }
}

/// Runs a room scenario (Chorus only) and always returns a result.
pub fn run(params: &Params, paths: &Paths) -> RunResult {
    let mut r = RunResult {
        system: Some(System::Chorus),
        params: Some(params.clone()),
        started_at: payload::now_ns() / 1_000_000_000,
        ..RunResult::default()
    };
    eprintln!("== chorus {}: {}", params.scenario, params.describe());
    let Some(rp) = params.room.clone() else {
        r.failure = Some("room scenario without room parameters".into());
        return r;
    };
    match params.scenario {
        Scenario::PresenceChurn => {
            let mut modes = Vec::new();
            for node in [PresenceNode::PlainAndSelective, PresenceNode::RelevantSet] {
                let ms = presence_node(node, params, &rp, paths, &mut r);
                r.sessions_requested += rp.members;
                if let Some(m) = ms.first() {
                    r.sessions_joined += m.members_joined;
                    r.rss_peak_kib = r.rss_peak_kib.max(m.rss_peak_kib);
                    merge_errors(&mut r.errors, &m.errors);
                }
                for m in ms {
                    eprintln!(
                        "   {}: {} ; churn {:.1}/s, diff p50 {:.2} ms p99 {:.2} ms ({} seen), {:.0} B/observer",
                        m.mode,
                        m.failure.as_deref().unwrap_or("ran"),
                        m.churn_events_per_s,
                        m.diff_latency.p50_ms,
                        m.diff_latency.p99_ms,
                        m.diff_joins_seen,
                        m.bytes_per_observer
                    );
                    if r.failure.is_none() {
                        if let Some(f) = &m.failure {
                            r.failure = Some(format!("{}: {f}", m.mode));
                        }
                    }
                    modes.push(m);
                }
            }
            if let Some(ratio) = RoomOutcome::bytes_ratio(&modes, "selective") {
                eprintln!("   plain/selective bytes per observer: {ratio:.1}×");
            }
            r.room = Some(RoomOutcome::Presence(modes));
        }
        Scenario::AudioFlood => {
            let a = audio(params, &rp, paths, &mut r);
            eprintln!(
                "   {}: playback p99 {:.2} ms without flood, {:.2} ms with ({:.2}×); reactions {} sent, {} one by one, {} in {} reaction_counts",
                r.failure.as_deref().unwrap_or("ran"),
                a.without_flood.latency.p99_ms,
                a.with_flood.latency.p99_ms,
                a.p99_ratio,
                a.reactions_sent,
                a.reactions_individual,
                a.reactions_counted,
                a.reaction_counts_frames
            );
            r.room = Some(RoomOutcome::Audio(Box::new(a)));
        }
        other => r.failure = Some(format!("{other} is not a room scenario")),
    }
    r
}

/// The two presence nodes: plain and selective observers side by side in
/// one room (threshold above the room size), then the relevant-set mode
/// (default threshold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PresenceNode {
    PlainAndSelective,
    RelevantSet,
}

fn presence_node(
    node: PresenceNode,
    p: &Params,
    rp: &RoomParams,
    paths: &Paths,
    r: &mut RunResult,
) -> Vec<PresenceMode> {
    let names: &[&str] = match node {
        PresenceNode::PlainAndSelective => &["plain", "selective"],
        PresenceNode::RelevantSet => &["relevant-set"],
    };
    let (threshold, env) = match (node, rp.large_room_threshold) {
        (PresenceNode::RelevantSet, None) => ("default (lunatic.toml)".to_string(), Vec::new()),
        (PresenceNode::RelevantSet, Some(t)) => (
            t.to_string(),
            vec![(
                "CHORUS_PRESENCE_LARGE_ROOM_THRESHOLD".to_string(),
                t.to_string(),
            )],
        ),
        (PresenceNode::PlainAndSelective, _) => (
            NO_LARGE_ROOMS.to_string(),
            vec![(
                "CHORUS_PRESENCE_LARGE_ROOM_THRESHOLD".to_string(),
                NO_LARGE_ROOMS.to_string(),
            )],
        ),
    };
    let mut modes: Vec<PresenceMode> = names
        .iter()
        .map(|n| PresenceMode {
            mode: n.to_string(),
            large_room_threshold: threshold.clone(),
            ..PresenceMode::default()
        })
        .collect();
    let fail_all = |modes: &mut Vec<PresenceMode>, why: &str| {
        for m in modes.iter_mut() {
            if m.failure.is_none() {
                m.failure = Some(why.to_string());
            }
        }
    };
    let server = match Server::start_chorus_with(paths, &env) {
        Ok(s) => s,
        Err(e) => {
            fail_all(&mut modes, &format!("server did not start: {e}"));
            return modes;
        }
    };
    r.version = server.version.clone();
    let mut rss = Rss {
        pid: server.pid,
        peak_kib: 0,
    };
    let churners = rp.churners.min(rp.members);
    let mut base = base_spec(server.addr, p, rp, "bench");
    base.selective = node == PresenceNode::PlainAndSelective;
    let mut groups = split(Role::Churner, 0, churners, rp.clients_per_worker);
    groups.extend(split(
        Role::Observer,
        churners,
        rp.members - churners,
        rp.clients_per_worker,
    ));
    // One loader per group: churners on their own, so their schedule is not
    // delayed by observers' receiving.
    let specs = one_per_group(&base, groups);
    if let Err(e) = drive_presence(&specs, p, rp, &mut modes, &mut rss) {
        fail_all(&mut modes, &e);
    }
    rss.sample();
    let mut server = server;
    if !server.alive() {
        let why = format!("server exited during the run: {}", server.log_tail());
        fail_all(&mut modes, &why);
    }
    server.stop();
    for m in &mut modes {
        m.rss_peak_kib = rss.peak_kib;
    }
    modes
}

fn drive_presence(
    specs: &[RoomWorkerSpec],
    p: &Params,
    rp: &RoomParams,
    modes: &mut [PresenceMode],
    rss: &mut Rss,
) -> Result<(), String> {
    let mut loaders = Loaders::start(specs)?;
    let started = Instant::now();
    let ready = match loaders.ready(Duration::from_secs_f64(p.connect_timeout_s + 30.0)) {
        Ok(r) => r,
        Err(e) => {
            loaders.kill();
            return Err(e);
        }
    };
    let (mut joined, mut failed) = (0, 0);
    let mut errors = BTreeMap::new();
    for rd in &ready {
        joined += rd.joined;
        failed += rd.failed;
        merge_errors(&mut errors, &rd.errors);
    }
    for m in modes.iter_mut() {
        m.members_joined = joined;
    }
    eprintln!(
        "   {} members joined and tracked in {:.1}s",
        joined,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        let _ = loaders.finish();
        return Err(format!(
            "{failed} of {} members failed to join: {}",
            rp.members,
            top_error(&errors)
        ));
    }
    loaders.settle(Duration::from_secs_f64(rp.settle_max_s), rss);
    let go = Instant::now();
    loaders.say("go");
    let mut bytes = vec![0; specs.len()];
    loaders.wait(Duration::from_secs_f64(p.duration_s), &mut bytes, rss);
    loaders.say("end");
    loaders.wait(Duration::from_secs_f64(p.drain_s), &mut bytes, rss);
    let window_s = go.elapsed().as_secs_f64();
    let done = loaders.finish()?;
    let mut lat: [Histogram<u64>; 2] = [stats::new_histogram(), stats::new_histogram()];
    let (mut leaves, mut rejoins, mut subscribed, mut refused) = (0, 0, 0, 0);
    let (mut observers, mut obs_bytes, mut frames, mut seen) =
        ([0u64; 2], [0u64; 2], [0u64; 2], [0u64; 2]);
    for d in &done {
        leaves += d.leaves;
        rejoins += d.rejoins;
        subscribed += d.subscribed;
        refused += d.subscribe_refused;
        for k in 0..2 {
            observers[k] += d.observers[k];
            obs_bytes[k] += d.observer_bytes[k];
            frames[k] += d.diff_frames[k];
            seen[k] += d.diff_joins[k];
            if let Ok(h) = stats::decode_histogram(&d.diff_hists[k]) {
                let _ = lat[k].add(&h);
            }
        }
        merge_errors(&mut errors, &d.errors);
    }
    for m in modes.iter_mut() {
        let k = usize::from(m.mode == "selective");
        m.leaves = leaves;
        m.rejoins = rejoins;
        m.window_s = window_s;
        m.churn_events_per_s = (leaves + rejoins) as f64 / p.duration_s.max(1e-9);
        m.observers = observers[k];
        let obs = observers[k].max(1) as f64;
        m.bytes_per_observer = obs_bytes[k] as f64 / obs;
        m.bytes_per_observer_per_s = m.bytes_per_observer / window_s.max(1e-9);
        m.diff_frames_per_observer = frames[k] as f64 / obs;
        m.diff_joins_seen = seen[k];
        m.diff_latency = Latency::of(&lat[k]);
        m.errors = errors.clone();
        if m.mode == "selective" {
            m.subscribed = subscribed;
            m.subscribe_refused = refused;
        }
    }
    // Harness errors: nothing churned, nothing seen, a refused subscription.
    if leaves + rejoins == 0 {
        return Err(format!("no churn event completed: {}", top_error(&errors)));
    }
    for m in modes.iter_mut() {
        if m.mode == "selective" && m.subscribe_refused > 0 {
            let reason = errors
                .keys()
                .find(|k| k.starts_with("presence_subscribe refused"))
                .cloned()
                .unwrap_or_default();
            m.failure = Some(format!(
                "the node refused presence_subscribe for {} of {} selective observers ({reason}): no selective presence on this node",
                m.subscribe_refused, m.observers
            ));
        } else if m.mode != "relevant-set" && m.diff_joins_seen == 0 {
            m.failure = Some(format!(
                "observers saw no churner join in any presence_diff: {}",
                top_error(&errors)
            ));
        }
    }
    Ok(())
}

/// `PUT /realtime/v1/api/rooms/<room>` with `{"host": <key>}`.
fn set_host(server: SocketAddr, room: &str, key: &str) -> Result<(), String> {
    let body = serde_json::json!({ "host": key }).to_string();
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))
        .map_err(|e| format!("admin connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "PUT /realtime/v1/api/rooms/{room} HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("admin send: {e}"))?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp.lines().next().unwrap_or_default().to_string();
    if status
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'))
    {
        Ok(())
    } else {
        Err(format!("PUT /realtime/v1/api/rooms/{room}: {status}"))
    }
}

fn audio(p: &Params, rp: &RoomParams, paths: &Paths, r: &mut RunResult) -> Audio {
    let mut a = Audio::default();
    r.sessions_requested = rp.listeners + rp.flooders + 1;
    let server = match Server::start_chorus_with(paths, &[]) {
        Ok(s) => s,
        Err(e) => {
            r.failure = Some(format!("server did not start: {e}"));
            return a;
        }
    };
    r.version = server.version.clone();
    let mut rss = Rss {
        pid: server.pid,
        peak_kib: 0,
    };
    if let Err(e) = drive_audio(server.addr, p, rp, r, &mut a, &mut rss) {
        r.failure = Some(e);
    }
    rss.sample();
    r.rss_peak_kib = rss.peak_kib;
    let mut server = server;
    if r.failure.is_none() && !server.alive() {
        r.failure = Some(format!(
            "server exited during the run: {}",
            server.log_tail()
        ));
    }
    server.stop();
    a
}

fn drive_audio(
    server: SocketAddr,
    p: &Params,
    rp: &RoomParams,
    r: &mut RunResult,
    a: &mut Audio,
    rss: &mut Rss,
) -> Result<(), String> {
    let room = "stage";
    set_host(server, room, HOST_KEY)?;
    let base = base_spec(server, p, rp, room);
    // The host alone in its loader (the flood it receives nothing of must
    // not delay its ticks), the flooders in another, then the listeners.
    let mut groups = vec![Group {
        role: Role::Host,
        first_id: 0,
        count: 1,
    }];
    groups.extend(split(
        Role::Flooder,
        1 + rp.listeners,
        rp.flooders,
        rp.clients_per_worker,
    ));
    groups.extend(split(
        Role::Listener,
        1,
        rp.listeners,
        rp.clients_per_worker,
    ));
    let specs = one_per_group(&base, groups);
    let mut loaders = Loaders::start(&specs)?;
    let ready = match loaders.ready(Duration::from_secs_f64(p.connect_timeout_s + 30.0)) {
        Ok(x) => x,
        Err(e) => {
            loaders.kill();
            return Err(e);
        }
    };
    let mut failed = 0;
    for rd in &ready {
        r.sessions_joined += rd.joined;
        failed += rd.failed;
        merge_errors(&mut r.errors, &rd.errors);
    }
    if failed > 0 {
        let _ = loaders.finish();
        return Err(format!(
            "{failed} of {} sessions failed to join: {}",
            r.sessions_requested,
            top_error(&r.errors)
        ));
    }
    eprintln!("   joined {} sessions", r.sessions_joined);
    let mut bytes = vec![0; specs.len()];
    loaders.settle(Duration::from_secs_f64(rp.settle_max_s), rss);
    loaders.say("go");
    loaders.wait(Duration::from_secs_f64(p.duration_s), &mut bytes, rss);
    loaders.say("flood");
    loaders.wait(Duration::from_secs_f64(p.duration_s), &mut bytes, rss);
    loaders.say("end");
    loaders.wait(Duration::from_secs_f64(p.drain_s), &mut bytes, rss);
    let done = loaders.finish()?;
    let mut hists: [Histogram<u64>; 2] = [stats::new_histogram(), stats::new_histogram()];
    for d in &done {
        for (hist, encoded) in hists.iter_mut().zip(&d.playback_hists) {
            if let Ok(h) = stats::decode_histogram(encoded) {
                let _ = hist.add(&h);
            }
        }
        a.listeners_joined += d.listeners;
        a.without_flood.playbacks_sent += d.playbacks_sent[0];
        a.with_flood.playbacks_sent += d.playbacks_sent[1];
        a.without_flood.playbacks_received += d.playbacks_received[0];
        a.with_flood.playbacks_received += d.playbacks_received[1];
        a.reactions_sent += d.reactions_sent;
        a.reactions_rate_limited += d.rate_limited;
        a.reactions_individual += d.reactions_individual;
        a.reaction_counts_frames += d.reaction_counts_frames;
        a.reactions_counted += d.reactions_counted;
        a.peak_mode_entries_seen += d.peak_on_seen;
        r.sessions_alive_at_end += d.alive_at_end;
        merge_errors(&mut r.errors, &d.errors);
    }
    for (phase, h) in [&mut a.without_flood, &mut a.with_flood]
        .into_iter()
        .zip(&hists)
    {
        phase.latency = Latency::of(h);
        phase.expected = phase.playbacks_sent * a.listeners_joined;
        if phase.expected > 0 {
            phase.delivered_pct = 100.0 * phase.playbacks_received as f64 / phase.expected as f64;
        }
    }
    if a.without_flood.latency.p99_ms > 0.0 {
        a.p99_ratio = a.with_flood.latency.p99_ms / a.without_flood.latency.p99_ms;
    }
    let accepted = a.reactions_sent.saturating_sub(a.reactions_rate_limited);
    if accepted > 0 && a.listeners_joined > 0 {
        a.reactions_delivered_pct = 100.0 * (a.reactions_individual + a.reactions_counted) as f64
            / (accepted * a.listeners_joined) as f64;
    }
    r.published = a.without_flood.playbacks_sent + a.with_flood.playbacks_sent;
    r.delivered = a.without_flood.playbacks_received + a.with_flood.playbacks_received;
    r.expected_deliveries = a.without_flood.expected + a.with_flood.expected;
    let mut all = hists[0].clone();
    let _ = all.add(&hists[1]);
    r.latency = Latency::of(&all);
    // Harness errors: nothing published, nothing delivered.
    if a.without_flood.playbacks_received == 0 || a.with_flood.playbacks_received == 0 {
        return Err(format!(
            "listeners got no playback in a phase ({} before the flood, {} during): {}",
            a.without_flood.playbacks_received,
            a.with_flood.playbacks_received,
            top_error(&r.errors)
        ));
    }
    if a.reactions_individual + a.reactions_counted == 0 {
        return Err(format!(
            "listeners got no reaction ({} sent): {}",
            a.reactions_sent,
            top_error(&r.errors)
        ));
    }
    Ok(())
}
