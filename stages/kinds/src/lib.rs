//! Declarations of cairn's built-in ML stage kinds: typed params, input
//! slots, outputs and implementation versions — and nothing that computes.
//!
//! This crate links no libtorch, so the `cairn` binary can validate a whole
//! pipeline, compute keys and answer `status` without loading it. The
//! computing half of each kind lives in `cairn-stages` (the worker), which
//! deserialises the same param structs from the canonical JSON the engine
//! hands it. Keeping both halves on one struct is what makes "the params the
//! key was computed from" and "the params the stage ran with" the same thing.
//!
//! Versions live here, next to the params: bump a kind's `VERSION` whenever
//! its worker code changes results. `tests/kind_fingerprints.rs` pins a
//! fingerprint of each kind's worker sources to its version
//! (`stages/kinds/fingerprints.toml`), so a change without a bump fails
//! `make test`; the worker refuses jobs keyed with another version.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub mod data;
pub mod eval;
pub mod gradcam;
pub mod report;
pub mod train;

/// Static facts about a kind.
#[derive(Clone, Copy, Debug)]
pub struct KindInfo {
    pub name: &'static str,
    pub version: u32,
    pub summary: &'static str,
    /// Results depend on the libtorch version and device kind.
    pub torch: bool,
    /// Results on the CPU depend on the thread count and the CPU's class
    /// (the kernels libtorch dispatches to, native bf16).
    pub threads: bool,
}

/// An input slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub required: bool,
    pub many: bool,
}

impl Slot {
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

/// An output: name, artifact type (`tensor`, `table`, `model`, `figure`,
/// `report`, `file`) and an extension when it is not the type's default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Out {
    pub name: String,
    pub ty: &'static str,
    pub ext: Option<&'static str>,
    /// Holds wall-clock measurements (seconds, images/s), so it is not
    /// expected to be bit-identical across runs; `cairn verify` reports it
    /// but does not fail on it.
    pub volatile: bool,
}

impl Out {
    pub fn new(name: impl Into<String>, ty: &'static str) -> Self {
        Self { name: name.into(), ty, ext: None, volatile: false }
    }
    /// An output that records timings; see [`Out::volatile`].
    pub fn timed(name: impl Into<String>, ty: &'static str) -> Self {
        Self { name: name.into(), ty, ext: None, volatile: true }
    }
    pub fn with_ext(name: impl Into<String>, ty: &'static str, ext: &'static str) -> Self {
        Self { name: name.into(), ty, ext: Some(ext), volatile: false }
    }
}

/// An input implied by a param (a weights file, a data set path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Implied {
    /// `"<stage>.<output>"`
    Output(String),
    /// A file outside the cache, relative to the pipeline file. When missing
    /// and `url` is set, the engine downloads it and checks `sha256`.
    File { path: String, url: Option<String>, sha256: Option<String> },
    /// The canonical params of this stage and of every stage upstream of
    /// it, as a JSON document `{"stages": {name: {"kind", "params"}}}`
    /// that the engine writes (for reports that show what produced them).
    UpstreamParams,
}

/// The result of checking a stage's params.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Canonical params: the typed struct serialised back, defaults filled in.
    pub params: Value,
    pub inputs: Vec<Slot>,
    pub outputs: Vec<Out>,
    pub implied: Vec<(String, Implied)>,
}

/// A param error, located by its path within the stage's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    pub path: Vec<String>,
    pub message: String,
    pub help: Option<String>,
}

impl ParamError {
    pub fn at(path: &[&str], message: impl Into<String>) -> Self {
        Self { path: path.iter().map(|s| s.to_string()).collect(), message: message.into(), help: None }
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A built-in kind's declaration.
pub trait Kind: Sync {
    fn info(&self) -> KindInfo;
    fn check(&self, raw: &Value) -> Result<Plan, ParamError>;
}

/// Every built-in ML kind.
pub fn all() -> Vec<&'static dyn Kind> {
    vec![
        &data::LoadSubset,
        &data::Resize,
        &train::Train,
        &eval::Evaluate,
        &report::Report,
        &gradcam::GradCam,
    ]
}

pub fn find(name: &str) -> Option<&'static dyn Kind> {
    all().into_iter().find(|k| k.info().name == name)
}

/// Deserialises raw params into `P` (which should use
/// `#[serde(deny_unknown_fields)]` and defaults), reporting the failing
/// path, and returns `P` with its canonical JSON form.
pub fn typed<P: DeserializeOwned + Serialize>(raw: &Value) -> Result<(P, Value), ParamError> {
    let p: P = serde_path_to_error::deserialize(raw.clone()).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        ParamError { path, message: e.into_inner().to_string(), help: None }
    })?;
    let canonical = serde_json::to_value(&p).map_err(|e| ParamError::at(&[], e.to_string()))?;
    Ok((p, canonical))
}
