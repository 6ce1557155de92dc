// Per-layer timing of cairn's depthwise weight gradient
// (stages/csrc/depthwise.cpp, included whole) against oneDNN's
// (`at::convolution_backward` asked for the weight gradient alone), on
// EfficientNet-Lite0's 5x5 layers at 88/96 px, batch 64, channels-last: the
// mean of 20 calls after 3, and whether the two results have the same bits.
// BENCHMARKS.md, "A depthwise weight gradient that streams". From the
// repository root:
//
//   T=~/.cache/cairn/torch-2.11.0/lib/python3.11/site-packages/torch
//   g++ -O3 -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 -I$T/include -I$T/include/torch/csrc/api/include \
//       scripts/bench_depthwise.cpp -o /tmp/bench_depthwise -L$T/lib -Wl,-rpath,$T/lib -ltorch -ltorch_cpu -lc10
//   /tmp/bench_depthwise [THREADS]     # default 2
#include "../stages/csrc/depthwise.cpp"
#include <ATen/ATen.h>
#include <chrono>
#include <cstdio>
using clk = std::chrono::steady_clock;
template <class F> double timeit(F f, int n = 20) { for (int i = 0; i < 3; ++i) f(); auto t = clk::now(); for (int i = 0; i < n; ++i) f(); return std::chrono::duration<double, std::milli>(clk::now() - t).count() / n; }
int main(int argc, char** argv) {
  at::set_num_threads(argc > 1 ? atoi(argv[1]) : 2);
  // channels, unpadded size, stride: stage 3 (trained only when the whole net is), stages 5 and 6.
  struct L { const char* what; int64_t C, H, s; } ls[] = {{"stage3 b1 (144, 22->11, s2)", 144, 22, 2}, {"stage3 b2 (240, 11)", 240, 11, 1},
      {"stage5 b1 (480, 6)", 480, 6, 1}, {"stage5 b2,b3 (672, 6)", 672, 6, 1}, {"stage6 b1 (672, 6->3, s2)", 672, 6, 2}, {"stage6 b2-b4 (1152, 3)", 1152, 3, 1}};
  for (auto l : ls) {
    const int64_t K = 5, B = 64, Ho = (l.H + l.s - 1) / l.s;
    const int64_t p = std::max<int64_t>((Ho - 1) * l.s + K - l.H, 0), top = p / 2, bottom = p - p / 2;
    auto x = at::constant_pad_nd(at::randn({B, l.C, l.H, l.H}).contiguous(at::MemoryFormat::ChannelsLast), {top, bottom, top, bottom}).contiguous(at::MemoryFormat::ChannelsLast);
    auto w = at::randn({l.C, 1, K, K});
    auto dy = at::randn({B, l.C, Ho, Ho}).contiguous(at::MemoryFormat::ChannelsLast);
    std::vector<int64_t> pad{top, bottom, top, bottom};
    auto ref = [&] { return std::get<1>(at::convolution_backward(dy, x, w, std::nullopt, {l.s, l.s}, {0, 0}, {1, 1}, false, {0, 0}, l.C, {false, true, false})); };
    auto want = ref(), got = weight_grad(x, dy, K, l.s, pad, true);
    double err = (got - want).abs().max().item<double>();
    double t0 = timeit(ref), t1 = timeit([&] { weight_grad(x, dy, K, l.s, pad, true); });
    printf("| %s | %.2f ms | %.2f ms | %.1fx | %s |\n", l.what, t0, t1, t0 / t1, err == 0 ? "identical" : ("max diff " + std::to_string(err)).c_str());
  }
}
