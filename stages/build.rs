//! Build script for `cairn-stages`: makes the worker binary and this
//! package's test binaries find libtorch at run time without anyone setting
//! `LD_LIBRARY_PATH`.
//!
//! torch-sys links libtorch dynamically but emits no rpath, and the linker's
//! default `--as-needed` drops `libtorch.so` (which only pulls in the CUDA
//! libraries through its own dependencies), so a CUDA build of libtorch
//! would silently run on the CPU. torch-sys declares `links = "tch"` and
//! exports its lib folder as `DEP_TCH_LIBTORCH_LIB` to crates that depend on
//! it directly, which is why `torch-sys` is a direct dependency here.
//!
//! It also compiles the C++ shims in `csrc/` — libtorch's global
//! determinism switches, its fused optimizer kernels, a depthwise
//! convolution with its own weight gradient, a convolution with ReLU6
//! fused for inference and the facts
//! `cairn-worker --probe` reports — for which tch has no binding.

use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys sets it on Linux and macOS; elsewhere there is no rpath
        // to add and the loader's own search rules apply.
        println!("cargo:warning=torch-sys did not export DEP_TCH_LIBTORCH_LIB; cairn-worker will need libtorch on the loader path");
        return;
    };
    compile_shim(&lib);
    let args = [format!("-Wl,-rpath,{lib}"), "-Wl,--no-as-needed".to_string(), "-ltorch".to_string()];
    for arg in &args {
        // Every binary this package links (the worker, unit and integration
        // tests, benches) runs libtorch code.
        println!("cargo:rustc-link-arg={arg}");
    }
}

/// Builds the C++ shims against libtorch's headers (`<lib>/../include`),
/// with the C++ ABI the PyPI wheels use.
fn compile_shim(lib: &str) {
    const SOURCES: [&str; 5] = ["csrc/conv_relu6.cpp", "csrc/depthwise.cpp", "csrc/determinism.cpp", "csrc/optim.cpp", "csrc/probe.cpp"];
    const HEADERS: [&str; 1] = ["csrc/guarded.h"];
    for src in SOURCES.iter().chain(&HEADERS) {
        println!("cargo:rerun-if-changed={src}");
    }
    let include = std::path::Path::new(lib).join("../include");
    cc::Build::new()
        .cpp(true)
        .files(SOURCES)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("cairn_shim");
}
