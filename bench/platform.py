#!/usr/bin/env python3
"""Platform benchmark: the same guest on stock `lunatic run` 0.13.2 and on `chorus exec`.

What it measures (issue 2, section 3), for each process count N and each runtime:

* ``AbstractProcess`` start (spawn + init + init reply): p50/p90/p99 in µs,
  timed inside the guest with ``std::time::Instant`` around ``Counter::start``;
* request/reply round trip to a live process: p50/p99 in µs (``--rounds`` requests
  spread round-robin over the N processes);
* memory per idle process: proportional set size (PSS) of the runtime's OS
  process, from ``/proc/<pid>/smaps_rollup``.  The guest is started with
  ``--hold-before-ms``: it prints ``BASELINE`` and sleeps before spawning
  anything, and the driver reads PSS then (the runtime, the compiled module and
  the guest's main process are all in that baseline).  After the guest has
  started N processes, made its round trips and printed ``READY``, the driver
  waits ``--settle`` seconds and reads PSS again.  (after - before) / spawned is
  the cost of one idle process.  RSS is recorded the same way for reference;
  PSS is the goal's measure (RSS counts shared copy-on-write pages once per
  mapping).  smaps reports kB = KiB; figures here are KiB.
* capacity: whether N processes were held.  A spawn the runtime refuses is
  caught by the guest, which reports how many were alive and the error text;
  if the whole runtime dies or the run times out, the last ``PROGRESS n`` line
  the guest printed (every 1000 starts) gives the count reached.  A failed run
  is recorded as failed with its error: never a made-up figure.

Method: every run is a fresh OS process with a clean environment (``PATH``
and ``HOME`` only: ``RUST_BACKTRACE`` and friends slow lunatic's hot paths
a lot), started in an empty temporary directory (so ``chorus exec`` uses its
built-in defaults, not a ``lunatic.toml`` lying around).  Runs alternate between
the runtimes (the order flips on every repetition) so drift on the machine hits
both alike.  Once the stock runtime has failed at some size it is not run at
larger sizes (recorded as skipped).  Every run has a timeout.  With
``--repeat K`` each figure reported is the median over the K runs; the raw runs
are kept in the JSON.

``chorus exec`` raises ``vm.max_map_count`` itself when run as root; the stock
runtime does not.  That is part of what is compared; the value is recorded
before the first run and after the last one.

Inputs (nothing is built here except installing the stock runtime if missing):

* the guest: ``bench/platform-guest`` built for wasm32-wasip1, e.g.
  ``CARGO_TARGET_DIR=/tmp/target-bench cargo build -p platform-guest --release
  --target wasm32-wasip1`` (found in ``$CARGO_TARGET_DIR`` or ``target/``, or
  given with ``--guest``);
* ``chorus``: ``cargo build --release -p chorus-host`` (``target/release/chorus``
  or ``--chorus``);
* ``lunatic`` 0.13.2: on PATH or in ``~/.cargo/bin``; otherwise installed with
  ``cargo install lunatic-runtime --version 0.13.2`` (not ``--locked``: the
  locked ``time`` 0.3.20 does not build on current Rust).

Output: ``bench/results/platform-<UTC timestamp>.json`` and ``.md`` plus
``platform-latest.json``/``.md`` copies.  ``--tiny`` (CI) runs one small size
once, writes to a temporary directory unless ``--out`` is given, and only checks
that every step ran: it never judges timings.  Exit status is 0 when the bench
ran to the end (failed runs of a runtime at large sizes are results, not errors)
and non-zero when an input is missing or, with ``--tiny``, when a run failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST_REL = Path("wasm32-wasip1/release/platform-guest.wasm")
STOCK_VERSION = "0.13.2"

# Issue 2's goals for chorus and the stock figures they were set against.
GOALS = {
    "capacity_processes": 100_000,
    "start_p50_us": 25.0,
    "pss_per_process_kib": 24.0,
}


# --------------------------------------------------------------------------
# inputs


def find_guest(explicit: str | None) -> Path:
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    else:
        if os.environ.get("CARGO_TARGET_DIR"):
            candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / GUEST_REL)
        candidates.append(REPO / "target" / GUEST_REL)
        candidates.append(Path("/tmp/target-bench") / GUEST_REL)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    sys.exit(
        "platform.py: guest not found (looked at "
        + ", ".join(map(str, candidates))
        + "); build it with\n  cd %s && cargo build -p platform-guest --release "
        "--target wasm32-wasip1" % REPO
    )


def find_chorus(explicit: str | None) -> Path:
    path = Path(explicit) if explicit else REPO / "target/release/chorus"
    if not path.is_file():
        sys.exit(
            f"platform.py: chorus not found at {path}; build it with\n"
            f"  cd {REPO} && cargo build --release -p chorus-host"
        )
    return path.resolve()


def find_lunatic(explicit: str | None, install: bool) -> Path:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            sys.exit(f"platform.py: --lunatic {path} does not exist")
        return path.resolve()
    found = shutil.which("lunatic")
    if found:
        return Path(found).resolve()
    cargo_bin = Path.home() / ".cargo/bin/lunatic"
    if cargo_bin.is_file():
        return cargo_bin
    if not install:
        sys.exit("platform.py: stock lunatic not found and --no-install given")
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    cmd = [cargo, "install", "lunatic-runtime", "--version", STOCK_VERSION]
    print("platform.py: installing the stock runtime:", " ".join(cmd), flush=True)
    # About five minutes on two cores; bounded all the same.
    subprocess.run(cmd, check=True, timeout=3600)
    if not cargo_bin.is_file():
        sys.exit(f"platform.py: cargo install finished but {cargo_bin} is missing")
    return cargo_bin


def command_output(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=30, env=clean_env()
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip() or None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def max_map_count() -> int | None:
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text().strip())
    except OSError:
        return None


def machine_info() -> dict:
    meminfo = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        meminfo[key] = value.strip()
    cpu_model = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.partition(":")[2].strip()
            break
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "hostname": os.uname().nodename,
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total": meminfo.get("MemTotal"),
        "mem_available_at_start": meminfo.get("MemAvailable"),
        "kernel": os.uname().release,
        "vm_max_map_count_at_start": max_map_count(),
        "nofile_limit": [soft, hard],
        "euid": os.geteuid(),
        "loadavg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
    }


# --------------------------------------------------------------------------
# one run


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(Path.home()),
    }
    env.update(extra or {})
    return env


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB figures of /proc/<pid>/smaps_rollup (Rss, Pss, Pss_Anon, ...)."""
    figures = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            figures[parts[0][:-1]] = int(parts[1])
    return figures


def map_count(pid: int) -> int:
    with open(f"/proc/{pid}/maps", "rb") as f:
        return sum(1 for _ in f)


def proc_stat(pid: int) -> dict:
    """Minor page faults and CPU seconds of a process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # fields from 3 (state) on
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "minflt": int(fields[7]),
        "cpu_s": (int(fields[11]) + int(fields[12])) / ticks,
    }


def memory_snapshot(pid: int) -> dict:
    roll = smaps_rollup(pid)
    return {
        **proc_stat(pid),
        "pss_kib": roll.get("Pss"),
        "rss_kib": roll.get("Rss"),
        "pss_anon_kib": roll.get("Pss_Anon"),
        "pss_file_kib": roll.get("Pss_File"),
        "maps": map_count(pid),
    }


def tail_text(path: Path, limit: int = 4000) -> str:
    data = path.read_bytes()[-limit:].decode("utf-8", "replace")
    return data.strip()


def error_lines(text: str) -> str:
    """The lines of a runtime's stderr that say what went wrong."""
    keep = [
        line
        for line in text.splitlines()
        if any(w in line.lower() for w in ("error", "panic", "cannot", "failed", "killed"))
    ]
    return "\n".join(keep[-8:]) if keep else text[-1500:]


def run_one(
    runtime: str,
    binary: Path,
    guest: Path,
    n: int,
    args: argparse.Namespace,
    chorus_env: dict[str, str],
) -> dict:
    guest_args = [
        "--processes", str(n),
        "--rounds", str(args.rounds),
        "--hold-before-ms", str(args.hold_ms),
    ]
    if args.warm_slots:
        guest_args.append("--warm-slots")
    if runtime == "stock":
        # Stock `lunatic run` parses flags after the module as its own
        # unless they follow `--`; the guest ignores the `--`.
        cmd = [str(binary), "run", str(guest), "--", *guest_args]
        env = clean_env()
    else:
        cmd = [str(binary), "exec", str(guest), *guest_args]
        env = clean_env(chorus_env)
    timeout = args.timeout_base + n * args.timeout_per_process
    record: dict = {
        "runtime": runtime,
        "processes": n,
        "command": cmd,
        "timeout_s": timeout,
        "vm_max_map_count_before": max_map_count(),
        # Other work on the machine skews timings; recorded, not corrected.
        "loadavg_before": os.getloadavg()[0],
    }
    if runtime == "chorus" and chorus_env:
        record["env"] = chorus_env

    workdir = Path(tempfile.mkdtemp(prefix="platform-bench-"))
    stderr_path = workdir / "stderr.txt"
    started = time.monotonic()
    deadline = started + timeout
    lines: queue.Queue = queue.Queue()

    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1,
        )

        def pump() -> None:
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

        before = after = result = None
        progress = 0
        outcome = None  # why the run stopped early
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome = f"timed out after {timeout:.0f} s"
                break
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait()
                outcome = f"runtime exited with status {proc.returncode}"
                break
            if line == "BASELINE":
                before = memory_snapshot(proc.pid)
            elif line.startswith("PROGRESS "):
                progress = int(line.split()[1])
            elif line.startswith("{"):
                result = json.loads(line)
            elif line == "READY":
                time.sleep(args.settle)
                after = memory_snapshot(proc.pid)
                break
        record["wall_s"] = round(time.monotonic() - started, 3)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
    stderr_text = tail_text(stderr_path)
    shutil.rmtree(workdir, ignore_errors=True)
    record["vm_max_map_count_after"] = max_map_count()

    if result is not None:
        record["guest"] = result
    spawned = result["spawned"] if result else progress
    record["spawned"] = spawned
    record["memory_before"] = before
    record["memory_after"] = after
    if before and after and spawned:
        record["pss_per_process_kib"] = round((after["pss_kib"] - before["pss_kib"]) / spawned, 2)
        record["rss_per_process_kib"] = round((after["rss_kib"] - before["rss_kib"]) / spawned, 2)
        record["maps_per_process"] = round((after["maps"] - before["maps"]) / spawned, 2)
        # Diagnostics: page faults and CPU time of the whole run (starts and
        # round trips), per process.
        record["minflt_per_process"] = round((after["minflt"] - before["minflt"]) / spawned, 2)
        record["cpu_us_per_process"] = round((after["cpu_s"] - before["cpu_s"]) * 1e6 / spawned, 1)

    if outcome is None and result and not result.get("error") and spawned == n:
        record["status"] = "ok"
    else:
        record["status"] = "failed"
        record["error"] = (result or {}).get("error") or outcome or "unknown"
        if outcome and not result:
            record["count_reached"] = (
                f"at least {progress} (last PROGRESS line)" if progress else "unknown (< 1000)"
            )
        record["stderr_excerpt"] = error_lines(stderr_text)
    return record


# --------------------------------------------------------------------------
# aggregation and reports


FIGURES = [
    ("start_p50_us", lambda r: r["guest"]["start_p50_us"]),
    ("start_p90_us", lambda r: r["guest"]["start_p90_us"]),
    ("start_p99_us", lambda r: r["guest"]["start_p99_us"]),
    ("start_mean_us", lambda r: r["guest"]["start_mean_us"]),
    ("rtt_p50_us", lambda r: r["guest"]["rtt_p50_us"]),
    ("rtt_p99_us", lambda r: r["guest"]["rtt_p99_us"]),
    ("spawn_wall_s", lambda r: r["guest"]["spawn_wall_s"]),
    ("pss_per_process_kib", lambda r: r.get("pss_per_process_kib")),
    ("rss_per_process_kib", lambda r: r.get("rss_per_process_kib")),
    ("maps_per_process", lambda r: r.get("maps_per_process")),
    ("minflt_per_process", lambda r: r.get("minflt_per_process")),
    ("cpu_us_per_process", lambda r: r.get("cpu_us_per_process")),
    ("pss_after_mib", lambda r: r["memory_after"]["pss_kib"] / 1024 if r.get("memory_after") else None),
]


def median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(runs: list[dict]) -> dict:
    """Median figures over the runs of one runtime at one size."""
    if not runs:
        return {"status": "not run"}
    if all(r["status"] == "skipped" for r in runs):
        return {"status": "skipped", "reason": runs[0]["reason"]}
    failed = [r for r in runs if r["status"] == "failed"]
    ok = [r for r in runs if r["status"] == "ok"]
    summary: dict = {"status": "ok" if not failed else "failed", "runs": len(runs)}
    if failed:
        summary["error"] = failed[0]["error"]
        summary["spawned"] = [r["spawned"] for r in failed]
        if "count_reached" in failed[0]:
            summary["count_reached"] = failed[0]["count_reached"]
    # Figures from successful runs only.  A failed run whose guest still
    # reported (the runtime refused a spawn, the guest caught it and measured
    # the processes it had) gets its figures under "partial": real numbers,
    # but over fewer processes than asked, so no ratio is taken from them.
    with_guest = [r for r in ok if "guest" in r]
    for name, get in FIGURES:
        summary[name] = median_or_none([get(r) for r in with_guest])
    partial = [r for r in failed if "guest" in r and r["spawned"]]
    if partial:
        summary["partial"] = {name: median_or_none([get(r) for r in partial]) for name, get in FIGURES}
    summary["loadavg_before"] = [r.get("loadavg_before") for r in runs]
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


RATIO_FIGURES = ["start_p50_us", "start_p99_us", "rtt_p50_us", "rtt_p99_us", "pss_per_process_kib"]


def goals(summaries: dict, sizes: list[int]) -> list[dict]:
    """Chorus against issue 2's goals, size by size."""
    chorus = summaries["chorus"]
    stock = summaries["stock"]
    out = []
    largest_ok = max((n for n in sizes if chorus[n]["status"] == "ok"), default=None)
    out.append({
        "goal": f"hold {GOALS['capacity_processes']:,} idle processes",
        "chorus": f"held {largest_ok:,}" if largest_ok else "none held",
        "met": largest_ok is not None and largest_ok >= GOALS["capacity_processes"],
        "judged": GOALS["capacity_processes"] in sizes,
    })
    for key, label in [("start_p50_us", "AbstractProcess start p50 ≤ 25 µs"),
                       ("pss_per_process_kib", "≤ 24 KiB PSS per idle process")]:
        values = {n: chorus[n].get(key) for n in sizes if chorus[n].get(key) is not None}
        worst = max(values.values()) if values else None
        out.append({
            "goal": label,
            "chorus": {str(n): v for n, v in values.items()},
            "worst": worst,
            "met": worst is not None and worst <= GOALS[key],
            "judged": bool(values),
        })
    rtt = {}
    for n in sizes:
        c, s = chorus[n].get("rtt_p50_us"), stock[n].get("rtt_p50_us")
        if c is not None and s is not None:
            rtt[str(n)] = {"chorus": c, "stock": s}
    out.append({
        "goal": "round trip p50 no slower than stock",
        "chorus": rtt,
        "met": bool(rtt) and all(v["chorus"] <= v["stock"] for v in rtt.values()),
        "judged": bool(rtt),
    })
    return out


def fmt(v, digits=1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(report: dict) -> str:
    m = report["machine"]
    v = report["versions"]
    rows = []
    rows.append(f"# Platform benchmark, {report['timestamp']}\n")
    rows.append(
        f"Same guest (`bench/platform-guest`, sha256 `{v['guest_sha256'][:12]}`) on stock "
        f"`{v['lunatic']}` and `{v['chorus']}` (repo `{v['git_commit'][:10]}`"
        f"{', dirty tree' if v.get('git_dirty') else ''}). "
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['mem_total']}, kernel {m['kernel']}, "
        f"vm.max_map_count {m['vm_max_map_count_at_start']} at start / "
        f"{report['vm_max_map_count_at_end']} at end. "
        f"{report['settings']['rounds']} round trips per run, {report['settings']['repeat']} "
        f"run(s) per runtime and size (medians). Memory in KiB (smaps kB). "
        f"chorus binary sha256 `{(v.get('chorus_sha256') or '')[:12]}`. Load average before each "
        f"run is in the JSON (other work on the machine skews timings).\n"
    )
    rows.append(f"Command: `{report['command']}`\n")
    rows.append(
        "| N | runtime | status | spawned | start p50 µs | start p99 µs | rtt p50 µs | rtt p99 µs "
        "| PSS/proc KiB | RSS/proc KiB | maps/proc | faults/proc | CPU µs/proc | PSS total MiB |"
    )
    rows.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in report["settings"]["sizes"]:
        for rt in ("stock", "chorus"):
            s = report["summary"][rt][str(n)]
            status = s["status"]
            figures = s
            spawned = "–"
            if status == "ok":
                spawned = f"{n:,}"
            elif status == "failed":
                spawned = ", ".join(f"{x:,}" for x in s.get("spawned", []))
                status = f"failed: {s['error']}".replace("|", "/").replace("\n", " ")
                if "partial" in s:
                    figures = s["partial"]
                    status += " (figures: over the processes reached)"
            elif status == "skipped":
                status = f"skipped ({s['reason']})"
            rows.append(
                f"| {n:,} | {rt} | {status} | {spawned} | {fmt(figures.get('start_p50_us'))} | "
                f"{fmt(figures.get('start_p99_us'))} | {fmt(figures.get('rtt_p50_us'), 2)} | "
                f"{fmt(figures.get('rtt_p99_us'), 2)} | {fmt(figures.get('pss_per_process_kib'))} | "
                f"{fmt(figures.get('rss_per_process_kib'))} | {fmt(figures.get('maps_per_process'))} | "
                f"{fmt(figures.get('minflt_per_process'))} | {fmt(figures.get('cpu_us_per_process'), 0)} | "
                f"{fmt(figures.get('pss_after_mib'), 0)} |"
            )
    rows.append("\n## Ratios chorus / stock (lower is better)\n")
    rows.append("| N | " + " | ".join(RATIO_FIGURES) + " |")
    rows.append("|---|" + "---|" * len(RATIO_FIGURES))
    for n in report["settings"]["sizes"]:
        r = report["ratios"][str(n)]
        rows.append(f"| {n:,} | " + " | ".join(fmt(r.get(k), 2) for k in RATIO_FIGURES) + " |")
    rows.append("\n## Chorus against issue 2's goals\n")
    rows.append("| goal | chorus | met |")
    rows.append("|---|---|---|")
    for g in report["goals"]:
        shown = g["chorus"]
        if isinstance(shown, dict):
            shown = ", ".join(
                f"{k}: {fmt(x) if not isinstance(x, dict) else fmt(x['chorus'], 2) + ' vs ' + fmt(x['stock'], 2)}"
                for k, x in shown.items()
            )
        met = "yes" if g["met"] else ("no" if g["judged"] else "not measured")
        rows.append(f"| {g['goal']} | {shown or '–'} | {met} |")
    return "\n".join(rows) + "\n"


def finish(report: dict) -> None:
    """Summaries, ratios and goals, computed from the raw runs of a report."""
    sizes = report["settings"]["sizes"]
    runs = report["runs"]
    summaries = {
        rt: {n: summarize([r for r in runs if r["runtime"] == rt and r["processes"] == n])
             for n in sizes}
        for rt in ("stock", "chorus")
    }
    report["summary"] = {rt: {str(n): s for n, s in by_n.items()} for rt, by_n in summaries.items()}
    report["ratios"] = {
        str(n): {k: ratio(summaries["chorus"][n].get(k), summaries["stock"][n].get(k))
                 for k in RATIO_FIGURES}
        for n in sizes
    }
    report["goals"] = goals(summaries, sizes)
    report.setdefault("vm_max_map_count_at_end", max_map_count())


def write_report(report: dict, out_dir: Path) -> None:
    stamp = report["timestamp"]
    json_path = out_dir / f"platform-{stamp}.json"
    md_path = out_dir / f"platform-{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(markdown(report))
    shutil.copyfile(json_path, out_dir / "platform-latest.json")
    shutil.copyfile(md_path, out_dir / "platform-latest.md")
    print(f"wrote {json_path} and {md_path}")


# --------------------------------------------------------------------------
# main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,5000,20000,100000",
                   help="comma-separated process counts (default %(default)s)")
    p.add_argument("--repeat", type=int, default=1, help="runs per runtime and size")
    p.add_argument("--rounds", type=int, default=20_000, help="round trips per run")
    p.add_argument("--runtimes", default="stock,chorus", help="which runtimes to run")
    p.add_argument("--tiny", action="store_true",
                   help="CI smoke run: --sizes 200 --repeat 1 --rounds 1000, output to a temp dir")
    p.add_argument("--guest", help="the platform-guest .wasm")
    p.add_argument("--chorus", help="the chorus binary (default target/release/chorus)")
    p.add_argument("--lunatic", help="the stock lunatic binary (default: PATH, ~/.cargo/bin)")
    p.add_argument("--no-install", action="store_true", help="never cargo-install lunatic")
    p.add_argument("--chorus-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for chorus (e.g. CHORUS_RUNTIME_PROCESS_STACK_KIB=64)")
    p.add_argument("--hold-ms", type=int, default=1000,
                   help="how long the guest waits before spawning, for the baseline reading")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds between READY and the memory reading")
    p.add_argument("--timeout-base", type=float, default=60.0, help="seconds per run, plus…")
    p.add_argument("--timeout-per-process", type=float, default=0.002,
                   help="…this many seconds per process")
    p.add_argument("--warm-slots", action="store_true",
                   help="guest starts and kills N processes before the timed starts "
                        "(starts into reused slots, as under churn; default: never-used slots)")
    p.add_argument("--out", help="results directory (default bench/results)")
    p.add_argument("--render", metavar="JSON",
                   help="only recompute summaries and the Markdown of an earlier results file")
    p.add_argument("--no-skip", action="store_true",
                   help="run stock at sizes above the one where it already failed")
    args = p.parse_args()
    if args.tiny:
        args.sizes, args.repeat, args.rounds = "200", 1, 1000
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    for r in args.runtimes:
        if r not in ("stock", "chorus"):
            p.error(f"unknown runtime {r}")
    return args


def main() -> int:
    args = parse_args()
    if args.render:
        path = Path(args.render)
        report = json.loads(path.read_text())
        finish(report)
        write_report(report, path.parent)
        return 0
    guest = find_guest(args.guest)
    chorus = find_chorus(args.chorus) if "chorus" in args.runtimes else None
    lunatic = find_lunatic(args.lunatic, not args.no_install) if "stock" in args.runtimes else None
    chorus_env = dict(kv.split("=", 1) for kv in args.chorus_env)

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if args.out:
        out_dir = Path(args.out)
    elif args.tiny:
        out_dir = Path(tempfile.gettempdir()) / "chorus-platform-bench"
    else:
        out_dir = REPO / "bench/results"
    out_dir.mkdir(parents=True, exist_ok=True)

    git = lambda *a: command_output(["git", "-C", str(REPO), *a])  # noqa: E731
    report: dict = {
        "timestamp": stamp,
        "command": " ".join(["python3 bench/platform.py", *sys.argv[1:]]),
        "method": __doc__,
        "machine": machine_info(),
        "versions": {
            "lunatic": command_output([str(lunatic), "--version"]) if lunatic else None,
            "lunatic_path": str(lunatic) if lunatic else None,
            "chorus": command_output([str(chorus), "--version"]) if chorus else None,
            "chorus_path": str(chorus) if chorus else None,
            "chorus_sha256": sha256(chorus) if chorus else None,
            "chorus_mtime": (dt.datetime.fromtimestamp(chorus.stat().st_mtime, dt.timezone.utc)
                             .isoformat() if chorus else None),
            "chorus_env": chorus_env,
            "guest_path": str(guest),
            "guest_sha256": sha256(guest),
            "git_commit": git("rev-parse", "HEAD") or "unknown",
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        },
        "settings": {
            "sizes": args.sizes, "repeat": args.repeat, "rounds": args.rounds,
            "runtimes": args.runtimes, "hold_ms": args.hold_ms, "settle_s": args.settle,
            "warm_slots": args.warm_slots,
        },
        "runs": [],
    }
    binaries = {"stock": lunatic, "chorus": chorus}

    stock_failed_at: int | None = None
    for rep in range(args.repeat):
        order = list(args.runtimes) if rep % 2 == 0 else list(reversed(args.runtimes))
        for n in args.sizes:
            for rt in order:
                if rt == "stock" and stock_failed_at is not None and n > stock_failed_at \
                        and not args.no_skip:
                    run = {"runtime": rt, "processes": n, "status": "skipped",
                           "reason": f"stock failed at {stock_failed_at:,}"}
                else:
                    run = run_one(rt, binaries[rt], guest, n, args, chorus_env)
                    if rt == "stock" and run["status"] == "failed":
                        stock_failed_at = min(n, stock_failed_at or n)
                run["repetition"] = rep
                report["runs"].append(run)
                g = run.get("guest", {})
                print(
                    f"[{rep}] {rt:6} N={n:>7,} {run['status']:7} spawned={run.get('spawned', '-')}"
                    f" start p50={g.get('start_p50_us')} µs rtt p50={g.get('rtt_p50_us')} µs"
                    f" PSS/proc={run.get('pss_per_process_kib')} KiB"
                    + (f" error={run['error']!r}" if run.get("error") else ""),
                    flush=True,
                )

    finish(report)
    write_report(report, out_dir)

    if args.tiny:
        # CI: the bench must still run end to end; timings are not judged.
        bad = [r for r in report["runs"] if r["status"] != "ok"]
        for r in bad:
            print(f"tiny run failed: {r['runtime']} N={r['processes']}: {r.get('error')}\n"
                  f"{r.get('stderr_excerpt', '')}", file=sys.stderr)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
