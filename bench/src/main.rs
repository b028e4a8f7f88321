//! `chorus-bench`: the load generator and the peer comparison (issue 6).
//!
//! * `run`: one scenario against one system, result JSON under `--out`.
//! * `suite`: every scenario against every system, alternating the order,
//!   then `report`.
//! * `report`: the Markdown table, PNG plots and BENCHMARKS.md from the
//!   latest suite's result files.
//! * `worker`: a loader process (started by `run`, not by hand).

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
}

#[derive(Args)]
struct RunArgs {
    #[arg(long)]
    system: System,
    #[arg(long)]
    scenario: Scenario,
    /// Sessions (connect-storm), subscribers (fan-out), rooms (many-rooms).
    #[arg(long, default_value_t = 1000)]
    clients: u64,
    /// many-rooms: members per room.
    #[arg(long, default_value_t = 10)]
    members: u64,
    /// Messages/s of the publisher (fan-out) or of each member (many-rooms).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Publishing time in seconds (audio-flood: each phase's).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
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
    /// Systems to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "chorus,nats,rabbitmq")]
    systems: Vec<System>,
    /// Systems whose failure makes the exit code non-zero.
    #[arg(long, value_delimiter = ',', default_value = "nats,rabbitmq")]
    require: Vec<System>,
    /// presence-churn and audio-flood run against Chorus only.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "connect-storm,fan-out,many-rooms,presence-churn,audio-flood"
    )]
    scenarios: Vec<Scenario>,
    #[arg(long, default_value_t = 10_000)]
    storm_sessions: u64,
    #[arg(long, default_value_t = 5_000)]
    fanout_subscribers: u64,
    #[arg(long, default_value_t = 50.0)]
    fanout_rate: f64,
    #[arg(long, default_value_t = 1_000)]
    rooms: u64,
    #[arg(long, default_value_t = 10)]
    members: u64,
    #[arg(long, default_value_t = 2.0)]
    room_rate: f64,
    /// Publishing time of each run, seconds.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Do not rewrite BENCHMARKS.md (the tiny suite never does).
    #[arg(long)]
    no_benchmarks_md: bool,
    #[command(flatten)]
    room_loads: RoomArgs,
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

fn apply(common: &Common, mut p: Params) -> Params {
    p.clients_per_worker = common.clients_per_worker;
    p.connect_concurrency = common.connect_concurrency;
    p.payload_bytes = common.payload_bytes;
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
                Scenario::PresenceChurn => a.room_loads.presence(),
                Scenario::AudioFlood => a.room_loads.audio(),
            };
            let p = apply(&a.common, p);
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
        Cmd::Report(a) => match report::write_all(&a.root, &a.out, true) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("report: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn suite(a: SuiteArgs) -> ExitCode {
    let c = &a.common;
    let params: Vec<Params> = a
        .scenarios
        .iter()
        .map(|s| {
            let p = match (s, a.tiny) {
                (Scenario::ConnectStorm, false) => Params::connect_storm(a.storm_sessions),
                (Scenario::FanOut, false) => {
                    Params::fan_out(a.fanout_subscribers, a.fanout_rate, a.duration)
                }
                (Scenario::ManyRooms, false) => {
                    Params::many_rooms(a.rooms, a.members, a.room_rate, a.duration)
                }
                (Scenario::PresenceChurn, false) => a.room_loads.presence(),
                (Scenario::AudioFlood, false) => a.room_loads.audio(),
                (Scenario::ConnectStorm, true) => Params::connect_storm(50),
                (Scenario::FanOut, true) => Params::fan_out(20, 10.0, 2.0),
                (Scenario::ManyRooms, true) => Params::many_rooms(5, 4, 2.0, 2.0),
                (Scenario::PresenceChurn, true) => Params::presence_churn(30, 6, 3.0, 2.0),
                (Scenario::AudioFlood, true) => Params::audio_flood(20, 2, 20.0, 100.0, 1.5),
            };
            let mut p = apply(c, p);
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
            p
        })
        .collect();
    let out = if a.tiny {
        c.out.join("tiny")
    } else {
        c.out.clone()
    };
    let paths = Paths {
        root: c.root.clone(),
    };
    let suite_id = format!("{}", payload::now_ns() / 1_000_000_000);
    let mut files = Vec::new();
    let mut required_failed = Vec::new();
    for (i, p) in params.iter().enumerate() {
        // Alternate who goes first, so no system always gets the coldest
        // (or warmest) machine.
        let mut order = a.systems.clone();
        let n = order.len().max(1);
        order.rotate_left(i % n);
        if p.scenario.is_room() {
            // Chorus extensions: no peer has them; their baselines are
            // Chorus runs of the same scenario.
            order.retain(|s| *s == System::Chorus);
        }
        for system in order {
            let result = driver::run(system, p, &paths);
            if !result.ok() && (a.require.contains(&system) || p.scenario.is_room()) {
                required_failed.push(format!(
                    "{system} {}: {}",
                    p.scenario,
                    result.failure.clone().unwrap_or_default()
                ));
            }
            match report::save_run(&out.join("runs"), &suite_id, &result) {
                Ok(path) => files.push(path),
                Err(e) => eprintln!("could not save the result: {e}"),
            }
        }
    }
    if let Err(e) = report::save_suite(&out, &suite_id, a.tiny, &files) {
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
            eprintln!("required system failed: {f}");
        }
        ExitCode::FAILURE
    }
}
