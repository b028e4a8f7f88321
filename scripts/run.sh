#!/usr/bin/env bash
# README command 1: install what is missing, build, and run one node on the
# embedded store (SQLite under ./data). Extra arguments go to `chorus run`.
source "$(dirname "$0")/lib.sh"
build_all
log "starting the node: ws://127.0.0.1:${CHORUS_PORT:-4000}/realtime/v1/websocket"
exec "$ROOT/target/release/chorus" run --config "$ROOT/lunatic.toml" "$@"
