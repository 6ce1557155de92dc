use super::*;
use tch::{Device, Kind, Tensor};

/// (channels, filter, stride, unpadded size): 5×5 filters at both strides
/// with every accumulator width the kernel picks (8, 16, 32, 64 channels a
/// block), uneven padding, and a 3×3 filter, which stays libtorch's.
const CASES: [(i64, i64, i64, i64); 6] = [(8, 5, 1, 6), (48, 5, 2, 6), (96, 5, 1, 3), (192, 5, 2, 7), (24, 5, 1, 5), (16, 3, 1, 4)];

/// Gradients of `x` and `w` through `f`, for a fixed output gradient.
fn grads(f: impl Fn(&Tensor, &Tensor) -> Tensor, x: &Tensor, w: &Tensor, dy: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (x, w) = (x.detach().requires_grad_(true), w.detach().requires_grad_(true));
    let y = f(&x, &w);
    (&y * dy).sum(Kind::Float).backward();
    (y.detach(), x.grad(), w.grad())
}

fn case(c: i64, k: i64, stride: i64, n: i64) -> (Tensor, Tensor, Tensor, Padding) {
    let pad = same_padding(n, n, k, stride);
    let x = crate::models::channels_last(&Tensor::randn([4, c, n, n], (Kind::Float, Device::Cpu)));
    let w = Tensor::randn([c, 1, k, k], (Kind::Float, Device::Cpu));
    let out = (n + stride - 1) / stride;
    let dy = Tensor::randn([4, c, out, out], (Kind::Float, Device::Cpu));
    (x, w, dy, pad)
}

/// Same output and gradients as libtorch's `conv2d` of a padded copy (the
/// weight gradient to float rounding: the kernel sums in its own order),
/// where the conv pads by itself (stride 1) and where it reads a padded
/// copy (stride 2).
#[test]
fn matches_conv2d_and_its_gradients() {
    let _rng = crate::rng_guard();
    tch::manual_seed(0);
    for (c, k, stride, n) in CASES {
        let (x, w, dy, pad) = case(c, k, stride, n);
        let (y0, dx0, dw0) = grads(|x, w| x.constant_pad_nd(pad).conv2d(w, None::<Tensor>, [stride], [0], [1], c), &x, &w, &dy);
        let (y1, dx1, dw1) = grads(|x, w| conv(x, w, stride, pad), &x, &w, &dy);
        assert!(y1.equal(&y0), "{c} channels, {k}x{k}/{stride}: forward differs");
        assert!(dx1.equal(&dx0), "{c} channels, {k}x{k}/{stride}: input gradient differs");
        let scale = dw0.abs().max().double_value(&[]);
        let diff = (&dw1 - &dw0).abs().max().double_value(&[]);
        assert!(diff <= 1e-5 * scale, "{c} channels, {k}x{k}/{stride}: weight gradient off by {diff} (of {scale})");
    }
}

/// Threads split the channels, never a sum: the weight gradient has the
/// same bits on one thread as on three.
#[test]
fn weight_gradient_does_not_depend_on_threads() {
    let _rng = crate::rng_guard();
    tch::manual_seed(1);
    let before = tch::get_num_threads();
    let (x, w, dy, pad) = case(192, 5, 1, 6);
    let dw = |threads| {
        tch::set_num_threads(threads);
        grads(|x, w| conv(x, w, 1, pad), &x, &w, &dy).2
    };
    let (one, three) = (dw(1), dw(3));
    tch::set_num_threads(before);
    assert!(one.equal(&three));
}

/// Where the CPU has AVX2 and FMA (and libtorch is not capped below
/// them), the shim's kernel is the one in use, so the tests above test it.
#[test]
fn kernel_is_used_where_the_cpu_has_avx2_and_fma() {
    #[cfg(target_arch = "x86_64")]
    {
        let capped = std::env::var("ATEN_CPU_CAPABILITY").is_ok_and(|v| v.eq_ignore_ascii_case("default"));
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && !capped {
            assert!(own_weight_gradient());
        }
    }
}
