//! The product's main path through the real `cairn` binary: a pipeline with
//! the flagship's shape (load → resize → pretrain → frozen → finetune →
//! evaluate → gradcam → report) on an image-folder `.tar.gz` of a few
//! hundred JPEGs written here, sized to run in well under two minutes on a
//! 2-core CPU. It checks what a user relies on: every stage runs once; a
//! second run executes nothing; a `finetune.lr` change re-runs exactly
//! finetune and what follows; `cairn verify` finds every output
//! bit-identical (timings are metrics, not outputs), so a forced re-run of
//! finetune stops there (early cutoff though its timings changed); the
//! report's files parse; a damaged upstream object is detected and
//! recomputed; a fine-tune that diverges fails with what to change and
//! loses nothing cached. As in the flagship, only the training stages state the
//! model: `evaluate` and `gradcam` read it from the model file.
//!
//! It drives `cairn` and `cairn-worker` from the build directory. `make
//! test` (`cargo test --release --workspace`) builds both; running this
//! file alone (`--test ml_pipeline`) rebuilds only `cairn-worker`, so run
//! `cargo build --release --workspace` first. `CAIRN_BIN` overrides where
//! `cairn` is.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

const STAGES: [&str; 8] = ["load", "resize", "pretrain", "frozen", "finetune", "evaluate", "gradcam", "report"];
const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
/// Images per class in the archive's `train/` and `test/` folders.
const TRAIN_PER_CLASS: usize = 36;
const TEST_PER_CLASS: usize = 8;
const SIDE: usize = 32;

/// The flagship's shape at toy size: a two-group `fast` net at 16 px, one
/// or two epochs of small batches, fp32 (so no CPU needs bf16 support).
const PIPELINE: &str = r#"
[pipeline]
name = "ml-smoke"
seed = 7

[stages.load]
kind = "load_subset"
source = "data/shapes-jpg.tar.gz"
format = "image-folder"
train_per_class = 12
val_per_class = 4
test = "all"
pool = true

[stages.resize]
kind = "resize"
size = 16
splits = ["train", "val", "test", "pool"]
inputs = { train = "load.train_images", val = "load.val_images", test = "load.test_images", pool = "load.pool_images" }

[stages.pretrain]
kind = "train"
model = { arch = "fast", widths = [16, 32], normalize = "cifar" }
lr = 0.2
momentum = 0.85
weight_decay = 5e-4
bias_lr_scale = 16.0
epochs = 2
batch_size = 20
precision = "fp32"
augment = { flip = true }
inputs = { train_images = "resize.pool", train_labels = "load.pool_labels", val_images = "resize.val", val_labels = "load.val_labels" }

[stages.frozen]
kind = "train"
model = { arch = "fast", widths = [16, 32], normalize = "cifar" }
init = { stage = "pretrain.model" }
trainable = "head"
optimizer = "sgd"
lr = 0.05
schedule = "cosine"
epochs = 1
batch_size = 20
precision = "fp32"
augment = { flip = true }
inputs = { train_images = "resize.train", train_labels = "load.train_labels", val_images = "resize.val", val_labels = "load.val_labels" }

[stages.finetune]
kind = "train"
model = { arch = "fast", widths = [16, 32], normalize = "cifar" }
init = { stage = "frozen.model" }
trainable = "all"
optimizer = "sgd"
lr = 0.002
schedule = "cosine"
epochs = 2
patience = 2
batch_size = 20
precision = "fp32"
augment = { flip = true, translate = 1 }
inputs = { train_images = "resize.train", train_labels = "load.train_labels", val_images = "resize.val", val_labels = "load.val_labels" }

[stages.evaluate]
kind = "evaluate"
tta = "flip"
precision = "fp32"
inputs = { model = "finetune.model", images = "resize.test", labels = "load.test_labels" }

[stages.gradcam]
kind = "gradcam"
per_class = 1
worst = 4
tile = 32
inputs = { model = "finetune.model", images = "resize.test", labels = "load.test_labels", predictions = "evaluate.predictions", classes = "load.classes" }

[stages.report]
kind = "report"
title = "ML smoke test"
phases = ["pretrain", "frozen", "finetune"]
inputs = { predictions = "evaluate.predictions", classes = "load.classes", histories = ["pretrain.history", "frozen.history", "finetune.history"], gradcam = ["gradcam.worst"] }
"#;

/// Pixel `(y, x)` of an image of class `c`: each class has its own colour
/// and stripe direction, under per-image noise, brightness and offset, so
/// a tiny net learns it in a few steps but not trivially.
fn image(class: usize, rng: &mut Rng) -> Vec<u8> {
    let hue = class as f64 / CLASSES.len() as f64 * std::f64::consts::TAU;
    let base = [0.0, 2.1, 4.2].map(|ph| 128.0 + 90.0 * (hue + ph).cos());
    let gain = 0.75 + 0.5 * rng.unit();
    let shift = rng.below(8) as usize;
    let mut px = Vec::with_capacity(SIDE * SIDE * 3);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let t = match class % 4 {
                0 => x + shift,
                1 => y + shift,
                2 => x + y + shift,
                _ => x + SIDE - y + shift,
            };
            let stripe = if (t / 4) % 2 == 0 { 30.0 } else { -30.0 };
            for b in base {
                let v = b * gain + stripe + (rng.unit() - 0.5) * 60.0;
                px.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    px
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn jpeg(px: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90).encode(px, SIDE as u16, SIDE as u16, jpeg_encoder::ColorType::Rgb).unwrap();
    out
}

/// `shapes-jpg/{train,test}/<class>/NNNN.jpg` as a gzipped tar.
fn write_archive(path: &Path) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (split, n) in [("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)] {
        for (c, class) in CLASSES.iter().enumerate() {
            for k in 0..n {
                let bytes = jpeg(&image(c, &mut rng));
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                tar.append_data(&mut header, format!("shapes-jpg/{split}/{class}/{k:04}.jpg"), bytes.as_slice()).unwrap();
            }
        }
    }
    tar.into_inner().unwrap().finish().unwrap();
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Run {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    /// The status word `cairn run` printed for `stage` ("ran", "cached", …).
    fn outcome(&self, stage: &str) -> Option<&str> {
        self.stderr.lines().find_map(|l| {
            let mut parts = l.split_whitespace();
            let word = parts.next()?;
            (parts.next()? == stage && matches!(word, "ran" | "cached" | "FAILED" | "skipped" | "interrupted")).then_some(word)
        })
    }
    fn ran(&self) -> Vec<&'static str> {
        STAGES.iter().copied().filter(|s| self.outcome(s) == Some("ran")).collect()
    }
    fn cached(&self) -> Vec<&'static str> {
        STAGES.iter().copied().filter(|s| self.outcome(s) == Some("cached")).collect()
    }
}

struct Project {
    dir: tempfile::TempDir,
    cairn: PathBuf,
}

impl Project {
    fn cairn(&self, args: &[&str]) -> Run {
        let t0 = Instant::now();
        let out = Command::new(&self.cairn)
            .current_dir(self.dir.path())
            .args(args)
            .env_remove("CAIRN_CACHE_DIR")
            .env_remove("CAIRN_WORKER")
            .env("CUDA_VISIBLE_DEVICES", "")
            .output()
            .expect("cairn starts");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            secs: t0.elapsed().as_secs_f64(),
        };
        eprintln!("cairn {} ({:.1}s, exit {})", args.join(" "), run.secs, run.code);
        run
    }
    fn artifact(&self, stage: &str, file: &str) -> PathBuf {
        self.dir.path().join("artifacts").join(stage).join(file)
    }
}

fn is_png(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    let Ok(mut reader) = png::Decoder::new(std::io::BufReader::new(file)).read_info() else { return false };
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    reader.next_frame(&mut buf).is_ok_and(|info| info.width > 0 && info.height > 0)
}

#[test]
fn flagship_shape_runs_caches_reruns_verifies_and_repairs_through_cairn() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), PIPELINE).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    write_archive(&dir.path().join("data/shapes-jpg.tar.gz"));
    let p = Project { dir, cairn: common::cairn_bin() };

    // 1. Everything runs, once.
    let first = p.cairn(&["run"]);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_eq!(first.ran(), STAGES, "every stage runs from an empty cache:\n{}", first.all());

    // The report's files exist and parse.
    let metrics: Value = serde_json::from_slice(&std::fs::read(p.artifact("report", "metrics.json")).unwrap()).expect("metrics.json is JSON");
    let accuracy = metrics["accuracy"].as_f64().unwrap_or_else(|| panic!("no accuracy in metrics.json: {metrics}"));
    assert_eq!(metrics["examples"], TEST_PER_CLASS * CLASSES.len(), "{metrics}");
    assert!(accuracy > 0.2, "test accuracy {accuracy} is not clearly above chance (0.1): {metrics}");
    let html = std::fs::read_to_string(p.artifact("report", "index.html")).unwrap();
    assert!(html.contains("<html") && html.contains("ML smoke test"), "index.html is not the report");
    assert!(std::fs::read_to_string(p.artifact("report", "report.md")).unwrap().contains("ML smoke test"));
    for (stage, png) in [("report", "confusion.png"), ("report", "curves.png"), ("gradcam", "grid.png"), ("gradcam", "worst.png")] {
        assert!(is_png(&p.artifact(stage, png)), "{stage}/{png} is not a valid PNG");
    }

    // 2. A second run executes nothing.
    let again = p.cairn(&["run"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(again.cached(), STAGES, "a second run must be all cache hits:\n{}", again.all());
    // Nothing the run made is garbage, the report's params document included.
    let gc = p.cairn(&["gc", "--dry-run", "--keep-runs", "0"]);
    assert!(gc.stdout.contains("would delete 0 object(s)"), "{}", gc.all());

    // The same data under another name is the same input: `load`'s key
    // holds the archive's content, not its path. Only the report, which
    // prints every stage's params (the new path among them), is redone.
    std::fs::rename(p.dir.path().join("data/shapes-jpg.tar.gz"), p.dir.path().join("moved.tar.gz")).unwrap();
    let moved = p.cairn(&["run", "--set", "load.source=moved.tar.gz"]);
    assert_eq!(moved.code, 0, "{}", moved.all());
    assert_eq!(moved.ran(), ["report"], "moving the data re-runs nothing upstream:\n{}", moved.all());
    std::fs::rename(p.dir.path().join("moved.tar.gz"), p.dir.path().join("data/shapes-jpg.tar.gz")).unwrap();

    // 3. A fine-tune learning-rate change re-runs finetune and what follows.
    let lr = p.cairn(&["run", "--set", "finetune.lr=0.004"]);
    assert_eq!(lr.code, 0, "{}", lr.all());
    assert_eq!(lr.ran(), ["finetune", "evaluate", "gradcam", "report"], "{}", lr.all());
    assert_eq!(lr.cached(), ["load", "resize", "pretrain", "frozen"], "{}", lr.all());

    // 4. Re-executing every stage reproduces every output bit for bit
    // (there is no exception: wall-clock figures are metrics).
    let verify = p.cairn(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    for stage in STAGES {
        assert!(
            verify.stdout.lines().any(|l| l.starts_with("identical") && l.split_whitespace().nth(1) == Some(stage)),
            "`{stage}` is not reported identical:\n{}",
            verify.all()
        );
    }
    assert!(!verify.all().contains("DIFFERS"), "{}", verify.all());

    // Re-running finetune makes the same bytes (only its timing metrics
    // change), so nothing after it re-runs.
    let forced = p.cairn(&["run", "--force", "finetune"]);
    assert_eq!(forced.code, 0, "{}", forced.all());
    assert_eq!(forced.ran(), ["finetune"], "early cutoff after a re-run with equal outputs:\n{}", forced.all());

    // 5. A damaged upstream object is detected and recomputed: flip a byte
    // in the middle of resize's `train` tensor (an artifact is a hard link
    // to the stored object; root may write it despite its mode).
    let object = p.artifact("resize", "train.arrow");
    let good = std::fs::read(&object).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xFF;
    let mut perms = std::fs::metadata(&object).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&object, perms).unwrap();
    std::fs::write(&object, &bad).unwrap();
    let status = p.cairn(&["status"]);
    assert!(status.all().contains("damaged"), "status does not see the damage:\n{}", status.all());
    let repair = p.cairn(&["run"]);
    assert_eq!(repair.code, 0, "{}", repair.all());
    assert_eq!(repair.outcome("resize"), Some("ran"), "the damaged output's producer re-runs:\n{}", repair.all());
    assert!(!repair.ran().iter().any(|s| ["load", "pretrain", "frozen", "finetune", "evaluate", "gradcam", "report"].contains(s)), "{}", repair.all());
    assert_eq!(std::fs::read(&object).unwrap(), good, "the object holds its true bytes again");
    let check = p.cairn(&["cache", "verify"]);
    assert_eq!(check.code, 0, "{}", check.all());

    // 6. A fine-tune that diverges fails with what to change, and nothing
    // cached is lost. In one step (a batch of all 120 images, one epoch)
    // the blow-up shows first in the val loss; in six, in the training loss.
    let diverged = p.cairn(&["run", "--set", "finetune.lr=1e30", "--set", "finetune.batch_size=120", "--set", "finetune.epochs=1"]);
    assert_eq!(diverged.code, 1, "{}", diverged.all());
    assert_eq!(diverged.outcome("finetune"), Some("FAILED"), "{}", diverged.all());
    assert!(diverged.all().contains("epoch 1: the val loss became NaN"), "{}", diverged.all());
    assert!(diverged.all().contains("lower `lr` or add warm-up"), "{}", diverged.all());
    assert_eq!(diverged.all().matches("the val loss became NaN").count(), 1, "the worker's error is shown once:\n{}", diverged.all());
    assert_eq!(diverged.outcome("evaluate"), Some("skipped"), "{}", diverged.all());
    let later = p.cairn(&["run", "--set", "finetune.lr=1e30"]);
    assert_eq!(later.code, 1, "{}", later.all());
    assert!(later.all().contains("epoch 1, step ") && later.all().contains(": loss became"), "{}", later.all());
    assert!(!later.all().contains("panicked") && !diverged.all().contains("panicked"), "{}{}", diverged.all(), later.all());
    let kept = p.cairn(&["run"]);
    assert_eq!(kept.code, 0, "{}", kept.all());
    assert_eq!(kept.cached(), STAGES, "the failed runs lost nothing cached:\n{}", kept.all());

    eprintln!("ml pipeline test: accuracy {accuracy:.3}, {:.1}s in all", started.elapsed().as_secs_f64());
}
