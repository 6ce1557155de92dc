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
//! determinism switches, its fused optimizer kernels, a training
//! BatchNorm with ReLU6 fused, a depthwise
//! convolution with its own weight gradient, a convolution with ReLU6
//! fused for inference and the facts
//! `cairn-worker --probe` reports — for which tch has no binding, with
//! OpenMP, so that their loops run on libtorch's threads.

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
    const SOURCES: [&str; 7] =
        ["csrc/batch_norm.cpp", "csrc/conv_relu6.cpp", "csrc/depthwise.cpp", "csrc/determinism.cpp", "csrc/optim.cpp", "csrc/parallel.cpp", "csrc/probe.cpp"];
    const HEADERS: [&str; 1] = ["csrc/guarded.h"];
    for src in SOURCES.iter().chain(&HEADERS) {
        println!("cargo:rerun-if-changed={src}");
    }
    let include = std::path::Path::new(lib).join("../include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .files(SOURCES)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // No fused multiply-adds the source does not spell out: a loop
        // compiled for AVX2 and for plain x86-64 gives the same bits.
        .flag("-ffp-contract=off")
        // Float comparisons may be evaluated whether or not a branch needs
        // them (their only side effect is a status flag no shim reads), so
        // loops with a clamp's mask vectorise; values are unchanged.
        .flag("-fno-trapping-math")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false);
    // `at::parallel_for` is a header template that splits a loop across
    // threads with `#pragma omp parallel` where libtorch was built with
    // OpenMP, as the PyPI wheels are (they ship their `libgomp.so.1` beside
    // libtorch); compiled without `-fopenmp` it runs every shim loop on one
    // thread. Linked by that name, the shims share libtorch's OpenMP
    // runtime and thread count.
    let gomp = std::path::Path::new(lib).join("libgomp.so.1");
    println!("cargo:rerun-if-changed={}", gomp.display());
    let openmp = gomp.exists();
    if openmp {
        build.flag("-fopenmp");
    }
    build.compile("cairn_shim");
    if openmp {
        println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
    }
}
