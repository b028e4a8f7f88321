#!/bin/bash
# One saturated many-rooms run with `perf stat` counting the server's write
# syscalls for 10 s of the publish phase. Usage: sys.sh NAME ROOT
set -u
name=$1 root=$2
OUT=/work/wt/runtime5/bench/results/write-wake-20261130/syscalls
mkdir -p $OUT
export CHORUS_BENCH_PORT=47485
tmp=/work/tmp/r5-bench/$name; rm -rf $tmp; mkdir -p $tmp
echo "$(date -u +%H:%M:%S) $name start; uptime: $(uptime)" >> $OUT/../runs.log
/work/wt/runtime5/target/release/chorus-bench run --system chorus --root $root --out $tmp \
  --scenario many-rooms --clients 1000 --members 10 --rate 2 --duration 15 > $tmp/stdout 2>&1 &
bench=$!
# wait for the publish phase
for i in $(seq 1 600); do grep -q " sent " $tmp/stdout 2>/dev/null && break; sleep 0.2; done
pid=$(ss -ltnpH "sport = :47485" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
line0=$(grep " sent " $tmp/stdout | tail -1)
perf stat -x, -e syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg -p $pid -o $tmp/perf.csv -- sleep 10
line1=$(grep " sent " $tmp/stdout | tail -1)
wait $bench
f=$(ls $tmp/runs/*.json | head -1); cp $f $OUT/../$name.json
{ echo "server pid $pid"; echo "before: $line0"; echo "after:  $line1"; cat $tmp/perf.csv; } > $OUT/$name.txt
echo "$(date -u +%H:%M:%S) $name rc=done $(grep -h 'done' $tmp/stdout | tail -1)" >> $OUT/../runs.log
