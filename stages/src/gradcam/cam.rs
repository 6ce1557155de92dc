//! The Grad-CAM computation itself (Selvaraju et al., arXiv 1610.02391,
//! eq. 1–2). With A the activations of the explained block (N×K×h×w) and
//! y_c the target class's logit, the weight of channel k is the spatial mean
//! of the gradient, α_k = mean_{i,j} ∂y_c/∂A_k[i,j]; the map is
//! ReLU(Σ_k α_k A_k), upsampled bilinearly to the input size and divided by
//! its maximum so that it lies in [0, 1] with 0 meaning "no positive
//! evidence" (an all-zero map stays zero rather than being stretched).
//!
//! The network is split at the block: `features` runs up to it without
//! gradients (nothing before the block needs them), `head` runs the rest
//! with gradients enabled on A only. One backward pass serves a whole batch:
//! in eval mode each image's logits depend on its own activations alone, so
//! the gradient of Σ_n y_{n,c_n} with respect to A_n is ∂y_{n,c_n}/∂A_n.

use tch::{Kind, Tensor};

/// Grad-CAM maps (N×H×W, f32 in [0, 1], on `x`'s device) of `targets`
/// (i64 class per image) for input `x` (N×C×H×W).
pub fn grad_cam(x: &Tensor, targets: &Tensor, features: impl Fn(&Tensor) -> Tensor, head: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let size = x.size();
    let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
    let a = tch::no_grad(|| features(x)).to_kind(Kind::Float).detach().set_requires_grad(true);
    let logits = tch::with_grad(|| head(&a)).to_kind(Kind::Float);
    let chosen = logits.gather(1, &targets.to_device(logits.device()).view([-1, 1]), false).sum(Kind::Float);
    let grads = Tensor::run_backward(&[chosen], &[&a], false, false);
    tch::no_grad(|| {
        let alpha = grads[0].mean_dim(&[2i64, 3][..], true, Kind::Float);
        let cam = (&alpha * &a).sum_dim_intlist(&[1i64][..], true, Kind::Float).relu();
        let up = cam.upsample_bilinear2d([h, w], false, None, None).squeeze_dim(1);
        let peak = up.amax([1, 2], true);
        // Dividing by a zero peak would give NaN; such maps are all zero.
        up / peak.clamp_min(f32::MIN_POSITIVE as f64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two evidence channels pooled 4× down, then global-average-pool and a
    /// linear layer: class 0 = channel 0 minus channel 1, class 1 the
    /// opposite. Its Grad-CAM is known in closed form: α = ±[1, -1]/16.
    fn tiny() -> (impl Fn(&Tensor) -> Tensor, impl Fn(&Tensor) -> Tensor) {
        let w = Tensor::from_slice(&[1.0f32, -1.0, -1.0, 1.0]).view([2, 2]);
        let features = |x: &Tensor| x.avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None);
        let head = move |a: &Tensor| a.mean_dim(&[2i64, 3][..], false, Kind::Float).matmul(&w.tr());
        (features, head)
    }

    fn image() -> Tensor {
        // Channel 0 bright in the top-left quadrant, channel 1 bottom-right.
        let x = Tensor::zeros([1, 2, 16, 16], (Kind::Float, Device::Cpu));
        let _ = x.get(0).get(0).narrow(0, 0, 8).narrow(1, 0, 8).fill_(1.0);
        let _ = x.get(0).get(1).narrow(0, 8, 8).narrow(1, 8, 8).fill_(1.0);
        x
    }

    fn argmax_rc(map: &Tensor) -> (i64, i64) {
        let i = map.flatten(0, -1).argmax(0, false).int64_value(&[]);
        (i / 16, i % 16)
    }

    #[test]
    fn evidence_region_is_where_the_map_peaks() {
        let (f, h) = tiny();
        let x = image();
        let cam0 = grad_cam(&x, &Tensor::from_slice(&[0i64]), &f, &h).get(0);
        let cam1 = grad_cam(&x, &Tensor::from_slice(&[1i64]), &f, &h).get(0);
        let (r, c) = argmax_rc(&cam0);
        assert!(r < 8 && c < 8, "class 0 should peak top-left, peaked at {r},{c}");
        let (r, c) = argmax_rc(&cam1);
        assert!(r >= 8 && c >= 8, "class 1 should peak bottom-right, peaked at {r},{c}");
        // The other class's region carries no positive evidence.
        assert_eq!(cam0.narrow(0, 12, 4).narrow(1, 12, 4).max().double_value(&[]), 0.0);
        assert!((cam0.max().double_value(&[]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn equals_the_closed_form_without_upsampling() {
        // Features = identity, so the map is at input resolution and
        // ReLU(Σ α_k A_k) can be written out by hand.
        let w = Tensor::from_slice(&[2.0f32, -1.0, 0.5, 3.0]).view([2, 2]);
        let head = |a: &Tensor| a.mean_dim(&[2i64, 3][..], false, Kind::Float).matmul(&w.tr());
        let vals: Vec<f32> = (0..18).map(|i| ((i * 7) % 11) as f32 - 4.0).collect();
        let a = Tensor::from_slice(&vals).view([1, 2, 3, 3]);
        let cam = grad_cam(&a, &Tensor::from_slice(&[0i64]), |x| x.shallow_clone(), head);
        let got: Vec<f32> = Vec::try_from(cam.flatten(0, -1)).unwrap();
        let raw: Vec<f32> = (0..9).map(|p| ((2.0 / 9.0) * vals[p] + (-1.0 / 9.0) * vals[9 + p]).max(0.0)).collect();
        let peak = raw.iter().cloned().fold(0.0, f32::max);
        for (g, r) in got.iter().zip(&raw) {
            assert!((g - r / peak).abs() < 1e-5, "{got:?} vs {raw:?}");
        }
    }

    #[test]
    fn no_positive_evidence_gives_a_zero_map() {
        let (f, h) = tiny();
        let x = Tensor::zeros([1, 2, 16, 16], (Kind::Float, Device::Cpu));
        let cam = grad_cam(&x, &Tensor::from_slice(&[0i64]), &f, &h);
        assert_eq!(cam.abs().max().double_value(&[]), 0.0);
    }
}
