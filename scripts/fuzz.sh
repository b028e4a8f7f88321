#!/usr/bin/env bash
# Fuzzing of the parsers that read client bytes (cargo-fuzz / libFuzzer):
# the Phoenix decoders, the WebSocket frame decoder, the HTTP head parser,
# join-config parsing and the JWT verifier (targets in fuzz/fuzz_targets/,
# seed corpora in fuzz/corpus/<target>/).
#
#   scripts/fuzz.sh smoke [SECONDS]     each target for SECONDS (default 5); what CI runs
#   scripts/fuzz.sh campaign [RUNS]     each target for RUNS executions (default 10,000,000),
#                                       the targets side by side, one process each; figures
#                                       written to fuzz/results/campaign-<UTC date>.txt
#   scripts/fuzz.sh run TARGET [ARGS…]  one target, libFuzzer ARGS passed through
#
# Installs cargo-fuzz from crates.io when missing. libFuzzer's flags are
# nightly-only; the stable toolchain accepts them with RUSTC_BOOTSTRAP=1.
# Sanitizer: none (the targets are safe Rust; a panic is the finding).
# New inputs go to a scratch directory, so the committed corpora only change
# by hand. A crash leaves its input in fuzz/artifacts/<target>/ and fails.
source "$(dirname "$0")/lib.sh"

TARGETS=(phoenix_decode ws_frames http_head join_config jwt)

ensure_rust
ensure_native_deps
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
FUZZ=(cargo fuzz)

build() {
  log "building the fuzz targets"
  "${FUZZ[@]}" build -s none --fuzz-dir fuzz "$@"
}

# run_target TARGET LIBFUZZER_ARGS… : runs the target built by `build`
# (what `cargo fuzz run` runs, without rebuilding per target); prints
# libFuzzer's final stats.
run_target() {
  local target=$1; shift
  local scratch
  scratch=$(mktemp -d)
  local rc=0
  mkdir -p "fuzz/artifacts/$target"
  "fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release/$target" \
    -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 "$@" \
    "$scratch" "fuzz/corpus/$target" || rc=$?
  rm -rf "$scratch"
  return $rc
}

mode=${1:-smoke}
case "$mode" in
  smoke)
    secs=${2:-5}
    build
    for t in "${TARGETS[@]}"; do
      log "fuzzing $t for ${secs}s"
      log_file=$(mktemp)
      if ! run_target "$t" -max_total_time="$secs" >"$log_file" 2>&1; then
        tail -n 40 "$log_file" >&2
        log "fuzz target $t FAILED (input saved under fuzz/artifacts/$t/)"
        exit 1
      fi
      grep -E 'stat::number_of_executed_units' "$log_file" || true
      rm -f "$log_file"
    done
    echo "${#TARGETS[@]} passed, 0 failed"
    ;;
  campaign)
    runs=${2:-10000000}
    build
    mkdir -p fuzz/results
    out="fuzz/results/campaign-$(date -u +%Y-%m-%d).txt"
    {
      echo "# cargo-fuzz campaign: ${runs} executions per target"
      echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
      echo "# target executions seconds exec_per_s new_corpus_units crashes"
    } >"$out"
    failed=0
    # The targets run side by side (one process each), then report in order.
    logs=$(mktemp -d)
    for t in "${TARGETS[@]}"; do
      log "campaign: $t, $runs executions"
      (
        start=$(date +%s)
        if run_target "$t" -runs="$runs" >"$logs/$t.log" 2>&1; then echo 0; else echo 1; fi >"$logs/$t.rc"
        echo $(( $(date +%s) - start )) >"$logs/$t.secs"
      ) &
    done
    wait
    for t in "${TARGETS[@]}"; do
      crashes=$(cat "$logs/$t.rc"); secs=$(cat "$logs/$t.secs")
      [ "$crashes" = 0 ] || failed=$((failed + 1))
      execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -n1)
      units=$(grep -o 'stat::new_units_added: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -n1)
      rate=$(( ${execs:-0} / (secs > 0 ? secs : 1) ))
      echo "$t ${execs:-0} $secs $rate ${units:-0} $crashes" | tee -a "$out"
      [ "$crashes" = 0 ] || tail -n 40 "$logs/$t.log" >&2
    done
    rm -rf "$logs"
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out"
    log "figures in $out"
    [ $failed = 0 ]
    ;;
  run)
    shift
    build
    run_target "$@"
    ;;
  *)
    echo "usage: $0 smoke [SECONDS] | campaign [RUNS] | run TARGET [LIBFUZZER_ARGS…]" >&2
    exit 2
    ;;
esac
