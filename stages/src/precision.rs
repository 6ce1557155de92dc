//! The compute dtype a stage's `precision` param resolves to for its job.
//! The choice itself is the declaration's ([`Precision::uses_bf16`], unit
//! tested without libtorch); it reads only what the job's key holds (the
//! device, and on a CPU the `native_bf16` fact), so a cached result always
//! says which precision made it. This module maps the answer to libtorch
//! and warns about bf16 asked for where it is emulated.

use cairn_kinds::train::{has_native_bf16, Precision};
use tch::Kind;

use crate::ctx::WorkerCtx;

/// The dtype convolutions and matmuls compute in for `precision` in `ctx`'s job.
pub fn compute_kind(precision: Precision, ctx: &WorkerCtx) -> Kind {
    let cuda = ctx.device.is_cuda();
    let native = ctx.native_bf16();
    if precision == Precision::Bf16 && !cuda && !has_native_bf16(native) {
        let warning = format!(
            "warning: precision = \"bf16\" on a CPU without native bf16 (native_bf16 = {native}): libtorch emulates it, \
             measured 13x slower than fp32 on an AMD EPYC; set precision = \"auto\" (or \"fp32\") for this stage"
        );
        tracing::warn!("{warning}");
        ctx.progress(warning);
    }
    if precision.uses_bf16(cuda, native) {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}
