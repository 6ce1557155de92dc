#!/usr/bin/env python3
"""Writes `make gpu-check`'s summary (summary.json and summary.md) from what
scripts/gpu-check.sh left in its work folder; called after every step, so
a step that fails or overruns still leaves the others' results.

    gpu_check_summary.py WORK OUT MODE PROFILE "BENCH CONFIG"

Reads WORK/steps.tsv (step, exit status, milliseconds), probe.json, gpu.txt
(nvidia-smi), bench.txt (bench_train and scripts/bench_train.py lines),
runs.json and recipe-runs.json (`cairn runs --json --limit 1` after the
smoke pipeline and after the recipe) and verify.txt (`cairn verify`).
Standard library only: it runs on the device's bare Python too.
"""
import json
import os
import re
import shutil
import statistics
import sys
import time


def read(work, name):
    try:
        with open(os.path.join(work, name)) as f:
            return f.read()
    except OSError:
        return None


def steps(work):
    rows = [line.split("\t") for line in (read(work, "steps.tsv") or "").splitlines() if line]
    return {name: {"ok": rc == "0", "exit": int(rc), "seconds": int(ms) / 1000} for name, rc, ms in rows}


def throughput(work, config):
    """Images/s of each side (every run, and the median) and the median of
    per-pair ratios cairn / PyTorch, runs paired in the order they ran."""
    rust, torch = [], []
    for line in (read(work, "bench.txt") or "").splitlines():
        m = re.search(r"([\d.]+) img/s", line)
        if m:
            (rust if line.startswith("rust ") else torch).append(float(m.group(1)))
    ratios = [r / t for r, t in zip(rust, torch) if t > 0]
    med = lambda v: statistics.median(v) if v else None
    return {"config": config, "cairn_img_s": rust, "pytorch_img_s": torch, "cairn_median": med(rust), "pytorch_median": med(torch), "ratio_median": med(ratios)}


def pipeline(work, profile, name="runs.json"):
    runs = read(work, name)
    try:
        run = json.loads(runs)[0]
    except (TypeError, ValueError, IndexError):
        return None
    stages = [{"stage": s["stage"], "status": s["status"], "seconds": s.get("duration_s"), "metrics": s.get("metrics", {})} for s in run["stages"]]
    by = {s["stage"]: s for s in stages}
    acc = by.get("evaluate", {}).get("metrics", {}).get("test_acc")
    return {"profile": run.get("profile", profile), "run_id": run.get("run_id"), "test_acc": acc, "seconds": sum(s["seconds"] or 0 for s in stages if s["status"] != "cached"), "stages": stages}


def verify(work):
    """Per verified stage: identical or DIFFERS, and per output whether it
    re-executed bit-identical (outputs from the run's record)."""
    text = read(work, "verify.txt")
    if text is None:
        return None
    outputs = {}
    try:
        outputs = {s["stage"]: sorted(s.get("outputs", {})) for s in json.loads(read(work, "run.json"))["stages"]}
    except (TypeError, ValueError, KeyError):
        pass
    result = {}
    for line in text.splitlines():
        m = re.match(r"(identical|DIFFERS)\s+(\S+)\s*(.*)", line)
        if not m:
            continue
        state, stage, rest = m.groups()
        differ = set(re.findall(r"output `([^`]+)`", rest))
        result[stage] = {"identical": state == "identical", "outputs": {o: o not in differ for o in outputs.get(stage, sorted(differ))}}
    return result


def fmt(v):
    return "-" if v is None else f"{v:.1f}"


def markdown(s):
    out = [f"# cairn gpu-check ({s['mode']})", "", f"{s['date']}; device: {s['device']}; libtorch {s['probe'].get('libtorch', '?') if s['probe'] else '?'}", ""]
    out += ["| step | ok | seconds |", "|---|---|---|"]
    out += [f"| {k} | {'yes' if v['ok'] else 'NO (exit %d)' % v['exit']} | {v['seconds']:.1f} |" for k, v in s["steps"].items()]
    t = s["throughput"]
    out += ["", f"## Training throughput ({t['config']})", ""]
    out += [f"cairn {fmt(t['cairn_median'])} img/s, PyTorch eager {fmt(t['pytorch_median'])} img/s, "
            f"cairn / PyTorch {'-' if t['ratio_median'] is None else '%.2f' % t['ratio_median']} (runs: cairn {t['cairn_img_s']}, PyTorch {t['pytorch_img_s']})"]
    out += stage_table("Pipeline", s["pipeline"])
    v = s["verify"]
    if v is not None:
        out += ["", "## cairn verify finetune evaluate", ""]
        for stage, r in v.items():
            outs = ", ".join(f"{o} {'identical' if same else 'DIFFERS'}" for o, same in r["outputs"].items())
            out.append(f"- {stage}: {'bit-identical' if r['identical'] else 'DIFFERS'} ({outs})")
    out += stage_table("Recipe", s["recipe"])
    return "\n".join(out) + "\n"


def stage_table(title, p):
    """A run's heading (profile, test accuracy, time) and a row a stage."""
    if not p:
        return []
    acc = "-" if p["test_acc"] is None else "%.2f%%" % (100 * p["test_acc"])
    out = ["", f"## {title} (profile {p['profile'] or 'default'}): test accuracy {acc}, {p['seconds']:.1f} s in the stages that ran", ""]
    out += ["| stage | status | seconds | img/s | metrics |", "|---|---|---|---|---|"]
    for st in p["stages"]:
        m = st["metrics"]
        keys = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k in ("test_acc", "best_val_acc", "best_epoch", "accuracy", "peak_rss_mb"))
        out.append(f"| {st['stage']} | {st['status']} | {fmt(st['seconds'])} | {fmt(m.get('images_per_sec'))} | {keys} |")
    return out


def main():
    work, out, mode, profile, config = sys.argv[1:6]
    probe = None
    try:
        probe = json.loads(read(work, "probe.json"))
    except (TypeError, ValueError):
        pass
    gpu = (read(work, "gpu.txt") or "").strip()
    s = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": gpu or (probe or {}).get("device", "unknown"),
        "probe": probe,
        "steps": steps(work),
        "throughput": throughput(work, config),
        "pipeline": pipeline(work, profile),
    }
    s["verify"] = verify(work)
    s["recipe"] = pipeline(work, "", "recipe-runs.json")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(s, f, indent=2)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown(s))
    for name in ("run.json", "verify.txt", "recipe-runs.json"):
        if os.path.exists(os.path.join(work, name)):
            shutil.copy(os.path.join(work, name), out)


if __name__ == "__main__":
    main()
