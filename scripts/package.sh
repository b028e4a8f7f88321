#!/usr/bin/env bash
# Builds the node (guest embedded in the host) and its Debian package with
# a systemd unit; prints the .deb's path. Install it with `dpkg -i`.
source "$(dirname "$0")/lib.sh"
build_all
deb=$(build_deb)
log "package: $deb"
echo "$deb"
