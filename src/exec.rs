//! Executing one stage: a private scratch directory, the kind's `run`, a
//! check that every declared output was written, and (unless verifying)
//! moving the outputs into the store and writing the manifest last. A
//! stored execution also names the key's checkpoint directory, which a
//! resumable kind uses and which is removed once the manifest is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::cache::{gc, hash_file, Cache, Manifest, OutputRecord};
use crate::env::Environment;
use crate::key::KeyInputs;
use crate::kind::{Reporter, StageCtx, StageFailure};
use crate::spec::Stage;

/// What a finished execution produced.
pub struct Executed {
    pub outputs: BTreeMap<String, OutputRecord>,
    pub metrics: BTreeMap<String, f64>,
    pub duration_s: f64,
    pub manifest: Option<Manifest>,
}

pub struct ExecRequest<'a> {
    pub stage: &'a Stage,
    pub key_inputs: &'a KeyInputs,
    /// Slot → object paths of the inputs.
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    pub seed: u64,
    /// The pipeline file's directory (see [`StageCtx::project_dir`]).
    pub project_dir: &'a Path,
    pub env: &'a Environment,
    pub reporter: &'a dyn Reporter,
    pub cancel: &'a AtomicBool,
    /// Store outputs and write a manifest (false for `verify`).
    pub store: bool,
    /// Called once the stage has finished, before anything is stored: an
    /// error (an input changed or was damaged while it ran) fails the stage.
    pub check_inputs: &'a (dyn Fn() -> Result<(), StageFailure> + Sync),
}

/// Runs the stage's kind; a panicking in-process kind fails its stage,
/// not the whole run.
fn run_kind(stage: &Stage, ctx: &mut StageCtx<'_>) -> Result<(), StageFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.kind.run(ctx))).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(StageFailure::new(format!("stage kind panicked: {}", msg.unwrap_or_default())))
    })
}

/// Each declared output, stored (or, for `verify`, only hashed). A
/// missing one fails the stage.
fn record_outputs(
    cache: &Cache,
    stage: &Stage,
    outputs: &BTreeMap<String, PathBuf>,
    store: bool,
) -> Result<BTreeMap<String, OutputRecord>, StageFailure> {
    let mut records = BTreeMap::new();
    for decl in &stage.checked.outputs {
        let path = &outputs[&decl.name];
        if std::fs::symlink_metadata(path).is_err() {
            return Err(StageFailure::new(format!(
                "finished without writing declared output `{}` ({} {})",
                decl.name, decl.ty, decl.file_name()
            )));
        }
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(StageFailure::new(format!(
                "declared output `{}` is a directory, and an output must be a file\n  help: archive it in the command, the same bytes for the same files so that an unchanged output keeps the stages after it cached: \
                 `tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf {{out.{}}} -C DIR .`",
                decl.name, decl.name
            )));
        }
        let (hash, size) = if store { cache.ingest(path).map_err(|e| StageFailure::new(e.to_string()))? } else { hash_file(path)? };
        records.insert(decl.name.clone(), OutputRecord { hash, size, ty: decl.ty, ext: decl.ext.clone() });
    }
    Ok(records)
}

pub fn execute(cache: &Cache, req: ExecRequest<'_>) -> Result<Executed, StageFailure> {
    let stage = req.stage;
    let scratch = cache.scratch_dir(&stage.name).map_err(|e| StageFailure::new(e.to_string()))?;
    let out_dir = scratch.path().join("out");
    let work_dir = scratch.path().join("work");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::create_dir_all(&work_dir)?;
    let outputs: BTreeMap<String, PathBuf> =
        stage.checked.outputs.iter().map(|o| (o.name.clone(), out_dir.join(o.file_name()))).collect();

    let started_at = crate::timestamp::now();
    let t0 = Instant::now();
    let mut ctx = StageCtx {
        stage: &stage.name,
        params: &stage.checked.params,
        inputs: req.inputs,
        input_hashes: req.key_inputs.inputs.clone(),
        outputs: outputs.clone(),
        scratch: &work_dir,
        project_dir: req.project_dir,
        // `verify` re-executes from the start: a resumed run proves nothing.
        checkpoint_dir: req.store.then(|| gc::checkpoint_dir(cache, &req.key_inputs.key())),
        seed: req.seed,
        env: req.env,
        reporter: req.reporter,
        metrics: BTreeMap::new(),
        cancel: req.cancel,
    };
    run_kind(stage, &mut ctx)?;
    (req.check_inputs)()?;
    let duration_s = t0.elapsed().as_secs_f64();
    let metrics = std::mem::take(&mut ctx.metrics);
    let records = record_outputs(cache, stage, &outputs, req.store)?;
    let manifest = Manifest {
        key: req.key_inputs.key(),
        key_inputs: req.key_inputs.clone(),
        stage: stage.name.clone(),
        outputs: records.clone(),
        started_at,
        finished_at: crate::timestamp::now(),
        duration_s,
        cairn_version: env!("CARGO_PKG_VERSION").to_string(),
        metrics: metrics.clone(),
    };
    if req.store {
        cache.write_manifest(&manifest).map_err(|e| StageFailure::new(e.to_string()))?;
        gc::remove_checkpoint(cache, &manifest.key);
    }
    Ok(Executed { outputs: records, metrics, duration_s, manifest: Some(manifest) })
}
