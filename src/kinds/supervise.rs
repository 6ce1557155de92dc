//! Supervising a stage's child process: stdout lines are streamed to the
//! caller as they come, stderr is collected on its own thread (so a chatty
//! child can never block on a full pipe), and the child is killed as soon as
//! the run is interrupted.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::kind::StageFailure;

/// Waits for `child`, calling `on_line` for each stdout line. Returns its
/// exit status and everything it wrote to stderr.
pub(crate) fn supervise(
    mut child: Child,
    cancel: &AtomicBool,
    mut on_line: impl FnMut(&str),
) -> Result<(ExitStatus, Vec<u8>), StageFailure> {
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
    let status = loop {
        for line in rx.try_iter() {
            on_line(&line);
        }
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StageFailure { message: "interrupted".into(), interrupted: true });
        }
        match child.try_wait()? {
            Some(status) => break status,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let _ = out_thread.join();
    for line in rx.try_iter() {
        on_line(&line);
    }
    Ok((status, err_thread.join().unwrap_or_default()))
}
