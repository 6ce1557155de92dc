#!/usr/bin/env bash
# Makes sure a Python venv holding PyPI torch==2.11.0 (the libtorch that
# tch 0.24 links) exists at a machine-level location, so every clone, CI run
# and later build reuses one 4.7 GB install, and points cargo at it by
# (re)writing `.cargo/config.toml` `[env] LIBTORCH`.
#
# Installs in place: the venv is created at its final path and the marker
# file `.cairn-ok` is written last, so a venv without the marker is an
# interrupted install and is recreated from scratch. Idempotent; prints
# nothing unless it has work to do. `CAIRN_TORCH_HOME` overrides the venv
# location, `PYTHON` the interpreter used to create it.
#
# Every run checks the sizes of torch's libraries against pip's RECORD;
# `--verify` (`make verify-torch`) also checks the sha256 RECORD gives every
# shared library of the venv (torch's and the CUDA wheels', about 4.5 GB,
# seconds to a minute), which finds a library damaged at its full size.
set -euo pipefail

VERIFY=
case "${1:-}" in
  --verify) VERIFY=1 ;;
  "") ;;
  *) echo "usage: $0 [--verify]" >&2; exit 2 ;;
esac

TORCH_VERSION=2.11.0
# Only the tests use it (they check our weights load into torchvision).
TORCHVISION_VERSION=0.26.0
VENV="${CAIRN_TORCH_HOME:-$HOME/.cache/cairn/torch-$TORCH_VERSION}"
PY="${PYTHON:-python3}"
MARKER="$VENV/.cairn-ok"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

have_torch() {
  [ -x "$VENV/bin/python" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$TORCH_VERSION" ]
}

# torch's RECORD (pip's list of its files, sizes and sha256), if any.
torch_record() {
  compgen -G "$VENV/lib/python3*/site-packages/torch-$TORCH_VERSION*.dist-info/RECORD" | head -n 1 || true
}

# The first of torch's libraries (what cairn-worker links) that is missing
# or not the size pip's RECORD gives it, if any: a libtorch deleted or cut
# short since the install (a cleanup, a disk that filled) is found here
# without hashing 4.7 GB on every `make`.
damaged_lib() {
  local record site rel size
  record="$(torch_record)"
  if [ -z "$record" ]; then
    echo "torch-$TORCH_VERSION's RECORD"
    return
  fi
  site="$(dirname "$(dirname "$record")")"
  # pip writes RECORD as CSV, whose lines end in CRLF.
  while IFS=, read -r rel _ size; do
    size="${size%$'\r'}"
    if [ "$(stat -c %s "$site/$rel" 2>/dev/null)" != "$size" ]; then
      echo "$rel"
      return
    fi
  done < <(grep '^torch/lib/' "$record")
}

# The first shared library (torch/lib/*.so*, nvidia/*/lib/*.so*, …) whose
# sha256 is not the one its wheel's RECORD gives, if any.
corrupt_lib() {
  local site
  site="$(dirname "$(dirname "$(torch_record)")")"
  python3 - "$site" <<'PY'
import base64, csv, hashlib, pathlib, re, sys
site = pathlib.Path(sys.argv[1])
for record in sorted(site.glob("*.dist-info/RECORD")):
    with record.open(newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or not row[1].startswith("sha256=") or not re.search(r"\.so(\.|$)", row[0]):
                continue
            digest = hashlib.sha256()
            try:
                with (site / row[0]).open("rb") as lib:
                    while chunk := lib.read(1 << 20):
                        digest.update(chunk)
            except OSError:
                print(row[0])
                sys.exit()
            if base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() != row[1][len("sha256="):]:
                print(row[0])
                sys.exit()
PY
}

if have_torch; then
  damaged="$(damaged_lib)"
  if [ -n "$damaged" ]; then
    echo "cairn setup: the torch install at $VENV is damaged ($damaged is missing or cut short); installing it again" >&2
    rm -f "$MARKER"
  elif [ -n "$VERIFY" ]; then
    echo "cairn setup: checking the sha256 of every library in $VENV against pip's RECORD" >&2
    damaged="$(corrupt_lib)"
    if [ -n "$damaged" ]; then
      echo "cairn setup: the torch install at $VENV is damaged ($damaged does not match its sha256 in pip's RECORD); installing it again" >&2
      rm -f "$MARKER"
    else
      echo "cairn setup: every library matches its sha256" >&2
    fi
  fi
fi

if ! have_torch; then
  # No marker: whatever is there is an interrupted install. Refuse to wipe
  # a non-empty folder that is not a venv (a mistyped CAIRN_TORCH_HOME).
  if [ -d "$VENV" ] && [ -n "$(ls -A "$VENV")" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "cairn setup: $VENV exists and is not a Python venv; set CAIRN_TORCH_HOME to a new or venv folder" >&2
    exit 1
  fi
  echo "cairn setup: installing torch==$TORCH_VERSION into $VENV (about 4.7 GB, a few minutes; done once per machine)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" numpy pyarrow
  # Check the install works before declaring it complete.
  "$VENV/bin/python" -c "import torch, pyarrow, numpy; v = torch.__version__.split('+')[0]; assert v == '$TORCH_VERSION', v"
  echo "$TORCH_VERSION" > "$MARKER"
  echo "cairn setup: torch ready at $VENV" >&2
fi

# Venvs made before torchvision joined the list get it added in place.
if ! compgen -G "$VENV/lib/python3*/site-packages/torchvision/__init__.py" >/dev/null; then
  echo "cairn setup: adding torchvision==$TORCHVISION_VERSION to $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "torchvision==$TORCHVISION_VERSION"
fi

# The torch/ package folder is what torch-sys wants as LIBTORCH. A glob
# finds it without importing torch (which takes a second or two).
shopt -s nullglob
candidates=("$VENV"/lib/python3*/site-packages/torch)
shopt -u nullglob
if [ "${#candidates[@]}" -eq 1 ] && [ -d "${candidates[0]}/lib" ]; then
  LIBTORCH="${candidates[0]}"
else
  LIBTORCH="$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
fi

# Rewrite the cargo config only when its content changes, so an unchanged
# LIBTORCH never looks like a new environment to torch-sys's build script.
CONFIG="$ROOT/.cargo/config.toml"
WANT="# Written by \`make setup\` (scripts/setup-torch.sh); machine-specific, not tracked.
[env]
LIBTORCH = \"$LIBTORCH\""
if [ ! -f "$CONFIG" ] || [ "$(cat "$CONFIG")" != "$WANT" ]; then
  mkdir -p "$ROOT/.cargo"
  printf '%s\n' "$WANT" > "$CONFIG.tmp"
  mv "$CONFIG.tmp" "$CONFIG"
  echo "cairn setup: wrote $CONFIG (LIBTORCH=$LIBTORCH)" >&2
fi
