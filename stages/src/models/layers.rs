//! Layers shared by the model definitions, with variable names and
//! initialisations matching PyTorch's `nn.Conv2d` / `nn.BatchNorm2d` /
//! `nn.Linear` so weights round-trip with torchvision.
//!
//! Unlike `tch::nn::Conv2D`, these layers compute in the *input's* dtype:
//! the fp32 master weights are cast on the fly. Feeding a bf16 input thus
//! gives bf16 mixed precision (what `torch.autocast` does) on CPU as well as
//! CUDA — tch exposes only CUDA's fp16 autocast — while gradients still
//! flow back to the fp32 weights. BatchNorm takes the bf16 activations with
//! fp32 parameters and running statistics, as autocast does.

use tch::nn::{self, Init};
use tch::Tensor;

/// A 2-D convolution (`weight` [out, in / groups, k, k], optional `bias`).
#[derive(Debug)]
pub struct Conv {
    ws: Tensor,
    bs: Option<Tensor>,
    stride: i64,
    padding: i64,
    groups: i64,
}

/// torchvision's ResNet conv init: Kaiming normal, fan-out, ReLU gain.
pub const FAN_OUT: Init =
    Init::Kaiming { dist: nn::init::NormalOrUniform::Normal, fan: nn::init::FanInOut::FanOut, non_linearity: nn::init::NonLinearity::ReLU };

pub fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, bias: bool) -> Conv {
    let ws = p.var("weight", &[cout, cin, k, k], FAN_OUT);
    // PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    let bound = 1.0 / ((cin * k * k) as f64).sqrt();
    let bs = bias.then(|| p.var("bias", &[cout], Init::Uniform { lo: -bound, up: bound }));
    Conv { ws, bs, stride, padding, groups: 1 }
}

/// A depthwise convolution: one `k`×`k` filter per channel, no bias.
pub fn depthwise(p: nn::Path, channels: i64, k: i64, stride: i64, padding: i64) -> Conv {
    let ws = p.var("weight", &[channels, 1, k, k], FAN_OUT);
    Conv { ws, bs: None, stride, padding, groups: channels }
}

impl Conv {
    /// The (shared, trainable) weight tensor.
    pub fn weight(&self) -> &Tensor {
        &self.ws
    }

    pub fn stride(&self) -> i64 {
        self.stride
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bs.as_ref()
    }

    pub fn groups(&self) -> i64 {
        self.groups
    }

    /// The zeros the conv itself adds on every side.
    pub fn padding(&self) -> i64 {
        self.padding
    }

    /// One filter per channel (groups = channels).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.ws.size()[0]
    }

    /// A 1×1 filter over all channels at stride 1, unpadded: the same
    /// matrix applied to every pixel.
    pub fn is_pointwise(&self) -> bool {
        self.groups == 1 && self.stride == 1 && self.padding == 0 && self.ws.size()[2..] == [1, 1]
    }

    /// This pointwise conv of `x` [N, C, H, W] as one matrix product on
    /// `x`'s `[N·H·W, C]` pixel-major view (no copy where `x` is
    /// channels-last), returned channels-last. Forward and backward are
    /// then three MKL GEMMs, which on a 2-core Xeon made Lite0's trained
    /// tail's whole step 1.05–1.22x faster than with oneDNN's 1×1 conv
    /// primitives, with and without instruction-set caps (BENCHMARKS.md,
    /// "Lite0's 1×1 convs as matrix products"). The sums run in another
    /// order than the conv's, so the last bits differ from
    /// [`nn::Module::forward`]'s.
    pub fn pointwise_as_matmul(&self, x: &Tensor) -> Tensor {
        debug_assert!(self.is_pointwise());
        let (n, c, h, w) = x.size4().expect("a batch of images");
        let k = x.kind();
        let ws = self.ws.to_kind(k).view([-1, c]).tr();
        let pixels = x.permute([0, 2, 3, 1]).reshape([n * h * w, c]);
        let y = match &self.bs {
            Some(b) => b.to_kind(k).addmm(&pixels, &ws),
            None => pixels.mm(&ws),
        };
        y.view([n, h, w, -1]).permute([0, 3, 1, 2])
    }
}

impl Conv {
    /// This convolution with the eval-mode BatchNorm `bn` (epsilon `eps`)
    /// folded in: weight `w·γ/σ`, bias `β + (b − μ)·γ/σ` with `σ = √(var +
    /// eps)`. Built from the live parameters on each call, so gradients
    /// still reach the conv weight and `γ`, `β` (a `freeze_bn` tail).
    pub fn folded(&self, bn: &nn::BatchNorm, eps: f64) -> Conv {
        let inv_std = (&bn.running_var + eps).rsqrt();
        let scale = match &bn.ws {
            Some(g) => g * inv_std,
            None => inv_std,
        };
        let shift = match &self.bs {
            Some(b) => (b - &bn.running_mean) * &scale,
            None => -(&bn.running_mean * &scale),
        };
        let bs = match &bn.bs {
            Some(beta) => beta + shift,
            None => shift,
        };
        let ws = &self.ws * scale.view([-1, 1, 1, 1]);
        Conv { ws, bs: Some(bs), stride: self.stride, padding: self.padding, groups: self.groups }
    }
}

impl nn::Module for Conv {
    fn forward(&self, x: &Tensor) -> Tensor {
        let k = x.kind();
        let bs = self.bs.as_ref().map(|b| b.to_kind(k));
        x.conv2d(&self.ws.to_kind(k), bs.as_ref(), [self.stride], [self.padding], [1], self.groups)
    }
}

/// BatchNorm2d with PyTorch's defaults (weight 1, bias 0, eps 1e-5).
pub fn bn(p: nn::Path, c: i64, momentum: f64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, nn::BatchNormConfig { ws_init: Init::Const(1.0), momentum, ..Default::default() })
}

/// A fully connected layer (`weight` [out, in], optional `bias`).
#[derive(Debug)]
pub struct Linear {
    ws: Tensor,
    bs: Option<Tensor>,
}

pub fn linear(p: nn::Path, cin: i64, cout: i64, bias: bool) -> Linear {
    let bound = 1.0 / (cin as f64).sqrt();
    let ws = p.var("weight", &[cout, cin], Init::Uniform { lo: -bound, up: bound });
    let bs = bias.then(|| p.var("bias", &[cout], Init::Uniform { lo: -bound, up: bound }));
    Linear { ws, bs }
}

impl nn::Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        let k = x.kind();
        let bs = self.bs.as_ref().map(|b| b.to_kind(k));
        x.linear(&self.ws.to_kind(k), bs.as_ref())
    }
}

/// Runs `fs` one after another: a stage of blocks as one function.
pub fn sequence(fs: Vec<nn::FuncT<'static>>) -> nn::FuncT<'static> {
    nn::func_t(move |x, train| fs.iter().fold(x.shallow_clone(), |x, f| nn::ModuleT::forward_t(f, &x, train)))
}

/// Global average pooling, then a linear classifier with bias (`p` names
/// the linear layer): the ImageNet nets' head.
pub fn avg_pool_linear(p: nn::Path, cin: i64, num_classes: i64) -> nn::FuncT<'static> {
    let fc = linear(p, cin, num_classes, true);
    nn::func_t(move |x, _| nn::Module::forward(&fc, &x.mean_dim([2i64, 3].as_slice(), false, None::<tch::Kind>)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, ModuleT};
    use tch::{Device, Kind};

    /// Folding is the same function as the conv and its eval-mode
    /// BatchNorm, and its gradients still reach the weights and `γ`, `β`.
    #[test]
    fn folded_conv_is_conv_then_eval_batchnorm() {
        let _rng = crate::rng_guard();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let eps = 1e-3;
        for (c, groups) in [(conv(&p / "c", 4, 6, 3, 2, 1, true), 1), (depthwise(&p / "d", 4, 5, 1, 2), 4)] {
            let cout = c.weight().size()[0];
            let mut b = nn::batch_norm2d(&p / format!("bn{groups}"), cout, nn::BatchNormConfig { eps, ..Default::default() });
            b.running_mean = Tensor::randn([cout], (Kind::Float, Device::Cpu)) * 0.1;
            b.running_var = Tensor::rand([cout], (Kind::Float, Device::Cpu)) + 0.5;
            tch::no_grad(|| b.ws.as_mut().unwrap().copy_(&(Tensor::rand([cout], (Kind::Float, Device::Cpu)) + 0.5)));
            let x = Tensor::randn([2, 4, 9, 9], (Kind::Float, Device::Cpu));
            let want = b.forward_t(&c.forward(&x), false);
            let got = c.folded(&b, eps).forward(&x);
            assert!(got.allclose(&want, 1e-5, 1e-5, false), "groups {groups}: {}", (&got - &want).abs().max());
            got.sum(None).backward();
            assert!(c.weight().grad().abs().sum(None).double_value(&[]) > 0.0);
            for t in [b.ws.as_ref().unwrap(), b.bs.as_ref().unwrap()] {
                assert!(t.grad().abs().sum(None).double_value(&[]) > 0.0);
            }
        }
    }

    /// The matrix-product form of a 1×1 conv is the conv up to float
    /// rounding, in value and in the gradients of input, weight and bias,
    /// returns channels-last whatever the input's layout, and is only
    /// taken for 1×1 filters at stride 1 without padding.
    #[test]
    fn pointwise_as_matmul_is_the_conv() {
        let _rng = crate::rng_guard();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        for (name, bias, cin, cout, hw) in [("project", false, 672, 112, 6), ("head", true, 320, 1280, 3), ("odd", true, 5, 7, 4)] {
            let c = conv(&p / name, cin, cout, 1, 1, 0, bias);
            assert!(c.is_pointwise());
            let x0 = Tensor::randn([3, cin, hw, hw], (Kind::Float, Device::Cpu));
            for x0 in [crate::models::channels_last(&x0), x0.shallow_clone()] {
                let grads = |f: &dyn Fn(&Tensor) -> Tensor| {
                    vs.trainable_variables().iter_mut().for_each(Tensor::zero_grad);
                    let x = x0.detach().set_requires_grad(true);
                    let y = f(&x);
                    (&y * &y).sum(Kind::Float).backward();
                    (y.detach(), x.grad(), c.weight().grad(), c.bias().map(Tensor::grad))
                };
                let (want, gx, gw, gb) = grads(&|x| c.forward(x));
                let (got, mx, mw, mb) = grads(&|x| c.pointwise_as_matmul(x));
                let close = |a: &Tensor, b: &Tensor| a.allclose(b, 1e-4, 1e-4, false);
                assert!(close(&want, &got), "{name}: max gap {}", (&want - &got).abs().max());
                assert!(close(&gx, &mx) && close(&gw, &mw), "{name}: gradients");
                assert!(gb.zip(mb).is_none_or(|(a, b)| close(&a, &b)), "{name}: bias gradient");
                assert!(got.permute([0, 2, 3, 1]).is_contiguous(), "{name}: channels-last");
            }
        }
        assert!(!conv(&p / "k3", 4, 4, 3, 1, 1, false).is_pointwise());
        assert!(!conv(&p / "s2", 4, 4, 1, 2, 0, false).is_pointwise());
        assert!(!depthwise(&p / "dw", 4, 1, 1, 0).is_pointwise());
    }
}
