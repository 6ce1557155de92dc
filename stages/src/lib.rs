//! cairn's built-in ML stage kinds, executed inside the `cairn-worker`
//! process (the only cairn binary that links libtorch).

pub mod ctx;
pub mod data;
pub mod determinism;
pub mod evaluate;
pub mod gradcam;
pub mod models;
pub mod pth;
pub mod plot;
pub mod report;
pub mod tensors;
pub mod train;
pub mod weights;

use cairn_kinds::KindId;
use ctx::{StageResult, WorkerCtx};

/// A kind's implementation: runs one job.
pub type Implementation = fn(&mut WorkerCtx) -> StageResult;

/// The implementation of each built-in kind declared in
/// [`cairn_kinds::KindId`]. The match is exhaustive, so a kind declared
/// there and not implemented here is a compile error.
pub fn implementation(kind: KindId) -> Implementation {
    match kind {
        KindId::LoadSubset => data::load_subset,
        KindId::Resize => data::resize,
        KindId::Train => train::run,
        KindId::Evaluate => evaluate::run,
        KindId::Report => report::run,
        KindId::GradCam => gradcam::run,
    }
}

/// The implementation of the kind named `name` in `kind = "…"`.
pub fn dispatch(name: &str) -> Option<Implementation> {
    KindId::from_name(name).map(implementation)
}
