//! Optimizers and learning-rate schedules for the `train` kind.
//!
//! Written out rather than taken from `tch::nn::Optimizer` for two reasons:
//! weight decay must skip BatchNorm parameters and biases (decaying them
//! hurts short runs, and every speed-run recipe exempts them), and frozen
//! blocks must hold no optimizer state at all. Updates follow PyTorch's
//! `SGD(nesterov=True)` and `AdamW` exactly.

use cairn_kinds::train::{Optimizer, Schedule};
use tch::Tensor;

struct Param {
    var: Tensor,
    decay: bool,
    /// Multiplies the step's learning rate (`bias_lr_scale` for 1-D params).
    lr_scale: f64,
    m: Option<Tensor>,
    v: Option<Tensor>,
}

pub struct Optim {
    kind: Optimizer,
    params: Vec<Param>,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    t: i32,
}

impl Optim {
    /// `vars` are the trainable variables; those with more than one
    /// dimension (conv and linear weights) are decayed, the others (biases,
    /// BatchNorm shifts and scales) step at `bias_lr_scale` × the rate.
    pub fn new(kind: Optimizer, vars: Vec<Tensor>, momentum: f64, nesterov: bool, weight_decay: f64, bias_lr_scale: f64) -> Self {
        let params = vars
            .into_iter()
            .map(|var| {
                let matrix = var.dim() > 1;
                Param { decay: matrix, lr_scale: if matrix { 1.0 } else { bias_lr_scale }, var, m: None, v: None }
            })
            .collect();
        Self { kind, params, momentum, nesterov, weight_decay, t: 0 }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    pub fn step(&mut self, lr: f64) {
        self.t += 1;
        let (mom, wd, t) = (self.momentum, self.weight_decay, self.t);
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                let lr = lr * p.lr_scale;
                match self.kind {
                    Optimizer::Sgd => {
                        let g = if p.decay && wd > 0.0 { g + &p.var * wd } else { g };
                        let buf = match p.m.take() {
                            Some(mut b) => {
                                let _ = b.g_mul_scalar_(mom).g_add_(&g);
                                b
                            }
                            None => g.copy(),
                        };
                        let d = if self.nesterov { &g + &buf * mom } else { buf.shallow_clone() };
                        let _ = p.var.g_sub_(&(d * lr));
                        p.m = Some(buf);
                    }
                    Optimizer::Adamw => {
                        let (b1, b2, eps) = (mom, 0.999, 1e-8);
                        if p.decay && wd > 0.0 {
                            let _ = p.var.g_mul_scalar_(1.0 - lr * wd);
                        }
                        let mut m = p.m.take().unwrap_or_else(|| g.zeros_like());
                        let mut v = p.v.take().unwrap_or_else(|| g.zeros_like());
                        let _ = m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                        let _ = v.g_mul_scalar_(b2).g_add_(&(&g * &g * (1.0 - b2)));
                        let mhat = &m / (1.0 - b1.powi(t));
                        let vhat = &v / (1.0 - b2.powi(t));
                        let _ = p.var.g_sub_(&(mhat / (vhat.sqrt() + eps) * lr));
                        p.m = Some(m);
                        p.v = Some(v);
                    }
                }
            }
        });
    }
}

/// Lookahead weight averaging (Zhang et al., "Lookahead Optimizer: k steps
/// forward, 1 step back", arXiv:1907.08610) in airbench's form: once 30%
/// of the steps are done, every 5th step pulls the weights to an
/// exponential average of themselves whose decay rises as (step/total)³,
/// so early averaging is light and the end of training is smoothed
/// strongly. BatchNorm running statistics are averaged too; they are
/// weights of the function being evaluated.
pub struct Lookahead {
    total: usize,
    avg: Option<Vec<(Tensor, Tensor)>>,
}

const LOOKAHEAD_START: f64 = 0.3;
const LOOKAHEAD_EVERY: usize = 5;
const LOOKAHEAD_DECAY: f64 = 0.95;
const LOOKAHEAD_POW: i32 = 3;

impl Lookahead {
    pub fn new(total: usize) -> Self {
        Self { total, avg: None }
    }

    /// Call after optimizer step number `step` (1-based).
    pub fn after_step(&mut self, vs: &tch::nn::VarStore, step: usize) {
        if (step as f64) < LOOKAHEAD_START * self.total as f64 || step % LOOKAHEAD_EVERY != 0 {
            return;
        }
        match &self.avg {
            None => {
                let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.is_floating_point()).collect();
                vars.sort_by(|a, b| a.0.cmp(&b.0));
                self.avg = Some(vars.into_iter().map(|(_, v)| (v.detach().copy(), v)).collect());
            }
            Some(_) => {
                let base = LOOKAHEAD_DECAY.powi(LOOKAHEAD_EVERY as i32);
                self.pull(base * (step as f64 / self.total as f64).powi(LOOKAHEAD_POW));
            }
        }
    }

    /// Ends an epoch on the averaged weights.
    pub fn end_epoch(&mut self) {
        self.pull(1.0);
    }

    /// avg ← decay·avg + (1−decay)·w, then w ← avg.
    fn pull(&mut self, decay: f64) {
        let Some(avg) = self.avg.as_mut() else { return };
        tch::no_grad(|| {
            for (a, w) in avg.iter_mut() {
                let _ = a.g_mul_scalar_(decay).g_add_(&(&*w * (1.0 - decay)));
                let _ = w.copy_(a);
            }
        });
    }
}

/// The learning rate at `step` (0-based) of `total`, peaking at `lr` after
/// a linear warm-up over `warmup` × `total` steps.
pub fn lr_at(schedule: Schedule, lr: f64, warmup: f64, step: usize, total: usize) -> f64 {
    let warm = (warmup * total as f64).round() as usize;
    if step < warm {
        return lr * (step + 1) as f64 / warm as f64;
    }
    let frac = (step - warm) as f64 / (total - warm).max(1) as f64;
    match schedule {
        Schedule::Constant => lr,
        Schedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()),
        Schedule::Onecycle => lr * (1.0 - frac),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn schedules_warm_up_then_decay() {
        let f = |s, i| lr_at(s, 1.0, 0.2, i, 10);
        assert_eq!(f(Schedule::Onecycle, 0), 0.5);
        assert_eq!(f(Schedule::Onecycle, 1), 1.0);
        assert_eq!(f(Schedule::Onecycle, 2), 1.0);
        assert!((f(Schedule::Onecycle, 6) - 0.5).abs() < 1e-12);
        assert!((f(Schedule::Cosine, 6) - 0.5).abs() < 1e-12);
        assert_eq!(f(Schedule::Constant, 9), 1.0);
    }

    #[test]
    fn sgd_nesterov_matches_pytorch_formula() {
        // One parameter, grad 1 each step, lr 0.1, momentum 0.9, no decay:
        // PyTorch gives p = -0.1*(1+0.9) then -0.1*(1+0.9*1.9) more.
        let w = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut o = Optim::new(Optimizer::Sgd, vec![w.shallow_clone()], 0.9, true, 0.0, 1.0);
        for _ in 0..2 {
            o.zero_grad();
            w.sum(Kind::Float).backward();
            o.step(0.1);
        }
        let want = -0.1 * 1.9 - 0.1 * (1.0 + 0.9 * 1.9);
        assert!((w.double_value(&[0]) - want).abs() < 1e-6);
    }

    #[test]
    fn bias_lr_scale_speeds_up_only_vectors() {
        let b = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let w = Tensor::zeros([1, 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut o = Optim::new(Optimizer::Sgd, vec![b.shallow_clone(), w.shallow_clone()], 0.0, false, 0.0, 64.0);
        o.zero_grad();
        (b.sum(Kind::Float) + w.sum(Kind::Float)).backward();
        o.step(0.01);
        assert!((b.double_value(&[0]) + 0.64).abs() < 1e-6);
        assert!((w.double_value(&[0, 0]) + 0.01).abs() < 1e-6);
    }

    #[test]
    fn lookahead_averages_late_and_ends_epochs_on_the_average() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let mut w = vs.root().zeros("w", &[1]);
        let mut la = Lookahead::new(100);
        let set = |w: &mut Tensor, x: f64| tch::no_grad(|| {
            let _ = w.fill_(x);
        });
        set(&mut w, 1.0);
        la.after_step(&vs, 25); // before 30%: nothing
        assert!(la.avg.is_none());
        la.after_step(&vs, 30); // first: snapshot 1.0
        set(&mut w, 3.0);
        la.after_step(&vs, 50); // decay 0.95^5 * 0.5^3
        let d = 0.95f64.powi(5) * 0.125;
        let want = d * 1.0 + (1.0 - d) * 3.0;
        assert!((w.double_value(&[0]) - want).abs() < 1e-5);
        set(&mut w, 10.0);
        la.end_epoch();
        assert!((w.double_value(&[0]) - want).abs() < 1e-5, "epoch end restores the average");
    }
}
