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
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The declaration side of the kind interface is defined once, in the
/// `cairn-kind` crate, shared with the kind declarations and the worker.
pub use cairn_kind::{
    ArtifactType, Checked, EnvNeeds, InputRef, InputSlot, Kind, KindInfo, OutputDecl, ParamError, Progress,
};

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

/// Where a stage writes progress and metrics. Implemented by the runner.
pub trait Reporter: Send + Sync {
    fn progress(&self, stage: &str, progress: &Progress);
    /// Free-form log line from the stage.
    fn log(&self, stage: &str, line: &str);
    /// Whether [`Reporter::log`] shows its lines (`-v`): a submitted stage
    /// whose log must be fetched from the remote fetches it only then.
    fn wants_log(&self) -> bool {
        true
    }
}

/// Everything a running stage may touch.
pub struct StageCtx<'a> {
    pub stage: &'a str,
    pub params: &'a Value,
    /// Input slot → paths of the (read-only) input artifacts, in spec order.
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    /// Slot → the content hashes of those inputs, as they entered the key
    /// (same order as `inputs`).
    pub input_hashes: BTreeMap<String, Vec<crate::digest::ArtifactHash>>,
    /// Output name → the path the stage must write it to.
    pub outputs: BTreeMap<String, PathBuf>,
    /// A private, empty directory, deleted after the stage.
    pub scratch: &'a Path,
    /// The pipeline file's directory, where `{ file = ... }` inputs are
    /// found; for messages only (a stage that read from it would depend on
    /// what its key does not hold). Empty where unknown (a node without
    /// the project's filesystem).
    pub project_dir: &'a Path,
    /// Where a resumable kind may keep a checkpoint between executions of
    /// this stage key (`cache/checkpoints/<key>`, not yet created; removed
    /// once the result is stored). `None` where nothing may resume (`verify`).
    pub checkpoint_dir: Option<PathBuf>,
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
    /// The help for an input the stage connects to a slot its kind lacks,
    /// where the kind can say more than which slots it has (a `command`'s
    /// slots are the `{in.NAME}` its `cmd` names).
    fn unknown_slot_help(&self, _slot: &str) -> Option<String> {
        None
    }
    /// Executes the stage.
    fn run(&self, ctx: &mut StageCtx<'_>) -> Result<(), StageFailure>;
}
