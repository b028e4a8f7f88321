//! Results on disk and what is made of them: one JSON file per run, a
//! suite index, the Markdown tables, the PNG plots and BENCHMARKS.md.
//! Every figure in the tables is read from the results files; nothing is
//! typed. Every table says which suite (and so which date) it comes from.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::driver::RunResult;
use crate::plot::{self, Bar};
use crate::proto::System;
use crate::rooms::RoomOutcome;
use crate::scenario::{Params, Scenario};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteIndex {
    pub id: String,
    pub tiny: bool,
    pub machine: Machine,
    /// Run files, relative to the suite index.
    pub runs: Vec<String>,
    /// `/proc/loadavg` when the suite started and when it ended: how busy
    /// the machine was (other work on it skews every figure).
    #[serde(default)]
    pub load_at_start: String,
    #[serde(default)]
    pub load_at_end: String,
}

/// The machine's load averages now (`/proc/loadavg`'s first three
/// fields), as `uptime` prints them.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
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

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Unix seconds as an ISO 8601 UTC time, `2026-11-29T15:04:05Z`.
pub fn iso_utc(secs: u64) -> String {
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// A new suite's id: its start time, `20261129T150405Z` (sorts by time,
/// fits a file name).
pub fn suite_id_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    iso_utc(secs).replace(['-', ':'], "")
}

/// A suite id as an ISO time: new ids are compact ISO times; older suites
/// were named by Unix seconds.
pub fn suite_date(id: &str) -> String {
    if let Ok(secs) = id.parse::<u64>() {
        return iso_utc(secs);
    }
    let b = id.as_bytes();
    if b.len() == 16 && b[8] == b'T' && b[15] == b'Z' {
        return format!(
            "{}-{}-{}T{}:{}:{}Z",
            &id[0..4],
            &id[4..6],
            &id[6..8],
            &id[9..11],
            &id[11..13],
            &id[13..15]
        );
    }
    id.to_string()
}

/// Writes `<dir>/<suite>-<load>-<system>-r<run>.json`.
pub fn save_run(dir: &Path, suite_id: &str, r: &RunResult) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let load = r
        .params
        .as_ref()
        .map(Params::load_key)
        .unwrap_or_else(|| "unknown".into());
    let system = r.system.map(System::name).unwrap_or("unknown");
    let path = dir.join(format!("{suite_id}-{load}-{system}-r{}.json", r.run.max(1)));
    let json = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
    fs::write(&path, json).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Writes `<out>/suite-<id>.json` and `<out>/latest-suite.json`.
pub fn save_suite(
    out: &Path,
    id: &str,
    tiny: bool,
    runs: &[PathBuf],
    load_at_start: String,
) -> Result<(), String> {
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
        load_at_start,
        load_at_end: loadavg(),
    };
    let json = serde_json::to_string_pretty(&index).map_err(|e| e.to_string())?;
    for name in [format!("suite-{id}.json"), "latest-suite.json".to_string()] {
        let path = out.join(name);
        fs::write(&path, &json).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn read_suite(out: &Path, name: &str) -> Result<(SuiteIndex, Vec<RunResult>), String> {
    let path = out.join(name);
    let text = fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let index: SuiteIndex =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut runs = Vec::new();
    for f in &index.runs {
        let p = out.join(f);
        let text = fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        let mut r: RunResult =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        r.run = r.run.max(1);
        r.runs = r.runs.max(1);
        runs.push(r);
    }
    Ok((index, runs))
}

/// A run with the id of the suite it belongs to.
pub struct Sourced {
    pub suite: String,
    pub run: RunResult,
}

fn load_key(r: &RunResult) -> Option<String> {
    r.params.as_ref().map(Params::load_key)
}

/// The latest suite's runs and, for each load it did not run, the runs of
/// the newest earlier full-size suite that did; every run keeps its
/// suite's id, and the report names it above each table.
fn load(out: &Path) -> Result<(SuiteIndex, Vec<Sourced>), String> {
    let (index, latest) = read_suite(out, "latest-suite.json")?;
    let mut runs: Vec<Sourced> = latest
        .into_iter()
        .map(|run| Sourced {
            suite: index.id.clone(),
            run,
        })
        .collect();
    if index.tiny {
        return Ok((index, runs));
    }
    let mut covered: Vec<String> = runs.iter().filter_map(|s| load_key(&s.run)).collect();
    let latest_date = suite_date(&index.id);
    let mut ids: Vec<String> = fs::read_dir(out)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some(
                        name.strip_prefix("suite-")?
                            .strip_suffix(".json")?
                            .to_string(),
                    )
                })
                .filter(|id| suite_date(id) < latest_date)
                .collect()
        })
        .unwrap_or_default();
    ids.sort_by_key(|id| std::cmp::Reverse(suite_date(id)));
    for id in ids {
        let Ok((earlier, earlier_runs)) = read_suite(out, &format!("suite-{id}.json")) else {
            continue;
        };
        if earlier.tiny {
            continue;
        }
        let mut added = Vec::new();
        for r in earlier_runs {
            match load_key(&r) {
                Some(k) if !covered.contains(&k) => {
                    if !added.contains(&k) {
                        added.push(k);
                    }
                    runs.push(Sourced {
                        suite: earlier.id.clone(),
                        run: r,
                    });
                }
                _ => {}
            }
        }
        covered.extend(added);
    }
    Ok((index, runs))
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    /// A figure of the load, not of the system (e.g. messages published).
    Neither,
}

impl Better {
    fn words(self) -> &'static str {
        match self {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
            Better::Neither => "(the load)",
        }
    }
}

/// One table row: a label and how to read the figure from a result.
struct Metric {
    label: &'static str,
    better: Better,
    get: fn(&RunResult) -> f64,
    digits: usize,
}

fn m(label: &'static str, better: Better, digits: usize, get: fn(&RunResult) -> f64) -> Metric {
    Metric {
        label,
        better,
        get,
        digits,
    }
}

fn metrics(s: Scenario) -> Vec<Metric> {
    use Better::*;
    let joined = m("sessions joined", Higher, 0, |r| r.sessions_joined as f64);
    let per_s = m("sessions joined per second", Higher, 0, |r| {
        r.sessions_per_s
    });
    let mut v = match s {
        Scenario::ConnectStorm => vec![
            joined,
            per_s,
            m("connect+join p50 (ms)", Lower, 2, |r| r.join_latency.p50_ms),
            m("connect+join p99 (ms)", Lower, 2, |r| r.join_latency.p99_ms),
            m("server CPU per session joined (µs)", Lower, 1, |r| {
                r.cpu_us_per_session
            }),
        ],
        Scenario::Idle => vec![
            joined,
            per_s,
            m("sessions alive after holding", Higher, 0, |r| {
                r.sessions_alive_at_end as f64
            }),
            m(
                "bytes from the server per session per second",
                Lower,
                1,
                |r| r.bytes_per_session_per_s,
            ),
        ],
        Scenario::FanOut | Scenario::ManyRooms | Scenario::ChatPresence => vec![
            m("deliveries/s", Higher, 0, |r| r.deliveries_per_s),
            m("delivered (% of expected)", Higher, 2, |r| r.delivered_pct),
            m("latency p50 (ms)", Lower, 2, |r| r.latency.p50_ms),
            m("latency p99 (ms)", Lower, 2, |r| r.latency.p99_ms),
            m("latency p99.9 (ms)", Lower, 2, |r| r.latency.p999_ms),
            m("latency max (ms)", Lower, 2, |r| r.latency.max_ms),
            m("published", Neither, 0, |r| r.published as f64),
            m("server CPU per delivery (µs)", Lower, 2, |r| {
                r.cpu_us_per_delivery
            }),
            per_s,
            m(
                "bytes from the server per session per second",
                Lower,
                0,
                |r| r.bytes_per_session_per_s,
            ),
        ],
        // Their own tables (`rooms::report`).
        Scenario::PresenceChurn | Scenario::AudioFlood => Vec::new(),
    };
    if s == Scenario::ChatPresence {
        v.push(m(
            "chat bytes per session (message payloads)",
            Lower,
            0,
            |r| per_session(r, r.wire.chat_bytes),
        ));
        v.push(m(
            "presence bytes per session (message payloads)",
            Lower,
            0,
            |r| per_session(r, r.wire.presence_bytes),
        ));
        v.push(m(
            "other bytes per session (replies, pings)",
            Lower,
            0,
            |r| per_session(r, r.wire.other_bytes),
        ));
        v.push(m(
            "socket bytes per session (frames included)",
            Lower,
            0,
            |r| r.bytes_per_session,
        ));
    }
    v.extend([
        m("server RSS per session (KiB)", Lower, 1, |r| {
            r.rss_per_session_kib
        }),
        m("server peak RSS (MiB)", Lower, 1, |r| {
            r.rss_peak_kib as f64 / 1024.0
        }),
        m("server RSS before the load (MiB)", Lower, 1, |r| {
            r.rss_baseline_kib as f64 / 1024.0
        }),
        m("server RSS after every session left (MiB)", Lower, 1, |r| {
            r.rss_after_kib as f64 / 1024.0
        }),
        m("RSS after ÷ before (×)", Lower, 2, |r| r.rss_after_ratio),
    ]);
    v
}

fn per_session(r: &RunResult, bytes: u64) -> f64 {
    bytes as f64 / r.sessions_joined.max(1) as f64
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

/// The median of some figures (`None` when there are none).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The runs of one load, per system, each system's runs in run order.
struct Group<'a> {
    scenario: Scenario,
    params: &'a Params,
    suite: &'a str,
    systems: BTreeMap<System, Vec<&'a RunResult>>,
}

impl Group<'_> {
    fn runs(&self) -> u32 {
        self.systems
            .values()
            .flat_map(|v| v.iter().map(|r| r.runs))
            .max()
            .unwrap_or(1)
    }

    /// The median over a system's runs that went through.
    fn value(&self, s: System, get: fn(&RunResult) -> f64) -> Option<f64> {
        let ok: Vec<f64> = self
            .systems
            .get(&s)?
            .iter()
            .filter(|r| r.ok())
            .map(|r| get(r))
            .collect();
        median(ok)
    }

    /// Run `i`'s figure of a system (`None`: absent or failed).
    fn run_value(&self, s: System, i: u32, get: fn(&RunResult) -> f64) -> Option<f64> {
        self.systems
            .get(&s)?
            .iter()
            .find(|r| r.run == i && r.ok())
            .map(|r| get(r))
    }

    fn status(&self, s: System) -> String {
        let Some(rs) = self.systems.get(&s) else {
            return String::new();
        };
        let failed: Vec<&&RunResult> = rs.iter().filter(|r| !r.ok()).collect();
        let why = |r: &RunResult| cell_escape(r.failure.as_deref().unwrap_or_default());
        match (rs.len(), failed.len()) {
            (1, 0) => "ran".into(),
            (n, 0) => format!("ran {n} of {n}"),
            (1, 1) => format!("did not run: {}", why(rs[0])),
            (n, f) if f == n => format!("did not run ({n} runs): {}", why(rs[0])),
            (n, _) => format!(
                "ran {} of {n}; {}",
                n - failed.len(),
                failed
                    .iter()
                    .map(|r| format!("run {} did not run: {}", r.run, why(r)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}

/// Groups the runs by load, in scenario order.
fn groups(runs: &[Sourced]) -> Vec<Group<'_>> {
    let mut by: BTreeMap<(Scenario, String), Group> = BTreeMap::new();
    for s in runs {
        let Some(p) = s.run.params.as_ref() else {
            continue;
        };
        let Some(system) = s.run.system else {
            continue;
        };
        let g = by.entry((p.scenario, p.load_key())).or_insert(Group {
            scenario: p.scenario,
            params: p,
            suite: &s.suite,
            systems: BTreeMap::new(),
        });
        g.systems.entry(system).or_default().push(&s.run);
    }
    let mut out: Vec<Group> = by.into_values().collect();
    for g in &mut out {
        for v in g.systems.values_mut() {
            v.sort_by_key(|r| r.run);
        }
    }
    out
}

fn ratio(c: Option<f64>, p: Option<f64>) -> String {
    match (c, p) {
        (Some(c), Some(p)) if p > 0.0 => format!("{:.2}×", c / p),
        _ => "—".into(),
    }
}

/// Where a table's runs come from, said above it.
fn provenance(suite: &str, latest: &str) -> String {
    if suite == latest {
        format!("From suite {} (the latest).", suite_date(suite))
    } else {
        format!(
            "**From an older suite, {}**: the latest suite ({}) did not run this load.",
            suite_date(suite),
            suite_date(latest)
        )
    }
}

/// The Markdown tables of the peer-comparison loads, one per load.
pub fn table(runs: &[Sourced], latest: &str) -> String {
    let mut md = String::new();
    for g in groups(runs) {
        if g.scenario.is_room() {
            continue;
        }
        let systems: Vec<System> = g.systems.keys().copied().collect();
        let chorus = systems.contains(&System::Chorus);
        let peers: Vec<System> = systems
            .iter()
            .copied()
            .filter(|s| *s != System::Chorus)
            .collect();
        let runs = g.runs();
        let _ = writeln!(md, "### {}: {}\n", g.scenario, g.params.describe());
        let _ = write!(md, "{}", provenance(g.suite, latest));
        if runs > 1 {
            let _ = write!(
                md,
                " Each system ran this load {runs} times (runs interleaved across systems); every figure is the median of its runs that went through; the p99 of every run follows."
            );
        }
        md.push_str("\n\n");
        let mut head = String::from("| | better |");
        let mut sep = String::from("|---|---|");
        for s in &systems {
            let _ = write!(head, " {} |", s.label());
            sep.push_str("---:|");
        }
        if chorus {
            for p in &peers {
                let _ = write!(head, " Chorus ÷ {} |", p.label());
                sep.push_str("---:|");
            }
        }
        let _ = writeln!(md, "{head}\n{sep}");
        let _ = write!(md, "| status | |");
        for s in &systems {
            let _ = write!(md, " {} |", g.status(*s));
        }
        if chorus {
            for _ in &peers {
                md.push_str(" |");
            }
        }
        md.push('\n');
        let row = |md: &mut String,
                   label: String,
                   better: Better,
                   digits: usize,
                   get: &dyn Fn(System) -> Option<f64>| {
            let _ = write!(md, "| {label} | {} |", better.words());
            for s in &systems {
                match get(*s) {
                    Some(v) => {
                        let _ = write!(md, " {} |", fmt_num(v, digits));
                    }
                    None => md.push_str(" — |"),
                }
            }
            if chorus {
                for p in &peers {
                    let _ = write!(md, " {} |", ratio(get(System::Chorus), get(*p)));
                }
            }
            md.push('\n');
        };
        for mt in metrics(g.scenario) {
            row(&mut md, mt.label.to_string(), mt.better, mt.digits, &|s| {
                g.value(s, mt.get)
            });
        }
        if runs > 1 {
            let p99 = |r: &RunResult| r.latency.p99_ms;
            for i in 1..=runs {
                row(
                    &mut md,
                    format!("latency p99, run {i} (ms)"),
                    Better::Lower,
                    2,
                    &|s| g.run_value(s, i, p99),
                );
            }
            row(
                &mut md,
                "latency p99, worst run (ms)".into(),
                Better::Lower,
                2,
                &|s| {
                    (1..=runs)
                        .filter_map(|i| g.run_value(s, i, p99))
                        .reduce(f64::max)
                },
            );
            if chorus && peers.contains(&System::Nats) {
                let (mut le, mut both) = (0, 0);
                for i in 1..=runs {
                    if let (Some(c), Some(n)) = (
                        g.run_value(System::Chorus, i, p99),
                        g.run_value(System::Nats, i, p99),
                    ) {
                        both += 1;
                        if c <= n {
                            le += 1;
                        }
                    }
                }
                let _ = writeln!(
                    md,
                    "\nChorus p99 ≤ NATS p99 in **{le} of {runs}** runs (run i against run i; {both} runs where both went through)."
                );
            }
        }
        let _ = writeln!(
            md,
            "\nVersions: {}\n",
            systems
                .iter()
                .filter_map(|s| {
                    let r = g.systems.get(s)?.iter().find(|r| !r.version.is_empty())?;
                    Some(format!(
                        "{} = `{}`",
                        s.label(),
                        r.version.lines().next().unwrap_or_default()
                    ))
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    md
}

/// The targets of issue 10 that the peer comparison measures, each with
/// what this report's runs show.
pub fn targets(runs: &[Sourced], latest: &str) -> String {
    let gs = groups(runs);
    let mut rows: Vec<[String; 4]> = Vec::new();
    let met = |ok: Option<bool>| match ok {
        Some(true) => "met".to_string(),
        Some(false) => "**not met**".to_string(),
        None => "not measured".to_string(),
    };
    let when = |g: &Group| {
        if g.suite == latest {
            suite_date(g.suite)
        } else {
            format!("{}, an older suite", suite_date(g.suite))
        }
    };
    let c = System::Chorus;
    let n = System::Nats;
    for g in &gs {
        let vs_nats = |get: fn(&RunResult) -> f64| match (g.value(c, get), g.value(n, get)) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let x = |r: Option<f64>| r.map(|v| format!("{v:.2}×")).unwrap_or_else(|| "—".into());
        let load = format!("{} (suite {})", g.params.load_key(), when(g));
        match g.scenario {
            Scenario::ManyRooms => {
                let d = g.value(c, |r| r.delivered_pct);
                rows.push([
                    load.clone(),
                    "100 % delivered".into(),
                    d.map(|v| format!("{v:.2} %")).unwrap_or_else(|| "—".into()),
                    met(d.map(|v| v >= 99.995)),
                ]);
                let r = vs_nats(|r| r.deliveries_per_s);
                rows.push([
                    load.clone(),
                    "deliveries/s ≥ NATS (Chorus ÷ NATS ≥ 1)".into(),
                    x(r),
                    met(r.map(|v| v >= 1.0)),
                ]);
                let r = vs_nats(|r| r.latency.p99_ms);
                rows.push([
                    load,
                    "p99 ≤ NATS (Chorus ÷ NATS ≤ 1)".into(),
                    x(r),
                    met(r.map(|v| v <= 1.0)),
                ]);
            }
            Scenario::FanOut => {
                let runs = g.runs();
                let p99 = |r: &RunResult| r.latency.p99_ms;
                let mut le = 0;
                let mut all = true;
                for i in 1..=runs {
                    match (g.run_value(c, i, p99), g.run_value(n, i, p99)) {
                        (Some(a), Some(b)) if a <= b => le += 1,
                        (Some(_), Some(_)) => {}
                        _ => all = false,
                    }
                }
                let measured = g.systems.contains_key(&c) && g.systems.contains_key(&n);
                rows.push([
                    load.clone(),
                    format!("p99 ≤ NATS in each of {runs} runs"),
                    if measured {
                        format!("{le} of {runs}")
                    } else {
                        "—".into()
                    },
                    met(measured.then_some(all && le == runs)),
                ]);
                // The load is fixed (every system is offered the same
                // messages), so the target compares what was delivered, run
                // i against run i; deliveries/s only differs by when the
                // last delivery of a run landed, and is shown beside it.
                let delivered = |r: &RunResult| r.delivered as f64;
                let (mut ge, mut every) = (0, true);
                for i in 1..=runs {
                    match (g.run_value(c, i, delivered), g.run_value(n, i, delivered)) {
                        (Some(a), Some(b)) if a >= b => ge += 1,
                        (Some(_), Some(_)) => {}
                        _ => every = false,
                    }
                }
                let rate = vs_nats(|r| r.deliveries_per_s);
                rows.push([
                    load,
                    format!(
                        "messages delivered ≥ NATS in each of {runs} runs (deliveries/s: median runs, Chorus ÷ NATS)"
                    ),
                    if measured {
                        format!("{ge} of {runs} (deliveries/s {})", x(rate))
                    } else {
                        "—".into()
                    },
                    met(measured.then_some(every && ge == runs)),
                ]);
            }
            Scenario::ConnectStorm => {
                let r = vs_nats(|r| r.sessions_per_s);
                rows.push([
                    load.clone(),
                    "sessions/s ≥ NATS (Chorus ÷ NATS ≥ 1)".into(),
                    x(r),
                    met(r.map(|v| v >= 1.0)),
                ]);
                let k = g.value(c, |r| r.rss_per_session_kib);
                rows.push([
                    load,
                    "RSS per session ≤ 40 KiB".into(),
                    k.map(|v| format!("{v:.1} KiB"))
                        .unwrap_or_else(|| "—".into()),
                    met(k.map(|v| v <= 40.0)),
                ]);
            }
            Scenario::Idle => {
                let k = g.value(c, |r| r.rss_per_session_kib);
                rows.push([
                    load,
                    "RSS per session ≤ 32 KiB".into(),
                    k.map(|v| format!("{v:.1} KiB"))
                        .unwrap_or_else(|| "—".into()),
                    met(k.map(|v| v <= 32.0)),
                ]);
            }
            _ => {}
        }
        if !g.scenario.is_room() {
            // Memory comes back, every load: the worst of Chorus' runs.
            let worst = g.systems.get(&c).and_then(|rs| {
                rs.iter()
                    .filter(|r| r.ok() && r.rss_after_ratio > 0.0)
                    .map(|r| r.rss_after_ratio)
                    .reduce(f64::max)
            });
            rows.push([
                format!("{} (suite {})", g.params.load_key(), when(g)),
                "RSS after every session left ≤ 1.5 × RSS before the load (worst run)".into(),
                worst
                    .map(|v| format!("{v:.2}×"))
                    .unwrap_or_else(|| "—".into()),
                met(worst.map(|v| v <= 1.5)),
            ]);
        }
    }
    // The loads of the targets that no suite here ran.
    for (key, what) in [
        (
            "connect-storm",
            "sessions/s ≥ NATS, RSS per session ≤ 40 KiB",
        ),
        (
            "fan-out-5000x50",
            "p99 ≤ NATS in each of 5 runs, deliveries ≥ NATS",
        ),
        (
            "fan-out-10000x25",
            "p99 ≤ NATS in each of 5 runs, deliveries ≥ NATS",
        ),
        (
            "many-rooms",
            "100 % delivered, deliveries/s ≥ NATS, p99 ≤ NATS",
        ),
        ("idle", "RSS per session ≤ 32 KiB"),
    ] {
        if !gs.iter().any(|g| g.params.load_key() == key) {
            rows.push([
                format!("{key} (no suite ran it)"),
                what.into(),
                "—".into(),
                met(None),
            ]);
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "| load | target | Chorus (ratios against NATS, same suite) | |\n|---|---|---:|---|\n",
    );
    for r in rows {
        let _ = writeln!(md, "| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    }
    md
}

/// The run of a system whose p99 is the median of its runs (the one the
/// latency chart shows), or `None` when none went through.
fn median_run<'a>(rs: &[&'a RunResult]) -> Option<&'a RunResult> {
    let mut ok: Vec<&RunResult> = rs.iter().copied().filter(|r| r.ok()).collect();
    ok.sort_by(|a, b| a.latency.p99_ms.total_cmp(&b.latency.p99_ms));
    ok.get(ok.len().saturating_sub(1) / 2).copied()
}

/// Charts of the suite; returns the file names written (relative to
/// `out`) and the errors met.
fn plots(out: &Path, runs: &[Sourced]) -> (Vec<String>, Vec<String>) {
    let mut written = Vec::new();
    let mut errors = Vec::new();
    let mut draw = |name: String, res: Result<(), String>| match res {
        Ok(()) => written.push(name),
        Err(e) => errors.push(format!("{name}: {e}")),
    };
    let mut memory: Vec<Bar> = Vec::new();
    for g in groups(runs) {
        let key = g.params.load_key();
        let label = |s: System| s.label().to_string();
        if g.scenario.is_room() {
            let Some(r) = g.systems.get(&System::Chorus).and_then(|v| v.first()) else {
                continue;
            };
            room_plots(out, &key, r, &mut draw);
            continue;
        }
        let bar = |s: System, get: fn(&RunResult) -> f64| Bar {
            label: label(s),
            color: plot::color(s),
            value: g.value(s, get),
        };
        let systems: Vec<System> = g.systems.keys().copied().collect();
        match g.scenario {
            Scenario::ConnectStorm | Scenario::Idle => {
                if g.scenario == Scenario::ConnectStorm {
                    let name = format!("{key}-sessions-per-s.png");
                    let series: Vec<Bar> = systems
                        .iter()
                        .map(|s| bar(*s, |r| r.sessions_per_s))
                        .collect();
                    draw(
                        name.clone(),
                        plot::bars(
                            &out.join(&name),
                            &format!("{key}: sessions joined per second"),
                            "sessions/s (higher is better)",
                            &series,
                        ),
                    );
                }
                let name = format!("{key}-rss-per-session.png");
                let series: Vec<Bar> = systems
                    .iter()
                    .map(|s| bar(*s, |r| r.rss_per_session_kib))
                    .collect();
                draw(
                    name.clone(),
                    plot::bars(
                        &out.join(&name),
                        &format!("{key}: server RSS per session"),
                        "KiB per session (lower is better)",
                        &series,
                    ),
                );
            }
            _ => {
                let name = format!("{key}-latency.png");
                let series: Vec<_> = systems
                    .iter()
                    .map(|s| {
                        let r = g.systems.get(s).and_then(|rs| median_run(rs));
                        (label(*s), plot::color(*s), r.map(|r| r.latency))
                    })
                    .collect();
                let runs = g.runs();
                let title = if runs > 1 {
                    format!("{key}: latency (run with the median p99 of {runs})")
                } else {
                    format!("{key}: publish-to-receive latency")
                };
                draw(
                    name.clone(),
                    plot::latency(&out.join(&name), &title, &series),
                );
                let name = format!("{key}-throughput.png");
                let series: Vec<Bar> = systems
                    .iter()
                    .map(|s| bar(*s, |r| r.deliveries_per_s))
                    .collect();
                draw(
                    name.clone(),
                    plot::bars(
                        &out.join(&name),
                        &format!("{key}: deliveries per second"),
                        "deliveries/s (higher is better)",
                        &series,
                    ),
                );
                if runs > 1 {
                    let name = format!("{key}-p99-per-run.png");
                    let series: Vec<_> = systems
                        .iter()
                        .map(|s| {
                            let v = (1..=runs)
                                .map(|i| g.run_value(*s, i, |r| r.latency.p99_ms))
                                .collect();
                            (label(*s), plot::color(*s), v)
                        })
                        .collect();
                    draw(
                        name.clone(),
                        plot::per_run(
                            &out.join(&name),
                            &format!("{key}: latency p99 of every run"),
                            "p99 (ms; lower is better)",
                            &series,
                        ),
                    );
                }
            }
        }
        let name = format!("{key}-rss.png");
        let series: Vec<_> = systems
            .iter()
            .filter_map(|s| {
                let r = g.systems.get(s)?.first()?;
                Some((label(*s), plot::color(*s), r.ok(), r.rss_series.clone()))
            })
            .collect();
        draw(
            name.clone(),
            plot::rss(
                &out.join(&name),
                &format!("{key}: server resident memory (run 1)"),
                &series,
            ),
        );
        for s in &systems {
            memory.push(Bar {
                label: format!("{key} {}", s.label()),
                color: plot::color(*s),
                value: g.value(*s, |r| r.rss_after_ratio).filter(|v| *v > 0.0),
            });
        }
    }
    if !memory.is_empty() {
        let name = "memory-comes-back.png".to_string();
        draw(
            name.clone(),
            plot::bars(
                &out.join(&name),
                "RSS after every session left ÷ RSS before the load",
                "× (lower is better; target ≤ 1.5)",
                &memory,
            ),
        );
    }
    (written, errors)
}

/// The room scenarios' charts (Chorus against Chorus baselines).
fn room_plots(
    out: &Path,
    key: &str,
    r: &RunResult,
    draw: &mut dyn FnMut(String, Result<(), String>),
) {
    let c = plot::color(System::Chorus);
    match &r.room {
        Some(RoomOutcome::Presence(modes)) => {
            let name = format!("{key}-bytes-per-observer.png");
            let series: Vec<Bar> = modes
                .iter()
                .map(|m| Bar {
                    label: m.mode.clone(),
                    color: c,
                    value: m.failure.is_none().then_some(m.bytes_per_observer),
                })
                .collect();
            draw(
                name.clone(),
                plot::bars(
                    &out.join(&name),
                    &format!("{key}: bytes received per observer, by presence mode"),
                    "bytes per observer (lower is better)",
                    &series,
                ),
            );
            let name = format!("{key}-diff-latency.png");
            let series: Vec<_> = modes
                .iter()
                .map(|m| {
                    (
                        m.mode.clone(),
                        c,
                        m.failure.is_none().then_some(m.diff_latency),
                    )
                })
                .collect();
            draw(
                name.clone(),
                plot::latency(
                    &out.join(&name),
                    &format!("{key}: presence diff latency, by mode"),
                    &series,
                ),
            );
        }
        Some(RoomOutcome::Audio(a)) => {
            let ok = r.ok();
            let name = format!("{key}-playback-latency.png");
            let series = vec![
                (
                    "without flood".to_string(),
                    c,
                    ok.then_some(a.without_flood.latency),
                ),
                (
                    "with flood".to_string(),
                    // A darker Chorus blue: both phases are Chorus.
                    plotters::style::RGBColor(0x0b, 0x3c, 0x5d),
                    ok.then_some(a.with_flood.latency),
                ),
            ];
            draw(
                name.clone(),
                plot::latency(
                    &out.join(&name),
                    &format!("{key}: playback latency without and with the reaction flood"),
                    &series,
                ),
            );
        }
        None => {
            let name = format!("{key}-status.png");
            draw(
                name.clone(),
                plot::bars(
                    &out.join(&name),
                    &format!("{key}: did not run"),
                    "",
                    &[Bar {
                        label: "Chorus".into(),
                        color: c,
                        value: None,
                    }],
                ),
            );
        }
    }
}

/// results.md, the plots, and (when `benchmarks_md`) BENCHMARKS.md at `root`.
pub fn write_all(root: &Path, out: &Path, benchmarks_md: bool) -> Result<(), String> {
    let (index, runs) = load(out)?;
    let mut tables = String::new();
    let older: Vec<String> = {
        let mut v: Vec<String> = runs
            .iter()
            .filter(|s| s.suite != index.id)
            .filter_map(|s| Some(format!("{} ({})", load_key(&s.run)?, suite_date(&s.suite))))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    if !older.is_empty() {
        let _ = writeln!(
            tables,
            "**Not every load ran in the latest suite**: these tables come from older suites, as marked above each: {}.\n",
            older.join(", ")
        );
    }
    tables.push_str(&table(&runs, &index.id));
    for s in runs
        .iter()
        .filter(|s| s.run.params.as_ref().is_some_and(|p| p.scenario.is_room()))
    {
        tables.push_str(&crate::rooms::report::tables(std::slice::from_ref(&s.run)));
        let _ = writeln!(tables, "{}\n", provenance(&s.suite, &index.id));
    }
    let (pngs, plot_errors) = plots(out, &runs);
    for e in &plot_errors {
        eprintln!("warning: {e}");
    }
    remove_stale_plots(out, &pngs);
    let date = suite_date(&index.id);
    let results_md = format!(
        "# Suite {date}{}\n\nMachine load (1, 5, 15 min) at the start: {}; at the end: {}.\n\n{tables}",
        if index.tiny {
            " (tiny: checks the harness, not a measurement)"
        } else {
            ""
        },
        or_unknown(&index.load_at_start),
        or_unknown(&index.load_at_end),
    );
    let path = out.join("results.md");
    fs::write(&path, results_md).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    if benchmarks_md {
        let rel_out = out.strip_prefix(root).unwrap_or(out);
        let tg = targets(&runs, &index.id);
        let mut md = benchmarks_md_text(&index, &tg, &tables, &pngs, &plot_errors, rel_out);
        md.push_str(&other_harnesses(out));
        md.push_str(&crate::cluster::benchmarks_section(out, root));
        let path = root.join("BENCHMARKS.md");
        fs::write(&path, md).map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "not recorded"
    } else {
        s
    }
}

/// Deletes the PNGs in `out` this report did not draw (charts of loads no
/// longer reported must not linger next to the new ones).
fn remove_stale_plots(out: &Path, written: &[String]) {
    let Ok(dir) = fs::read_dir(out) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("memory-comes-back")
            || Scenario::ALL.iter().any(|s| name.starts_with(s.name()));
        if ours && name.ends_with(".png") && !written.contains(&name) {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn benchmarks_md_text(
    index: &SuiteIndex,
    targets: &str,
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
Chorus against the systems a WhatsSound operator would otherwise pick — NATS and Centrifugo — in the same run, on the same machine, with the same load generator (`bench/`).\n\n\
## Reproduce\n\n\
```sh\nscripts/bench.sh          # standard suite (~30 minutes); installs the peers, rewrites this file\nscripts/bench.sh --tiny   # about a minute; only checks that the harness works (CI)\n```\n\n\
One load against one system: `target/release/chorus-bench run --system centrifugo --scenario fan-out --clients 5000 --rate 50 --duration 10`. Results land in `{out}/runs/`; `target/release/chorus-bench report` rewrites the tables, the plots and this file from `{out}/latest-suite.json` (and, for loads the latest suite did not run, the newest older suite that did — named above each such table).\n\n\
## Method\n\n\
* **Load generator**: `chorus-bench`, Rust on tokio, one current-thread runtime per loader process; the driver re-runs itself as `worker` processes (at most `clients_per_worker` = 5,000 clients each, below the 20,000 open files one process may hold), each connecting from its own loopback address 127.0.0.x. Its WebSocket framing is Chorus' own sans-IO codec (`chorus_core::ws`), with masked client frames and a random key per connection.\n\
* **Clients**: Chorus is spoken to as `@supabase/realtime-js` does (Phoenix vsn 2.0.0: `phx_join` with `broadcast.self=false, ack=false`, publishes as kind-3 binary frames with the payload's JSON text, broadcasts received as the text array `[null,null,topic,\"broadcast\",{{type,event,payload}}]` that Chorus sends for JSON payloads so phoenix.js reads them too, heartbeat every 25 s); NATS with its text protocol over its WebSocket listener (`CONNECT` with `echo:false`, `SUB`, `PUB`, `PING`/`PONG` to confirm, a `PING` every 60 s); Centrifugo with its client protocol v2 in JSON over `/connection/websocket`, as its JavaScript SDK speaks it (`connect`, `subscribe`, `publish` commands with ids, publications as `push` lines, several per WebSocket message; the server pings with `{{}}` every 25 s and the client answers `{{}}`). Every system is at its lowest durability: nothing persisted, no history.\n\
* **Payload**: the same ~{pb}-byte JSON object for every system, carrying the publish time (ns since the Unix epoch, one clock, one machine) and the publisher's id. **Latency** is receive time minus publish time, per delivery, in HDR histograms (µs, 3 significant digits) merged across loaders. Receivers read the stamp without decoding the JSON around it, for every system (after `\"payload\":` in Chorus' broadcasts, after `\"pub\":{{\"data\":` in Centrifugo's publications, NATS' `MSG` payload as it is): the loader shares the cores with the server, so a costlier receive path for one system would slow its loader and tilt the comparison. Receivers skip their own messages: Centrifugo has no \"no local\" option and sends a publisher its own publications (one extra delivery per message and room, which it pays for and the others do not; in many-rooms that is 10 deliveries per message instead of 9).\n\
* **Deliveries/s** = messages received by all subscribers ÷ the publishing time (or the time until the last delivery, if later). *Delivered %* compares with published × subscribers (fan-out) or published × (members − 1) (rooms).\n\
* **Memory**: the server process's VmRSS (`/proc/<pid>/status`), sampled every 250 ms; *per session* = (RSS after every session joined − RSS before the first) ÷ sessions; for *idle*, RSS after holding the sessions. The run files also give *per session* as PSS (`pss_per_session_kib`, `Pss` of `/proc/<pid>/smaps_rollup`): Chorus maps its guest's data image into every process slot, and VmRSS counts those pages once per slot although memory holds them once. **CPU**: the server process's user + system time (`utime` + `stime` of `/proc/<pid>/stat`, every thread) while the sessions connected and joined, ÷ sessions joined (*per session joined*), and from the publishers' start to their stop, ÷ messages delivered (*per delivery*): the cost of the work, which other load on the machine changes far less than it changes rates (a saturated server batches more, so compare runs at the same load). **Memory comes back**: after every session left (the loader processes closed their sockets and exited), the bench waits `--after` seconds (5) and samples RSS again: *after ÷ before* is that ÷ the RSS before the load.\n\
* **Bytes on the wire**: every byte each client read from its socket after the upgrade (WebSocket frame headers included), summed over all sessions, ÷ sessions (÷ the publishing or holding time for the per-second figure); for *chat-presence* also the WebSocket message payloads split by what they carried (chat broadcasts, presence state and diffs, the rest). Compression is off everywhere (no `permessage-deflate`), so these are the bytes a later compression change is measured against.\n\
* **Repeats and order**: every fan-out load runs 5 times per system (`--repeat`), interleaved — run 1 of every system, then run 2, … — with the starting system rotating from round to round, so none always gets the coldest or warmest machine; tables give the median of the runs and every run's p99. Every other load runs once per system. Each system is started fresh for each run by the bench and stopped after it. The suite prints `[k/n] load run i/m, system — elapsed, ETA` before each run.\n\
* **Peers' settings** (for their best, not their defaults):\n\
  * **NATS 2.9** (Debian's `nats-server`): logging off, `max_pending` 64 MB and `write_deadline` 10 s (the loader's own stalls must not cut subscribers), `max_connections` 1,000,000, WebSocket listener without TLS or compression.\n\
  * **Centrifugo v6.9.1** (`go install github.com/centrifugal/centrifugo/v6@v6.9.1`, built once by `scripts/bench.sh` and cached in `$(go env GOPATH)/bin`; Go from the machine, or Debian's with the newer toolchain Go fetches through the module proxy): anonymous clients without tokens (`client.allow_anonymous_connect_without_token`; on channels without a namespace `allow_subscribe_for_client` + `allow_subscribe_for_anonymous`, `allow_publish_for_subscriber` + `allow_publish_for_anonymous`) — Chorus and NATS check no token in these runs either; presence, join/leave and history off; `client.queue_max_size` 64 MB and `websocket.write_timeout` 10 s, as NATS'; log level `error`; usage statistics off; for loads of many mostly idle connections (connect-storm, idle) `websocket.use_write_buffer_pool`, which Centrifugo recommends there to save memory per connection, and off where every connection writes all the time (fan-out, many-rooms). The exact file is `servers::centrifugo_config`. If the binary cannot be built, Centrifugo's column says so (`did not run: centrifugo is not installed …`) and the suite goes on with NATS.\n\
  * **RabbitMQ Web-MQTT** is no longer in the standard suite: its runs took minutes each (370 sessions/s in a 10,000-session storm) and would have pushed the suite far past 25 minutes. `scripts/bench.sh --systems chorus,nats,centrifugo,rabbitmq` still runs it, on the bench's own broker (node `chorusbench@localhost`, ports 47420–47423, its own data directory); the machine's `rabbitmq-server` service is never stopped, started or disabled.\n\
* **Chorus-only loads**: *chat-presence* (Supabase presence, which no peer speaks) and the room scenarios *presence-churn* and *audio-flood* (selective presence, large-room relevant sets, audio/reaction lanes, peak mode) run against Chorus only; the room scenarios compare with Chorus baselines of the same run, as ratios. Only: `chorus-bench suite --systems chorus --scenarios presence-churn,audio-flood` (`--help` lists the loads).\n\
* **Ratios**: *Chorus ÷ peer* of the same figure in the same suite; the *better* column says which way is better for each row (for a ratio: below 1 is better where lower is better, above 1 where higher is better).\n\
* A run that fails says so in the table (`did not run: <why>`) instead of showing a number, and in the plots as a grey \"did not run\" entry. Each system has one colour in every plot: Chorus blue, NATS orange, Centrifugo green, RabbitMQ red.\n\n\
## Machine\n\n\
{cpu}, {cores} cores, {mem} GiB RAM, Linux {kernel}, open files per process {nofile}. The load generator and the server share the cores. Load average (1, 5, 15 min) when the suite started: {la0}; when it ended: {la1}.\n\n\
## Latest results (suite {date})\n\n",
        out = rel_out.display(),
        pb = 100,
        cpu = m.cpu,
        cores = m.cores,
        mem = m.memory_gib,
        kernel = m.kernel,
        nofile = m.open_files_limit,
        la0 = or_unknown(&index.load_at_start),
        la1 = or_unknown(&index.load_at_end),
        date = suite_date(&index.id),
    );
    if !targets.is_empty() {
        md.push_str("### Targets (issue 10)\n\nEach target of the gateway rewrite that these loads measure, with what the runs below show. The platform-bench targets (PSS per process, start p50) are in its own section further down.\n\n");
        md.push_str(targets);
        md.push('\n');
    }
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

/// The newest results file in `out` named `<prefix><time><suffix>` (the
/// harnesses name their files by UTC time, so the greatest name is the newest).
fn newest(out: &Path, prefix: &str, suffix: &str) -> Option<String> {
    fs::read_dir(out).ok().and_then(|dir| {
        dir.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
            .max()
    })
}

fn other_harnesses(out: &Path) -> String {
    let newest_store = newest(out, "store-", ".md");
    let newest_chaos = newest(out, "chaos-", ".md");
    let sources = [
        (
            "Runtime: Chorus against stock lunatic (platform bench)",
            Some("platform-latest.md".to_string()),
            "python3 bench/platform.py --sizes 1000,10000 --repeat 3 (the command of each run is in its file; bench/results/light-20261130/README.md breaks a process's start and memory down)",
        ),
        (
            "Data service (store bench)",
            newest_store,
            "cargo run --release -p chorus-host --example store_bench",
        ),
        (
            "Recovery: chaos under load",
            newest_chaos,
            "node bench/chaos.mjs",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    fn result(
        system: System,
        failure: Option<&str>,
        dps: f64,
        p99: f64,
        run: u32,
        runs: u32,
    ) -> Sourced {
        Sourced {
            suite: "20261129T150405Z".into(),
            run: RunResult {
                system: Some(system),
                params: Some(Params::fan_out(100, 10.0, 1.0)),
                failure: failure.map(String::from),
                deliveries_per_s: dps,
                // A fixed load of 10 s: what was delivered follows the rate.
                delivered: (dps * 10.0) as u64,
                latency: Latency {
                    p99_ms: p99,
                    ..Latency::default()
                },
                run,
                runs,
                ..RunResult::default()
            },
        }
    }

    #[test]
    fn suite_ids_read_as_iso_dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(suite_date("1795865742"), "2026-11-28T11:35:42Z");
        assert_eq!(suite_date("20261129T150405Z"), "2026-11-29T15:04:05Z");
        let now = suite_id_now();
        assert_eq!(now.len(), 16, "{now}");
        assert!(suite_date(&now).ends_with('Z'));
    }

    #[test]
    fn table_shows_direction_ratios_and_failures_never_numbers() {
        let runs = vec![
            result(System::Chorus, None, 500.0, 2.0, 1, 1),
            result(System::Nats, None, 1000.0, 4.0, 1, 1),
            result(
                System::Centrifugo,
                Some("delivered 0 of 10"),
                0.0,
                0.0,
                1,
                1,
            ),
        ];
        let md = table(&runs, "20261129T150405Z");
        assert!(
            md.contains("| deliveries/s | higher is better | 500 | 1,000 | — | 0.50× | — |"),
            "{md}"
        );
        assert!(
            md.contains("| latency p99 (ms) | lower is better | 2.00 | 4.00 | — | 0.50× | — |"),
            "{md}"
        );
        assert!(md.contains("did not run: delivered 0 of 10"), "{md}");
        assert!(
            md.contains("From suite 2026-11-29T15:04:05Z (the latest)."),
            "{md}"
        );
    }

    #[test]
    fn repeated_runs_give_medians_every_p99_and_the_paired_count() {
        let mut runs = Vec::new();
        for (i, (c, n)) in [(1.0, 2.0), (5.0, 3.0), (2.0, 2.5)].into_iter().enumerate() {
            let i = i as u32 + 1;
            runs.push(result(System::Chorus, None, 100.0 * i as f64, c, i, 3));
            runs.push(result(System::Nats, None, 100.0, n, i, 3));
        }
        runs.push(result(System::Centrifugo, None, 90.0, 9.0, 1, 3));
        runs.push(result(
            System::Centrifugo,
            Some("server exited"),
            0.0,
            0.0,
            2,
            3,
        ));
        let md = table(&runs, "20261129T150405Z");
        // Median p99 of Chorus (1, 5, 2) is 2, of NATS (2, 3, 2.5) 2.5.
        assert!(
            md.contains(
                "| latency p99 (ms) | lower is better | 2.00 | 2.50 | 9.00 | 0.80× | 0.22× |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| latency p99, run 2 (ms) | lower is better | 5.00 | 3.00 | — | 1.67× | — |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| latency p99, worst run (ms) | lower is better | 5.00 | 3.00 | 9.00 |"),
            "{md}"
        );
        assert!(
            md.contains("Chorus p99 ≤ NATS p99 in **2 of 3** runs"),
            "{md}"
        );
        assert!(
            md.contains("ran 1 of 2; run 2 did not run: server exited"),
            "{md}"
        );
        let t = targets(&runs, "20261129T150405Z");
        assert!(
            t.contains("| p99 ≤ NATS in each of 3 runs | 2 of 3 | **not met** |"),
            "{t}"
        );
        assert!(
            t.contains("| messages delivered ≥ NATS in each of 3 runs (deliveries/s: median runs, Chorus ÷ NATS) | 3 of 3 (deliveries/s 2.00×) | met |"),
            "{t}"
        );
    }

    #[test]
    fn fan_out_deliveries_are_compared_run_by_run() {
        // Every run at the same rate, but Chorus' run 2 delivered less.
        let mut runs = Vec::new();
        for i in 1..=3 {
            let mut c = result(System::Chorus, None, 100.0, 1.0, i, 3);
            if i == 2 {
                c.run.delivered -= 1;
            }
            runs.push(c);
            runs.push(result(System::Nats, None, 100.0, 2.0, i, 3));
        }
        let t = targets(&runs, "20261129T150405Z");
        assert!(
            t.contains("| 2 of 3 (deliveries/s 1.00×) | **not met** |"),
            "{t}"
        );
        // A run that did not go through for Chorus is not a run that met it.
        runs[2] = result(System::Chorus, Some("server exited"), 0.0, 0.0, 2, 3);
        let t = targets(&runs, "20261129T150405Z");
        assert!(
            t.contains("| 2 of 3 (deliveries/s 1.00×) | **not met** |"),
            "{t}"
        );
    }

    #[test]
    fn a_table_from_an_older_suite_says_so() {
        let runs = vec![result(System::Chorus, None, 5.0, 1.0, 1, 1)];
        let md = table(&runs, "20261130T000000Z");
        assert!(
            md.contains("**From an older suite, 2026-11-29T15:04:05Z**: the latest suite (2026-11-30T00:00:00Z) did not run this load."),
            "{md}"
        );
    }

    #[test]
    fn other_harnesses_copy_the_newest_summary_of_each() {
        let dir = std::env::temp_dir().join(format!("chorus-report-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        for (name, text) in [
            ("chaos-20261128T000000Z.md", "# Old chaos\nlost 9\n"),
            ("chaos-20261129T000000Z.md", "# New chaos\nlost 0\n"),
            ("chaos-20261130T000000Z.json", "{}"),
        ] {
            fs::write(dir.join(name), text).expect("write");
        }
        let md = other_harnesses(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert!(md.contains("From `chaos-20261129T000000Z.md`:"), "{md}");
        assert!(md.contains("### New chaos\nlost 0"), "{md}");
        assert!(!md.contains("Old chaos"), "{md}");
        assert!(
            md.contains("## Data service (store bench)\n\nReproduce: `cargo run --release -p chorus-host --example store_bench`.\n\nNot run yet: no results file."),
            "{md}"
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }
}
