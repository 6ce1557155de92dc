//! A sanity check that the maps point at what the model uses: blur the
//! `fraction` most salient pixels of each image (by its predicted-class map)
//! and measure how far the predicted class's confidence drops, against
//! blurring as many pixels chosen at random. A map that explains the
//! decision should cause the larger drop (a deletion test in the spirit of
//! Petsiuk et al.'s RISE metrics). Blurring rather than zeroing keeps the
//! image's colour statistics, so the drop is not just the effect of an
//! out-of-distribution black patch.

use tch::{Kind, Tensor};

/// A normalised 1-D Gaussian of standard deviation `sigma`, radius 3σ.
fn gaussian(sigma: f64) -> Tensor {
    let r = (3.0 * sigma).ceil() as i64;
    let xs: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32).collect();
    let k = Tensor::from_slice(&xs);
    &k / k.sum(Kind::Float)
}

/// Gaussian blur of float images N×C×H×W, edges replicated.
pub fn blur(x: &Tensor, sigma: f64) -> Tensor {
    let c = x.size()[1];
    let k = gaussian(sigma).to_device(x.device());
    let r = (k.size()[0] - 1) / 2;
    let kh = k.view([1, 1, 1, -1]).repeat([c, 1, 1, 1]);
    let kv = k.view([1, 1, -1, 1]).repeat([c, 1, 1, 1]);
    let y = x.pad([r, r, 0, 0], "replicate", None).conv2d(&kh, None::<Tensor>, [1, 1], [0, 0], [1, 1], c);
    y.pad([0, 0, r, r], "replicate", None).conv2d(&kv, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
}

/// Masks (N×1×H×W, 1 = blur) of the `count` highest-`scores` pixels.
pub fn top_mask(scores: &Tensor, count: i64) -> Tensor {
    let size = scores.size();
    let flat = scores.flatten(1, -1);
    let (_, idx) = flat.topk(count, 1, true, false);
    let mask = flat.zeros_like().scatter_value(1, &idx, 1.0);
    mask.view([size[0], 1, size[1], size[2]])
}

/// `x` with the masked pixels replaced by their blurred values.
pub fn apply(x: &Tensor, blurred: &Tensor, mask: &Tensor) -> Tensor {
    x * (1.0 - mask) + blurred * mask
}

/// Random scores in [0, 1) for the baseline mask, reproducible from
/// `seed`. Drawn from the training loop's private SplitMix64 generator, not
/// libtorch's global one, which anything else in the process (another
/// test thread, say) may draw from between a reseed and the draw.
pub fn random_scores(like: &Tensor, seed: u64) -> Tensor {
    let mut rng = crate::train::batches::Rng::new(seed);
    // The top 24 bits: exactly representable in an f32.
    let xs: Vec<f32> = (0..like.numel()).map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32).collect();
    Tensor::from_slice(&xs).view(like.size().as_slice()).to_device(like.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn blur_keeps_constants_and_mass() {
        let x = Tensor::full([1, 3, 12, 12], 7.0, (Kind::Float, Device::Cpu));
        let y = blur(&x, 2.0);
        assert_eq!(y.size(), x.size());
        assert!((y - 7.0).abs().max().double_value(&[]) < 1e-4);
        let spike = Tensor::zeros([1, 1, 21, 21], (Kind::Float, Device::Cpu));
        let _ = spike.get(0).get(0).get(10).get(10).fill_(1.0);
        let b = blur(&spike, 1.5);
        assert!((b.sum(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-4, "interior blur preserves mass");
        assert!(b.get(0).get(0).get(10).get(10).double_value(&[]) < 0.2);
    }

    #[test]
    fn top_mask_marks_exactly_the_highest_pixels() {
        let scores = Tensor::from_slice(&[0.1f32, 0.9, 0.5, 0.7]).view([1, 2, 2]);
        let m = top_mask(&scores, 2);
        let got: Vec<f32> = Vec::try_from(m.flatten(0, -1)).unwrap();
        assert_eq!(got, [0.0, 1.0, 0.0, 1.0]);
        let a = random_scores(&scores, 3);
        let b = random_scores(&scores, 3);
        assert!(a.equal(&b));
    }
}
