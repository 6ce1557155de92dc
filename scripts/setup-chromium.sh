#!/usr/bin/env bash
# Makes sure a headless Chromium is on PATH, so the report test can render
# the HTML report as a reader's browser would (stages/tests/report.rs).
# Installed once per machine with apt (Debian's `chromium`, about 300 MB);
# idempotent and quiet when done. Needs root or sudo for the install.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/apt-once.sh"

have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1
}
chromium_version() { chromium --version || chromium-browser --version || google-chrome --version; }

apt_once Chromium have_chromium chromium_version chromium
