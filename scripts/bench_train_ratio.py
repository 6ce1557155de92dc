#!/usr/bin/env python3
"""Rust (cairn) vs PyTorch-eager training throughput, as ratios
(`make bench-train`; the figures in BENCHMARKS.md "Training throughput").

On a shared 2-core machine a process can run 30% slower than the one
before it for reasons outside both, so one Rust run against one Python run
says little. This alternates them in short pairs — Rust then Python, then
Python then Rust, so neither always goes first — for each config, and
reports per side the median images/s, and the median of the per-pair
ratios (Rust / PyTorch), which cancels slow phases that hit both halves
of a pair.

    python scripts/bench_train_ratio.py [PAIRS] [NET...]

NET limits the run to those nets' configs (e.g. `efficientnet_lite0`).

Each half is `target/release/bench_train throughput CFG` or
`python scripts/bench_train.py throughput CFG` (both print img/s from their
median step). PyTorch runs its default CPU optimizer (the per-parameter
loop); the `fused` column is `SGD(fused=True)`, the kernel cairn calls,
measured in the same rounds.

Where the CPU has no native bf16 (`cairn-worker --probe` says
`native_bf16 = none`), the bf16 configs are skipped with a row saying so:
`precision = "auto"` never picks bf16 there, and emulated bf16 runs ~13x
slower (one half of the fast net's config would take about 9 minutes
at the 4.3 img/s issue 14 reports; estimated, not run).
"""
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
RUST = os.path.join(ROOT, "target", "release", "bench_train")
WORKER = os.path.join(ROOT, "target", "release", "cairn-worker")
CONFIGS = [  # net, res, batch, steps, precision
    ("fast", 32, 256, 8, "bf16"),
    ("fast", 32, 256, 5, "fp32"),
    ("resnet50", 32, 32, 10, "fp32"),
    # Six steps, not three: at 1.2-1.4 s a step the median of three moved
    # by a tenth between runs of the same binary (BENCHMARKS.md, "ResNet-50
    # at 224 px against PyTorch eager: the same convolutions").
    ("resnet50", 224, 8, 6, "fp32"),
    # The `cpu-lite0` / `cpu-fp32` profile's network, whole, at 80 px (the
    # profile trains stages 5-7 at 96 px; the figures in BENCHMARKS.md are
    # at 80 px).
    ("efficientnet_lite0", 80, 64, 5, "bf16"),
    ("efficientnet_lite0", 80, 64, 5, "fp32"),
]


def run(cmd, env=None):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    m = re.search(r"([\d.]+) img/s", out.stdout)
    if out.returncode != 0 or not m:
        sys.exit(f"bench_train_ratio: {' '.join(cmd)} failed:\n{out.stdout}{out.stderr}")
    return float(m.group(1))


def native_bf16():
    """The worker's probe: the CPU feature that makes bf16 native, or "none"."""
    out = subprocess.run([WORKER, "--probe"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench_train_ratio: {WORKER} --probe failed:\n{out.stdout}{out.stderr}")
    return json.loads(out.stdout)["native_bf16"]


def main():
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    nets = set(sys.argv[2:])
    threads = os.environ.setdefault("CAIRN_THREADS", str(os.cpu_count()))
    bf16 = native_bf16()
    print(f"threads={threads} pairs={pairs} native_bf16={bf16}")
    print("| net | res | batch | precision | cairn img/s | PyTorch img/s | PyTorch fused img/s | cairn / PyTorch | cairn / PyTorch fused |")
    print("|---|---|---|---|---|---|---|---|---|")
    for net, res, batch, steps, prec in CONFIGS:
        if nets and net not in nets:
            continue
        if prec == "bf16" and bf16 == "none":
            print(f"| {net} | {res} | {batch} | {prec} | skipped: no native bf16 on this CPU (`auto` runs fp32) | | | | |", flush=True)
            continue
        args = ["throughput", net, str(res), str(batch), str(steps), prec]
        rust, torch, fused, ratios, fused_ratios = [], [], [], [], []
        for i in range(pairs):
            halves = [
                lambda: rust.append(run([RUST, *args])),
                lambda: torch.append(run([PY, "scripts/bench_train.py", *args])),
                lambda: fused.append(run([PY, "scripts/bench_train.py", *args], {"CAIRN_BENCH_FUSED": "1"})),
            ]
            for h in halves if i % 2 == 0 else reversed(halves):
                h()
            ratios.append(rust[-1] / torch[-1])
            fused_ratios.append(rust[-1] / fused[-1])
        med = statistics.median
        print(
            f"| {net} | {res} | {batch} | {prec} | {med(rust):.1f} | {med(torch):.1f} | {med(fused):.1f} "
            f"| {med(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | {med(fused_ratios):.2f} ({min(fused_ratios):.2f}–{max(fused_ratios):.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
