#!/usr/bin/env python3
"""Do `clamp(0, 6)` and `relu6` (libtorch's `hardtanh`) train Lite0 differently?

The two ReLU6 forms have the same values and differ in their gradient only
where an input is exactly 0 or 6. This script measures, on the tail that
the `cpu-fp32` profile's `pretrain` trains (`rest(x, 5)` of
`lite0_transfer.py`'s network, train mode, real pool images at 80 px):

1. how many ReLU6 inputs are exactly 0 or 6;
2. whether the two forward outputs are bit-identical (NaN, ±inf, ±0 too);
3. how far the gradients of the two forms drift apart over SGD steps from
   the same weights on the same batches, and, as the control, how far two
   runs of `clamp` do.

    python scripts/relu6_rounding.py PROJECT WEIGHTS [--steps 20]

PROJECT is a directory where the `cpu-fp32` profile ran (it reads
PROJECT/artifacts/resize/pool.arrow and load/pool_labels.arrow).
BENCHMARKS.md ("The quarter point was spread between runs") records what
it printed.
"""
import argparse
import copy

import torch
import torch.nn.functional as F

import lite0_transfer as L  # scripts/ is on the path when run as a script

CLAMP = lambda t, inplace=False: t.clamp(0, 6)  # noqa: E731
RELU6 = F.relu6


def boundary_inputs(m, f):
    """(exact zeros, exact sixes, all) over the ReLU6 inputs of one forward pass."""
    seen = []

    def counting(t, inplace=False):
        seen.append(((t == 0).sum().item(), (t == 6).sum().item(), t.numel()))
        return RELU6(t)

    L.F.relu6 = counting
    m.train()
    with torch.no_grad():
        m.rest(f, 5)
    return tuple(sum(s[i] for s in seen) for i in range(3))


def forward_equal():
    x = torch.randn(64, 240, 10, 10) * 4 + 1
    x.view(-1)[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 6.0])
    x = x.contiguous(memory_format=torch.channels_last)
    a, b = x.clamp(0, 6), F.relu6(x)
    same = torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))
    return same and a.stride() == b.stride(), x.numel()


def gradients(m0, f, y, act, steps):
    """Each step's gradients on the tail with `act` as ReLU6: SGD, momentum 0.9, the
    rate warming up to 0.1 over 115 steps as `cpu-fp32`'s pretrain does."""
    L.F.relu6 = act
    m = copy.deepcopy(m0)
    m.train()
    tail = [p for n, p in m.named_parameters()
            if not n.startswith(("_conv_stem", "_bn0")) and not any(n.startswith(f"_blocks.{i}.") for i in range(5))]
    opt = torch.optim.SGD(tail, lr=0.1, momentum=0.9)
    out = []
    for s in range(steps):
        batch = f[s * 64:(s + 1) * 64].contiguous(memory_format=torch.channels_last)
        opt.param_groups[0]["lr"] = 0.1 * (s + 1) / 115
        opt.zero_grad()
        F.cross_entropy(m.rest(batch, 5), y[s * 64:(s + 1) * 64]).backward()
        out.append([p.grad.clone() for p in tail])
        opt.step()
    return out


def drift(u, v):
    """The relative distance of two gradients, each the concatenation of all
    tail tensors (per tensor would mislead: the BatchNorm shifts feeding
    another BatchNorm have a gradient that is zero but for rounding)."""
    num = sum(((p - q) ** 2).sum() for p, q in zip(u, v)).sqrt()
    return (num / sum((p ** 2).sum() for p in u).sqrt()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("project")
    ap.add_argument("weights")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    m0 = L.pretrained(args.weights)
    m0._fc = torch.nn.Linear(1280, 10)
    m0 = m0.to(memory_format=torch.channels_last).eval()
    x = L.tensor(f"{args.project}/artifacts/resize/pool.arrow", (-1, 3, 32, 32))
    n = 64 * args.steps
    with torch.no_grad():
        f = torch.cat([m0.prefix(L.prep(x[i:i + 128], 80), 5) for i in range(0, n, 128)])
    y = L.tensor(f"{args.project}/artifacts/load/pool_labels.arrow", (-1,)).long()[:n]
    zeros, sixes, total = boundary_inputs(m0, f[:128])
    print(f"ReLU6 inputs exactly 0: {zeros}, exactly 6: {sixes}, of {total}")
    same, count = forward_equal()
    print(f"forward clamp == relu6 bit for bit on {count} values: {same}")
    a, b, c = (gradients(m0, f, y, act, args.steps) for act in (CLAMP, RELU6, CLAMP))
    for s in range(args.steps):
        print(f"step {s:2d}: |g - g'| / |g| over all tail gradients: "
              f"clamp vs relu6 {drift(a[s], b[s]):.3g}, clamp vs clamp {drift(a[s], c[s]):.3g}")

if __name__ == "__main__":
    main()
