//! The log of a job of the remote data plane, on its node: the job's
//! stdout and stderr (and its stage's) go to a file in its own directory,
//! whose tail is uploaded beside its record while it runs and at its end,
//! since nothing else of the node is visible to the engine. The thread
//! that uploads it keeps the stage's checkpoints on the remote too
//! ([`super::node_checkpoints`]).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::job::LOG_FILE;
use super::node_checkpoints::Checkpoints;
use super::remote_job::LOG_MAX;
use crate::remote::Remote;

/// What a running job keeps on the remote: its log's tail and its
/// checkpoints.
pub struct NodeFiles {
    remote: Arc<Remote>,
    job: String,
    log: PathBuf,
    /// The log's length when its tail was last uploaded.
    log_sent: u64,
    checkpoints: Checkpoints,
}

impl NodeFiles {
    pub fn new(remote: Arc<Remote>, job: &str, log: PathBuf, checkpoints: PathBuf) -> Self {
        Self { remote, job: job.to_string(), log, log_sent: 0, checkpoints: Checkpoints::new(checkpoints) }
    }

    /// Brings the job's checkpoints from the remote (a requeued job's).
    pub fn restore_checkpoints(&mut self) {
        self.checkpoints.restore(&self.remote, &self.job);
    }

    /// Uploads the checkpoints the remote lacks.
    pub fn sync_checkpoints(&mut self) {
        self.checkpoints.sync(&self.remote, &self.job);
    }

    /// Uploads what changed; whether anything did.
    fn sync(&mut self) -> bool {
        let len = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log = len != self.log_sent;
        // A failure is retried at the next tick; the final upload reports.
        if log && self.remote.put_job_file(&self.job, LOG_FILE, tail(&self.log, LOG_MAX), false).is_ok() {
            self.log_sent = len;
        }
        let checkpoints = self.checkpoints.sync(&self.remote, &self.job);
        log || checkpoints
    }
}

/// Uploads the job's files while the stage runs, when they changed: every
/// second at first, then every [`LOG_EVERY`]. A job that is killed
/// outright (`scancel` kills a batch job at once) still leaves the start
/// of its log, and at most that much of its end is missing; a requeued
/// one finds the checkpoint of at most that long ago.
pub struct Uploader {
    files: Arc<Mutex<NodeFiles>>,
    /// Dropped to stop the thread at once, not at its next tick.
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// How often a running job's files are uploaded once it has run a while.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

impl Uploader {
    pub fn start(files: NodeFiles) -> Self {
        let files = Arc::new(Mutex::new(files));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let shared = files.clone();
        let thread = std::thread::spawn(move || {
            let (t0, mut last_tick) = (Instant::now(), Instant::now());
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_millis(100)) {
                let every = if t0.elapsed() < LOG_EVERY { Duration::from_secs(1) } else { LOG_EVERY };
                if last_tick.elapsed() >= every && lock(&shared).sync() {
                    last_tick = Instant::now();
                }
            }
        });
        Self { files, stop, thread }
    }

    /// Runs `f` on the files while the thread waits (it never uploads a
    /// file being restored).
    pub fn with<T>(&self, f: impl FnOnce(&mut NodeFiles) -> T) -> T {
        f(&mut lock(&self.files))
    }

    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

fn lock(files: &Mutex<NodeFiles>) -> std::sync::MutexGuard<'_, NodeFiles> {
    files.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first line of a tail that is not the whole log.
pub const DROPPED: &str = "[... earlier lines dropped]\n";

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
        out.splice(0..0, DROPPED.bytes());
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
