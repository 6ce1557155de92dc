//! ResNet-18 and ResNet-50 (He et al., "Deep Residual Learning for Image
//! Recognition", 2015, arXiv:1512.03385), laid out exactly as torchvision's
//! `resnet18` / `resnet50` (v1.5: the bottleneck's stride sits on its 3×3
//! conv) so that torchvision checkpoints load by name.
//!
//! The `cifar` stem replaces the 7×7/2 conv and 3×3/2 max-pool with a 3×3/1
//! conv, keeping 32-px inputs at 32×32 into `layer1` instead of 8×8 — the
//! usual adaptation for CIFAR-sized images (and the reason 32→224 upscaling
//! is unnecessary when training from scratch).

use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use super::layers::{avg_pool_linear, bn, conv, sequence, Conv};
use super::{Block, Net};

const BN_MOMENTUM: f64 = 0.1;

fn downsample(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Option<(Conv, nn::BatchNorm)> {
    (stride != 1 || cin != cout).then(|| (conv(&p / "0", cin, cout, 1, stride, 0, false), bn(&p / "1", cout, BN_MOMENTUM)))
}

fn shortcut(ds: &Option<(Conv, nn::BatchNorm)>, x: &Tensor, train: bool) -> Tensor {
    match ds {
        Some((c, b)) => b.forward_t(&c.forward(x), train),
        None => x.shallow_clone(),
    }
}

/// `relu(y + shortcut)`, written into `y`, a BatchNorm's output: as
/// torchvision's `out += identity; relu(out)` (in place). BatchNorm's
/// backward needs its input, not its output, and ReLU's needs only its
/// result, so no saved tensor is overwritten; the two ops in place skip two
/// activation-sized allocations and their writes per block (the `relu_`
/// after each BatchNorm saves one more each), with the same values as
/// out of place.
fn residual(mut y: Tensor, shortcut: &Tensor) -> Tensor {
    y += shortcut;
    y.relu_()
}

fn basic_block(p: nn::Path, cin: i64, cout: i64, stride: i64) -> nn::FuncT<'static> {
    let conv1 = conv(&p / "conv1", cin, cout, 3, stride, 1, false);
    let bn1 = bn(&p / "bn1", cout, BN_MOMENTUM);
    let conv2 = conv(&p / "conv2", cout, cout, 3, 1, 1, false);
    let bn2 = bn(&p / "bn2", cout, BN_MOMENTUM);
    let ds = downsample(&p / "downsample", cin, cout, stride);
    nn::func_t(move |x, train| {
        let y = bn1.forward_t(&conv1.forward(x), train).relu_();
        let y = bn2.forward_t(&conv2.forward(&y), train);
        residual(y, &shortcut(&ds, x, train))
    })
}

fn bottleneck(p: nn::Path, cin: i64, planes: i64, stride: i64) -> nn::FuncT<'static> {
    let cout = 4 * planes;
    let conv1 = conv(&p / "conv1", cin, planes, 1, 1, 0, false);
    let bn1 = bn(&p / "bn1", planes, BN_MOMENTUM);
    let conv2 = conv(&p / "conv2", planes, planes, 3, stride, 1, false);
    let bn2 = bn(&p / "bn2", planes, BN_MOMENTUM);
    let conv3 = conv(&p / "conv3", planes, cout, 1, 1, 0, false);
    let bn3 = bn(&p / "bn3", cout, BN_MOMENTUM);
    let ds = downsample(&p / "downsample", cin, cout, stride);
    nn::func_t(move |x, train| {
        let y = bn1.forward_t(&conv1.forward(x), train).relu_();
        let y = bn2.forward_t(&conv2.forward(&y), train).relu_();
        let y = bn3.forward_t(&conv3.forward(&y), train);
        residual(y, &shortcut(&ds, x, train))
    })
}

/// A `layerN`: `n` residual blocks, the first one striding.
fn layer(p: nn::Path, n: i64, mut make: impl FnMut(nn::Path, usize) -> nn::FuncT<'static>) -> nn::FuncT<'static> {
    sequence((0..n as usize).map(|i| make(&p / i, i)).collect())
}

fn stem(p: &nn::Path, cifar: bool) -> nn::FuncT<'static> {
    let (k, s, pad) = if cifar { (3, 1, 1) } else { (7, 2, 3) };
    let conv1 = conv(p / "conv1", 3, 64, k, s, pad, false);
    let bn1 = bn(p / "bn1", 64, BN_MOMENTUM);
    nn::func_t(move |x, train| {
        let y = bn1.forward_t(&conv1.forward(x), train).relu_();
        if cifar {
            y
        } else {
            y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        }
    })
}

fn resnet(p: &nn::Path, num_classes: i64, cifar: bool, depths: [i64; 4], bottle: bool) -> Net {
    let expansion = if bottle { 4 } else { 1 };
    let mut blocks = vec![Block::new("stem", &["conv1", "bn1"], stem(p, cifar))];
    let mut cin = 64;
    for (i, (&n, planes)) in depths.iter().zip([64, 128, 256, 512]).enumerate() {
        let name = format!("layer{}", i + 1);
        let stride = if i == 0 { 1 } else { 2 };
        let f = layer(p / name.as_str(), n, |q, j| {
            let (c, s) = if j == 0 { (cin, stride) } else { (planes * expansion, 1) };
            if bottle {
                bottleneck(q, c, planes, s)
            } else {
                basic_block(q, c, planes, s)
            }
        });
        cin = planes * expansion;
        blocks.push(Block::new(&name, &[name.as_str()], f));
    }
    blocks.push(Block::new("head", &["fc"], avg_pool_linear(p / "fc", cin, num_classes)));
    Net { blocks }
}

pub fn resnet18(p: &nn::Path, num_classes: i64, cifar: bool) -> Net {
    resnet(p, num_classes, cifar, [2, 2, 2, 2], false)
}

pub fn resnet50(p: &nn::Path, num_classes: i64, cifar: bool) -> Net {
    resnet(p, num_classes, cifar, [3, 4, 6, 3], true)
}
