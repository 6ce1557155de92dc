//! Checkpoints of the `train` kind, so an interrupted (killed, preempted)
//! execution of a stage key resumes where it stopped. At the end of every
//! epoch but the last, everything the next epoch reads is written to one
//! safetensors file in the job's checkpoint directory (named by the stage
//! key, see `cairn_kind::protocol::Job::checkpoint_dir`): the weights
//! (BatchNorm statistics included), the optimizer's per-parameter state,
//! the lookahead average, the best epoch's weights and, as metadata, the
//! epochs done, the data generator's state, the history rows and the best
//! epoch's bookkeeping. Floats in the metadata are kept as their bits, so a
//! resumed history is the uninterrupted one to the last bit. libtorch's own
//! generator is not saved: training reseeds it from the stage seed at each
//! epoch's start, so the epoch count restores it. The file is written under
//! a temporary name, fsynced and renamed, so a kill leaves the previous
//! checkpoint whole. One that cannot be read or does not fit the stage is
//! reported and ignored (training starts over); it is never trusted in part.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::fit::{EpochRow, Record, State, Trainer};
use crate::ctx::{StageError, StageResult, WorkerCtx};
use crate::weights;

/// The checkpoint's file name in the checkpoint directory.
pub const FILE: &str = "checkpoint.safetensors";
/// The safetensors metadata key holding [`Meta`] as JSON.
pub const META: &str = "cairn.checkpoint";
/// Bumped when the layout changes: a checkpoint of another format is ignored.
const FORMAT: u32 = 1;
const MODEL: &str = "model/";
const BEST: &str = "best/";
const OPTIM: &str = "optim/";
const LOOKAHEAD: &str = "lookahead/";

/// Everything but tensors.
#[derive(Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub epochs_done: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    /// The data generator's state ([`super::batches::Rng::state`]).
    pub rng: u64,
    /// Zero-based, and its val accuracy's bits.
    pub best_epoch: usize,
    pub best_acc: u64,
    /// Each epoch's [`EpochRow`], as bits.
    pub rows: Vec<[u64; 7]>,
    /// Training seconds so far (a metric only), as bits.
    pub seconds: u64,
}

/// Where training starts, as the job's checkpoint directory tells.
pub(super) enum Start {
    /// No checkpoint (or no directory): from the first epoch.
    Fresh,
    /// Restored after this many epochs.
    Resumed(usize),
    /// A checkpoint that cannot be used, and why; the caller starts over
    /// with fresh state.
    Unusable(String),
}

/// Writes the state after `epochs_done` epochs. A failure is a warning:
/// training goes on, it only could not be resumed from here.
pub(super) fn save(t: &Trainer, st: &State, rec: &Record, epochs_done: usize, seconds: f64) {
    let Some(dir) = t.ctx.job.checkpoint_dir.as_deref() else { return };
    if let Err(e) = capture(t, st, rec, epochs_done, seconds).and_then(|(tensors, meta)| write(dir, &tensors, &meta)) {
        tracing::warn!("cannot write a checkpoint: {e}");
        t.ctx.log(format!("warning: cannot write a checkpoint in {}: {e}; training goes on without one", dir.display()));
    }
}

fn capture(t: &Trainer, st: &State, rec: &Record, epochs_done: usize, seconds: f64) -> StageResult<(BTreeMap<String, Tensor>, String)> {
    let (best_epoch, best_acc, best) = rec.best.as_ref().ok_or_else(|| StageError::new("no epoch has run"))?;
    let mut tensors = BTreeMap::new();
    let mut add = |prefix: &str, map: BTreeMap<String, Tensor>| tensors.extend(map.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
    add(MODEL, weights::state_dict(t.vs));
    add(BEST, best.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect());
    add(OPTIM, st.opt.state());
    add(LOOKAHEAD, st.lookahead.as_ref().and_then(|la| la.state(t.vs)).unwrap_or_default());
    let meta = Meta {
        format: FORMAT,
        epochs_done,
        epochs: t.p.epochs as usize,
        steps_per_epoch: st.steps_per_epoch,
        rng: st.rng.state(),
        best_epoch: *best_epoch,
        best_acc: best_acc.to_bits(),
        rows: rec.rows.iter().map(row_bits).collect(),
        seconds: seconds.to_bits(),
    };
    Ok((tensors, serde_json::to_string(&meta).map_err(|e| StageError::new(e.to_string()))?))
}

/// Temp file, fsync, rename, fsync the directory: old or new, never half.
fn write(dir: &Path, tensors: &BTreeMap<String, Tensor>, meta: &str) -> StageResult {
    let tmp = dir.join(format!("{FILE}.tmp"));
    weights::save(&tmp, tensors, &BTreeMap::from([(META.to_string(), meta.to_string())]))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Restores `st`, `rec` and the weights from the job's checkpoint, if any.
/// Everything is checked against this stage before the weights are
/// touched; an unusable checkpoint may leave `st` and `rec` half set (the
/// caller replaces them), never the weights.
pub(super) fn resume(t: &Trainer, st: &mut State, rec: &mut Record) -> StageResult<Start> {
    let Some(dir) = t.ctx.job.checkpoint_dir.as_deref() else { return Ok(Start::Fresh) };
    let path = dir.join(FILE);
    if !path.exists() {
        return Ok(Start::Fresh);
    }
    let file = match weights::read_safetensors(&path) {
        Ok(f) => f,
        Err(e) => return Ok(Start::Unusable(e.0)),
    };
    let restored = file
        .metadata
        .get(META)
        .ok_or_else(|| format!("{}: no `{META}` metadata", path.display()))
        .and_then(|json| serde_json::from_str::<Meta>(json).map_err(|e| format!("{}: `{META}` metadata: {e}", path.display())))
        .and_then(|meta| restore_state(t, st, rec, &meta, &file.tensors).map(|()| meta.epochs_done));
    let done = match restored {
        Ok(done) => done,
        Err(reason) => return Ok(Start::Unusable(reason)),
    };
    let model = section(&file.tensors, MODEL);
    tch::no_grad(|| -> StageResult {
        for (name, mut var) in t.vs.variables() {
            var.f_copy_(&model[&name])?;
        }
        Ok(())
    })
    .map_err(|e| StageError::new(format!("restoring the weights from {}: {e}; remove that directory and run again", path.display())))?;
    Ok(Start::Resumed(done))
}

/// Removes the job's checkpoint file: an unusable one is reported once.
pub(super) fn discard(ctx: &WorkerCtx) {
    if let Some(dir) = &ctx.job.checkpoint_dir {
        let _ = std::fs::remove_file(dir.join(FILE));
    }
}

/// Checks the checkpoint against this stage and sets the optimizer,
/// lookahead, generator and record from it; the weights are left alone.
fn restore_state(t: &Trainer, st: &mut State, rec: &mut Record, meta: &Meta, all: &BTreeMap<String, Tensor>) -> Result<(), String> {
    let epochs = t.p.epochs as usize;
    if meta.format != FORMAT {
        return Err(format!("format {} is not this worker's {FORMAT}", meta.format));
    }
    if (meta.epochs, meta.steps_per_epoch) != (epochs, st.steps_per_epoch) {
        return Err(format!("made for {} epochs of {} steps, this stage runs {epochs} of {}", meta.epochs, meta.steps_per_epoch, st.steps_per_epoch));
    }
    if !(1..epochs).contains(&meta.epochs_done) || meta.rows.len() != meta.epochs_done || meta.best_epoch >= meta.epochs_done {
        return Err(format!("inconsistent epochs: {} done, {} rows, best {}", meta.epochs_done, meta.rows.len(), meta.best_epoch));
    }
    let (model, best) = (section(all, MODEL), section(all, BEST));
    fits_vars(t, &model, "weights")?;
    fits_vars(t, &best, "best weights")?;
    st.opt.load_state(&section(all, OPTIM))?;
    let avg = section(all, LOOKAHEAD);
    match st.lookahead.as_mut() {
        Some(la) => la.load_state(t.vs, (!avg.is_empty()).then_some(&avg))?,
        None if !avg.is_empty() => return Err("holds a lookahead average but the stage uses no lookahead".into()),
        None => {}
    }
    st.rng = super::batches::Rng::new(meta.rng);
    st.step = meta.epochs_done * st.steps_per_epoch;
    let device = t.ctx.device;
    let best = best.into_iter().map(|(k, v)| (k, v.to_device(device))).collect();
    rec.best = Some((meta.best_epoch, f64::from_bits(meta.best_acc), best));
    rec.rows = meta.rows.iter().map(|b| row_from(*b)).collect();
    rec.seconds_before = f64::from_bits(meta.seconds);
    Ok(())
}

/// Whether `map` holds exactly the model's variables, each with its shape
/// and element kind.
fn fits_vars(t: &Trainer, map: &BTreeMap<String, Tensor>, what: &str) -> Result<(), String> {
    let vars = t.vs.variables();
    if vars.len() != map.len() {
        return Err(format!("its {what} hold {} tensors, the model has {}", map.len(), vars.len()));
    }
    for (name, var) in vars {
        match map.get(&name) {
            Some(s) if s.size() == var.size() && s.kind() == var.kind() => {}
            Some(s) => return Err(format!("its {what} `{name}` is {:?} {:?}, the model's {:?} {:?}", s.kind(), s.size(), var.kind(), var.size())),
            None => return Err(format!("its {what} lack `{name}`")),
        }
    }
    Ok(())
}

/// The entries under `prefix`, without it.
fn section(all: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    all.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.shallow_clone()))).collect()
}

fn row_bits(r: &EpochRow) -> [u64; 7] {
    [r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.lr, r.seconds, r.images_per_sec].map(f64::to_bits)
}

fn row_from(bits: [u64; 7]) -> EpochRow {
    let [train_loss, train_acc, val_loss, val_acc, lr, seconds, images_per_sec] = bits.map(f64::from_bits);
    EpochRow { train_loss, train_acc, val_loss, val_acc, lr, seconds, images_per_sec }
}
