//! What a stage's process could not say itself. A process killed by a
//! signal, or refused by the dynamic loader, reports no error of its own;
//! from how it ended, its stderr and its peak memory the engine names the
//! likely cause and the fix. Each hint says what it rests on, since only
//! the end is seen. SIGKILL reaches a stage from outside cairn (cairn's
//! own stop of an interrupted stage never comes here), most often from the
//! kernel's out-of-memory killer: the kernel's count of its kills, read
//! before the stage started and after it ended, says whether it struck
//! ([`crate::memory::OomSince`]); since every stage shares the engine's
//! cgroup, a kill counted while another stage ran may have been that
//! one's, which the hint then says ([`super::overlap`]). The hint shows
//! the peak beside the memory the process may use
//! ([`crate::memory::limit`]). Where the count says the killer killed
//! nothing, the hint lists what else sends SIGKILL.
//! The worker's crashes and load failures are cairn's to explain; a
//! command's are its program's, so a command gets only the memory hints.

use std::os::unix::process::ExitStatusExt;

use super::supervise::Ended;
use crate::memory::{self, OomSince};

/// Whose process ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Process {
    /// `cairn-worker`, run directly.
    Worker,
    /// A `command` stage under `sh -c`, which reports a child's death by
    /// signal N as exit status 128 + N.
    Command,
}

/// A `help:` line for a process that ended as `ended` without a message
/// of its own (`said`: its stderr, and its error where it sent one), or
/// `None` when what it said is enough.
pub(crate) fn hint(process: Process, ended: &Ended, said: &str) -> Option<String> {
    let (status, peak_rss) = (ended.status, ended.peak_rss);
    let signal = status.signal().or_else(|| match (process, status.code()) {
        (Process::Command, Some(code)) if (129..160).contains(&code) => Some(code - 128),
        _ => None,
    });
    let out_of_memory = ["memory allocation of", "std::bad_alloc", "not enough memory"].iter().any(|s| said.contains(s));
    let text = match (process, signal) {
        (_, Some(libc::SIGKILL)) => killed(process, ended.oom, ended.beside, peak_rss, memory::limit()),
        (_, _) if out_of_memory => format!("an allocation failed: the process ran out of memory{}", beside_limit(peak_rss, memory::limit())),
        (_, Some(libc::SIGBUS)) => "SIGBUS: a file it had mapped was cut short under it: a damaged or half-written library (cairn-worker's libtorch: `make verify-torch` checks it and installs it again) or an input truncated while it read".into(),
        (Process::Worker, Some(libc::SIGILL)) => "SIGILL: an instruction this CPU lacks: a cairn-worker built on another machine; `make` rebuilds it here".into(),
        (Process::Worker, Some(_)) => "cairn-worker crashed before it could report an error: a damaged libtorch install (`make verify-torch` hashes it and installs it again) or a bug in cairn; if it persists, please report it with the output of `cairn run -vv`".into(),
        (Process::Worker, None) if said.contains("error while loading shared libraries") => {
            "cairn-worker cannot load a library it was built against: libtorch, which `make setup` installs, was moved or deleted since; run `make setup`".into()
        }
        _ => return None,
    };
    Some(format!("\n  help: {text}"))
}

/// The hint for SIGKILL: whether the out-of-memory killer struck while the
/// stage ran, with the numbers that bear on it. `beside`: another stage
/// ran at the same time, so a kill the count shows may have been its.
fn killed(process: Process, oom: OomSince, beside: bool, peak_rss: u64, limit: Option<memory::Limit>) -> String {
    let less = match process {
        Process::Worker => " (a smaller `batch_size`, fewer or smaller images)",
        Process::Command => "",
    };
    let numbers = beside_limit(peak_rss, limit);
    let more = format!("Give the stage more memory, or make it need less{less}");
    let shared = if beside { "; another stage ran beside this one, and the killer may have struck its process instead" } else { "" };
    match oom {
        OomSince::InCgroup(n) => format!(
            "SIGKILL came from {}the kernel's out-of-memory killer, which killed {} in cairn's cgroup while the stage ran (`oom_kill` in the cgroup's memory counters){shared}{numbers}. {more}",
            if beside { "outside cairn, most likely from " } else { "" },
            processes(n)
        ),
        OomSince::OnMachine(n) => format!(
            "SIGKILL came from outside cairn, most likely from the kernel's out-of-memory killer, which killed {} on this machine while the stage ran (`oom_kill` in /proc/vmstat){shared}{numbers}. {more}",
            processes(n)
        ),
        OomSince::Nothing { where_ } => format!(
            "SIGKILL came from outside cairn, and not from the kernel's out-of-memory killer, which killed nothing {where_} while the stage ran (its `oom_kill` count); look for what else sends it: a user-space out-of-memory daemon (systemd-oomd, earlyoom), a job scheduler's time or memory limit, a cancelled CI job, or `kill -9`{numbers}"
        ),
        OomSince::Unknown => format!(
            "SIGKILL came from outside cairn, most often from the kernel's out-of-memory killer (`dmesg | grep -i oom` shows its kills){numbers}. {more}"
        ),
    }
}

/// `1 process`, `3 processes`.
fn processes(n: u64) -> String {
    if n == 1 { "1 process".into() } else { format!("{n} processes") }
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
    use std::process::ExitStatus;

    use super::*;

    /// How a process ended: `status`, with peak RSS `peak` and no
    /// out-of-memory kill counted while it ran.
    fn ended(status: ExitStatus, peak: u64) -> Ended {
        Ended { status, stderr: Vec::new(), peak_rss: peak, oom: OomSince::Nothing { where_: "in its cgroup" }, beside: false }
    }

    fn signalled(sig: i32) -> Ended {
        ended(ExitStatus::from_raw(sig), 0)
    }

    fn exited(code: i32) -> Ended {
        ended(ExitStatus::from_raw(code << 8), 0)
    }

    #[test]
    fn sigkill_says_whether_the_out_of_memory_killer_struck() {
        let limit = Some(memory::Limit { bytes: 700 << 20, source: "its cgroup's limit" });
        let h = killed(Process::Worker, OomSince::InCgroup(1), false, 1900 << 20, limit.clone());
        assert!(h.starts_with("SIGKILL came from the kernel's out-of-memory killer, which killed 1 process in cairn's cgroup"), "{h}");
        assert!(h.contains("peaked at 1.9 GiB") && h.contains("700 MiB (its cgroup's limit)") && h.contains("smaller `batch_size`"), "{h}");
        let h = killed(Process::Command, OomSince::OnMachine(2), false, 1 << 30, limit.clone());
        assert!(h.contains("most likely from the kernel's out-of-memory killer, which killed 2 processes on this machine"), "{h}");
        let h = killed(Process::Command, OomSince::Nothing { where_: "on this machine" }, true, 1 << 30, limit.clone());
        assert!(h.contains("not from the kernel's out-of-memory killer, which killed nothing on this machine") && h.contains("systemd-oomd"), "{h}");
        let h = killed(Process::Command, OomSince::Unknown, false, 1 << 30, limit.clone());
        assert!(h.contains("most often from the kernel's out-of-memory killer (`dmesg"), "{h}");
        assert!(!h.contains("beside"), "{h}");
    }

    /// A kill counted while another stage ran in the same cgroup may have
    /// been that one's: the hint no longer says it was this one's for sure.
    #[test]
    fn a_kill_counted_while_another_stage_ran_may_have_been_its() {
        let limit = Some(memory::Limit { bytes: 700 << 20, source: "its cgroup's limit" });
        let h = killed(Process::Worker, OomSince::InCgroup(1), true, 1900 << 20, limit.clone());
        assert!(h.starts_with("SIGKILL came from outside cairn, most likely from the kernel's out-of-memory killer, which killed 1 process in cairn's cgroup"), "{h}");
        assert!(h.contains("; another stage ran beside this one, and the killer may have struck its process instead; it peaked at 1.9 GiB"), "{h}");
        let h = killed(Process::Command, OomSince::OnMachine(1), true, 1 << 30, limit);
        assert!(h.contains("on this machine while the stage ran (`oom_kill` in /proc/vmstat); another stage ran beside this one"), "{h}");
    }

    #[test]
    fn sigkill_is_told_from_how_each_process_reports_it() {
        for process in [Process::Worker, Process::Command] {
            assert!(hint(process, &signalled(libc::SIGKILL), "").unwrap().contains("SIGKILL came from outside cairn"));
        }
        assert!(hint(Process::Command, &exited(137), "").unwrap().contains("SIGKILL"), "sh's 128 + 9");
        assert!(hint(Process::Worker, &exited(137), "").is_none(), "the worker's own exit code is its own");
    }

    #[test]
    fn a_worker_that_cannot_load_libtorch_is_sent_to_make_setup() {
        let stderr = "cairn-worker: error while loading shared libraries: libtorch_cpu.so: cannot open shared object file: No such file or directory\n";
        assert!(hint(Process::Worker, &exited(127), stderr).unwrap().contains("run `make setup`"));
        assert!(hint(Process::Command, &exited(127), stderr).is_none(), "a command's libraries are its own");
    }

    #[test]
    fn crashes_are_explained_for_the_worker_only() {
        let segv = hint(Process::Worker, &signalled(libc::SIGSEGV), "").unwrap();
        assert!(segv.contains("please report") && segv.contains("`make verify-torch`"), "{segv}");
        assert!(hint(Process::Worker, &signalled(libc::SIGILL), "").unwrap().contains("another machine"));
        assert!(hint(Process::Worker, &signalled(libc::SIGBUS), "").unwrap().contains("cut short"));
        assert!(hint(Process::Command, &signalled(libc::SIGSEGV), "").is_none());
        assert!(hint(Process::Command, &exited(1), "").is_none());
        let alloc = "memory allocation of 1073741824 bytes failed\n";
        assert!(hint(Process::Command, &signalled(libc::SIGABRT), alloc).unwrap().contains("ran out of memory"));
    }
}
