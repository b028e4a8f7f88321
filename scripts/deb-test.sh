#!/usr/bin/env bash
# The .deb as an operator uses it: its contents, its systemd unit checked by
# `systemd-analyze verify`, installed with dpkg (the `chorus` user, the
# directories, the conffile), started the way the unit starts it, answering
# /healthz and /dashboard from its data directory, then purged.
#
# Where systemd runs (PID 1), the unit itself is started with systemctl.
# Where it does not (containers, this project's CI machines), the unit's
# ExecStart line is run as the unit's User with its WorkingDirectory: the
# same command, user and files, without the service manager.
#
# Usage: scripts/deb-test.sh target/debian/chorus_<version>_amd64.deb
# Needs root (dpkg -i); changes the machine only while it runs.
source "$(dirname "$0")/lib.sh"
deb=$(realpath "${1:?usage: deb-test.sh FILE.deb}")
passed=0
failed=0
check() {
  local what=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok   $what"
  else
    failed=$((failed + 1))
    echo "FAIL $what"
  fi
}

if dpkg-query -W -f='${Status}' chorus 2>/dev/null | grep -q "install ok installed"; then
  echo "a chorus package is already installed on this machine; not touching it" >&2
  exit 1
fi

contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/chorus ./etc/chorus/chorus.toml ./usr/lib/sysctl.d/60-chorus.conf \
         ./usr/share/chorus/grafana/chorus.json ./usr/share/doc/chorus/README.md \
         ./usr/share/doc/chorus/CONFIGURATION.md ./usr/share/doc/chorus/openapi.yaml; do
  check "the package holds $f" grep -q " $f\$" <<<"$contents"
done
unit_path=$(grep -o '\./[a-z/]*systemd/system/chorus.service' <<<"$contents" | head -n1)
check "the package holds the systemd unit" test -n "$unit_path"
check "conffiles lists /etc/chorus/chorus.toml" \
  bash -c "dpkg-deb --ctrl-tarfile '$deb' | tar -xO ./conffiles | grep -qx /etc/chorus/chorus.toml"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
node_pid=""
cleanup() {
  if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; fi
  if [ -d /run/systemd/system ]; then systemctl stop chorus 2>/dev/null || true; fi
  rm -f /etc/default/chorus
  DEBIAN_FRONTEND=noninteractive $SUDO dpkg --purge chorus >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "installing $deb"
quiet() { "$@" >/dev/null; }
check "dpkg -i installs it" quiet $SUDO dpkg -i "$deb"
unit=/${unit_path#./}
check "the chorus system user exists" quiet getent passwd chorus
check "/var/lib/chorus belongs to chorus" test "$(stat -c %U /var/lib/chorus)" = chorus
check "the installed binary runs from / and embeds the guest" \
  bash -c 'cd / && chorus version | grep -q "guest: embedded"'
check "the installed config passes check-config" chorus check-config --config /etc/chorus/chorus.toml

verify=$(systemd-analyze verify "$unit" 2>&1) && status=0 || status=$?
[ -n "$verify" ] && echo "$verify"
check "systemd-analyze verify: no error, no warning" test "$status" = 0 -a -z "$verify"
broken=$(mktemp --suffix=.service)
sed 's/^Restart=on-failure/Restart=sometimes/' "$unit" > "$broken"
check "systemd-analyze verify does complain about a broken copy" \
  bash -c "systemd-analyze verify '$broken' 2>&1 | grep -qi 'restart specifier'"
rm -f "$broken"

# The port is overridden through the file the unit reads (EnvironmentFile).
echo "CHORUS_PORT=$port" > /etc/default/chorus
if [ -d /run/systemd/system ]; then
  log "starting chorus.service with systemctl"
  check "systemctl start chorus" systemctl start chorus
else
  log "no systemd here (PID 1 is $(ps -p 1 -o comm=)): running the unit's ExecStart as its User"
  exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
  user=$(sed -n 's/^User=//p' "$unit")
  workdir=$(sed -n 's/^WorkingDirectory=//p' "$unit")
  check "the unit names its user and directory" test -n "$user" -a -n "$workdir"
  (cd "$workdir" && set -a && . /etc/default/chorus && set +a &&
     exec setpriv --reuid="$user" --regid="$user" --init-groups -- $exec_start) > /tmp/chorus-deb-test.log 2>&1 &
  node_pid=$!
fi
healthy=no
for _ in $(seq 1 600); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then healthy=yes; break; fi
  sleep 0.1
done
check "the installed node answers /healthz" test "$healthy" = yes
check "the installed node serves /dashboard" \
  bash -c "curl -fsS http://127.0.0.1:$port/dashboard | grep -q '<title>Chorus dashboard</title>'"
check "the node keeps its store in /var/lib/chorus" test -f /var/lib/chorus/chorus.db
check "the node runs as chorus" \
  bash -c "ps -o user= -C chorus | grep -qx chorus"
[ "$healthy" = yes ] || cat /tmp/chorus-deb-test.log 2>/dev/null || true

cleanup
node_pid=""
trap - EXIT
check "dpkg --purge removes the data" test ! -e /var/lib/chorus
echo "deb: $passed passed, $failed failed"
[ "$failed" = 0 ]
