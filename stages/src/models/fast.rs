//! A small, fast CIFAR net for CPU budgets, after Keller Jordan's airbench
//! ("94% on CIFAR-10 in 3.29 Seconds on a Single GPU", 2024,
//! arXiv:2404.00498), itself descended from the ResNet-9 "DAWNBench" nets
//! (Page, "How to train your ResNet", 2018).
//!
//! Layout: a 2×2 `stem` conv (no padding, 24 channels, GELU), then one
//! `groupN` per width — conv 3×3 → max-pool 2 → BN → GELU → conv 3×3 → BN →
//! GELU, each halving the resolution — and a `head` of global max-pool,
//! a bias-free linear layer and airbench's fixed 1/9 logit scale. There
//! are no residual connections: at this depth the BN'd plain net trains
//! as fast and costs less. As in airbench, the 3×3 convs start as
//! identities on their first channels (Dirac init, an implicit residual),
//! BatchNorm scales stay fixed at 1 (only the shifts learn), and the
//! whitening stem's filters are never trained.

use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

use super::layers::{bn, conv, linear, Conv};
use super::{Block, Net};

/// airbench94's group widths.
pub const AIRBENCH94: [i64; 3] = [64, 256, 256];
/// 2 × 3 channels × 2×2 patch: enough filters to whiten 2×2 patches.
pub const STEM_WIDTH: i64 = 24;
/// Short runs need running statistics that follow the weights closely.
const BN_MOMENTUM: f64 = 0.4;
const LOGIT_SCALE: f64 = 1.0 / 9.0;

/// A 3×3 conv whose first `min(cin, cout)` filters pass their own input
/// channel through unchanged.
fn dirac_conv(p: nn::Path, cin: i64, cout: i64) -> Conv {
    let c = conv(p, cin, cout, 3, 1, 1, false);
    let m = cin.min(cout);
    let dirac = Tensor::zeros([m, cin, 3, 3], (Kind::Float, c.weight().device()));
    tch::no_grad(|| {
        dirac.narrow(2, 1, 1).narrow(3, 1, 1).copy_(&Tensor::eye_m(m, cin, (Kind::Float, dirac.device())).view([m, cin, 1, 1]));
        c.weight().narrow(0, 0, m).copy_(&dirac);
    });
    c
}

/// BatchNorm with the scale fixed at 1: airbench's choice, which leaves the
/// conv weights' norm as the only scale and lets the shifts take a high
/// learning rate (`bias_lr_scale`).
fn bn_shift_only(p: nn::Path, c: i64) -> nn::BatchNorm {
    let b = bn(p, c, BN_MOMENTUM);
    if let Some(w) = &b.ws {
        let _ = w.shallow_clone().set_requires_grad(false);
    }
    b
}

fn group(p: nn::Path, cin: i64, cout: i64) -> nn::FuncT<'static> {
    let conv1 = dirac_conv(&p / "conv1", cin, cout);
    let bn1 = bn_shift_only(&p / "bn1", cout);
    let conv2 = dirac_conv(&p / "conv2", cout, cout);
    let bn2 = bn_shift_only(&p / "bn2", cout);
    nn::func_t(move |x, train| {
        let y = conv1.forward(x).max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        let y = bn1.forward_t(&y, train).gelu("none");
        bn2.forward_t(&conv2.forward(&y), train).gelu("none")
    })
}

pub fn fast(p: &nn::Path, num_classes: i64, widths: &[i64]) -> Net {
    let stem_conv = conv(p / "stem" / "conv", 3, STEM_WIDTH, 2, 1, 0, true);
    // The stem's filters are set by `whiten_stem` (or loaded) and fixed.
    let _ = stem_conv.weight().shallow_clone().set_requires_grad(false);
    let mut blocks = vec![Block::new("stem", &["stem"], nn::func_t(move |x, _| stem_conv.forward(x).gelu("none")))];
    let mut cin = STEM_WIDTH;
    for (i, &w) in widths.iter().enumerate() {
        let name = format!("group{}", i + 1);
        blocks.push(Block::new(&name, &[name.as_str()], group(p / name.as_str(), cin, w)));
        cin = w;
    }
    let fc = linear(p / "head" / "fc", cin, num_classes, false);
    let head = nn::func_t(move |x, _| fc.forward(&x.amax([2i64, 3].as_slice(), false)) * LOGIT_SCALE);
    blocks.push(Block::new("head", &["head"], head));
    Net { blocks }
}

/// Initialises the stem as a whitening filter bank, as airbench does: the
/// eigenvectors of the 2×2-patch covariance of `x` (normalised inputs),
/// scaled by 1/sqrt(eigenvalue), and their negations (GELU keeps both
/// signs apart). The first layer then starts out decorrelating its input,
/// which removes a slow phase from the start of short runs.
pub fn whiten_stem(vs: &nn::VarStore, x: &tch::Tensor) -> Result<(), tch::TchError> {
    let eps = 5e-4;
    let c = x.size()[1];
    let patches = x.to_kind(tch::Kind::Double).unfold(2, 2, 1).unfold(3, 2, 1); // [N, C, H', W', 2, 2]
    let patches = patches.permute([0, 2, 3, 1, 4, 5]).reshape([-1, c * 4]);
    let cov = patches.transpose(0, 1).matmul(&patches) / patches.size()[0] as f64;
    let (vals, vecs) = cov.f_linalg_eigh("U")?;
    let filters = vecs.transpose(0, 1).reshape([-1, c, 2, 2]) / (vals.clamp_min(0.0) + eps).sqrt().view([-1, 1, 1, 1]);
    let w = tch::Tensor::cat(&[&filters, &(-&filters)], 0).to_kind(tch::Kind::Float);
    let vars = vs.variables();
    let (mut weight, mut bias) = match (vars.get("stem.conv.weight"), vars.get("stem.conv.bias")) {
        (Some(w), Some(b)) => (w.shallow_clone(), b.shallow_clone()),
        _ => return Err(tch::TchError::Kind("no fast-net stem to whiten".into())),
    };
    if weight.size() != w.size() {
        return Err(tch::TchError::Shape(format!("stem is {:?}, whitening gives {:?}", weight.size(), w.size())));
    }
    tch::no_grad(|| -> Result<(), tch::TchError> {
        weight.f_copy_(&w.to_device(weight.device()))?;
        let _ = bias.f_zero_()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn groups_start_as_identities_with_fixed_scales() {
        let _rng = crate::rng_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = fast(&vs.root(), 10, &[8, 16]);
        let v = vs.variables();
        let w = &v["group2.conv1.weight"]; // [16, 8, 3, 3]: the first 8 filters are identities
        assert_eq!(w.double_value(&[3, 3, 1, 1]), 1.0);
        assert_eq!(w.double_value(&[3, 2, 1, 1]), 0.0);
        assert_eq!(w.double_value(&[3, 3, 0, 1]), 0.0);
        assert!(!v["group1.bn1.weight"].requires_grad() && v["group1.bn1.bias"].requires_grad());
        assert!(!v["stem.conv.weight"].requires_grad() && v["stem.conv.bias"].requires_grad());
    }

    #[test]
    fn whitened_stem_decorrelates_patches() {
        let _rng = crate::rng_guard();
        tch::manual_seed(0);
        // Strongly correlated channels: all three copies of one noise image.
        let base = Tensor::randn([64, 1, 8, 8], (Kind::Float, Device::Cpu));
        let x = Tensor::cat(&[&base, &(&base * 0.9), &(&base * 1.1)], 1) + Tensor::randn([64, 3, 8, 8], (Kind::Float, Device::Cpu)) * 0.1;
        let vs = nn::VarStore::new(Device::Cpu);
        let net = fast(&vs.root(), 10, &[8]);
        whiten_stem(&vs, &x).unwrap();
        let w = vs.variables()["stem.conv.weight"].shallow_clone();
        let y = x.conv2d(&w.narrow(0, 0, 12), None::<Tensor>, [1], [0], [1], 1); // the positive half
        let f = y.permute([0, 2, 3, 1]).reshape([-1, 12]).to_kind(Kind::Double);
        let cov = f.transpose(0, 1).matmul(&f) / f.size()[0] as f64;
        let off = (&cov - cov.diag(0).diag_embed(0, -2, -1)).abs().max().double_value(&[]);
        assert!(off < 0.05, "whitened features still correlate: {off}");
        assert_eq!(net.forward_t(&x, false).size(), [64, 10]);
    }
}
