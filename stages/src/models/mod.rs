//! Network definitions as plain functions over `nn::Path` (in the style of
//! tch-rs `vision/resnet.rs`), each cut into named blocks.
//!
//! A [`Net`] is a list of [`Block`]s — `stem`, `layer1`..`layer4` or
//! `group1`..`groupN`, `head`, as declared by
//! [`cairn_kinds::train::ModelSpec::blocks`] — each owning the VarStore
//! prefixes of its parameters. Training freezes blocks by prefix and runs a
//! frozen prefix once to cache its features ([`Net::forward_to`]) and then
//! trains the tail on them ([`Net::forward_from`]); Grad-CAM takes the
//! activation of a named block the same way. Variable names follow
//! torchvision (`conv1`, `bn1`, `layer1.0.conv1`, `fc`), so `.pth` /
//! safetensors weights load without renaming.

pub mod batch_norm;
mod conv_relu6;
pub mod depthwise;
pub mod efficientnet;
pub mod fast;
pub mod layers;
pub mod resnet;

#[cfg(test)]
mod interop_tests;

use std::ops::Range;

use cairn_kinds::train::{Arch, ModelSpec, Normalize, Stem, Tta};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::ctx::{StageError, StageResult};
use crate::device::upload;

/// One named stage of a network.
pub struct Block {
    pub name: String,
    /// VarStore name prefixes (without the trailing `.`) of its variables.
    pub prefixes: Vec<String>,
    f: nn::FuncT<'static>,
}

impl Block {
    pub fn new(name: &str, prefixes: &[&str], f: nn::FuncT<'static>) -> Self {
        Self { name: name.into(), prefixes: prefixes.iter().map(|s| s.to_string()).collect(), f }
    }

    /// Whether VarStore variable `var` belongs to this block.
    pub fn owns(&self, var: &str) -> bool {
        self.prefixes.iter().any(|p| var.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('.')))
    }
}

/// A network as a sequence of named blocks.
pub struct Net {
    pub blocks: Vec<Block>,
}

impl Net {
    pub fn names(&self) -> Vec<&str> {
        self.blocks.iter().map(|b| b.name.as_str()).collect()
    }

    pub fn index(&self, name: &str) -> StageResult<usize> {
        self.blocks
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| StageError::new(format!("no block `{name}` (this model has: {})", self.names().join(", "))))
    }

    /// Runs blocks `range` on `x`; `train(i)` says whether block `i` runs in
    /// training mode (BatchNorm batch statistics and running-stat updates).
    pub fn forward_range(&self, x: &Tensor, range: Range<usize>, train: impl Fn(usize) -> bool) -> Tensor {
        let mut x = x.shallow_clone();
        for i in range {
            x = nn::ModuleT::forward_t(&self.blocks[i].f, &x, train(i));
        }
        x
    }

    /// Input to logits.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_range(x, 0..self.blocks.len(), |_| train)
    }

    /// The activation after block `block` (inclusive).
    pub fn forward_to(&self, x: &Tensor, block: &str, train: bool) -> StageResult<Tensor> {
        let i = self.index(block)?;
        Ok(self.forward_range(x, 0..i + 1, |_| train))
    }

    /// Logits from the activation after block `block`.
    pub fn forward_from(&self, act: &Tensor, block: &str, train: bool) -> StageResult<Tensor> {
        let i = self.index(block)?;
        Ok(self.forward_range(act, i + 1..self.blocks.len(), |_| train))
    }

    /// The block owning VarStore variable `var`.
    pub fn owner(&self, var: &str) -> Option<&Block> {
        self.blocks.iter().find(|b| b.owns(var))
    }
}

/// How batches are fed to a network: normalisation, compute dtype, device.
#[derive(Clone, Copy, Debug)]
pub struct Feed {
    pub normalize: Normalize,
    /// `Float`, or `BFloat16` for mixed precision (see [`layers`]).
    pub kind: Kind,
    pub device: Device,
}

impl Feed {
    /// u8 images `[B, 3, H, W]` → normalised network input, channels-last
    /// (see [`channels_last`]).
    pub fn input(&self, images: &Tensor) -> Tensor {
        let mut x = images.to_device(self.device).to_kind(Kind::Float) / 255.0;
        if let Some((mean, std)) = self.normalize.stats() {
            let m = upload(&Tensor::from_slice(&mean).to_kind(Kind::Float), self.device).view([1, 3, 1, 1]);
            let s = upload(&Tensor::from_slice(&std).to_kind(Kind::Float), self.device).view([1, 3, 1, 1]);
            x = (x - m) / s;
        }
        channels_last(&x.to_kind(self.kind))
    }
}

/// `x` `[B, C, H, W]` laid out channels-last: oneDNN's convolutions (and
/// cuDNN's tensor-core ones) run natively in that layout, while an NCHW
/// input makes every conv reorder its activations (or, for depthwise ones,
/// run a kernel several times slower). Measured on an AMD EPYC, the fast
/// net trains 1.4x faster in fp32 and in bf16 (BENCHMARKS "Training
/// throughput"). The layout follows the input through every layer, but not
/// through `index_select` or `cat`, which return NCHW; tch has no
/// `to(memory_format)`, so a permuted copy makes the same strides.
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// An uninitialised `[n, c, h, w]` tensor of `like`'s kind and device, laid
/// out channels-last when `like` (4-d) is, so what is written into it keeps
/// the layout the convolutions were given.
pub fn empty_in_layout_of(like: &Tensor, [n, c, h, w]: [i64; 4]) -> Tensor {
    let opts = (like.kind(), like.device());
    if like.dim() == 4 && !like.is_contiguous() && like.permute([0, 2, 3, 1]).is_contiguous() {
        Tensor::empty([n, h, w, c], opts).permute([0, 3, 1, 2])
    } else {
        Tensor::empty([n, c, h, w], opts)
    }
}

/// fp32 logits averaged over the `tta` views of the normalised batch `x`;
/// `f` maps a view to its logits. Shifted views pad by reflection, as
/// airbench does, so no black border appears that training never showed.
pub fn tta_logits(x: &Tensor, tta: Tta, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let pair = |v: &Tensor| if tta == Tta::None { f(v) } else { (f(v) + f(&v.flip([3]))) * 0.5 };
    let plain = pair(x);
    if tta != Tta::FlipTranslate {
        return plain;
    }
    let (h, w) = (x.size()[2], x.size()[3]);
    let padded = x.reflection_pad2d([1, 1, 1, 1]);
    let up_left = padded.narrow(2, 0, h).narrow(3, 0, w);
    let down_right = padded.narrow(2, 2, h).narrow(3, 2, w);
    plain * 0.5 + (pair(&up_left) + pair(&down_right)) * 0.25
}

/// fp32 logits of `net` (eval mode) for `n` u8 images, which `rows(first,
/// count)` gives a batch at a time (read from their file, so a test set is
/// never held whole), averaged over the `tta` views and returned on the
/// CPU. `done` hears the number of images scored after each batch.
pub fn predict(
    net: &Net,
    n: i64,
    rows: impl Fn(i64, i64) -> StageResult<Tensor>,
    feed: &Feed,
    batch: i64,
    tta: Tta,
    mut done: impl FnMut(i64),
) -> StageResult<Tensor> {
    tch::no_grad(|| {
        let mut out = Vec::new();
        for start in (0..n).step_by(batch.max(1) as usize) {
            let len = batch.min(n - start);
            let x = feed.input(&rows(start, len)?);
            let y = tta_logits(&x, tta, |v| net.forward_t(v, false).to_kind(Kind::Float));
            out.push(y.to_device(Device::Cpu));
            done(start + len);
        }
        Ok(Tensor::cat(&out, 0))
    })
}

/// Builds the network `spec` describes under `p`. `spec` must have been
/// resolved by the kind's check (per-architecture defaults filled in).
pub fn build(p: &nn::Path, spec: &ModelSpec) -> Net {
    let nc = spec.num_classes;
    let cifar = spec.stem == Some(Stem::Cifar);
    match spec.arch {
        Arch::Resnet18 => resnet::resnet18(p, nc, cifar),
        Arch::Resnet50 => resnet::resnet50(p, nc, cifar),
        Arch::Fast => fast::fast(p, nc, spec.widths.as_deref().unwrap_or(&fast::AIRBENCH94)),
        Arch::EfficientnetLite0 => efficientnet::efficientnet_lite0(p, nc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: Arch, stem: Option<Stem>, widths: Option<Vec<i64>>) -> ModelSpec {
        let s = ModelSpec { arch, num_classes: 10, stem, widths, normalize: cairn_kinds::train::Normalize::Cifar };
        s.resolve("model").unwrap()
    }

    #[test]
    fn blocks_match_declaration_and_own_every_variable() {
        let _rng = crate::rng_guard();
        for s in [
            spec(Arch::Resnet18, None, None),
            spec(Arch::Resnet50, Some(Stem::Cifar), None),
            spec(Arch::Fast, None, Some(vec![8, 16, 16])),
            spec(Arch::EfficientnetLite0, None, None),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = build(&vs.root(), &s);
            assert_eq!(net.names(), s.blocks().iter().map(|s| s.as_str()).collect::<Vec<_>>());
            for name in vs.variables().keys() {
                assert!(net.owner(name).is_some(), "{name} has no owning block");
            }
        }
    }

    #[test]
    fn forward_to_then_from_equals_forward() {
        let _rng = crate::rng_guard();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&vs.root(), &spec(Arch::Resnet18, Some(Stem::Cifar), None));
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let full = net.forward_t(&x, false);
        assert_eq!(full.size(), [2, 10]);
        let act = net.forward_to(&x, "layer3", false).unwrap();
        assert_eq!(act.size(), [2, 256, 8, 8]);
        let tail = net.forward_from(&act, "layer3", false).unwrap();
        assert!(full.allclose(&tail, 1e-6, 1e-6, false));
        assert!(net.forward_to(&x, "layer9", false).is_err());
    }

    #[test]
    fn tta_weights_views_like_airbench() {
        let _rng = crate::rng_guard();
        let x = Tensor::randn([2, 3, 6, 6], (Kind::Float, Device::Cpu));
        // A "net" that reads one pixel makes every view's weight visible.
        let probe = |v: &Tensor| v.select(1, 0).select(1, 2).select(1, 1).unsqueeze(1);
        let at = |v: &Tensor, y: i64, xx: i64| v.select(1, 0).select(1, y).select(1, xx).unsqueeze(1);
        let none = tta_logits(&x, Tta::None, probe);
        assert!(none.equal(&at(&x, 2, 1)));
        let flip = tta_logits(&x, Tta::Flip, probe);
        assert!(flip.allclose(&((at(&x, 2, 1) + at(&x, 2, 4)) * 0.5), 1e-6, 1e-6, false));
        // Shifted up-left by one (reflect pad): pixel (2,1) of the view is
        // (1,0) of x; down-right: (3,2). Mirrors read column 4 → 3 and 5.
        let full = tta_logits(&x, Tta::FlipTranslate, probe);
        let want = (at(&x, 2, 1) + at(&x, 2, 4)) * 0.25
            + (at(&x, 1, 0) + at(&x, 1, 3)) * 0.125
            + (at(&x, 3, 2) + at(&x, 3, 5)) * 0.125;
        assert!(full.allclose(&want, 1e-6, 1e-6, false), "{full} vs {want}");
    }

    #[test]
    fn bf16_input_computes_in_bf16() {
        let _rng = crate::rng_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&vs.root(), &spec(Arch::Fast, None, Some(vec![8, 16])));
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let lo = net.forward_t(&x.to_kind(Kind::BFloat16), true);
        assert_eq!(lo.kind(), Kind::BFloat16);
        let hi = net.forward_t(&x, true);
        let diff = (lo.to_kind(Kind::Float) - &hi).abs().max().double_value(&[]);
        assert!(diff < 0.05, "bf16 and fp32 logits differ by {diff}");
    }
}
