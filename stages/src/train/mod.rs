//! The `train` kind: trains or fine-tunes a network from `cairn_kinds::train`.
//!
//! Blocks outside `trainable` are frozen: their parameters get no gradient
//! and no optimizer state, and their BatchNorm layers stay in eval mode
//! (running statistics fixed) — the opposite is the classic transfer bug
//! that leaves a frozen backbone's BN re-estimating statistics on a new
//! input distribution. When every frozen block precedes the trainable tail
//! and augmentation is at most a flip, the frozen prefix is run once over
//! the data (and its mirror) and the tail trains on those cached features,
//! which are also written as the `features` output. The best epoch by val
//! accuracy is kept (early stopping with `patience` restores it). A fast
//! net trained from scratch starts with a whitening stem
//! ([`models::fast::whiten_stem`]). Data order and augmentation come from a
//! seeded generator ([`batches`]), so equal seeds and thread counts give
//! bit-identical weights on the CPU.

pub mod batches;
mod fused;
pub mod optim;

use std::collections::BTreeMap;
use std::time::Instant;

use cairn_formats::table::{Column, Table};
use cairn_kinds::train::{Arch, Init, Precision, TrainParams, Trainable, Tta};
use tch::{nn, Device, Kind, Tensor};

use crate::ctx::{StageError, StageResult, WorkerCtx};
use crate::models::{self, Feed, Net};
use crate::{tensors, weights};
use batches::Rng;

/// Metadata key under which the model spec is stored in the safetensors.
pub const MODEL_META: &str = "cairn.model";

/// Rebuilds a trained net from its safetensors file, refusing weights that
/// were trained as another model (a different normalisation silently ruins
/// accuracy, which is how the seed sprint got 10%).
pub fn load_trained(path: &std::path::Path, spec: &cairn_kinds::train::ModelSpec, device: tch::Device) -> StageResult<(tch::nn::VarStore, models::Net)> {
    let file = weights::read_safetensors(path)?;
    if let Some(saved) = file.metadata.get(MODEL_META) {
        let saved: cairn_kinds::train::ModelSpec = serde_json::from_str(saved).map_err(|e| StageError::new(format!("model file metadata: {e}")))?;
        if &saved != spec {
            return Err(StageError::new(format!(
                "the model was trained as {} but this stage's `model` says {}; copy the training stage's model section",
                serde_json::to_string(&saved).unwrap_or_default(),
                serde_json::to_string(spec).unwrap_or_default()
            )));
        }
    }
    let vs = tch::nn::VarStore::new(device);
    let net = models::build(&vs.root(), spec);
    weights::load_into(&vs, &file.tensors, |_| false)?;
    Ok((vs, net))
}

/// Loads an image/label pair and checks they fit a `num_classes` model.
pub fn load_labelled(ctx: &WorkerCtx, images: &str, labels: &str, num_classes: i64) -> StageResult<(Tensor, Tensor)> {
    let x = tensors::load(ctx.input(images)?)?;
    let y = tensors::load(ctx.input(labels)?)?;
    let s = x.size();
    if x.kind() != Kind::Uint8 || s.len() != 4 || s[1] != 3 {
        return Err(StageError::new(format!("`{images}` must be u8 images [N, 3, H, W], got {:?} {s:?}", x.kind())));
    }
    if y.kind() != Kind::Int64 || y.size() != [s[0]] {
        return Err(StageError::new(format!("`{labels}` must be i64 [{}] to match `{images}`, got {:?} {:?}", s[0], y.kind(), y.size())));
    }
    if s[0] > 0 && (y.min().int64_value(&[]) < 0 || y.max().int64_value(&[]) >= num_classes) {
        return Err(StageError::new(format!("`{labels}` holds labels outside 0..{num_classes} (model.num_classes)")));
    }
    Ok((x, y))
}

/// The compute dtype `precision` asks for on `device`.
pub fn compute_kind(precision: Precision, device: Device) -> Kind {
    match (precision, device) {
        (Precision::Bf16, _) | (Precision::Auto, Device::Cuda(_)) => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// Freezes every variable outside `trainable` blocks; returns the trainable ones.
fn freeze(vs: &nn::VarStore, net: &Net, trainable: &[String]) -> Vec<Tensor> {
    let mut vars: Vec<(String, Tensor)> = vs.trainable_variables_named();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (name, mut v) in vars {
        let on = net.owner(&name).is_some_and(|b| trainable.contains(&b.name));
        let _ = v.requires_grad_(on);
        if on {
            out.push(v);
        }
    }
    out
}

trait NamedVars {
    fn trainable_variables_named(&self) -> Vec<(String, Tensor)>;
}

impl NamedVars for nn::VarStore {
    /// Variables that take gradients (i.e. not BN running statistics).
    fn trainable_variables_named(&self) -> Vec<(String, Tensor)> {
        self.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }
}

/// What the trainable tail is fed: raw images, or the cached output of the
/// frozen prefix (and of its mirrored input, when flipping).
enum Source {
    Images(Tensor),
    Features { plain: Tensor, flipped: Option<Tensor> },
}

/// The part of training that is the same for train and val batches.
struct Runner<'a> {
    net: &'a Net,
    feed: Feed,
    /// Index of the first trainable block: blocks before it form the prefix.
    first: usize,
    trains: Vec<bool>,
}

impl Runner<'_> {
    /// Output of the frozen prefix for u8 images (eval mode, no grad).
    fn prefix(&self, images: &Tensor) -> Tensor {
        self.lift(&self.feed.input(images))
    }

    /// Output of the frozen prefix for a normalised input (itself when
    /// nothing is frozen).
    fn lift(&self, x: &Tensor) -> Tensor {
        if self.first == 0 {
            return x.shallow_clone();
        }
        tch::no_grad(|| self.net.forward_range(x, 0..self.first, |_| false))
    }

    /// Runs the prefix over all images in batches, keeping the result on the device.
    fn features(&self, images: &Tensor, flip: bool, batch: i64) -> Tensor {
        let n = images.size()[0];
        let parts: Vec<Tensor> = (0..n)
            .step_by(batch as usize)
            .map(|s| {
                let x = images.narrow(0, s, batch.min(n - s));
                self.prefix(&if flip { x.flip([3]) } else { x })
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// Logits for a batch whose tail input is `x` (prefix already applied).
    fn tail(&self, x: &Tensor, train: bool) -> Tensor {
        self.net.forward_range(x, self.first..self.net.blocks.len(), |i| train && self.trains[i]).to_kind(Kind::Float)
    }

    /// Tail input for rows `idx` of `src` with per-row flips / shifts.
    fn batch(&self, src: &Source, idx: &Tensor, draw: &batches::Draw, translate: u32) -> Tensor {
        match src {
            Source::Images(x) => {
                self.prefix(&batches::apply(&x.index_select(0, idx), draw, translate))
            }
            Source::Features { plain, flipped } => {
                let idx = idx.to_device(plain.device());
                let p = plain.index_select(0, &idx);
                match flipped {
                    Some(f) if draw.flip.iter().any(|&b| b) => {
                        let mask = Tensor::from_slice(&draw.flip.iter().map(|&b| b as u8).collect::<Vec<_>>())
                            .to_kind(Kind::Bool)
                            .to_device(p.device());
                        let shape: Vec<i64> = std::iter::once(-1).chain(std::iter::repeat(1).take(p.dim() - 1)).collect();
                        f.index_select(0, &idx).where_self(&mask.view(shape.as_slice()), &p)
                    }
                    _ => p,
                }
            }
        }
    }
}

/// Mean loss and accuracy of the current weights on a val source, over
/// the `tta` views (cached features carry the mirror only, which
/// `TrainParams::caches_features` guarantees is all they need).
fn validate(r: &Runner, src: &Source, y: &Tensor, tta: Tta, batch: i64, smoothing: f64) -> (f64, f64) {
    let n = y.size()[0];
    let (mut loss, mut correct) = (0.0, 0i64);
    tch::no_grad(|| {
        for s in (0..n).step_by(batch as usize) {
            let len = batch.min(n - s);
            let logits = match src {
                Source::Images(x) => {
                    let v = r.feed.input(&x.narrow(0, s, len));
                    models::tta_logits(&v, tta, |v| r.tail(&r.lift(v), false))
                }
                Source::Features { plain, flipped } => {
                    let p = r.tail(&plain.narrow(0, s, len), false);
                    match flipped {
                        Some(f) if tta != Tta::None => (p + r.tail(&f.narrow(0, s, len), false)) * 0.5,
                        _ => p,
                    }
                }
            };
            let t = y.narrow(0, s, len).to_device(logits.device());
            loss += logits.cross_entropy_loss::<Tensor>(&t, None, tch::Reduction::Sum, -100, smoothing).double_value(&[]);
            correct += logits.argmax(1, false).eq_tensor(&t).sum(Kind::Int64).int64_value(&[]);
        }
    });
    (loss / n.max(1) as f64, correct as f64 / n.max(1) as f64)
}

struct EpochRow {
    train_loss: f64,
    train_acc: f64,
    val_loss: f64,
    val_acc: f64,
    lr: f64,
    seconds: f64,
    images_per_sec: f64,
}

pub fn run(ctx: &mut WorkerCtx) -> StageResult {
    let p: TrainParams = ctx.params()?;
    let Trainable::List(trainable) = &p.trainable else {
        return Err(StageError::new("params were not canonicalised (trainable should be a list); is the engine out of date?"));
    };
    tch::set_num_threads(ctx.threads() as i32);
    tch::manual_seed(ctx.seed() as i64);
    let device = ctx.device;
    if device.is_cuda() {
        crate::determinism::set(p.deterministic);
    }
    let k = p.model.num_classes;
    let (xtr, ytr) = load_labelled(ctx, "train_images", "train_labels", k)?;
    let (xva, yva) = load_labelled(ctx, "val_images", "val_labels", k)?;
    let n = xtr.size()[0];
    let bs = (p.batch_size as i64).min(n);
    if n < 2 {
        return Err(StageError::new(format!("`train_images` has {n} images; training needs at least 2")));
    }

    let vs = nn::VarStore::new(device);
    let net = models::build(&vs.root(), &p.model);
    if ctx.has_input("init") {
        let src = weights::read_any(ctx.input("init")?)?;
        let reinit = p.reinit_head.unwrap_or(false);
        let copied = weights::load_into(&vs, &src, |v| reinit && net.owner(v).is_some_and(|b| b.name == "head"))?;
        ctx.log(format!("initialised {copied} tensors from {}", ctx.input("init")?.display()));
    } else if !matches!(p.init, Init::Scratch(_)) {
        return Err(StageError::new("`init` names weights but the `init` input is not connected"));
    } else if p.model.arch == Arch::Fast {
        // airbench's whitening init: from the first (up to) 5000 images, so
        // the result depends on the data only, not on the seed.
        let sample = xtr.narrow(0, 0, n.min(5000));
        let fp32 = Feed { normalize: p.model.normalize, kind: Kind::Float, device };
        models::fast::whiten_stem(&vs, &fp32.input(&sample))?;
    }
    let vars = freeze(&vs, &net, trainable);
    let names = net.names();
    let first = names.iter().position(|b| trainable.iter().any(|t| t == b)).unwrap_or(0);
    let trains: Vec<bool> = names.iter().map(|b| trainable.iter().any(|t| t == b)).collect();
    let feed = Feed { normalize: p.model.normalize, kind: compute_kind(p.precision, device), device };
    let r = Runner { net: &net, feed, first, trains };

    let (train_src, val_src) = if p.caches_features() && first > 0 {
        let t0 = Instant::now();
        let plain = r.features(&xtr, false, bs);
        let flipped = p.augment.flip.then(|| r.features(&xtr, true, bs));
        let vplain = r.features(&xva, false, bs);
        let vflip = (p.tta != Tta::None).then(|| r.features(&xva, true, bs));
        tensors::save(ctx.output("features")?, &plain.to_kind(Kind::Half).to_device(Device::Cpu))?;
        ctx.log(format!("cached `{}` features {:?} in {:.1}s", names[first - 1], plain.size(), t0.elapsed().as_secs_f64()));
        (Source::Features { plain, flipped }, Source::Features { plain: vplain, flipped: vflip })
    } else {
        (Source::Images(xtr.shallow_clone()), Source::Images(xva.shallow_clone()))
    };

    let steps_per_epoch = (n / bs) as usize; // drop the ragged last batch: BN needs real batches
    let total = steps_per_epoch * p.epochs as usize;
    let mut opt = optim::Optim::new(p.optimizer, vars, p.momentum, p.nesterov, p.weight_decay, p.bias_lr_scale);
    let mut lookahead = p.lookahead.then(|| optim::Lookahead::new(total));
    let mut rng = Rng::new(ctx.seed());
    let mut rows: Vec<EpochRow> = Vec::new();
    let mut best: Option<(usize, f64, BTreeMap<String, Tensor>)> = None;
    let started = Instant::now();
    let mut last_tick = started;
    let mut step = 0;
    for epoch in 0..p.epochs as usize {
        let _epoch = tracing::info_span!("epoch", n = epoch + 1).entered();
        let t0 = Instant::now();
        let order = rng.permutation(n as usize);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0i64);
        let mut lr = 0.0;
        for b in 0..steps_per_epoch {
            let idx = Tensor::from_slice(&order[b * bs as usize..(b + 1) * bs as usize]);
            let draw = batches::draw(&mut rng, &p.augment, bs as usize);
            let x = r.batch(&train_src, &idx, &draw, p.augment.translate);
            let y = ytr.index_select(0, &idx).to_device(device);
            lr = optim::lr_at(p.schedule, p.lr, p.warmup, step, total);
            let logits = r.tail(&x, true);
            let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, p.label_smoothing);
            let lv = loss.double_value(&[]);
            if !lv.is_finite() {
                return Err(StageError::new(format!(
                    "loss became {lv} at epoch {}, step {} (lr {lr:.3e}); lower `lr` or add warm-up",
                    epoch + 1,
                    b + 1
                )));
            }
            opt.zero_grad();
            loss.backward();
            opt.step(lr).map_err(|e| StageError::new(format!("optimizer step at epoch {}, step {}: {e}", epoch + 1, b + 1)))?;
            step += 1;
            if let Some(la) = lookahead.as_mut() {
                la.after_step(&vs, step);
            }
            if last_tick.elapsed().as_secs_f64() >= 1.0 {
                last_tick = Instant::now();
                let msg = format!("epoch {}/{} step {}/{steps_per_epoch} loss {:.3}", epoch + 1, p.epochs, b + 1, loss_sum / (seen as f64).max(1.0));
                ctx.progress_at(msg, step as u64, total as u64, true);
            }
            loss_sum += lv * bs as f64;
            correct += tch::no_grad(|| logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]));
            seen += bs;
        }
        if let Some(la) = lookahead.as_mut() {
            la.end_epoch();
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let (val_loss, val_acc) = validate(&r, &val_src, &yva, p.tta, bs.max(256), p.label_smoothing);
        let row = EpochRow {
            train_loss: loss_sum / seen as f64,
            train_acc: correct as f64 / seen as f64,
            val_loss,
            val_acc,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_sec: seen as f64 / train_secs,
        };
        let msg = format!(
            "epoch {}/{} loss {:.3} acc {:.1}% val {:.1}% {:.0} img/s",
            epoch + 1,
            p.epochs,
            row.train_loss,
            100.0 * row.train_acc,
            100.0 * val_acc,
            row.images_per_sec
        );
        ctx.progress_at(msg, step as u64, total as u64, false);
        tracing::info!(
            train_loss = row.train_loss,
            train_acc = row.train_acc,
            val_loss,
            val_acc,
            lr,
            images_per_sec = row.images_per_sec,
            "epoch done"
        );
        if best.as_ref().is_none_or(|b| val_acc > b.1) {
            let snap = vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
            best = Some((epoch, val_acc, snap));
        }
        rows.push(row);
        if let (Some(pat), Some((be, _, _))) = (p.patience, &best) {
            if epoch - be >= pat as usize {
                ctx.log(format!("early stop after epoch {}: no better val accuracy for {pat} epochs", epoch + 1));
                break;
            }
        }
    }
    let (best_epoch, best_acc, snap) = best.expect("at least one epoch ran");
    tch::no_grad(|| -> StageResult {
        for (name, mut v) in vs.variables() {
            v.f_copy_(&snap[&name])?;
        }
        Ok(())
    })?;
    let spec = serde_json::to_string(&p.model).map_err(|e| StageError::new(e.to_string()))?;
    weights::save(ctx.output("model")?, &weights::state_dict(&vs), &BTreeMap::from([(MODEL_META.to_string(), spec)]))?;
    write_tables(ctx, &rows, best_epoch, best_acc)?;
    ctx.metric("best_val_acc", best_acc);
    ctx.metric("best_epoch", best_epoch as f64 + 1.0);
    // Wall-clock figures are metrics (run records), never outputs: outputs
    // are a function of the key, so a re-run makes the same bytes.
    ctx.metric("train_seconds", started.elapsed().as_secs_f64());
    let n = rows.len().max(1) as f64;
    ctx.metric("epoch_seconds", rows.iter().map(|r| r.seconds).sum::<f64>() / n);
    ctx.metric("images_per_sec", rows.iter().map(|r| r.images_per_sec).sum::<f64>() / n);
    Ok(())
}

fn write_tables(ctx: &WorkerCtx, rows: &[EpochRow], best_epoch: usize, best_acc: f64) -> StageResult {
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
        .with("best_epoch", Column::I64(vec![best_epoch as i64 + 1]))
        .with("best_val_acc", Column::F64(vec![best_acc]))
        .with("epochs_run", Column::I64(vec![rows.len() as i64]));
    summary.write(ctx.output("summary")?).map_err(|e| StageError::new(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_kind::protocol::Job;
    use cairn_kinds::Kind as _;
    use std::path::{Path, PathBuf};

    /// Runs one `train` job on a tiny synthetic set in `dir`; returns the model path.
    fn train_once(dir: &Path, raw: serde_json::Value) -> StageResult<PathBuf> {
        std::fs::create_dir_all(dir).unwrap();
        tch::manual_seed(42);
        let x = Tensor::randint(256, [48, 3, 8, 8], (Kind::Uint8, Device::Cpu));
        let y = Tensor::randint(3, [48], (Kind::Int64, Device::Cpu));
        let plan = cairn_kinds::train::Train.check(&raw).map_err(|e| StageError::new(e.message))?;
        let mut job = Job::new(cairn_kinds::train::Train.info(), "t", plan.params, dir).with_seed(7);
        for (slot, t) in [("train_images", &x), ("train_labels", &y), ("val_images", &x), ("val_labels", &y)] {
            let p = dir.join(format!("{slot}.arrow"));
            tensors::save(&p, t).unwrap();
            job = job.with_input(slot, [p]);
        }
        for o in &plan.outputs {
            job = job.with_output(&o.name, dir.join(&o.name));
        }
        run(&mut WorkerCtx::new(job))?;
        Ok(dir.join("model"))
    }

    fn params(lr: f64) -> serde_json::Value {
        serde_json::json!({"model": {"arch": "fast", "num_classes": 3, "widths": [4, 8], "normalize": "cifar"},
            "lr": lr, "epochs": 2, "batch_size": 16, "augment": {"flip": true, "translate": 1}})
    }

    #[test]
    fn diverging_loss_names_epoch_step_and_lr() {
        let base = std::env::temp_dir().join(format!("cairn-train-nan-{}", std::process::id()));
        let e = train_once(&base, params(1e30)).unwrap_err().0;
        assert!(e.contains("epoch") && e.contains("step") && e.contains("lr"), "{e}");
    }
}
