//! TODO
use crate::ctx::{StageError, StageResult, WorkerCtx};
pub fn load_subset(_ctx: &mut WorkerCtx) -> StageResult { Err(StageError::new("not implemented yet")) }
pub fn resize(_ctx: &mut WorkerCtx) -> StageResult { Err(StageError::new("not implemented yet")) }
