//! Deterministic mode on CUDA, for the `deterministic` train param.
//!
//! CPU kernels are already repeatable for a fixed thread count, so nothing
//! is switched there (libtorch's deterministic mode would also fill every
//! new tensor with NaN, a cost CPU runs need not pay). On CUDA it does what
//! `torch.use_deterministic_algorithms(True, warn_only=True)` plus
//! `cudnn.deterministic = True` and `cudnn.benchmark = False` do in Python,
//! through a small C++ shim (`csrc/determinism.cpp`; tch binds none of
//! these), and cuBLAS gets the fixed workspace it needs to be repeatable
//! (`CUBLAS_WORKSPACE_CONFIG`, set in `cairn-worker`'s `main` before any
//! CUDA call). `warn_only`: an op with no deterministic kernel logs a
//! libtorch warning naming itself instead of aborting the stage. The
//! models avoid the usual offenders (adaptive pooling's CUDA backward) by
//! pooling with plain reductions.

extern "C" {
    fn cairn_set_deterministic(on: i32);
    fn cairn_deterministic_algorithms() -> i32;
}

/// The cuBLAS workspace setting PyTorch documents for reproducible GEMMs.
pub const CUBLAS_WORKSPACE_CONFIG: &str = ":4096:8";

/// Switches libtorch's deterministic mode on or off for this process.
pub fn set(on: bool) {
    // SAFETY: plain setters on libtorch's global context; no pointers cross.
    unsafe { cairn_set_deterministic(on as i32) }
}

/// Whether libtorch's deterministic-algorithms flag is on.
pub fn enabled() -> bool {
    // SAFETY: a getter on libtorch's global context.
    unsafe { cairn_deterministic_algorithms() != 0 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shim_switches_libtorch_flag() {
        assert!(!super::enabled());
        super::set(true);
        assert!(super::enabled());
        super::set(false);
        assert!(!super::enabled());
    }
}
