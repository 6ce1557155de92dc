// A convolution, its bias and ReLU6 as one oneDNN primitive, for
// inference: `mkldnn::_convolution_pointwise` with a `hardtanh(0, 6)`
// post-op, the op PyTorch's Inductor fuses them into on a CPU. The clamp
// is applied to each output while it is still in registers instead of in
// a second pass over the whole activation, which on a 2-core AVX2 EPYC
// was 9% of EfficientNet-Lite0's eval time (BENCHMARKS.md, "Lite0
// inference: even padding in the conv, ReLU6 fused").
//
// The fused op runs the same oneDNN convolution `at::conv2d` runs and
// clamps its output exactly, so it is used only where `at::conv2d` would
// pick oneDNN itself (libtorch's own `select_conv_backend` decides);
// elsewhere (CUDA, a conv libtorch runs with another backend) the result
// is `at::conv2d` then an in-place `hardtanh`, the same values. Where a
// libtorch build has the op but rejects the post-op (oneDNN on another
// architecture), the first failure switches the process to that plain form
// for good. Autograd has no derivative for the fused op: callers use it
// only when nothing needs a gradient.
//
// Tensors arrive as tch's `C_tensor*`, which are `at::Tensor*`; failures
// come back as messages (guarded.h).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/ConvUtils.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/hardtanh.h>

#include <atomic>
#include <optional>
#include <vector>

#include "guarded.h"

namespace {
// False once the fused op has failed in this process.
std::atomic<bool> fusing{true};

bool onednn_runs_it(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::SymIntArrayRef stride,
                    c10::SymIntArrayRef padding, int64_t groups) {
  const std::vector<c10::SymInt> one{1, 1}, zero{0, 0};
  const auto backend = at::native::select_conv_backend(x, w, b, stride, padding, one, false, zero, groups, b.sym_sizes());
  return backend == at::native::ConvBackend::Mkldnn;
}

at::Tensor fused(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, std::vector<int64_t> stride,
                 std::vector<int64_t> padding, int64_t groups) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
  c10::List<std::optional<at::Scalar>> bounds;
  bounds.push_back(at::Scalar(0.0));
  bounds.push_back(at::Scalar(6.0));
  torch::jit::Stack stack{x, w, b, padding, stride, std::vector<int64_t>{1, 1}, groups, "hardtanh", bounds, c10::IValue()};
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}
}  // namespace

// y = min(max(conv2d(x, w, b, stride, padding, groups), 0), 6), square
// stride, `pad_h`/`pad_w` zeros on both sides. The result is a new tensor
// the caller owns.
extern "C" int cairn_conv_relu6(at::Tensor* x, at::Tensor* w, at::Tensor* b, int64_t stride, int64_t pad_h, int64_t pad_w,
                                int64_t groups, at::Tensor** out, char* err, int err_len) {
  return cairn::guarded([&] {
    const std::vector<int64_t> s{stride, stride}, p{pad_h, pad_w};
    const std::vector<c10::SymInt> ss(s.begin(), s.end()), sp(p.begin(), p.end());
    at::Tensor y;
    if (fusing && onednn_runs_it(*x, *w, *b, ss, sp, groups)) {
      try {
        y = fused(*x, *w, *b, s, p, groups);
      } catch (const c10::Error&) {
        fusing = false;
      }
    }
    if (!y.defined()) {
      y = at::conv2d(*x, *w, *b, s, p, {1, 1}, groups);
      at::hardtanh_(y, 0.0, 6.0);
    }
    *out = new at::Tensor(std::move(y));
  }, err, err_len);
}

// 1 while convolutions that libtorch runs with oneDNN get the fused op, 0
// after it failed (for tests: a build whose op throws would otherwise
// lose the speed without a sign).
extern "C" int cairn_conv_relu6_fusing() { return fusing ? 1 : 0; }
