// A depthwise convolution whose weight gradient, for filters of 5×5 and
// more on an x86 CPU with AVX2 and FMA, is computed here instead of by
// oneDNN. oneDNN's depthwise weight gradient runs a JIT kernel for 3×3
// filters but a slow path for 5×5 ones: on a 2-core AVX2 EPYC it took 5–16
// ms a layer where the forward took 1–3 ms, a quarter of a Lite0 training
// step (BENCHMARKS.md, "A depthwise weight gradient that streams").
//
// Everything else is libtorch's: the forward is `at::conv2d`, the input
// gradient `at::convolution_backward`, exactly what autograd runs for a
// plain conv. The weight gradient sums, for each channel and tap, over
// images, output rows and columns in that order, one channel per lane of
// an 8-wide FMA; threads split the channels, so the result does not depend
// on the thread count. Taps that read the zero padding are skipped (their
// products are zero), so the kernel reads the input padded or not alike.
//
// Where the kernel computes the weight gradient and the padding is even
// (every stride-1 layer), the conv pads by itself: a padded copy costs a
// fill and a copy forward, and its input gradient is computed for the
// padded map (2.8x the pixels of a 6×6 map with 5×5 filters, 5.4x of a
// 3×3 one) and then cut down. Elsewhere the input is padded first, since
// oneDNN's own weight gradients of a self-padding depthwise conv go
// through a slow GEMM (see `ConvBn` in models/efficientnet.rs). Both give
// the same bits.
//
// Tensors arrive as tch's `C_tensor*`, which are `at::Tensor*`; failures
// come back as messages (guarded.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Version.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "guarded.h"

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The shapes of one weight gradient: input [B, C, Hm, Wm] as it is in
// memory and output gradient [B, C, Ho, Wo], both channels-last; filter
// K×K, stride s. In the padded coordinates the convolution reads, the
// unpadded input occupies rows [top, top+H) and columns [left, left+W);
// memory holds mtop rows and mleft columns of that padding (all of it
// when the input was padded first, none when the conv pads by itself).
struct Geometry {
  int64_t B, C, Hm, Wm, Ho, Wo, K, s, top, left, H, W, mtop, mleft;

  // The offset in memory of padded position (r, c), channel c0.
  int64_t at(int64_t r, int64_t c, int64_t c0) const { return ((r - top + mtop) * Wm + (c - left + mleft)) * C + c0; }

  // Output positions o whose input o·s + tap lies inside [lo, lo + n).
  std::pair<int64_t, int64_t> inside(int64_t tap, int64_t lo, int64_t n, int64_t outputs) const {
    const int64_t first = lo - tap > 0 ? (lo - tap + s - 1) / s : 0;
    const int64_t end = std::min(outputs, (lo + n - tap + s - 1) / s);
    return {first, std::max(first, end)};
  }
};

#if defined(__x86_64__)
// Adds one image's contribution to the gradient of channels [c0, c0 +
// 8·NV): acc is [K·K][8·NV]. NV independent accumulators keep the FMA
// units busy (one chain waits on each FMA's latency).
template <int NV>
__attribute__((target("avx2,fma"))) void image_taps(const float* x, const float* dy, float* acc, const Geometry& g, int64_t c0) {
  for (int64_t i = 0; i < g.K; ++i) {
    const auto [h0, h1] = g.inside(i, g.top, g.H, g.Ho);
    for (int64_t j = 0; j < g.K; ++j) {
      const auto [w0, w1] = g.inside(j, g.left, g.W, g.Wo);
      float* a = acc + (i * g.K + j) * NV * 8;
      __m256 r[NV];
      for (int v = 0; v < NV; ++v) r[v] = _mm256_loadu_ps(a + 8 * v);
      for (int64_t ho = h0; ho < h1 && w0 < w1; ++ho) {
        const float* dr = dy + ho * g.Wo * g.C + c0;
        const float* xr = x + g.at(ho * g.s + i, w0 * g.s + j, c0);  // the row's first pixel read
        for (int64_t wo = w0; wo < w1; ++wo) {
          const float* d = dr + wo * g.C;
          const float* xp = xr + (wo - w0) * g.s * g.C;
          for (int v = 0; v < NV; ++v) r[v] = _mm256_fmadd_ps(_mm256_loadu_ps(d + 8 * v), _mm256_loadu_ps(xp + 8 * v), r[v]);
        }
      }
      for (int v = 0; v < NV; ++v) _mm256_storeu_ps(a + 8 * v, r[v]);
    }
  }
}

// The gradient of channels [c0, c0 + 8·NV) over all images, into out
// ([C, 1, K, K]).
template <int NV>
void channel_block(const float* x, const float* dy, float* out, const Geometry& g, int64_t c0) {
  constexpr int64_t n = 8 * NV;
  std::vector<float> acc(g.K * g.K * n, 0.f);
  for (int64_t b = 0; b < g.B; ++b) image_taps<NV>(x + b * g.Hm * g.Wm * g.C, dy + b * g.Ho * g.Wo * g.C, acc.data(), g, c0);
  for (int64_t c = 0; c < n; ++c)
    for (int64_t t = 0; t < g.K * g.K; ++t) out[(c0 + c) * g.K * g.K + t] = acc[t * n + c];
}

// Channel blocks of 64 (eight FMA chains), the rest in blocks of 32, 16
// and 8; threads take whole blocks.
void weight_grad_blocks(const float* x, const float* dy, float* out, const Geometry& g) {
  std::vector<std::pair<int64_t, int>> blocks;  // (first channel, 8-lane vectors)
  for (int64_t c = 0; c < g.C;) {
    const int nv = g.C - c >= 64 ? 8 : g.C - c >= 32 ? 4 : g.C - c >= 16 ? 2 : 1;
    blocks.emplace_back(c, nv);
    c += 8 * nv;
  }
  at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto [c0, nv] = blocks[i];
      if (nv == 8) channel_block<8>(x, dy, out, g, c0);
      else if (nv == 4) channel_block<4>(x, dy, out, g, c0);
      else if (nv == 2) channel_block<2>(x, dy, out, g, c0);
      else channel_block<1>(x, dy, out, g, c0);
    }
  });
}
#endif

// Whether this process computes the weight gradient itself: x86 with AVX2
// and FMA, and libtorch's kernels not capped below AVX2
// (`ATEN_CPU_CAPABILITY=default`, which the stage keys record).
bool have_kernel() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && at::get_cpu_capability() != "DEFAULT";
  return yes;
#else
  return false;
#endif
}

bool kernel_applies(const at::Tensor& x, const at::Tensor& w) {
  return have_kernel() && x.is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && x.dim() == 4 && w.dim() == 4 &&
         w.size(0) == x.size(1) && w.size(1) == 1 && w.size(2) >= 5 && w.size(2) == w.size(3) && x.size(1) % 8 == 0;
}

// dL/dw [C, 1, K, K] for the input `x_` of a convolution with padding
// `pad` (top, bottom, left, right), already in `x_` where `padded`, the
// output gradient `dy_` and stride `s`.
at::Tensor weight_grad(const at::Tensor& x_, const at::Tensor& dy_, int64_t K, int64_t s, const std::vector<int64_t>& pad, bool padded) {
  TORCH_CHECK(have_kernel(), "cairn's depthwise weight gradient needs an x86 CPU with AVX2 and FMA");
  const auto x = x_.contiguous(at::MemoryFormat::ChannelsLast);
  const auto dy = dy_.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t Hm = x.size(2), Wm = x.size(3), top = pad[0], left = pad[2];
  const int64_t H = padded ? Hm - top - pad[1] : Hm, W = padded ? Wm - left - pad[3] : Wm;
  const Geometry g{x.size(0), x.size(1), Hm, Wm, dy.size(2), dy.size(3), K, s, top, left, H, W, padded ? top : 0, padded ? left : 0};
  auto out = at::empty({g.C, 1, K, K}, x.options().memory_format(at::MemoryFormat::Contiguous));
#if defined(__x86_64__)
  weight_grad_blocks(x.const_data_ptr<float>(), dy.const_data_ptr<float>(), out.mutable_data_ptr<float>(), g);
#endif
  return out;
}

// The convolution as tch's `conv2d` runs it, padding `pad_h` rows and
// `pad_w` columns on each side itself.
at::Tensor plain(const at::Tensor& x, const at::Tensor& w, int64_t stride, int64_t pad_h = 0, int64_t pad_w = 0) {
  const int64_t s[2] = {stride, stride}, p[2] = {pad_h, pad_w}, one[2] = {1, 1};
  return at::conv2d(x, w, std::nullopt, s, p, one, w.size(0));
}

// `x` with the zeros of `pad` (top, bottom, left, right) around it.
at::Tensor padded(const at::Tensor& x, const std::vector<int64_t>& pad) {
  const bool none = std::all_of(pad.begin(), pad.end(), [](int64_t p) { return p == 0; });
  return none ? x : at::constant_pad_nd(x, {pad[2], pad[3], pad[0], pad[1]});
}

// Where `pad` is even the conv pads by itself and `x` is the unpadded
// input; otherwise `x` arrives padded and the conv pads nothing.
bool even(const std::vector<int64_t>& pad) { return pad[0] == pad[1] && pad[2] == pad[3]; }

// The padding the conv itself applies (rows, columns on each side).
std::array<int64_t, 2> own_padding(const std::vector<int64_t>& pad) {
  return even(pad) ? std::array<int64_t, 2>{pad[0], pad[2]} : std::array<int64_t, 2>{0, 0};
}

struct DepthwiseConv : public torch::autograd::Function<DepthwiseConv> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, int64_t stride, std::vector<int64_t> pad) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = pad;
    const auto [ph, pw] = own_padding(pad);
    return plain(x, w, stride, ph, pw);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &dy = grads[0];
    const int64_t s = ctx->saved_data["stride"].toInt();
    const auto pad = ctx->saved_data["padding"].toIntVector();
    const auto [ph, pw] = own_padding(pad);
    at::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      dx = std::get<0>(at::convolution_backward(dy, x, w, std::nullopt, {s, s}, {ph, pw}, {1, 1}, false, {0, 0}, w.size(0), {true, false, false}));
    }
    if (ctx->needs_input_grad(1)) {
      dw = weight_grad(x, dy, w.size(2), s, pad, !even(pad));
    }
    return {dx, dw, at::Tensor(), at::Tensor()};
  }
};
}  // namespace

// y = the depthwise convolution (groups = channels, no bias) of the
// unpadded `x` with weight `w` [C, 1, K, K], padded by top/bottom/left/
// right zeros. Where the kernel above applies and `w` needs a gradient,
// autograd records `DepthwiseConv` (the conv padding by itself where the
// padding is even); otherwise a plain `at::conv2d` of a padded copy. The
// result is a new tensor the caller owns.
extern "C" int cairn_depthwise_conv(at::Tensor* x, at::Tensor* w, int64_t stride, int64_t top, int64_t bottom, int64_t left,
                                    int64_t right, at::Tensor** out, char* err, int err_len) {
  return cairn::guarded([&] {
    const std::vector<int64_t> pad{top, bottom, left, right};
    at::Tensor y;
    if (!(kernel_applies(*x, *w) && w->requires_grad())) {
      y = plain(padded(*x, pad), *w, stride);
    } else {
      y = DepthwiseConv::apply(even(pad) ? *x : padded(*x, pad), *w, stride, pad);
    }
    *out = new at::Tensor(std::move(y));
  }, err, err_len);
}

// 1 where `cairn_depthwise_conv` computes the weight gradient of a 5×5
// filter itself on this process's CPU, 0 where libtorch does.
extern "C" int cairn_depthwise_kernel() { return have_kernel() ? 1 : 0; }
