//! Platform benchmark guest: the same `.wasm` runs on stock `lunatic run` and
//! on `chorus exec`, and reports what each runtime costs.
//!
//! ```text
//! platform-guest [--processes N] [--rounds R] [--hold-before-ms MS] [--warm-slots]
//! ```
//!
//! 0. With `--warm-slots`, first starts `N` processes and kills them all, so
//!    the timed starts below reuse slots a runtime may keep warm (a pooling
//!    allocator keeps their pages resident); this measures starts under
//!    churn rather than into never-used memory. Off by default.
//! 1. With `--hold-before-ms`, prints `BASELINE` and sleeps that long so a
//!    driver can read the runtime's memory before any process exists.
//! 2. Starts `N` `Counter` abstract processes one after another, timing each
//!    start (spawn + `init` + the init reply) with `std::time::Instant`. The
//!    first start that fails (the runtime refuses to spawn, which the
//!    `lunatic` crate turns into a panic) is caught with
//!    `lunatic::panic::catch_panic`; spawning stops there and the processes
//!    already alive are kept.
//! 3. Makes `R` request/reply round trips, spread round-robin over the live
//!    processes.
//!    Every 1000 starts a `PROGRESS n` line is printed (outside the timed
//!    windows), so the count reached is known even if the runtime dies.
//! 4. Prints one JSON line with the figures, then `READY`, and sleeps until
//!    killed so the driver can measure the memory of the idle processes.
//!
//! Arguments may also be written `key=value`; a bare `--` is ignored (the
//! stock runtime needs it before guest flags).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lunatic::ap::handlers::{Message, Request};
use lunatic::ap::{AbstractProcess, Config, MessageHandler, ProcessRef, RequestHandler, State};
use lunatic::serializer::Bincode;
use serde::{Deserialize, Serialize};

/// An idle abstract process holding one number.
struct Counter(u64);

/// Adds one to the counter (fire and forget).
#[derive(Serialize, Deserialize)]
struct Inc;

/// Asks for the counter's value (request/reply).
#[derive(Serialize, Deserialize)]
struct Get;

impl AbstractProcess for Counter {
    type State = Counter;
    type Serializer = Bincode;
    type Arg = u64;
    type Handlers = (Message<Inc>, Request<Get>);
    type StartupError = ();

    fn init(_: Config<Self>, start: u64) -> Result<Counter, ()> {
        Ok(Counter(start))
    }
}

impl MessageHandler<Inc> for Counter {
    fn handle(mut state: State<Self>, _: Inc) {
        state.0 += 1;
    }
}

impl RequestHandler<Get> for Counter {
    type Response = u64;

    fn handle(state: State<Self>, _: Get) -> u64 {
        state.0
    }
}

/// The message of the last panic, kept by the panic hook so a caught spawn
/// failure can be reported in the JSON line.
/// Every this many started processes a `PROGRESS n` line tells the driver
/// how far spawning got, in case the whole runtime dies.
const PROGRESS_EVERY: usize = 1000;

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

struct Args {
    processes: usize,
    rounds: usize,
    hold_before_ms: u64,
    warm_slots: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        processes: 1000,
        rounds: 10_000,
        hold_before_ms: 0,
        warm_slots: false,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--");
    while let Some(arg) = it.next() {
        if arg.trim_start_matches('-') == "warm-slots" {
            args.warm_slots = true;
            continue;
        }
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k.trim_start_matches('-').to_string(), v.to_string()),
            None => {
                let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
                (arg.trim_start_matches('-').to_string(), value)
            }
        };
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| format!("{key}: {e} (got {v:?})"))
        };
        match key.as_str() {
            "processes" => args.processes = number(&value)? as usize,
            "rounds" => args.rounds = number(&value)? as usize,
            "hold-before-ms" => args.hold_before_ms = number(&value)?,
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(args)
}

/// Nearest-rank percentile of sorted nanoseconds, in microseconds.
fn percentile_us(sorted_ns: &[u64], p: f64) -> Option<f64> {
    if sorted_ns.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted_ns.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted_ns.len()) - 1;
    Some(sorted_ns[i] as f64 / 1000.0)
}

fn mean_us(ns: &[u64]) -> Option<f64> {
    if ns.is_empty() {
        return None;
    }
    Some(ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0)
}

fn json_number(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{v:.3}"),
        None => "null".into(),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `"name_p50_us":…,"name_p90_us":…` and so on for one set of timings.
fn stats_fields(name: &str, ns: &mut [u64]) -> String {
    ns.sort_unstable();
    let mut fields = vec![format!("\"{name}_count\":{}", ns.len())];
    for (label, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)] {
        fields.push(format!(
            "\"{name}_{label}_us\":{}",
            json_number(percentile_us(ns, p))
        ));
    }
    fields.push(format!("\"{name}_mean_us\":{}", json_number(mean_us(ns))));
    fields.join(",")
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // Nothing to do if the driver went away; the process is killed anyway.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("platform-guest: {e}");
            std::process::exit(2);
        }
    };

    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = match info.payload().downcast_ref::<&str>() {
            Some(s) => s.to_string(),
            None => match info.payload().downcast_ref::<String>() {
                Some(s) => s.clone(),
                None => info.to_string(),
            },
        };
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(text);
        }
        default_hook(info);
    }));

    if args.hold_before_ms > 0 {
        print_line("BASELINE");
        lunatic::sleep(Duration::from_millis(args.hold_before_ms));
    }

    if args.warm_slots {
        let warm: Vec<ProcessRef<Counter>> = (0..args.processes as u64)
            .map(|i| Counter::start(i).unwrap())
            .collect();
        for r in &warm {
            r.kill();
        }
        // Killed processes release their slots asynchronously.
        lunatic::sleep(Duration::from_millis(500));
    }

    // Starts, one at a time; the first failure ends the loop.
    let mut refs: Vec<ProcessRef<Counter>> = Vec::with_capacity(args.processes);
    let mut start_ns: Vec<u64> = Vec::with_capacity(args.processes);
    let mut error: Option<String> = None;
    let spawn_wall = Instant::now();
    for i in 0..args.processes {
        // Only the start itself is inside the timed window, not the trap
        // catcher around it.
        let attempt = lunatic::panic::catch_panic(|| {
            let t = Instant::now();
            let r = Counter::start(i as u64);
            (r, t.elapsed())
        });
        match attempt {
            Ok((Ok(r), took)) => {
                refs.push(r);
                start_ns.push(took.as_nanos() as u64);
                if refs.len().is_multiple_of(PROGRESS_EVERY) {
                    print_line(&format!("PROGRESS {}", refs.len()));
                }
            }
            Ok((Err(e), _)) => {
                error = Some(format!("start #{i} failed: {e:?}"));
                break;
            }
            Err(_) => {
                let text = LAST_PANIC
                    .lock()
                    .ok()
                    .and_then(|mut m| m.take())
                    .unwrap_or_else(|| "panic".into());
                error = Some(format!("start #{i} failed: {text}"));
                break;
            }
        }
    }
    let spawn_wall_s = spawn_wall.elapsed().as_secs_f64();

    // Round trips, spread over every live process.
    let mut rtt_ns: Vec<u64> = Vec::with_capacity(args.rounds);
    let mut checksum = 0u64;
    if !refs.is_empty() {
        for round in 0..args.rounds {
            let r = &refs[round % refs.len()];
            let t = Instant::now();
            checksum = checksum.wrapping_add(r.request(Get));
            rtt_ns.push(t.elapsed().as_nanos() as u64);
        }
        // One fire-and-forget message each, so every process has handled a
        // message before it goes idle.
        for r in &refs {
            r.send(Inc);
        }
    }

    let line = format!(
        "{{\"requested\":{},\"spawned\":{},\"spawn_wall_s\":{:.3},{},{},\"checksum\":{},\"error\":{}}}",
        args.processes,
        refs.len(),
        spawn_wall_s,
        stats_fields("start", &mut start_ns),
        stats_fields("rtt", &mut rtt_ns),
        checksum,
        error.as_deref().map(json_string).unwrap_or_else(|| "null".into()),
    );
    print_line(&line);
    print_line("READY");
    loop {
        lunatic::sleep(Duration::from_secs(3600));
    }
}
