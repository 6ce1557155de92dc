#!/usr/bin/env bash
# The flagship from an empty cache, timed (`make bench-flagship`): what
# BENCHMARKS.md "Flagship pipeline on CPU" records for each CPU kind.
#
#   bash scripts/bench_flagship.sh [--isa AVX2] [--seed N] [--keep DIR] [-- --set k=v ...]
#
# Runs `cairn run` (what `make run` runs, with the shared CIFAR-10 archive)
# in a fresh project directory with its own empty cache, alone on the
# machine, and prints one block to paste into BENCHMARKS.md: the CPU
# (`lscpu` model name and the flags that decide the kernels), the facts
# the stages were keyed on (so the precision `auto` chose), each stage's
# wall time, the whole run's wall time and peak memory, the test
# accuracy, and a digest of every output's hash. `--isa AVX2` caps
# oneDNN, ATen and MKL at AVX2
# (`DNNL_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`, `MKL_ENABLE_INSTRUCTIONS`),
# standing in for a CPU without AVX512; the cap is part of the stages'
# keys. `--seed N` runs the pipeline with `[pipeline] seed = N` instead
# of the repo's seed (the spread between seeds is what a single accuracy
# figure hides). `--keep DIR` runs in DIR (which must not exist) and
# keeps it; otherwise a temporary directory is removed afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${CAIRN_BENCH_DATA:-$ROOT/../shared/data/cifar10-jpg.tar.gz}"
ISA="" SEED="" KEEP="" EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --isa) ISA="${2:?--isa needs a value, e.g. AVX2}"; shift 2 ;;
    --seed) SEED="${2:?--seed needs a number}"; shift 2
      [[ "$SEED" =~ ^[0-9]+$ ]] || { echo "bench_flagship: --seed needs a non-negative integer, not $SEED" >&2; exit 2; } ;;
    --keep) KEEP="${2:?--keep needs a directory}"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "bench_flagship: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -f "$DATA" ] || { echo "bench_flagship: no data set at $DATA (set CAIRN_BENCH_DATA)" >&2; exit 1; }
for bin in cairn cairn-worker; do
  [ -x "$ROOT/target/release/$bin" ] || { echo "bench_flagship: $bin is not built; run make setup" >&2; exit 1; }
done
if [ -n "$KEEP" ]; then
  [ ! -e "$KEEP" ] || { echo "bench_flagship: $KEEP exists; name a new directory" >&2; exit 1; }
  mkdir -p "$KEEP" && DIR="$(cd "$KEEP" && pwd)"
else
  DIR="$(mktemp -d)" && trap 'rm -rf "$DIR"' EXIT
fi
if [ -n "$ISA" ]; then
  export DNNL_MAX_CPU_ISA="$ISA" ATEN_CPU_CAPABILITY="$(echo "$ISA" | tr '[:upper:]' '[:lower:]')"
  # MKL computes the matrix products; of oneDNN's ISA names it knows
  # only this one.
  if [ "$ISA" = AVX2 ]; then export MKL_ENABLE_INSTRUCTIONS=AVX2; fi
fi
cp "$ROOT/pipeline.toml" "$DIR/"
# Lite0's ImageNet weights for the profiles that read them: cpu-lite0, and
# cpu-fp32, which cairn applies without CUDA unless a profile is named.
case " ${EXTRA[*]:-} " in
  *" --profile cpu-lite0 "* | *" --profile=cpu-lite0 "*) bash "$ROOT/scripts/fetch-lite0.sh" ;;
  *" --profile"*) ;;
  *) bash "$ROOT/scripts/fetch-lite0.sh" --if-cpu ;;
esac
if [ -d "$ROOT/weights" ]; then ln -s "$ROOT/weights" "$DIR/weights"; fi
cd "$DIR"
if [ -n "$SEED" ]; then
  sed -i -E "0,/^seed = [0-9]+$/s//seed = $SEED/" pipeline.toml
  grep -q "^seed = $SEED\$" pipeline.toml || { echo "bench_flagship: no 'seed = N' line in pipeline.toml to replace" >&2; exit 1; }
fi

flags="$(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1); $(nproc) CPUs; flags: ${flags:-none of avx2/avx512/amx}"
"$ROOT/target/release/cairn-worker" --probe | python3 -c '
import json, sys
p = json.load(sys.stdin)
cap, bf16 = p["cpu_capability"], p["native_bf16"]
# cairn_kind::bf16::bf16_outruns_fp32 (crates/cairn-kind/src/bf16.rs)
auto = "fp32" if bf16 in ("none", "avx512_bf16_intel", "avx_ne_convert_only") or bf16.startswith("unknown") else "bf16"
print(f"worker facts: cpu_capability = {cap}, native_bf16 = {bf16} (precision auto: {auto}, where a profile leaves it auto)")'
echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo ' (with uncommitted changes)'); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "seed: $(sed -n -E 's/^seed = ([0-9]+)$/\1/p' pipeline.toml | head -1)"
echo "command: cairn run --set load.source=$DATA ${EXTRA[*]:-} ${ISA:+(DNNL_MAX_CPU_ISA=$DNNL_MAX_CPU_ISA ATEN_CPU_CAPABILITY=$ATEN_CPU_CAPABILITY${MKL_ENABLE_INSTRUCTIONS:+ MKL_ENABLE_INSTRUCTIONS=$MKL_ENABLE_INSTRUCTIONS})}"

start=$(date +%s.%N)
/usr/bin/time -f '%M' -o time.txt "$ROOT/target/release/cairn" run --set "load.source=$DATA" "${EXTRA[@]}" > run.log 2>&1 \
  || { tail -20 run.log >&2; echo "bench_flagship: the run failed (log: $DIR/run.log)" >&2; exit 1; }
wall=$(echo "$(date +%s.%N) - $start" | bc)
named="" prev=""
for a in "${EXTRA[@]}"; do [ "$prev" != --profile ] || named="\`$a\` (named by --profile)"; prev="$a"; done
echo "profile: ${named:-$(grep -o -m1 'using profile `[^`]*`' run.log | sed 's/using profile //' || echo "none chosen automatically")}${EXTRA[*]:+ (flags: ${EXTRA[*]})}"

"$ROOT/target/release/cairn" runs --json 2>/dev/null | python3 -c '
import json, sys
wall, rss_kb = float(sys.argv[1]), int(sys.argv[2])
run = json.load(sys.stdin)[0]
print("| stage | wall | peak RSS |")
print("|---|---|---|")
for st in run["stages"]:
    name, secs, rss = st["stage"], st["duration_s"], st["metrics"].get("peak_rss_mb", 0)
    print(f"| {name} | {secs:.1f} s | {rss:.0f} MB |")
acc = next(st["metrics"]["test_acc"] for st in run["stages"] if st["stage"] == "evaluate")
print()
print(f"whole run: {int(wall // 60)} min {wall % 60:.0f} s wall; largest process peak RSS {rss_kb / 1024:.0f} MB")
print(f"test accuracy: {100 * acc:.2f}%")' "$wall" "$(tail -1 time.txt)"

# Every output's hash, one line each (outputs.txt in the run directory), and
# their digest: two runs with the same digest made the same bytes.
stages="$("$ROOT/target/release/cairn" runs --json 2>/dev/null | python3 -c 'import json, sys; print(" ".join(s["stage"] for s in json.load(sys.stdin)[0]["stages"]))')"
for st in $stages; do
  "$ROOT/target/release/cairn" inspect "$st" --json --set "load.source=$DATA" "${EXTRA[@]}" 2>/dev/null |
    python3 -c 'import json, sys; [print(sys.argv[1], k, v["hash"]) for k, v in sorted(json.load(sys.stdin).items())]' "$st"
done > outputs.txt
echo "outputs: $(wc -l < outputs.txt), their hashes' sha256 $(sha256sum outputs.txt | cut -c1-16) (outputs.txt; the same digest: every output the same bytes)"
