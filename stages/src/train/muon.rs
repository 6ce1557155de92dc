//! Muon's update for conv filters (K. Jordan, Y. Jin, V. Boza, J. You,
//! F. Cesista, L. Newhouse, J. Bernstein, "Muon: An optimizer for hidden
//! layers in neural networks", 2024, kellerjordan.github.io/posts/muon),
//! in the form airbench94_muon trains CIFAR-10 nets with: Nesterov
//! momentum, the update replaced by the nearest semi-orthogonal matrix
//! (filters flattened to `[out, in·k·k]`, three quintic Newton–Schulz
//! steps), and the filter bank rescaled to Frobenius norm √out before each
//! step instead of weight decay. An orthogonal update moves every
//! direction of a layer at the same rate, which is what lets the short
//! CPU recipe reach the same accuracy in fewer epochs than SGD. The
//! iteration runs in fp32 on every device, so a step is the same function
//! of its inputs wherever the key says it is.

use tch::{Kind, Tensor};

/// The quintic's coefficients, chosen by Jordan to push every singular
/// value of a norm-≤1 matrix towards 1 in few steps.
const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
const NS_STEPS: usize = 3;

/// `g` ([rows, cols]) made approximately semi-orthogonal: U·Vᵀ of its SVD,
/// with singular values in roughly [0.7, 1.2].
pub fn orthogonalise(g: &Tensor) -> Tensor {
    let (a, b, c) = NS_COEFFS;
    let mut x = g.to_kind(Kind::Float);
    x = &x / (x.norm().double_value(&[]) + 1e-7);
    let tall = x.size()[0] > x.size()[1];
    if tall {
        x = x.tr();
    }
    for _ in 0..NS_STEPS {
        let gram = x.matmul(&x.tr());
        let poly = &gram * b + gram.matmul(&gram) * c;
        x = &x * a + poly.matmul(&x);
    }
    if tall {
        x.tr()
    } else {
        x
    }
}

/// One Muon step of the filter bank `var` with gradient `grad` and
/// momentum buffer `buf` (updated in place). Call under `no_grad`.
pub fn step(var: &Tensor, grad: &Tensor, buf: &Tensor, lr: f64, momentum: f64) {
    let _ = buf.shallow_clone().g_mul_scalar_(momentum).g_add_(grad);
    let nesterov = grad + buf * momentum;
    let shape = var.size();
    let out = shape[0];
    let norm = var.norm().double_value(&[]);
    if norm > 0.0 && norm.is_finite() {
        let _ = var.shallow_clone().g_mul_scalar_((out as f64).sqrt() / norm);
    }
    let update = orthogonalise(&nesterov.reshape([out, -1])).reshape(shape.as_slice());
    let _ = var.shallow_clone().g_add_(&(update * -lr));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn orthogonalise_pushes_singular_values_towards_one() {
        let _rng = crate::rng_guard();
        tch::manual_seed(3);
        for shape in [[16, 72], [72, 16]] {
            let g = Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 5.0;
            let (_, s, _) = orthogonalise(&g).svd(true, false);
            let (lo, hi) = (s.min().double_value(&[]), s.max().double_value(&[]));
            assert!(lo > 0.5 && hi < 1.3, "singular values of {shape:?} in [{lo}, {hi}]");
        }
    }

    #[test]
    fn a_step_renormalises_then_moves_by_the_orthogonal_update() {
        let _rng = crate::rng_guard();
        tch::manual_seed(4);
        let var = Tensor::randn([8, 4, 3, 3], (Kind::Float, Device::Cpu)) * 3.0;
        let grad = Tensor::randn([8, 4, 3, 3], (Kind::Float, Device::Cpu));
        let buf = grad.zeros_like();
        let before = var.copy();
        tch::no_grad(|| step(&var, &grad, &buf, 0.1, 0.6));
        assert!(buf.allclose(&grad, 0.0, 0.0, false), "the buffer holds the first gradient");
        let rescaled = &before * (8f64.sqrt() / before.norm().double_value(&[]));
        let expected = &rescaled - orthogonalise(&(&grad * 1.6).reshape([8, -1])).reshape([8, 4, 3, 3]) * 0.1;
        assert!(var.allclose(&expected, 1e-5, 1e-6, false));
        // The update is scale-free: the same step for a 100x gradient.
        let var2 = before.copy();
        let buf2 = grad.zeros_like();
        tch::no_grad(|| step(&var2, &(&grad * 100.0), &buf2, 0.1, 0.6));
        assert!(var2.allclose(&var, 1e-4, 1e-5, false));
    }
}
