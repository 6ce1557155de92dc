//! The stage-kind interface: everything the engine knows about what a stage does.
//!
//! The engine never looks inside a stage. A kind declares its typed params
//! (checked before anything runs), its input slots, its outputs and their
//! artifact types, an implementation version, and which parts of the
//! environment change its results. `run` then reads inputs and writes outputs
//! only through [`StageCtx`]; the engine hashes and stores whatever was
//! written. Kinds that need libtorch implement `run` by handing the job to
//! the `cairn-worker` process (see [`crate::worker`]), so the engine itself
//! never links libtorch.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an output holds, which fixes its file extension and how `inspect`
/// shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactType {
    /// Arrow IPC file with one `arrow.fixed_shape_tensor` column.
    Tensor,
    /// Parquet file.
    Table,
    /// safetensors weights.
    Model,
    /// PNG image.
    Figure,
    /// HTML or Markdown document.
    Report,
    /// Anything else; the extension comes from the declaration.
    File,
}

impl ArtifactType {
    pub fn default_ext(self) -> &'static str {
        match self {
            ArtifactType::Tensor => "arrow",
            ArtifactType::Table => "parquet",
            ArtifactType::Model => "safetensors",
            ArtifactType::Figure => "png",
            ArtifactType::Report => "html",
            ArtifactType::File => "bin",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactType::Tensor => "tensor",
            ArtifactType::Table => "table",
            ArtifactType::Model => "model",
            ArtifactType::Figure => "figure",
            ArtifactType::Report => "report",
            ArtifactType::File => "file",
        }
    }
}

impl fmt::Display for ArtifactType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArtifactType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "tensor" => ArtifactType::Tensor,
            "table" => ArtifactType::Table,
            "model" => ArtifactType::Model,
            "figure" => ArtifactType::Figure,
            "report" => ArtifactType::Report,
            "file" => ArtifactType::File,
            other => return Err(format!("unknown artifact type `{other}`")),
        })
    }
}

/// One declared output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDecl {
    pub name: String,
    pub ty: ArtifactType,
    /// File extension without the dot.
    pub ext: String,
    /// Holds wall-clock measurements, so re-execution is not expected to
    /// reproduce it bit for bit (`cairn verify` reports but tolerates it).
    #[serde(default)]
    pub volatile: bool,
}

impl OutputDecl {
    pub fn new(name: impl Into<String>, ty: ArtifactType) -> Self {
        Self { name: name.into(), ty, ext: ty.default_ext().to_string(), volatile: false }
    }
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.ext)
    }
}

/// One declared input slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSlot {
    pub name: String,
    pub required: bool,
    /// Whether the slot takes a list of references.
    pub many: bool,
}

impl InputSlot {
    pub fn one(name: &str) -> Self {
        Self { name: name.into(), required: true, many: false }
    }
    pub fn optional(name: &str) -> Self {
        Self { name: name.into(), required: false, many: false }
    }
    pub fn many(name: &str) -> Self {
        Self { name: name.into(), required: true, many: true }
    }
}

/// Where an input comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputRef {
    /// `"<stage>.<output>"`.
    Output { stage: String, output: String },
    /// A file or directory outside the cache, hashed by content. A missing
    /// file with a `url` is downloaded and checked against `sha256`.
    External { path: String, url: Option<String>, sha256: Option<String> },
    /// The params of the consuming stage and all its ancestors, as the JSON
    /// document [`crate::spec::Pipeline::upstream_params`] writes. Only a
    /// kind can ask for it (as an implied input); it is not spelled in TOML.
    UpstreamParams,
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputRef::Output { stage, output } => write!(f, "{stage}.{output}"),
            InputRef::External { path, .. } => write!(f, "file {path}"),
            InputRef::UpstreamParams => f.write_str("the params of upstream stages"),
        }
    }
}

/// Which facts about the machine change a kind's results, and so enter its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EnvNeeds {
    /// libtorch version and device kind (cpu, or the CUDA device's name).
    pub torch: bool,
    /// The CPU thread count (float reductions are ordered per thread).
    pub threads: bool,
}

/// A kind's verdict on a stage's params.
#[derive(Clone, Debug)]
pub struct Checked {
    /// Canonical params: defaults filled in, types normalised. This is what
    /// enters the key and what `run` receives.
    pub params: Value,
    pub inputs: Vec<InputSlot>,
    pub outputs: Vec<OutputDecl>,
    /// Inputs that params imply (e.g. a weights file named by a param).
    pub implied_inputs: Vec<(String, InputRef)>,
    pub env: EnvNeeds,
}

/// A param problem, located by its path inside the stage's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    /// Keys from the stage table down to the offending value; empty means
    /// the stage as a whole.
    pub path: Vec<String>,
    pub message: String,
    pub help: Option<String>,
}

impl ParamError {
    pub fn new(path: Vec<String>, message: impl Into<String>) -> Self {
        Self { path, message: message.into(), help: None }
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Why a stage's run failed. Rendered to the user with the stage's name.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StageFailure {
    pub message: String,
    /// Set when the failure was an interrupt (Ctrl-C), not the stage's fault.
    pub interrupted: bool,
}

impl StageFailure {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), interrupted: false }
    }
}

impl From<std::io::Error> for StageFailure {
    fn from(e: std::io::Error) -> Self {
        StageFailure::new(e.to_string())
    }
}

/// A progress update from a running stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// One line, e.g. `epoch 3/30 loss 0.41 acc 86.1% 812 img/s`.
    pub message: String,
    /// Units done of `total` (e.g. optimizer steps), when the stage can
    /// say: a terminal shows a bar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// A mid-epoch update: it moves a terminal's bar but is left out of
    /// logs, which get one line per epoch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

impl Progress {
    /// A plain status line with no bar position.
    pub fn line(message: impl Into<String>) -> Self {
        Self { message: message.into(), ..Self::default() }
    }
}

/// Where a stage writes progress and metrics. Implemented by the runner.
pub trait Reporter: Send + Sync {
    fn progress(&self, stage: &str, progress: &Progress);
    /// Free-form log line from the stage.
    fn log(&self, stage: &str, line: &str);
}

/// Everything a running stage may touch.
pub struct StageCtx<'a> {
    pub stage: &'a str,
    pub params: &'a Value,
    /// Input slot → paths of the (read-only) input artifacts, in spec order.
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    /// Output name → the path the stage must write it to.
    pub outputs: BTreeMap<String, PathBuf>,
    /// A private, empty directory, deleted after the stage.
    pub scratch: &'a Path,
    pub seed: u64,
    pub env: &'a crate::env::Environment,
    pub reporter: &'a dyn Reporter,
    /// Summary metrics the stage reports (go into the manifest and run history).
    pub metrics: BTreeMap<String, f64>,
    /// Set by the runner when the user interrupts; long stages poll it.
    pub cancel: &'a std::sync::atomic::AtomicBool,
}

impl StageCtx<'_> {
    pub fn input(&self, slot: &str) -> Result<&Path, StageFailure> {
        self.inputs
            .get(slot)
            .and_then(|v| v.first())
            .map(|p| p.as_path())
            .ok_or_else(|| StageFailure::new(format!("input slot `{slot}` is not connected")))
    }
    pub fn output(&self, name: &str) -> Result<&Path, StageFailure> {
        self.outputs
            .get(name)
            .map(|p| p.as_path())
            .ok_or_else(|| StageFailure::new(format!("`{name}` is not a declared output")))
    }
}

/// A stage kind. See the module docs.
pub trait StageKind: Send + Sync {
    /// The name used in `kind = "…"`.
    fn name(&self) -> &str;
    /// Bumped whenever the kind's behaviour changes; part of the key.
    fn version(&self) -> u32;
    /// One line for `--help`-style listings.
    fn summary(&self) -> &str {
        ""
    }
    /// Validates raw params (the stage table minus `kind` and `inputs`).
    fn check(&self, params: &Value) -> Result<Checked, ParamError>;
    /// Executes the stage.
    fn run(&self, ctx: &mut StageCtx<'_>) -> Result<(), StageFailure>;
}
