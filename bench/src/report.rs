//! Results on disk and what is made of them: one JSON file per run, a
//! suite index, the Markdown table, the PNG plots and BENCHMARKS.md. Every
//! figure in the table is read from the results files; nothing is typed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::driver::RunResult;
use crate::plot;
use crate::proto::System;
use crate::scenario::{Params, Scenario};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteIndex {
    pub id: String,
    pub tiny: bool,
    pub machine: Machine,
    /// Run files, relative to the suite index.
    pub runs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub open_files_limit: String,
}

impl Machine {
    pub fn here() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let limits = fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let nofile = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| {
                l.split_whitespace()
                    .skip(3)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        Machine {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            open_files_limit: nofile,
        }
    }
}

fn rel_display(p: &Path) -> String {
    p.display().to_string()
}

/// Writes `<dir>/<suite>-<scenario>-<system>.json`.
pub fn save_run(dir: &Path, suite_id: &str, r: &RunResult) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let scenario = r
        .params
        .as_ref()
        .map(|p| p.scenario.name())
        .unwrap_or("unknown");
    let system = r.system.map(System::name).unwrap_or("unknown");
    let path = dir.join(format!("{suite_id}-{scenario}-{system}.json"));
    let json = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
    fs::write(&path, json).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Writes `<out>/suite-<id>.json` and `<out>/latest-suite.json`.
pub fn save_suite(out: &Path, id: &str, tiny: bool, runs: &[PathBuf]) -> Result<(), String> {
    fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let runs = runs
        .iter()
        .map(|p| {
            p.strip_prefix(out)
                .map(rel_display)
                .unwrap_or_else(|_| rel_display(p))
        })
        .collect();
    let index = SuiteIndex {
        id: id.to_string(),
        tiny,
        machine: Machine::here(),
        runs,
    };
    let json = serde_json::to_string_pretty(&index).map_err(|e| e.to_string())?;
    for name in [format!("suite-{id}.json"), "latest-suite.json".to_string()] {
        let path = out.join(name);
        fs::write(&path, &json).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Scenarios taken from older suites, with the suite's id.
type Older = Vec<(Scenario, String)>;

fn read_suite(out: &Path, name: &str) -> Result<(SuiteIndex, Vec<RunResult>), String> {
    let path = out.join(name);
    let text = fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let index: SuiteIndex =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut runs = Vec::new();
    for f in &index.runs {
        let p = out.join(f);
        let text = fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        runs.push(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    Ok((index, runs))
}

/// The latest suite's runs and, for each scenario it did not run, the runs
/// of the newest earlier full-size suite that did (so rerunning only some
/// scenarios, e.g. the Chorus-only room ones, keeps the other tables).
/// Also returns `(scenario, suite id)` for what came from an older suite.
fn load(out: &Path) -> Result<(SuiteIndex, Vec<RunResult>, Older), String> {
    let (index, mut runs) = read_suite(out, "latest-suite.json")?;
    let mut older = Vec::new();
    if index.tiny {
        return Ok((index, runs, older));
    }
    let scenario_of = |r: &RunResult| r.params.as_ref().map(|p| p.scenario);
    let mut covered: Vec<Scenario> = runs.iter().filter_map(scenario_of).collect();
    let latest: u64 = index.id.parse().unwrap_or(u64::MAX);
    let mut ids: Vec<u64> = fs::read_dir(out)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("suite-")?
                        .strip_suffix(".json")?
                        .parse()
                        .ok()
                })
                .filter(|id| *id < latest)
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    for id in ids {
        let Ok((earlier, earlier_runs)) = read_suite(out, &format!("suite-{id}.json")) else {
            continue;
        };
        if earlier.tiny {
            continue;
        }
        let mut added = Vec::new();
        for r in earlier_runs {
            match scenario_of(&r) {
                Some(s) if !covered.contains(&s) => {
                    if !added.contains(&s) {
                        added.push(s);
                        older.push((s, earlier.id.clone()));
                    }
                    runs.push(r);
                }
                _ => {}
            }
        }
        covered.extend(added);
    }
    Ok((index, runs, older))
}

/// One table row: a label and how to read the figure from a result.
struct Metric {
    label: &'static str,
    get: fn(&RunResult) -> f64,
    digits: usize,
}

fn metrics(s: Scenario) -> Vec<Metric> {
    let mut m = match s {
        Scenario::ConnectStorm => vec![
            Metric {
                label: "sessions joined",
                get: |r| r.sessions_joined as f64,
                digits: 0,
            },
            Metric {
                label: "sessions/s",
                get: |r| r.sessions_per_s,
                digits: 0,
            },
            Metric {
                label: "connect+join p50 (ms)",
                get: |r| r.join_latency.p50_ms,
                digits: 2,
            },
            Metric {
                label: "connect+join p99 (ms)",
                get: |r| r.join_latency.p99_ms,
                digits: 2,
            },
        ],
        Scenario::FanOut | Scenario::ManyRooms => vec![
            Metric {
                label: "deliveries/s",
                get: |r| r.deliveries_per_s,
                digits: 0,
            },
            Metric {
                label: "delivered (% of expected)",
                get: |r| r.delivered_pct,
                digits: 2,
            },
            Metric {
                label: "latency p50 (ms)",
                get: |r| r.latency.p50_ms,
                digits: 2,
            },
            Metric {
                label: "latency p99 (ms)",
                get: |r| r.latency.p99_ms,
                digits: 2,
            },
            Metric {
                label: "latency p99.9 (ms)",
                get: |r| r.latency.p999_ms,
                digits: 2,
            },
            Metric {
                label: "latency max (ms)",
                get: |r| r.latency.max_ms,
                digits: 2,
            },
            Metric {
                label: "published",
                get: |r| r.published as f64,
                digits: 0,
            },
        ],
        // Their own tables (`rooms::report`).
        Scenario::PresenceChurn | Scenario::AudioFlood => Vec::new(),
    };
    m.push(Metric {
        label: "server RSS per session (KiB)",
        get: |r| r.rss_per_session_kib,
        digits: 1,
    });
    m.push(Metric {
        label: "server peak RSS (MiB)",
        get: |r| r.rss_peak_kib as f64 / 1024.0,
        digits: 1,
    });
    m
}

pub fn fmt_num(v: f64, digits: usize) -> String {
    if digits == 0 {
        let s = format!("{:.0}", v);
        // thousands separators for readability
        let neg = s.starts_with('-');
        let d: Vec<char> = s.trim_start_matches('-').chars().collect();
        let mut out = String::new();
        for (i, c) in d.iter().enumerate() {
            if i > 0 && (d.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(*c);
        }
        if neg {
            format!("-{out}")
        } else {
            out
        }
    } else {
        format!("{v:.digits$}")
    }
}

pub fn cell_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The Markdown tables of a suite, one per scenario.
pub fn table(runs: &[RunResult]) -> String {
    let mut by_scenario: BTreeMap<Scenario, Vec<&RunResult>> = BTreeMap::new();
    for r in runs {
        if let Some(p) = r.params.as_ref().filter(|p| !p.scenario.is_room()) {
            by_scenario.entry(p.scenario).or_default().push(r);
        }
    }
    let mut md = String::new();
    for (scenario, mut rs) in by_scenario {
        rs.sort_by_key(|r| r.system);
        let params: Option<&Params> = rs.first().and_then(|r| r.params.as_ref());
        let _ = writeln!(
            md,
            "### {scenario}: {}\n",
            params.map(Params::describe).unwrap_or_default()
        );
        let chorus = rs
            .iter()
            .find(|r| r.system == Some(System::Chorus))
            .copied();
        let peers: Vec<&RunResult> = rs
            .iter()
            .filter(|r| r.system != Some(System::Chorus))
            .copied()
            .collect();
        let mut head = String::from("| |");
        let mut sep = String::from("|---|");
        for r in &rs {
            let _ = write!(head, " {} |", r.system.map(System::label).unwrap_or("?"));
            sep.push_str("---:|");
        }
        if chorus.is_some() {
            for p in &peers {
                let _ = write!(
                    head,
                    " Chorus/{} |",
                    p.system.map(System::label).unwrap_or("?")
                );
                sep.push_str("---:|");
            }
        }
        let _ = writeln!(md, "{head}\n{sep}");
        let _ = write!(md, "| status |");
        for r in &rs {
            match &r.failure {
                None => md.push_str(" ran |"),
                Some(f) => {
                    let _ = write!(md, " did not run: {} |", cell_escape(f));
                }
            }
        }
        if chorus.is_some() {
            for _ in &peers {
                md.push_str(" |");
            }
        }
        md.push('\n');
        for m in metrics(scenario) {
            let _ = write!(md, "| {} |", m.label);
            for r in &rs {
                if r.ok() {
                    let _ = write!(md, " {} |", fmt_num((m.get)(r), m.digits));
                } else {
                    md.push_str(" — |");
                }
            }
            if let Some(c) = chorus {
                for p in &peers {
                    let (cv, pv) = ((m.get)(c), (m.get)(p));
                    if c.ok() && p.ok() && pv > 0.0 {
                        let _ = write!(md, " {:.2}× |", cv / pv);
                    } else {
                        md.push_str(" — |");
                    }
                }
            }
            md.push('\n');
        }
        let _ = writeln!(
            md,
            "\nVersions: {}\n",
            rs.iter()
                .filter(|r| !r.version.is_empty())
                .map(|r| format!(
                    "{} = `{}`",
                    r.system.map(System::label).unwrap_or("?"),
                    r.version.lines().next().unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    md
}

/// Charts of the suite; returns the file names written (relative to `out`)
/// and the errors met.
fn plots(out: &Path, runs: &[RunResult]) -> (Vec<String>, Vec<String>) {
    let mut written = Vec::new();
    let mut errors = Vec::new();
    for scenario in Scenario::ALL.into_iter().filter(|s| !s.is_room()) {
        let mut rs: Vec<&RunResult> = runs
            .iter()
            .filter(|r| r.params.as_ref().map(|p| p.scenario) == Some(scenario))
            .collect();
        if rs.is_empty() {
            continue;
        }
        rs.sort_by_key(|r| r.system);
        let label = |r: &RunResult| r.system.map(System::label).unwrap_or("?").to_string();
        let ok: Vec<&RunResult> = rs.iter().filter(|r| r.ok()).copied().collect();
        let mut draw = |name: String, res: Result<(), String>| match res {
            Ok(()) => written.push(name),
            Err(e) => errors.push(format!("{name}: {e}")),
        };
        match scenario {
            Scenario::ConnectStorm => {
                let name = format!("{scenario}-sessions-per-s.png");
                let series: Vec<(String, f64)> =
                    ok.iter().map(|r| (label(r), r.sessions_per_s)).collect();
                draw(
                    name.clone(),
                    plot::bars(
                        &out.join(&name),
                        "connect storm: sessions joined per second",
                        "sessions/s",
                        &series,
                    ),
                );
            }
            _ => {
                let name = format!("{scenario}-latency.png");
                let series: Vec<_> = ok.iter().map(|r| (label(r), r.latency)).collect();
                draw(
                    name.clone(),
                    plot::latency(
                        &out.join(&name),
                        &format!("{scenario}: publish-to-receive latency"),
                        &series,
                    ),
                );
                let name = format!("{scenario}-throughput.png");
                let series: Vec<_> = ok.iter().map(|r| (label(r), r.deliveries_per_s)).collect();
                draw(
                    name.clone(),
                    plot::bars(
                        &out.join(&name),
                        &format!("{scenario}: deliveries per second"),
                        "deliveries/s",
                        &series,
                    ),
                );
            }
        }
        let name = format!("{scenario}-rss.png");
        let series: Vec<_> = rs
            .iter()
            .map(|r| (label(r), r.rss_series.clone()))
            .collect();
        draw(
            name.clone(),
            plot::rss(
                &out.join(&name),
                &format!("{scenario}: server resident memory"),
                &series,
            ),
        );
    }
    (written, errors)
}

/// results.md, the plots, and (when `benchmarks_md`) BENCHMARKS.md at `root`.
pub fn write_all(root: &Path, out: &Path, benchmarks_md: bool) -> Result<(), String> {
    let (index, runs, older) = load(out)?;
    let mut tables = String::new();
    if !older.is_empty() {
        let list: Vec<String> = older
            .iter()
            .map(|(s, id)| format!("{s} (suite {id})"))
            .collect();
        let _ = writeln!(
            tables,
            "Not run in this suite, so taken from the newest earlier suite that ran them: {}.\n",
            list.join(", ")
        );
    }
    tables.push_str(&table(&runs));
    tables.push_str(&crate::rooms::report::tables(&runs));
    let (pngs, plot_errors) = plots(out, &runs);
    for e in &plot_errors {
        eprintln!("warning: {e}");
    }
    let results_md = format!(
        "# Suite {}{}\n\n{tables}",
        index.id,
        if index.tiny {
            " (tiny: checks the harness, not a measurement)"
        } else {
            ""
        }
    );
    let path = out.join("results.md");
    fs::write(&path, results_md).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    if benchmarks_md {
        let rel_out = out.strip_prefix(root).unwrap_or(out);
        let mut md = benchmarks_md_text(&index, &tables, &pngs, &plot_errors, rel_out);
        md.push_str(&other_harnesses(out));
        let path = root.join("BENCHMARKS.md");
        fs::write(&path, md).map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The reports other harnesses wrote next to ours, embedded as they are
/// (headings demoted): the platform bench (`bench/platform.py`: Chorus
/// against stock lunatic on one guest) and the newest data-service bench
/// (`host-bridge/examples/store_bench.rs`).
fn other_harnesses(out: &Path) -> String {
    let newest_store = fs::read_dir(out).ok().and_then(|dir| {
        dir.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("store-") && n.ends_with(".md"))
            .max()
    });
    let sources = [
        (
            "Runtime: Chorus against stock lunatic (platform bench)",
            Some("platform-latest.md".to_string()),
            "python3 bench/platform.py --sizes 1000,5000,20000,100000 --repeat 3",
        ),
        (
            "Data service (store bench)",
            newest_store,
            "cargo run --release -p chorus-host --example store_bench",
        ),
    ];
    let mut md = String::new();
    for (title, file, command) in sources {
        let _ = write!(md, "\n## {title}\n\nReproduce: `{command}`.\n\n");
        match file.and_then(|f| fs::read_to_string(out.join(&f)).ok().map(|t| (f, t))) {
            Some((f, text)) => {
                let _ = writeln!(md, "From `{f}`:\n");
                for line in text.lines() {
                    if line.starts_with('#') {
                        let _ = writeln!(md, "##{line}");
                    } else {
                        let _ = writeln!(md, "{line}");
                    }
                }
            }
            None => md.push_str("Not run yet: no results file.\n"),
        }
    }
    md
}

fn benchmarks_md_text(
    index: &SuiteIndex,
    tables: &str,
    pngs: &[String],
    plot_errors: &[String],
    rel_out: &Path,
) -> String {
    let m = &index.machine;
    let mut md = String::new();
    let _ = write!(
        md,
        "# Benchmarks\n\n\
<!-- Generated by `chorus-bench report` from the files under {out}/. Do not edit by hand: every figure comes from a results file. -->\n\n\
Chorus against the systems a WhatsSound operator would otherwise pick, in the same run, on the same machine, with the same load generator (`bench/`, issue 6).\n\n\
## Reproduce\n\n\
```sh\nscripts/bench.sh          # standard suite, under 18 minutes; rewrites this file\nscripts/bench.sh --tiny   # seconds; only checks that the harness works (CI)\n```\n\n\
One scenario against one system: `target/release/chorus-bench run --system nats --scenario fan-out --clients 5000 --rate 50 --duration 15`. Results land in `{out}/runs/`; `chorus-bench report` rewrites the table, the plots and this file from `{out}/latest-suite.json`.\n\n\
## Method\n\n\
* **Load generator**: `chorus-bench`, Rust on tokio, one current-thread runtime per loader process; the driver re-runs itself as `worker` processes (at most `clients_per_worker` clients each, below the 20,000 open files one process may hold), each connecting from its own loopback address 127.0.0.x. Its WebSocket framing is Chorus' own sans-IO codec (`chorus_core::ws`), with masked client frames and a random key per connection.\n\
* **Clients**: Chorus is spoken to as `@supabase/realtime-js` does (Phoenix vsn 2.0.0: `phx_join` with `broadcast.self=false, ack=false`, publishes as kind-3 binary frames, broadcasts received as kind-4 frames, heartbeat every 25 s); NATS with its text protocol over its WebSocket listener (`CONNECT` with `echo:false`, `SUB`, `PUB`, `PING`/`PONG` to confirm); RabbitMQ with MQTT 3.1.1 over WebSocket (`mqtt` subprotocol, clean session, QoS 0). Every system is at its lowest durability: nothing persisted.\n\
* **Payload**: the same ~{pb}-byte JSON object for every system, carrying the publish time (ns since the Unix epoch, one clock, one machine) and the publisher's id. **Latency** is receive time minus publish time, per delivery, in HDR histograms (µs, 3 significant digits) merged across loaders. Receivers skip their own messages (MQTT 3.1.1 echoes them; the others are told not to).\n\
* **Deliveries/s** = messages received by all subscribers ÷ the publishing time (or the time until the last delivery, if later). *Delivered %* compares with published × subscribers.\n\
* **Memory**: the server process's VmRSS (`/proc/<pid>/status`), sampled every 250 ms; *per session* = (RSS after every session joined − RSS before the first) ÷ sessions.\n\
* **Order**: scenario by scenario; within each, every system in turn, the starting system rotating from one scenario to the next. Each system is started fresh for each run by the bench and stopped after it.\n\
* **Peers' settings** (for their best, not their defaults): NATS 2.9 with logging off, `max_pending` 64 MB, `write_deadline` 10 s. RabbitMQ 3.10 (Web-MQTT) with `web_mqtt.max_connections = infinity` (Ranch's default of 1,024 connections is why it served 100 subscribers but nothing to 1,000+ at first), backlog 4096, 16 acceptors, memory watermark 8 GB, disk floor 10 MB, Erlang process limit 4M, port limit 1M, open-files soft limit raised to the hard limit.\n\
* **Room scenarios** (issue 5, `bench/src/rooms/`): *presence-churn* and *audio-flood* exercise Chorus extensions no peer has (selective presence, large-room relevant sets, audio/reaction lanes, peak mode), so they run against Chorus only and compare Chorus with Chorus baselines of the same run, as ratios. Their clients speak the same realtime-js wire protocol; how each figure is taken is written above its table. Only: `chorus-bench suite --systems chorus --scenarios presence-churn,audio-flood` (`--help` lists the loads).\n\
* A run that fails says so in the table (`did not run: <why>`) instead of showing a number.\n\n\
## Machine\n\n\
{cpu}, {cores} cores, {mem} GiB RAM, Linux {kernel}, open files per process {nofile}. The load generator and the server share the cores.\n\n\
## Latest results (suite {id})\n\n",
        out = rel_out.display(),
        pb = 100,
        cpu = m.cpu,
        cores = m.cores,
        mem = m.memory_gib,
        kernel = m.kernel,
        nofile = m.open_files_limit,
        id = index.id,
    );
    md.push_str(tables);
    if !pngs.is_empty() {
        md.push_str("### Plots\n\n");
        for p in pngs {
            let _ = writeln!(md, "![{p}]({}/{p})\n", rel_out.display());
        }
    }
    for e in plot_errors {
        let _ = writeln!(md, "* plot not drawn: {e}");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    fn result(system: System, failure: Option<&str>, dps: f64) -> RunResult {
        RunResult {
            system: Some(system),
            params: Some(Params::fan_out(100, 10.0, 1.0)),
            failure: failure.map(String::from),
            deliveries_per_s: dps,
            latency: Latency {
                p99_ms: 2.0,
                ..Latency::default()
            },
            ..RunResult::default()
        }
    }

    #[test]
    fn table_shows_ratios_and_failures_never_numbers() {
        let runs = vec![
            result(System::Chorus, None, 500.0),
            result(System::Nats, None, 1000.0),
            result(System::Rabbitmq, Some("delivered 0 of 10"), 0.0),
        ];
        let md = table(&runs);
        assert!(
            md.contains("| deliveries/s | 500 | 1,000 | — | 0.50× | — |"),
            "{md}"
        );
        assert!(md.contains("did not run: delivered 0 of 10"), "{md}");
    }
}
