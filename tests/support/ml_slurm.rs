//! The ML stages' fixture for the Slurm tests (`tests/slurm.rs`,
//! `tests/slurm_remote.rs`): the flagship's first stages at toy size, a
//! CIFAR-10 folder in miniature, and what tells a checkpoint's progress.

#![allow(dead_code)]

use std::process::Command;

use crate::common::Project;
use crate::skip;
use crate::slurm::Cluster;

/// The flagship's first stages at toy size, on the cluster: `load_subset`
/// of a CIFAR-10-format folder written here, `resize`, and one epoch of
/// `train`, all run by `cairn-worker` inside Slurm jobs.
pub const ML_PIPELINE: &str = r#"
[pipeline]
name = "ml-on-slurm"
seed = 7

[executors.cluster]
kind = "slurm"
cpus = 2
mem = "2G"

[executors.here]
kind = "local"

[stages.load]
kind = "load_subset"
source = "data/cifar"
format = "cifar10-binary"
train_per_class = 6
val_per_class = 2
executor = "cluster"

[stages.resize]
kind = "resize"
size = 8
splits = ["train", "val"]
inputs = { train = "load.train_images", val = "load.val_images" }
executor = "cluster"

[stages.train]
kind = "train"
model = { arch = "fast", widths = [8, 16], normalize = "cifar" }
lr = 0.1
epochs = 1
batch_size = 10
precision = "fp32"
inputs = { train_images = "resize.train", train_labels = "load.train_labels", val_images = "resize.val", val_labels = "load.val_labels" }
executor = "cluster"

[profiles.here]
"load.executor" = "here"
"resize.executor" = "here"
"train.executor" = "here"
"#;

/// A CIFAR-10 binary release in miniature: five training batches and a
/// test batch of 3,073-byte records (label, then 32x32x3 pixels).
pub fn write_cifar(p: &Project) {
    let dir = p.path().join("data/cifar");
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = 0x2545_f491_u32;
    let mut batch = |records: usize| -> Vec<u8> {
        let mut out = Vec::new();
        for r in 0..records {
            out.push((r % 10) as u8);
            out.extend((0..3072).map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            }));
        }
        out
    };
    for i in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), batch(20)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), batch(20)).unwrap();
}

/// [`ML_PIPELINE`] with `data = "remote"` on its cluster executor and the
/// remote cache `url`.
pub fn with_remote_data(pipeline: &str, url: &str) -> String {
    pipeline.replace("mem = \"2G\"", "mem = \"2G\"\ndata = \"remote\"").replace("[executors.cluster]", &format!("[remote]\nurl = \"{url}\"\n\n[executors.cluster]"))
}

/// A cluster for a test that runs ML stages, or `None` after a visible
/// skip when the worker cannot run here (or the cluster cannot start).
pub fn ml_cluster(test: &str) -> Option<Cluster> {
    let worker = std::path::Path::new(env!("CARGO_BIN_EXE_cairn")).with_file_name("cairn-worker");
    if !Command::new(&worker).arg("--probe").output().is_ok_and(|o| o.status.success()) {
        skip::missing(test, "cairn-worker is not built or libtorch is missing (`make setup`, then `cargo build --release --workspace`)");
        return None;
    }
    Cluster::start(test)
}

/// The epochs a `train` checkpoint holds, from its safetensors header
/// (`cairn.checkpoint` metadata); `None` for other bytes.
pub fn epochs_done(checkpoint: &[u8]) -> Option<u64> {
    let len = u64::from_le_bytes(checkpoint.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(checkpoint.get(8..8 + len)?).ok()?;
    let meta: serde_json::Value = serde_json::from_str(header["__metadata__"]["cairn.checkpoint"].as_str()?).ok()?;
    meta["epochs_done"].as_u64()
}

/// The files of `artifacts/train` in `p`, by name.
pub fn train_artifacts(p: &Project) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(p.path().join("artifacts/train")).unwrap().flatten().map(|e| (e.file_name(), std::fs::read(e.path()).unwrap())).collect();
    v.sort();
    v
}
