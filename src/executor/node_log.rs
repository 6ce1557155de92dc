//! The log of a job of the remote data plane, on its node: the job's
//! stdout and stderr (and its stage's) go to a file in its own directory,
//! whose tail is uploaded beside its record while it runs and at its end,
//! since nothing else of the node is visible to the engine.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::job::LOG_FILE;
use super::remote_job::LOG_MAX;
use crate::remote::Remote;

/// Uploads the log's tail while the stage runs, when it grew: every second
/// at first, then every [`LOG_EVERY`]. A job that is killed outright
/// (`scancel` kills a batch job at once) still leaves the start of its
/// log, and at most that much of its end is missing.
pub struct LogUploader {
    /// Dropped to stop the thread at once, not at its next tick.
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// How often a running job's log is uploaded once it has run a while.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

impl LogUploader {
    pub fn start(remote: Arc<Remote>, job: String, log: PathBuf) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let (t0, mut last_tick, mut sent) = (Instant::now(), Instant::now(), 0);
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_millis(100)) {
                let every = if t0.elapsed() < LOG_EVERY { Duration::from_secs(1) } else { LOG_EVERY };
                let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                if last_tick.elapsed() >= every && len != sent {
                    last_tick = Instant::now();
                    // A failure is retried at the next tick; the final upload reports.
                    if remote.put_job_file(&job, LOG_FILE, tail(&log, LOG_MAX), false).is_ok() {
                        sent = len;
                    }
                }
            }
        });
        Self { stop, thread }
    }

    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// The last `max` bytes of `log`, from a line's start.
pub fn tail(log: &Path, max: u64) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(log) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() || f.read_to_end(&mut out).is_err() {
        return Vec::new();
    }
    if len > max {
        let start = out.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        out.drain(..start);
        out.splice(0..0, b"[... earlier lines dropped]\n".iter().copied());
    }
    out
}

/// Sends this process's stdout and stderr (and its children's) to `log`,
/// which the job uploads at its end, until the guard is dropped: the
/// Slurm output (on the node) keeps only what happens before and after.
pub fn redirect_output(log: &Path) -> std::io::Result<Redirected> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(log)?;
    std::io::stdout().flush()?;
    let mut saved = [-1; 2];
    for (i, fd) in [1, 2].into_iter().enumerate() {
        // SAFETY: dup and dup2 on descriptors this process owns.
        saved[i] = unsafe { libc::dup(fd) };
        if saved[i] < 0 || unsafe { libc::dup2(file.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(Redirected { saved })
}

/// Puts stdout and stderr back when dropped.
pub struct Redirected {
    saved: [i32; 2],
}

impl Drop for Redirected {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        for (fd, saved) in [1, 2].into_iter().zip(self.saved) {
            // SAFETY: `saved` are this process's own duplicates.
            unsafe {
                libc::dup2(saved, fd);
                libc::close(saved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_keeps_its_last_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("job.log");
        std::fs::write(&log, (0..100).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
        let t = String::from_utf8(tail(&log, 50)).unwrap();
        assert!(t.starts_with("[... earlier lines dropped]\nline ") && t.ends_with("line 99\n"), "{t}");
        assert_eq!(tail(&log, 10_000), std::fs::read(&log).unwrap());
    }
}
