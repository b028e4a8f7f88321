#!/usr/bin/env python3
"""Where the memory of an idle guest process goes: PSS per mapping class.

Runs the platform guest (``bench/platform-guest``) once on ``chorus exec``,
like ``bench/platform.py`` does (clean environment, empty working directory,
``--hold-before-ms``), reads ``/proc/<pid>/smaps`` at ``BASELINE`` and again
``--settle`` seconds after ``READY``, and groups the mappings by
(file name, permissions, size).  Every group whose PSS changed is reported
with its change per spawned process, largest first.  Anonymous mappings of
one size are one group: wasmtime's pool slots (linear memory parts split by
``mprotect``, native fiber stacks, the table pool) and glibc's malloc arenas
(64 MiB heaps, ``[heap]``) can then be told apart by their sizes, which the
JSON records.

Output: ``platform-breakdown-<UTC timestamp>.json`` in ``--out`` (default
``bench/results``).  Nothing is built here; inputs as for ``platform.py``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VMA = re.compile(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)")


def groups(pid: int) -> dict[tuple[str, str, int], list[int]]:
    """PSS (KiB) and mapping count per (name, perms, size KiB)."""
    out: dict[tuple[str, str, int], list[int]] = collections.defaultdict(lambda: [0, 0])
    key = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = VMA.match(line)
            if m:
                size = (int(m[2], 16) - int(m[1], 16)) >> 10
                key = (m[4].strip(), m[3], size)
                out[key][1] += 1
            elif line.startswith("Pss:") and key is not None:
                out[key][0] += int(line.split()[1])
    return out


def wait_for(proc: subprocess.Popen, word: str, deadline: float) -> list[str]:
    lines = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.strip() == word:
            return lines
    raise SystemExit(f"no {word} from the guest; got {lines[-3:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=10_000)
    p.add_argument("--guest", default=str(REPO / "target/wasm32-wasip1/release/platform-guest.wasm"))
    p.add_argument("--chorus", default=str(REPO / "target/release/chorus"))
    p.add_argument("--settle", type=float, default=1.0)
    # Reading the smaps of ~220,000 mappings (the pool's stack guards) takes
    # seconds: the guest must not start spawning while the baseline is read.
    p.add_argument("--hold-ms", type=int, default=30000)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--out", default=str(REPO / "bench/results"))
    args = p.parse_args()

    cmd = [args.chorus, "exec", args.guest, "--processes", str(args.processes),
           "--rounds", "1000", "--hold-before-ms", str(args.hold_ms)]
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    workdir = tempfile.mkdtemp(prefix="platform-breakdown-")
    deadline = time.monotonic() + args.timeout
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        wait_for(proc, "BASELINE", deadline)
        read_started = time.monotonic()
        before = groups(proc.pid)
        if time.monotonic() - read_started > args.hold_ms / 1000 * 0.8:
            raise SystemExit("the baseline took too long to read; raise --hold-ms")
        lines = wait_for(proc, "READY", deadline)
        time.sleep(args.settle)
        after = groups(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    summary = next((json.loads(l) for l in lines if l.startswith("{")), {})
    spawned = summary.get("spawned") or args.processes

    rows = []
    for key in set(before) | set(after):
        pss0, n0 = before.get(key, [0, 0])
        pss1, n1 = after.get(key, [0, 0])
        if pss1 == pss0:
            continue
        name, perms, size = key
        rows.append({
            "name": name, "perms": perms, "mapping_kib": size,
            "mappings_before": n0, "mappings_after": n1,
            "pss_before_kib": pss0, "pss_after_kib": pss1,
            "pss_per_process_kib": round((pss1 - pss0) / spawned, 2),
        })
    rows.sort(key=lambda r: -abs(r["pss_after_kib"] - r["pss_before_kib"]))
    total = sum(r["pss_after_kib"] - r["pss_before_kib"] for r in rows)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "command": cmd,
        "spawned": spawned,
        "guest_summary": summary,
        "pss_per_process_kib_total": round(total / spawned, 2),
        "groups": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"platform-breakdown-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"total {result['pss_per_process_kib_total']} KiB PSS per process over {spawned}")
    for r in rows[:12]:
        print(f"{r['pss_per_process_kib']:>7} KiB/proc  {r['perms']} {r['mapping_kib']:>10} KiB x{r['mappings_after']:<7} {r['name']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
