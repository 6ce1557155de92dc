// Facts about the libtorch this process loaded, for `cairn-worker --probe`:
// tch binds none of them. Strings are copied into the caller's buffer
// (NUL-terminated, cut to fit) and their full length returned, so the
// caller can retry with a larger buffer; -1 means the fact is unavailable.
// C++ exceptions must not cross into Rust.
#include <ATen/Version.h>
#include <ATen/cpu/Utils.h>
#include <dlfcn.h>

#include <cstring>
#include <string>

namespace {
int copy_out(const std::string& s, char* out, int len) {
  if (len > 0) {
    std::strncpy(out, s.c_str(), len - 1);
    out[len - 1] = '\0';
  }
  return static_cast<int>(s.size());
}
}  // namespace

// The kernels libtorch dispatches to on this CPU: "DEFAULT", "AVX2",
// "AVX512" (x86), "ZVECTOR", "SVE256"... as `torch.backends.cpu.
// get_cpu_capability()` reports it (`ATEN_CPU_CAPABILITY` can lower it).
extern "C" int cairn_probe_cpu_capability(char* out, int len) {
  try {
    return copy_out(at::get_cpu_capability(), out, len);
  } catch (...) {
    return -1;
  }
}

// `torch.__config__.show()`: build settings, whose TORCH_VERSION is the
// version of the library actually loaded (not of the headers).
extern "C" int cairn_probe_show_config(char* out, int len) {
  try {
    return copy_out(at::show_config(), out, len);
  } catch (...) {
    return -1;
  }
}

// One boolean from cpuinfo as libtorch sees it (`avx512_bf16`,
// `amx_bf16`...): 1 or 0, -1 when libtorch does not know the name.
extern "C" int cairn_probe_cpu_flag(const char* name) {
  try {
    auto caps = at::cpu::get_cpu_capabilities();
    auto it = caps.find(name);
    if (it == caps.end() || !it->second.isBool()) return -1;
    return it->second.toBool() ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// The name of CUDA device 0 through the CUDA runtime libtorch loaded,
// without CUDA headers: `cudaDeviceProp` begins with `char name[256]` in
// every CUDA version, and the buffer is larger than the whole struct.
extern "C" int cairn_probe_cuda_device_name(char* out, int len) {
  using GetProps = int (*)(void*, int);
  void* f = dlsym(RTLD_DEFAULT, "cudaGetDeviceProperties_v2");
  if (f == nullptr) f = dlsym(RTLD_DEFAULT, "cudaGetDeviceProperties");
  if (f == nullptr) return -1;
  alignas(16) static char props[16384];
  std::memset(props, 0, sizeof(props));
  if (reinterpret_cast<GetProps>(f)(props, 0) != 0) return -1;
  props[255] = '\0';
  return copy_out(std::string(props), out, len);
}
