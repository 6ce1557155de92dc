//! Resumable training through the real `cairn` binary: a `train` stage
//! killed outright (SIGKILL, as a preempted job is) after some epochs have
//! been checkpointed resumes on the next `cairn run` — it says "resuming
//! pretrain from epoch k/N" — and ends with outputs byte-identical to those
//! of an uninterrupted run in a separate cache; its checkpoint directory is
//! gone once the result is stored, and `cairn gc` keeps a checkpoint that a
//! run may still resume and removes the orphans (a key with a manifest, a
//! key the newest run did not plan). The data are small tensors written
//! here, read as file inputs, so the test needs no archive.
//!
//! Like `ml_pipeline.rs`, it drives `cairn` from the build directory: run
//! `cargo build --release --workspace` first (`make test` does).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use cairn_stages::train::checkpoint::{FILE, META};
use cairn_stages::{tensors, weights};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const EPOCHS: usize = 24;
/// Lookahead starts averaging after 30% of the steps: a checkpoint past
/// this epoch holds its average.
const KILL_AFTER: usize = 9;

const PIPELINE: &str = r#"
[pipeline]
name = "resume"
seed = 11

[stages.pretrain]
kind = "train"
model = { arch = "fast", widths = [8, 16], normalize = "cifar" }
lr = 0.05
momentum = 0.9
bias_lr_scale = 4.0
epochs = 24
patience = 20
batch_size = 16
precision = "fp32"
lookahead = true
augment = { flip = true, translate = 1 }
inputs = { train_images = { file = "data/train_images.arrow" }, train_labels = { file = "data/train_labels.arrow" }, val_images = { file = "data/val_images.arrow" }, val_labels = { file = "data/val_labels.arrow" } }
"#;

/// A project directory with the pipeline and its data (the same bytes in
/// every project).
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), PIPELINE).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    tch::manual_seed(3);
    for (split, n) in [("train", 320), ("val", 64)] {
        let x = Tensor::randint(256, [n, 3, 16, 16], (Kind::Uint8, Device::Cpu));
        let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
        tensors::save(&dir.path().join(format!("data/{split}_images.arrow")), &x).unwrap();
        tensors::save(&dir.path().join(format!("data/{split}_labels.arrow")), &y).unwrap();
    }
    dir
}

/// `cairn` in `dir`, with nothing from the caller's environment that
/// would move its cache or worker.
fn cairn(dir: &Path) -> Command {
    let mut c = Command::new(common::cairn_bin());
    c.current_dir(dir).env_remove("CAIRN_CACHE_DIR").env_remove("CAIRN_WORKER").env("CUDA_VISIBLE_DEVICES", "");
    c
}

fn run_ok(dir: &Path, args: &[&str]) -> Output {
    let out = cairn(dir).args(args).output().expect("cairn starts");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cairn {args:?} failed:\n{text}");
    out
}

/// Every output file of `pretrain`, by name.
fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("artifacts/pretrain"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

/// The checkpoint directories under the project's cache.
fn checkpoint_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join("cache/checkpoints")) else { return Vec::new() };
    entries.map(|e| e.unwrap().path()).collect()
}

/// The epochs done in the checkpoint in `ckpt`, if one is there.
fn epochs_done(ckpt: &Path) -> Option<usize> {
    let file = weights::read_safetensors(&ckpt.join(FILE)).ok()?;
    let meta: Value = serde_json::from_str(file.metadata.get(META)?).ok()?;
    meta["epochs_done"].as_u64().map(|n| n as usize)
}

/// Processes whose command line mentions `dir` (the worker's job file is
/// under it).
fn processes_in(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    procs
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

/// Starts `cairn run`, waits until a checkpoint past epoch `KILL_AFTER`
/// exists, SIGKILLs it and waits for its worker to be gone; returns the
/// checkpoint's directory.
fn run_and_kill(dir: &Path) -> PathBuf {
    let mut child = cairn(dir).arg("run").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    let ckpt = loop {
        if let Some(c) = checkpoint_dirs(dir).into_iter().find(|c| epochs_done(c).is_some_and(|n| n >= KILL_AFTER)) {
            break c;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it checkpointed epoch {KILL_AFTER}");
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint past epoch {KILL_AFTER} after 5 minutes");
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let t1 = Instant::now();
    while !processes_in(dir).is_empty() {
        assert!(t1.elapsed() < Duration::from_secs(10), "the worker outlived the killed cairn: {:?}", processes_in(dir));
        std::thread::sleep(Duration::from_millis(20));
    }
    ckpt
}

/// Sets the modification time of `dir` and everything in it.
fn touch_all(dir: &Path, t: SystemTime) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::File::options().write(true).open(e.unwrap().path()).unwrap().set_modified(t).unwrap();
    }
    std::fs::File::open(dir).unwrap().set_modified(t).unwrap();
}

/// A fake checkpoint directory for `key`, last written at `t`.
fn fake_checkpoint(dir: &Path, key: &str, t: SystemTime) -> PathBuf {
    let c = dir.join("cache/checkpoints").join(key);
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join(FILE), b"left by some earlier run").unwrap();
    touch_all(&c, t);
    c
}

#[test]
fn a_killed_train_stage_resumes_to_the_bytes_of_an_uninterrupted_run() {
    let whole = project();
    let t0 = Instant::now();
    run_ok(whole.path(), &["run"]);
    eprintln!("uninterrupted run: {:.1}s", t0.elapsed().as_secs_f64());
    let want = outputs(whole.path());
    assert!(checkpoint_dirs(whole.path()).is_empty(), "a completed stage leaves no checkpoint: {:?}", checkpoint_dirs(whole.path()));

    let p = project();
    let ckpt = run_and_kill(p.path());
    let killed_at = epochs_done(&ckpt).unwrap();
    assert!(!p.path().join("artifacts/pretrain").exists(), "a killed stage caches nothing");
    // The killed run recorded nothing: its checkpoint is newer than any
    // record, and gc keeps it for the next run.
    let gc = run_ok(p.path(), &["gc"]);
    assert!(!String::from_utf8_lossy(&gc.stdout).contains("checkpoint"), "{}", String::from_utf8_lossy(&gc.stdout));
    assert_eq!(epochs_done(&ckpt), Some(killed_at), "gc kept the checkpoint");
    let saved = std::fs::read(ckpt.join(FILE)).unwrap();

    let again = run_ok(p.path(), &["run"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    let resumed = stderr.lines().find_map(|l| l.split("resuming pretrain from epoch ").nth(1)).unwrap_or_else(|| panic!("no resume line:\n{stderr}"));
    let from: usize = resumed.split('/').next().unwrap().parse().unwrap();
    assert!(resumed.starts_with(&format!("{killed_at}/{EPOCHS}")) && from < EPOCHS, "resumed from {resumed:?}, the checkpoint was after epoch {killed_at}:\n{stderr}");
    assert!(outputs(p.path()) == want, "the resumed run's outputs differ from an uninterrupted run's");
    assert!(!ckpt.exists(), "the checkpoint is removed once the result is stored");

    // gc: a checkpoint whose key has a manifest, and one older than the
    // newest run that the run did not plan, are orphans; one newer than the
    // newest run (a run killed since) is kept.
    let hour = Duration::from_secs(3600);
    let done_key = fake_checkpoint(p.path(), &ckpt.file_name().unwrap().to_string_lossy(), SystemTime::now());
    std::fs::write(done_key.join(FILE), &saved).unwrap();
    let stale = fake_checkpoint(p.path(), &"ab".repeat(32), SystemTime::now() - hour);
    let recent = fake_checkpoint(p.path(), &"cd".repeat(32), SystemTime::now() + hour);
    let gc = run_ok(p.path(), &["gc"]);
    let said = String::from_utf8_lossy(&gc.stdout);
    assert!(said.contains("deleted 2 orphaned training checkpoint(s)"), "{said}");
    assert!(!done_key.exists() && !stale.exists() && recent.exists(), "{said}");
}
