"""Prints the README's run table from the harness-written JSON files here."""
import json, sys, os

ROWS = [
    # (file, what)
    ("c-q1", "main 8c3bc28"), ("n-q1", "NATS"),
    ("c-hog1", "main, one busy loop"), ("n-hog1", "NATS, one busy loop"),
    ("c-q2", "main"), ("n-q2", "NATS"), ("c-q3", "main"),
    ("c-d30-a", "experiment: delay 30 ms, ≥ 256 wakes"), ("c-d20-a", "experiment: delay 20 ms, ≥ 256 wakes"),
    ("c-base-a", "main"), ("n-a", "NATS"),
    ("c-d30-hog", "experiment 30 ms, busy loop"), ("c-base-hog", "main, busy loop"), ("n-hog3", "NATS, busy loop"),
    ("c10-d30", "experiment 30 ms"), ("c10-base", "main"), ("n10", "NATS"),
    ("s1-new", "9244c07 (default 30 ms / 256)"), ("s1-nats", "NATS"), ("s1-off", "9244c07, delay 0"),
    ("s2-new", "9244c07 (default)"), ("s2-nats", "NATS"), ("s2-off", "9244c07, delay 0"),
    ("s3-new-hog", "9244c07 (default), busy loop"), ("s3-nats-hog", "NATS, busy loop"),
]
here = os.path.dirname(os.path.abspath(__file__))
print("| run | load | what | p50 ms | p99 ms | delivered % | node CPU µs / delivery |")
print("|---|---|---|---|---|---|---|")
for name, what in ROWS:
    d = json.load(open(os.path.join(here, name + ".json")))
    p = d["params"]
    load = f'{p["clients"]:,} × {p["rate"]:g}/s'
    print(f'| {name} | {load} | {what} | {d["latency"]["p50_ms"]:.1f} | {d["latency"]["p99_ms"]:.1f} | '
          f'{d["delivered_pct"]:.2f} | {d["cpu_us_per_delivery"]:.2f} |')

# The socket queues sampled by sample.py (`ss`, every 0.2 s) while c-q1 and n-q1 published.
import re
print()
print("| run | samples while publishing | bytes unread in the loader's receive queues: mean | max | sockets with unread bytes: mean |")
print("|---|---|---|---|---|")
for name in ("c-q1", "n-q1"):
    rows = []
    for line in open(os.path.join(here, name + ".samples")):
        m = re.match(r'\s*([\d.]+) port \d+ conns (\d+) srv_sendq (\d+) srv_recvq (\d+) cli_recvq (\d+) \((\d+) nonzero\)', line)
        if m and int(m.group(2)) > 4000 and int(m.group(3)) + int(m.group(5)) > 0:
            rows.append((int(m.group(5)), int(m.group(6))))
    n = len(rows)
    print(f"| {name} | {n} | {sum(r[0] for r in rows)/n/1e6:.2f} MB | {max(r[0] for r in rows)/1e6:.2f} MB | {sum(r[1] for r in rows)/n:,.0f} of 5,000 |")

# Per-thread CPU while c-q3 published (threads.py: ticks of 10 ms per ~0.1 s sample).
print()
print("| thread (c-q3) | share of one CPU while publishing |")
print("|---|---|")
samples = []
for line in open(os.path.join(here, "c-q3.threads")):
    p = line.split()
    d = {kv.rsplit('=', 1)[0]: int(kv.rsplit('=', 1)[1]) for kv in p[1:]}
    samples.append((float(p[0]), d))
busy = [(t, d) for t, d in samples if sum(d.values()) >= 10]
span = busy[-1][0] - busy[0][0]
tot = {}
for t, d in busy[1:]:
    for k, v in d.items():
        tot[k] = tot.get(k, 0) + v
for k, v in sorted(tot.items(), key=lambda x: -x[1])[:3]:
    comm = k.split(':')[0]
    print(f"| {'loader (chorus-bench worker)' if comm == 'chorus-bench' else 'node worker thread'} `{k}` | {v / 100 / span * 100:.0f} % |")
print(f"| all three, of the machine's 2 CPUs | {sum(sorted(tot.values(), reverse=True)[:3]) / 100 / span / 2 * 100:.0f} % |")
