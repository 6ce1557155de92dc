//! BatchNorm in training mode with ReLU6 fused where one follows, for
//! Lite0's trained layers on the CPU in fp32 (`csrc/batch_norm.cpp`).
//! libtorch's `batch_norm` and `hardtanh` read or write each activation
//! some thirteen times between them, forward and backward, and keep both
//! the BatchNorm's input and output for the backward; the shim does eight
//! and keeps the input only, recomputing the clamp's mask. Each channel's
//! sums run in row order, in float over runs of 64 rows (a thread takes
//! whole runs) whose totals add up in double in run order, so the result
//! depends on neither the thread count nor the instruction set. Elsewhere
//! (bf16, CUDA) libtorch's ops run as before.

use tch::nn;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::shim::checked;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cairn_batch_norm_train(
        x: *mut C_tensor,
        gamma: *mut C_tensor,
        beta: *mut C_tensor,
        running_mean: *mut C_tensor,
        running_var: *mut C_tensor,
        momentum: f64,
        eps: f64,
        clamp: i32,
        out: *mut *mut C_tensor,
        err: *mut u8,
        err_len: i32,
    ) -> i32;
}

/// What follows the BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Nothing,
    Relu6,
}

/// `bn` in training mode on `x` [N, C, H, W], then `then`: batch
/// statistics with `eps`, the running ones moving by `momentum` (tch keeps
/// the ones `bn` was built with private, so the caller passes them). The
/// shim's kernel where `x` is fp32 on the CPU and `bn` has γ and β;
/// libtorch's ops otherwise.
///
/// # Panics
/// Where the shapes do not match, as tch's own ops do.
pub fn train(x: &Tensor, bn: &nn::BatchNorm, momentum: f64, eps: f64, then: Then) -> Tensor {
    let (Some(gamma), Some(beta)) = (&bn.ws, &bn.bs) else { return libtorch(x, bn, momentum, eps, then) };
    if x.device() != Device::Cpu || x.kind() != Kind::Float || x.dim() != 4 {
        return libtorch(x, bn, momentum, eps, then);
    }
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the tensors are live and borrowed for the call; the shim
    // writes the running statistics in place (as libtorch's BatchNorm
    // does) and, on success, stores a new `at::Tensor*` in `out`, which
    // the returned tch tensor owns and frees.
    checked(|err, len| unsafe {
        cairn_batch_norm_train(
            x.as_ptr() as *mut C_tensor,
            gamma.as_ptr() as *mut C_tensor,
            beta.as_ptr() as *mut C_tensor,
            bn.running_mean.as_ptr() as *mut C_tensor,
            bn.running_var.as_ptr() as *mut C_tensor,
            momentum,
            eps,
            i32::from(then == Then::Relu6),
            &mut out,
            err,
            len,
        )
    })
    .unwrap_or_else(|e| panic!("BatchNorm of {:?}: {e}", x.size()));
    // SAFETY: the call succeeded, so `out` is a tensor no one else owns.
    unsafe { Tensor::from_ptr(out) }
}

/// libtorch's BatchNorm (as `nn::BatchNorm::forward_t` calls it) and
/// `hardtanh` (its ReLU6), as two ops. Not `clamp(0, 6)`: the same values,
/// but its backward builds and combines two masks, which made a whole Lite0
/// training step 1.35x slower on an AVX2 EPYC (BENCHMARKS.md, "Lite0's
/// ReLU6 as libtorch's `hardtanh`"); and not in place, which made one 3–12%
/// slower (BENCHMARKS.md, "ReLU6 in place in eval mode").
fn libtorch(x: &Tensor, bn: &nn::BatchNorm, momentum: f64, eps: f64, then: Then) -> Tensor {
    let y = x.batch_norm(bn.ws.as_ref(), bn.bs.as_ref(), Some(&bn.running_mean), Some(&bn.running_var), true, momentum, eps, true);
    match then {
        Then::Nothing => y,
        Then::Relu6 => y.relu6(),
    }
}

#[cfg(test)]
#[path = "batch_norm_tests.rs"]
mod tests;
