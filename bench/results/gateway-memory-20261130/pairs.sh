#!/bin/bash
# usage: pairs.sh OUTDIR NEWROOT BASEROOT STORM_PAIRS IDLE_PAIRS
# Alternating runs (new, base, new, base, ...) of chorus-bench: connect-storm
# 5,000, then idle 2,000 held 8 s; each ROOT holds target/release/chorus,
# target/wasm32-wasip1/release/chorus-guest.wasm and lunatic.toml.
set -u
out=$1; new=$2; base=$3; sp=$4; ip=$5
bench=${CHORUS_BENCH:-target/release/chorus-bench}
mkdir -p "$out"
export CHORUS_BENCH_PORT=47561
run() { # kind label root n
  local kind=$1 label=$2 root=$3 n=$4 d="$out/$1-$2-$4"
  echo "$(date -u +%H:%M:%S) $(uptime)" > "$d.uptime"
  if [ "$kind" = storm ]; then
    $bench run --system chorus --scenario connect-storm --clients 5000 --root "$root" --out "$d" > "$d.log" 2>&1
  else
    $bench run --system chorus --scenario idle --clients 2000 --duration 8 --root "$root" --out "$d" > "$d.log" 2>&1
  fi
  echo "$(date -u +%H:%M:%S) $(uptime)" >> "$d.uptime"
  cp "$d"/runs/*.json "$d.json" 2>/dev/null
  grep done: "$d.log"
}
for i in $(seq 1 $sp); do
  run storm new "$new" $i; run storm base "$base" $i
done
for i in $(seq 1 $ip); do
  run idle new "$new" $i; run idle base "$base" $i
done
