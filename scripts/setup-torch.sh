#!/usr/bin/env bash
# Idempotent: creates (once) a Python venv holding PyPI torch==2.11.0 at a
# machine-level location, so every clone, CI run and later build reuses it.
# Prints nothing but errors unless it has work to do.
set -euo pipefail

TORCH_VERSION=2.11.0
VENV="${CAIRN_TORCH_HOME:-$HOME/.cache/cairn/torch-$TORCH_VERSION}"
PY="${PYTHON:-python3}"

have_torch() {
  [ -x "$VENV/bin/python" ] &&
    [ -f "$VENV/.cairn-ok" ] &&
    [ "$(cat "$VENV/.cairn-ok")" = "$TORCH_VERSION" ]
}

if have_torch; then
  exit 0
fi

echo "cairn setup: installing torch==$TORCH_VERSION into $VENV (about 4.7 GB, ~2 minutes; done once per machine)" >&2
mkdir -p "$(dirname "$VENV")"
# A previous attempt may have been interrupted: start from a clean venv.
rm -rf "$VENV.partial"
"$PY" -m venv "$VENV.partial"
"$VENV.partial/bin/python" -m pip install --quiet --upgrade pip
"$VENV.partial/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" numpy pyarrow
# Check the install actually works before publishing it.
"$VENV.partial/bin/python" -c "import torch, sys; assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__"
echo "$TORCH_VERSION" > "$VENV.partial/.cairn-ok"
rm -rf "$VENV"
mv "$VENV.partial" "$VENV"
echo "cairn setup: torch ready at $VENV" >&2
