//! The `train` kind: trains or fine-tunes a network from `cairn_kinds::train`.
//! [`run`] reads as the steps it takes: load the data, build the net
//! ([`init_net`]), freeze, cache the prefix's features ([`sources`]), fit
//! ([`fit`]), keep the best epoch, write the outputs.
//!
//! Blocks outside `trainable` are frozen: their parameters get no gradient
//! and no optimizer state, and their BatchNorm layers stay in eval mode
//! (running statistics fixed) — the opposite is the classic transfer bug
//! that leaves a frozen backbone's BN re-estimating statistics on a new
//! input distribution. When every frozen block precedes the trainable tail
//! and augmentation is at most a flip, the frozen prefix is run once over
//! the data (and its mirror) and the tail trains on those cached features,
//! which are also written as the `features` output. On a CPU neither the
//! images nor the features are held whole: the images are read from their
//! file a batch at a time, and the features go to files in the scratch
//! directory, read a batch of rows at a time ([`features`]). The best
//! epoch by val accuracy is kept (early stopping with `patience` restores
//! it). A fast net trained from scratch starts with a whitening stem
//! ([`models::fast::whiten_stem`]), whose bias `stem_epochs` fixes after
//! the first epochs, as airbench does. Data order and augmentation come from a
//! seeded generator ([`batches`]), so equal seeds and thread counts give
//! bit-identical weights on the CPU. The model file stores the model spec
//! ([`crate::load::save_trained`]), which is how `evaluate` and `gradcam`
//! rebuild the net without restating it. When the job names a checkpoint
//! directory, each epoch but the last ends with a [`checkpoint`] there and
//! a later execution of the same key resumes after it, to the same bytes.

pub mod batches;
pub mod checkpoint;
mod features;
mod fit;
mod fused;
mod muon;
pub mod optim;
mod runner;

pub use runner::freeze;

#[cfg(test)]
mod checkpoint_tests;

use std::time::Instant;

use cairn_formats::table::{Column, Table};
use cairn_formats::tensor::TensorFile;
use cairn_kinds::train::{Arch, Init, TrainParams, Tta};
use tch::{nn, Kind, Tensor};

use crate::ctx::{StageError, StageResult, WorkerCtx};
use crate::load;
use crate::models::{self, Feed, Net};
use crate::precision::compute_kind;
use crate::{device, tensors, weights};
use fit::{EpochRow, Fit, Split, Trainer};
use features::{Features, Held};
use runner::{Runner, Source};

/// Images the net reads: a tensor, or rows left in their file and read a
/// batch at a time, so a stage that trains on cached features never holds
/// the images and the features at once.
enum Images {
    Loaded(Tensor),
    File(TensorFile),
}

impl Images {
    fn rows(&self) -> i64 {
        match self {
            Images::Loaded(t) => t.size()[0],
            Images::File(f) => f.rows() as i64,
        }
    }

    /// Rows `first..first + count` (a view of a loaded tensor).
    fn slice(&self, first: i64, count: i64) -> StageResult<Tensor> {
        match self {
            Images::Loaded(t) => Ok(t.narrow(0, first, count)),
            Images::File(f) => tensors::load_rows(f, first as usize, count as usize),
        }
    }

    /// All rows as one tensor (read whole from a file).
    fn whole(&self) -> StageResult<Tensor> {
        match self {
            Images::Loaded(t) => Ok(t.shallow_clone()),
            Images::File(f) => tensors::load_file(f),
        }
    }
}

/// The labelled train and val sets.
struct Data {
    xtr: Images,
    ytr: Tensor,
    xva: Tensor,
    yva: Tensor,
}

impl Data {
    /// With `stream`, the train images stay in their file ([`Images::File`]).
    fn load(ctx: &WorkerCtx, num_classes: i64, stream: bool) -> StageResult<Self> {
        let (file, ytr) = load::labelled_file(ctx, "train_images", "train_labels", num_classes)?;
        let xtr = Images::File(file);
        let xtr = if stream { xtr } else { Images::Loaded(xtr.whole()?) };
        let (xva, yva) = load::labelled(ctx, "val_images", "val_labels", num_classes)?;
        let n = xtr.rows();
        if n < 2 {
            return Err(StageError::new(format!("`train_images` has {n} images; training needs at least 2")));
        }
        Ok(Self { xtr, ytr, xva, yva })
    }

    /// The set on the compute device when it fits there for the whole
    /// stage ([`device::fits_in_free_memory`]), else where it is.
    fn onto(self, ctx: &WorkerCtx) -> Self {
        let Images::Loaded(xtr) = &self.xtr else {
            return self;
        };
        let all = [xtr, &self.ytr, &self.xva, &self.yva];
        let bytes = all.iter().map(|t| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64).sum();
        let (fits, why) = device::fits_in_free_memory(ctx.device, bytes);
        // On a GPU, where the data live decides the speed: say it.
        if !why.is_empty() {
            ctx.progress(why);
        }
        if !fits {
            return self;
        }
        // Free memory can shrink meanwhile (another process): then the
        // set stays where it is rather than the stage failing.
        match all.map(|t| t.f_to_device(ctx.device)) {
            [Ok(xtr), Ok(ytr), Ok(xva), Ok(yva)] => Self { xtr: Images::Loaded(xtr), ytr, xva, yva },
            moved => {
                let e = moved.into_iter().find_map(Result::err).map_or_else(String::new, |e| e.to_string().lines().next().unwrap_or("").to_string());
                ctx.progress(format!("training data stay in host memory: moving them to the GPU failed ({e})"));
                self
            }
        }
    }
}

pub fn run(ctx: &mut WorkerCtx, p: TrainParams) -> StageResult {
    if ctx.device.is_cuda() {
        crate::determinism::set(p.deterministic);
    }
    // Canonical params list the blocks already; this only reads them.
    let trainable = p.trainable_blocks()?;
    // On a CPU, training on cached features reads the images from their
    // file a batch at a time; on a GPU they go to its memory when they fit
    // (`onto`), where the prefix reads them fastest.
    let stream = p.caches_features() && !ctx.device.is_cuda();
    let data = Data::load(ctx, p.model.num_classes, stream)?.onto(ctx);
    let batch = (p.batch_size as i64).min(data.xtr.rows());
    let (vs, net) = init_net(ctx, &p, &data.xtr)?;
    let vars = runner::freeze(&vs, &net, &trainable);
    let feed = Feed { normalize: p.model.normalize, kind: compute_kind(p.precision, ctx), device: ctx.device };
    let r = Runner::new(&net, feed, &trainable, p.freeze_bn);
    let (train, val) = sources(ctx, &p, &r, &data, batch)?;
    let trainer = Trainer {
        ctx,
        p: &p,
        vs: &vs,
        runner: &r,
        train: Split { source: &train, labels: &data.ytr },
        val: Split { source: &val, labels: &data.yva },
        batch,
        stem: p.stem_epochs.map_or_else(Vec::new, |_| runner::trainable_in(&vs, &net, "stem")),
    };
    let fit = trainer.fit(vars)?;
    fit.restore_kept(&vs)?;
    load::save_trained(ctx.output("model")?, &vs, &p.model)?;
    write_tables(ctx, &fit)?;
    report_metrics(ctx, &fit);
    Ok(())
}

/// Builds the net and sets its initial weights: from the `init` input, or
/// for a fast net from scratch, airbench's whitening stem.
fn init_net(ctx: &WorkerCtx, p: &TrainParams, xtr: &Images) -> StageResult<(nn::VarStore, Net)> {
    let vs = nn::VarStore::new(ctx.device);
    let net = models::build(&vs.root(), &p.model);
    if ctx.has_input("init") {
        let reinit = p.reinit_head.unwrap_or(false);
        let src = load::init_weights(ctx, &p.model, reinit)?;
        let copied = weights::load_into(&vs, &src, |v| reinit && net.owner(v).is_some_and(|b| b.name == "head"))?;
        ctx.log(format!("initialised {copied} tensors from {}", ctx.input("init")?.display()));
    } else if !matches!(p.init, Init::Scratch(_)) {
        return Err(StageError::new("`init` names weights but the `init` input is not connected"));
    } else if p.model.arch == Arch::Fast {
        // From the first (up to) 5000 images, so the result depends on the
        // data only, not on the seed.
        let sample = xtr.slice(0, xtr.rows().min(5000))?;
        let fp32 = Feed { normalize: p.model.normalize, kind: Kind::Float, device: ctx.device };
        models::fast::whiten_stem(&vs, &fp32.input(&sample))?;
    }
    Ok((vs, net))
}

/// What the tail trains and validates on: the raw images, or (when a frozen
/// prefix may be cached) its features, also written as the `features`
/// output. On a CPU the training set's features go into files in the
/// scratch directory where its disk has room ([`features`]); on a GPU, and
/// for the val set, they stay on the device.
fn sources(ctx: &WorkerCtx, p: &TrainParams, r: &Runner, data: &Data, batch: i64) -> StageResult<(Source, Source)> {
    if !(p.caches_features() && r.first > 0) {
        return Ok((Source::Images(data.xtr.whole()?), Source::Images(data.xva.shallow_clone())));
    }
    let t0 = Instant::now();
    let block = r.prefix_end().unwrap_or("input");
    let (flip, vflip) = (p.augment.flip.any(), p.tta != Tta::None);
    let (ntr, nva) = (data.xtr.rows(), data.xva.size()[0]);
    let total = (ntr * (1 + flip as i64) + nva * (1 + vflip as i64)) as u64;
    // One pass over every image (and mirror) can take minutes: say where it
    // is, and that the training comes after (the ETA is this pass's).
    let then = match p.epochs {
        1 => "then 1 epoch".to_string(),
        n => format!("then {n} epochs"),
    };
    let mut done = 0u64;
    let mut report = |n: i64| {
        done = done.saturating_add_signed(n);
        if ctx.progress_due() {
            let rate = done as f64 / t0.elapsed().as_secs_f64();
            ctx.progress_at(format!("caching `{block}` features at {rate:.0} img/s, {then}"), done, total, true);
        }
    };
    let xva = Images::Loaded(data.xva.shallow_clone());
    let train = train_features(ctx, r, &data.xtr, flip, batch, &mut report)?;
    let vplain = r.features(&xva, false, batch, None, &mut report, &mut |_| {})?;
    let vflip = vflip.then(|| r.features(&xva, true, batch, None, &mut report, &mut |_| {})).transpose()?;
    train.save_plain_as(ctx.output("features")?, Kind::Half)?;
    ctx.log(format!("cached `{block}` features {:?} in {:.1}s", train.size(), t0.elapsed().as_secs_f64()));
    Ok((Source::Features(Box::new(train)), Source::Features(Box::new(Features::new(vplain, vflip)?))))
}

/// The training set's features and, when training flips, its mirror's: on
/// a CPU in files in the scratch directory where its disk holds them twice
/// over, else (and from the first file whose writing failed on) in memory;
/// the run says which and why.
fn train_features(ctx: &WorkerCtx, r: &Runner, xtr: &Images, flip: bool, batch: i64, report: &mut impl FnMut(i64)) -> StageResult<Features> {
    let on_disk = !ctx.device.is_cuda() && {
        let need = features::file_bytes(&r.prefix(&xtr.slice(0, 0)?), xtr.rows() * (1 + flip as i64));
        let room = features::disk_holds(ctx.scratch(), need);
        if let Err(why) = &room {
            ctx.progress(format!("{why}: the features stay in memory"));
        }
        room.is_ok()
    };
    let file = |on: bool, name: &str| on.then(|| ctx.scratch().join(name));
    let mut fell_back = |why: String| ctx.progress(format!("writing the features' file failed ({why}): they stay in memory"));
    let plain = r.features(xtr, false, batch, file(on_disk, "features.arrow"), report, &mut fell_back)?;
    let on_disk = on_disk && matches!(plain, Held::File(_));
    let flipped = flip.then(|| r.features(xtr, true, batch, file(on_disk, "mirrored-features.arrow"), report, &mut fell_back)).transpose()?;
    Features::new(plain, flipped)
}

fn write_tables(ctx: &WorkerCtx, fit: &Fit) -> StageResult {
    let rows = &fit.rows;
    let col = |f: fn(&EpochRow) -> f64| Column::F64(rows.iter().map(f).collect());
    let history = Table::new()
        .with("epoch", Column::I64((1..=rows.len() as i64).collect()))
        .with("train_loss", col(|r| r.train_loss))
        .with("train_acc", col(|r| r.train_acc))
        .with("val_loss", col(|r| r.val_loss))
        .with("val_acc", col(|r| r.val_acc))
        .with("lr", col(|r| r.lr));
    history.write(ctx.output("history")?).map_err(|e| StageError::new(e.to_string()))?;
    let summary = Table::new()
        .with("best_epoch", Column::I64(vec![fit.best_epoch as i64 + 1]))
        .with("best_val_acc", Column::F64(vec![fit.best_acc]))
        .with("kept_epoch", Column::I64(vec![fit.kept_epoch as i64 + 1]))
        .with("epochs_run", Column::I64(vec![rows.len() as i64]));
    summary.write(ctx.output("summary")?).map_err(|e| StageError::new(e.to_string()))
}

/// Wall-clock figures are metrics (run records), never outputs: outputs
/// are a function of the key, so a re-run makes the same bytes.
fn report_metrics(ctx: &WorkerCtx, fit: &Fit) {
    ctx.metric("best_val_acc", fit.best_acc);
    ctx.metric("best_epoch", fit.best_epoch as f64 + 1.0);
    ctx.metric("kept_epoch", fit.kept_epoch as f64 + 1.0);
    ctx.metric("train_seconds", fit.seconds);
    let n = fit.rows.len().max(1) as f64;
    ctx.metric("epoch_seconds", fit.rows.iter().map(|r| r.seconds).sum::<f64>() / n);
    ctx.metric("images_per_sec", fit.rows.iter().map(|r| r.images_per_sec).sum::<f64>() / n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_kind::protocol::Job;
    use cairn_kinds::Kind as _;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use crate::{skip, tmpfs};

    /// Runs one `train` job on a tiny synthetic set in `dir`, starting from
    /// `init` if given; returns the model path.
    fn train_from(dir: &Path, raw: serde_json::Value, init: Option<&Path>) -> StageResult<PathBuf> {
        train_job(dir, raw, init, None)
    }

    /// [`train_from`], checkpointing in (and resuming from) `checkpoints`.
    pub(super) fn train_job(dir: &Path, raw: serde_json::Value, init: Option<&Path>, checkpoints: Option<&Path>) -> StageResult<PathBuf> {
        train_job_in(dir, dir, raw, init, checkpoints)
    }

    /// [`train_job`] with its scratch directory at `scratch`.
    fn train_job_in(dir: &Path, scratch: &Path, raw: serde_json::Value, init: Option<&Path>, checkpoints: Option<&Path>) -> StageResult<PathBuf> {
        std::fs::create_dir_all(dir).unwrap();
        // Not libtorch's generator: tests running in parallel share it.
        let mut rng = batches::Rng::new(42);
        let pixels: Vec<u8> = (0..48 * 3 * 8 * 8).map(|_| rng.below(256) as u8).collect();
        let x = Tensor::from_slice(&pixels).view([48, 3, 8, 8]);
        let y = Tensor::from_slice(&(0..48).map(|_| rng.below(3) as i64).collect::<Vec<_>>());
        let plan = cairn_kinds::train::Train.check(&raw).map_err(|e| StageError::new(e.message))?;
        let mut job = Job::new(cairn_kinds::train::Train.info(), "t", plan.params, scratch).with_seed(7);
        for (slot, t) in [("train_images", &x), ("train_labels", &y), ("val_images", &x), ("val_labels", &y)] {
            let p = dir.join(format!("{slot}.arrow"));
            tensors::save(&p, t).unwrap();
            job = job.with_input(slot, [p]);
        }
        if let Some(init) = init {
            job = job.with_input("init", [init]);
        }
        for o in &plan.outputs {
            job = job.with_output(&o.name, dir.join(&o.name));
        }
        if let Some(c) = checkpoints {
            std::fs::create_dir_all(c).unwrap();
            job = job.with_checkpoint_dir(c);
        }
        crate::run(&mut WorkerCtx::new(job))?;
        Ok(dir.join("model"))
    }

    fn train_once(dir: &Path, raw: serde_json::Value) -> StageResult<PathBuf> {
        train_from(dir, raw, None)
    }

    pub(super) fn params(lr: f64) -> serde_json::Value {
        serde_json::json!({"model": {"arch": "fast", "num_classes": 3, "widths": [4, 8], "normalize": "cifar"},
            "lr": lr, "epochs": 2, "batch_size": 16, "augment": {"flip": true, "translate": 1}})
    }

    /// `(best_epoch, kept_epoch, epochs_run)` from a run's summary.
    fn summary(dir: &Path) -> (i64, i64, i64) {
        let t = Table::read(&dir.join("summary")).unwrap();
        let int = |c: &str| match t.column(c) {
            Some(Column::I64(v)) => v[0],
            other => panic!("{c}: {other:?}"),
        };
        (int("best_epoch"), int("kept_epoch"), int("epochs_run"))
    }

    #[test]
    fn keep_last_holds_the_last_epoch_and_best_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = params(0.05);
        raw["epochs"] = 4.into();
        let best = train_once(&dir.path().join("best"), raw.clone()).unwrap();
        raw["keep"] = "last".into();
        let last = train_once(&dir.path().join("last"), raw).unwrap();
        let (b, kept_b, n) = summary(&dir.path().join("best"));
        let (b2, kept_l, n2) = summary(&dir.path().join("last"));
        assert_eq!((b, kept_b, n), (b2, b, n2), "the same training; best keeps its best epoch");
        assert_eq!(kept_l, n, "last keeps the last");
        assert!(b < n, "this tiny set peaks early (best {b} of {n}), so keeping the last must change the model");
        let same = std::fs::read(&best).unwrap() == std::fs::read(&last).unwrap();
        assert_eq!(same, b == n, "the models differ exactly when the best epoch is not the last (best {b} of {n})");
    }

    /// Fine-tunes `group2+head` of the model at `first` (trained in
    /// `dir/a`) in `dir/name`, with `set` applied to the params; returns
    /// the weights.
    fn tune_group2(dir: &Path, first: &Path, name: &str, set: impl FnOnce(&mut serde_json::Value)) -> BTreeMap<String, Tensor> {
        let mut raw = params(0.05);
        raw["init"] = serde_json::json!({"stage": "a.model"});
        raw["trainable"] = serde_json::json!("group2+head");
        set(&mut raw);
        crate::weights::read_safetensors(&train_from(&dir.join(name), raw, Some(first)).unwrap()).unwrap().tensors
    }

    #[test]
    fn freeze_bn_trains_a_block_but_keeps_its_running_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let first = train_once(&dir.path().join("a"), params(0.1)).unwrap();
        let tune = |name: &str, freeze: bool| tune_group2(dir.path(), &first, name, |raw| raw["freeze_bn"] = freeze.into());
        let before = crate::weights::read_safetensors(&first).unwrap().tensors;
        let (frozen, free) = (tune("frozen", true), tune("free", false));
        let same = |a: &BTreeMap<String, Tensor>, k: &str| a[k].equal(&before[k]);
        for stat in ["group2.bn1.running_mean", "group2.bn1.running_var"] {
            assert!(same(&frozen, stat), "{stat} moved under freeze_bn");
            assert!(!same(&free, stat), "{stat} did not move in training mode");
        }
        assert!(!same(&frozen, "group2.conv1.weight") && !same(&frozen, "group2.bn1.bias"), "the block still trains");
    }

    #[test]
    fn a_frozen_prefix_is_cached_from_the_image_file_and_trained_on() {
        let dir = tempfile::tempdir().unwrap();
        let first = train_once(&dir.path().join("a"), params(0.1)).unwrap();
        let tune = |name: &str, cache: bool| {
            tune_group2(dir.path(), &first, name, |raw| {
                raw["augment"] = serde_json::json!({"flip": true, "translate": 0});
                raw["cache_features"] = cache.into();
            })
        };
        let (cached, direct) = (tune("cached", true), tune("direct", false));
        let features = tensors::load(&dir.path().join("cached").join("features")).unwrap();
        assert_eq!((features.size()[0], features.kind()), (48, Kind::Half), "one f16 row per training image");
        assert!(!dir.path().join("direct").join("features").exists(), "nothing cached without cache_features");
        let before = crate::weights::read_safetensors(&first).unwrap().tensors;
        let w = "group2.conv1.weight";
        assert!(!cached[w].equal(&before[w]), "the tail trains on the cached features");
        let gap = (&cached[w] - &direct[w]).abs().max().double_value(&[]);
        assert!(gap < 1e-3, "cached features train the tail as the images do (max weight gap {gap})");
    }

    /// A scratch disk without room for the features twice over (a 4 KiB
    /// tmpfs): they stay in memory, and the tail trains to the same bytes
    /// as from their file on a disk with room.
    #[test]
    fn features_stay_in_memory_where_the_scratch_disk_is_short() {
        let dir = tempfile::tempdir().unwrap();
        let Some(small) = tmpfs::Tmpfs::mount(&dir.path().join("small"), "4k") else {
            skip::unavailable("features_stay_in_memory_where_the_scratch_disk_is_short", "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
            return;
        };
        let first = train_once(&dir.path().join("a"), params(0.1)).unwrap();
        let tune = |name: &str, scratch: &Path| {
            let mut raw = params(0.05);
            raw["init"] = serde_json::json!({"stage": "a.model"});
            raw["trainable"] = serde_json::json!("group2+head");
            raw["augment"] = serde_json::json!({"flip": true, "translate": 0});
            std::fs::read(train_job_in(&dir.path().join(name), scratch, raw, Some(&first), None).unwrap()).unwrap()
        };
        let roomy = dir.path().join("roomy-scratch");
        std::fs::create_dir_all(&roomy).unwrap();
        let (from_file, from_memory) = (tune("roomy", &roomy), tune("short", &small.0));
        assert!(roomy.join("features.arrow").exists() && roomy.join("mirrored-features.arrow").exists(), "a disk with room holds the features");
        assert_eq!(std::fs::read_dir(&small.0).unwrap().count(), 0, "nothing written on the short disk");
        assert!(from_file == from_memory, "the same model whether the features lived in a file or in memory");
    }

    #[test]
    fn diverging_loss_names_epoch_step_and_lr() {
        let base = tempfile::tempdir().unwrap();
        let e = train_once(base.path(), params(1e30)).unwrap_err().0;
        assert!(e.contains("epoch") && e.contains("step") && e.contains("lr"), "{e}");
    }

    #[test]
    fn a_stated_model_must_be_the_one_its_init_model_was_trained_as() {
        let dir = tempfile::tempdir().unwrap();
        let first = train_once(&dir.path().join("a"), params(0.1)).unwrap();
        let from_first = |raw: &mut serde_json::Value| raw["init"] = serde_json::json!({"stage": "a.model"});
        let mut same = params(0.1);
        from_first(&mut same);
        train_from(&dir.path().join("b"), same, Some(&first)).unwrap();
        // Same shapes, another normalisation: only the stored spec tells.
        let mut other = params(0.1);
        from_first(&mut other);
        other["model"]["normalize"] = serde_json::json!("none");
        let e = train_from(&dir.path().join("c"), other, Some(&first)).unwrap_err().0;
        assert!(e.contains("init model file") && e.contains("\"none\"") && e.contains("\"cifar\""), "{e}");
        // A new head may have another class count.
        let mut new_head = params(0.1);
        from_first(&mut new_head);
        new_head["model"]["num_classes"] = serde_json::json!(5);
        new_head["reinit_head"] = serde_json::json!(true);
        train_from(&dir.path().join("d"), new_head, Some(&first)).unwrap();
    }
}
