"""Where a training step of the `cpu-lite0` tail goes, in PyTorch eager.

EfficientNet-Lite0 from stage 5 on (what `cpu-lite0` trains; its input,
stage 4's output, is [B, 80, 6, 6] at 88 and 96 px), random channels-last
inputs, SGD, 2 threads: the step time with and without the depthwise
filters' weight gradients, twice, then `torch.profiler`'s table of five
steps (BENCHMARKS.md, "A depthwise weight gradient that streams").

    ~/.cache/cairn/torch-2.11.0/bin/python scripts/profile_lite0_tail.py [BATCH]
"""
import os, sys, time, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lite0_transfer import Lite0
torch.set_num_threads(2); torch.manual_seed(0)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
m = Lite0().to(memory_format=torch.channels_last).train()
x = torch.randn(B, 80, 6, 6).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (B,))
def run(fixed):
    for b in m._blocks[8:]:
        b._depthwise_conv.weight.requires_grad_(not fixed)
    ps = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(ps, lr=0.01, momentum=0.9)
    def step():
        opt.zero_grad(); torch.nn.functional.cross_entropy(m.rest(x, 8), y).backward(); opt.step()
    for _ in range(3): step()
    t = time.perf_counter()
    for _ in range(15): step()
    return (time.perf_counter() - t) / 15
for r in range(2):
    a = run(False); b = run(True)
    print(f"B={B} step {a*1e3:.0f} ms ({B/a:.0f} img/s); depthwise weights fixed {b*1e3:.0f} ms; share {1-b/a:.0%}")
from torch.profiler import profile
for b in m._blocks[8:]: b._depthwise_conv.weight.requires_grad_(True)
opt = torch.optim.SGD(m.parameters(), lr=0.01)
with profile() as p:
    for _ in range(5):
        opt.zero_grad(); torch.nn.functional.cross_entropy(m.rest(x, 8), y).backward(); opt.step()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
