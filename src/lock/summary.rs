//! What a run needs of `cairn.lock` to know that it leaves the lock as it
//! is: whether each stage it brought up to date has an entry with its key
//! and outputs. The file streams through the parser and each entry is kept
//! as one fingerprint, a blake3 of its stage, key and outputs, so the lock's
//! tree is never built (at 10,000 stages the tree took 17 MB, the
//! fingerprints take under 1 MB; BENCHMARKS "10,000 stages").

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::LockedOutput;
use crate::digest::{ArtifactHash, StageKey};

/// Every entry's fingerprint, and the names of the stages the lock holds.
#[derive(Debug, Default)]
pub struct Summary {
    entries: HashSet<[u8; 32]>,
    stages: Vec<String>,
}

impl Summary {
    /// Whether `stage` has an entry, of any class, with this key and these
    /// outputs.
    pub fn holds(&self, stage: &str, key: &StageKey, outputs: &BTreeMap<String, LockedOutput>) -> bool {
        self.entries.contains(&fingerprint(stage, key, outputs))
    }

    /// The stages the lock holds.
    pub fn stages(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(String::as_str)
    }
}

/// The part of an entry a fingerprint covers; the rest is skipped.
#[derive(Deserialize)]
struct Recorded {
    key: StageKey,
    outputs: BTreeMap<String, LockedOutput>,
}

/// Lengths and counts prefixed, so no two different entries hash the same
/// bytes.
fn fingerprint(stage: &str, key: &StageKey, outputs: &BTreeMap<String, LockedOutput>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&(stage.len() as u64).to_le_bytes()).update(stage.as_bytes());
    h.update(&key.0).update(&(outputs.len() as u64).to_le_bytes());
    for (name, LockedOutput { hash: ArtifactHash(hash), size }) in outputs {
        h.update(&(name.len() as u64).to_le_bytes()).update(name.as_bytes());
        h.update(hash).update(&size.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

impl<'de> Deserialize<'de> for Summary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StagesVisitor)
    }
}

/// `"stages": { "<stage>": { "<class>": <entry> } }`.
struct StagesVisitor;

impl<'de> Visitor<'de> for StagesVisitor {
    type Value = Summary;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from stage names to their entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Summary, A::Error> {
        let mut summary = Summary::default();
        while let Some(stage) = map.next_key::<String>()? {
            map.next_value_seed(Classes { stage: &stage, entries: &mut summary.entries })?;
            summary.stages.push(stage);
        }
        Ok(summary)
    }
}

/// One stage's entries by class, each added to `entries` as it is read.
struct Classes<'a> {
    stage: &'a str,
    entries: &'a mut HashSet<[u8; 32]>,
}

impl<'de> DeserializeSeed<'de> for Classes<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Classes<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a map from environment classes to entries of stage `{}`", self.stage)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some((IgnoredAny, e)) = map.next_entry::<IgnoredAny, Recorded>()? {
            self.entries.insert(fingerprint(self.stage, &e.key, &e.outputs));
        }
        Ok(())
    }
}
