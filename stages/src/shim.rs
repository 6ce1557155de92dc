//! Calling the C++ shims in `csrc/`: each entry point catches its C++
//! exceptions and copies the message into a buffer the caller passes, so
//! that no exception unwinds into Rust.

/// Runs `f` with an error buffer and turns a non-zero return into the
/// C++ exception's message.
pub fn checked(f: impl FnOnce(*mut u8, i32) -> i32) -> Result<(), String> {
    let mut err = vec![0u8; 1024];
    if f(err.as_mut_ptr(), err.len() as i32) == 0 {
        return Ok(());
    }
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    Err(String::from_utf8_lossy(&err[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    extern "C" {
        fn cairn_parallel_pieces(n: i64) -> i32;
    }

    /// The shims' `at::parallel_for` loops run on libtorch's threads: a
    /// shim compiled without OpenMP would run them on one, which changes
    /// no result, only the time.
    #[test]
    fn shim_loops_use_libtorch_threads() {
        let before = tch::get_num_threads();
        tch::set_num_threads(2);
        // SAFETY: no arguments beyond a count; the shim catches nothing
        // because its loop body cannot throw.
        let pieces = unsafe { cairn_parallel_pieces(64) };
        tch::set_num_threads(before);
        assert_eq!(pieces, 2, "the shims were compiled without OpenMP (build.rs), so their loops run on one thread");
    }
}
