"""Compares `load_subset`'s `size` scaling with PIL's resize + centre crop.

Usage (with the torch venv's python, which has PIL and pyarrow):
    python scripts/scale_vs_pil.py PROJECT_DIR IMAGE_FOLDER SIZE
after `cairn run load --set load.source=IMAGE_FOLDER --set load.size=SIZE`
in PROJECT_DIR. For each training image whose size is not SIZE×SIZE (and
a few that are), prints the largest and mean absolute difference, in
levels of 255, between cairn's pixels and PIL's `resize(BILINEAR)` of the
shorter side to SIZE followed by the centre crop. JPEG decoders differ
too (zune-jpeg here, libjpeg in PIL), so PNGs show the filter alone.
"""
import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
from PIL import Image

project, folder, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
index = pq.read_table(f"{project}/artifacts/load/index.parquet").to_pydict()
table = pa.ipc.open_file(f"{project}/artifacts/load/train_images.arrow").read_all()
pixels = table.column("data").combine_chunks().to_numpy_ndarray()
train = [s for s, split in zip(index["source"], index["split"]) if split == "train"]
shown = 0
for i, source in enumerate(train):
    image = Image.open(f"{folder}/{source}").convert("RGB")
    w, h = image.size
    if (w, h) == (size, size) or (w == h and shown >= 3):
        continue
    shown += w == h
    nw, nh = (size, round(h * size / w)) if w <= h else (round(w * size / h), size)
    ref = np.asarray(image.resize((nw, nh), Image.BILINEAR)).astype(int)
    top, left = (nh - size) // 2, (nw - size) // 2
    ref = ref[top : top + size, left : left + size]
    got = pixels[i].transpose(1, 2, 0).astype(int)
    diff = np.abs(got - ref)
    print(f"{source} {w}x{h}: max |diff| {diff.max()}, mean {diff.mean():.3f}")
