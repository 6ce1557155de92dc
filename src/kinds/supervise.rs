//! Supervising a stage's child process: stdout and stderr lines are
//! streamed to the caller as they come, each pipe drained on its own thread
//! (so a chatty child can never block on a full pipe), stderr is also kept
//! for the failure message. The child is reaped with `wait4`, which also
//! gives its peak resident memory: every executed stage reports it as the
//! `peak_rss_mb` metric, so memory bounds show up in `cairn runs`. The
//! kernel's count of out-of-memory kills is read when the child starts and
//! after it is reaped ([`crate::memory::oom_kills`]), so a SIGKILL's hint
//! can say whether the killer sent it.
//!
//! A stage is a process group, not a process, so the stage's own children
//! (a `sleep` under `sh`, data-loader workers) can be stopped with it. The
//! group is sent SIGTERM (then SIGKILL) when the run is interrupted, and
//! SIGKILL once the stage's process has exited, so nothing keeps writing
//! after a stage is over. [`spawn`] first starts the group's leader, a
//! small guard process that waits on a pipe only the engine holds and
//! kills the group when it closes: so if the engine itself dies (even by
//! SIGKILL), the stage dies with it. The stage's process then joins that
//! group, started with `posix_spawn`, which does not copy the engine's page
//! tables as a fork would. Where no guard can start, the stage leads its
//! own group and gets SIGKILL from the kernel when the engine dies
//! (`PR_SET_PDEATHSIG`, which needs a fork).

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::overlap::{Span, STAGES};
use crate::kind::StageFailure;

/// How a supervised child ended.
pub(crate) struct Ended {
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Its peak resident set size, in bytes.
    pub peak_rss: u64,
    /// What the kernel's out-of-memory killer did while it ran.
    pub oom: crate::memory::OomSince,
    /// Whether another stage's process ran at some moment of its life (in
    /// the same cgroup, so a kill counted then may have been that one's).
    pub beside: bool,
}

impl Ended {
    /// Peak RSS in MiB, the unit of the `peak_rss_mb` metric.
    pub fn peak_rss_mb(&self) -> f64 {
        self.peak_rss as f64 / (1024.0 * 1024.0)
    }
}

/// How much of a failed stage's stderr its error shows: the last lines,
/// within a byte budget (a progress bar redrawn with `\r` is one long line).
const STDERR_TAIL_LINES: usize = 20;
const STDERR_TAIL_BYTES: usize = 4000;

/// The end of what a stage's process wrote to stderr, for its failure
/// message: a `{label} (tail):` line and the last lines indented under it,
/// or a line saying stderr was empty (so the reader knows not to look for
/// more).
pub(crate) fn stderr_tail(stderr: &str, label: &str) -> String {
    let text = last_bytes(stderr.trim_end(), STDERR_TAIL_BYTES);
    if text.trim().is_empty() {
        return format!("\n  ({label} was empty)");
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
    let body: Vec<String> = tail.iter().map(|l| format!("    {l}")).collect();
    format!("\n  {label} (tail):\n{}", body.join("\n"))
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn last_bytes(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Reaps `child` if it has exited, without blocking: its status and peak RSS.
fn try_reap(child: &Child) -> std::io::Result<Option<(ExitStatus, u64)>> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, libc::WNOHANG, &mut usage) };
    match pid {
        0 => Ok(None),
        -1 => Err(std::io::Error::last_os_error()),
        // Linux reports ru_maxrss in KiB.
        _ => Ok(Some((ExitStatus::from_raw(status), usage.ru_maxrss.max(0) as u64 * 1024))),
    }
}

/// How long an interrupted stage gets to exit after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// A stage's process, started by [`spawn`], and the group it is in.
pub(crate) struct Spawned {
    child: Child,
    /// The group to signal: the guard's, or the stage's own without one.
    pgid: u32,
    guard: Option<Guard>,
    /// The out-of-memory kills counted before it started.
    oom_before: crate::memory::OomKills,
    /// Its life among the other stages' processes.
    span: Span<'static>,
}

/// Spawns `cmd` in a new process group that dies with the engine (see the
/// module doc).
pub(crate) fn spawn(cmd: &mut Command) -> std::io::Result<Spawned> {
    let oom_before = crate::memory::oom_kills();
    let span = STAGES.begin();
    let Some(guard) = Guard::start() else {
        let child = spawn_leader(cmd)?;
        return Ok(Spawned { pgid: child.id(), child, guard: None, oom_before, span });
    };
    let pgid = guard.child.id();
    match cmd.process_group(pgid as i32).spawn() {
        Ok(child) => Ok(Spawned { child, pgid, guard: Some(guard), oom_before, span }),
        Err(e) => {
            guard.release();
            Err(e)
        }
    }
}

/// Spawns `cmd` as the leader of a new process group, killed by the kernel
/// when the engine dies.
fn spawn_leader(cmd: &mut Command) -> std::io::Result<Child> {
    let engine = std::process::id();
    cmd.process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The engine may have died before the prctl took effect.
            if libc::getppid() as u32 != engine {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Leads a stage's process group and kills it if the engine dies: a `sh`
/// that blocks reading a pipe whose only writer is the engine, and kills
/// its own group at end of file (the engine is gone, or has closed the pipe
/// because the stage is over and the group was killed already). Nothing is
/// ever written to the pipe (the engine dies of SIGPIPE, restored for its
/// stdout, if it writes to a closed one). It ignores the SIGTERM and SIGINT
/// an interrupted run sends the group.
struct Guard {
    child: Child,
    pipe: std::fs::File,
}

impl Guard {
    fn start() -> Option<Guard> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fresh descriptors, owned below.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let child = Command::new("sh")
            .args(["-c", "trap '' TERM INT HUP; read line; kill -9 0"])
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, which the stage joins; not the
            // terminal's, so a Ctrl-C there reaches only the engine.
            .process_group(0)
            .spawn()
            .ok()?;
        Some(Guard { child, pipe: std::fs::File::from(write) })
    }

    /// Closes the pipe and reaps the guard, which the group's final
    /// SIGKILL or the end of file ends.
    fn release(mut self) {
        drop(self.pipe);
        let _ = self.child.wait();
    }
}

/// Signals every process of group `pgid` (harmless when there is no such
/// group any more: its leader, the guard or the stage, is not reaped before
/// the last signal, so the id cannot have been reused).
fn signal_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: kill with a negative pid signals a process group.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
}

/// What the supervisor hears: a line from one of the child's pipes, or
/// that the child has exited (not yet reaped, so its pid, which is its
/// group's id when no guard leads it, cannot be reused while the group is
/// signalled).
enum Line {
    Out(String),
    Err(String),
    Exited,
}

/// Blocks until `pid` has exited, leaving it unreaped (`WNOWAIT`).
fn wait_exited(pid: u32) {
    loop {
        // SAFETY: siginfo_t is plain old data that waitid fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Sends each line of `pipe` (invalid UTF-8 replaced, never a reason to
/// stop draining) to `tx`, and returns every byte read.
fn drain(pipe: Option<impl std::io::Read>, tx: std::sync::mpsc::Sender<Line>, wrap: fn(String) -> Line) -> Vec<u8> {
    let mut all = Vec::new();
    let Some(pipe) = pipe else { return all };
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        all.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string();
        // The receiver is gone only once the child was reaped; keep
        // draining so the child never blocks on a full pipe.
        let _ = tx.send(wrap(text));
        line.clear();
    }
    all
}

/// Waits for the stage's process, calling `on_out` for each stdout line
/// and `on_err` for each stderr line.
pub(crate) fn supervise(
    spawned: Spawned,
    cancel: &AtomicBool,
    mut on_out: impl FnMut(&str),
    mut on_err: impl FnMut(&str),
) -> Result<Ended, StageFailure> {
    let Spawned { mut child, pgid, guard, oom_before, span } = spawned;
    let (tx, rx) = std::sync::mpsc::channel::<Line>();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let out_tx = tx.clone();
    let exit_tx = tx.clone();
    let out_thread = std::thread::spawn(move || drain(stdout, out_tx, Line::Out));
    let err_thread = std::thread::spawn(move || drain(stderr, tx, Line::Err));
    let mut route = |line: Line| match line {
        Line::Out(l) => on_out(&l),
        Line::Err(l) => on_err(&l),
        Line::Exited => {}
    };
    let pid = child.id();
    let exit_tx = exit_tx;
    std::thread::spawn(move || {
        wait_exited(pid);
        let _ = exit_tx.send(Line::Exited);
    });
    // Lines as they come, the exit the moment it happens, and a look at
    // the cancel flag every 50 ms: no polling delay per stage.
    let mut wait_for_exit = |deadline: Option<Instant>| -> bool {
        loop {
            let timeout = deadline.map_or(Duration::from_millis(50), |d| d.saturating_duration_since(Instant::now()));
            match rx.recv_timeout(timeout) {
                Ok(Line::Exited) => return true,
                Ok(line) => route(line),
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => return false,
                Err(_) if deadline.is_none() && cancel.load(Ordering::Relaxed) => return false,
                Err(_) => {}
            }
        }
    };
    let interrupted = !wait_for_exit(None);
    if interrupted {
        // SIGTERM first, so a stage can save what it must; SIGKILL after a grace.
        signal_group(pgid, libc::SIGTERM);
        if !wait_for_exit(Some(Instant::now() + TERM_GRACE)) {
            signal_group(pgid, libc::SIGKILL);
            wait_for_exit(Some(Instant::now() + Duration::from_secs(3600)));
        }
    }
    // The stage's process is over: whatever it left running must not write on.
    signal_group(pgid, libc::SIGKILL);
    let reaped = try_reap(&child);
    if let Some(g) = guard {
        g.release();
    }
    if interrupted {
        return Err(StageFailure { message: "interrupted".into(), interrupted: true });
    }
    let (status, peak_rss) = reaped?.ok_or_else(|| StageFailure::new("the stage's process could not be reaped"))?;
    let _ = out_thread.join();
    let stderr = err_thread.join().unwrap_or_default();
    for line in rx.try_iter() {
        route(line);
    }
    let oom = crate::memory::oom_kills().since(&oom_before);
    Ok(Ended { status, stderr, peak_rss, oom, beside: span.beside() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_failure_shows_the_last_lines_of_stderr_or_says_there_were_none() {
        let many: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let shown = stderr_tail(&many, "stderr");
        assert!(shown.starts_with("\n  stderr (tail):\n    line 11\n"), "{shown}");
        assert!(shown.ends_with("    line 30") && !shown.contains("line 10\n"), "{shown}");
        assert_eq!(stderr_tail(" \n\n", "stderr"), "\n  (stderr was empty)");
    }

    #[test]
    fn stderr_tail_is_cut_at_a_character_boundary() {
        let text = "é".repeat(10);
        for max in 0..=21 {
            let t = last_bytes(&text, max);
            assert!(t.len() <= max && text.ends_with(t));
        }
    }

    #[test]
    fn both_pipes_stream_lines_and_stderr_is_kept() {
        // Invalid UTF-8 on stderr must not stop the draining, or a child
        // that writes more could block on a full pipe.
        let script = r"printf 'a\n'; printf 'x\377y\n' >&2; printf 'b\n'; printf 'z\n' >&2; head -c 200000 /dev/zero | tr '\0' e >&2";
        let child = spawn(Command::new("sh").args(["-c", script]).stdout(Stdio::piped()).stderr(Stdio::piped())).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let cancel = AtomicBool::new(false);
        let ended = supervise(child, &cancel, |l| out.push(l.to_string()), |l| err.push(l.to_string())).unwrap();
        assert!(ended.status.success());
        assert_eq!(out, ["a", "b"]);
        assert_eq!(&err[..2], ["x\u{fffd}y", "z"]);
        assert_eq!(err[2].len(), 200_000);
        assert_eq!(ended.stderr.len(), 4 + 2 + 200_000, "every byte is kept, raw");
    }
}
