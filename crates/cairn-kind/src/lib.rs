//! The one definition of what a cairn stage kind declares, and of the
//! protocol between the engine and the `cairn-worker` process.
//!
//! Three crates speak it: the engine (`cairn`, which keys and schedules
//! stages), the declarations of the built-in ML kinds (`cairn-kinds`, which
//! check params), and the worker (`cairn-stages`, which runs them). None of
//! them translates: a kind's [`Kind::check`] returns the same [`Checked`]
//! the engine keys and plans with, and the engine hands the worker a
//! [`protocol::Job`] it reads with this same crate.
//!
//! A kind declares its typed params (checked before anything runs), its
//! input slots, its outputs and their artifact types, an implementation
//! version, and which parts of the environment change its results
//! ([`KindInfo`], [`Checked`]). How it runs is not declared here: the
//! engine's `command` kind runs in process, the ML kinds in the worker.
//!
//! This crate depends on serde and serde_json only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod bf16;
pub mod protocol;

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
}

impl OutputDecl {
    /// An output with its type's default extension.
    pub fn new(name: impl Into<String>, ty: ArtifactType) -> Self {
        Self { name: name.into(), ty, ext: ty.default_ext().to_string() }
    }
    /// An output whose extension is not its type's default.
    pub fn with_ext(name: impl Into<String>, ty: ArtifactType, ext: &str) -> Self {
        Self { ext: ext.to_string(), ..Self::new(name, ty) }
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

/// Whether `name` may name a stage, an output or an input slot: it starts
/// with a letter or `_` and uses only letters, digits, `_` and `-` (at most
/// 64).
pub fn is_safe_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Where an input comes from: written in `pipeline.toml`, or implied by a
/// kind's params (a weights file named by a param, a data set path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputRef {
    /// `"<stage>.<output>"`.
    Output { stage: String, output: String },
    /// A file or directory outside the cache, relative to the pipeline
    /// file, hashed by content. A missing file with a `url` is downloaded
    /// and checked against `sha256`; one with a `fetch` command names that
    /// command in its error (cairn never runs it).
    External {
        path: String,
        url: Option<String>,
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fetch: Option<String>,
    },
    /// The canonical params of the consuming stage and of every stage
    /// upstream of it, as a JSON document `{"stages": {name: {"kind",
    /// "params"}}}` that the engine writes (for reports that show what
    /// produced them). Only a kind can ask for it (as an implied input); it
    /// is not spelled in TOML.
    UpstreamParams,
}

/// Whether `s` is a SHA-256 digest as `sha256sum` prints it (64 hex digits).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `s` is a URL cairn downloads from (`http://` or `https://`).
pub fn is_download_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

impl InputRef {
    /// Parses `"<stage>.<output>"`.
    pub fn parse_output(s: &str) -> Result<InputRef, String> {
        match s.split_once('.') {
            Some((stage, output)) if is_safe_name(stage) && is_safe_name(output) => {
                Ok(InputRef::Output { stage: stage.into(), output: output.into() })
            }
            _ => Err(format!("`{s}` is not a reference of the form \"<stage>.<output>\"")),
        }
    }
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
    /// On the CPU: the thread count (float reductions are ordered per
    /// thread) and the CPU's class (the kernels libtorch dispatches to,
    /// native bf16).
    pub threads: bool,
}

/// Static facts about a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    /// The name used in `kind = "…"`.
    pub name: &'static str,
    /// Bumped whenever the kind's behaviour changes; part of the key.
    pub version: u32,
    /// One line for `--help`-style listings.
    pub summary: &'static str,
    pub env: EnvNeeds,
}

/// A kind's verdict on a stage's params.
#[derive(Clone, Debug)]
pub struct Checked {
    /// Canonical params: defaults filled in, types normalised. This is what
    /// enters the key and what the implementation receives.
    pub params: Value,
    pub inputs: Vec<InputSlot>,
    pub outputs: Vec<OutputDecl>,
    /// Inputs that params imply (e.g. a weights file named by a param),
    /// each under the name of the param that names it (or, for
    /// [`InputRef::UpstreamParams`], a name no param has).
    pub implied_inputs: Vec<(String, InputRef)>,
    pub env: EnvNeeds,
}

impl Checked {
    /// Params, slots and outputs, with no implied inputs and no
    /// environment needs.
    pub fn new(params: Value, inputs: Vec<InputSlot>, outputs: Vec<OutputDecl>) -> Self {
        Self { params, inputs, outputs, implied_inputs: Vec::new(), env: EnvNeeds::default() }
    }
    pub fn with_implied(mut self, slot: impl Into<String>, input: InputRef) -> Self {
        self.implied_inputs.push((slot.into(), input));
        self
    }
    pub fn with_env(mut self, env: EnvNeeds) -> Self {
        self.env = env;
        self
    }

    /// The params as they enter the stage's key: without a param that
    /// only says where an implied file or upstream output is (its path,
    /// URL, sha256 or fetch command; the stage it comes from), since what
    /// it names enters the key by content, as that input. Moving or
    /// renaming a file, or spelling its location another way, then re-runs
    /// nothing. The implementation still receives every param.
    pub fn key_params(&self) -> Value {
        let mut params = self.params.clone();
        if let Value::Object(map) = &mut params {
            for (slot, input) in &self.implied_inputs {
                if matches!(input, InputRef::Output { .. } | InputRef::External { .. }) {
                    map.remove(slot);
                }
            }
        }
        params
    }
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
    /// An error at `path` (keys from the stage table down).
    pub fn at(path: &[&str], message: impl Into<String>) -> Self {
        Self::new(path.iter().map(|s| s.to_string()).collect(), message)
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path.join("."))?;
        }
        f.write_str(&self.message)
    }
}

/// A kind's declaration: what the engine needs to validate a stage and key
/// it, without running anything. The ML kinds' declarations live in
/// `cairn-kinds`; the engine runs them through the worker.
pub trait Kind: Sync {
    fn info(&self) -> KindInfo;
    /// Validates raw params (the stage table minus `kind` and `inputs`).
    fn check(&self, raw: &Value) -> Result<Checked, ParamError>;
    /// [`Kind::check`] with the environment needs of [`Kind::info`]: what
    /// the engine keys and plans a stage with.
    fn checked(&self, raw: &Value) -> Result<Checked, ParamError> {
        Ok(self.check(raw)?.with_env(self.info().env))
    }
    /// Whether the kind can resume an interrupted execution: the engine
    /// then hands its jobs a checkpoint directory named by the stage key
    /// ([`protocol::Job::checkpoint_dir`]). Not part of the key: a resumed
    /// execution must produce the bytes an uninterrupted one would.
    fn resumable(&self) -> bool {
        false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_refs_parse_and_print() {
        let r = InputRef::parse_output("pretrain.model").unwrap();
        assert_eq!(r, InputRef::Output { stage: "pretrain".into(), output: "model".into() });
        assert_eq!(r.to_string(), "pretrain.model");
        assert!(InputRef::parse_output("pretrain").is_err());
        assert!(InputRef::parse_output("a.b.c").unwrap_err().contains("<stage>.<output>"));
    }

    #[test]
    fn a_param_that_locates_an_implied_input_stays_out_of_the_key() {
        let file = |path: &str| InputRef::External { path: path.into(), url: None, sha256: None, fetch: Some("make data".into()) };
        let checked = |source: &str| {
            Checked::new(serde_json::json!({"source": source, "size": 96, "init": {"stage": "a.model"}}), vec![], vec![])
                .with_implied("source", file(source))
                .with_implied("init", InputRef::parse_output("a.model").unwrap())
                .with_implied("pipeline", InputRef::UpstreamParams)
        };
        let (here, there) = (checked("data/x.tar"), checked("/elsewhere/y.tar"));
        assert_eq!(here.key_params(), serde_json::json!({"size": 96}));
        assert_eq!(here.key_params(), there.key_params());
        assert_eq!(here.params["source"], "data/x.tar", "the implementation still gets every param");
        // A param no implied input is named after stays in.
        let scratch = Checked::new(serde_json::json!({"init": "scratch"}), vec![], vec![]);
        assert_eq!(scratch.key_params(), serde_json::json!({"init": "scratch"}));
    }

    #[test]
    fn artifact_types_round_trip_through_their_names() {
        for ty in [ArtifactType::Tensor, ArtifactType::Table, ArtifactType::Model, ArtifactType::Figure, ArtifactType::Report, ArtifactType::File] {
            assert_eq!(ty.as_str().parse::<ArtifactType>().unwrap(), ty);
            assert_eq!(serde_json::to_value(ty).unwrap(), Value::String(ty.as_str().into()));
        }
        assert_eq!(OutputDecl::with_ext("metrics", ArtifactType::File, "json").file_name(), "metrics.json");
    }
}
