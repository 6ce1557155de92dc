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
//! itself.
//!
//! Each input names its content hash next to its path ([`JobInput`]): a
//! worker on another machine can fetch it by digest; a local worker reads
//! the path.
//!
//! A job of a resumable kind ([`crate::Kind::resumable`]) may name a
//! [`Job::checkpoint_dir`]: a directory that outlives the job, named by the
//! stage key, where the worker keeps what it needs to resume an interrupted
//! execution of the same key. It is never an output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{KindInfo, OutputDecl, Progress};

/// The environment variable that hands the worker its log filter (an
/// `EnvFilter` string: `warn`, `info`, `cairn_stages=debug`…).
pub const LOG_ENV: &str = "CAIRN_LOG";

/// Bumped when [`Job`], [`Event`] or [`Probe`] change incompatibly.
/// 2: jobs carry the kind version and keyed environment; `--probe`.
/// 3: inputs carry their content hash next to their path.
///
/// An optional field that either side may ignore is not a bump: a job's
/// `checkpoint_dir` is left out when unset, an older worker ignores it (and
/// so does not checkpoint), and a newer worker reads its absence as none.
pub const PROTOCOL_VERSION: u32 = 3;

/// The variables that cap oneDNN's instruction set (its current name and
/// its old one): they change its convolution kernels and their numbers,
/// so the worker reports a cap in its `cpu_capability` fact and the
/// engine probes again when one changes.
pub const ONEDNN_ISA_VARS: [&str; 2] = ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"];

/// The variables that change which kernels MKL, libtorch's BLAS on x86,
/// runs for matrix products (`MKL_ENABLE_INSTRUCTIONS` caps its
/// instruction set, `MKL_CBWR` pins one code branch): each changes their
/// numbers, so the worker reports them in its `cpu_capability` fact and
/// the engine probes again when one changes.
pub const MKL_VARS: [&str; 2] = ["MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR"];

/// The environment variable naming the worker binary, overriding the one
/// next to the `cairn` executable.
pub const WORKER_ENV: &str = "CAIRN_WORKER";

/// The libtorch version cairn's worker is built against (tch 0.24 pins it;
/// `scripts/setup-torch.sh` installs it and is where scripts and the
/// Makefile read it; a test keeps the two equal). Keys use what the worker
/// reports, not this; it is for messages and for tests.
pub const TORCH_VERSION: &str = "2.11.0";

/// One stage execution, as the engine hands it to the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Slot → the artifacts connected to it, in spec order.
    pub inputs: BTreeMap<String, Vec<JobInput>>,
    /// Output name → path to write.
    pub outputs: BTreeMap<String, PathBuf>,
    /// Private scratch directory, removed after the stage.
    pub scratch: PathBuf,
    pub seed: u64,
    pub env: JobEnv,
    /// Whether a human is watching a terminal (progress bars on stderr).
    pub interactive: bool,
    /// Where a resumable kind keeps its checkpoint between executions of
    /// the same stage key (it exists; the engine removes it once the
    /// stage's result is stored). `None`: do not checkpoint or resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<PathBuf>,
}

/// One input artifact of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInput {
    /// Where this machine has it (a read-only object in the cache, or an
    /// external file).
    pub path: PathBuf,
    /// Its content hash (blake3, hex; a directory's is its Merkle hash), as
    /// it entered the stage's key. `None` only for jobs built by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

impl JobInput {
    pub fn new(path: impl Into<PathBuf>, hash: Option<String>) -> Self {
        Self { path: path.into(), hash }
    }
}

impl From<PathBuf> for JobInput {
    fn from(path: PathBuf) -> Self {
        Self { path, hash: None }
    }
}

impl From<&Path> for JobInput {
    fn from(path: &Path) -> Self {
        path.to_path_buf().into()
    }
}

impl Job {
    /// A job for `kind` at its own version, with the canonical `params` its
    /// declaration checked, running in `scratch`: no inputs or outputs yet,
    /// seed 0, a one-thread CPU keyed on nothing, not interactive. Every
    /// job is built here (the engine, tests, benches); add to it with the
    /// `with_*` methods.
    pub fn new(kind: KindInfo, stage: impl Into<String>, params: Value, scratch: impl Into<PathBuf>) -> Self {
        Self {
            protocol: PROTOCOL_VERSION,
            kind: kind.name.to_string(),
            version: kind.version,
            stage: stage.into(),
            params,
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            scratch: scratch.into(),
            seed: 0,
            env: JobEnv::cpu(1),
            interactive: false,
            checkpoint_dir: None,
        }
    }

    /// Connects `inputs` to `slot`, after any already there.
    pub fn with_input<I: Into<JobInput>>(mut self, slot: &str, inputs: impl IntoIterator<Item = I>) -> Self {
        self.inputs.entry(slot.to_string()).or_default().extend(inputs.into_iter().map(Into::into));
        self
    }

    pub fn with_output(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.outputs.insert(name.to_string(), path.into());
        self
    }

    /// Each declared output at `<dir>/<name>.<ext>`.
    pub fn with_outputs_in<'a>(mut self, dir: &Path, outputs: impl IntoIterator<Item = &'a OutputDecl>) -> Self {
        for o in outputs {
            self.outputs.insert(o.name.clone(), dir.join(o.file_name()));
        }
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn with_env(mut self, env: JobEnv) -> Self {
        self.env = env;
        self
    }

    pub fn with_checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// The paths connected to `slot` (empty if none).
    pub fn input_paths(&self, slot: &str) -> Vec<&Path> {
        self.inputs.get(slot).map(|v| v.iter().map(|i| i.path.as_path()).collect()).unwrap_or_default()
    }
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

/// The intra-op thread count for CPU compute: `CAIRN_THREADS`, else the
/// number of CPUs.
pub fn threads_from_env() -> usize {
    std::env::var("CAIRN_THREADS").ok().and_then(|s| parse_threads(&s)).unwrap_or_else(cpus)
}

/// Why `CAIRN_THREADS` is set but not used, where it is.
pub fn threads_env_problem() -> Option<String> {
    let v = std::env::var("CAIRN_THREADS").ok()?;
    parse_threads(&v).is_none().then(|| format!("CAIRN_THREADS={v} is not a positive whole number; stages use {} threads, this machine's CPUs", cpus()))
}

fn parse_threads(s: &str) -> Option<usize> {
    s.trim().parse().ok().filter(|&n: &usize| n > 0)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// What `cairn-worker --probe` prints, one JSON object: facts read from
/// the libtorch the worker loads, and the versions of the code it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The worker's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The version of the libtorch library loaded (its build settings'
    /// `TORCH_VERSION`), e.g. [`TORCH_VERSION`].
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
    /// on x86 (`ATEN_CPU_CAPABILITY` can lower it), followed by the CPU's
    /// vendor where it is not Intel (`, on AuthenticAMD`), oneDNN's cap and
    /// MKL's settings where set.
    pub cpu_capability: String,
    /// The CPU's native bf16 instructions, best first (`amx_bf16`,
    /// `avx512_bf16`, [`AVX512_BF16_INTEL`], [`AVX_NE_CONVERT_ONLY`]…), or `none`
    /// where libtorch emulates bf16 arithmetic.
    pub native_bf16: String,
    /// Each kind this worker implements → its implementation version.
    pub kinds: BTreeMap<String, u32>,
}

pub use crate::bf16::{bf16_outruns_fp32, has_native_bf16, AVX512_BF16_INTEL, AVX_NE_CONVERT_ONLY};

/// Each kind's name → its version, as a [`Probe`] lists them.
pub fn kind_versions(kinds: impl IntoIterator<Item = KindInfo>) -> BTreeMap<String, u32> {
    kinds.into_iter().map(|k| (k.name.to_string(), k.version)).collect()
}

/// One line of the worker's stdout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A status line, optionally with a bar position.
    Progress(Progress),
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
    use crate::{ArtifactType, EnvNeeds};

    /// A value `CAIRN_THREADS` cannot mean is not used (and the CLI says
    /// so, from `threads_env_problem`), never taken as some other count.
    #[test]
    fn thread_counts_parse_as_positive_whole_numbers() {
        assert_eq!(parse_threads("4"), Some(4));
        assert_eq!(parse_threads(" 2\n"), Some(2));
        for bad in ["0", "-1", "two", "1.5", ""] {
            assert_eq!(parse_threads(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn progress_events_carry_an_optional_bar_position() {
        let plain = Event::Progress(Progress::line("epoch 1/3"));
        assert_eq!(plain.to_line(), r#"{"event":"progress","message":"epoch 1/3"}"#);
        let at = Event::Progress(Progress { message: "step".into(), done: Some(5), total: Some(10), transient: true });
        let back: Event = serde_json::from_str(&at.to_line()).unwrap();
        assert_eq!(back, at);
    }

    #[test]
    fn torch_version_is_the_one_setup_torch_installs() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup-torch.sh");
        let text = std::fs::read_to_string(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        let set: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("TORCH_VERSION=")).collect();
        assert_eq!(set, [TORCH_VERSION], "{} and TORCH_VERSION disagree", script.display());
    }

    #[test]
    fn jobs_name_inputs_by_path_and_hash() {
        let info = KindInfo { name: "resize", version: 7, summary: "", env: EnvNeeds::default() };
        let job = Job::new(info, "s", serde_json::json!({"size": 8}), "/scratch")
            .with_input("images", [JobInput::new("/cache/objects/ab", Some("ab".repeat(32)))])
            .with_input("images", [PathBuf::from("/data/x")])
            .with_outputs_in(Path::new("/out"), &[OutputDecl::new("train", ArtifactType::Tensor)])
            .with_seed(3);
        assert_eq!((job.protocol, job.kind.as_str(), job.version), (PROTOCOL_VERSION, "resize", 7));
        assert_eq!(job.input_paths("images"), [Path::new("/cache/objects/ab"), Path::new("/data/x")]);
        assert_eq!(job.outputs["train"], Path::new("/out/train.arrow"));
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["inputs"]["images"][0]["hash"], serde_json::json!("ab".repeat(32)));
        assert!(json["inputs"]["images"][1].get("hash").is_none());
        assert_eq!(serde_json::from_value::<Job>(json).unwrap(), job);
    }

    /// Without a bump of `PROTOCOL_VERSION`, both sides must read what the
    /// other writes: a job without a checkpoint directory is the JSON an
    /// older engine wrote, and an older worker ignores the field.
    #[test]
    fn a_checkpoint_dir_is_optional_both_ways() {
        let info = KindInfo { name: "train", version: 8, summary: "", env: EnvNeeds::default() };
        let plain = Job::new(info, "s", serde_json::json!({}), "/scratch");
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("checkpoint_dir").is_none(), "an unset field is left out: {json}");
        assert_eq!(serde_json::from_value::<Job>(json).unwrap().checkpoint_dir, None);
        let resumable = plain.with_checkpoint_dir("/cache/checkpoints/ab");
        let json = serde_json::to_value(&resumable).unwrap();
        assert_eq!(json["checkpoint_dir"], serde_json::json!("/cache/checkpoints/ab"));
        assert_eq!(serde_json::from_value::<Job>(json).unwrap(), resumable);
    }
}
