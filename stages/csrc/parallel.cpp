// Whether the shims' loops run on libtorch's threads. `at::parallel_for`
// is a header template: compiled without OpenMP (see build.rs) it quietly
// runs every loop on the calling thread, which no result shows, only the
// time. The shims' tests call this to catch that.
#include <ATen/Parallel.h>

#include <atomic>

// The number of pieces `at::parallel_for` splits a loop of `n` items into,
// one item at least each: libtorch's thread count where `n` allows.
extern "C" int cairn_parallel_pieces(int64_t n) {
  std::atomic<int> pieces{0};
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) { pieces.fetch_add(1); });
  return pieces.load();
}
