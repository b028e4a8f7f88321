//! Runs the `supervisors` crate's guest scenarios (`supervisors/examples/
//! scenarios.rs`, built for wasm32-wasip1) under our own runtime, `chorus exec`,
//! and checks that every scenario passed.
//!
//! The guest cannot use `#[lunatic::test]` without the stock runtime's special
//! test mode, so the scenarios are a plain guest program; this test is what
//! makes them part of `cargo test`. The scenario names are read from the
//! example's `SCENARIOS` table, so a scenario that silently stops running (or
//! a runtime that never prints its line) fails here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Generous: the scenarios take a few seconds; a hang must still end the test.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-bridge lives inside the workspace")
        .to_path_buf()
}

fn scenarios_wasm() -> PathBuf {
    let wasm = std::env::var_os("CHORUS_SUPERVISOR_SCENARIOS_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/wasm32-wasip1/release/examples/scenarios.wasm")
        });
    assert!(
        wasm.is_file(),
        "supervisor scenarios not built: {} does not exist.\n\
         Build them with `cargo build -p supervisors --example scenarios \
         --target wasm32-wasip1 --release` from the workspace root, or point \
         CHORUS_SUPERVISOR_SCENARIOS_WASM at the .wasm file.",
        wasm.display()
    );
    wasm
}

/// The names in the example's `SCENARIOS` table: every string literal between
/// `const SCENARIOS` and the `];` closing it.
fn scenario_names() -> Vec<String> {
    let path = workspace_root().join("supervisors/examples/scenarios.rs");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let start = source
        .find("const SCENARIOS")
        .expect("scenarios.rs declares `const SCENARIOS`");
    let table = &source[start..];
    let table = &table[..table.find("];").expect("SCENARIOS table is closed")];
    let names: Vec<String> = table
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(
        !names.is_empty(),
        "no scenario names found in {}",
        path.display()
    );
    names
}

/// Runs `command`, killing it after `timeout`; returns (success, stdout, stderr).
fn run_with_timeout(mut command: Command, timeout: Duration) -> (bool, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chorus");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).ok();
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chorus") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (
        stdout.join().expect("stdout reader"),
        stderr.join().expect("stderr reader"),
    );
    match status {
        Some(status) => (status.success(), stdout, stderr),
        None => panic!(
            "chorus exec did not finish within {timeout:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
    }
}

#[test]
fn every_supervisor_scenario_passes_under_chorus() {
    let wasm = scenarios_wasm();
    let names = scenario_names();
    let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
    command.arg("exec").arg(&wasm);
    let (success, stdout, stderr) = run_with_timeout(command, RUN_TIMEOUT);
    let report = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");

    let lines: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !lines.contains(&format!("ok {name}").as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "scenarios not reported ok: {missing:?}\n{report}"
    );
    let summary = format!("{} passed, 0 failed", names.len());
    assert!(
        lines.contains(&summary.as_str()),
        "no `{summary}` line\n{report}"
    );
    assert!(success, "chorus exec exited unsuccessfully\n{report}");
}
