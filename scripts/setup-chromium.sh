#!/usr/bin/env bash
# Makes sure a headless Chromium is on PATH, so the report test can render
# the HTML report as a reader's browser would (stages/tests/report.rs).
# Installed once per machine with apt (Debian's `chromium`); idempotent and
# quiet when done. Needs root or sudo for the install. Prints nothing on
# stdout; exits non-zero when no Chromium could be had.
set -euo pipefail

have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1
}

if ! have_chromium; then
  # One installer at a time (test binaries may call this in parallel).
  mkdir -p "${XDG_CACHE_HOME:-$HOME/.cache}/cairn"
  exec 9>"${XDG_CACHE_HOME:-$HOME/.cache}/cairn/setup-chromium.lock"
  flock 9
fi
if ! have_chromium; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "cairn setup: Chromium is not installed and there is no apt-get; install chromium (or google-chrome) to check the rendered report" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "cairn setup: installing chromium with apt (about 300 MB; done once per machine)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  have_chromium
  echo "cairn setup: Chromium ready ($(chromium --version 2>/dev/null || chromium-browser --version 2>/dev/null || google-chrome --version))" >&2
fi
