//! The engine's side of the protocol with the `cairn-worker` process.
//!
//! The protocol itself ([`Job`], [`Event`], [`Probe`]) is defined once, in
//! `cairn_kind::protocol`, which the worker reads too; see its docs. Here is
//! only what the engine alone needs: where the worker binary is.

use std::path::PathBuf;

pub use cairn_kind::protocol::*;

/// Where the worker binary is: `$CAIRN_WORKER`, else next to the running
/// executable (or one level up, where test binaries live in `deps/`).
pub fn locate() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(WORKER_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the cairn executable: {e}"))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for candidate in [dir.join("cairn-worker"), dir.join("../cairn-worker")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "cannot find the `cairn-worker` binary next to {}; build it with `make setup` \
         (or `cargo build --release --workspace`), or set {WORKER_ENV}",
        exe.display()
    ))
}
