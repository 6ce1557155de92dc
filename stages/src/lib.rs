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

use ctx::{StageResult, WorkerCtx};

/// The worker-side implementation of each built-in kind.
pub fn dispatch(kind: &str) -> Option<fn(&mut WorkerCtx) -> StageResult> {
    Some(match kind {
        "load_subset" => data::load_subset,
        "resize" => data::resize,
        "train" => train::run,
        "evaluate" => evaluate::run,
        "report" => report::run,
        "gradcam" => gradcam::run,
        _ => return None,
    })
}
