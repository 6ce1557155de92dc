//! Supervising a stage's child process: stdout lines are streamed to the
//! caller as they come, stderr is collected on its own thread (so a chatty
//! child can never block on a full pipe), and the child is killed as soon as
//! the run is interrupted. The child is reaped with `wait4`, which also
//! gives its peak resident memory: every executed stage reports it as the
//! `peak_rss_mb` metric, so memory bounds show up in `cairn runs`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::kind::StageFailure;

/// How a supervised child ended.
pub(crate) struct Ended {
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Its peak resident set size, in bytes.
    pub peak_rss: u64,
}

impl Ended {
    /// Peak RSS in MiB, the unit of the `peak_rss_mb` metric.
    pub fn peak_rss_mb(&self) -> f64 {
        self.peak_rss as f64 / (1024.0 * 1024.0)
    }
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

/// Waits for `child`, calling `on_line` for each stdout line.
pub(crate) fn supervise(mut child: Child, cancel: &AtomicBool, mut on_line: impl FnMut(&str)) -> Result<Ended, StageFailure> {
    let mut stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out_thread = std::thread::spawn(move || {
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let (status, peak_rss) = loop {
        for line in rx.try_iter() {
            on_line(&line);
        }
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StageFailure { message: "interrupted".into(), interrupted: true });
        }
        match try_reap(&child)? {
            Some(ended) => break ended,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let _ = out_thread.join();
    for line in rx.try_iter() {
        on_line(&line);
    }
    Ok(Ended { status, stderr: err_thread.join().unwrap_or_default(), peak_rss })
}
