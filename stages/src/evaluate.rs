//! TODO
use crate::ctx::{StageError, StageResult, WorkerCtx};
pub fn run(_ctx: &mut WorkerCtx) -> StageResult { Err(StageError::new("not implemented yet")) }
