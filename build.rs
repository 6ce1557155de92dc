//! Links the `cairn` binary position-dependent (`-no-pie`) on Linux.
//!
//! A position-independent executable of this size carries some 214,000
//! relative relocations (vtables, `&'static str`s, panic locations) that
//! the dynamic loader applies at every start, copying about 2 MB of
//! read-only data page by page: ~790 of the ~1,000 page faults of a fully
//! cached 8-stage `cairn run`, and 4 to 6 ms of its 12 to 15 ms on a 2-core
//! VM (BENCHMARKS.md, "Startup"). Linked at a fixed address the binary
//! needs no such relocations; shared libraries keep their randomised
//! addresses, only the executable's own image loses ASLR. Build with
//! `CAIRN_PIE=1` to keep a PIE. Only the `cairn` binary is affected: the
//! worker's start is dominated by loading libtorch, and tests link as
//! before.

fn main() {
    println!("cargo:rerun-if-env-changed=CAIRN_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let keep_pie = std::env::var("CAIRN_PIE").is_ok_and(|v| v == "1");
    if linux && !keep_pie {
        println!("cargo:rustc-link-arg-bin=cairn=-no-pie");
    }
}
