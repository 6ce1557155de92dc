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

/// Threads split runs of rows for the sums and rows for the rest: one
/// thread and three give the same bits, and so do a channels-last input
/// and a contiguous one.
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

/// The shim's arithmetic, in plain Rust, in the order its doc states: each
/// channel's sums in float over runs of 64 rows in row order, the runs'
/// totals in double in run order. `x` and `dy` are [M, C] rows; returns
/// the output, input gradient, γ and β gradients, running mean and
/// variance, each as rows of floats.
fn reference(x: &[f32], dy: &[f32], c: usize, gamma: &[f32], beta: &[f32], running: (&[f32], &[f32])) -> [Vec<f32>; 6] {
    let (m, momentum, eps) = (x.len() / c, 0.1f64, 1e-3f64);
    let sums = |term: &dyn Fn(usize, usize) -> (f32, f32)| {
        let (mut su, mut sv) = (vec![0f64; c], vec![0f64; c]);
        for run in (0..m).collect::<Vec<_>>().chunks(64) {
            for ch in 0..c {
                let (mut fu, mut fv) = (0f32, 0f32);
                for &r in run {
                    let (u, v) = term(r, ch);
                    fu += u;
                    fv += v;
                }
                su[ch] += f64::from(fu);
                sv[ch] += f64::from(fv);
            }
        }
        (su, sv)
    };
    let (sum, sq) = sums(&|r, ch| {
        let u = x[r * c + ch] - x[ch];
        (u, u * u)
    });
    let n = m as f64;
    let (mut a, mut b, mut mean, mut invstd, mut rm, mut rv) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for ch in 0..c {
        let shifted = sum[ch] / n;
        let var = (sq[ch] / n - shifted * shifted).max(0.0);
        let mu = f64::from(x[ch]) + shifted;
        mean.push(mu as f32);
        invstd.push(1.0 / (var + eps).sqrt());
        a.push((f64::from(gamma[ch]) * invstd[ch]) as f32);
        b.push((f64::from(beta[ch]) - mu * f64::from(a[ch])) as f32);
        rm.push(((1.0 - momentum) * f64::from(running.0[ch]) + momentum * mu) as f32);
        rv.push(((1.0 - momentum) * f64::from(running.1[ch]) + momentum * var * n / (n - 1.0)) as f32);
    }
    let at = |r: usize, ch: usize| x[r * c + ch] * a[ch] + b[ch];
    let g = |r: usize, ch: usize| if at(r, ch) > 0.0 && at(r, ch) < 6.0 { dy[r * c + ch] } else { 0.0 };
    let (sg, sgx) = sums(&|r, ch| (g(r, ch), g(r, ch) * (x[r * c + ch] - mean[ch])));
    let mg: Vec<f32> = sg.iter().map(|s| (s / n) as f32).collect();
    let k: Vec<f32> = (0..c).map(|ch| (sgx[ch] / n * invstd[ch] * invstd[ch]) as f32).collect();
    let each = |f: &dyn Fn(usize, usize) -> f32| (0..m * c).map(|i| f(i / c, i % c)).collect::<Vec<f32>>();
    [
        each(&|r, ch| at(r, ch).clamp(0.0, 6.0)),
        each(&|r, ch| (g(r, ch) - mg[ch] - (x[r * c + ch] - mean[ch]) * k[ch]) * a[ch]),
        (0..c).map(|ch| (sgx[ch] * invstd[ch]) as f32).collect(),
        sg.iter().map(|&s| s as f32).collect(),
        rm,
        rv,
    ]
}

/// The shim follows the order of summation its doc states, bit for bit,
/// on three threads and several runs of rows, the last one short (225
/// rows): the trained weights of every Lite0 `train` stage hang on these
/// bits, so a change to how the sums split across threads must keep them
/// or bump the kind's version.
#[test]
fn sums_in_the_documented_order() {
    let _rng = crate::rng_guard();
    let vs = nn::VarStore::new(Device::Cpu);
    let c = 40;
    let bn = layer(&vs, "bn", c);
    tch::manual_seed(11);
    let x = channels_last(&(Tensor::randn([9, c, 5, 5], (Kind::Float, Device::Cpu)) * 2.0 + 3.0));
    let dy = channels_last(&Tensor::randn([9, c, 5, 5], (Kind::Float, Device::Cpu)));
    let rows = |t: &Tensor| Vec::<f32>::try_from(t.permute([0, 2, 3, 1]).contiguous().view([-1])).unwrap();
    let values = |t: &Tensor| Vec::<f32>::try_from(t.detach().contiguous()).unwrap();
    let (gamma, beta) = (values(bn.ws.as_ref().unwrap()), values(bn.bs.as_ref().unwrap()));
    let want = reference(&rows(&x), &rows(&dy), c as usize, &gamma, &beta, (&values(&bn.running_mean), &values(&bn.running_var)));
    let before = tch::get_num_threads();
    tch::set_num_threads(3);
    let got = run(|x| train(x, &bn, 0.1, 1e-3, Then::Relu6), &bn, &x, &dy);
    tch::set_num_threads(before);
    let got = [rows(&got[0]), rows(&got[1]), values(&got[2]), values(&got[3]), values(&bn.running_mean), values(&bn.running_var)];
    let names = ["output", "input gradient", "γ gradient", "β gradient", "running mean", "running variance"];
    for ((name, g), w) in names.iter().zip(&got).zip(&want) {
        let same = g.iter().zip(w).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same && g.len() == w.len(), "{name}: the shim's bits differ from the documented order's");
    }
    assert!(want[0].contains(&0.0) && want[0].contains(&6.0), "the outputs must reach both edges of the clamp");
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
