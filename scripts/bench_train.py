#!/usr/bin/env python3
"""PyTorch-eager half of cairn's training benchmark (the Rust half is
`cargo run --release -p cairn-stages --bin bench_train -- throughput ...`).

Times forward + backward + SGD(nesterov) steps on random data for the same
nets cairn builds — the airbench-style `fast` net (widths 64/256/256),
torchvision resnet18/resnet50 — with the same batch size and thread count,
and prints images/s from the median step. The first step is a warm-up
and not counted.

    python scripts/bench_train.py throughput fast 32 256 5 [fp32|bf16] [cifar]
    python scripts/bench_train.py dump /path/cifar10-jpg OUT_DIR

`dump` decodes the CIFAR-10 JPEG image folder into the raw arrays
`bench_train recipe` reads ({train,test}_x.u8 N×3×32×32, {train,test}_y.i64).
Threads: CAIRN_THREADS, else all CPUs (as cairn does). CAIRN_BENCH_DEVICE=cuda
runs on the first GPU (default cpu), synchronising after each phase.
"""
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Group(nn.Module):
    """conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU (cairn's `groupN`)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, momentum=0.4)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.4)

    def forward(self, x):
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.bn2(self.conv2(x)))


class Fast(nn.Module):
    """cairn's `fast` net: 2x2 stem conv (24 ch), one group per width, max-pool head, logits / 9.

    As in cairn (and airbench), the stem's whitening filters and the
    BatchNorm scales are fixed, so neither takes a gradient."""

    def __init__(self, widths=(64, 256, 256), num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 2, bias=True)
        groups, c = [], 24
        for w in widths:
            groups.append(Group(c, w))
            c = w
        self.groups = nn.Sequential(*groups)
        self.fc = nn.Linear(c, num_classes, bias=False)
        self.stem.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad = False

    def forward(self, x):
        x = self.groups(F.gelu(self.stem(x)))
        return self.fc(x.amax(dim=(2, 3))) / 9


def make(name, cifar_stem):
    import torchvision

    if name == "fast":
        return Fast()
    if name == "efficientnet_lite0":
        # The network of the `cpu-lite0` profile, built as cairn builds it
        # (TensorFlow "same" padding as a separate op).
        from lite0_transfer import Lite0

        m = Lite0()
        m._fc = nn.Linear(1280, 10)
        return m
    m = getattr(torchvision.models, name)(num_classes=10)
    if cifar_stem:
        m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    return m


def throughput(name="fast", res="32", batch="256", steps="5", precision="fp32", stem="imagenet"):
    res, batch, steps = int(res), int(batch), int(steps)
    threads = int(os.environ.get("CAIRN_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    bf16 = precision == "bf16"
    dev = os.environ.get("CAIRN_BENCH_DEVICE", "cpu")
    # CUDA is asynchronous: wait for queued kernels before reading the clock.
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    model = make(name, stem == "cifar").to(dev)
    # PyTorch's CPU default is the per-parameter loop; CAIRN_BENCH_FUSED=1
    # selects the fused kernel cairn uses.
    fused = os.environ.get("CAIRN_BENCH_FUSED") == "1"
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused)
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616], device=dev).view(1, 3, 1, 1)
    # What cairn does in every precision: channels-last activations.
    model = model.to(memory_format=torch.channels_last)
    times = []  # per step: forward, backward, optimizer seconds
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        inp = (x.float() / 255 - mean) / std
        inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(inp).float(), y)
        loss.item()
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        times.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    # Medians, as in bench_train: robust to stalls on a shared machine.
    med = lambda v: sorted(v)[len(v) // 2]
    part = [med([s[i] for s in times[1:]]) for i in range(3)]
    step = med([sum(s) for s in times[1:]])
    print(
        f"torch{'-fused' if fused else ''} {name} res={res} batch={batch} {precision} {dev} threads={threads}: {batch / step:.1f} img/s (median step {step:.3f} s of {steps}; "
        f"forward {part[0] * 1e3:.1f} ms, backward {part[1] * 1e3:.1f} ms, optimizer {part[2] * 1e3:.1f} ms)"
    )


def dump(root, out):
    import numpy as np
    from PIL import Image

    os.makedirs(out, exist_ok=True)
    for split in ["train", "test"]:
        xs, ys = [], []
        for i, c in enumerate(CLASSES):
            d = os.path.join(root, split, c)
            for f in sorted(os.listdir(d)):
                xs.append(np.asarray(Image.open(os.path.join(d, f)).convert("RGB")))
                ys.append(i)
        np.stack(xs).transpose(0, 3, 1, 2).astype(np.uint8).tofile(os.path.join(out, f"{split}_x.u8"))
        np.array(ys, dtype=np.int64).tofile(os.path.join(out, f"{split}_y.i64"))
        print(split, len(ys))


if __name__ == "__main__":
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("throughput", [])
    {"throughput": throughput, "dump": dump}[cmd](*args)
