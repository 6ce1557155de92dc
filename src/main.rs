//! The `cairn` command line. Library errors are typed; here they become
//! messages and exit codes (see [`cli::exit`]).

mod cli;

/// A no-op `run` over a large pipeline is mostly small allocations (parsed
/// TOML, JSON manifests, maps); mimalloc spends about a quarter fewer
/// instructions on them than glibc's malloc (BENCHMARKS "Engine overhead").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    restore_sigpipe();
    std::process::exit(cli::main());
}

/// Lets a closed pipe end cairn quietly, as it does `cat` or `grep`
/// (`cairn status | head -1`). Rust ignores SIGPIPE, so every `println!`
/// after the reader left would panic with "Broken pipe" instead.
///
/// Dying there loses nothing: objects and manifests enter the cache by
/// atomic rename, the kernel releases the cache lock, and the next run
/// clears `cache/tmp`. Children are unaffected (std gives every process it
/// spawns the default SIGPIPE anyway), and cairn writes to no pipe but its
/// own stdout and stderr: stages get /dev/null as stdin, and downloads are
/// left to `curl`.
fn restore_sigpipe() {
    // SAFETY: called first thing in `main`, before any other thread exists;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
