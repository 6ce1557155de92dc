//! The protocol between the engine and the `cairn-worker` process.
//!
//! Kinds that need libtorch run in a separate binary so that the `cairn`
//! binary never loads libtorch (most of a second at start-up) and so that a
//! crash inside libtorch kills a worker, not the engine holding the cache
//! lock. The engine writes a [`Job`] as JSON to a file in the stage's
//! scratch directory and runs `cairn-worker run <job.json>`. The worker
//! writes each declared output to the path given in `outputs`, prints
//! [`Event`]s as JSON lines on stdout, writes human-readable logs to stderr,
//! and exits 0 on success. Any other exit fails the stage; nothing it wrote
//! is cached.
//!
//! A job names the kind *and the version* its key was computed with, and
//! carries the environment entries of that key ([`JobEnv::keyed`]). The
//! worker refuses a job whose kind version is not its own (a `cairn-worker`
//! left over from another checkout) or whose keyed libtorch, device or CPU
//! class is not the one it would run on, so an output is never cached under
//! a key that does not describe how it was made. `cairn-worker --probe`
//! prints a [`Probe`]: the facts those entries come from, read from libtorch
//! itself (see [`crate::env`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The environment variable that hands the worker its log filter (an
/// `EnvFilter` string: `warn`, `info`, `cairn_stages=debug`…).
pub const LOG_ENV: &str = "CAIRN_LOG";

/// Bumped when [`Job`], [`Event`] or [`Probe`] change incompatibly.
/// 2: jobs carry the kind version and keyed environment; `--probe`.
pub const PROTOCOL_VERSION: u32 = 2;

/// The environment variable naming the worker binary, overriding the one
/// next to the `cairn` executable.
pub const WORKER_ENV: &str = "CAIRN_WORKER";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub protocol: u32,
    pub kind: String,
    /// The kind's implementation version the stage was keyed with; the
    /// worker refuses a job whose version is not its own.
    pub version: u32,
    /// The stage's name, for messages only.
    pub stage: String,
    /// Canonical params, as checked by the kind's declaration.
    pub params: Value,
    /// Slot → artifact paths (read-only files in the cache).
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    /// Output name → path to write.
    pub outputs: BTreeMap<String, PathBuf>,
    /// Private scratch directory, removed after the stage.
    pub scratch: PathBuf,
    pub seed: u64,
    pub env: JobEnv,
    /// Whether a human is watching a terminal (progress bars on stderr).
    pub interactive: bool,
}

/// The environment a job runs under, as the engine keyed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnv {
    /// `cpu`, or `cuda:<device name>` as the probe reported it.
    pub device: String,
    /// Intra-op threads for CPU compute.
    pub threads: usize,
    /// The environment entries of the stage's key (`libtorch`, `device`,
    /// `threads`, `cpu_capability`, `native_bf16`, as the kind needs them).
    /// The worker checks each against its own facts before running.
    #[serde(default)]
    pub keyed: BTreeMap<String, String>,
}

impl JobEnv {
    /// A CPU job keyed on nothing, for tests and benches that drive a kind
    /// directly.
    pub fn cpu(threads: usize) -> Self {
        Self { device: "cpu".into(), threads, keyed: BTreeMap::new() }
    }

    pub fn is_cuda(&self) -> bool {
        self.device.starts_with("cuda")
    }
}

/// What `cairn-worker --probe` prints, one JSON object: facts read from
/// the libtorch the worker loads, and the versions of the code it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The worker's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The version of the libtorch library loaded (its build settings'
    /// `TORCH_VERSION`), e.g. `2.11.0`.
    pub libtorch: String,
    /// The libtorch library file the version was read from (the cache of
    /// probes is checked against it: a reinstall makes a new probe).
    #[serde(default)]
    pub libtorch_path: Option<PathBuf>,
    /// Whether libtorch can use a CUDA device.
    pub cuda: bool,
    /// `cuda:<name of device 0>` when `cuda`, else `cpu`.
    pub device: String,
    /// The CPU kernels libtorch dispatches to: `DEFAULT`, `AVX2`, `AVX512`
    /// on x86 (`ATEN_CPU_CAPABILITY` can lower it).
    pub cpu_capability: String,
    /// The CPU's native bf16 instructions, best first (`amx_bf16`,
    /// `avx512_bf16`, `avx_ne_convert`…), or `none` where libtorch emulates
    /// bf16 arithmetic.
    pub native_bf16: String,
    /// Each kind this worker implements → its implementation version.
    pub kinds: BTreeMap<String, u32>,
}

/// Where the worker binary is: `$CAIRN_WORKER`, else next to the running
/// executable (or one level up, where test binaries live in `deps/`).
pub fn locate() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(WORKER_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the cairn executable: {e}"))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for candidate in [dir.join("cairn-worker"), dir.join("../cairn-worker")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "cannot find the `cairn-worker` binary next to {}; build it with `make setup` \
         (or `cargo build --release --workspace`), or set {WORKER_ENV}",
        exe.display()
    ))
}

/// One line of the worker's stdout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A status line, optionally with a bar position.
    Progress(crate::kind::Progress),
    /// A summary metric for the manifest and run history.
    Metric { name: String, value: f64 },
    /// A log line worth keeping.
    Log { line: String },
    /// The reason for a failure, sent just before a non-zero exit.
    Error { message: String },
}

impl Event {
    /// Serialises the event as one line (for the worker side).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("events always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Progress;

    #[test]
    fn progress_events_carry_an_optional_bar_position() {
        let plain = Event::Progress(Progress::line("epoch 1/3"));
        assert_eq!(plain.to_line(), r#"{"event":"progress","message":"epoch 1/3"}"#);
        let at = Event::Progress(Progress { message: "step".into(), done: Some(5), total: Some(10), transient: true });
        let back: Event = serde_json::from_str(&at.to_line()).unwrap();
        assert_eq!(back, at);
    }
}
