use super::*;
use tch::{Device, Kind, Tensor};

use crate::models::channels_last;

/// A BatchNorm over `c` channels with γ, β and running statistics drawn
/// so that the clamp cuts on both sides; `name` keeps variables apart.
fn layer(vs: &nn::VarStore, name: &str, c: i64) -> nn::BatchNorm {
    let mut bn = nn::batch_norm2d(vs.root() / name, c, Default::default());
    tch::manual_seed(7);
    let opts = (Kind::Float, Device::Cpu);
    tch::no_grad(|| {
        bn.ws.as_mut().unwrap().copy_(&(Tensor::rand([c], opts) * 4.0 + 0.5));
        bn.bs.as_mut().unwrap().copy_(&(Tensor::randn([c], opts) + 2.0));
    });
    bn.running_mean = Tensor::randn([c], opts);
    bn.running_var = Tensor::rand([c], opts) + 0.5;
    bn
}

/// Output, input gradient, γ and β gradients for output gradient `dy`.
fn run(f: impl Fn(&Tensor) -> Tensor, bn: &nn::BatchNorm, x: &Tensor, dy: &Tensor) -> [Tensor; 4] {
    for t in [bn.ws.as_ref().unwrap(), bn.bs.as_ref().unwrap()] {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let x = x.detach().set_requires_grad(true);
    let y = f(&x);
    (&y * dy).sum(Kind::Float).backward();
    [y.detach(), x.grad(), bn.ws.as_ref().unwrap().grad(), bn.bs.as_ref().unwrap().grad()]
}

/// Within float rounding of libtorch's `batch_norm` (+ `hardtanh`): the
/// output, the gradients of the input, γ and β, and the running
/// statistics after the step, with and without the clamp, on Lite0's
/// channel counts and map sizes and an odd one.
#[test]
fn matches_libtorch() {
    let _rng = crate::rng_guard();
    for (c, hw, then) in [(672, 6, Then::Relu6), (112, 6, Then::Nothing), (1280, 3, Then::Relu6), (7, 5, Then::Nothing), (7, 5, Then::Relu6)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let (ours, theirs) = (layer(&vs, "ours", c), layer(&vs, "theirs", c));
        tch::manual_seed(c);
        let x = channels_last(&(Tensor::randn([8, c, hw, hw], (Kind::Float, Device::Cpu)) * 3.0 + 1.0));
        let dy = Tensor::randn([8, c, hw, hw], (Kind::Float, Device::Cpu));
        let got = run(|x| train(x, &ours, 0.1, 1e-3, then), &ours, &x, &dy);
        let want = run(|x| libtorch(x, &theirs, 0.1, 1e-3, then), &theirs, &x, &dy);
        for (what, g, w) in [("output", &got[0], &want[0]), ("input gradient", &got[1], &want[1]), ("γ gradient", &got[2], &want[2])]
            .into_iter()
            .chain([("β gradient", &got[3], &want[3])])
            .chain([("running mean", &ours.running_mean, &theirs.running_mean), ("running var", &ours.running_var, &theirs.running_var)])
        {
            let scale = w.abs().max().double_value(&[]).max(1.0);
            let gap = (g - w).abs().max().double_value(&[]);
            assert!(gap <= 2e-5 * scale, "{c} channels at {hw}x{hw}, {then:?}: {what} off by {gap} (of {scale})");
        }
        if then == Then::Relu6 {
            let cut = |v: f64| got[0].eq(v).sum(Kind::Int64).int64_value(&[]);
            assert!(cut(0.0) > 0 && cut(6.0) > 0, "the test's outputs must reach both edges of the clamp");
        }
        assert!(got[0].permute([0, 2, 3, 1]).is_contiguous(), "the output is channels-last");
    }
}

/// Threads split channels for the sums and rows for the rest: one thread
/// and three give the same bits, and so do a channels-last input and a
/// contiguous one.
#[test]
fn does_not_depend_on_threads_or_layout() {
    let _rng = crate::rng_guard();
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(3);
    let x = Tensor::randn([16, 96, 6, 6], (Kind::Float, Device::Cpu));
    let dy = Tensor::randn([16, 96, 6, 6], (Kind::Float, Device::Cpu));
    let before = tch::get_num_threads();
    let step = |threads: i32, x: &Tensor| {
        tch::set_num_threads(threads);
        let bn = layer(&vs, &format!("bn{threads}{}", x.is_contiguous()), 96);
        let out = run(|x| train(x, &bn, 0.1, 1e-3, Then::Relu6), &bn, x, &dy);
        (out, bn.running_mean, bn.running_var)
    };
    let (one, rm1, rv1) = step(1, &channels_last(&x));
    let (three, rm3, rv3) = step(3, &channels_last(&x));
    let (plain, _, _) = step(1, &x);
    tch::set_num_threads(before);
    for i in 0..4 {
        assert!(one[i].equal(&three[i]), "output {i}: one thread against three");
        assert!(one[i].equal(&plain[i]), "output {i}: channels-last against contiguous input");
    }
    assert!(rm1.equal(&rm3) && rv1.equal(&rv3), "running statistics");
}

/// A bf16 activation (mixed precision) takes libtorch's ops, bit for bit.
#[test]
fn other_dtypes_take_libtorch() {
    let _rng = crate::rng_guard();
    let vs = nn::VarStore::new(Device::Cpu);
    let (a, b) = (layer(&vs, "a", 16), layer(&vs, "b", 16));
    tch::manual_seed(5);
    let x = channels_last(&Tensor::randn([4, 16, 5, 5], (Kind::BFloat16, Device::Cpu)));
    let got = tch::no_grad(|| train(&x, &a, 0.1, 1e-3, Then::Relu6));
    let want = tch::no_grad(|| libtorch(&x, &b, 0.1, 1e-3, Then::Relu6));
    assert!(got.equal(&want) && a.running_var.equal(&b.running_var));
}

/// At the clamp's edges (a normalised value of exactly 0 or 6) no
/// gradient passes, as with libtorch's `hardtanh`: channels of −1, 0, 1
/// have mean 0 exactly, so with β = 0 and β = 6 every 0 lands on an edge.
#[test]
fn clamp_edges_pass_no_gradient() {
    let _rng = crate::rng_guard();
    let vs = nn::VarStore::new(Device::Cpu);
    let (ours, theirs) = (layer(&vs, "ours", 2), layer(&vs, "theirs", 2));
    for bn in [&ours, &theirs] {
        tch::no_grad(|| {
            let _ = bn.ws.as_ref().unwrap().shallow_clone().fill_(1.0);
            bn.bs.as_ref().unwrap().shallow_clone().copy_(&Tensor::from_slice(&[0.0f32, 6.0]));
        });
    }
    let x = Tensor::from_slice(&[-1.0f32, 0.0, 1.0]).repeat([24]).view([4, 2, 3, 3]);
    let x = channels_last(&x);
    tch::manual_seed(9);
    let dy = Tensor::randn([4, 2, 3, 3], (Kind::Float, Device::Cpu));
    let got = run(|x| train(x, &ours, 0.1, 1e-3, Then::Relu6), &ours, &x, &dy);
    let want = run(|x| libtorch(x, &theirs, 0.1, 1e-3, Then::Relu6), &theirs, &x, &dy);
    let edges = want[0].eq(0.0).logical_or(&want[0].eq(6.0)).logical_and(&x.eq(0.0)).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(edges, 24, "every 0 of the input must sit on an edge");
    for (what, g, w) in [("output", &got[0], &want[0]), ("input gradient", &got[1], &want[1]), ("γ gradient", &got[2], &want[2]), ("β gradient", &got[3], &want[3])] {
        assert!(g.allclose(w, 1e-5, 1e-5, false), "{what}: {g:?} against {w:?}");
    }
}
