//! Lite0's convolution + ReLU6 for inference (eval mode, nothing needing a
//! gradient: the frozen prefix whose features `train` caches, `evaluate`,
//! Grad-CAM's feature pass), with fewer passes over each activation than
//! the layer-by-layer form. TensorFlow's "same" padding, where it is even,
//! is the conv's own rather than a zero-filled padded copy of the input.
//! Where it is uneven (a stride-2 layer on an even-sized map), an fp32
//! depthwise conv on an x86 CPU pads by itself too, on both sides by one
//! stride more than the short side needs, and its first output row and
//! column are cut off: a copy of its output, a quarter of the input's
//! size (at 96 px the padded copy of stage 2's input took a sixth of the
//! frozen prefix's time).
//! Other uneven convs (the stem) take a copy whose border alone is
//! zeroed, since oneDNN picks other kernels for the two shapes. Training
//! keeps `constant_pad_nd` (see `ConvBn` in `efficientnet.rs`). The bias
//! and clamp run inside the convolution's oneDNN primitive
//! (`csrc/conv_relu6.cpp`). Each path gives the same bits as the plain
//! ops (BENCHMARKS.md, "Stride-2 depthwise convs pad by themselves").

use tch::Tensor;
use torch_sys::C_tensor;

use super::depthwise::Padding;
use super::layers::Conv;
use crate::shim::checked;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cairn_conv_relu6(
        x: *mut C_tensor,
        w: *mut C_tensor,
        b: *mut C_tensor,
        stride: i64,
        pad_h: i64,
        pad_w: i64,
        groups: i64,
        out: *mut *mut C_tensor,
        err: *mut u8,
        err_len: i32,
    ) -> i32;
}

/// `relu6(conv(x padded by pad))` for a conv with a bias (a folded
/// BatchNorm's), computed in `x`'s dtype.
///
/// # Panics
/// Where libtorch rejects the shapes, as tch's own ops do.
pub fn same_conv_relu6(conv: &Conv, x: &Tensor, pad: Padding) -> Tensor {
    let [left, right, top, bottom] = pad;
    if left == right && top == bottom {
        return fused(conv, x, top, left);
    }
    let one_more = |lo: i64, hi: i64| hi == lo || hi == lo + 1;
    if !(one_more(left, right) && one_more(top, bottom) && pads_by_itself(conv, x)) {
        return fused(conv, &zero_padded(x, pad), 0, 0);
    }
    // Windows start `lo` before the image; a symmetric padding of `lo +
    // stride` starts them one stride earlier, so the first output is extra,
    // and covers the `lo + 1` zeros after it without a window more.
    let s = conv.stride();
    let cut = |lo: i64, hi: i64| if lo == hi { (lo, 0) } else { (lo + s, 1) };
    let ((pad_h, h0), (pad_w, w0)) = (cut(top, bottom), cut(left, right));
    let wide = fused(conv, x, pad_h, pad_w);
    let (n, c, hw, ww) = wide.size4().expect("a batch of images");
    let (oh, ow) = (hw - h0, ww - w0);
    let mut out = super::empty_in_layout_of(x, [n, c, oh, ow]);
    out.copy_(&wide.narrow(2, h0, oh).narrow(3, w0, ow));
    out
}

/// Whether `conv` over `x` may pad unevenly by padding wider and cutting:
/// fp32 depthwise convs on an x86 CPU, where oneDNN's kernels skip the
/// taps outside the image, adding what the zeros of a padded copy would
/// (nothing), in the same order (`matches_padded_conv_then_relu6` checks
/// the bits, with oneDNN's best kernels and its AVX2 and SSE4.1 ones).
fn pads_by_itself(conv: &Conv, x: &Tensor) -> bool {
    cfg!(target_arch = "x86_64") && conv.is_depthwise() && x.kind() == tch::Kind::Float && x.device() == tch::Device::Cpu
}

/// `relu6(conv(x))` with `pad_h`, `pad_w` zeros added by the conv itself
/// (besides its own padding).
fn fused(conv: &Conv, x: &Tensor, pad_h: i64, pad_w: i64) -> Tensor {
    let own = conv.padding();
    let k = x.kind();
    let w = conv.weight().to_kind(k);
    let b = conv.bias().expect("same_conv_relu6 takes a conv with a bias").to_kind(k);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `x`, `w` and `b` are live tensors borrowed for the call; on
    // success the shim stores a new `at::Tensor*` in `out`, which the
    // returned tch tensor owns and frees.
    checked(|err, len| unsafe {
        cairn_conv_relu6(x.as_ptr() as *mut C_tensor, w.as_ptr() as *mut C_tensor, b.as_ptr() as *mut C_tensor, conv.stride(), pad_h + own, pad_w + own, conv.groups(), &mut out, err, len)
    })
    .unwrap_or_else(|e| panic!("conv + ReLU6 of {:?} with {:?}: {e}", x.size(), w.size()));
    // SAFETY: the call succeeded, so `out` is a tensor no one else owns.
    unsafe { Tensor::from_ptr(out) }
}

/// `x` [N, C, H, W] with `pad` zeros around it, in its layout: what
/// `constant_pad_nd` returns, but that zero-fills the whole result before
/// copying `x` in; here only the border is written with zeros.
fn zero_padded(x: &Tensor, pad: Padding) -> Tensor {
    let [left, right, top, bottom] = pad;
    let (n, c, h, w) = x.size4().expect("a batch of images");
    let (hp, wp) = (h + top + bottom, w + left + right);
    let out = super::empty_in_layout_of(x, [n, c, hp, wp]);
    for (dim, start, len) in [(2, 0, top), (2, top + h, bottom), (3, 0, left), (3, left + w, right)] {
        let _ = out.narrow(dim, start, len).fill_(0.0);
    }
    out.narrow(2, top, h).narrow(3, left, w).copy_(x);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::channels_last;
    use crate::models::depthwise::same_padding;
    use crate::models::layers::{conv, depthwise};
    use tch::nn::{self, Module};
    use tch::{Device, Kind};

    /// The layer-by-layer form this replaces: pad, conv, clamp in place.
    fn plain(c: &Conv, x: &Tensor, pad: Padding) -> Tensor {
        c.forward(&x.constant_pad_nd(pad)).relu6_()
    }

    /// The border-only padding is `constant_pad_nd`'s result: values and
    /// layout, channels-last or not, for uneven and one-sided padding.
    #[test]
    fn zero_padded_is_constant_pad_nd() {
        let _rng = crate::rng_guard();
        tch::manual_seed(0);
        let x = Tensor::randn([2, 5, 7, 6], (Kind::Float, Device::Cpu));
        for x in [x.shallow_clone(), channels_last(&x)] {
            for pad in [[0, 1, 0, 1], [1, 2, 1, 2], [0, 0, 2, 0], [3, 0, 0, 1]] {
                let (want, got) = (x.constant_pad_nd(pad), zero_padded(&x, pad));
                assert!(want.equal(&got), "pad {pad:?}");
                assert_eq!(want.stride(), got.stride(), "pad {pad:?}: layout");
            }
        }
    }

    extern "C" {
        fn cairn_conv_relu6_fusing() -> i32;
    }

    /// Bit for bit the padded conv then ReLU6, in the same layout, for
    /// Lite0's shapes: the stem, 1×1 convs, 3×3 and 5×5 depthwise ones at
    /// strides 1 (even padding, the conv's own) and 2 (uneven: a padded
    /// copy, or in fp32 the conv padding wider, cut; at the sizes of a
    /// 96 px input, and uneven on one side only), on batches of 1, 3 and
    /// 16, outputs on both sides of the clamp; in fp32 and in bf16 (there
    /// the fused op clamps before rounding to bf16, the plain one after:
    /// the same, as 0 and 6 are bf16 values).
    #[test]
    fn matches_padded_conv_then_relu6() {
        let _rng = crate::rng_guard();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let layers = [
            ("stem", conv(&p / "stem", 3, 32, 3, 2, 0, false), 3, (17, 17)),
            ("stem even", conv(&p / "stem2", 3, 32, 3, 2, 0, false), 3, (16, 16)),
            ("pointwise", conv(&p / "pw", 16, 96, 1, 1, 0, false), 16, (12, 12)),
            ("dw3", depthwise(&p / "dw3", 96, 3, 1, 0), 96, (12, 12)),
            ("dw3 s2", depthwise(&p / "dw3s2", 96, 3, 2, 0), 96, (12, 12)),
            ("dw3 s2 48", depthwise(&p / "dw3s2_48", 96, 3, 2, 0), 96, (48, 48)),
            ("dw3 s2 12x13", depthwise(&p / "dw3s2_12x13", 240, 3, 2, 0), 240, (12, 13)),
            ("dw5", depthwise(&p / "dw5", 144, 5, 1, 0), 144, (7, 7)),
            ("dw5 s2", depthwise(&p / "dw5s2", 144, 5, 2, 0), 144, (8, 8)),
            ("dw5 s2 24", depthwise(&p / "dw5s2_24", 144, 5, 2, 0), 144, (24, 24)),
            ("dw5 s2 7x6", depthwise(&p / "dw5s2_7x6", 672, 5, 2, 0), 672, (7, 6)),
        ];
        for (name, c, cin, (h, w)) in layers {
            let cout = c.weight().size()[0];
            let mut bn = nn::batch_norm2d(&p / format!("{name}_bn"), cout, Default::default());
            bn.running_mean = Tensor::randn([cout], (Kind::Float, Device::Cpu));
            // Small variances scale the filters up, so outputs pass 6.
            bn.running_var = Tensor::rand([cout], (Kind::Float, Device::Cpu)) * 0.01 + 1e-3;
            let c = tch::no_grad(|| c.folded(&bn, 1e-3));
            let pad = same_padding(h, w, c.weight().size()[2], c.stride());
            for (batch, kind) in [1, 3, 16].into_iter().flat_map(|b| [(b, Kind::Float), (b, Kind::BFloat16)]) {
                let x = channels_last(&(Tensor::randn([batch, cin, h, w], (Kind::Float, Device::Cpu)) * 4.0).to_kind(kind));
                let (want, got) = tch::no_grad(|| (plain(&c, &x, pad), same_conv_relu6(&c, &x, pad)));
                assert_eq!(got.kind(), kind);
                assert!(want.equal(&got), "{name}, batch {batch}, {kind:?}: max gap {}", (&want - &got).abs().max());
                assert_eq!(want.stride(), got.stride(), "{name}, batch {batch}, {kind:?}: layout");
                let (lo, hi) = (got.min().double_value(&[]), got.max().double_value(&[]));
                assert!(lo == 0.0 && hi == 6.0, "{name}: the outputs must reach both edges of the clamp ({lo}..{hi})");
            }
        }
        if cfg!(target_arch = "x86_64") {
            // SAFETY: reads a flag; no arguments.
            assert_eq!(unsafe { cairn_conv_relu6_fusing() }, 1, "the fused oneDNN op failed on this x86 CPU and was switched off");
        }
    }

    /// The test above with oneDNN capped at AVX2 and at SSE4.1, whose
    /// depthwise kernels are other code than AVX-512's (older CPUs run
    /// them): in child processes, as oneDNN reads the cap once. Where the
    /// suite itself runs under a cap, the test above runs at that cap and
    /// this one adds nothing, so it returns.
    #[test]
    fn matches_padded_conv_then_relu6_on_older_kernels() {
        if !cfg!(target_arch = "x86_64") || std::env::var_os("ONEDNN_MAX_CPU_ISA").is_some() {
            return;
        }
        let test = "models::conv_relu6::tests::matches_padded_conv_then_relu6";
        for isa in ["AVX2", "SSE41"] {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", test, "--test-threads", "1"])
                .env("ONEDNN_MAX_CPU_ISA", isa)
                .output()
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && text.contains("1 passed"), "under ONEDNN_MAX_CPU_ISA={isa}:\n{text}");
        }
    }
}
