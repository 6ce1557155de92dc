//! Manifests: what a finished stage execution produced, stored under its key.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::digest::{ArtifactHash, StageKey};
use crate::key::KeyInputs;
use crate::kind::ArtifactType;

/// One output of a finished stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub hash: ArtifactHash,
    pub size: u64,
    pub ty: ArtifactType,
    pub ext: String,
}

/// A finished stage execution, with its key inputs.
pub type Manifest = ManifestOf<KeyInputs>;

/// Each output's content hash, by output name: what a downstream key
/// reads of a finished stage.
pub fn output_hashes(outputs: &BTreeMap<String, OutputRecord>) -> BTreeMap<String, ArtifactHash> {
    outputs.iter().map(|(name, o)| (name.clone(), o.hash)).collect()
}

/// A manifest read without its key inputs, as a lookup reads it: the
/// caller holds them already (they are what the key hashes), or reads the
/// whole [`Manifest`] where it needs them.
pub type Hit = ManifestOf<IgnoredAny>;

/// A manifest as stored, generic over its key inputs (see [`Hit`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestOf<K> {
    pub key: StageKey,
    pub key_inputs: K,
    /// The stage name that first produced this entry (informational).
    pub stage: String,
    pub outputs: BTreeMap<String, OutputRecord>,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    pub cairn_version: String,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// The key inputs a stage name last ran or hit with, so `explain` can say
/// what changed since. Not part of any key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRef {
    pub key: StageKey,
    pub key_inputs: KeyInputs,
}
