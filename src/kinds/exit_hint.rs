//! What a stage's process could not say itself. A process killed by a
//! signal, or refused by the dynamic loader, reports no error of its own;
//! from how it ended, its stderr and its peak memory the engine names the
//! likely cause and the fix. Each hint says what it rests on, since only
//! the end is seen. SIGKILL reaches a stage from outside cairn (cairn's
//! own stop of an interrupted stage never comes here), most often from the
//! kernel's out-of-memory killer, so it is shown beside the memory the
//! process may use ([`crate::memory::limit`]). The worker's crashes and
//! load failures are cairn's to explain; a command's are its program's,
//! so a command gets only the memory hints.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use crate::memory;

/// Whose process ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Process {
    /// `cairn-worker`, run directly.
    Worker,
    /// A `command` stage under `sh -c`, which reports a child's death by
    /// signal N as exit status 128 + N.
    Command,
}

/// A `help:` line for a process that ended as `status` without a message
/// of its own, or `None` when its stderr says enough.
pub(crate) fn hint(process: Process, status: ExitStatus, stderr: &str, peak_rss: u64) -> Option<String> {
    let signal = status.signal().or_else(|| match (process, status.code()) {
        (Process::Command, Some(code)) if (129..160).contains(&code) => Some(code - 128),
        _ => None,
    });
    let out_of_memory = ["memory allocation of", "std::bad_alloc", "not enough memory"].iter().any(|s| stderr.contains(s));
    let text = match (process, signal) {
        (_, Some(libc::SIGKILL)) => killed(process, peak_rss, memory::limit()),
        (_, _) if out_of_memory => format!("an allocation failed: the process ran out of memory{}", beside_limit(peak_rss, memory::limit())),
        (_, Some(libc::SIGBUS)) => "SIGBUS: a file it had mapped was cut short under it: a damaged or half-written library (cairn-worker's libtorch: `make setup` installs it again) or an input truncated while it read".into(),
        (Process::Worker, Some(libc::SIGILL)) => "SIGILL: an instruction this CPU lacks: a cairn-worker built on another machine; `make` rebuilds it here".into(),
        (Process::Worker, Some(_)) => "cairn-worker crashed before it could report an error: a damaged libtorch install (`make setup` installs it again) or a bug in cairn; if it persists, please report it with the output of `cairn run -vv`".into(),
        (Process::Worker, None) if stderr.contains("error while loading shared libraries") => {
            "cairn-worker cannot load a library it was built against: libtorch, which `make setup` installs, was moved or deleted since; run `make setup`".into()
        }
        _ => return None,
    };
    Some(format!("\n  help: {text}"))
}

/// The hint for SIGKILL: the out-of-memory killer's signature, with the
/// numbers that confirm or rule it out.
fn killed(process: Process, peak_rss: u64, limit: Option<memory::Limit>) -> String {
    let less = match process {
        Process::Worker => " (a smaller `batch_size`, fewer or smaller images)",
        Process::Command => "",
    };
    format!(
        "SIGKILL came from outside cairn, most often from the kernel's out-of-memory killer (`dmesg | grep -i oom` shows its kills){}. Give the stage more memory, or make it need less{less}",
        beside_limit(peak_rss, limit)
    )
}

/// `: it peaked at X; this machine allows Y (its source)`, as far as known.
fn beside_limit(peak_rss: u64, limit: Option<memory::Limit>) -> String {
    let peak = memory::show_bytes(peak_rss);
    match limit {
        Some(l) => format!("; it peaked at {peak}, and this machine allows {} ({})", memory::show_bytes(l.bytes), l.source),
        None => format!("; it peaked at {peak}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signalled(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn sigkill_is_shown_beside_the_peak_and_the_limit() {
        let h = killed(Process::Worker, 1900 << 20, Some(memory::Limit { bytes: 700 << 20, source: "its cgroup's limit" }));
        assert!(h.contains("out-of-memory killer") && h.contains("peaked at 1.9 GiB") && h.contains("700 MiB (its cgroup's limit)"), "{h}");
        for process in [Process::Worker, Process::Command] {
            assert!(hint(process, signalled(libc::SIGKILL), "", 1 << 30).unwrap().contains("out-of-memory killer"));
        }
        assert!(hint(Process::Command, exited(137), "", 1 << 30).unwrap().contains("out-of-memory killer"), "sh's 128 + 9");
        assert!(hint(Process::Worker, exited(137), "", 1 << 30).is_none(), "the worker's own exit code is its own");
    }

    #[test]
    fn a_worker_that_cannot_load_libtorch_is_sent_to_make_setup() {
        let stderr = "cairn-worker: error while loading shared libraries: libtorch_cpu.so: cannot open shared object file: No such file or directory\n";
        assert!(hint(Process::Worker, exited(127), stderr, 0).unwrap().contains("run `make setup`"));
        assert!(hint(Process::Command, exited(127), stderr, 0).is_none(), "a command's libraries are its own");
    }

    #[test]
    fn crashes_are_explained_for_the_worker_only() {
        assert!(hint(Process::Worker, signalled(libc::SIGSEGV), "", 0).unwrap().contains("please report"));
        assert!(hint(Process::Worker, signalled(libc::SIGILL), "", 0).unwrap().contains("another machine"));
        assert!(hint(Process::Worker, signalled(libc::SIGBUS), "", 0).unwrap().contains("cut short"));
        assert!(hint(Process::Command, signalled(libc::SIGSEGV), "", 0).is_none());
        assert!(hint(Process::Command, exited(1), "", 0).is_none());
        let alloc = "memory allocation of 1073741824 bytes failed\n";
        assert!(hint(Process::Command, signalled(libc::SIGABRT), alloc, 0).unwrap().contains("ran out of memory"));
    }
}
