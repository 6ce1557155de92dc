//! `make gpu-check` proven before a GPU is lent: packs the release binaries
//! as `make pack-device` does, runs
//! `scripts/gpu-check.sh --cpu-smoke` from that pack, and checks the summary
//! it writes: the probe, every step's success, every pipeline stage with
//! its time, the test accuracy, both throughput figures, `cairn verify`
//! finding every output of finetune and evaluate bit-identical, and the
//! recipe step re-running only the fine-tune and what follows.
//!
//! It uses the binaries already built beside `cairn` (`make test` builds
//! them all; alone, run `cargo build --release --workspace` first) and the
//! real CIFAR-10 archive at `../shared/data/cifar10-jpg.tar.gz`, from which
//! the script cuts a 500-image subset; without the archive it skips
//! visibly. About a minute and a half on 2 cores.

#[path = "support/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const STAGES: [&str; 8] = ["load", "resize", "pretrain", "frozen", "finetune", "evaluate", "gradcam", "report"];

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

#[test]
fn gpu_check_cpu_smoke() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cifar = root.join("../shared/data/cifar10-jpg.tar.gz");
    if !cifar.is_file() {
        skip::unavailable("gpu_check_cpu_smoke", &format!("no CIFAR-10 archive at {}", cifar.display()));
        return;
    }
    let release: PathBuf = Path::new(env!("CARGO_BIN_EXE_cairn")).parent().unwrap().into();
    for b in ["cairn-worker", "bench_train"] {
        assert!(release.join(b).is_file(), "{} is missing: run `cargo build --release --workspace` first", release.join(b).display());
    }
    let tmp = tempfile::tempdir().unwrap();
    let (pack, out) = (tmp.path().join("pack"), tmp.path().join("out"));
    run(
        "scripts/pack-device.sh",
        Command::new("bash").arg(root.join("scripts/pack-device.sh")).arg(&pack).env("CAIRN_RELEASE_DIR", &release).env("CIFAR", &cifar),
    );
    for f in ["bin.tar.xz", "cifar10-jpg.tar.gz"] {
        assert!(pack.join(f).is_file(), "pack-device.sh left no {f}");
    }
    let log = run(
        "scripts/gpu-check.sh --cpu-smoke",
        Command::new("bash")
            .arg(root.join("scripts/gpu-check.sh"))
            .arg("--cpu-smoke")
            .env("OUT", &out)
            .env("GPU_CHECK_WORK", tmp.path().join("work"))
            .env("GPU_CHECK_PACK", &pack)
            .env_remove("CIFAR")
            .env_remove("GPU_CHECK_SMOKE"),
    );
    // Run from the pack, not from target/release.
    assert!(!log.contains("using target/release"), "the script did not unpack the pack:\n{log}");
    let s: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let ctx = || format!("summary: {s:#}\nlog:\n{log}");
    assert_eq!(s["mode"], "cpu-smoke", "{}", ctx());

    assert_eq!(s["probe"]["libtorch"], cairn::env::TORCH_VERSION, "{}", ctx());
    assert_eq!(s["probe"]["cuda"], false, "{}", ctx());
    for step in ["unpack", "probe", "data", "bench", "pipeline", "verify", "recipe"] {
        assert_eq!(s["steps"][step]["ok"], true, "step {step} did not succeed: {}", ctx());
        assert!(s["steps"][step]["seconds"].as_f64().is_some(), "step {step} has no time: {}", ctx());
    }

    let p = &s["pipeline"];
    assert_eq!(p["profile"], "gpu-smoke-cpu", "{}", ctx());
    let stages = p["stages"].as_array().unwrap();
    assert_eq!(stages.iter().map(|st| st["stage"].as_str().unwrap()).collect::<Vec<_>>(), STAGES, "{}", ctx());
    for st in stages {
        assert_eq!(st["status"], "ran", "{}", ctx());
        assert!(st["seconds"].as_f64().is_some_and(|t| t > 0.0), "{} has no time: {}", st["stage"], ctx());
    }
    let acc = p["test_acc"].as_f64().unwrap_or_else(|| panic!("no test accuracy: {}", ctx()));
    assert!((0.0..=1.0).contains(&acc), "{}", ctx());

    let t = &s["throughput"];
    for side in ["cairn_median", "pytorch_median", "ratio_median"] {
        assert!(t[side].as_f64().is_some_and(|v| v > 0.0), "no {side}: {}", ctx());
    }

    for stage in ["finetune", "evaluate"] {
        let v = &s["verify"][stage];
        assert_eq!(v["identical"], true, "{stage} not bit-identical: {}", ctx());
        let outputs = v["outputs"].as_object().unwrap();
        assert!(!outputs.is_empty() && outputs.values().all(|o| o == true), "{stage}: {}", ctx());
    }
    // The recipe step reuses the cache: another fine-tune rate re-runs it
    // and what follows, nothing before it.
    let r = &s["recipe"];
    let status: Vec<&str> = r["stages"].as_array().unwrap().iter().map(|st| st["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["cached", "cached", "cached", "cached", "ran", "ran", "ran", "ran"], "{}", ctx());
    assert!(r["test_acc"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{}", ctx());
    assert!(out.join("recipe-runs.json").is_file(), "recipe-runs.json did not come back");

    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for needle in ["Training throughput", "test accuracy", "cairn verify finetune evaluate", "| finetune | ran |", "## Recipe (profile gpu-smoke-cpu)"] {
        assert!(md.contains(needle), "summary.md lacks {needle:?}:\n{md}");
    }
}
