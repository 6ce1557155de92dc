#!/usr/bin/env bash
# Engine speed benchmarks (no libtorch involved):
#  1. a no-op `cairn run` of a fully cached 8-stage pipeline, process start included;
#  2. `cairn status` with a 1 GB external input: cold hashing, then warm (stat cache);
#  3. `cairn status` with a directory input of 10,000 small files, cold (no
#     stat cache; files in the page cache), beside `b3sum` and
#     `git hash-object --stdin-paths` over the same files;
#  4. the 8-stage chain's no-op beside DVC's no-op `dvc repro` of the same chain;
#  5. 1,000 command stages (10 chains of 100): the first run (per-stage
#     overhead), the no-op run and `status`, beside Snakemake's first build
#     and `snakemake -n` over the same graph;
#  6. 10,000 independent command stages: the first run with `-j 2` (each
#     stage is looked at once, not whenever another finishes) and the no-op.
# DVC and Snakemake come from BENCH_VENV (default ~/.cache/cairn/bench-venv,
# made with `python3 -m venv ... && pip install dvc snakemake`); parts 4 and 5
# skip their reference when it is missing.
# Usage: scripts/bench_engine.sh [path/to/cairn]   (default: target/release/cairn)
set -euo pipefail
CAIRN="$(realpath "${1:-target/release/cairn}")"
BENCH_VENV="${BENCH_VENV:-$HOME/.cache/cairn/bench-venv}"
RUNS="${RUNS:-30}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# Median wall time in ms of running "$@" $RUNS times.
median_ms() {
  local times=()
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    times+=("$(( (t1 - t0) / 1000 ))")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)/1000}'
}

{
  echo '[pipeline]'
  echo 'name = "bench"'
  echo '[stages.s0]'
  echo 'kind = "command"'
  echo 'cmd = "echo 0 > {out.o}"'
  echo 'outputs = { o = "o.txt" }'
  for i in 1 2 3 4 5 6 7; do
    echo "[stages.s$i]"
    echo 'kind = "command"'
    echo "cmd = \"cat {in.i} > {out.o}; echo $i >> {out.o}\""
    echo "inputs = { i = \"s$((i-1)).o\" }"
    echo 'outputs = { o = "o.txt" }'
  done
} > pipeline.toml
"$CAIRN" run -q
noop=$(median_ms "$CAIRN" run -q)
echo "no-op run, 8 cached stages: median ${noop} ms over $RUNS runs"

cat > pipeline.toml <<'TOML'
[stages.read]
kind = "command"
cmd = "head -c 16 {in.big} > {out.o}"
inputs = { big = { file = "big.bin" } }
outputs = { o = "o.bin" }
TOML
head -c 1073741824 /dev/urandom > big.bin
sync
# A file hashed within 2 s of its last write is "racily clean" and re-hashed
# next time (see src/cache/statcache.rs); let it age so "warm" is warm.
sleep 2.5
rm -f cache/statcache.json
t0=$(date +%s%N); "$CAIRN" status >/dev/null; t1=$(date +%s%N)
cold_ms=$(( (t1 - t0) / 1000000 ))
echo "status, 1 GiB external input, cold (hash): ${cold_ms} ms = $(awk -v ms="$cold_ms" 'BEGIN {printf "%.2f", 1.073741824 / (ms / 1000)}') GB/s"
warm=$(median_ms "$CAIRN" status)
echo "status, 1 GiB external input, warm (stat cache): median ${warm} ms over $RUNS runs"

# 3. A directory input of 10,000 small files (1 B to 8 KiB).
python3 - <<'PY'
import os, random
random.seed(1)
os.makedirs("tree", exist_ok=True)
for i in range(10000):
    with open(f"tree/f{i:05d}", "wb") as f:
        f.write(os.urandom(random.randint(1, 8192)))
PY
cat > pipeline.toml <<'TOML'
[stages.read]
kind = "command"
cmd = "ls {in.tree} | wc -l > {out.o}"
inputs = { tree = { file = "tree" } }
outputs = { o = "o.txt" }
TOML
cold_tree() { rm -f cache/statcache.json; "$CAIRN" status >/dev/null; }
tree_ms=$(median_ms cold_tree)
echo "status, 10,000 small files, cold (no stat cache): median ${tree_ms} ms over $RUNS runs"
if command -v b3sum >/dev/null; then
  b3_ms=$(median_ms sh -c 'b3sum --no-mmap tree/* >/dev/null')
  echo "b3sum over the same 10,000 files: median ${b3_ms} ms ($(awk -v a="$tree_ms" -v b="$b3_ms" 'BEGIN {printf "%.2f", a / b}')x)"
fi
git_ms=$(median_ms sh -c 'ls -d tree/* | git hash-object --stdin-paths >/dev/null')
echo "git hash-object --stdin-paths over the same files: median ${git_ms} ms ($(awk -v a="$tree_ms" -v b="$git_ms" 'BEGIN {printf "%.2f", a / b}')x)"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }

# 4. DVC's no-op repro of the same 8-stage chain.
if [ -x "$BENCH_VENV/bin/dvc" ]; then
  mkdir dvc8 && (
    cd dvc8
    "$BENCH_VENV/bin/dvc" init --no-scm -q
    {
      echo 'stages:'
      echo '  s0:'
      echo '    cmd: echo 0 > o0.txt'
      echo '    outs: [o0.txt]'
      for i in 1 2 3 4 5 6 7; do
        echo "  s$i:"
        echo "    cmd: cat o$((i-1)).txt > o$i.txt; echo $i >> o$i.txt"
        echo "    deps: [o$((i-1)).txt]"
        echo "    outs: [o$i.txt]"
      done
    } > dvc.yaml
    "$BENCH_VENV/bin/dvc" repro -q >/dev/null
    dvc_ms=$(median_ms "$BENCH_VENV/bin/dvc" repro -q)
    echo "dvc repro no-op, 8 stages: median ${dvc_ms} ms over $RUNS runs; cairn $(ratio "$dvc_ms" "$noop")x faster"
  )
else
  echo "dvc: not in $BENCH_VENV, reference skipped"
fi

# 5. 1,000 command stages, 10 chains of 100, each stage distinct.
mkdir k1000 && cd k1000
python3 - <<'PY'
spec, snake = [], []
for c in range(10):
    for i in range(100):
        n = f"c{c}s{i}"
        spec.append(f"[stages.{n}]\nkind = \"command\"")
        if i == 0:
            spec.append(f'cmd = "echo {c} > {{out.o}}"')
            snake.append(f'rule {n}:\n    output: "{n}.txt"\n    shell: "echo {c} > {{output}}"\n')
        else:
            prev = f"c{c}s{i-1}"
            spec.append(f'cmd = "cat {{in.i}} > {{out.o}}; echo {i} >> {{out.o}}"\ninputs = {{ i = "{prev}.o" }}')
            snake.append(f'rule {n}:\n    input: "{prev}.txt"\n    output: "{n}.txt"\n    shell: "cat {{input}} > {{output}}; echo {i} >> {{output}}"\n')
        spec.append('outputs = { o = "o.txt" }\n')
open("pipeline.toml", "w").write("\n".join(spec))
targets = ", ".join(f'"c{c}s99.txt"' for c in range(10))
open("Snakefile", "w").write(f"rule all:\n    input: {targets}\n\n" + "\n".join(snake))
PY
t0=$(date +%s%N); "$CAIRN" run -q; t1=$(date +%s%N)
first_ms=$(( (t1 - t0) / 1000000 ))
echo "first run, 1,000 stages: ${first_ms} ms = $(awk -v ms="$first_ms" 'BEGIN {printf "%.1f", ms / 1000}') ms a stage"
noop1k=$(median_ms "$CAIRN" run -q)
status1k=$(median_ms "$CAIRN" status)
echo "no-op run, 1,000 cached stages: median ${noop1k} ms; status: median ${status1k} ms ($(ratio "$noop1k" "$status1k")x status)"
if [ -x "$BENCH_VENV/bin/snakemake" ]; then
  # Under `set -e` a failing build would end the script without a word.
  # Its first build, one job at a time as cairn's (default `--jobs 1`).
  t0=$(date +%s%N)
  if "$BENCH_VENV/bin/snakemake" -c1 -q >snakemake.log 2>&1; then
    t1=$(date +%s%N)
    snake_first=$(( (t1 - t0) / 1000000 ))
    echo "snakemake -c1, first build of the 1,000 stages: ${snake_first} ms = $(awk -v ms="$snake_first" 'BEGIN {printf "%.1f", ms / 1000}') ms a stage; cairn's first run $(ratio "$snake_first" "$first_ms")x faster"
    snake_ms=$(median_ms "$BENCH_VENV/bin/snakemake" -n -c1 -q)
    echo "snakemake -n, same 1,000 stages built: median ${snake_ms} ms; cairn's no-op $(ratio "$snake_ms" "$noop1k")x faster"
  else
    echo "snakemake: the first build of the 1,000 stages failed:"; tail -5 snakemake.log
  fi
else
  echo "snakemake: not in $BENCH_VENV, reference skipped"
fi

# 6. 10,000 independent command stages.
cd "$work" && mkdir wide && cd wide
python3 -c '
print("\n".join(f"[stages.s{i}]\nkind = \"command\"\ncmd = \"echo {i} > {{out.o}}\"\noutputs = {{ o = \"o.txt\" }}\n" for i in range(10000)))
' > pipeline.toml
t0=$(date +%s%N); "$CAIRN" run -q -j 2; t1=$(date +%s%N)
wide_ms=$(( (t1 - t0) / 1000000 ))
echo "first run, 10,000 independent stages, -j 2: ${wide_ms} ms = $(awk -v ms="$wide_ms" 'BEGIN {printf "%.2f", ms / 10000}') ms a stage"
RUNS=$(( RUNS < 10 ? RUNS : 10 ))
noop10k=$(median_ms "$CAIRN" run -q)
echo "no-op run, 10,000 cached stages: median ${noop10k} ms"
