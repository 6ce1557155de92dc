#!/usr/bin/env bash
# Engine speed benchmarks (no libtorch involved):
#  1. a no-op `cairn run` of a fully cached 8-stage pipeline, process start included;
#  2. `cairn status` with a 1 GB external input: cold hashing, then warm (stat cache);
#  3. `cairn status` with a directory input of 10,000 small files, cold (no
#     stat cache; files in the page cache), beside `b3sum` and
#     `git hash-object --stdin-paths` over the same files.
# Usage: scripts/bench_engine.sh [path/to/cairn]   (default: target/release/cairn)
set -euo pipefail
CAIRN="$(realpath "${1:-target/release/cairn}")"
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
