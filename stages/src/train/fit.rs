//! The epoch loop: seeded batches through the trainable tail, the
//! optimizer step at the scheduled learning rate, optional lookahead
//! averaging, a val pass per epoch, and the best epoch's weights kept
//! (early stopping with `patience` ends the loop; the caller restores
//! them). Each epoch but the last ends with a checkpoint, and the loop
//! starts after the job's checkpoint when it has one ([`checkpoint`]);
//! libtorch's generator is reseeded from the stage seed at each epoch's
//! start, so what an epoch draws from it does not depend on where the
//! execution started. Progress goes to the engine; wall-clock figures only
//! into the returned [`Fit`], whose caller reports them as metrics.

use std::collections::BTreeMap;
use std::time::Instant;

use cairn_kinds::train::{Keep, TrainParams};
use tch::{nn, Kind, Tensor};

use super::batches::{self, Rng};
use super::checkpoint::{self, Start};
use super::optim::{self, Lookahead, Optim};
use super::runner::{validate, Runner, Source};
use crate::ctx::{StageError, StageResult, WorkerCtx};
use crate::device;

/// Train minus val accuracy after a fine-tune's first epoch above which
/// [`Trainer::warn_if_bn_misfits`] speaks: overfitting opens such a gap
/// over many epochs, not in one.
const BN_MISFIT_GAP: f64 = 0.4;

/// Steps whose loss and hits may wait on the device before they are read
/// ([`Unread`]); a non-finite loss stops the stage at most this many steps late.
const READ_EVERY: usize = 16;

pub(super) struct EpochRow {
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub lr: f64,
    pub seconds: f64,
    pub images_per_sec: f64,
}

/// What training produced: one row per epoch run, the best epoch by val
/// accuracy and the epoch whose weights the model keeps.
pub(super) struct Fit {
    pub rows: Vec<EpochRow>,
    /// Zero-based.
    pub best_epoch: usize,
    pub best_acc: f64,
    /// Zero-based.
    pub kept_epoch: usize,
    /// The kept epoch's weights, when they are not the last's.
    kept: Option<BTreeMap<String, Tensor>>,
    pub seconds: f64,
}

impl Fit {
    /// Puts the kept epoch's weights into `vs` (a no-op for the last's).
    pub fn restore_kept(&self, vs: &nn::VarStore) -> StageResult {
        let Some(weights) = &self.kept else { return Ok(()) };
        tch::no_grad(|| {
            for (name, mut v) in vs.variables() {
                v.f_copy_(&weights[&name])?;
            }
            Ok(())
        })
    }
}

/// What the epochs so far produced (a checkpoint keeps it).
#[derive(Default)]
pub(super) struct Record {
    pub rows: Vec<EpochRow>,
    /// The best epoch so far (zero-based), its val accuracy and a copy of
    /// its weights.
    pub best: Option<(usize, f64, BTreeMap<String, Tensor>)>,
    /// Seconds trained by the executions this one resumed.
    pub seconds_before: f64,
}

impl Record {
    /// Adds epoch `epoch`'s row, keeping `vs`'s weights if it is the best.
    fn push(&mut self, epoch: usize, row: EpochRow, vs: &nn::VarStore) {
        if self.best.as_ref().is_none_or(|b| row.val_acc > b.1) {
            let snap = vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
            self.best = Some((epoch, row.val_acc, snap));
        }
        self.rows.push(row);
    }
}

/// A labelled set as the tail sees it.
pub(super) struct Split<'a> {
    pub source: &'a Source,
    pub labels: &'a Tensor,
}

/// Everything an epoch reads.
pub(super) struct Trainer<'a> {
    pub ctx: &'a WorkerCtx,
    pub p: &'a TrainParams,
    pub vs: &'a nn::VarStore,
    pub runner: &'a Runner<'a>,
    pub train: Split<'a>,
    pub val: Split<'a>,
    pub batch: i64,
    /// The stem's trainable variables, which `stem_epochs` fixes after
    /// its epochs (empty without it).
    pub stem: Vec<Tensor>,
}

/// What changes from step to step (a checkpoint keeps it).
pub(super) struct State {
    pub opt: Optim,
    pub lookahead: Option<Lookahead>,
    pub rng: Rng,
    pub step: usize,
    total: usize,
    pub steps_per_epoch: usize,
}

impl Trainer<'_> {
    /// Trains `vars` for up to `epochs` epochs, from the job's checkpoint
    /// when it has a usable one.
    pub fn fit(&self, vars: Vec<Tensor>) -> StageResult<Fit> {
        let p = self.p;
        let side = self.train.source.side();
        if p.augment.crop > 0 && p.augment.crop >= side {
            let crop = p.augment.crop;
            return Err(StageError::new(format!("augment.crop = {crop} is not smaller than the {side}-px training images: lower it, or remove it")));
        }
        let mut st = self.state(&vars);
        let mut rec = Record::default();
        let first = self.resume(&mut st, &mut rec, &vars)?;
        let started = Instant::now();
        let seconds = |rec: &Record| rec.seconds_before + started.elapsed().as_secs_f64();
        for epoch in first..p.epochs as usize {
            let _epoch = tracing::info_span!("epoch", n = epoch + 1).entered();
            seed_libtorch(self.ctx.seed(), epoch);
            self.train_stem(epoch < p.stem_epochs.map_or(usize::MAX, |n| n as usize));
            let row = self.epoch(&mut st, epoch)?;
            if epoch == first {
                self.warn_if_bn_misfits(&row);
            }
            rec.push(epoch, row, self.vs);
            let best = rec.best.as_ref().map_or(epoch, |b| b.0);
            if let Some(pat) = p.patience.filter(|&pat| epoch - best >= pat as usize) {
                self.ctx.log(format!("early stop after epoch {}: no better val accuracy for {pat} epochs", epoch + 1));
                break;
            }
            if epoch + 1 < p.epochs as usize {
                checkpoint::save(self, &st, &rec, epoch + 1, seconds(&rec));
            }
        }
        let seconds = seconds(&rec);
        let (best_epoch, best_acc, best_weights) = rec.best.ok_or_else(|| StageError::new("no epoch ran (epochs = 0)"))?;
        // `keep = "last"`: the weights in `vs` now are the last epoch's.
        let keep_best = p.keep == Keep::Best;
        let kept_epoch = if keep_best { best_epoch } else { rec.rows.len() - 1 };
        Ok(Fit { rows: rec.rows, best_epoch, best_acc, kept_epoch, kept: keep_best.then_some(best_weights), seconds })
    }

    /// A fine-tune behind frozen blocks whose val accuracy (eval mode) sits
    /// far below its train accuracy (training mode) after one epoch: the
    /// signature of BatchNorm statistics re-estimated in training mode that
    /// do not fit the eval-mode net (a layer4 fine-tune on an H200: train
    /// 84.9%, val 14.2%). Says so, and names the param that avoids it.
    fn warn_if_bn_misfits(&self, row: &EpochRow) {
        if !bn_misfits(row, self.runner.first > 0, self.p.freeze_bn) {
            return;
        }
        let warning = format!(
            "warning: val accuracy {:.1}% is far below train accuracy {:.1}% after one epoch behind frozen blocks; \
             if it stays so, the trainable blocks' BatchNorm statistics do not fit the eval-mode net: set freeze_bn = true",
            100.0 * row.val_acc,
            100.0 * row.train_acc
        );
        tracing::warn!("{warning}");
        self.ctx.progress(warning);
    }

    /// Fresh optimizer, lookahead and data generator for `vars`.
    fn state(&self, vars: &[Tensor]) -> State {
        let p = self.p;
        let n = self.train.labels.size()[0];
        let steps_per_epoch = (n / self.batch) as usize; // drop the ragged last batch: BN needs real batches
        let total = steps_per_epoch * p.epochs as usize;
        let vars = vars.iter().map(Tensor::shallow_clone).collect();
        State {
            opt: with_muon(Optim::new(p.optimizer, vars, p.momentum, p.nesterov, p.weight_decay, p.bias_lr_scale), p),
            lookahead: p.lookahead.then(|| Lookahead::new(total)),
            rng: Rng::new(self.ctx.seed()),
            step: 0,
            total,
            steps_per_epoch,
        }
    }

    /// The first epoch to run: after the checkpoint's, or 0 (an unusable
    /// checkpoint is reported and removed, and the state starts fresh).
    fn resume(&self, st: &mut State, rec: &mut Record, vars: &[Tensor]) -> StageResult<usize> {
        let epochs = self.p.epochs;
        match checkpoint::resume(self, st, rec)? {
            Start::Fresh => Ok(0),
            Start::Resumed(done) => {
                self.ctx.progress_at(format!("resuming {} from epoch {done}/{epochs}", self.ctx.job.stage), st.step as u64, st.total as u64, false);
                Ok(done)
            }
            Start::Unusable(reason) => {
                tracing::warn!("ignoring an unusable checkpoint: {reason}");
                self.ctx.progress(format!("warning: ignoring an unusable checkpoint ({reason}); training from the first epoch"));
                checkpoint::discard(self.ctx);
                *st = self.state(vars);
                *rec = Record::default();
                Ok(0)
            }
        }
    }

    /// Whether the stem takes gradients this epoch. Set at every epoch's
    /// start, so a resumed execution sets what a whole one would.
    fn train_stem(&self, on: bool) {
        for v in &self.stem {
            let _ = v.shallow_clone().set_requires_grad(on);
        }
    }

    /// One pass over the training set, then the val metric.
    fn epoch(&self, st: &mut State, epoch: usize) -> StageResult<EpochRow> {
        let (p, bs) = (self.p, self.batch);
        let t0 = Instant::now();
        let order = st.rng.permutation(self.train.labels.size()[0] as usize);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0i64);
        let mut lr = 0.0;
        let mut pending = Vec::new();
        for b in 0..st.steps_per_epoch {
            let rows = &order[b * bs as usize..(b + 1) * bs as usize];
            lr = optim::lr_at(p.schedule, p.lr, p.warmup, st.step, st.total);
            let (loss, hits) = self.step(st, rows, lr, epoch).map_err(|e| StageError::new(format!("epoch {}, step {}: {e}", epoch + 1, b + 1)))?;
            pending.push(Unread { step: b + 1, lr, loss, hits });
            let due = self.ctx.progress_due();
            if !(due || pending.len() >= READ_EVERY || b + 1 == st.steps_per_epoch) {
                continue;
            }
            for (lv, hits) in read(&mut pending, epoch)? {
                loss_sum += lv * bs as f64;
                correct += hits;
                seen += bs;
            }
            if due {
                let msg = format!(
                    "epoch {}/{} step {}/{} loss {:.3} {:.0} img/s",
                    epoch + 1,
                    p.epochs,
                    b + 1,
                    st.steps_per_epoch,
                    loss_sum / seen as f64,
                    seen as f64 / t0.elapsed().as_secs_f64()
                );
                self.ctx.progress_at(msg, st.step as u64, st.total as u64, true);
            }
        }
        if let Some(la) = st.lookahead.as_mut() {
            la.end_epoch();
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let (val_loss, val_acc) = validate(self.runner, self.val.source, self.val.labels, p.tta, bs.max(256), p.label_smoothing)?;
        diverged(val_loss, epoch, lr)?;
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
        self.ctx.progress_at(msg, st.step as u64, st.total as u64, false);
        tracing::info!(train_loss = row.train_loss, train_acc = row.train_acc, val_loss, val_acc, lr, images_per_sec = row.images_per_sec, "epoch done");
        Ok(row)
    }

    /// One optimizer step on the training images `rows`; returns the
    /// batch's mean loss and its number of correct predictions, as tensors
    /// on the device ([`read`] checks and reads them).
    fn step(&self, st: &mut State, rows: &[i64], lr: f64, epoch: usize) -> Result<(Tensor, Tensor), String> {
        let (p, r) = (self.p, self.runner);
        let crop = p.augment.crop_at(epoch).map(|side| (side, self.train.source.side()));
        let draw = batches::draw(&mut st.rng, &p.augment, (self.ctx.seed(), epoch), rows, crop);
        let idx = Tensor::from_slice(rows);
        let x = r.batch(self.train.source, &idx, &draw, p.augment.translate).map_err(|e| e.to_string())?;
        let y = device::gather(self.train.labels, &idx, r.feed.device);
        let logits = r.tail(&x, true);
        let loss = logits.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, p.label_smoothing);
        st.opt.zero_grad();
        loss.backward();
        st.opt.step(lr).map_err(|e| format!("optimizer step: {e}"))?;
        st.step += 1;
        if let Some(la) = st.lookahead.as_mut() {
            la.after_step(self.vs, st.step);
        }
        let hits = tch::no_grad(|| logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64));
        Ok((loss.detach(), hits))
    }
}

/// A step whose loss and hit count are still on the device: reading a
/// GPU tensor waits for every kernel queued before it, so steps are read
/// in groups ([`READ_EVERY`], a progress update, the epoch's end) rather
/// than one by one, and the host keeps queueing work meanwhile.
struct Unread {
    /// One-based, within the epoch.
    step: usize,
    lr: f64,
    loss: Tensor,
    hits: Tensor,
}

/// Reads (and empties) `pending` in one transfer: each step's loss and
/// hits, in step order. A non-finite loss is an error naming the first
/// step that had one; the steps after it trained on, but the stage fails
/// before anything is kept or checkpointed.
fn read(pending: &mut Vec<Unread>, epoch: usize) -> StageResult<Vec<(f64, i64)>> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let steps = std::mem::take(pending);
    let fetch = |ts: Vec<&Tensor>| Tensor::stack(&ts, 0).to_device(tch::Device::Cpu);
    let losses = Vec::<f32>::try_from(&fetch(steps.iter().map(|u| &u.loss).collect())).map_err(|e| StageError::new(e.to_string()))?;
    let hits = Vec::<i64>::try_from(&fetch(steps.iter().map(|u| &u.hits).collect())).map_err(|e| StageError::new(e.to_string()))?;
    if let Some((u, lv)) = steps.iter().zip(&losses).find(|(_, lv)| !lv.is_finite()) {
        let (step, lr) = (u.step, u.lr);
        return Err(StageError::new(format!("epoch {}, step {step}: loss became {lv} (lr {lr:.3e}); lower `lr` or add warm-up", epoch + 1)));
    }
    Ok(losses.into_iter().map(f64::from).zip(hits).collect())
}

/// An error where the val loss after epoch `epoch` (zero-based) is not
/// finite. The loss of finite logits always is (cross-entropy is computed
/// through a stable log-softmax), so the net's outputs overflowed: the last
/// steps' updates blew the weights up, after the last training loss was
/// read (an epoch of one step never shows it).
fn diverged(val_loss: f64, epoch: usize, lr: f64) -> StageResult {
    if val_loss.is_finite() {
        return Ok(());
    }
    Err(StageError::new(format!(
        "epoch {}: the val loss became {val_loss} after the epoch's last step (lr {lr:.3e}): the weights diverged; lower `lr` or add warm-up",
        epoch + 1
    )))
}

/// Whether an epoch's accuracies look like BatchNorm statistics that do
/// not fit the eval-mode net: blocks frozen before the trainable ones,
/// their BatchNorm in training mode, and val far below train.
fn bn_misfits(row: &EpochRow, frozen_prefix: bool, freeze_bn: bool) -> bool {
    frozen_prefix && !freeze_bn && row.train_acc - row.val_acc >= BN_MISFIT_GAP
}

/// Seeds libtorch's generators (CPU and CUDA) for epoch `epoch` from the
/// stage seed, so their state at an epoch's start is the same whether the
/// execution began there or earlier: nothing else needs restoring.
fn seed_libtorch(seed: u64, epoch: usize) {
    let mut mix = Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
    tch::manual_seed((mix.next_u64() >> 1) as i64);
}

/// The filters go to Muon when the stage asks for it (its rate relative to
/// `lr`, so one schedule scales both).
fn with_muon(opt: Optim, p: &TrainParams) -> Optim {
    // The kind's check gives `muon` to `optimizer = "muon"` only.
    match p.muon {
        Some(m) => opt.with_muon(m.lr / p.lr, m.momentum),
        None => opt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(train_acc: f64, val_acc: f64) -> EpochRow {
        EpochRow { train_loss: 0.5, train_acc, val_loss: 2.0, val_acc, lr: 1e-4, seconds: 1.0, images_per_sec: 1.0 }
    }

    #[test]
    fn reading_steps_keeps_their_order_and_names_the_first_non_finite_loss() {
        let unread = |step: usize, loss: f32, hits: i64| Unread { step, lr: 0.1, loss: Tensor::from(loss), hits: Tensor::from(hits) };
        let mut pending = vec![unread(1, 0.5, 3), unread(2, 0.25, 4)];
        assert_eq!(read(&mut pending, 0).unwrap(), vec![(0.5, 3), (0.25, 4)]);
        assert!(pending.is_empty(), "read empties what it read");
        let mut pending = vec![unread(7, 0.5, 3), unread(8, f32::NAN, 4), unread(9, f32::INFINITY, 0)];
        let e = read(&mut pending, 2).unwrap_err().0;
        assert!(e.starts_with("epoch 3, step 8: loss became NaN (lr 1.000e-1)"), "{e}");
    }

    #[test]
    fn a_val_loss_that_is_not_finite_fails_the_epoch_with_its_rate() {
        assert!(diverged(2.3, 0, 0.1).is_ok());
        assert!(diverged(0.0, 0, 0.1).is_ok(), "an empty val split scores 0, not NaN");
        let e = diverged(f64::NAN, 0, 1e30).unwrap_err().0;
        assert!(e.starts_with("epoch 1: the val loss became NaN after the epoch's last step (lr 1.000e30)"), "{e}");
        assert!(diverged(f64::INFINITY, 4, 0.1).unwrap_err().0.starts_with("epoch 5: the val loss became inf"));
    }

    #[test]
    fn a_bn_misfit_is_a_wide_gap_behind_frozen_blocks_without_freeze_bn() {
        // The H200's layer4 fine-tune: train 84.9%, val 14.2% after epoch 1.
        let collapsed = row(0.849, 0.142);
        assert!(bn_misfits(&collapsed, true, false));
        assert!(!bn_misfits(&collapsed, true, true), "freeze_bn already set");
        assert!(!bn_misfits(&collapsed, false, false), "nothing frozen: no advice about freeze_bn");
        // The repro's healthy fine-tune and an ordinary first epoch.
        assert!(!bn_misfits(&row(0.435, 0.420), true, false));
        assert!(!bn_misfits(&row(0.950, 0.880), true, false));
    }
}
