//! Resolving a pipeline against the cache without running anything: each
//! stage's key inputs, key, and whether it is fresh or stale and why.
//! `status`, `explain` and `run` all use this, so they cannot disagree.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cache::statcache::StatCache;
use crate::cache::{Cache, CacheError, Manifest};
use crate::digest::{ArtifactHash, StageKey};
use crate::env::Environment;
use crate::external::{self, ExternalError};
use crate::key::{DirtyReason, KeyInputs, KEY_SCHEMA};
use crate::kind::InputRef;
use crate::spec::{Pipeline, Stage};

/// A stage's standing in the cache.
#[derive(Clone, Debug)]
pub enum StageState {
    /// The key has a complete cache entry.
    Fresh { key: StageKey, manifest: Box<Manifest> },
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
    pub stat: StatCache,
    pub warn: &'a (dyn Fn(String) + Sync),
}

impl<'a> Resolver<'a> {
    pub fn new(pipeline: &'a Pipeline, cache: &'a Cache, env: &'a Environment, warn: &'a (dyn Fn(String) + Sync)) -> Self {
        Self { pipeline, cache, env, stat: StatCache::load(cache.root()), warn }
    }

    /// The content hash of an external input.
    pub fn external(&self, r: &InputRef, fetch: bool) -> Result<Option<ArtifactHash>, ExternalError> {
        match r {
            InputRef::External { path, url, sha256 } => {
                let p = external::resolve(&self.pipeline.root, path);
                external::hash(&self.stat, &p, url.as_deref(), sha256.as_deref(), fetch).map(Some)
            }
            InputRef::Output { .. } | InputRef::UpstreamParams => Ok(None),
        }
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
        fetch: bool,
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
                    InputRef::UpstreamParams => ArtifactHash::of_bytes(&self.pipeline.upstream_params(self.index(stage))),
                    ext => self.external(ext, fetch)?.expect("external refs hash"),
                };
                hashes.push(h);
            }
            inputs.insert(slot.clone(), hashes);
        }
        Ok(Some(KeyInputs {
            schema: KEY_SCHEMA,
            kind: stage.kind.name().to_string(),
            version: stage.kind.version(),
            params: stage.checked.params.clone(),
            seed: self.pipeline.seed,
            inputs,
            env: self.env.key_entries(stage.checked.env),
        }))
    }

    /// A complete cache entry for `key`: its manifest, if every object it
    /// names is present.
    pub fn lookup(&self, key: &StageKey) -> Result<Option<Manifest>, CacheError> {
        let warn = |m: String| (self.warn)(m);
        Ok(self.cache.manifest(key, &warn)?.filter(|m| m.outputs.values().all(|o| self.cache.has_object(&o.hash))))
    }

    /// Why a stage with these key inputs (or unknown ones) must run.
    pub fn reasons(&self, stage: &str, ki: Option<&KeyInputs>, upstream: Option<&str>) -> Vec<DirtyReason> {
        let Some(ki) = ki else {
            return vec![DirtyReason::UpstreamStale { stage: upstream.unwrap_or("?").to_string() }];
        };
        match self.cache.stage_ref(stage) {
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
                    match self.lookup(&key)? {
                        Some(m) => StageState::Fresh { key, manifest: Box::new(m) },
                        None => StageState::Stale { reasons: self.reasons(&stage.name, Some(&ki), None), key_inputs: Some(ki) },
                    }
                }
            };
            if let StageState::Fresh { manifest, .. } = &state {
                outputs.insert(stage.name.clone(), manifest.outputs.iter().map(|(k, o)| (k.clone(), o.hash)).collect());
            } else {
                stale_upstream.insert(stage.name.clone(), upstream.unwrap_or_else(|| stage.name.clone()));
            }
            out.push((stage.name.clone(), state));
        }
        self.stat.save();
        Ok(out)
    }
}
