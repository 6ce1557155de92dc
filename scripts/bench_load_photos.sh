#!/usr/bin/env bash
# `load_subset` with `size = 224` on a folder of phone-sized photos
# (12 megapixels, JPEG quality 90, both orientations), beside PIL doing
# the same work (decode, `resize(BILINEAR)` of the shorter side to 224,
# centre crop) in as many processes as cairn has threads.
# The photos are made once (noise over an upscaled pattern, so they
# compress like photos, ~2.7 MB each) and kept in BENCH_PHOTOS.
# Usage: scripts/bench_load_photos.sh [path/to/cairn] [runs]
set -euo pipefail
CAIRN="$(realpath "${1:-target/release/cairn}")"
RUNS="${2:-3}"
PY="${PYTHON:-$HOME/.cache/cairn/torch-2.11.0/bin/python}"
DIR="${BENCH_PHOTOS:-/tmp/cairn-bench-photos}"
mkdir -p "$DIR" && cd "$DIR"
if [ ! -d src ]; then
  "$PY" - <<'EOF'
import os
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
base = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
for split, n in (("train", 60), ("test", 15)):
    for c in ("cats", "dogs"):
        os.makedirs(f"src.part/{split}/{c}", exist_ok=True)
        for i in range(n):
            w, h = (4032, 3024) if i % 2 == 0 else (3024, 4032)
            im = Image.fromarray(np.roll(base, i * 3 + len(c), axis=1)).resize((w, h), Image.BICUBIC)
            noisy = np.asarray(im).astype(np.int16) + rng.integers(-8, 8, (h, w, 3), dtype=np.int16)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(f"src.part/{split}/{c}/{i}.jpg", quality=90)
EOF
  mv src.part src
fi
cat > pipeline.toml <<'EOF'
[pipeline]
name = "photos"
seed = 1
[stages.load]
kind = "load_subset"
source = "src"
train_per_class = 54
val_fraction = 0.1
test = "all"
size = 224
EOF
threads=$(nproc)
echo "$(find src -name '*.jpg' | wc -l) photos of 12 megapixels, $threads threads"
"$CAIRN" run -q  # hashes the folder once, so each timed run below is the stage's work
for _ in $(seq "$RUNS"); do
  t0=$(date +%s%N); "$CAIRN" run -q --force load; t1=$(date +%s%N)
  echo "cairn load_subset size=224: $(( (t1 - t0) / 1000000 )) ms"
  "$PY" - "$threads" <<'EOF'
import glob, sys, time
from multiprocessing import Pool
from PIL import Image

def square(path):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 224 / min(w, h)
    im = im.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
    w, h = im.size
    l, t = (w - 224) // 2, (h - 224) // 2
    return im.crop((l, t, l + 224, t + 224)).tobytes()

files = sorted(glob.glob("src/*/*/*.jpg"))
t0 = time.time()
with Pool(int(sys.argv[1])) as pool:
    pool.map(square, files, chunksize=4)
print(f"PIL decode + resize + crop, {sys.argv[1]} processes: {1000 * (time.time() - t0):.0f} ms")
EOF
done
