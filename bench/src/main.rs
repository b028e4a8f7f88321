//! `chorus-bench`: the load generator and the peer comparison (issue 6).
//!
//! * `run`: one scenario against one system, result JSON under `--out`.
//! * `suite`: every scenario against every system, alternating the order,
//!   then `report`.
//! * `report`: the Markdown table, PNG plots and BENCHMARKS.md from the
//!   latest suite's result files.
//! * `cluster`: a control server and N nodes on this machine (CQL store),
//!   one load across them (`cluster.rs`).
//! * `worker`: a loader process (started by `run`, not by hand).

mod cluster;
mod driver;
mod loader;
mod payload;
mod plot;
mod proto;
mod report;
mod rooms;
mod scenario;
mod servers;
mod stats;
mod worker;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::proto::System;
use crate::scenario::{Params, Scenario};
use crate::servers::Paths;

#[derive(Parser)]
#[command(
    name = "chorus-bench",
    about = "Chorus load generator and peer comparison"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One scenario against one system.
    Run(RunArgs),
    /// Every scenario against every system, then the report.
    Suite(SuiteArgs),
    /// One load across a cluster of N nodes on this machine (needs the CQL
    /// store: `scripts/cassandra.sh start`).
    Cluster(ClusterArgs),
    /// Rewrite the table, plots and BENCHMARKS.md from results files.
    Report(ReportArgs),
    /// A loader process (internal).
    #[command(hide = true)]
    Worker { spec: String },
    /// A loader process of the room scenarios (internal).
    #[command(hide = true)]
    RoomWorker { spec: String },
}

#[derive(Args, Clone)]
struct Common {
    /// Repository root (for target/release/chorus and the guest).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Most clients per loader process (each holds one fd per client; a
    /// process may hold 20,000 here).
    #[arg(long, default_value_t = 5000)]
    clients_per_worker: u64,
    /// Joins in flight per loader process.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Clients offer WebSocket compression (`permessage-deflate`); bytes on
    /// the wire are then what a compressing client reads.
    #[arg(long)]
    deflate: bool,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long)]
    system: System,
    #[arg(long)]
    scenario: Scenario,
    /// Sessions (connect-storm, idle), subscribers (fan-out), rooms
    /// (many-rooms, chat-presence).
    #[arg(long, default_value_t = 1000)]
    clients: u64,
    /// many-rooms, chat-presence: members per room.
    #[arg(long, default_value_t = 10)]
    members: u64,
    /// Messages/s of the publisher (fan-out) or of each member (many-rooms).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Publishing time in seconds (audio-flood: each phase's; idle: the
    /// holding time).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// chat-presence: seconds between a member's presence updates.
    #[arg(long, default_value_t = 5.0)]
    presence_every: f64,
    /// Seconds after every session left before the last RSS sample.
    #[arg(long, default_value_t = 5.0)]
    after: f64,
    #[command(flatten)]
    room_loads: RoomArgs,
    #[command(flatten)]
    common: Common,
}

/// The loads of the room scenarios (Chorus only).
#[derive(Args, Clone)]
struct RoomArgs {
    /// presence-churn: members of the room.
    #[arg(long, default_value_t = 1_000)]
    churn_members: u64,
    /// presence-churn: members that leave and rejoin.
    #[arg(long, default_value_t = 40)]
    churners: u64,
    /// presence-churn: leaves per second (and as many rejoins).
    #[arg(long, default_value_t = 20.0)]
    churn_rate: f64,
    /// presence-churn: churn time, seconds.
    #[arg(long, default_value_t = 10.0)]
    churn_duration: f64,
    /// presence-churn: how many of a selective observer's 20 keys churn.
    #[arg(long, default_value_t = 2)]
    subscribed_churners: u64,
    /// audio-flood: listeners.
    #[arg(long, default_value_t = 500)]
    listeners: u64,
    /// audio-flood: flooding clients.
    #[arg(long, default_value_t = 10)]
    flooders: u64,
    /// audio-flood: the host's playback broadcasts per second.
    #[arg(long, default_value_t = 20.0)]
    playback_rate: f64,
    /// audio-flood: reactions per second of each flooder (the node's
    /// default limit is 100 per socket).
    #[arg(long, default_value_t = 100.0)]
    flood_rate: f64,
    /// audio-flood: seconds of each phase (without, then with the flood).
    #[arg(long, default_value_t = 10.0)]
    audio_phase: f64,
}

impl RoomArgs {
    fn presence(&self) -> Params {
        let mut p = Params::presence_churn(
            self.churn_members,
            self.churners,
            self.churn_rate,
            self.churn_duration,
        );
        if let Some(r) = p.room.as_mut() {
            r.subscribed_churners = self.subscribed_churners;
        }
        p
    }

    fn audio(&self) -> Params {
        Params::audio_flood(
            self.listeners,
            self.flooders,
            self.playback_rate,
            self.flood_rate,
            self.audio_phase,
        )
    }
}

#[derive(Args)]
struct SuiteArgs {
    /// The seconds-long CI version: checks the harness works, nothing more.
    #[arg(long)]
    tiny: bool,
    /// Systems to run, comma-separated (RabbitMQ Web-MQTT is left out of
    /// the standard suite for time; `--systems chorus,nats,centrifugo,rabbitmq`
    /// adds it). Default: chorus, nats and centrifugo (in the tiny suite
    /// centrifugo only where its binary is already installed).
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<System>>,
    /// Systems whose failure makes the exit code non-zero (default: NATS,
    /// the reference, in the standard suite; every system that runs in the
    /// tiny one; a failed Chorus-only scenario always fails the suite).
    #[arg(long, value_delimiter = ',')]
    require: Option<Vec<System>>,
    /// chat-presence, presence-churn and audio-flood run against Chorus
    /// only.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "connect-storm,fan-out,many-rooms,idle,chat-presence,presence-churn,audio-flood"
    )]
    scenarios: Vec<Scenario>,
    #[arg(long, default_value_t = 10_000)]
    storm_sessions: u64,
    /// fan-out loads, `<subscribers>x<msg/s>`, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5000x50,10000x25")]
    fanout_loads: Vec<FanoutLoad>,
    /// Runs of each fan-out load per system (p99 is reported per run).
    #[arg(long, default_value_t = 5)]
    repeat: u32,
    /// Publishing time of each fan-out run, seconds.
    #[arg(long, default_value_t = 10.0)]
    fanout_duration: f64,
    #[arg(long, default_value_t = 1_000)]
    rooms: u64,
    #[arg(long, default_value_t = 10)]
    members: u64,
    #[arg(long, default_value_t = 2.0)]
    room_rate: f64,
    /// Publishing time of many-rooms and chat-presence, seconds.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// idle: sessions held on the node (below the 20,000 open files one
    /// process may hold, the server's own files included).
    #[arg(long, default_value_t = 19_000)]
    idle_sessions: u64,
    /// idle: seconds the sessions are held (Chorus heartbeats every 25 s).
    #[arg(long, default_value_t = 30.0)]
    idle_hold: f64,
    /// chat-presence: rooms, members per room, each member's chat rate and
    /// seconds between its presence updates.
    #[arg(long, default_value_t = 100)]
    chat_rooms: u64,
    #[arg(long, default_value_t = 20)]
    chat_members: u64,
    #[arg(long, default_value_t = 1.0)]
    chat_rate: f64,
    #[arg(long, default_value_t = 5.0)]
    presence_every: f64,
    /// Seconds after every session left before the last RSS sample
    /// ("memory comes back").
    #[arg(long, default_value_t = 5.0)]
    after: f64,
    /// Do not rewrite BENCHMARKS.md (the tiny suite never does).
    #[arg(long)]
    no_benchmarks_md: bool,
    #[command(flatten)]
    room_loads: RoomArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ClusterArgs {
    /// Nodes, comma-separated for several cluster sizes (run in turn, the
    /// order rotating between repeats), e.g. `3,1`.
    #[arg(long, value_delimiter = ',', default_value = "6")]
    nodes: Vec<usize>,
    /// many-rooms, fan-out, connect-storm or idle.
    #[arg(long, default_value = "many-rooms")]
    scenario: Scenario,
    /// many-rooms: rooms, members per room and messages per second per
    /// room (each member publishes `room_rate / members`).
    #[arg(long, default_value_t = 10_000)]
    rooms: u64,
    #[arg(long, default_value_t = 10)]
    members: u64,
    #[arg(long, default_value_t = 1.0)]
    room_rate: f64,
    /// fan-out: subscribers of the one room and the publisher's msg/s;
    /// connect-storm, idle: sessions.
    #[arg(long, default_value_t = 5_000)]
    subscribers: u64,
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Publishing (idle: holding) time, seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Runs of each cluster size.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Seconds every loader has to connect and join all its clients.
    #[arg(long, default_value_t = 300.0)]
    connect_timeout: f64,
    /// Seconds after every session left before the last RSS sample.
    #[arg(long, default_value_t = 5.0)]
    after: f64,
    /// The CQL store (`host:port`); default `$CHORUS_SCYLLA_NODES`, else
    /// 127.0.0.1:9042.
    #[arg(long)]
    cql: Option<String>,
    #[arg(long, default_value = "chorus_cluster_bench")]
    keyspace: String,
    /// The control server's port; node k listens on base + k.
    #[arg(long, default_value_t = 47500)]
    base_port: u16,
    /// cluster.node_timeout_ms of the control server and the nodes.
    #[arg(long, default_value_t = 15_000)]
    node_timeout_ms: u64,
    /// Results directory (default bench/results/cluster-scale-<UTC date>).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ReportArgs {
    #[arg(long, default_value = ".")]
    root: PathBuf,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

/// One fan-out load: subscribers and the publisher's rate.
#[derive(Debug, Clone, Copy)]
struct FanoutLoad {
    subscribers: u64,
    rate: f64,
}

impl std::str::FromStr for FanoutLoad {
    type Err = String;
    fn from_str(s: &str) -> Result<FanoutLoad, String> {
        let bad = || format!("bad fan-out load {s:?} (want <subscribers>x<msg/s>, e.g. 5000x50)");
        let (n, r) = s.split_once('x').ok_or_else(bad)?;
        Ok(FanoutLoad {
            subscribers: n.trim().parse().map_err(|_| bad())?,
            rate: r.trim().parse().map_err(|_| bad())?,
        })
    }
}

fn apply(common: &Common, mut p: Params) -> Params {
    p.clients_per_worker = common.clients_per_worker;
    p.connect_concurrency = common.connect_concurrency;
    p.payload_bytes = common.payload_bytes;
    p.deflate = common.deflate;
    p
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Worker { spec } => {
            let spec = match serde_json::from_str(&spec) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("chorus-bench worker: bad spec: {e}");
                    return ExitCode::from(2);
                }
            };
            match worker::main(spec) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chorus-bench worker: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::RoomWorker { spec } => {
            let spec = match serde_json::from_str(&spec) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("chorus-bench room-worker: bad spec: {e}");
                    return ExitCode::from(2);
                }
            };
            match rooms::worker::main(spec) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chorus-bench room-worker: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run(a) => {
            let p = match a.scenario {
                Scenario::ConnectStorm => Params::connect_storm(a.clients),
                Scenario::FanOut => Params::fan_out(a.clients, a.rate, a.duration),
                Scenario::ManyRooms => Params::many_rooms(a.clients, a.members, a.rate, a.duration),
                Scenario::Idle => Params::idle(a.clients, a.duration),
                Scenario::ChatPresence => Params::chat_presence(
                    a.clients,
                    a.members,
                    a.rate,
                    a.presence_every,
                    a.duration,
                ),
                Scenario::PresenceChurn => a.room_loads.presence(),
                Scenario::AudioFlood => a.room_loads.audio(),
            };
            let mut p = apply(&a.common, p);
            p.after_s = a.after;
            let paths = Paths {
                root: a.common.root.clone(),
            };
            let result = driver::run(a.system, &p, &paths);
            match report::save_run(&a.common.out.join("runs"), "single", &result) {
                Ok(path) => eprintln!("result: {}", path.display()),
                Err(e) => eprintln!("could not save the result: {e}"),
            }
            if result.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Suite(a) => suite(a),
        Cmd::Cluster(a) => cluster_cmd(a),
        Cmd::Report(a) => match report::write_all(&a.root, &a.out, true).and_then(|()| {
            // The newest cluster results' summary, by the same renderer.
            cluster::newest_dir(&a.out).map_or(Ok(()), |d| {
                cluster::write_summary(&d).map(|p| eprintln!("wrote {}", p.display()))
            })
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("report: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn cluster_cmd(a: ClusterArgs) -> ExitCode {
    if !cluster::supported(a.scenario) {
        eprintln!(
            "cluster: {} is not a cluster scenario (many-rooms, fan-out, connect-storm, idle)",
            a.scenario
        );
        return ExitCode::from(2);
    }
    if a.nodes.iter().any(|n| *n == 0 || *n > 50) || a.nodes.is_empty() {
        eprintln!("cluster: --nodes wants 1 to 50 nodes per run");
        return ExitCode::from(2);
    }
    if a.members == 0 || a.room_rate <= 0.0 {
        eprintln!("cluster: --members and --room-rate must be above 0");
        return ExitCode::from(2);
    }
    let p = match a.scenario {
        Scenario::ManyRooms => Params::many_rooms(
            a.rooms,
            a.members,
            a.room_rate / a.members as f64,
            a.duration,
        ),
        Scenario::FanOut => Params::fan_out(a.subscribers, a.rate, a.duration),
        Scenario::Idle => Params::idle(a.subscribers, a.duration),
        _ => Params::connect_storm(a.subscribers),
    };
    let mut p = apply(&a.common, p);
    p.after_s = a.after;
    p.connect_timeout_s = a.connect_timeout;
    let setup = cluster::Setup {
        cql: a
            .cql
            .clone()
            .or_else(|| std::env::var("CHORUS_SCYLLA_NODES").ok())
            .unwrap_or_else(|| "127.0.0.1:9042".into()),
        keyspace: a.keyspace.clone(),
        base_port: a.base_port,
        node_timeout_ms: a.node_timeout_ms,
    };
    let dir = a.dir.clone().unwrap_or_else(|| {
        let day: String = report::suite_id_now().chars().take(8).collect();
        a.common.out.join(format!("cluster-scale-{day}"))
    });
    let paths = Paths {
        root: a.common.root.clone(),
    };
    let mut failed = false;
    for rep in 0..a.repeat.max(1) {
        let mut order = a.nodes.clone();
        let len = order.len();
        order.rotate_left(rep as usize % len);
        for n in order {
            let c = cluster::run(&paths, &p, n, &setup);
            failed |= !c.run.ok();
            match cluster::save(&dir, &c) {
                Ok(path) => eprintln!("result: {}", path.display()),
                Err(e) => {
                    eprintln!("could not save the result: {e}");
                    failed = true;
                }
            }
        }
    }
    match cluster::write_summary(&dir) {
        Ok(path) => eprintln!("wrote {}", path.display()),
        Err(e) => {
            eprintln!("{e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The loads of one suite, in order, each with how many runs per system.
fn suite_loads(a: &SuiteArgs) -> Vec<(Params, u32)> {
    let c = &a.common;
    let mut loads = Vec::new();
    for s in &a.scenarios {
        let mut ps: Vec<(Params, u32)> = match (s, a.tiny) {
            (Scenario::ConnectStorm, false) => vec![(Params::connect_storm(a.storm_sessions), 1)],
            (Scenario::FanOut, false) => a
                .fanout_loads
                .iter()
                .map(|l| {
                    (
                        Params::fan_out(l.subscribers, l.rate, a.fanout_duration),
                        a.repeat.max(1),
                    )
                })
                .collect(),
            (Scenario::ManyRooms, false) => vec![(
                Params::many_rooms(a.rooms, a.members, a.room_rate, a.duration),
                1,
            )],
            (Scenario::Idle, false) => vec![(Params::idle(a.idle_sessions, a.idle_hold), 1)],
            (Scenario::ChatPresence, false) => vec![(
                Params::chat_presence(
                    a.chat_rooms,
                    a.chat_members,
                    a.chat_rate,
                    a.presence_every,
                    a.duration,
                ),
                1,
            )],
            (Scenario::PresenceChurn, false) => vec![(a.room_loads.presence(), 1)],
            (Scenario::AudioFlood, false) => vec![(a.room_loads.audio(), 1)],
            (Scenario::ConnectStorm, true) => vec![(Params::connect_storm(50), 1)],
            // Two loads, the first run twice: the report's grouping of repeated
            // runs and of loads is exercised too.
            (Scenario::FanOut, true) => vec![
                (Params::fan_out(20, 10.0, 1.0), 2),
                (Params::fan_out(40, 10.0, 1.0), 1),
            ],
            (Scenario::ManyRooms, true) => vec![(Params::many_rooms(5, 4, 2.0, 1.5), 1)],
            (Scenario::Idle, true) => vec![(Params::idle(60, 1.0), 1)],
            (Scenario::ChatPresence, true) => {
                vec![(Params::chat_presence(3, 4, 2.0, 0.5, 1.5), 1)]
            }
            (Scenario::PresenceChurn, true) => vec![(Params::presence_churn(30, 6, 3.0, 2.0), 1)],
            (Scenario::AudioFlood, true) => {
                vec![(Params::audio_flood(20, 2, 20.0, 100.0, 1.5), 1)]
            }
        };
        for (p, _) in ps.iter_mut() {
            *p = apply(c, p.clone());
            p.after_s = if a.tiny { 0.5 } else { a.after };
            if a.tiny {
                p.drain_s = if s.is_room() { 0.5 } else { 1.0 };
                p.connect_timeout_s = 20.0;
                if let Some(r) = p.room.as_mut() {
                    r.settle_max_s = 2.0;
                    // 30 members: make the room "large" so the relevant-set
                    // path runs too.
                    r.large_room_threshold = Some(10);
                }
            }
        }
        loads.extend(ps);
    }
    loads
}

/// One planned run of a suite.
struct Planned {
    params: Params,
    system: System,
    run: u32,
    runs: u32,
}

/// A rough guess of a run's seconds, to weigh the ETA.
fn estimate_s(p: &Params) -> f64 {
    let connect = p.clients as f64 / 1500.0;
    let body = match p.scenario {
        Scenario::PresenceChurn => 2.0 * (p.duration_s + p.drain_s + 10.0),
        Scenario::AudioFlood => 2.0 * p.duration_s + p.drain_s + 10.0,
        _ => p.duration_s + p.drain_s,
    };
    4.0 + connect + body + p.after_s
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Every run of the suite in order: load by load; for repeated loads,
/// run 1 of every system, then run 2, …; the first system rotates from
/// one round to the next so none always gets the coldest machine.
fn plan(loads: Vec<(Params, u32)>, systems: &[System]) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut round = 0usize;
    for (p, runs) in loads {
        for run in 1..=runs {
            let mut order = systems.to_vec();
            if p.scenario.chorus_only() {
                order.retain(|s| *s == System::Chorus);
            } else {
                let n = order.len().max(1);
                order.rotate_left(round % n);
            }
            round += 1;
            for system in order {
                out.push(Planned {
                    params: p.clone(),
                    system,
                    run,
                    runs,
                });
            }
        }
    }
    out
}

fn suite(a: SuiteArgs) -> ExitCode {
    let c = &a.common;
    let centrifugo = servers::centrifugo_bin();
    let systems = a.systems.clone().unwrap_or_else(|| {
        let mut v = vec![System::Chorus, System::Nats];
        if centrifugo.is_some() || !a.tiny {
            // In the standard suite Centrifugo always has its column: a
            // missing binary shows as a run that did not start, with why.
            v.push(System::Centrifugo);
        }
        v
    });
    if a.tiny && centrifugo.is_none() && a.systems.is_none() {
        eprintln!("centrifugo is not installed: the tiny suite runs without it (scripts/bench.sh builds it for the standard suite)");
    }
    // NATS is the reference: its failing means the harness is broken. A
    // peer that cannot hold a load is a result, shown in the table.
    let require = a.require.clone().unwrap_or_else(|| {
        if a.tiny {
            systems.clone()
        } else {
            vec![System::Nats]
        }
    });
    let planned = plan(suite_loads(&a), &systems);
    let out = if a.tiny {
        c.out.join("tiny")
    } else {
        c.out.clone()
    };
    let paths = Paths {
        root: c.root.clone(),
    };
    let suite_id = report::suite_id_now();
    let load_at_start = report::loadavg();
    eprintln!(
        "suite {suite_id}: {} runs, machine load {load_at_start}",
        planned.len()
    );
    let total_est: f64 = planned.iter().map(|x| estimate_s(&x.params)).sum();
    let started = std::time::Instant::now();
    let mut done_est = 0.0;
    let mut files = Vec::new();
    let mut required_failed = Vec::new();
    let n = planned.len();
    for (k, pl) in planned.iter().enumerate() {
        let p = &pl.params;
        let elapsed = started.elapsed().as_secs_f64();
        let left_est = total_est - done_est;
        let eta = if done_est > 0.0 {
            left_est * elapsed / done_est
        } else {
            left_est
        };
        eprintln!(
            "\n[{}/{}] {} ({}) run {}/{}, {} — elapsed {}, ETA {}",
            k + 1,
            n,
            p.scenario,
            p.load_key(),
            pl.run,
            pl.runs,
            pl.system,
            fmt_secs(elapsed),
            fmt_secs(eta)
        );
        let mut result = driver::run(pl.system, p, &paths);
        result.run = pl.run;
        result.runs = pl.runs;
        done_est += estimate_s(p);
        if !result.ok() && (require.contains(&pl.system) || p.scenario.chorus_only()) {
            required_failed.push(format!(
                "{} {} run {}: {}",
                pl.system,
                p.load_key(),
                pl.run,
                result.failure.clone().unwrap_or_default()
            ));
        }
        match report::save_run(&out.join("runs"), &suite_id, &result) {
            Ok(path) => files.push(path),
            Err(e) => eprintln!("could not save the result: {e}"),
        }
    }
    eprintln!(
        "\nsuite {suite_id}: {n} runs in {}",
        fmt_secs(started.elapsed().as_secs_f64())
    );
    if let Err(e) = report::save_suite(&out, &suite_id, a.tiny, &files, load_at_start) {
        eprintln!("could not save the suite index: {e}");
        return ExitCode::FAILURE;
    }
    let md = !(a.tiny || a.no_benchmarks_md);
    if let Err(e) = report::write_all(&c.root, &out, md) {
        eprintln!("report: {e}");
        return ExitCode::FAILURE;
    }
    if required_failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &required_failed {
            eprintln!("required run failed: {f}");
        }
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_interleaves_repeated_runs_and_keeps_chorus_only_loads_to_chorus() {
        let systems = [System::Chorus, System::Nats, System::Centrifugo];
        let loads = vec![
            (Params::fan_out(10, 1.0, 1.0), 2),
            (Params::chat_presence(2, 2, 1.0, 1.0, 1.0), 1),
        ];
        let p = plan(loads, &systems);
        let got: Vec<(System, u32)> = p.iter().map(|x| (x.system, x.run)).collect();
        assert_eq!(
            got,
            vec![
                (System::Chorus, 1),
                (System::Nats, 1),
                (System::Centrifugo, 1),
                (System::Nats, 2),
                (System::Centrifugo, 2),
                (System::Chorus, 2),
                (System::Chorus, 1),
            ]
        );
        assert!(p.iter().all(|x| x.runs
            == if x.params.scenario == Scenario::FanOut {
                2
            } else {
                1
            }));
    }

    #[test]
    fn fanout_loads_parse_and_refuse_garbage() {
        let l: FanoutLoad = "10000x25".parse().expect("parses");
        assert_eq!((l.subscribers, l.rate), (10_000, 25.0));
        assert!("10000".parse::<FanoutLoad>().is_err());
        assert!("ax5".parse::<FanoutLoad>().is_err());
    }
}
