//! Stage keys: what decides whether a stage must run again.
//!
//! A [`StageKey`] is the blake3 hash of a [`KeyInputs`], serialised by
//! [`KeyInputs::encode`] in one fixed order with every map sorted.
//!
//! # What goes in
//!
//! - `schema`: [`KEY_SCHEMA`], bumped whenever this encoding changes, so an
//!   old cache can never be misread as a new one.
//! - `kind` and `version`: the stage kind's name and implementation version.
//!   A kind bumps its version whenever its behaviour changes; for the
//!   built-in kinds `tests/kind_fingerprints.rs` fails when the code they
//!   run through (the worker kinds' modules, the cairn-formats ones they
//!   read and write with, the C++ shims; `src/kinds/command.rs`) changes
//!   without a new pin.
//! - `params`: the canonical params as the kind returned them from
//!   [`crate::kind::StageKind::check`] (defaults filled in, types normalised),
//!   encoded by [`crate::canon`]: sorted maps, floats as exact IEEE bits;
//!   less any param that only locates an implied input (`load_subset`'s
//!   `source`, `train`'s `init`: see [`crate::kind::Checked::key_params`]),
//!   whose content enters under `inputs` instead.
//! - `seed`: the pipeline seed.
//! - `inputs`: for each input slot, by name, the content hashes of the
//!   artifacts connected to it, in the order given. Content, not producer:
//!   an upstream stage that re-runs and produces identical bytes leaves this
//!   key unchanged (early cutoff).
//! - `env`: the machine facts the kind says change its results
//!   ([`crate::kind::EnvNeeds`]), as `cairn-worker --probe` reads them from
//!   libtorch itself (see [`crate::env`]): for kinds that need libtorch,
//!   `libtorch` (the version loaded) and `device` (`cpu` or
//!   `cuda:<device name>`); for kinds whose float reductions depend on the
//!   thread count, when on the CPU, also `threads`, `cpu_capability` (the
//!   kernels libtorch dispatches to: `DEFAULT`, `AVX2`, `AVX512`…, with
//!   the CPU's vendor where it is not Intel (`AVX2, on AuthenticAMD`: MKL
//!   picks other matrix-product kernels on AMD than on Intel at the same
//!   instruction set), with
//!   oneDNN's cap when `ONEDNN_MAX_CPU_ISA` or `DNNL_MAX_CPU_ISA` sets one,
//!   and `MKL_ENABLE_INSTRUCTIONS` and `MKL_CBWR` where set, as they change
//!   which kernels compute matrix products)
//!   and
//!   `native_bf16` (`amx_bf16`, `avx512_bf16`, `avx512_bf16_intel`… or
//!   `none`, also `none` when oneDNN is capped below its bf16 kernels, and
//!   not `amx_bf16` when it is capped below AMX; `precision = "auto"`
//!   reads it), since results differ across
//!   CPU classes. For a stage on a scheduler executor
//!   (Slurm), these are the facts of the nodes it runs on, from a probe job
//!   of the executor's shape (see [`crate::env`]), not of the machine
//!   running `cairn`. The worker refuses a job keyed on facts that are not
//!   its own. Kinds that need none of these (`command`) have
//!   an empty map and never start the worker.
//!
//! # What stays out, deliberately
//!
//! - The stage's name: two stages with the same kind, params and inputs are
//!   the same computation and share one cache entry.
//! - The profile's name, and why it was applied (named, or chosen for a
//!   machine without CUDA or without native bf16): only the params it sets.
//! - Paths, the cache location, the pipeline file's location and mtimes:
//!   moving a checkout, moving or renaming a data or weights file (and
//!   saying so in `pipeline.toml` or with `--set`), or touching a file
//!   must not invalidate work. External files enter by content hash only.
//! - The cairn version, the date, the user and the host name: they do not
//!   change results. (The cairn version is recorded in each manifest.)
//! - Which upstream stage produced an input, and that stage's key: only the
//!   bytes matter.
//! - For a `command` stage, whatever it runs that is not declared as an
//!   input: a script it names by path rather than as `{in.<slot>}`, the
//!   programs it finds on `PATH` (the shell, `python` and its packages),
//!   and environment variables other than its `env` param. Like Make,
//!   DVC and Snakemake, cairn cannot see what a shell command reads; a
//!   script that changes belongs in `inputs`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canon;
use crate::digest::{ArtifactHash, StageKey};

/// Version of the key encoding below.
pub const KEY_SCHEMA: u32 = 1;

/// Every input to a stage key, and nothing else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub schema: u32,
    pub kind: String,
    pub version: u32,
    pub params: Value,
    pub seed: u64,
    pub inputs: BTreeMap<String, Vec<ArtifactHash>>,
    pub env: BTreeMap<String, String>,
}

impl KeyInputs {
    /// The canonical byte encoding. Field order is fixed here, maps are
    /// sorted (BTreeMap, and [`canon`] sorts JSON objects).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"cairn-key\0");
        out.extend_from_slice(&self.schema.to_le_bytes());
        canon::encode_str(&self.kind, &mut out);
        out.extend_from_slice(&self.version.to_le_bytes());
        canon::encode(&self.params, &mut out);
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&(self.inputs.len() as u64).to_le_bytes());
        for (slot, hashes) in &self.inputs {
            canon::encode_str(slot, &mut out);
            out.extend_from_slice(&(hashes.len() as u64).to_le_bytes());
            for h in hashes {
                out.extend_from_slice(&h.0);
            }
        }
        out.extend_from_slice(&(self.env.len() as u64).to_le_bytes());
        for (k, v) in &self.env {
            canon::encode_str(k, &mut out);
            canon::encode_str(v, &mut out);
        }
        out
    }

    pub fn key(&self) -> StageKey {
        StageKey::from_blake3(blake3::hash(&self.encode()))
    }

    /// Every difference between a previous key's inputs and these, most
    /// fundamental first. Empty means the keys are equal.
    pub fn diff(&self, old: &KeyInputs) -> Vec<DirtyReason> {
        let mut reasons = Vec::new();
        if old.schema != self.schema {
            reasons.push(DirtyReason::KeySchemaChanged { old: old.schema, new: self.schema });
        }
        if old.kind != self.kind {
            reasons.push(DirtyReason::KindChanged { old: old.kind.clone(), new: self.kind.clone() });
        } else if old.version != self.version {
            reasons.push(DirtyReason::VersionChanged { old: old.version, new: self.version });
        }
        diff_values("", &old.params, &self.params, &mut reasons);
        if old.seed != self.seed {
            reasons.push(DirtyReason::SeedChanged { old: old.seed, new: self.seed });
        }
        for slot in union_keys(&old.inputs, &self.inputs) {
            let (o, n) = (old.inputs.get(slot), self.inputs.get(slot));
            if o != n {
                reasons.push(DirtyReason::InputChanged {
                    slot: slot.clone(),
                    old: o.cloned().unwrap_or_default(),
                    new: n.cloned().unwrap_or_default(),
                });
            }
        }
        for k in union_keys(&old.env, &self.env) {
            let (o, n) = (old.env.get(k), self.env.get(k));
            if o != n {
                reasons.push(DirtyReason::EnvChanged { name: k.clone(), old: o.cloned(), new: n.cloned() });
            }
        }
        reasons
    }
}

fn union_keys<'a, V>(a: &'a BTreeMap<String, V>, b: &'a BTreeMap<String, V>) -> Vec<&'a String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<DirtyReason>) {
    if let (Value::Object(o), Value::Object(n)) = (old, new) {
        let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            match (o.get(k), n.get(k)) {
                (Some(a), Some(b)) => diff_values(&p, a, b, out),
                (a, b) => out.push(DirtyReason::ParamChanged { name: p, old: a.cloned(), new: b.cloned() }),
            }
        }
        return;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    canon::encode(old, &mut a);
    canon::encode(new, &mut b);
    if a != b {
        out.push(DirtyReason::ParamChanged {
            name: if path.is_empty() { "(params)".into() } else { path.into() },
            old: Some(old.clone()),
            new: Some(new.clone()),
        });
    }
}

/// Why a stage is stale: a typed value, rendered for humans by `Display`
/// and for machines by serde.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum DirtyReason {
    /// The stage has no recorded run in this cache.
    NeverRun,
    /// `--force` named it.
    Forced,
    /// An upstream stage is stale, so this stage's inputs are not known yet.
    UpstreamStale { stage: String },
    /// The key is the one recorded, but the cache entry is missing or damaged.
    EntryMissing,
    /// A cached output was found damaged (its bytes no longer hash to its
    /// name) and removed, so the stage re-runs to recompute it.
    OutputDamaged { output: String },
    KeySchemaChanged { old: u32, new: u32 },
    KindChanged { old: String, new: String },
    VersionChanged { old: u32, new: u32 },
    ParamChanged { name: String, old: Option<Value>, new: Option<Value> },
    SeedChanged { old: u64, new: u64 },
    InputChanged { slot: String, old: Vec<ArtifactHash>, new: Vec<ArtifactHash> },
    EnvChanged { name: String, old: Option<String>, new: Option<String> },
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(unset)".into(),
        Some(v) => v.to_string(),
    }
}

fn show_hashes(h: &[ArtifactHash]) -> String {
    if h.is_empty() {
        return "(none)".into();
    }
    h.iter().map(|h| h.short()).collect::<Vec<_>>().join(",")
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyReason::NeverRun => write!(f, "never run"),
            DirtyReason::Forced => write!(f, "forced with --force"),
            DirtyReason::UpstreamStale { stage } => write!(f, "upstream stage `{stage}` is stale"),
            DirtyReason::EntryMissing => write!(f, "cache entry missing or damaged"),
            DirtyReason::OutputDamaged { output } => write!(f, "cached output `{output}` was damaged and removed; recomputing it"),
            DirtyReason::KeySchemaChanged { old, new } => write!(f, "key schema {old} → {new}"),
            DirtyReason::KindChanged { old, new } => write!(f, "kind `{old}` → `{new}`"),
            DirtyReason::VersionChanged { old, new } => write!(f, "implementation version {old} → {new}"),
            DirtyReason::ParamChanged { name, old, new } => {
                write!(f, "param `{name}` {} → {}", show(old), show(new))
            }
            DirtyReason::SeedChanged { old, new } => write!(f, "seed {old} → {new}"),
            DirtyReason::InputChanged { slot, old, new } => write!(
                f,
                "input `{slot}` changed from {} to {}",
                show_hashes(old),
                show_hashes(new)
            ),
            DirtyReason::EnvChanged { name, old, new } => write!(
                f,
                "environment `{name}` {} → {}",
                old.as_deref().unwrap_or("(unset)"),
                new.as_deref().unwrap_or("(unset)")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> KeyInputs {
        KeyInputs {
            schema: KEY_SCHEMA,
            kind: "train".into(),
            version: 3,
            params: json!({"lr": 1e-4, "epochs": 30, "optimizer": {"name": "sgd", "momentum": 0.9}}),
            seed: 42,
            inputs: BTreeMap::from([("images".to_string(), vec![ArtifactHash::of_bytes(b"pixels")])]),
            env: BTreeMap::from([
                ("device".to_string(), "cpu".to_string()),
                ("libtorch".to_string(), "2.11.0".to_string()),
            ]),
        }
    }

    /// Pins the key format. If this fails, the encoding changed: bump
    /// KEY_SCHEMA (old caches become misses) and update the golden value.
    #[test]
    fn golden_key() {
        assert_eq!(
            sample().key().to_hex(),
            "89a6c882a2e1d0f680fe255f0e8a6c14eb5555f655df7b87bcfadc147b6011ec"
        );
    }

    #[test]
    fn golden_empty_key() {
        let k = KeyInputs {
            schema: KEY_SCHEMA,
            kind: "command".into(),
            version: 1,
            params: json!({}),
            seed: 0,
            inputs: BTreeMap::new(),
            env: BTreeMap::new(),
        };
        assert_eq!(k.key().to_hex(), "1b75aafd366cebe3cac82b4b63b88eb67d3737bd1e7e31f2da0dd96a4ad0a545");
    }

    #[test]
    fn param_order_is_irrelevant() {
        let mut b = sample();
        b.params = serde_json::from_str(r#"{"optimizer":{"momentum":0.9,"name":"sgd"},"epochs":30,"lr":0.0001}"#).unwrap();
        assert_eq!(sample().key(), b.key());
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = sample().key();
        let mut v = sample();
        v.version = 4;
        assert_ne!(v.key(), base);
        let mut v = sample();
        v.seed = 43;
        assert_ne!(v.key(), base);
        let mut v = sample();
        v.params["lr"] = json!(1e-3);
        assert_ne!(v.key(), base);
        let mut v = sample();
        v.inputs.insert("images".into(), vec![ArtifactHash::of_bytes(b"other")]);
        assert_ne!(v.key(), base);
        let mut v = sample();
        v.env.insert("device".into(), "cuda:NVIDIA H200".into());
        assert_ne!(v.key(), base);
        let mut v = sample();
        v.kind = "evaluate".into();
        assert_ne!(v.key(), base);
    }

    #[test]
    fn diff_names_each_field() {
        let old = sample();
        let mut new = sample();
        new.params["lr"] = json!(1e-3);
        new.version = 4;
        let reasons = new.diff(&old);
        let text: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        assert_eq!(text, vec!["implementation version 3 → 4", "param `lr` 0.0001 → 0.001"]);
        assert!(sample().diff(&sample()).is_empty());
    }
}
