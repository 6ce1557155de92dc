#!/usr/bin/env bash
# Benchmarks recorded in BENCHMARKS.md (`make bench`). Needs the shared
# CIFAR-10 archive (CAIRN_BENCH_DATA, default ../shared/data/cifar10-jpg.tar.gz)
# and the torch venv from scripts/setup-torch.sh. Prints one line per figure.
#
#   1. load_subset over the whole archive (all 60,000 JPEGs decoded), as the
#      engine runs it: `cairn-worker run job.json`, wall time.
#   2. resize 32 -> 224 (bilinear, antialias, u8) of 2,000 test images:
#      cairn's stage path vs torch.nn.functional.interpolate in the venv's
#      python on the same images, same thread count.
#   3. Arrow tensor artifact read throughput (scan and load into tch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="${CAIRN_BENCH_DATA:-$ROOT/../shared/data/cifar10-jpg.tar.gz}"
VENV="${CAIRN_TORCH_HOME:-$HOME/.cache/cairn/torch-$(sed -n 's/^TORCH_VERSION=//p' scripts/setup-torch.sh)}"
THREADS="${CAIRN_THREADS:-$(nproc)}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

[ -f "$DATA" ] || { echo "bench: no data set at $DATA (set CAIRN_BENCH_DATA)" >&2; exit 1; }
cargo build --release -q --workspace  # --workspace: per-package builds change feature unification and rebuild polars
cargo bench -q --workspace --bench formats --no-run
BENCH="$(ls -t target/release/deps/formats-* | grep -v '\.d$' | head -1)"

# Writes a worker job for kind $1 with params $2, inputs $3 and outputs $5
# (JSON) into $4/job.json, built and checked as every job is (bench_train job).
job() {
  local kind="$1" params="$2" inputs="$3" dir="$4" outputs="$5"
  mkdir -p "$dir"
  CAIRN_THREADS="$THREADS" ./target/release/bench_train job "$kind" "$params" "$inputs" "$outputs" "$dir"
}

now() { date +%s.%N; }

# 1. load_subset: 1,000 train + 4,000 pool per class + all test = 60,000 images.
LS="$WORK/load_subset"
outs='{"train_images": "'$LS'/train_images.arrow", "train_labels": "'$LS'/train_labels.arrow",
       "test_images": "'$LS'/test_images.arrow", "test_labels": "'$LS'/test_labels.arrow",
       "pool_images": "'$LS'/pool_images.arrow", "pool_labels": "'$LS'/pool_labels.arrow",
       "index": "'$LS'/index.parquet", "classes": "'$LS'/classes.parquet"}'
job load_subset '{"source": "x", "format": "auto", "train_per_class": 1000, "val_per_class": null,
  "val_fraction": null, "test": "all", "pool": true}' '{"source": ["'"$DATA"'"]}' "$LS" "$outs"
t0=$(now)
./target/release/cairn-worker run "$LS/job.json" > "$LS/events.jsonl"
t1=$(now)
echo "load_subset_60000_jpegs $(echo "$t1 - $t0" | bc -l | xargs printf '%.2f') s"

# 2. resize: the first 2,000 test images.
"$VENV/bin/python" - "$LS/test_images.arrow" "$WORK/small.arrow" <<'EOF'
import sys, pyarrow as pa
# A slice is a foreign file: drop cairn:shape, which names the full tensor.
t = pa.ipc.open_file(sys.argv[1]).read_all().slice(0, 2000).replace_schema_metadata(None)
with pa.ipc.new_file(sys.argv[2], t.schema) as w:
    w.write_table(t)
EOF
"$BENCH" resize "$WORK/small.arrow" 224 "$THREADS"
RS="$WORK/resize"
job resize '{"size": 224, "mode": "bilinear", "antialias": true}' '{"images": ["'"$WORK/small.arrow"'"]}' "$RS" \
  '{"images": "'$RS'/images.arrow"}'
t0=$(now)
./target/release/cairn-worker run "$RS/job.json" > "$RS/events.jsonl"
t1=$(now)
echo "resize_worker_end_to_end $(echo "2000 / ($t1 - $t0)" | bc -l | xargs printf '%.0f') images/s"
"$VENV/bin/python" - "$WORK/small.arrow" "$RS/images.arrow" "$THREADS" <<'EOF'
import sys, time, pyarrow as pa, torch, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[3]))
col = pa.ipc.open_file(sys.argv[1]).read_all().column("data").combine_chunks()
x = torch.from_numpy(col.to_numpy_ndarray())
best = 1e9
for _ in range(3):
    t = time.perf_counter()
    ys = [F.interpolate(x[i:i + 512], size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
          for i in range(0, len(x), 512)]
    best = min(best, time.perf_counter() - t)
print(f"resize_torch_python {len(x) / best:.0f} images/s")
ours = pa.ipc.open_file(sys.argv[2]).read_all().column("data").combine_chunks().to_numpy_ndarray()
print(f"resize_identical_to_torch {bool((torch.from_numpy(ours) == torch.cat(ys)).all())}")
EOF

# 3. Tensor read throughput on the 224 px output (2,000 x 150,528 bytes = 301 MB).
"$BENCH" read "$RS/images.arrow"
