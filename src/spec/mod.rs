//! From `pipeline.toml` to a checked [`Pipeline`].
//!
//! Loading is all-or-nothing and happens before any stage runs: the file is
//! parsed with spans ([`parse`]), the chosen profile and `--set` flags are
//! applied ([`overrides`]), every stage's params are checked by its kind
//! and then by the rules every stage follows ([`rules`]), every input
//! reference is resolved against declared outputs, and the graph is
//! checked for cycles. All problems found are reported together,
//! each with `file:line:col` and a hint.

pub mod auto_profile;
pub mod diag;
pub mod executors;
pub mod overrides;
pub mod parse;
pub mod remote;
pub mod rules;
pub mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

pub use auto_profile::{Chosen, ProfileChoice};
pub use diag::{Diagnostic, Origin};
use parse::{is_safe_name, RawSpec, NAME_HELP};

use crate::dag::Graph;
use crate::kind::{Checked, InputRef, StageKind};
use crate::kinds::Registry;

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read pipeline file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diags: &[Diagnostic]) -> String {
    let mut s: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    if diags.len() > 1 {
        s.push(format!("{} errors in the pipeline", diags.len()));
    }
    s.join("\n")
}

#[derive(Clone, Debug)]
pub struct LoadOptions<'a> {
    pub profile: ProfileChoice<'a>,
    /// Raw `--set` flags.
    pub sets: Vec<String>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self { profile: ProfileChoice::None, sets: Vec::new() }
    }
}

/// A checked stage.
#[derive(Clone)]
pub struct Stage {
    pub name: String,
    pub kind: Arc<dyn StageKind>,
    pub checked: Checked,
    /// Slot → references, the declared ones and those the params imply.
    pub inputs: BTreeMap<String, Vec<InputRef>>,
}

/// A file or directory beside the pipeline file `pipeline_file`: where its
/// lock, local overrides, artifacts and (by default) cache live, wherever
/// cairn is run from.
pub fn beside(pipeline_file: &Path, name: &str) -> PathBuf {
    pipeline_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).join(name)
}

/// A checked pipeline, stages in topological order.
#[derive(Clone)]
pub struct Pipeline {
    pub name: String,
    pub seed: u64,
    pub file: PathBuf,
    /// Directory relative paths in the spec are resolved against.
    pub root: PathBuf,
    /// The profile applied, if any, and why.
    pub profile: Option<(String, Chosen)>,
    pub stages: Vec<Stage>,
    pub graph: Graph,
    /// The `[remote]` table, when present.
    pub remote: Option<remote::RemoteSpec>,
    /// The `[executors.NAME]` tables.
    pub executors: BTreeMap<String, executors::ExecutorSpec>,
    /// Stage → the executor it chose (`executor = "NAME"`); absent: local.
    /// Kept beside the stages, never in them: it is not part of any key.
    pub stage_executors: BTreeMap<String, String>,
    /// The sweep this pipeline was merged from (`run --sweep`), if any.
    pub sweep: Option<sweep::Sweep>,
    /// The `--set` overrides it was loaded with, saved ones first, as
    /// given (a sweep's: those its points share). Not part of any key.
    pub sets: Vec<String>,
}

impl Pipeline {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.graph.index_of(name)
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.index_of(name).map(|i| &self.stages[i])
    }

    /// The executor `stage` chose, if any (absent: local).
    pub fn executor_of(&self, stage: &str) -> Option<&str> {
        self.stage_executors.get(stage).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.name.as_str())
    }

    /// The name `stage` has in `pipeline.toml`: a sweep's variant
    /// `finetune@2` is `finetune`.
    pub fn declared_name<'a>(&'a self, stage: &'a str) -> &'a str {
        self.sweep.as_ref().map_or(stage, |s| s.declared(stage))
    }

    /// The document behind an [`InputRef::UpstreamParams`] input of stage
    /// `i`: `{"stages": {name: {"kind": k, "params": canonical}}}` for `i`
    /// and every stage it reads from, transitively. Stages it does not
    /// depend on are left out, so editing them leaves its key alone.
    pub fn upstream_params(&self, i: usize) -> Vec<u8> {
        let stages: serde_json::Map<String, serde_json::Value> = self
            .graph
            .ancestors_of(&[i])
            .into_iter()
            .map(|j| {
                let s = &self.stages[j];
                (self.declared_name(&s.name).to_string(), serde_json::json!({"kind": s.kind.name(), "params": s.checked.params}))
            })
            .collect();
        serde_json::to_vec_pretty(&serde_json::json!({ "stages": stages })).expect("JSON values serialise")
    }

    /// The hash of stage `i`'s [`Self::upstream_params`] document where it
    /// reads one: the object the engine stores for it when it runs.
    pub fn upstream_params_hash(&self, i: usize) -> Option<crate::digest::ArtifactHash> {
        let reads = self.stages[i].inputs.values().flatten().any(|r| *r == InputRef::UpstreamParams);
        reads.then(|| crate::digest::ArtifactHash::of_bytes(&self.upstream_params(i)))
    }
}

/// Loads and checks a pipeline file.
pub fn load(path: &Path, opts: &LoadOptions, registry: &Registry) -> Result<Pipeline, SpecError> {
    let bytes = std::fs::read(path).map_err(|source| SpecError::Read { path: path.to_path_buf(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))?;
    load_str(path, &text, opts, registry)
}

/// A pipeline file that is not UTF-8 (TOML's only encoding), named at the
/// first byte that is not.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> SpecError {
    let at = e.valid_up_to();
    let before = std::str::from_utf8(&bytes[..at]).expect("valid up to here");
    let origin = diag::SourceMap::new(path.to_path_buf(), before).origin(Some(at..at));
    SpecError::Invalid(vec![Diagnostic {
        origin,
        message: format!("the file is not UTF-8 text (byte 0x{:02x})", bytes[at]),
        help: Some("TOML files are UTF-8: save it as UTF-8, or check that -f names the pipeline file and not a data file".into()),
    }])
}

/// Like [`load`], from text already read.
pub fn load_str(path: &Path, text: &str, opts: &LoadOptions, registry: &Registry) -> Result<Pipeline, SpecError> {
    let display = path.to_path_buf();
    let mut raw = parse::parse(diag::SourceMap::new(display, text), text).map_err(SpecError::Invalid)?;
    let mut diags = Vec::new();
    let profile = auto_profile::choose(&raw, opts.profile);
    let chosen = chosen_overrides(&raw, profile.as_ref().map(|(name, _)| name.as_str()), &opts.sets, &mut diags);
    let origins = overrides::apply(&mut raw, &chosen, &mut diags);
    let stage_executors = take_executor_choices(&mut raw, &origins, &mut diags);
    let checked = (0..raw.stages.len()).filter_map(|i| check_stage(&mut raw, i, &origins, registry, &mut diags)).collect();
    let stages = resolve_inputs(&raw, checked, &mut diags);
    if !diags.is_empty() {
        diags.sort_by(|a, b| a.origin.cmp(&b.origin));
        return Err(SpecError::Invalid(diags));
    }
    let (stages, graph) = ordered(stages).map_err(|cycle| cycle_error(&raw, &cycle))?;
    // Absolute, because stages run in their own working directory.
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let root = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    Ok(Pipeline {
        name: raw.name,
        seed: raw.seed,
        file: path.to_path_buf(),
        root,
        profile,
        stages,
        graph,
        remote: raw.remote,
        executors: raw.executors,
        stage_executors,
        sweep: None,
        sets: opts.sets.clone(),
    })
}

/// The profile's overrides, then the `--set` flags (later ones win).
fn chosen_overrides(raw: &RawSpec, profile: Option<&str>, sets: &[String], diags: &mut Vec<Diagnostic>) -> Vec<overrides::Override> {
    let mut chosen = Vec::new();
    if let Some(name) = profile {
        match overrides::profile_overrides(raw, name, Origin::Flag(format!("(profile {name})"))) {
            Ok(o) => chosen.extend(o),
            Err(d) => diags.push(d),
        }
    }
    for flag in sets {
        match overrides::parse_flag(flag) {
            Ok(o) => chosen.push(o),
            Err(d) => diags.push(d),
        }
    }
    chosen
}

/// Stage `i` checked by its kind, or `None` with what is wrong in `diags`.
fn check_stage(
    raw: &mut RawSpec,
    i: usize,
    origins: &Origins,
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
) -> Option<(usize, Arc<dyn StageKind>, Checked)> {
    let Some(kind) = registry.get(&raw.stages[i].kind) else {
        diags.push(unknown_kind(raw, &raw.stages[i], registry));
        return None;
    };
    // The kind reads params as a JSON object: lent to it, not copied, and
    // put back for the rules and messages below.
    let params = Value::Object(std::mem::take(&mut raw.stages[i].params));
    let result = kind.check(&params);
    if let Value::Object(m) = params {
        raw.stages[i].params = m;
    }
    let rs = &raw.stages[i];
    match result {
        Ok(checked) => {
            diags.extend(rule_violations(raw, origins, rs, &checked, kind.as_ref()));
            // Nothing reads a checked stage's raw params again: freed now,
            // not with the whole spec (a third of the parse's peak).
            raw.stages[i].params = serde_json::Map::new();
            Some((i, kind, checked))
        }
        Err(e) => {
            // The kind's path ends at the offending key, an unknown one
            // included (serde_path_to_error records the key it failed on).
            let shown = if e.path.is_empty() { String::new() } else { format!(" `{}`", e.path.join(".")) };
            diags.push(Diagnostic {
                origin: param_origin(raw, origins, &rs.name, &e.path),
                message: format!("stage `{}` ({}): param{shown}: {}", rs.name, rs.kind, e.message),
                help: e.help,
            });
            None
        }
    }
}

fn unknown_kind(raw: &RawSpec, rs: &parse::RawStage, registry: &Registry) -> Diagnostic {
    let path = ["stages".to_string(), rs.name.clone(), "kind".into()];
    let known = registry.names().collect::<Vec<_>>().join(", ");
    Diagnostic {
        origin: raw.source.origin(raw.span_of(&path)),
        message: format!("unknown stage kind `{}`", rs.kind),
        help: Some(match diag::closest(&rs.kind, registry.names()) {
            Some(s) => format!("did you mean `{s}`? (known kinds: {known})"),
            None => format!("known kinds: {known}"),
        }),
    }
}

fn cycle_error(raw: &RawSpec, cycle: &[String]) -> SpecError {
    let path = ["stages".to_string(), cycle[0].clone(), "inputs".to_string()];
    SpecError::Invalid(vec![Diagnostic {
        origin: raw.source.origin(raw.span_of(&path)),
        message: format!("the stages form a cycle: {}", cycle_text(cycle)),
        help: Some("a stage cannot read, directly or indirectly, its own outputs".into()),
    }])
}

/// A cycle as `a → b → … → a`, its middle left out past a dozen names: a
/// generated pipeline's cycle can run through thousands of stages.
fn cycle_text(cycle: &[String]) -> String {
    const HEAD: usize = 8;
    const TAIL: usize = 3;
    if cycle.len() <= HEAD + TAIL + 1 {
        return cycle.join(" → ");
    }
    let left_out = cycle.len() - HEAD - TAIL;
    format!("{} → … {left_out} more … → {}", cycle[..HEAD].join(" → "), cycle[cycle.len() - TAIL..].join(" → "))
}

/// The stages in topological order, with their graph; `Err` names the
/// stages of a cycle.
fn ordered(stages: Vec<Stage>) -> Result<(Vec<Stage>, Graph), Vec<String>> {
    let graph = dependency_graph(&stages);
    let order = graph.topo_order()?;
    let mut slots: Vec<Option<Stage>> = stages.into_iter().map(Some).collect();
    let stages = order.iter().map(|&i| slots[i].take().expect("a topological order names each stage once")).collect();
    Ok((stages, graph.reordered(&order)))
}

/// [`ordered`] for stages known to be acyclic (merged sweep points).
fn assemble(stages: Vec<Stage>) -> (Vec<Stage>, Graph) {
    ordered(stages).expect("stages merged from acyclic pipelines form no cycle")
}

/// The graph of stages (in declaration order) and the stages whose outputs
/// each reads; references are resolved by now.
fn dependency_graph(stages: &[Stage]) -> Graph {
    let mut graph = Graph::new(stages.iter().map(|s| s.name.clone()).collect());
    for (i, s) in stages.iter().enumerate() {
        for r in s.inputs.values().flatten() {
            if let InputRef::Output { stage, .. } = r {
                let producer = graph.index_of(stage).expect("references are resolved before the graph is built");
                graph.add_edge(i, producer);
            }
        }
    }
    graph
}

/// For each stage, the params paths `--set` flags and profiles changed, with where.
type Origins = BTreeMap<String, Vec<(Vec<String>, Origin)>>;

/// Where param `path` of `stage` was set: the flag or profile line that last
/// overrode it (or a table holding it), else its place in the file.
fn param_origin(raw: &RawSpec, origins: &Origins, stage: &str, path: &[String]) -> Origin {
    let overridden = |p: &Vec<String>| path.starts_with(p) || (!path.is_empty() && p.starts_with(path));
    origins
        .get(stage)
        .and_then(|os| os.iter().rev().find(|(p, _)| overridden(p)))
        .map(|(_, o)| o.clone())
        .unwrap_or_else(|| {
            let mut full = vec!["stages".to_string(), stage.to_string()];
            full.extend(path.iter().cloned());
            raw.source.origin(raw.span_of(&full))
        })
}

/// Takes each stage's `executor = "NAME"` out of its params (after
/// profiles and `--set`, which may switch it), so no kind sees it.
fn take_executor_choices(raw: &mut RawSpec, origins: &Origins, diags: &mut Vec<Diagnostic>) -> BTreeMap<String, String> {
    let mut chosen = BTreeMap::new();
    for i in 0..raw.stages.len() {
        match executors::take_choice(&mut raw.stages[i].params, &raw.executors) {
            Ok(Some(name)) => {
                chosen.insert(raw.stages[i].name.clone(), name);
            }
            Ok(None) => {}
            Err((message, help)) => {
                let stage = &raw.stages[i].name;
                let origin = param_origin(raw, origins, stage, &["executor".to_string()]);
                diags.push(Diagnostic { origin, message: format!("stage `{stage}`: {message}"), help: Some(help) });
            }
        }
    }
    chosen
}

/// What the kind accepted but the rules every stage follows refuse (see [`rules`]).
fn rule_violations(raw: &RawSpec, origins: &Origins, rs: &parse::RawStage, c: &Checked, kind: &dyn StageKind) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let accepts = |m: &serde_json::Map<String, Value>| kind.check(&Value::Object(m.clone())).is_ok();
    for ig in rules::ignored_keys(&rs.params, &c.params, accepts) {
        out.push(Diagnostic {
            origin: param_origin(raw, origins, &rs.name, &ig.path),
            message: format!("stage `{}` ({}): unknown param `{}`", rs.name, rs.kind, ig.path.join(".")),
            help: Some(ig.help()),
        });
    }
    for col in rules::output_collisions(c) {
        let path = if col.from_params { vec!["outputs".to_string(), col.second.0.clone()] } else { Vec::new() };
        out.push(Diagnostic {
            origin: param_origin(raw, origins, &rs.name, &path),
            message: format!("stage `{}` ({}): {}", rs.name, rs.kind, col.message()),
            help: Some(col.help(&rs.kind)),
        });
    }
    out
}

/// Checks every stage's input slots and references, adding implied
/// inputs. `checked` names each stage by its index in `raw.stages`.
fn resolve_inputs(raw: &RawSpec, checked: Vec<(usize, Arc<dyn StageKind>, Checked)>, diags: &mut Vec<Diagnostic>) -> Vec<Stage> {
    let outputs: BTreeMap<&str, Vec<&str>> = checked
        .iter()
        .map(|(i, _, c)| (raw.stages[*i].name.as_str(), c.outputs.iter().map(|o| o.name.as_str()).collect()))
        .collect();
    let all_names: Vec<&str> = raw.stages.iter().map(|s| s.name.as_str()).collect();
    let inputs: Vec<_> = checked.iter().map(|(i, kind, c)| stage_inputs(raw, &raw.stages[*i], c, kind.as_ref(), &outputs, &all_names, diags)).collect();
    checked
        .into_iter()
        .zip(inputs)
        .map(|((i, kind, checked), inputs)| Stage { name: raw.stages[i].name.clone(), kind, checked, inputs })
        .collect()
}

/// One stage's inputs, declared and implied, with what is wrong with
/// them added to `diags`.
fn stage_inputs(
    raw: &RawSpec,
    rs: &parse::RawStage,
    c: &Checked,
    kind: &dyn StageKind,
    outputs: &BTreeMap<&str, Vec<&str>>,
    all_names: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Vec<InputRef>> {
    let is_implied = |slot: &str| c.implied_inputs.iter().any(|(s, _)| s == slot);
    let loc = |slot: Option<&str>| {
        let mut p = vec!["stages".to_string(), rs.name.clone()];
        match slot {
            // An implied slot is named after the param that implies it.
            Some(s) if is_implied(s) => p.push(s.to_string()),
            Some(s) => p.extend(["inputs".to_string(), s.to_string()]),
            None => p.push("inputs".to_string()),
        }
        raw.source.origin(raw.span_of(&p))
    };
    let mut err = |slot: Option<&str>, message: String, help: Option<String>| {
        diags.push(Diagnostic { origin: loc(slot), message: format!("stage `{}`: {message}", rs.name), help });
    };
    let mut inputs = rs.inputs.clone();
    for (slot, r) in &c.implied_inputs {
        if inputs.contains_key(slot) {
            err(Some(slot), format!("input `{slot}` is given both in `inputs` and by a param"), Some("keep one of them".into()));
        }
        inputs.insert(slot.clone(), vec![r.clone()]);
    }
    for (slot, refs) in &inputs {
        // Slots a param implies are the kind's own doing, not declared
        // ones; what they refer to is checked like any reference.
        if !is_implied(slot) {
            let Some(decl) = c.inputs.iter().find(|s| &s.name == slot) else {
                err(Some(slot), format!("kind `{}` has no input slot `{slot}`", rs.kind), Some(slot_help(rs, c, kind, slot)));
                continue;
            };
            if !decl.many && refs.len() != 1 {
                err(Some(slot), format!("input `{slot}` takes exactly one reference, got {}", refs.len()), None);
            }
        }
        for r in refs {
            if let Some((message, help)) = reference_problem(&rs.name, slot, r, outputs, all_names) {
                err(Some(slot), message, help);
            }
        }
    }
    for decl in &c.inputs {
        if decl.required && !inputs.contains_key(&decl.name) {
            err(None, format!("required input `{}` is not connected", decl.name), Some(format!("add `{} = \"<stage>.<output>\"` to `[stages.{}].inputs`", decl.name, rs.name)));
        }
    }
    for o in &c.outputs {
        if !is_safe_name(&o.name) {
            err(None, format!("kind `{}` declares an output with an unsafe name {:?}", rs.kind, o.name), Some(NAME_HELP.into()));
        }
    }
    inputs
}

/// The help for a slot the stage's kind does not have: the nearest
/// name, else what the kind says, else the slots it has.
fn slot_help(rs: &parse::RawStage, c: &Checked, kind: &dyn StageKind, slot: &str) -> String {
    let names: Vec<&str> = c.inputs.iter().map(|s| s.name.as_str()).collect();
    if let Some(s) = diag::closest(slot, names.iter().copied()) {
        return format!("did you mean `{s}`?");
    }
    let listed = || format!("`{}` takes: {}", rs.kind, if names.is_empty() { "no inputs".into() } else { names.join(", ") });
    kind.unknown_slot_help(slot).unwrap_or_else(listed)
}

/// What is wrong with reference `r` in input `slot` of stage `own`: a
/// message and its help.
fn reference_problem(
    own: &str,
    slot: &str,
    r: &InputRef,
    outputs: &BTreeMap<&str, Vec<&str>>,
    all_names: &[&str],
) -> Option<(String, Option<String>)> {
    let InputRef::Output { stage, output } = r else { return None };
    match outputs.get(stage.as_str()) {
        None if all_names.contains(&stage.as_str()) => None, // that stage has its own error
        None => Some((
            format!("input `{slot}` refers to `{stage}`, which is not a stage"),
            diag::closest(stage, all_names.iter().copied()).map(|s| format!("did you mean `{s}.{output}`?")),
        )),
        Some(outs) if !outs.contains(&output.as_str()) => Some((
            format!("input `{slot}` refers to `{stage}.{output}`, but `{stage}` has no output `{output}`"),
            Some(format!("`{stage}` produces: {}", outs.join(", "))),
        )),
        Some(_) if stage == own => Some((format!("input `{slot}` reads the stage's own output"), None)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
[stages.preds]
kind = "command"
cmd = "true"
outputs = { t = "p.parquet" }

[stages.unrelated]
kind = "command"
cmd = "echo {out.x}"
outputs = { x = "x.txt" }

[stages.report]
kind = "report"
title = "T"
inputs = { predictions = "preds.t" }
"#;

    fn upstream(text: &str) -> serde_json::Value {
        let p = load_str(Path::new("p.toml"), text, &LoadOptions::default(), &Registry::builtin().with_worker_kinds(cairn_kinds::all())).unwrap();
        let i = p.index_of("report").unwrap();
        assert_eq!(p.stages[i].inputs["pipeline"], vec![InputRef::UpstreamParams], "the engine feeds the report its pipeline");
        serde_json::from_slice(&p.upstream_params(i)).unwrap()
    }

    /// A binary or Latin-1 file was reported as "stream did not contain
    /// valid UTF-8", with a help about the working directory.
    #[test]
    fn a_file_that_is_not_utf8_is_named_at_its_first_bad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, b"[stages.a]\nkind = \"command\"\ncmd = \"echo caf\xe9\"\n").unwrap();
        let e = load(&path, &LoadOptions::default(), &Registry::builtin()).err().unwrap().to_string();
        assert!(e.contains("pipeline.toml:3:16: error: the file is not UTF-8 text (byte 0xe9)") && e.contains("save it as UTF-8"), "{e}");
    }

    #[test]
    fn a_long_cycle_is_named_by_its_ends() {
        let names = |n: usize| (0..n).map(|i| format!("s{i}")).chain(["s0".to_string()]).collect::<Vec<_>>();
        assert_eq!(cycle_text(&names(2)), "s0 → s1 → s0");
        assert_eq!(cycle_text(&names(11)), names(11).join(" → "), "a dozen names are shown whole");
        assert_eq!(cycle_text(&names(5000)), "s0 → s1 → s2 → s3 → s4 → s5 → s6 → s7 → … 4990 more … → s4998 → s4999 → s0");
    }

    /// Found by fuzzing (tests/fuzz_spec.rs): a reference implied by a
    /// param (`init = { stage = "..." }`) to a stage that does not exist
    /// was never checked, and building the graph panicked on it.
    #[test]
    fn implied_reference_to_a_missing_stage_is_an_error() {
        let spec = |init: &str| {
            format!(
                r#"
[stages.data]
kind = "command"
cmd = "true > {{out.x}}"
outputs = {{ x = "x.bin" }}

[stages.pre]
kind = "train"
model = {{ arch = "fast" }}
inputs = {{ train_images = "data.x", train_labels = "data.x", val_images = "data.x", val_labels = "data.x" }}

[stages.ft]
kind = "train"
model = {{ arch = "fast" }}
init = {{ stage = "{init}" }}
inputs = {{ train_images = "data.x", train_labels = "data.x", val_images = "data.x", val_labels = "data.x" }}
"#
            )
        };
        let load = |init: &str| load_str(Path::new("p.toml"), &spec(init), &LoadOptions::default(), &Registry::builtin().with_worker_kinds(cairn_kinds::all()));
        assert!(load("pre.model").is_ok());
        for (init, want) in [
            ("pe.model", "input `init` refers to `pe`, which is not a stage"),
            ("pre.weights", "input `init` refers to `pre.weights`, but `pre` has no output `weights`"),
            ("ft.model", "input `init` reads the stage's own output"),
        ] {
            let e = load(init).err().unwrap_or_else(|| panic!("{init} was accepted")).to_string();
            assert!(e.contains(want), "{init}: {e}");
            assert!(e.contains("p.toml:15:"), "{init}: points at the `init` line: {e}");
        }
    }

    #[test]
    fn an_input_a_command_does_not_name_says_how_to_name_it() {
        let spec = |slot: &str| {
            format!(
                r#"
[stages.a]
kind = "command"
cmd = "echo hi > {{out.x}}"
outputs = {{ x = "x.txt" }}

[stages.b]
kind = "command"
cmd = "cat {{in.src}} > {{out.y}}"
inputs = {{ {slot} = "a.x" }}
outputs = {{ y = "y.txt" }}
"#
            )
        };
        let err = |slot: &str| load_str(Path::new("p.toml"), &spec(slot), &LoadOptions::default(), &Registry::builtin()).err().unwrap().to_string();
        assert!(err("scr").contains("did you mean `src`?"), "{}", err("scr"));
        let e = err("data");
        assert!(e.contains("has no input slot `data`") && e.contains("write `{in.data}` where the command takes the file's path"), "{e}");
    }

    #[test]
    fn upstream_params_name_ancestors_only() {
        let doc = upstream(SPEC);
        let stages = doc["stages"].as_object().unwrap();
        assert_eq!(stages.keys().collect::<Vec<_>>(), ["preds", "report"]);
        assert_eq!(stages["preds"]["kind"], "command");
        assert_eq!(stages["preds"]["params"]["cmd"], "true");
        assert_eq!(stages["report"]["params"]["title"], "T");
        // Editing a stage the report does not read from leaves the document
        // (and so the report's key) alone; editing an ancestor changes it.
        assert_eq!(upstream(&SPEC.replace("echo {out.x}", "echo again {out.x}")), doc);
        assert_ne!(upstream(&SPEC.replace("cmd = \"true\"", "cmd = \"true \"")), doc);
    }
}
