//! Safe wrappers over libtorch's fused optimizer kernels
//! (`csrc/optim.cpp`), the ones `torch.optim.SGD(fused=True)` and
//! `AdamW(fused=True)` run. One call updates a whole parameter group in a
//! single pass over memory; the op-by-op form read and wrote every
//! parameter-sized tensor six to eight times per step, which made the
//! optimizer ~40% slower than PyTorch's on ResNet-50.

use tch::Tensor;
use torch_sys::C_tensor;

use crate::shim::checked;

extern "C" {
    fn cairn_fused_sgd(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        bufs: *const *mut C_tensor,
        n: i32,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        nesterov: i32,
        err: *mut u8,
        err_len: i32,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn cairn_fused_adamw(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        steps: *const *mut C_tensor,
        n: i32,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut u8,
        err_len: i32,
    ) -> i32;
    fn cairn_clear_grad(t: *mut C_tensor);
}

/// The handles of `ts`, as the shim's `at::Tensor**` arguments. The shim
/// mutates the tensors' data, never the handles.
fn handles(ts: &[&Tensor]) -> Vec<*mut C_tensor> {
    ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
}

/// SGD (PyTorch's update, dampening 0) over equal-length lists; `bufs`
/// start as zeros.
pub fn sgd(params: &[&Tensor], grads: &[&Tensor], bufs: &[&Tensor], weight_decay: f64, momentum: f64, lr: f64, nesterov: bool) -> Result<(), String> {
    let (p, g, b) = (handles(params), handles(grads), handles(bufs));
    assert!(g.len() == p.len() && b.len() == p.len(), "one gradient and one buffer per parameter");
    // SAFETY: every pointer is a live tch tensor borrowed for the call; the
    // lists have `n` entries each; the shim catches C++ exceptions.
    checked(|err, len| unsafe {
        cairn_fused_sgd(p.as_ptr(), g.as_ptr(), b.as_ptr(), p.len() as i32, weight_decay, momentum, lr, nesterov as i32, err, len)
    })
}

/// AdamW (decoupled weight decay) over equal-length lists; `exp_avgs` and
/// `exp_avg_sqs` start as zeros, `steps` as 0-d f32 zeros, which the call
/// increments.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &[&Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
) -> Result<(), String> {
    let (p, g, m, v, s) = (handles(params), handles(grads), handles(exp_avgs), handles(exp_avg_sqs), handles(steps));
    assert!([g.len(), m.len(), v.len(), s.len()].iter().all(|&n| n == p.len()), "one state entry per parameter");
    // SAFETY: as in `sgd`.
    checked(|err, len| unsafe {
        cairn_fused_adamw(p.as_ptr(), g.as_ptr(), m.as_ptr(), v.as_ptr(), s.as_ptr(), p.len() as i32, lr, betas.0, betas.1, weight_decay, eps, err, len)
    })
}

/// `t.grad = None`.
pub fn clear_grad(t: &Tensor) {
    // SAFETY: `t` is a live tensor; resetting its grad slot is what
    // PyTorch's `zero_grad(set_to_none=True)` does.
    unsafe { cairn_clear_grad(t.as_ptr() as *mut C_tensor) }
}
