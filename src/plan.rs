//! Resolving a pipeline against the cache without running anything: each
//! stage's key inputs, key, and whether it is fresh or stale and why.
//! `status`, `explain` and `run` all use this, so they cannot disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::cache::{output_hashes, Cache, CacheError, Hit, OutputRecord, Project, StageRef};
use crate::digest::{ArtifactHash, StageKey};
use crate::env::Environment;
use crate::external::{self, ExternalError};
use crate::key::{DirtyReason, KeyInputs, KEY_SCHEMA};
use crate::kind::InputRef;
use crate::spec::{Pipeline, Stage};

/// A stage's standing in the cache.
#[derive(Clone, Debug)]
pub enum StageState {
    /// The key has a complete cache entry: its manifest, read without the
    /// key inputs (which the few callers that need read whole with
    /// [`Cache::manifest`]: at 10,000 stages they were a fifth of `status`).
    Fresh { key: StageKey, manifest: Box<Hit> },
    /// It would run. `key_inputs` is known when every input is known.
    Stale { reasons: Vec<DirtyReason>, key_inputs: Option<KeyInputs> },
    /// An external input is missing or unreadable.
    Blocked { error: String },
}

impl StageState {
    pub fn is_fresh(&self) -> bool {
        matches!(self, StageState::Fresh { .. })
    }
}

/// Shared context for resolving keys.
pub struct Resolver<'a> {
    pub pipeline: &'a Pipeline,
    pub cache: &'a Cache,
    pub env: &'a Environment,
    pub warn: &'a (dyn Fn(String) + Sync),
    /// Evict damaged objects found on lookup (`run`), or only report them
    /// (`status`, which writes nothing).
    pub repair: bool,
    /// The project whose refs this pipeline reads and writes.
    pub project: Project,
    /// The refs as they were when first needed.
    refs: OnceLock<BTreeMap<String, StageRef>>,
}

/// Why a stage's inputs are not what its key says.
#[derive(Clone, Debug)]
pub enum InputProblem {
    /// An input object's bytes no longer hash to its name; it was evicted.
    /// `producer` is the stage whose output it was, if any.
    Damaged { slot: String, from: String, producer: Option<(String, String)>, hash: ArtifactHash },
    /// An external input's content is not what the key was computed from.
    Changed { slot: String, path: String, error: Option<String> },
}

impl std::fmt::Display for InputProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputProblem::Damaged { slot, from, hash, .. } => {
                write!(f, "input `{slot}` ({from}, object {}) in the cache is damaged; it was removed", hash.short())
            }
            InputProblem::Changed { slot, path, error: None } => write!(f, "input `{slot}` ({path}) changed while the stage ran"),
            InputProblem::Changed { slot, path, error: Some(e) } => {
                write!(f, "input `{slot}` ({path}) could not be read again after the stage: {e}")
            }
        }
    }
}

impl<'a> Resolver<'a> {
    pub fn new(pipeline: &'a Pipeline, cache: &'a Cache, env: &'a Environment, warn: &'a (dyn Fn(String) + Sync)) -> Self {
        let project = Project::of(&pipeline.file);
        Self { pipeline, cache, env, warn, repair: false, project, refs: OnceLock::new() }
    }

    /// The refs this project's earlier runs recorded.
    pub fn refs(&self) -> &BTreeMap<String, StageRef> {
        self.refs.get_or_init(|| self.cache.stage_refs(&self.project))
    }

    /// The content hash of an external input.
    pub fn external(&self, r: &InputRef, download_missing: bool) -> Result<Option<ArtifactHash>, ExternalError> {
        match self.external_source(r) {
            Some((p, source)) => external::hash(self.cache.stat(), &p, source, download_missing).map(Some),
            None => Ok(None),
        }
    }

    /// An external input's path (resolved against the pipeline's
    /// directory) and where it comes from; `None` for other inputs.
    fn external_source<'r>(&self, r: &'r InputRef) -> Option<(PathBuf, external::Source<'r>)> {
        let InputRef::External { path, url, sha256, fetch } = r else { return None };
        let source = external::Source { url: url.as_deref(), sha256: sha256.as_deref(), fetch: fetch.as_deref() };
        Some((external::resolve(&self.pipeline.root, path), source))
    }

    /// The external inputs of `stages` that are missing and that no run
    /// can download, each once, with the first of those stages (in
    /// pipeline order) that reads it: a run names them all before it
    /// starts anything, rather than failing at the first stage that reads
    /// one after its upstream stages ran for minutes.
    pub fn unobtainable_inputs(&self, stages: &BTreeSet<usize>) -> Vec<(String, ExternalError)> {
        let mut seen = BTreeSet::new();
        let mut missing = Vec::new();
        for &i in stages {
            let stage = &self.pipeline.stages[i];
            for (p, source) in stage.inputs.values().flatten().filter_map(|r| self.external_source(r)) {
                if let Some(e) = external::unobtainable(&p, source).filter(|_| seen.insert(p.clone())) {
                    missing.push((stage.name.clone(), e));
                }
            }
        }
        missing
    }

    fn index(&self, stage: &Stage) -> usize {
        self.pipeline.index_of(&stage.name).expect("stages come from this pipeline")
    }

    /// A stage's key inputs, given the output hashes of finished stages.
    /// `Ok(None)` when some upstream output is not known yet.
    pub fn key_inputs(
        &self,
        stage: &Stage,
        outputs: &BTreeMap<String, BTreeMap<String, ArtifactHash>>,
        download_missing: bool,
    ) -> Result<Option<KeyInputs>, ExternalError> {
        let mut inputs = BTreeMap::new();
        for (slot, refs) in &stage.inputs {
            let mut hashes = Vec::with_capacity(refs.len());
            for r in refs {
                let h = match r {
                    InputRef::Output { stage, output } => match outputs.get(stage).and_then(|o| o.get(output)) {
                        Some(h) => *h,
                        None => return Ok(None),
                    },
                    InputRef::UpstreamParams => self.pipeline.upstream_params_hash(self.index(stage)).expect("the stage reads it"),
                    ext => self.external(ext, download_missing)?.expect("external refs hash"),
                };
                hashes.push(h);
            }
            inputs.insert(slot.clone(), hashes);
        }
        Ok(Some(KeyInputs {
            schema: KEY_SCHEMA,
            kind: stage.kind.name().to_string(),
            version: stage.kind.version(),
            params: stage.checked.key_params(),
            seed: self.pipeline.seed,
            inputs,
            env: self.env.for_executor(self.pipeline.executor_of(&stage.name)).key_entries(stage.checked.env),
        }))
    }

    /// A complete cache entry for `stage` under `key`: its manifest
    /// (without the key inputs, which the caller holds), if it records
    /// exactly the outputs the stage declares and every object it names is
    /// intact. Anything else is a miss, with a warning (and, when
    /// repairing, damaged objects are evicted).
    pub fn lookup(&self, stage: &Stage, key: &StageKey) -> Result<Option<Hit>, CacheError> {
        let warn = |m: String| (self.warn)(m);
        let Some(m) = self.cache.manifest_hit(key, &warn)? else { return Ok(None) };
        if let Some(problem) = outputs_mismatch(stage, &m.outputs) {
            warn(format!("the cache entry of `{}` (key {}) {problem}; treating it as a miss", stage.name, key.short()));
            return Ok(None);
        }
        for (name, o) in &m.outputs {
            if !self.cache.object_intact(&o.hash)? {
                if self.cache.has_object(&o.hash) {
                    let fix = if self.repair { "removed; the stage will re-run" } else { "`cairn run` will recompute it" };
                    warn(format!("output `{}.{name}` in the cache (object {}) is damaged: {fix}", stage.name, o.hash.short()));
                    if self.repair {
                        self.cache.evict_object(&o.hash);
                    }
                }
                return Ok(None);
            }
        }
        Ok(Some(m))
    }

    /// Checks, by stat and by content where the stat changed, that stage
    /// `i`'s inputs are still those its key `ki` was computed from: each
    /// input object intact (a damaged one is evicted) and each external
    /// input's content unchanged. Run before a stage (so damaged bytes never
    /// reach it) and after it (so a stage that wrote its inputs, or an input
    /// edited while it ran, is never cached).
    pub fn check_inputs(&self, i: usize, ki: &KeyInputs) -> Result<Option<InputProblem>, CacheError> {
        for (slot, refs) in &self.pipeline.stages[i].inputs {
            for (r, expected) in refs.iter().zip(ki.inputs.get(slot).into_iter().flatten()) {
                let problem = match r {
                    InputRef::External { path, .. } => match self.external(r, false) {
                        Ok(Some(h)) if h == *expected => None,
                        Ok(_) => Some(InputProblem::Changed { slot: slot.clone(), path: path.clone(), error: None }),
                        Err(e) => Some(InputProblem::Changed { slot: slot.clone(), path: path.clone(), error: Some(e.to_string()) }),
                    },
                    // Engine-made documents are stored when the stage's
                    // inputs are laid out, after this first check: one not
                    // made yet is not damaged (a damaged one is).
                    InputRef::UpstreamParams if !self.cache.object_path(expected).exists() => None,
                    _ if self.cache.object_intact(expected)? => None,
                    _ => {
                        self.cache.evict_object(expected);
                        let producer = match r {
                            InputRef::Output { stage, output } => Some((stage.clone(), output.clone())),
                            _ => None,
                        };
                        Some(InputProblem::Damaged { slot: slot.clone(), from: r.to_string(), producer, hash: *expected })
                    }
                };
                if problem.is_some() {
                    return Ok(problem);
                }
            }
        }
        Ok(None)
    }

    /// Why a stage with these key inputs (or unknown ones) must run.
    pub fn reasons(&self, stage: &str, ki: Option<&KeyInputs>, upstream: Option<&str>) -> Vec<DirtyReason> {
        let Some(ki) = ki else {
            return vec![DirtyReason::UpstreamStale { stage: upstream.unwrap_or("?").to_string() }];
        };
        match self.refs().get(stage) {
            None => vec![DirtyReason::NeverRun],
            Some(r) => {
                let d = ki.diff(&r.key_inputs);
                if d.is_empty() {
                    vec![DirtyReason::EntryMissing]
                } else {
                    d
                }
            }
        }
    }

    /// The files stage `i` reads, slot by slot, in spec order. `output`
    /// gives the hash of a finished upstream output; engine-made documents
    /// (upstream params) are stored as cache objects first.
    pub fn input_paths(
        &self,
        i: usize,
        output: impl Fn(&str, &str) -> ArtifactHash,
    ) -> Result<BTreeMap<String, Vec<PathBuf>>, CacheError> {
        let mut out = BTreeMap::new();
        for (slot, refs) in &self.pipeline.stages[i].inputs {
            let mut paths = Vec::with_capacity(refs.len());
            for r in refs {
                paths.push(match r {
                    InputRef::Output { stage, output: o } => self.cache.object_path(&output(stage, o)),
                    InputRef::External { path, .. } => external::resolve(&self.pipeline.root, path),
                    InputRef::UpstreamParams => self.cache.put_bytes(&self.pipeline.upstream_params(i))?,
                });
            }
            out.insert(slot.clone(), paths);
        }
        Ok(out)
    }

    /// Every stage's state, in pipeline order.
    pub fn status(&self) -> Result<Vec<(String, StageState)>, CacheError> {
        let mut outputs: BTreeMap<String, BTreeMap<String, ArtifactHash>> = BTreeMap::new();
        let mut stale_upstream: BTreeMap<String, String> = BTreeMap::new();
        let mut out = Vec::new();
        for (i, stage) in self.pipeline.stages.iter().enumerate() {
            let upstream = self.pipeline.graph.deps[i]
                .iter()
                .map(|&d| self.pipeline.stages[d].name.as_str())
                .find(|d| !outputs.contains_key(*d))
                .map(|d| stale_upstream.get(d).cloned().unwrap_or_else(|| d.to_string()));
            let state = match self.key_inputs(stage, &outputs, false) {
                Err(e) => StageState::Blocked { error: e.to_string() },
                Ok(None) => StageState::Stale { reasons: self.reasons(&stage.name, None, upstream.as_deref()), key_inputs: None },
                Ok(Some(ki)) => {
                    let key = ki.key();
                    match self.lookup(stage, &key)? {
                        Some(m) => StageState::Fresh { key, manifest: Box::new(m) },
                        None => StageState::Stale { reasons: self.reasons(&stage.name, Some(&ki), None), key_inputs: Some(ki) },
                    }
                }
            };
            if let StageState::Fresh { manifest, .. } = &state {
                outputs.insert(stage.name.clone(), output_hashes(&manifest.outputs));
            } else {
                stale_upstream.insert(stage.name.clone(), upstream.unwrap_or_else(|| stage.name.clone()));
            }
            out.push((stage.name.clone(), state));
        }
        self.cache.stat().save();
        Ok(out)
    }
}

/// How a manifest's outputs differ from what the stage declares, if they do.
pub fn outputs_mismatch(stage: &Stage, outputs: &BTreeMap<String, OutputRecord>) -> Option<String> {
    let declared = &stage.checked.outputs;
    for d in declared {
        match outputs.get(&d.name) {
            None => return Some(format!("has no output `{}`", d.name)),
            Some(o) if o.ty != d.ty || o.ext != d.ext => {
                return Some(format!("records output `{}` as {} .{}, the stage declares {} .{}", d.name, o.ty, o.ext, d.ty, d.ext))
            }
            Some(_) => {}
        }
    }
    outputs.keys().find(|k| !declared.iter().any(|d| &d.name == *k)).map(|k| format!("has an undeclared output `{k}`"))
}
