// BatchNorm in training (batch statistics), with ReLU6 fused where one
// follows, over a channels-last fp32 activation on the CPU: Lite0's
// trained layers. libtorch runs the two as separate ops, which between
// them read or write each activation some thirteen times (forward: the
// statistics, normalising, clamping; backward: the clamp's mask, the
// BatchNorm's two sums, its input gradient) and keep both the BatchNorm's
// input and output for the backward. Here the forward reads the input
// twice and writes the result once, the backward reads the input and the
// gradient twice and writes once, recomputing the clamp's mask from the
// input, and only the input is kept.
//
// Each channel's sums run over its values in row order (images, rows,
// columns), in float over runs of 64 rows whose totals add up in double
// in run order: threads take whole runs for the sums and rows for the
// elementwise passes, so no result depends on the thread count. The
// loops are compiled for AVX2 and for plain x86-64 alike (the build turns
// floating-point contraction off), lanes holding channels, so the bits do
// not depend on the instruction set either.
//
// Tensors arrive as tch's `C_tensor*`, which are `at::Tensor*`; failures
// come back as messages (guarded.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "guarded.h"

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

#if defined(__x86_64__)
#define CAIRN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CAIRN_CLONES
#endif

// An activation as a [M, C] matrix: M = images · rows · columns, channels
// contiguous.
struct Rows {
  int64_t M, C;
};

// Threads take runs of rows, at least some 64 KiB of floats each.
template <class F>
void over_rows(const Rows& s, F f) {
  at::parallel_for(0, s.M, std::max<int64_t>(1, 16384 / s.C), f);
}

// Rows summed in float before their total joins a double sum: a float sum
// over all of a layer's rows (147,456 for a 96 px batch's stem) would lose
// digits, a double sum per value costs twice the arithmetic.
constexpr int64_t kRun = 64;

int64_t runs(const Rows& s) { return (s.M + kRun - 1) / kRun; }

// Two float sums per channel for each run of rows [q0, q1): row r's terms
// for channel c are `term(r, c, u, v)`; run q's sums go to `part`'s rows
// 2q (u) and 2q + 1 (v), C values each. A run's rows are read whole, in
// memory order: a thread given a block of channels would read a piece of
// every row, which streamed at a third of the elementwise passes' rate.
template <class Term>
__attribute__((always_inline)) inline void run_sums(Rows s, int64_t q0, int64_t q1, const Term& term, float* part) {
  for (int64_t q = q0; q < q1; ++q) {
    float *__restrict fu = part + 2 * q * s.C, *__restrict fv = fu + s.C;
    std::fill(fu, fu + 2 * s.C, 0.f);
    for (int64_t r = q * kRun; r < std::min(s.M, (q + 1) * kRun); ++r) {
      for (int64_t c = 0; c < s.C; ++c) {
        float u, v;
        term(r, c, u, v);
        fu[c] += u;
        fv[c] += v;
      }
    }
  }
}

// Two sums per channel over all rows, into su and sv: `sums(q0, q1, part)`
// fills runs [q0, q1) of `part` (see `run_sums`), threads taking whole
// runs, and the runs' totals are added in double in run order.
template <class Sums>
void channel_sums(const Rows& s, const Sums& sums, double* su, double* sv) {
  const int64_t n = runs(s);
  std::vector<float> part(2 * n * s.C);
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / (kRun * s.C)), [&](int64_t q0, int64_t q1) { sums(q0, q1, part.data()); });
  std::fill(su, su + s.C, 0.0);
  std::fill(sv, sv + s.C, 0.0);
  for (int64_t q = 0; q < n; ++q) {
    const float *fu = part.data() + 2 * q * s.C, *fv = fu + s.C;
    for (int64_t c = 0; c < s.C; ++c) {
      su[c] += fu[c];
      sv[c] += fv[c];
    }
  }
}

// sum[c] and sq[c]: the sums of x − x₀ and (x − x₀)² over channel c's
// values, x₀ the first row's (so the sums stay small where a channel's
// mean is far from zero), for runs [q0, q1) into `part` (see `run_sums`).
CAIRN_CLONES void shifted_sums(const float* __restrict x, Rows s, int64_t q0, int64_t q1, float* part) {
  run_sums(s, q0, q1, [&](int64_t r, int64_t c, float& u, float& v) {
    u = x[r * s.C + c] - x[c];
    v = u * u;
  }, part);
}

// The BatchNorm's output for input x of a channel with scale a and shift
// b: the forward and the backward's mask must compute it alike, bit for
// bit.
inline float normalised(float x, float a, float b) { return x * a + b; }

// y = x·a + b per channel, clamped to [0, 6] where `clamp`, for rows
// [r0, r1). NaN stays NaN.
CAIRN_CLONES void scale_shift(const float* __restrict x, float* __restrict y, Rows s, int64_t r0, int64_t r1, const float* __restrict a,
                              const float* __restrict b, bool clamp) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * s.C;
    float* yr = y + r * s.C;
    for (int64_t c = 0; c < s.C; ++c) {
      const float v = normalised(xr[c], a[c], b[c]);
      yr[c] = clamp ? std::min(std::max(v, 0.f), 6.f) : v;
    }
  }
}

// The gradient reaching the BatchNorm's output: `dz` where the clamp
// passed its value through (strictly inside (0, 6), as libtorch's
// `hardtanh` backward has it), else 0; `dz` itself without a clamp.
inline float through_clamp(float x, float dz, float a, float b, bool clamp) {
  const float v = normalised(x, a, b);
  return !clamp || (v > 0.f && v < 6.f) ? dz : 0.f;
}

// sg[c] = Σ g and sgx[c] = Σ g·(x − mean) over channel c's values,
// g the gradient at the BatchNorm's output, for runs [q0, q1) into `part`
// (see `run_sums`).
CAIRN_CLONES void grad_sums(const float* __restrict x, const float* __restrict dz, Rows s, int64_t q0, int64_t q1, const float* __restrict a,
                            const float* __restrict b, const float* __restrict mean, bool clamp, float* part) {
  run_sums(s, q0, q1, [&](int64_t r, int64_t c, float& u, float& v) {
    const float xv = x[r * s.C + c];
    u = through_clamp(xv, dz[r * s.C + c], a[c], b[c], clamp);
    v = u * (xv - mean[c]);
  }, part);
}

// dx = (g − mg − (x − mean)·k)·a for rows [r0, r1): the BatchNorm's input
// gradient with mg = mean of g, k = mean of g·x̂ times 1/σ, a = γ/σ.
CAIRN_CLONES void input_grad(const float* __restrict x, const float* __restrict dz, float* __restrict dx, Rows s, int64_t r0, int64_t r1,
                             const float* __restrict a, const float* __restrict b, const float* __restrict mean,
                             const float* __restrict mg, const float* __restrict k, bool clamp) {
  for (int64_t r = r0; r < r1; ++r) {
    const float *xr = x + r * s.C, *dr = dz + r * s.C;
    float* out = dx + r * s.C;
    for (int64_t c = 0; c < s.C; ++c) {
      const float g = through_clamp(xr[c], dr[c], a[c], b[c], clamp);
      out[c] = (g - mg[c] - (xr[c] - mean[c]) * k[c]) * a[c];
    }
  }
}

at::Tensor floats(int64_t n) { return at::empty({n}, at::TensorOptions().dtype(at::kFloat)); }
at::Tensor doubles(int64_t n) { return at::empty({n}, at::TensorOptions().dtype(at::kDouble)); }

// A new channels-last tensor of `x`'s shape and dtype.
at::Tensor channels_last_like(const at::Tensor& x) { return at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast)); }

// The [M, C] view of a 4-D channels-last tensor, copied into that layout
// where it is not in it.
std::pair<at::Tensor, Rows> as_rows(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4, "cairn's training BatchNorm takes a batch of images [N, C, H, W], not ", t.sizes());
  auto c = t.contiguous(at::MemoryFormat::ChannelsLast);
  return {c, Rows{c.size(0) * c.size(2) * c.size(3), c.size(1)}};
}

// A [C] fp32 CPU tensor with contiguous values, or an error naming `what`.
const float* channel_values(const at::Tensor& t, int64_t C, const char* what) {
  TORCH_CHECK(t.defined() && t.is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == C && t.is_contiguous(),
              "cairn's training BatchNorm needs ", what, " as ", C, " contiguous fp32 values on the CPU");
  return t.const_data_ptr<float>();
}

// What the forward applies and the backward needs, per channel: scale
// a = γ/σ and shift b = β − mean·a, the mean, and 1/σ in double.
struct Normalisation {
  at::Tensor a, b, mean, invstd;
};

// The batch statistics of `x` ([M, C] rows), and the running statistics
// moved toward them by `momentum` (the variance unbiased, as libtorch's).
Normalisation normalise(const float* x, Rows s, const float* gamma, const float* beta, float* running_mean, float* running_var,
                        double momentum, double eps) {
  std::vector<double> sum(s.C), sq(s.C);
  channel_sums(s, [&](int64_t q0, int64_t q1, float* part) { shifted_sums(x, s, q0, q1, part); }, sum.data(), sq.data());
  Normalisation out{floats(s.C), floats(s.C), floats(s.C), doubles(s.C)};
  float *a = out.a.mutable_data_ptr<float>(), *b = out.b.mutable_data_ptr<float>(), *mean = out.mean.mutable_data_ptr<float>();
  double* invstd = out.invstd.mutable_data_ptr<double>();
  const double n = static_cast<double>(s.M);
  for (int64_t c = 0; c < s.C; ++c) {
    const double shifted = sum[c] / n, var = std::max(sq[c] / n - shifted * shifted, 0.0), m = x[c] + shifted;
    mean[c] = static_cast<float>(m);
    invstd[c] = 1.0 / std::sqrt(var + eps);
    a[c] = static_cast<float>(gamma[c] * invstd[c]);
    b[c] = static_cast<float>(beta[c] - m * a[c]);
    running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * m);
    running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * var * n / (n - 1.0));
  }
  return out;
}

struct BatchNormTrain : public torch::autograd::Function<BatchNormTrain> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_, const at::Tensor& gamma, const at::Tensor& beta, at::Tensor running_mean,
                            at::Tensor running_var, double momentum, double eps, bool clamp) {
    const auto rows = as_rows(x_);
    const at::Tensor& x = rows.first;
    const Rows s = rows.second;
    TORCH_CHECK(s.M > 1, "BatchNorm in training needs more than one value per channel, got input ", x_.sizes());
    const float* xp = x.const_data_ptr<float>();
    const auto norm = normalise(xp, s, channel_values(gamma, s.C, "γ"), channel_values(beta, s.C, "β"),
                                const_cast<float*>(channel_values(running_mean, s.C, "the running mean")),
                                const_cast<float*>(channel_values(running_var, s.C, "the running variance")), momentum, eps);
    const float *ap = norm.a.const_data_ptr<float>(), *bp = norm.b.const_data_ptr<float>();
    auto y = channels_last_like(x);
    float* yp = y.mutable_data_ptr<float>();
    over_rows(s, [&](int64_t r0, int64_t r1) { scale_shift(xp, yp, s, r0, r1, ap, bp, clamp); });
    ctx->save_for_backward({x});
    ctx->saved_data["a"] = norm.a;
    ctx->saved_data["b"] = norm.b;
    ctx->saved_data["mean"] = norm.mean;
    ctx->saved_data["invstd"] = norm.invstd;
    ctx->saved_data["clamp"] = clamp;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto x = ctx->get_saved_variables()[0];
    const auto rows = as_rows(grads[0]);
    const at::Tensor& dz = rows.first;
    const Rows s = rows.second;
    const auto a = ctx->saved_data["a"].toTensor(), b = ctx->saved_data["b"].toTensor();
    const auto mean = ctx->saved_data["mean"].toTensor(), invstd = ctx->saved_data["invstd"].toTensor();
    const bool clamp = ctx->saved_data["clamp"].toBool();
    const float *xp = x.const_data_ptr<float>(), *dp = dz.const_data_ptr<float>();
    const float *ap = a.const_data_ptr<float>(), *bp = b.const_data_ptr<float>();
    const float* mp = mean.const_data_ptr<float>();
    const double* ip = invstd.const_data_ptr<double>();
    std::vector<double> sg(s.C), sgx(s.C);
    channel_sums(s, [&](int64_t q0, int64_t q1, float* part) { grad_sums(xp, dp, s, q0, q1, ap, bp, mp, clamp, part); }, sg.data(), sgx.data());
    auto dgamma = floats(s.C), dbeta = floats(s.C);
    float *dgp = dgamma.mutable_data_ptr<float>(), *dbp = dbeta.mutable_data_ptr<float>();
    std::vector<float> mg(s.C), k(s.C);
    const double n = static_cast<double>(s.M);
    for (int64_t c = 0; c < s.C; ++c) {
      dgp[c] = static_cast<float>(sgx[c] * ip[c]);
      dbp[c] = static_cast<float>(sg[c]);
      mg[c] = static_cast<float>(sg[c] / n);
      k[c] = static_cast<float>(sgx[c] / n * ip[c] * ip[c]);
    }
    at::Tensor dx;
    if (ctx->needs_input_grad(0)) {
      dx = channels_last_like(x);
      float* out = dx.mutable_data_ptr<float>();
      over_rows(s, [&](int64_t r0, int64_t r1) { input_grad(xp, dp, out, s, r0, r1, ap, bp, mp, mg.data(), k.data(), clamp); });
    }
    return {dx, dgamma, dbeta, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
}  // namespace

// y = BatchNorm of `x` [N, C, H, W] with its batch statistics, γ `gamma`
// and β `beta`, then clamped to [0, 6] where `clamp` is non-zero; the
// running statistics move by `momentum` (the variance's unbiased). fp32 on
// the CPU only. The result is a new channels-last tensor the caller owns.
extern "C" int cairn_batch_norm_train(at::Tensor* x, at::Tensor* gamma, at::Tensor* beta, at::Tensor* running_mean, at::Tensor* running_var,
                                      double momentum, double eps, int clamp, at::Tensor** out, char* err, int err_len) {
  return cairn::guarded([&] {
    TORCH_CHECK(x->is_cpu() && x->scalar_type() == at::kFloat, "cairn's training BatchNorm takes fp32 CPU tensors, not ", x->toString());
    at::Tensor y = BatchNormTrain::apply(*x, *gamma, *beta, *running_mean, *running_var, momentum, eps, clamp != 0);
    *out = new at::Tensor(std::move(y));
  }, err, err_len);
}
