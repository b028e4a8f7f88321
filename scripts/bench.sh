#!/usr/bin/env bash
# README command: the benchmark suite. Chorus, NATS and Centrifugo side by
# side: connect storm, fan-out (two loads, five runs each), many rooms, idle
# sessions; then Chorus-only loads (chat + presence bytes on the wire,
# presence churn, audio under a reaction flood), compared with Chorus
# baselines of the same run. Installs the peers and fonts it needs (NATS
# from Debian, Centrifugo built once with `go install` and cached), builds
# Chorus and the load generator, runs the suite (~30 minutes, progress and
# ETA printed) and rewrites BENCHMARKS.md from the results files.
#
#   scripts/bench.sh            the standard suite
#   scripts/bench.sh --tiny     a minute-long harness check for CI (no timings
#                               asserted; exit 0 when every system that ran
#                               went through). Never builds Centrifugo: it
#                               joins only when its binary is already there.
#                               With CHORUS_SCYLLA_NODES set it also runs a
#                               3-node cluster smoke (chorus-bench cluster).
#
# Any other argument goes to `chorus-bench suite` (see `--help`), e.g.
# `--systems chorus,nats,centrifugo,rabbitmq` (RabbitMQ Web-MQTT is out of
# the standard suite for time; asking for it installs it) or
# `--scenarios fan-out --fanout-loads 10000x25`.
#
# The bench never touches the machine's services: every peer is the bench's
# own process on its own ports, started and stopped per run.
source "$(dirname "$0")/lib.sh"

CENTRIFUGO_MODULE=github.com/centrifugal/centrifugo/v6
CENTRIFUGO_VERSION=v6.9.1

tiny=0
want_rabbitmq=0
for a in "$@"; do
  case "$a" in
    --tiny) tiny=1 ;;
    *rabbitmq*) want_rabbitmq=1 ;;
  esac
done

apt_install nats-server fonts-dejavu-core
if [ $want_rabbitmq = 1 ]; then
  # Debian's package starts its own rabbitmq-server service when it is
  # installed; the bench leaves it alone and runs its own broker (node
  # chorusbench@localhost, ports 47420-47423).
  apt_install rabbitmq-server
fi

# The Go toolchain for Centrifugo: the machine's, else Debian's (whose Go
# fetches the newer toolchain Centrifugo's go.mod asks for through the Go
# module proxy).
find_go() {
  for g in go /usr/local/go/bin/go /usr/lib/go/bin/go; do
    if command -v "$g" >/dev/null 2>&1; then command -v "$g"; return 0; fi
  done
  return 1
}

# Sets CENTRIFUGO to the cached binary, building it when allowed.
ensure_centrifugo() {
  local go gobin
  CENTRIFUGO=""
  if go=$(find_go); then
    gobin=$("$go" env GOBIN)
    [ -n "$gobin" ] || gobin="$("$go" env GOPATH)/bin"
  else
    gobin="$HOME/go/bin"
  fi
  # `go install` leaves the binary's own `version` at v0.0.0; the module
  # version is in its build info.
  if [ -x "$gobin/centrifugo" ] && [ -n "${go:-}" ] \
     && "$go" version -m "$gobin/centrifugo" 2>/dev/null | grep -Eq "^[[:space:]]*mod[[:space:]]+$CENTRIFUGO_MODULE[[:space:]]+$CENTRIFUGO_VERSION([[:space:]]|\$)"; then
    CENTRIFUGO="$gobin/centrifugo"
    return 0
  fi
  if [ $tiny = 1 ]; then
    log "Centrifugo $CENTRIFUGO_VERSION is not built here; the tiny suite runs without it"
    return 0
  fi
  if [ -z "${go:-}" ]; then
    apt_install golang-go ca-certificates
    go=$(find_go) || { log "no Go toolchain: Centrifugo cannot be built, the suite goes on without it"; return 0; }
  fi
  log "building Centrifugo $CENTRIFUGO_VERSION with go install (about 10 minutes, once; cached in $gobin)"
  if GOTOOLCHAIN=auto GOFLAGS=-buildvcs=false "$go" install "$CENTRIFUGO_MODULE@$CENTRIFUGO_VERSION"; then
    CENTRIFUGO="$gobin/centrifugo"
  else
    log "Centrifugo could not be built; its runs will say so and the suite goes on with NATS"
  fi
}
ensure_centrifugo
if [ -n "$CENTRIFUGO" ]; then export CHORUS_BENCH_CENTRIFUGO="$CENTRIFUGO"; fi

build_all
log "building the load generator (chorus-bench)"
cargo build --release -p chorus-bench

# The tiny run also checks the cluster harness (chorus-bench cluster: a
# control server and 3 nodes, 300 sessions, ~30 s) where a CQL store is up
# (scripts/test.sh starts one and sets CHORUS_SCYLLA_NODES). The full cluster
# runs take the machine for ten minutes: BENCHMARKS.md's cluster section
# gives their commands.
if [ $tiny = 1 ] && [ -n "${CHORUS_SCYLLA_NODES:-}" ]; then
  log "cluster harness, tiny: 3 nodes, 30 rooms x 10 members"
  "$ROOT/target/release/chorus-bench" cluster --root "$ROOT" --nodes 3 --scenario many-rooms \
    --rooms 30 --members 10 --room-rate 2 --duration 3 --after 0 --keyspace chorus_cluster_tiny \
    --dir "$(mktemp -d)"
fi

log "running the benchmark suite"
exec "$ROOT/target/release/chorus-bench" suite --root "$ROOT" --out "$ROOT/bench/results" "$@"
