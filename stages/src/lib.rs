//! cairn's built-in ML stage kinds, executed inside the `cairn-worker`
//! process (the only cairn binary that links libtorch).
//!
//! [`run`] is the one entry point a job takes (the worker's `main`, tests
//! and benches alike): it fixes libtorch's thread count and seed from the
//! job, once, deserialises the job's canonical params once into the type
//! the kind's declaration names ([`cairn_kinds::Declared::Params`]) and
//! calls the kind's implementation with them. Implementations never read
//! the JSON params themselves, and never re-check what `check` checked.

pub mod alloc;
pub mod ctx;
pub mod data;
pub mod determinism;
pub mod device;
pub mod evaluate;
pub mod gradcam;
pub mod load;
pub mod models;
pub mod pth;
pub mod plot;
pub mod precision;
pub mod report;
pub mod shim;
pub mod tensors;
pub mod train;
pub mod weights;
pub mod write_behind;

// The tests' shared helpers (tests/support), loaded once for every unit
// test of this crate.
#[cfg(test)]
#[path = "../../tests/support/skip.rs"]
mod skip;
#[cfg(test)]
#[path = "../../tests/support/tmpfs.rs"]
mod tmpfs;

use cairn_kinds::{Declared, KindId};
use ctx::{StageError, StageResult, WorkerCtx};
use serde::Deserialize;

/// A kind's implementation: runs one job with the kind's typed params.
pub type Implementation<P> = fn(&mut WorkerCtx, P) -> StageResult;

/// Runs the job in `ctx`. The match over [`KindId`] is exhaustive, so a
/// kind declared in `cairn-kinds` and not implemented here is a compile
/// error, and each arm pairs a declaration with the function that takes its
/// params type.
pub fn run(ctx: &mut WorkerCtx) -> StageResult {
    let _rng = rng_guard();
    let kind = KindId::from_name(&ctx.job.kind)
        .ok_or_else(|| StageError::new(format!("this cairn-worker has no kind `{}`; rebuild it with `make setup`", ctx.job.kind)))?;
    // The thread count is part of the key of kinds whose float reductions
    // depend on it, so it must be exactly what the engine decided.
    tch::set_num_threads(i32::try_from(ctx.threads().max(1)).unwrap_or(i32::MAX));
    tch::manual_seed(ctx.seed() as i64);
    use cairn_kinds as decl;
    match kind {
        KindId::LoadSubset => with::<decl::data::LoadSubset>(ctx, data::load_subset),
        KindId::Resize => with::<decl::data::Resize>(ctx, data::resize),
        KindId::Train => with::<decl::train::Train>(ctx, train::run),
        KindId::Evaluate => with::<decl::eval::Evaluate>(ctx, evaluate::run),
        KindId::Report => with::<decl::report::Report>(ctx, report::run),
        KindId::GradCam => with::<decl::gradcam::GradCam>(ctx, gradcam::run),
    }
}

/// libtorch has one random generator per process. A job seeds it and then
/// draws from it (weight init, shuffles, augmentation), so nothing else may
/// draw while a job runs, or the job's results change. A worker runs one
/// job; the tests run many, in threads of one process: jobs hold this lock
/// while they run, and tests that draw from the generator take it too.
static LIBTORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`LIBTORCH_RNG`]; a holder that panicked leaves no broken state
/// (the lock guards no data), so its poison is ignored.
pub(crate) fn rng_guard() -> std::sync::MutexGuard<'static, ()> {
    LIBTORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deserialises the job's params into `K`'s type (no copy of the JSON) and
/// runs `f` with them.
fn with<K: Declared>(ctx: &mut WorkerCtx, f: Implementation<K::Params>) -> StageResult {
    let params = K::Params::deserialize(&ctx.job.params).map_err(|e| {
        StageError::new(format!(
            "params do not match this worker's kind `{}`: {e} (is cairn-worker out of date? rebuild with `make setup`)",
            ctx.job.kind
        ))
    })?;
    f(ctx, params)
}
