//! Optimizers and learning-rate schedules for the `train` kind.
//!
//! Written out rather than taken from `tch::nn::Optimizer` for two reasons:
//! weight decay must skip BatchNorm parameters and biases (decaying them
//! hurts short runs, and every speed-run recipe exempts them), and frozen
//! blocks must hold no optimizer state at all. The updates are libtorch's
//! fused kernels ([`fused`]), the ones PyTorch's `SGD(nesterov=True,
//! fused=True)` and `AdamW(fused=True)` run, over two groups: matrices
//! (decayed, base rate) and vectors (not decayed, `bias_lr_scale` × the
//! rate); with Muon, a third group takes the conv filters ([`muon`]). Gradients are reset to none, not zero-filled, between steps, as
//! PyTorch's `zero_grad()` does.

use std::collections::BTreeMap;

use cairn_kinds::train::{Optimizer, Schedule};
use tch::Tensor;

use super::{fused, muon};

/// Per-parameter state, created at the parameter's first gradient.
struct State {
    /// SGD's or Muon's momentum buffer, or Adam's first moment.
    m: Tensor,
    /// Adam's second moment and step count (undefined otherwise).
    v: Option<(Tensor, Tensor)>,
}

struct Param {
    var: Tensor,
    state: Option<State>,
}

/// How a group's parameters step.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Sgd { momentum: f64, nesterov: bool },
    Adamw { beta1: f64 },
    Muon { momentum: f64 },
}

/// Parameters that share a rule, a learning-rate scale and weight decay.
struct Group {
    params: Vec<Param>,
    lr_scale: f64,
    weight_decay: f64,
    rule: Rule,
}

pub struct Optim {
    groups: Vec<Group>,
}

const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

impl Optim {
    /// `vars` are the trainable variables; those with more than one
    /// dimension (conv and linear weights) are decayed, the others (biases,
    /// BatchNorm shifts and scales) step at `bias_lr_scale` × the rate.
    /// `Optimizer::Muon` steps all of them by SGD until [`Optim::with_muon`].
    pub fn new(kind: Optimizer, vars: Vec<Tensor>, momentum: f64, nesterov: bool, weight_decay: f64, bias_lr_scale: f64) -> Self {
        let rule = match kind {
            Optimizer::Sgd | Optimizer::Muon => Rule::Sgd { momentum, nesterov },
            Optimizer::Adamw => Rule::Adamw { beta1: momentum },
        };
        let (matrices, vectors): (Vec<_>, Vec<_>) = vars.into_iter().map(|var| Param { var, state: None }).partition(|p| p.var.dim() > 1);
        let groups = vec![
            Group { params: matrices, lr_scale: 1.0, weight_decay, rule },
            Group { params: vectors, lr_scale: bias_lr_scale, weight_decay: 0.0, rule },
        ];
        Self { groups }
    }

    /// Moves the conv filters (the four-dimensional parameters) to Muon,
    /// at `lr_scale` × the scheduled rate with momentum `momentum`.
    pub fn with_muon(mut self, lr_scale: f64, momentum: f64) -> Self {
        let (filters, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.groups[0].params).into_iter().partition(|p| p.var.dim() == 4);
        self.groups[0].params = rest;
        self.groups.push(Group { params: filters, lr_scale, weight_decay: 0.0, rule: Rule::Muon { momentum } });
        self
    }

    pub fn zero_grad(&mut self) {
        for p in self.groups.iter().flat_map(|g| &g.params) {
            fused::clear_grad(&p.var);
        }
    }

    /// One update at learning rate `lr` of every parameter that has a
    /// gradient. An error is libtorch refusing the fused kernel's inputs.
    pub fn step(&mut self, lr: f64) -> Result<(), String> {
        tch::no_grad(|| {
            for g in &mut self.groups {
                let adam = matches!(g.rule, Rule::Adamw { .. });
                let mut live: Vec<(&Tensor, Tensor, &State)> = Vec::new();
                for p in &mut g.params {
                    let grad = p.var.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let state = p.state.get_or_insert_with(|| State {
                        m: grad.zeros_like(),
                        v: adam.then(|| (grad.zeros_like(), Tensor::zeros([], (tch::Kind::Float, grad.device())))),
                    });
                    live.push((&p.var, grad, state));
                }
                if live.is_empty() {
                    continue;
                }
                let vars: Vec<&Tensor> = live.iter().map(|l| l.0).collect();
                let grads: Vec<&Tensor> = live.iter().map(|l| &l.1).collect();
                let ms: Vec<&Tensor> = live.iter().map(|l| &l.2.m).collect();
                let lr = lr * g.lr_scale;
                match g.rule {
                    Rule::Sgd { momentum, nesterov } => fused::sgd(&vars, &grads, &ms, g.weight_decay, momentum, lr, nesterov)?,
                    Rule::Adamw { beta1 } => {
                        let vs: Vec<&Tensor> = live.iter().filter_map(|l| l.2.v.as_ref().map(|v| &v.0)).collect();
                        let steps: Vec<&Tensor> = live.iter().filter_map(|l| l.2.v.as_ref().map(|v| &v.1)).collect();
                        fused::adamw(&vars, &grads, &ms, &vs, &steps, lr, (beta1, ADAM_BETA2), g.weight_decay, ADAM_EPS)?
                    }
                    Rule::Muon { momentum } => {
                        for ((var, grad), m) in vars.iter().zip(&grads).zip(&ms) {
                            muon::step(var, grad, m, lr, momentum);
                        }
                    }
                }
            }
            Ok(())
        })
    }
}

impl Optim {
    /// Every parameter's state, as `<group>.<index>.<m|v|step>` (a
    /// checkpoint keeps it; parameters without state have no entry).
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (g, group) in self.groups.iter().enumerate() {
            for (i, s) in group.params.iter().enumerate().filter_map(|(i, p)| Some((i, p.state.as_ref()?))) {
                out.insert(format!("{g}.{i}.m"), s.m.shallow_clone());
                if let Some((v, step)) = &s.v {
                    out.insert(format!("{g}.{i}.v"), v.shallow_clone());
                    out.insert(format!("{g}.{i}.step"), step.shallow_clone());
                }
            }
        }
        out
    }

    /// Sets every parameter's state from what [`Optim::state`] returned.
    /// Nothing changes unless all of it fits these parameters.
    pub fn load_state(&mut self, src: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let mut states = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            for (i, p) in group.params.iter().enumerate() {
                let name = |part: &str| format!("{g}.{i}.{part}");
                let Some(m) = src.get(&name("m")) else {
                    states.push(None);
                    continue;
                };
                let entry = |part: &str| src.get(&name(part)).ok_or_else(|| format!("optimizer state `{}` is missing", name(part)));
                let v = if matches!(group.rule, Rule::Adamw { .. }) {
                    let step = Tensor::zeros([], (tch::Kind::Float, p.var.device()));
                    Some((like(&p.var, entry("v")?, &name("v"))?, like(&step, entry("step")?, &name("step"))?))
                } else {
                    None
                };
                states.push(Some(State { m: like(&p.var, m, &name("m"))?, v }));
            }
        }
        let used = states.iter().flatten().map(|s| 1 + 2 * s.v.is_some() as usize).sum::<usize>();
        if used != src.len() {
            return Err(format!("{} optimizer state entries fit no parameter", src.len().abs_diff(used)));
        }
        for (p, s) in self.groups.iter_mut().flat_map(|g| &mut g.params).zip(states) {
            p.state = s;
        }
        Ok(())
    }
}

/// A copy of `src` shaped, typed and placed like `target`, or why it cannot be.
fn like(target: &Tensor, src: &Tensor, name: &str) -> Result<Tensor, String> {
    if src.size() != target.size() || src.kind() != target.kind() {
        return Err(format!("`{name}` is {:?} {:?}, its parameter needs {:?} {:?}", src.kind(), src.size(), target.kind(), target.size()));
    }
    tch::no_grad(|| {
        let mut t = target.zeros_like();
        t.f_copy_(src).map(|_| t).map_err(|e| format!("`{name}`: {e}"))
    })
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
        if (step as f64) < LOOKAHEAD_START * self.total as f64 || !step.is_multiple_of(LOOKAHEAD_EVERY) {
            return;
        }
        match &self.avg {
            None => self.avg = Some(floating(vs).into_iter().map(|(_, v)| (v.detach().copy(), v)).collect()),
            Some(_) => {
                let base = LOOKAHEAD_DECAY.powi(LOOKAHEAD_EVERY as i32);
                self.pull(base * (step as f64 / self.total as f64).powi(LOOKAHEAD_POW));
            }
        }
    }

    /// The average by variable name, once averaging has begun (a
    /// checkpoint keeps it).
    pub fn state(&self, vs: &tch::nn::VarStore) -> Option<BTreeMap<String, Tensor>> {
        let avg = self.avg.as_ref()?;
        Some(floating(vs).into_iter().zip(avg).map(|((name, _), (a, _))| (name, a.shallow_clone())).collect())
    }

    /// Sets the average from what [`Lookahead::state`] returned (`None`:
    /// not begun). Nothing changes unless it fits `vs`.
    pub fn load_state(&mut self, vs: &tch::nn::VarStore, src: Option<&BTreeMap<String, Tensor>>) -> Result<(), String> {
        let Some(src) = src else {
            self.avg = None;
            return Ok(());
        };
        let vars = floating(vs);
        if vars.len() != src.len() {
            return Err(format!("the lookahead average holds {} tensors, the model {}", src.len(), vars.len()));
        }
        let avg = vars
            .into_iter()
            .map(|(name, w)| {
                let a = src.get(&name).ok_or_else(|| format!("the lookahead average lacks `{name}`"))?;
                Ok((like(&w, a, &name)?, w))
            })
            .collect::<Result<Vec<_>, String>>()?;
        self.avg = Some(avg);
        Ok(())
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
                w.copy_(a);
            }
        });
    }
}

/// The variables the average covers, by name.
fn floating(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, v)| v.is_floating_point()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
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
            o.step(0.1).unwrap();
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
        o.step(0.01).unwrap();
        assert!((b.double_value(&[0]) + 0.64).abs() < 1e-6);
        assert!((w.double_value(&[0, 0]) + 0.01).abs() < 1e-6);
    }

    #[test]
    fn sgd_decays_matrices_only_as_pytorch_does() {
        let w = Tensor::ones([1, 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::ones([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut o = Optim::new(Optimizer::Sgd, vec![w.shallow_clone(), b.shallow_clone()], 0.9, true, 0.1, 1.0);
        o.zero_grad();
        (w.sum(Kind::Float) + b.sum(Kind::Float)).backward();
        o.step(0.1).unwrap();
        // matrix: g = 1 + 0.1·1, buf = g, d = g + 0.9·buf; vector: no decay.
        assert!((w.double_value(&[0, 0]) - (1.0 - 0.1 * 1.1 * 1.9)).abs() < 1e-6);
        assert!((b.double_value(&[0]) - (1.0 - 0.1 * 1.9)).abs() < 1e-6);
    }

    #[test]
    fn adamw_matches_pytorch_formula() {
        let w = Tensor::ones([1, 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut o = Optim::new(Optimizer::Adamw, vec![w.shallow_clone()], 0.9, false, 0.01, 1.0);
        let mut want = 1.0f64;
        for t in 1..=3 {
            o.zero_grad();
            (w.sum(Kind::Float) * 0.5).backward();
            o.step(0.1).unwrap();
            // grad 0.5 every step: m̂ = 0.5, v̂ = 0.25 after bias correction.
            let (m, v) = (0.5 * (1.0 - 0.9f64.powi(t)), 0.25 * (1.0 - 0.999f64.powi(t)));
            let (mhat, vhat) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.999f64.powi(t)));
            want = want * (1.0 - 0.1 * 0.01) - 0.1 * mhat / (vhat.sqrt() + 1e-8);
        }
        assert!((w.double_value(&[0, 0]) - want).abs() < 1e-5, "{} vs {want}", w.double_value(&[0, 0]));
    }

    #[test]
    fn params_without_gradients_keep_no_state_and_do_not_move() {
        let w = Tensor::ones([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let frozen = Tensor::ones([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut o = Optim::new(Optimizer::Sgd, vec![w.shallow_clone(), frozen.shallow_clone()], 0.9, true, 0.1, 1.0);
        o.zero_grad();
        w.sum(Kind::Float).backward();
        o.step(0.1).unwrap();
        assert_eq!(frozen.sum(Kind::Float).double_value(&[]), 4.0);
        assert!(o.groups[0].params[1].state.is_none());
        o.zero_grad();
        assert!(!w.grad().defined(), "zero_grad resets gradients to none");
    }

    #[test]
    fn muon_takes_the_filters_and_its_state_round_trips() {
        let _rng = crate::rng_guard();
        tch::manual_seed(5);
        let filt = (Tensor::randn([4, 2, 3, 3], (Kind::Float, Device::Cpu)) * 2.0).set_requires_grad(true);
        let head = Tensor::ones([3, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let bias = Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let vars = || vec![filt.shallow_clone(), head.shallow_clone(), bias.shallow_clone()];
        let mut o = Optim::new(Optimizer::Muon, vars(), 0.85, true, 0.0, 64.0).with_muon(0.5, 0.6);
        assert_eq!((o.groups[0].params.len(), o.groups[1].params.len(), o.groups[2].params.len()), (1, 1, 1));
        o.zero_grad();
        ((&filt * 0.3).sum(Kind::Float) + head.sum(Kind::Float) + bias.sum(Kind::Float)).backward();
        let f0 = filt.detach().copy();
        o.step(0.2).unwrap();
        // The filters moved by Muon at 0.5 × 0.2: rescaled to norm 2, then an
        // orthogonal step (nesterov: grad × 1.6).
        let rescaled = &f0 * (2.0 / f0.norm().double_value(&[]));
        let want = &rescaled - super::muon::orthogonalise(&(Tensor::full([4, 18], 0.3 * 1.6, (Kind::Float, Device::Cpu)))).reshape([4, 2, 3, 3]) * 0.1;
        assert!(filt.allclose(&want, 1e-5, 1e-6, false));
        // The head by SGD at 0.2 (nesterov: 1 + 0.85).
        assert!((head.double_value(&[0, 0]) - (1.0 - 0.2 * 1.85)).abs() < 1e-6);
        let state = o.state();
        assert!(state.contains_key("2.0.m"), "{:?}", state.keys().collect::<Vec<_>>());
        let mut fresh = Optim::new(Optimizer::Muon, vars(), 0.85, true, 0.0, 64.0).with_muon(0.5, 0.6);
        fresh.load_state(&state).unwrap();
        assert!(fresh.groups[2].params[0].state.as_ref().unwrap().m.equal(&state["2.0.m"]));
    }

    #[test]
    fn lookahead_averages_late_and_ends_epochs_on_the_average() {
        let _rng = crate::rng_guard();
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
