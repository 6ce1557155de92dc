#!/usr/bin/env bash
# `make gpu-check`: the one prepared check for a machine with a GPU (issue
# 13), sized to finish in under 8 minutes on an H200. Steps, each timed and
# each with a time cap so that a slow one still leaves a summary:
#   unpack     the binaries `scripts/pack-device.sh` packed (target/device)
#   probe      `cairn-worker --probe`: libtorch, CUDA, the kinds it runs
#   bench      training throughput, cairn (bench_train) against PyTorch eager
#              on the same device: ResNet50, 224 px, bf16, channels-last
#   pipeline   pipeline.toml end to end on real CIFAR-10 from an empty
#              cache, `--profile gpu-smoke` (fewer epochs): time and metrics
#              per stage, test accuracy
#   verify     `cairn verify finetune evaluate`: which outputs re-execute
#              bit-identical
#   recipe     the default recipe (no profile: the full epochs) in the same
#              cache, reusing load and resize, with whatever time is left
#              of RECIPE_BUDGET seconds since the start (default 580; about
#              195 s of it on an H200): time, metrics and test accuracy
# It writes summary.md, summary.json, log.txt, run.json, verify.txt and
# recipe-runs.json into $OUT (the device tool's folder that comes back),
# else target/gpu-check/.
#
#   scripts/gpu-check.sh [--cpu-smoke]
#
# --cpu-smoke (or GPU_CHECK_SMOKE=1) runs the same steps on the CPU, small:
# a 500-image subset of the archive, `--profile gpu-smoke-cpu`, a tiny
# throughput config, and for the recipe step the same profile with
# another fine-tune rate; tests/gpu_check.rs runs it so, in 1-2 minutes.
# Inputs: GPU_CHECK_PACK (packed binaries; without them the release build
# in target/release is used), CIFAR (the image-folder archive; default the
# packed copy, else ../shared/data/cifar10-jpg.tar.gz), GPU_CHECK_WORK
# (scratch; emptied first), TORCH_VENV (a venv holding torch; default the
# device's /opt/torch/.venv, else the one `make setup` installs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SMOKE="${GPU_CHECK_SMOKE:-0}"
case "${1:-}" in
  --cpu-smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: scripts/gpu-check.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
OUT="${OUT:-$ROOT/target/gpu-check}"
WORK="${GPU_CHECK_WORK:-$ROOT/target/gpu-check-work}"
PACK="${GPU_CHECK_PACK:-$ROOT/target/device}"
TORCH_VERSION="$(sed -n 's/^TORCH_VERSION=//p' "$ROOT/scripts/setup-torch.sh")"

if [ "$SMOKE" = 1 ]; then
  MODE=cpu-smoke DEV=cpu PROFILE=gpu-smoke-cpu
  BENCH=(fast 32 32 3 fp32) PAIRS=1
  CAP_PIPELINE=240 CAP_VERIFY=120 CAP_BENCH=120
  RUN_FLAGS=(--cpu)
  RECIPE_FLAGS=(--profile "$PROFILE" --set finetune.lr=0.004)
else
  MODE=gpu DEV=cuda PROFILE=gpu-smoke
  BENCH=(resnet50 224 256 20 bf16) PAIRS=2
  # These caps sum to 570 s, under the device's 10-minute command, so even
  # a run that hits every cap leaves its summary; they took 125 s on an
  # H200, which leaves the recipe step about 450 s.
  CAP_PIPELINE=270 CAP_VERIFY=90 CAP_BENCH=90
  RUN_FLAGS=()
  RECIPE_FLAGS=()
fi
RECIPE_BUDGET="${RECIPE_BUDGET:-580}"

[ -n "$WORK" ] && rm -rf "$WORK"
mkdir -p "$OUT" "$WORK/bin"
exec > >(tee "$OUT/log.txt") 2>&1
: > "$WORK/steps.tsv"

# A venv's python and its libtorch: the device's venv, else `make setup`'s.
VENV=""
for v in "${TORCH_VENV:-}" /opt/torch/.venv "${CAIRN_TORCH_HOME:-$HOME/.cache/cairn/torch-$TORCH_VERSION}"; do
  if [ -n "$v" ] && compgen -G "$v/lib/python3*/site-packages/torch/lib" >/dev/null; then VENV="$v"; break; fi
done
[ -n "$VENV" ] || { echo "gpu-check: no venv with torch (tried TORCH_VENV, /opt/torch/.venv, the cairn venv); run \`make setup\` or set TORCH_VENV" >&2; exit 1; }
PY="$VENV/bin/python3"
LD_LIBRARY_PATH="$(compgen -G "$VENV/lib/python3*/site-packages/torch/lib" | head -1)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH

# step NAME CAP FUNCTION: runs FUNCTION in a subshell (so `set -e` holds in
# it), its commands under `capped` sharing a deadline CAP seconds away;
# appends "NAME rc milliseconds" to steps.tsv and rewrites the summary, so
# a step that fails or overruns still leaves the others' results.
step() {
  local name=$1 t0 rc=0
  DEADLINE=$(($(date +%s) + $2))
  echo "== $name (cap $2 s)"
  t0=$(date +%s%N)
  "$3" &
  wait $! || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((($(date +%s%N) - t0) / 1000000))" >> "$WORK/steps.tsv"
  summarize
}
capped() {
  local left=$((DEADLINE - $(date +%s)))
  ((left > 0)) || { echo "gpu-check: no time left for $1" >&2; return 124; }
  # SIGINT first: cairn stops its workers and records the run as interrupted.
  timeout --signal=INT --kill-after=20 "$left" "$@"
}

summarize() {
  "$PY" "$ROOT/scripts/gpu_check_summary.py" "$WORK" "$OUT" "$MODE" "$PROFILE" "${BENCH[*]}" || true
}

BIN="$WORK/bin"
export CAIRN_WORKER="$BIN/cairn-worker" CAIRN_BENCH_DEVICE="$DEV"

unpack() {
  if [ -f "$PACK/bin.tar.xz" ]; then
    # Python's tarfile: the box may have no xz-utils.
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' "$PACK/bin.tar.xz" "$BIN"
    return
  fi
  for b in cairn cairn-worker bench_train; do
    [ -x "$ROOT/target/release/$b" ] || { echo "gpu-check: neither $PACK/bin.tar.xz nor target/release/$b; run \`make pack-device\` where it builds" >&2; exit 1; }
    echo "gpu-check: no $PACK/bin.tar.xz; using target/release/$b"
    ln -sf "$ROOT/target/release/$b" "$BIN/$b"
  done
}

probe() {
  capped "$BIN/cairn-worker" --probe | tee "$WORK/probe.json"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$WORK/gpu.txt"
  fi
  if [ "$MODE" = gpu ] && ! grep -q '"cuda":true' "$WORK/probe.json"; then
    echo "gpu-check: the worker sees no CUDA device; on a CPU machine run \`scripts/gpu-check.sh --cpu-smoke\`" >&2
    exit 1
  fi
}

# Alternating pairs (cairn first, then PyTorch first), as bench_train_ratio.py.
bench() {
  local i rust=("$BIN/bench_train" throughput "${BENCH[@]}") torch=("$PY" "$ROOT/scripts/bench_train.py" throughput "${BENCH[@]}")
  for ((i = 0; i < PAIRS; i++)); do
    if ((i % 2 == 0)); then capped "${rust[@]}" && capped "${torch[@]}"; else capped "${torch[@]}" && capped "${rust[@]}"; fi
  done | tee "$WORK/bench.txt"
}

CIFAR="${CIFAR:-}"
[ -n "$CIFAR" ] || for c in "$PACK/cifar10-jpg.tar.gz" "$ROOT/../shared/data/cifar10-jpg.tar.gz"; do
  if [ -f "$c" ]; then CIFAR="$c"; break; fi
done
[ -z "$CIFAR" ] || CIFAR="$(realpath "$CIFAR")"
if [ "$MODE" = gpu ]; then DATA="$CIFAR"; else DATA="$WORK/cifar10-subset.tar.gz"; fi
data() {
  [ -f "$CIFAR" ] || { echo "gpu-check: no CIFAR-10 image-folder archive (set CIFAR, or run \`make pack-device\` with ../shared/data)" >&2; exit 1; }
  [ "$MODE" = gpu ] && return
  # 40 train and 10 test images per class: enough for load's 20-per-class
  # subset and a pool, small enough for a 2-core CPU.
  mkdir -p "$WORK/subset"
  tar xzf "$CIFAR" -C "$WORK/subset" --wildcards '*/train/*/00[0-3]?.jpg' '*/test/*/000?.jpg'
  tar czf "$DATA" -C "$WORK/subset" .
}

SOURCE=(--set "load.source=\"$DATA\"")
FLAGS=("${RUN_FLAGS[@]}" --profile "$PROFILE" "${SOURCE[@]}")
# recorded RUNS ARGS...: `cairn run ARGS` in the work folder under the
# step's cap, then its entry in the run history (each stage's time and
# metrics, an interrupted run's too) into RUNS; exits with the run's status.
recorded() {
  local runs=$1 rc=0
  shift
  cd "$WORK"
  capped "$BIN/cairn" run "$@" || rc=$?
  "$BIN/cairn" runs --json --limit 1 > "$runs"
  exit "$rc"
}
pipeline() {
  cp "$ROOT/pipeline.toml" "$WORK/pipeline.toml"
  recorded runs.json --json "${FLAGS[@]}" > "$WORK/run.json"
}
verify() {
  cd "$WORK"
  capped "$BIN/cairn" verify finetune evaluate "${FLAGS[@]}" | tee verify.txt
}
recipe() {
  recorded recipe-runs.json "${RUN_FLAGS[@]}" "${RECIPE_FLAGS[@]}" "${SOURCE[@]}"
}

echo "gpu-check: mode $MODE, profile $PROFILE, torch venv $VENV, data $CIFAR, out $OUT"
step unpack 30 unpack
step probe 30 probe
# Without a worker that sees the device, the rest would only burn device time.
cut -f2 "$WORK/steps.tsv" | grep -qvx 0 && { echo "gpu-check: stopped after the probe; see $OUT/summary.md" >&2; exit 1; }
step data 60 data
step bench "$CAP_BENCH" bench
step pipeline "$CAP_PIPELINE" pipeline
step verify "$CAP_VERIFY" verify
# Whatever time is left (SECONDS counts from the script's start); under a
# minute is too little to reach the fine-tune.
if ((RECIPE_BUDGET - SECONDS >= 60)); then
  step recipe $((RECIPE_BUDGET - SECONDS)) recipe
else
  echo "gpu-check: $((RECIPE_BUDGET - SECONDS)) s left of RECIPE_BUDGET=$RECIPE_BUDGET; no recipe step"
fi
cat "$OUT/summary.md"
# Exit 1 when any step failed (a verify that finds a difference included).
! cut -f2 "$WORK/steps.tsv" | grep -qvx 0
