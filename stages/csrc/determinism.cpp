// libtorch's global determinism switches, which tch does not expose.
// `torch.use_deterministic_algorithms(True)` in Python calls the same
// setters: deterministic kernels everywhere (an error where none exists),
// deterministic cuDNN convolutions and no cuDNN autotuning.
#include <ATen/Context.h>

extern "C" void cairn_set_deterministic(int on) {
  at::globalContext().setDeterministicAlgorithms(on != 0, /*warn_only=*/false);
  at::globalContext().setDeterministicCuDNN(on != 0);
  at::globalContext().setBenchmarkCuDNN(false);
}

extern "C" int cairn_deterministic_algorithms() {
  return at::globalContext().deterministicAlgorithms() ? 1 : 0;
}
