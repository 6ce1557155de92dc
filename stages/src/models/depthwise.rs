//! A depthwise convolution whose weight gradient the C++ shim
//! (`csrc/depthwise.cpp`) computes itself where oneDNN is slow: filters of
//! 5×5 and more, fp32 on an x86 CPU with AVX2 and FMA. EfficientNet-Lite0's
//! 5×5 layers spent a quarter of a training step in oneDNN's weight
//! gradient on a 2-core AVX2 EPYC (BENCHMARKS.md, "A depthwise weight
//! gradient that streams"). The forward and the input gradient stay
//! libtorch's, with the conv padding by itself where the padding is even
//! (a padded copy's input gradient covers the padding too: 2.8–5.4x the
//! pixels on Lite0's 6×6 and 3×3 maps); elsewhere (3×3 filters, bf16,
//! CUDA, other CPUs) the whole op is a padded copy and a plain `conv2d`.

use tch::Tensor;
use torch_sys::C_tensor;

use crate::shim::checked;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cairn_depthwise_conv(
        x: *mut C_tensor,
        w: *mut C_tensor,
        stride: i64,
        top: i64,
        bottom: i64,
        left: i64,
        right: i64,
        out: *mut *mut C_tensor,
        err: *mut u8,
        err_len: i32,
    ) -> i32;
    fn cairn_depthwise_kernel() -> i32;
}

/// Zero padding already applied to a convolution's input: `[left, right,
/// top, bottom]`, as `constant_pad_nd` takes it.
pub type Padding = [i64; 4];

/// The zeros TensorFlow's "same" padding adds around an `h`×`w` input for
/// a `k`×`k` filter at `stride` (output size ⌈input / stride⌉); the right
/// and bottom get the odd one.
pub fn same_padding(h: i64, w: i64, k: i64, stride: i64) -> Padding {
    let pad = |n: i64| (((n + stride - 1) / stride - 1) * stride + k - n).max(0);
    let (h, w) = (pad(h), pad(w));
    [w / 2, w - w / 2, h / 2, h - h / 2]
}

/// The depthwise convolution (groups = channels, no bias) of the unpadded
/// `x`, padded by `pad`, with `w` [C, 1, K, K] of `x`'s dtype at `stride`.
/// Output and gradients have the bits of `conv2d` over
/// `x.constant_pad_nd(pad)` (the weight gradient where the shim computes
/// it: to float rounding, summed in its own order).
///
/// # Panics
/// Where libtorch rejects the shapes, as tch's own ops do.
pub fn conv(x: &Tensor, w: &Tensor, stride: i64, pad: Padding) -> Tensor {
    let [left, right, top, bottom] = pad;
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `x` and `w` are live tensors borrowed for the call; on
    // success the shim stores a new `at::Tensor*` in `out`, which the
    // returned tch tensor owns and frees.
    checked(|err, len| unsafe {
        cairn_depthwise_conv(x.as_ptr() as *mut C_tensor, w.as_ptr() as *mut C_tensor, stride, top, bottom, left, right, &mut out, err, len)
    })
    .unwrap_or_else(|e| panic!("depthwise conv of {:?} with {:?}: {e}", x.size(), w.size()));
    // SAFETY: the call succeeded, so `out` is a tensor no one else owns.
    unsafe { Tensor::from_ptr(out) }
}

/// Whether this process's CPU gets the shim's weight gradient for 5×5
/// fp32 filters (otherwise libtorch's).
pub fn own_weight_gradient() -> bool {
    // SAFETY: reads a cached CPU check; no arguments.
    unsafe { cairn_depthwise_kernel() == 1 }
}

#[cfg(test)]
#[path = "depthwise_tests.rs"]
mod tests;
