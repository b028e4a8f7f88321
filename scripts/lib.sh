# Shared helpers for the set-up, build, run and test scripts. Sourced, not run.
# Every step is idempotent and quick when its work is already done.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

APT_UPDATED=0
# apt_install PKG... : installs the Debian packages that are missing.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  if [ $APT_UPDATED = 0 ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The Rust toolchain itself (rustup), if the machine has none.
ensure_rust() {
  if ! command -v cargo >/dev/null; then
    apt_install curl ca-certificates
    log "installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  fi
}

# The wasm32-wasip1 target. rustup where it can download; otherwise Debian's
# rustc-web with its std sources and wasi-libc, building std ourselves
# (../shared/design/TOOLCHAIN.md). Sets GUEST_CARGO (the command prefix that
# builds guests).
ensure_wasm_target() {
  if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 \
     || timeout 120 rustup target add wasm32-wasip1 >/dev/null 2>&1; then
    GUEST_CARGO=(cargo)
    return 0
  fi
  log "rustup cannot fetch wasm32-wasip1; using Debian's rustc-web and build-std"
  apt_install rustc-web cargo-web rust-web-src wasi-libc lld
  local sc=/usr/lib/rustlib/wasm32-wasip1/lib/self-contained
  $SUDO mkdir -p "$sc"
  for f in crt1-command.o crt1-reactor.o crt1.o libc.a libm.a libdl.a libpthread.a librt.a \
           libutil.a libresolv.a libxnet.a libcrypt.a libwasi-emulated-mman.a; do
    src=$(ls /usr/lib/wasm32-wasi/$f /usr/lib/wasm32-wasi/*/$f 2>/dev/null | head -n1 || true)
    [ -n "$src" ] && [ ! -e "$sc/$f" ] && $SUDO ln -s "$src" "$sc/$f"
  done
  GUEST_CARGO=(env RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 "RUSTFLAGS=-C linker=wasm-ld"
               /usr/bin/cargo -Zbuild-std=std,panic_abort)
}

# Native build prerequisites: C compiler (bundled SQLite), pkg-config, and the
# font libraries the benchmark plots link (plotters).
ensure_native_deps() {
  apt_install build-essential pkg-config libfontconfig1-dev libfreetype-dev iproute2
}

# build_guest ARGS... : cargo build for wasm32-wasip1 with the chosen toolchain.
build_guest() {
  "${GUEST_CARGO[@]}" build --release --target wasm32-wasip1 "$@"
}

# Node.js and npm (the client kit, the demo room's bundle, the Node tests).
ensure_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
  fi
}

# The shipped process modules (modules/*), each its own wasm32-wasip1
# cdylib, copied to target/modules/ (point modules.dir there to load them).
build_modules() {
  log "building the process modules (wasm32-wasip1): moderation, slowmode"
  build_guest -p chorus-module-moderation -p chorus-module-slowmode
  mkdir -p target/modules
  cp target/wasm32-wasip1/release/moderation.wasm target/wasm32-wasip1/release/slowmode.wasm target/modules/
}

# The client kit (TypeScript, compiled with tsc) and the demo room's bundle
# (the node serves clients/demo/dist at /demo).
build_clients() {
  ensure_node
  log "building the client kit (tsc)"
  (cd clients/kit && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
  log "building the demo room (esbuild bundle in clients/demo/dist, served at /demo/)"
  (cd clients/demo && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
}

# Debian's Chromium for the browser tests (npm playwright-core drives it; a
# test tool's own browser download cannot work here).
ensure_chromium() {
  apt_install chromium
}

# Everything a node needs: the guest module and the `chorus` host binary,
# the shipped process modules, the client kit and the demo room.
build_all() {
  ensure_rust
  ensure_native_deps
  ensure_wasm_target
  log "building the guest (wasm32-wasip1)"
  build_guest -p chorus-guest
  build_modules
  log "building the host (chorus)"
  cargo build --release -p chorus-host
  build_clients
}
