//! What a worker-side stage sees: its job, its device, and a channel back to
//! the engine (events on stdout, see `cairn_kind::protocol`).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_kind::protocol::{Event, Job};
use cairn_kind::Progress;

/// A stage failure inside the worker. The message is shown to the user
/// prefixed with the stage name, so it should say what went wrong, where
/// (file, epoch, step) and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StageError(pub String);

impl StageError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl From<tch::TchError> for StageError {
    fn from(e: tch::TchError) -> Self {
        Self(format!("libtorch: {e}"))
    }
}

/// A param the worker could resolve only once it read an input (a
/// `gradcam` layer against the stored model), with the declaration's help.
impl From<cairn_kind::ParamError> for StageError {
    fn from(e: cairn_kind::ParamError) -> Self {
        match &e.help {
            Some(help) => Self(format!("{e}; {help}")),
            None => Self(e.to_string()),
        }
    }
}

impl From<std::io::Error> for StageError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

pub type StageResult<T = ()> = Result<T, StageError>;

pub struct WorkerCtx {
    pub job: Job,
    pub device: tch::Device,
    /// Slot → the local paths of the job's inputs.
    input_paths: BTreeMap<String, Vec<PathBuf>>,
    /// When [`WorkerCtx::progress_due`] last said yes.
    last_update: Cell<Instant>,
}

impl WorkerCtx {
    pub fn new(job: Job) -> Self {
        // No fallback to the CPU: a job keyed on CUDA runs on CUDA or not at
        // all (`cairn-worker` refuses it before it gets here).
        let device = if job.env.is_cuda() { tch::Device::Cuda(0) } else { tch::Device::Cpu };
        let input_paths =
            job.inputs.iter().map(|(slot, inputs)| (slot.clone(), inputs.iter().map(|i| i.path.clone()).collect())).collect();
        Self { job, device, input_paths, last_update: Cell::new(Instant::now()) }
    }

    pub fn input(&self, slot: &str) -> StageResult<&Path> {
        self.inputs(slot)
            .first()
            .map(|p| p.as_path())
            .ok_or_else(|| StageError::new(format!("input slot `{slot}` is not connected")))
    }

    /// Every artifact connected to a slot (empty if none).
    pub fn inputs(&self, slot: &str) -> &[PathBuf] {
        self.input_paths.get(slot).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn has_input(&self, slot: &str) -> bool {
        !self.inputs(slot).is_empty()
    }

    pub fn output(&self, name: &str) -> StageResult<&Path> {
        self.job
            .outputs
            .get(name)
            .map(|p| p.as_path())
            .ok_or_else(|| StageError::new(format!("`{name}` is not a declared output of `{}`", self.job.kind)))
    }

    pub fn scratch(&self) -> &Path {
        &self.job.scratch
    }

    pub fn seed(&self) -> u64 {
        self.job.seed
    }

    pub fn threads(&self) -> usize {
        self.job.env.threads
    }

    /// The CPU's native bf16 support as the job was keyed with it (the
    /// probe fact `native_bf16`; the worker refuses a job keyed with another
    /// value than its own), or `none` for a job keyed on no CPU facts.
    pub fn native_bf16(&self) -> &str {
        self.job.env.keyed.get("native_bf16").map_or("none", String::as_str)
    }

    pub fn progress(&self, message: impl Into<String>) {
        emit(&Event::Progress(Progress::line(message)));
    }

    /// Whether a mid-step update (a transient [`WorkerCtx::progress_at`])
    /// is due: at most once a second, so a loop can ask every step.
    pub fn progress_due(&self) -> bool {
        let due = self.last_update.get().elapsed() >= Duration::from_secs(1);
        if due {
            self.last_update.set(Instant::now());
        }
        due
    }

    /// Progress with a bar position: `done` of `total` units. A `transient`
    /// update moves a terminal's bar; a log gets it only as a heartbeat, at
    /// most every 30 s (logs keep one line per epoch).
    pub fn progress_at(&self, message: impl Into<String>, done: u64, total: u64, transient: bool) {
        emit(&Event::Progress(Progress { message: message.into(), done: Some(done), total: Some(total), transient }));
    }

    pub fn metric(&self, name: &str, value: f64) {
        emit(&Event::Metric { name: name.into(), value });
    }

    pub fn log(&self, line: impl Into<String>) {
        emit(&Event::Log { line: line.into() });
    }
}

/// Writes one event line to stdout and flushes, so the engine sees it now.
pub fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", event.to_line());
    let _ = out.flush();
}
