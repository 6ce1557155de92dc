// libtorch's fused optimizer kernels and set-to-none gradient reset, which
// tch does not bind (it skips ops over tensor lists). `torch.optim.SGD` and
// `AdamW` with `fused=True` call these same kernels: one pass over all of a
// group's parameters instead of several small ops per parameter.
//
// Tensors arrive as tch's `C_tensor*`, which are `at::Tensor*`; failures
// come back as messages (guarded.h).
// The three ops, not <ATen/ATen.h>: a third of the build time of this file.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/_fused_sgd.h>
#include <vector>

#include "guarded.h"

namespace {
std::vector<at::Tensor> list(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}

}  // namespace

extern "C" int cairn_fused_sgd(at::Tensor** params, at::Tensor** grads, at::Tensor** bufs, int n, double weight_decay,
                               double momentum, double lr, int nesterov, char* err, int err_len) {
  return cairn::guarded([&] {
    // Buffers start at zero, so `is_first_step = false` gives the same
    // first update (buf = momentum·0 + grad) as PyTorch's copy of the grad.
    // Without momentum the kernel wants no buffers at all.
    at::_fused_sgd_(list(params, n), list(grads, n), list(bufs, momentum == 0.0 ? 0 : n), weight_decay, momentum, lr, /*dampening=*/0.0,
                    nesterov != 0, /*maximize=*/false, /*is_first_step=*/false);
  }, err, err_len);
}

extern "C" int cairn_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs,
                                 at::Tensor** steps, int n, double lr, double beta1, double beta2, double weight_decay,
                                 double eps, char* err, int err_len) {
  return cairn::guarded([&] {
    auto s = list(steps, n);
    // The kernel reads the step count; the Python optimizer bumps it first.
    at::_foreach_add_(s, 1.0);
    at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n), /*max_exp_avg_sqs=*/{},
                      s, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
  }, err, err_len);
}

// `param.grad = None`: the next backward writes the gradient into a fresh
// tensor instead of zero-filling and accumulating into the old one.
extern "C" void cairn_clear_grad(at::Tensor* t) { t->mutable_grad().reset(); }
