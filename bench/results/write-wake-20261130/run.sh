#!/bin/bash
# Alternating new/base pairs for the write-wake change.
set -u
NEW=/work/wt/runtime5
BASE=/work/tmp/r5-base
BENCH=/work/wt/runtime5/target/release/chorus-bench
OUT=$OUT_DIR
LOG=$OUT/runs.log
mkdir -p $OUT
export CHORUS_BENCH_PORT=47485
one() { # name root args...
  local name=$1 root=$2; shift 2
  local tmp=/work/tmp/r5-bench/$name; rm -rf $tmp; mkdir -p $tmp
  echo "$(date -u +%H:%M:%S) $name start; uptime: $(uptime)" >> $LOG
  $BENCH run --system chorus --root $root --out $tmp "$@" > $tmp/stdout 2>&1
  echo "$(date -u +%H:%M:%S) $name rc=$? $(grep -h 'done' $tmp/stdout | tail -1)" >> $LOG
  for f in $tmp/*.json; do cp "$f" $OUT/$name.json; done
}
sat="--scenario many-rooms --clients 1000 --members 10 --rate 2 --duration 15"
fan="--scenario fan-out --clients 5000 --rate 50"
unsat="--scenario many-rooms --clients 200 --members 10 --rate 1 --duration 15"
for r in 1 2 3; do
  if [ $((r % 2)) = 1 ]; then order="new base"; else order="base new"; fi
  for who in $order; do root=$NEW; [ $who = base ] && root=$BASE; one sat-$who-$r $root $sat; done
  for who in $order; do root=$NEW; [ $who = base ] && root=$BASE; one fan-$who-$r $root $fan; done
done
for r in 1 2; do
  if [ $((r % 2)) = 1 ]; then order="new base"; else order="base new"; fi
  for who in $order; do root=$NEW; [ $who = base ] && root=$BASE; one unsat-$who-$r $root $unsat; done
done
echo "$(date -u +%H:%M:%S) all done" >> $LOG
