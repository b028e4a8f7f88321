#!/usr/bin/env bash
# README command 2: install what is missing, build, and run every test:
# formatting and lints, native unit and property tests (core), the host's
# end-to-end tests against real node processes (Rust WebSocket client),
# the supervision scenarios under `chorus exec`, the Node.js suite with the
# real @supabase/realtime-js and phoenix clients (the client kit, the
# dashboard and the demo room in headless Chromium: screenshots in
# target/test-artifacts/dashboard/ and target/test-artifacts/demo/), the
# .deb installed and started, a few seconds of each fuzz target, and a tiny
# run of each benchmark (to keep the harness working; no timing is asserted).
source "$(dirname "$0")/lib.sh"

build_all
apt_install sqlite3
apt_install haproxy      # the load balancer of the cluster failover test
ensure_chromium          # the demo room's browser test
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  apt_install openjdk-17-jdk-headless maven
fi
ensure_chromium          # the dashboard's browser test
ensure_prometheus_tools  # promtool + prometheus for the metrics tests

log "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
"${GUEST_CARGO[@]}" clippy --release --target wasm32-wasip1 \
  -p chorus-guest -p supervisors -p platform-guest \
  -p chorus-module -p chorus-module-moderation -p chorus-module-slowmode -p chorus-module-faulty \
  --all-targets -- -D warnings
(cd clients/kit && npx tsc -p tsconfig.json --noEmit)

log "building the guest test modules"
build_guest -p supervisors --example scenarios
build_guest -p supervisors --example cluster_ping   # the cross-node round trip of tests/cluster.rs
build_guest -p platform-guest
build_guest -p chorus-module-faulty   # the misbehaving module of the module tests

export CHORUS_BIN="$ROOT/target/release/chorus"
export CHORUS_GUEST="$ROOT/target/wasm32-wasip1/release/chorus-guest.wasm"
export CHORUS_SUPERVISOR_SCENARIOS_WASM="$ROOT/target/wasm32-wasip1/release/examples/scenarios.wasm"
export CHORUS_CLUSTER_PING_WASM="$ROOT/target/wasm32-wasip1/release/examples/cluster_ping.wasm"

log "starting a real Apache Cassandra for the CQL store tests"
scripts/cassandra.sh start
trap 'scripts/cassandra.sh stop >/dev/null 2>&1 || true' EXIT
export CHORUS_SCYLLA_NODES=127.0.0.1:9042

log "native tests (core, host end-to-end, both store backends, supervisors under chorus)"
cargo test --release --workspace --exclude chorus-guest --exclude supervisors --exclude platform-guest

log "Node.js tests with @supabase/realtime-js and phoenix"
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error && npm test)

log "the Debian package: contents, systemd unit, install, start, purge"
scripts/deb-test.sh "$(build_deb)"

log "fuzz targets, a few seconds each (campaigns: scripts/fuzz.sh campaign)"
scripts/fuzz.sh smoke 5

log "benchmarks, tiny size (harness check only)"
python3 bench/platform.py --tiny
cargo run --release -p chorus-host --example store_bench -- --tiny --out "$(mktemp -d)"
scripts/bench.sh --tiny

log "all tests passed"
