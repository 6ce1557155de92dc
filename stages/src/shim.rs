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
