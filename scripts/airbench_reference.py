#!/usr/bin/env python3
"""airbench94 on the flagship's own data: the reference for the `cpu` profile's accuracy.

Keller Jordan's airbench94 (arXiv:2404.00498; legacy/airbench94.py of
github.com/KellerJordan/cifar10-airbench, MIT licence) is the fastest known
way to train CIFAR-10 to 94%. This is its training loop, unchanged in every
hyperparameter (batch 1024, 9.9 epochs, lr 11.5 and wd 0.0153 per 1024,
momentum 0.85, BN biases at 64x lr, label smoothing 0.2, whitening stem
with its bias trained for 3 epochs, alternating flips, 2-px reflect
translations, lookahead, six-view TTA), moved to the CPU (bf16 autocast by
default, channels-last) and fed what a `cairn run` of the `cpu` profile
cached: it trains on `pretrain`'s input (the 41,200 pool images) and
scores the 10,000 test images, as `evaluate` does. So it answers: what
does the reference reach on these JPEG re-encodings, in how many epochs?
`--prune R` adds InfoBatch's dynamic data pruning (see `kept`), to ask
whether skipping well-learned samples buys accuracy per FLOP here.
`--with-subset` trains on the pool and the 8,000-image subset (what
`load.pool = "with_train"` gives `pretrain`), to ask what more distinct
images buy at equal samples.

    python scripts/airbench_reference.py PROJECT [--epochs 9.9] [--seed 0] [--fp32] [--prune 0.5] [--with-subset]

PROJECT is a directory where `cairn run` of the `cpu` profile ran (it reads
PROJECT/artifacts/{resize/pool,resize/test,load/pool_labels,load/test_labels}.arrow,
and resize/train, load/train_labels with --with-subset).
Threads: CAIRN_THREADS, else 2.
"""
import argparse
import os
import time
from math import ceil

import numpy as np
import pyarrow.ipc as ipc
import torch
import torch.nn.functional as F
from torch import nn

MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
HYP = dict(lr=11.5, momentum=0.85, wd=0.0153, bias_scaler=64.0, label_smoothing=0.2,
           whiten_bias_epochs=3, bn_momentum=0.6, scale=1 / 9, widths=(64, 256, 256))


def tensor(path, shape):
    """A cairn Arrow IPC tensor (fixed-shape tensor column) as a torch tensor."""
    col = ipc.open_file(path).read_all().column(0).combine_chunks()
    flat = np.array(col.storage.flatten().to_numpy(zero_copy_only=False))
    return torch.from_numpy(flat.reshape(shape))


def load(project, with_subset):
    a = os.path.join(project, "artifacts")
    images = lambda f: ((tensor(f"{a}/{f}", (-1, 3, 32, 32)).float() / 255) - MEAN) / STD
    labels = lambda f: tensor(f"{a}/load/{f}_labels.arrow", (-1,))
    splits = ["pool", "train"] if with_subset else ["pool"]
    return (torch.cat([images(f"resize/{s}.arrow") for s in splits]), torch.cat([labels(s) for s in splits]),
            images("resize/test.arrow"), labels("test"))


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, n):
        super().__init__(n, eps=1e-12, momentum=1 - HYP["bn_momentum"])
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    def __init__(self, cin, cout, k=3, padding="same", bias=False):
        super().__init__(cin, cout, kernel_size=k, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.norm1 = Conv(cin, cout), BatchNorm(cout)
        self.conv2, self.norm2 = Conv(cout, cout), BatchNorm(cout)

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        w = HYP["widths"]
        self.whiten = Conv(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.groups = nn.Sequential(ConvGroup(24, w[0]), ConvGroup(w[0], w[1]), ConvGroup(w[1], w[2]))
        self.head = nn.Linear(w[2], 10, bias=False)

    def forward(self, x):
        x = self.groups(F.gelu(self.whiten(x)))
        return self.head(F.max_pool2d(x, 3).flatten(1)) * HYP["scale"]

    def init_whiten(self, x, eps=5e-4):
        c, (h, w) = x.shape[1], self.whiten.weight.shape[2:]
        p = x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)
        vals, vecs = torch.linalg.eigh(p.T @ p / len(p), UPLO="U")
        vals, vecs = vals.flip(0).view(-1, 1, 1, 1), vecs.T.reshape(-1, c, h, w).flip(0)
        scaled = vecs / torch.sqrt(vals + eps)
        self.whiten.weight.data[:] = torch.cat((scaled, -scaled))


def crop(padded, size=32):
    """Each image at a random offset of the reflect-padded batch (airbench's batch_crop)."""
    r = (padded.size(-1) - size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(padded), 2))
    out = torch.empty((len(padded), 3, size, size))
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            m = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[m] = padded[m, :, r + sy : r + sy + size, r + sx : r + sx + size]
    return out


def forward(net, x, bf16):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return net(x.contiguous(memory_format=torch.channels_last)).float()


def accuracy(net, x, y, bf16, tta):
    """Test accuracy; `tta`: airbench's level 2 (mirror x {none, 1 px up-left, 1 px down-right})."""
    net.eval()
    mirror = lambda v: 0.5 * forward(net, v, bf16) + 0.5 * forward(net, v.flip(-1), bf16)
    logits = []
    with torch.no_grad():
        for xb in x.split(2000):
            if not tta:
                logits.append(forward(net, xb, bf16))
                continue
            p = F.pad(xb, (1,) * 4, "reflect")
            shifted = torch.stack([mirror(p[:, :, 0:32, 0:32]), mirror(p[:, :, 2:34, 2:34])]).mean(0)
            logits.append(0.5 * mirror(xb) + 0.5 * shifted)
    return (torch.cat(logits).argmax(1) == y).float().mean().item()


def kept(scores, epoch, args):
    """InfoBatch (Qin et al., ICLR 2024, arXiv:2401.04412): which samples an
    epoch trains on and their loss weights. Of the samples whose last loss is
    below the mean, a random `prune` share sits the epoch out and the rest
    count 1/(1 - prune), so the expected gradient is unchanged; the first
    epoch and the last (1 - delta) of training use every sample."""
    n = len(scores)
    weight = torch.ones(n)
    if args.prune == 0 or not 0 < epoch < args.delta * args.epochs:
        return torch.arange(n), weight
    well = scores < scores.mean()
    keep = ~(well & (torch.rand(n) < args.prune))
    weight[well & keep] = 1 / (1 - args.prune)
    return keep.nonzero().squeeze(1), weight


def train(args):
    xs, ys, xt, yt = load(args.project, args.with_subset)
    bs, momentum = args.batch_size, HYP["momentum"]
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = HYP["lr"] / kilostep, HYP["wd"] * bs / kilostep
    lr_b = lr * HYP["bias_scaler"]
    steps_per_epoch = len(xs) // bs
    total = ceil(steps_per_epoch * args.epochs)
    net = Net().to(memory_format=torch.channels_last)
    norm_biases = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    groups = [dict(params=norm_biases, lr=lr_b, weight_decay=wd / lr_b), dict(params=others, lr=lr, weight_decay=wd / lr)]
    opt = torch.optim.SGD(groups, momentum=momentum, nesterov=True)
    base = [g["lr"] for g in opt.param_groups]
    warm = int(total * 0.23)
    shape = lambda s: 0.2 + 0.8 * s / warm if s < warm else 1 - 0.93 * (s - warm) / (total - warm)
    alpha = 0.95**5 * (torch.arange(total + 1) / total) ** 3
    ema = {k: v.clone() for k, v in net.state_dict().items()}

    def lookahead(decay):
        for e, p in zip(ema.values(), net.state_dict().values()):
            if p.dtype == torch.float:
                e.lerp_(p, 1 - decay)
                p.copy_(e)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=HYP["label_smoothing"], reduction="none")
    net.init_whiten(xs[:5000])
    # Alternating flip: one random flip per image, then every other epoch all flipped.
    flipped = torch.where((torch.rand(len(xs)) < 0.5).view(-1, 1, 1, 1), xs.flip(-1), xs)
    padded = F.pad(flipped, (2,) * 4, "reflect")
    scores = torch.ones(len(xs))
    step, seen, t0 = 0, 0, time.time()
    for epoch in range(ceil(args.epochs)):
        net.whiten.bias.requires_grad = epoch < HYP["whiten_bias_epochs"]
        images = crop(padded)
        images = images.flip(-1) if epoch % 2 == 1 else images
        idx, weight = kept(scores, epoch, args)
        order = idx[torch.randperm(len(idx))]
        steps = len(order) // bs
        net.train()
        # The schedules run on the planned step axis; a pruned epoch covers
        # its share of it in fewer, longer strides.
        for i in range(min(steps, total - epoch * steps_per_epoch)):
            pos = epoch * steps_per_epoch + i * steps_per_epoch / steps
            for g, b0 in zip(opt.param_groups, base):
                g["lr"] = b0 * shape(pos)
            b = order[i * bs : (i + 1) * bs]
            per_sample = loss_fn(forward(net, images[b], args.bf16), ys[b])
            scores[b] = per_sample.detach()
            loss = (per_sample * weight[b]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step, seen = step + 1, seen + len(b)
            if step % 5 == 0:
                lookahead(alpha[round(pos) + 1].item())
        if epoch == ceil(args.epochs) - 1:
            lookahead(1.0)
        acc = accuracy(net, xt, yt, args.bf16, tta=False)
        print(f"epoch {epoch + 1} samples {len(idx)} steps {step} loss {loss.item() / bs:.4f} test {acc:.4f} {time.time() - t0:.0f}s", flush=True)
    acc = accuracy(net, xt, yt, args.bf16, tta=True)
    precision = "bf16" if args.bf16 else "fp32"
    pruning = f", InfoBatch prune {args.prune} delta {args.delta}" if args.prune else ""
    print(f"six-view TTA test accuracy {acc:.4f} after {args.epochs} epochs{pruning}: {seen / len(xs):.2f} epochs of samples "
          f"({precision}, batch {bs}, seed {args.seed}) in {time.time() - t0:.0f}s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project")
    ap.add_argument("--epochs", type=float, default=9.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--fp32", dest="bf16", action="store_false")
    ap.add_argument("--prune", type=float, default=0.0, help="InfoBatch's pruning share (0: off, as airbench94)")
    ap.add_argument("--with-subset", action="store_true", help="train on the pool and the 8,000-image subset (val stays out)")
    ap.add_argument("--delta", type=float, default=0.875, help="InfoBatch: prune only before this share of the epochs")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CAIRN_THREADS", 2)))
    torch.manual_seed(args.seed)
    train(args)


if __name__ == "__main__":
    main()
