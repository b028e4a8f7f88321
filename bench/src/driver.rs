//! One run: start the system, spread the clients over loader processes
//! (this binary re-run as `worker`), step them through join → go → stop,
//! sample the server's RSS, and aggregate what the workers report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::loader::{kill_all, loopback, merge_errors, top_error, LoaderProc, Ready};
use crate::payload;
use crate::proto::System;
use crate::rooms::RoomOutcome;
use crate::scenario::{Params, Scenario};
use crate::servers::{cpu_s, pss_kib, rss_kib, Paths, Server};
use crate::stats::{self, Latency};
use crate::worker::{Done, Line, Progress, Wire, WorkerSpec};

/// Everything one run measured; written as one JSON file.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RunResult {
    pub system: Option<System>,
    pub version: String,
    pub params: Option<Params>,
    /// Unix seconds at start.
    pub started_at: u64,
    /// This run's number among the runs of the same load and system in
    /// its suite (1-based), and how many there were.
    #[serde(default)]
    pub run: u32,
    #[serde(default)]
    pub runs: u32,
    /// `None` when the run went through; otherwise why it did not.
    pub failure: Option<String>,
    pub workers: usize,
    pub sessions_requested: u64,
    pub sessions_joined: u64,
    pub connect_s: f64,
    pub sessions_per_s: f64,
    pub join_latency: Latency,
    pub published: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub delivered_pct: f64,
    pub deliveries_per_s: f64,
    pub latency: Latency,
    pub sessions_alive_at_end: u64,
    pub rss_baseline_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_per_session_kib: f64,
    /// The same as proportional set size (`Pss` of `/proc/<pid>/smaps_rollup`):
    /// a page mapped N times counts 1/N each time. Chorus maps its guest's
    /// data image into every process slot, and VmRSS counts each mapping's
    /// pages although the page cache holds them once; PSS does not. For a
    /// server without shared mappings (NATS) the two agree.
    #[serde(default)]
    pub pss_baseline_kib: u64,
    #[serde(default)]
    pub pss_connected_kib: u64,
    #[serde(default)]
    pub pss_per_session_kib: f64,
    /// RSS `after_s` seconds after every session left, and that ÷ the RSS
    /// before the load ("memory comes back"; 0 when not measured).
    #[serde(default)]
    pub rss_after_kib: u64,
    #[serde(default)]
    pub rss_after_ratio: f64,
    /// What the server wrote to the clients, summed over all sessions.
    #[serde(default)]
    pub wire: Wire,
    /// Socket bytes read per session over the run, and per second of the
    /// publishing (or holding) time.
    #[serde(default)]
    pub bytes_per_session: f64,
    #[serde(default)]
    pub bytes_per_session_per_s: f64,
    /// The server process's CPU time (user + system, all threads) while
    /// the sessions connected and joined, and while they published (from
    /// `go` to `stop`, the drain included), in seconds.
    #[serde(default)]
    pub server_cpu_connect_s: f64,
    #[serde(default)]
    pub server_cpu_publish_s: f64,
    /// Server CPU per joined session (connect phase) and per delivered
    /// message (publish phase), in microseconds: the cost of the work,
    /// which CPU contention from other processes on the machine changes
    /// far less than it changes rates (0 when not measured).
    #[serde(default)]
    pub cpu_us_per_session: f64,
    #[serde(default)]
    pub cpu_us_per_delivery: f64,
    /// (seconds since start, KiB)
    pub rss_series: Vec<(f64, u64)>,
    pub errors: BTreeMap<String, u64>,
    /// The room scenarios' own figures (`rooms.rs`).
    #[serde(default)]
    pub room: Option<RoomOutcome>,
    /// Several nodes (the cluster scenarios): deliveries whose receiver is
    /// connected to another node than the message's publisher, and their
    /// latency (0 and empty on one server).
    #[serde(default)]
    pub cross_node_delivered: u64,
    /// Joins the server refused saying to retry, sent again as realtime-js
    /// does (1, 2, 5, 10 s later).
    #[serde(default)]
    pub rejoins: u64,
    #[serde(default)]
    pub cross_node_latency: Latency,
    #[serde(default)]
    pub same_node_latency: Latency,
    /// Several nodes: each one's figures (the totals above are their sums).
    #[serde(default)]
    pub per_server: Vec<ServerFigures>,
}

/// One server process of a multi-node run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ServerFigures {
    pub addr: String,
    pub pid: u32,
    /// Sessions the loaders joined through this node.
    pub sessions_joined: u64,
    /// The node's own `chorus_sockets` gauge once every session joined.
    pub sockets_reported: Option<u64>,
    pub rss_baseline_kib: u64,
    pub rss_connected_kib: u64,
    pub pss_baseline_kib: u64,
    pub pss_connected_kib: u64,
    pub cpu_connect_s: f64,
    pub cpu_publish_s: f64,
}

/// The server processes a run loads: one, or the nodes of a cluster (the
/// loaders place client `id` on `addrs[id % len]`, round robin as a load
/// balancer would). Memory and CPU are summed over `pids`.
pub struct Target {
    pub addrs: Vec<SocketAddr>,
    pub pids: Vec<u32>,
}

impl Target {
    fn sum(&self, f: fn(u32) -> Option<u64>) -> Option<u64> {
        self.pids.iter().map(|p| f(*p)).sum()
    }
    pub fn rss_kib(&self) -> Option<u64> {
        self.sum(rss_kib)
    }
    pub fn pss_kib(&self) -> Option<u64> {
        self.sum(pss_kib)
    }
    pub fn cpu_s(&self) -> Option<f64> {
        self.pids.iter().map(|p| cpu_s(*p)).sum()
    }
    fn cpus(&self) -> Vec<f64> {
        self.pids.iter().map(|p| cpu_s(*p).unwrap_or(0.0)).collect()
    }
    fn multi(&self) -> bool {
        self.addrs.len() > 1
    }
}

impl RunResult {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

fn worker_specs(system: System, addrs: &[SocketAddr], p: &Params) -> Vec<WorkerSpec> {
    let per = p.clients_per_worker.max(1);
    let mut specs = Vec::new();
    let base = WorkerSpec {
        system,
        server: addrs[0],
        servers: if addrs.len() > 1 {
            addrs.to_vec()
        } else {
            Vec::new()
        },
        source: None,
        first_id: 0,
        count: 0,
        members_per_room: 0,
        publish_rate: 0.0,
        payload_bytes: p.payload_bytes,
        duration_ms: (p.duration_s * 1000.0) as u64,
        max_run_ms: ((p.duration_s + p.drain_s) * 1000.0) as u64 + 30_000,
        connect_timeout_ms: (p.connect_timeout_s * 1000.0) as u64,
        connect_concurrency: p.connect_concurrency,
        presence_every_ms: (p.presence_every_s * 1000.0) as u64,
        deflate: p.deflate,
    };
    let mut first = 0;
    while first < p.clients {
        let count = per.min(p.clients - first);
        specs.push(WorkerSpec {
            first_id: first,
            count,
            members_per_room: if p.scenario.in_rooms() || p.scenario == Scenario::Idle {
                p.members_per_room
            } else {
                0
            },
            publish_rate: if p.scenario.in_rooms() { p.rate } else { 0.0 },
            ..base.clone()
        });
        first += count;
    }
    if p.scenario == Scenario::FanOut {
        specs.push(WorkerSpec {
            first_id: p.clients,
            count: 1,
            publish_rate: p.rate,
            ..base
        });
    }
    for (k, s) in specs.iter_mut().enumerate() {
        s.source = loopback(k);
    }
    specs
}

fn unix_now() -> u64 {
    payload::now_ns() / 1_000_000_000
}

/// Runs one scenario against one system and always returns a result (with
/// `failure` set when something did not work).
pub fn run(system: System, params: &Params, paths: &Paths) -> RunResult {
    if params.scenario.is_room() {
        return crate::rooms::run(params, paths);
    }
    let mut r = RunResult {
        system: Some(system),
        params: Some(params.clone()),
        started_at: unix_now(),
        sessions_requested: params.clients,
        ..RunResult::default()
    };
    eprintln!("== {system} {}: {}", params.scenario, params.describe());
    let mut server = match Server::start(system, paths, params.scenario) {
        Ok(s) => s,
        Err(e) => {
            r.failure = Some(format!("server did not start: {e}"));
            eprintln!("   failed: {}", r.failure.as_deref().unwrap_or_default());
            return r;
        }
    };
    r.version = server.version.clone();
    let target = Target {
        addrs: vec![server.addr],
        pids: vec![server.pid],
    };
    measure(&mut r, &target, params);
    if r.failure.is_none() && !server.alive() {
        r.failure = Some(format!(
            "server exited during the run: {}",
            server.log_tail()
        ));
    }
    server.stop();
    match &r.failure {
        None => eprintln!(
            "   done: {} sessions ({:.0}/s), {:.0} deliveries/s ({:.1}%), p50 {:.2} ms p99 {:.2} ms, {:.1} KiB/session (PSS {:.1}), RSS after/before {:.2}x, server CPU {:.1} µs/session {:.2} µs/delivery",
            r.sessions_joined,
            r.sessions_per_s,
            r.deliveries_per_s,
            r.delivered_pct,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.rss_per_session_kib,
            r.pss_per_session_kib,
            r.rss_after_ratio,
            r.cpu_us_per_session,
            r.cpu_us_per_delivery
        ),
        Some(f) => eprintln!("   failed: {f}"),
    }
    r
}

/// The measured part of a run on servers that are up: baseline memory,
/// the RSS series, the loaders (`drive`), memory after every session left,
/// and the per-session figures.
pub fn measure(r: &mut RunResult, target: &Target, params: &Params) {
    std::thread::sleep(Duration::from_millis(500));
    r.rss_baseline_kib = target.rss_kib().unwrap_or(0);
    r.pss_baseline_kib = target.pss_kib().unwrap_or(0);
    if target.multi() {
        r.per_server = target
            .addrs
            .iter()
            .zip(&target.pids)
            .map(|(a, pid)| ServerFigures {
                addr: a.to_string(),
                pid: *pid,
                rss_baseline_kib: rss_kib(*pid).unwrap_or(0),
                pss_baseline_kib: pss_kib(*pid).unwrap_or(0),
                ..ServerFigures::default()
            })
            .collect();
    }

    let t0 = Instant::now();
    let series = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let series = series.clone();
        let sampling = sampling.clone();
        let pids = target.pids.clone();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let kib: Option<u64> = pids.iter().map(|p| rss_kib(*p)).sum();
                if let Some(kib) = kib {
                    if let Ok(mut s) = series.lock() {
                        s.push((t0.elapsed().as_secs_f64(), kib));
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    drive(r, target, params);

    // Memory comes back: every loader is gone (their sockets closed);
    // give the server `after_s` to let go of the sessions.
    if r.sessions_joined > 0 && params.after_s > 0.0 {
        eprintln!(
            "   every session left; waiting {:.1}s for the server to free them",
            params.after_s
        );
        std::thread::sleep(Duration::from_secs_f64(params.after_s));
        r.rss_after_kib = target.rss_kib().unwrap_or(0);
        if r.rss_baseline_kib > 0 {
            r.rss_after_ratio = r.rss_after_kib as f64 / r.rss_baseline_kib as f64;
        }
    }

    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    if let Ok(s) = series.lock() {
        r.rss_series = s.clone();
    }
    r.rss_peak_kib = r.rss_series.iter().map(|(_, k)| *k).max().unwrap_or(0);
    if r.sessions_joined > 0 && r.rss_connected_kib > 0 {
        r.rss_per_session_kib = r.rss_connected_kib.saturating_sub(r.rss_baseline_kib) as f64
            / r.sessions_joined as f64;
        r.pss_per_session_kib = r.pss_connected_kib.saturating_sub(r.pss_baseline_kib) as f64
            / r.sessions_joined as f64;
    }
}

/// Memory of each node (multi-node runs) with the load on; the node's own
/// socket count from its `/metrics`.
fn sample_connected(r: &mut RunResult, target: &Target) {
    r.rss_connected_kib = target.rss_kib().unwrap_or(0);
    r.pss_connected_kib = target.pss_kib().unwrap_or(0);
    for (f, addr) in r.per_server.iter_mut().zip(&target.addrs) {
        f.rss_connected_kib = rss_kib(f.pid).unwrap_or(0);
        f.pss_connected_kib = pss_kib(f.pid).unwrap_or(0);
        f.sockets_reported = crate::cluster::metric(*addr, "chorus_sockets");
    }
}

fn drive(r: &mut RunResult, target: &Target, p: &Params) {
    let specs = worker_specs(r.system.unwrap_or(System::Nats), &target.addrs, p);
    r.workers = specs.len();
    let (tx, rx) = mpsc::channel::<(usize, Line)>();
    let mut procs = Vec::new();
    let connect_started = Instant::now();
    let cpu_at_connect = target.cpu_s();
    let cpus_at_connect = target.cpus();
    for (i, spec) in specs.iter().enumerate() {
        match LoaderProc::start("worker", spec, i, &tx) {
            Ok(w) => procs.push(w),
            Err(e) => {
                r.failure = Some(e);
                kill_all(&mut procs);
                return;
            }
        }
    }
    drop(tx);

    // Join phase.
    let join_deadline = connect_started + Duration::from_secs_f64(p.connect_timeout_s + 30.0);
    let mut ready: Vec<Option<Ready>> = vec![None; procs.len()];
    let mut last_print = Instant::now();
    while ready.iter().any(Option::is_none) {
        let left = join_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            r.failure = Some("loaders did not finish joining in time".into());
            kill_all(&mut procs);
            return;
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok((i, Line::Ready(rd))) => ready[i] = Some(rd),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                r.failure = Some("a loader process died while joining".into());
                kill_all(&mut procs);
                return;
            }
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let done = ready.iter().filter(|x| x.is_some()).count();
            eprintln!(
                "   joining: {:.0}s, {done}/{} loaders ready, server RSS {} MiB",
                connect_started.elapsed().as_secs_f64(),
                procs.len(),
                target.rss_kib().unwrap_or(0) / 1024
            );
        }
    }
    r.connect_s = connect_started.elapsed().as_secs_f64();
    let mut join_hist: Histogram<u64> = stats::new_histogram();
    let mut failed = 0;
    for rd in ready.iter().flatten() {
        r.sessions_joined += rd.joined;
        r.rejoins += rd.rejoins;
        for (f, n) in r.per_server.iter_mut().zip(&rd.joined_per_server) {
            f.sessions_joined += n;
        }
        failed += rd.failed;
        merge_errors(&mut r.errors, &rd.errors);
        if let Ok(h) = stats::decode_histogram(&rd.join_hist) {
            let _ = join_hist.add(&h);
        }
    }
    // The publisher of fan-out is not one of the N sessions.
    r.sessions_joined = r.sessions_joined.min(p.clients);
    r.join_latency = Latency::of(&join_hist);
    r.sessions_per_s = r.sessions_joined as f64 / r.connect_s.max(1e-9);
    for (f, (a, b)) in r
        .per_server
        .iter_mut()
        .zip(cpus_at_connect.iter().zip(target.cpus()))
    {
        f.cpu_connect_s = b - a;
    }
    if let (Some(a), Some(b)) = (cpu_at_connect, target.cpu_s()) {
        r.server_cpu_connect_s = b - a;
        if r.sessions_joined > 0 {
            r.cpu_us_per_session = r.server_cpu_connect_s * 1e6 / r.sessions_joined as f64;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    sample_connected(r, target);
    if failed > 0 {
        r.failure = Some(format!(
            "{failed} of {} sessions failed to join: {}",
            specs.iter().map(|s| s.count).sum::<u64>(),
            top_error(&r.errors)
        ));
    }
    eprintln!(
        "   joined {} sessions in {:.1}s ({:.0}/s), server RSS {} MiB",
        r.sessions_joined,
        r.connect_s,
        r.sessions_per_s,
        r.rss_connected_kib / 1024
    );
    if p.scenario == Scenario::ConnectStorm || r.failure.is_some() {
        for w in procs.iter_mut() {
            w.say("stop");
        }
        collect(r, &rx, &mut procs, p, None);
        return;
    }

    // Publish phase.
    let cpu_at_go = target.cpu_s();
    let cpus_at_go = target.cpus();
    let go_ns = payload::now_ns();
    for w in procs.iter_mut() {
        w.say("go");
    }
    let go = Instant::now();
    let run_for = Duration::from_secs_f64(p.duration_s + p.drain_s);
    let mut progress: Vec<Progress> = vec![Progress::default(); procs.len()];
    let mut early_done: Vec<Option<Done>> = vec![None; procs.len()];
    let mut last = (Instant::now(), 0u64);
    while go.elapsed() < run_for {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((i, Line::Progress(pr))) => progress[i] = pr,
            Ok((i, Line::Done(d))) => early_done[i] = Some(d),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last.0.elapsed() >= Duration::from_secs(1) {
            let sent: u64 = progress.iter().map(|x| x.sent).sum();
            let recv: u64 = progress.iter().map(|x| x.received).sum();
            let alive: u64 = progress.iter().map(|x| x.alive).sum();
            let rate = (recv - last.1.min(recv)) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), recv);
            eprintln!(
                "   {:>5.1}s  sent {sent}  delivered {recv}  {:.0}/s  alive {alive}  server RSS {} MiB",
                go.elapsed().as_secs_f64(),
                rate,
                target.rss_kib().unwrap_or(0) / 1024
            );
        }
    }
    if p.scenario == Scenario::Idle {
        // "With the load": the sessions after holding, heartbeats and all.
        sample_connected(r, target);
    }
    for (f, (a, b)) in r
        .per_server
        .iter_mut()
        .zip(cpus_at_go.iter().zip(target.cpus()))
    {
        f.cpu_publish_s = b - a;
    }
    if let (Some(a), Some(b)) = (cpu_at_go, target.cpu_s()) {
        r.server_cpu_publish_s = b - a;
    }
    for w in procs.iter_mut() {
        w.say("stop");
    }
    collect(r, &rx, &mut procs, p, Some((go_ns, early_done)));
    if r.delivered > 0 && r.server_cpu_publish_s > 0.0 {
        r.cpu_us_per_delivery = r.server_cpu_publish_s * 1e6 / r.delivered as f64;
    }
}

/// Waits for every loader's `done` line (bounded), then aggregates.
fn collect(
    r: &mut RunResult,
    rx: &mpsc::Receiver<(usize, Line)>,
    procs: &mut [LoaderProc],
    p: &Params,
    publish: Option<(u64, Vec<Option<Done>>)>,
) {
    let (go_ns, mut done) = publish.unwrap_or((0, vec![None; procs.len()]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok((i, Line::Done(d))) => done[i] = Some(d),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    kill_all(procs);
    if done.iter().any(Option::is_none) && r.failure.is_none() {
        r.failure = Some("a loader process did not report its results".into());
    }
    let mut lat: Histogram<u64> = stats::new_histogram();
    let mut cross: Histogram<u64> = stats::new_histogram();
    let mut same: Histogram<u64> = stats::new_histogram();
    let mut last_recv = 0;
    for d in done.iter().flatten() {
        r.published += d.sent;
        r.delivered += d.received;
        r.sessions_alive_at_end += d.alive_at_end;
        last_recv = last_recv.max(d.last_recv_ns);
        merge_errors(&mut r.errors, &d.errors);
        if let Ok(h) = stats::decode_histogram(&d.latency_hist) {
            let _ = lat.add(&h);
        }
        r.cross_node_delivered += d.cross_node;
        for (into, from) in [(&mut cross, &d.cross_hist), (&mut same, &d.same_hist)] {
            if let Ok(h) = stats::decode_histogram(from) {
                let _ = into.add(&h);
            }
        }
    }
    r.latency = Latency::of(&lat);
    if r.cross_node_delivered > 0 {
        r.cross_node_latency = Latency::of(&cross);
        r.same_node_latency = Latency::of(&same);
    }
    for d in done.iter().flatten() {
        r.wire.add(&d.wire);
    }
    if r.sessions_joined > 0 {
        r.bytes_per_session = r.wire.socket_bytes as f64 / r.sessions_joined as f64;
        if p.duration_s > 0.0 {
            r.bytes_per_session_per_s = r.bytes_per_session / p.duration_s;
        }
    }
    if !p.scenario.publishes() || go_ns == 0 {
        return;
    }
    let receivers_per_message = match p.scenario {
        Scenario::FanOut => r.sessions_joined,
        _ => p.members_per_room.saturating_sub(1),
    };
    r.expected_deliveries = r.published * receivers_per_message;
    if r.expected_deliveries > 0 {
        r.delivered_pct = 100.0 * r.delivered as f64 / r.expected_deliveries as f64;
    }
    // Rate over the publishing time, or longer if deliveries lagged past it.
    let window_s = (last_recv.saturating_sub(go_ns) as f64 / 1e9).max(p.duration_s);
    r.deliveries_per_s = r.delivered as f64 / window_s.max(1e-9);
    if r.failure.is_none() {
        if r.published == 0 {
            r.failure = Some("the publishers could not publish".into());
        } else if r.delivered_pct < 1.0 {
            let top = r.errors.keys().next().cloned().unwrap_or_default();
            r.failure = Some(format!(
                "delivered {} of {} expected messages ({:.2}%) {top}",
                r.delivered, r.expected_deliveries, r.delivered_pct
            ));
        }
    }
}
