#!/usr/bin/env python3
"""Checks in PyTorch what a `layer4` fine-tune's BatchNorm does to a cairn
ResNet50 (BENCHMARKS "GPU (H200)"): loads a cairn model file into
torchvision's resnet50, prints its val accuracy, then updates layer4's
running statistics by one epoch of training-mode forwards (the rest in
eval mode, no weight change, batch 128, momentum 0.1, as a fine-tune
behind a frozen layer3 does) and prints the val accuracy again; then two
re-estimates: cumulative over the epoch, and each BatchNorm in turn with
the layers before it in eval mode.

    bn_refit_check.py MODEL TRAIN_IMAGES TRAIN_LABELS VAL_IMAGES VAL_LABELS SIDE

The paths are cache objects (`cairn inspect frozen.model`,
`resize.train`, `load.train_labels`, ... print them); SIDE is the image
side the pipeline resized to. Needs the venv `make setup` installs
(torch, torchvision, numpy, pyarrow); the model's normalisation must be
`imagenet`.
"""
import json
import struct
import sys

import numpy as np
import torch
import torchvision

from airbench_reference import tensor

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
BATCH = 128


def model(path):
    """A cairn ResNet50 model file (safetensors, torchvision names); the
    venv has no `safetensors` package, so the format is parsed by hand."""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header, data = json.loads(b[8 : 8 + n]), b[8 + n :]
    dtypes = {"F32": np.float32, "I64": np.int64}
    sd = {
        k: torch.from_numpy(np.frombuffer(data[v["data_offsets"][0] : v["data_offsets"][1]], dtype=dtypes[v["dtype"]]).reshape(v["shape"]).copy())
        for k, v in header.items()
        if k != "__metadata__"
    }
    m = torchvision.models.resnet50(num_classes=10)
    m.load_state_dict(sd, strict=False)
    return m


def accuracy(m, x, y):
    m.eval()
    with torch.no_grad():
        return (m((x.float() / 255 - MEAN) / STD).argmax(1) == y).float().mean().item()


def forwards(m, x, order):
    """One epoch of batches through `m` in whatever modes its modules are in."""
    with torch.no_grad():
        for i in range(0, len(order) - BATCH + 1, BATCH):
            m((x[order[i : i + BATCH]].float() / 255 - MEAN) / STD)


def main():
    mp, xtr, ytr, xva, yva, side = sys.argv[1:7]
    side = int(side)
    xtr, xva = tensor(xtr, (-1, 3, side, side)), tensor(xva, (-1, 3, side, side))
    ytr, yva = tensor(ytr, -1), tensor(yva, -1)
    order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))

    m = model(mp)
    print(f"as saved: val {accuracy(m, xva, yva):.3f}")
    m.eval()
    m.layer4.train()
    forwards(m, xtr, order)
    print(f"after training-mode forwards through layer4 (momentum 0.1): val {accuracy(m, xva, yva):.3f}")

    m = model(mp)
    for bn in m.layer4.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None
    m.eval()
    m.layer4.train()
    forwards(m, xtr, order)
    print(f"cumulative re-estimate, layer4 in training mode: val {accuracy(m, xva, yva):.3f}")

    m = model(mp)
    for bn in [b for b in m.layer4.modules() if isinstance(b, torch.nn.BatchNorm2d)]:
        m.eval()
        bn.train()
        bn.reset_running_stats()
        bn.momentum = None
        forwards(m, xtr, order)
    print(f"each BatchNorm in turn, earlier layers in eval mode: val {accuracy(m, xva, yva):.3f}")


if __name__ == "__main__":
    main()
