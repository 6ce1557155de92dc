//! `cairn.lock`: what each stage produced, committed next to `pipeline.toml`.
//!
//! `cairn run` writes the lock after every successful run (atomically, and
//! only when its bytes would change, so a no-op run writes nothing; it
//! keeps only a fingerprint of each entry's key and outputs, see
//! [`OnDisk`]);
//! `cairn run --locked` runs and then compares the run against it without
//! rewriting it ([`check`]). It is pretty-printed JSON with every map
//! sorted, one fact a line, so `git diff cairn.lock` shows which results a
//! change moved.
//!
//! # Format (`lock_schema` 1)
//!
//! ```json
//! { "lock_schema": 1,
//!   "stages": { "<stage>": { "<class>": {
//!     "key": "<blake3 hex of key_inputs, see cairn::key>",
//!     "key_inputs": { "schema", "kind", "version", "params", "seed", "inputs", "env" },
//!     "outputs": { "<output>": { "hash": "<blake3 hex>", "size": <bytes> } },
//!     "metrics": { "<name>": <number, or null for NaN> } } } } }
//! ```
//!
//! `key_inputs` is exactly what the stage key hashes ([`crate::key`]), so a
//! stale entry says why it is stale (which param, which input). An entry
//! is identified by its stage and its environment class: the `env` facts
//! that entered its key (libtorch, device, threads, CPU capability, native
//! bf16), rendered by [`class_of`] (`any` for stages that need none). A lock
//! may hold several classes of one stage (the team's laptops and CI); a run
//! replaces the entry of its own class and keeps the others, except that an
//! entry whose kind, version, params or seed no longer match the pipeline
//! is dropped, since it describes results the pipeline no longer asks for.
//! Metrics are informational (they may hold timings): they are never
//! compared, and an entry whose key and outputs are unchanged keeps them.
//! `lock_schema` is bumped whenever this layout changes; a lock of another
//! schema is refused with the fix.

pub mod check;
mod summary;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{ArtifactHash, StageKey};
use crate::key::KeyInputs;
use crate::runner::{Outcome, RunReport, StageReport};
use summary::Summary;

/// The key inputs stage `stage` had with key `key`, if known: what the run
/// recorded in the cache's refs, since a stage served from the remote
/// without its bytes has no local manifest.
pub type KeyLookup<'a> = &'a dyn Fn(&str, &StageKey) -> Option<KeyInputs>;

/// Version of the layout above.
pub const LOCK_SCHEMA: u32 = 1;

/// The lock's file name, next to the pipeline file.
pub const FILE: &str = "cairn.lock";

/// The class of stages whose key holds no environment fact.
pub const ANY_CLASS: &str = "any";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: not a valid lock: {message}\n  help: the lock is written by `cairn run`; resolve the merge conflict or restore it (`git checkout {name}`), or delete it and run `cairn run` to write it again", path.display(), name = FILE)]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: lock_schema {found}, this cairn reads {LOCK_SCHEMA}\n  help: use the cairn that wrote it, or delete it and run `cairn run` to write it again", path.display())]
    Schema { path: PathBuf, found: u32 },
}

/// Each stage's entries by environment class.
pub type Stages = BTreeMap<String, BTreeMap<String, Entry>>;

/// The whole lock: stage → class → entry. A run reads it as
/// `Lock<Summary>`, which keeps only a fingerprint of each entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lock<S = Stages> {
    pub lock_schema: u32,
    pub stages: S,
}

/// What one stage produced under one environment class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: StageKey,
    pub key_inputs: KeyInputs,
    pub outputs: BTreeMap<String, LockedOutput>,
    #[serde(default)]
    pub metrics: BTreeMap<String, Option<f64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedOutput {
    pub hash: ArtifactHash,
    pub size: u64,
}

/// The class name of a set of environment facts: `any` when there are
/// none, else `name=value` pairs in name order.
pub fn class_of(env: &BTreeMap<String, String>) -> String {
    if env.is_empty() {
        return ANY_CLASS.into();
    }
    env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// The lock's path for a pipeline file.
pub fn path_for(pipeline_file: &Path) -> PathBuf {
    crate::spec::beside(pipeline_file, FILE)
}

impl Default for Lock {
    fn default() -> Self {
        Self { lock_schema: LOCK_SCHEMA, stages: BTreeMap::new() }
    }
}

/// A lock as read from disk before the run: the [`Summary`] of its
/// entries, which is all a no-op run needs (see BENCHMARKS.md, engine
/// overhead). A run that changes the lock reads the file again, as it is
/// then ([`OnDisk::lock`]).
pub struct OnDisk {
    pub path: PathBuf,
    /// `None`: there was no file.
    summary: Option<Summary>,
}

impl OnDisk {
    /// Reads the lock at `path` (a missing file is no lock), checking its
    /// syntax and schema.
    pub fn read(path: &Path) -> Result<Self, LockError> {
        let summary = read_bytes(path)?.map(|bytes| parse::<Summary>(path, &bytes)).transpose()?;
        Ok(Self { path: path.into(), summary: summary.map(|lock| lock.stages) })
    }

    pub fn exists(&self) -> bool {
        self.summary.is_some()
    }

    /// The whole lock as the file is now, read and parsed; `None` when
    /// there is none (a lock deleted during the run is written anew).
    pub fn lock(&self) -> Result<Option<Lock>, LockError> {
        Lock::read(&self.path)
    }

    /// Whether recording `report` would leave the lock as it is: every
    /// stage it brought up to date has its key and outputs there, and every
    /// locked stage is `in_pipeline`.
    pub fn holds(&self, in_pipeline: &dyn Fn(&str) -> bool, report: &RunReport) -> bool {
        let Some(summary) = &self.summary else { return false };
        let held = |s: &StageReport, key: &StageKey| summary.holds(&s.stage, key, &locked_outputs(s));
        brought_up_to_date(report).all(|(s, key)| held(s, &key)) && summary.stages().all(in_pipeline)
    }

    /// Writes `lock` unless the file already holds exactly it. Returns
    /// whether it wrote. The lock streams into a temporary file beside it,
    /// hashed on the way, so its bytes are never all in memory; the
    /// temporary file replaces the lock unless the file's bytes hash the
    /// same.
    pub fn write(&self, lock: &Lock) -> Result<bool, LockError> {
        write_atomic_if_changed(&self.path, lock).map_err(|source| LockError::Write { path: self.path.clone(), source })
    }
}

/// The file's bytes; `None` when there is no file.
fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, LockError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LockError::Read { path: path.into(), source }),
    }
}

/// Parses a lock, naming a lock of another schema as such.
fn parse<S: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<Lock<S>, LockError> {
    let parse_error = |e: serde_json::Error| LockError::Parse { path: path.into(), line: e.line(), column: e.column(), message: e.to_string() };
    #[derive(Deserialize)]
    struct Head {
        lock_schema: u32,
    }
    // Only a lock that does not parse is read again, for its schema.
    match serde_json::from_slice::<Lock<S>>(bytes) {
        Ok(lock) if lock.lock_schema == LOCK_SCHEMA => Ok(lock),
        Ok(Lock { lock_schema: found, .. }) => Err(LockError::Schema { path: path.into(), found }),
        Err(e) => match serde_json::from_slice::<Head>(bytes) {
            Ok(head) if head.lock_schema != LOCK_SCHEMA => Err(LockError::Schema { path: path.into(), found: head.lock_schema }),
            _ => Err(parse_error(e)),
        },
    }
}

/// The stages `report` brought up to date, with their keys.
fn brought_up_to_date(report: &RunReport) -> impl Iterator<Item = (&StageReport, StageKey)> {
    let done = report.stages.iter().filter(|s| matches!(s.outcome, Outcome::Cached | Outcome::Pulled | Outcome::Ran));
    done.filter_map(|s| Some((s, s.key?)))
}

impl Lock {
    /// The whole lock at `path`, checking its syntax and schema; `None`
    /// when there is no file.
    pub fn read(path: &Path) -> Result<Option<Self>, LockError> {
        read_bytes(path)?.map(|bytes| parse(path, &bytes)).transpose()
    }

    /// Pretty JSON, maps sorted, ending in a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.write_to(&mut bytes).expect("a lock serialises");
        bytes
    }

    fn write_to(&self, mut out: impl Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut out, self)?;
        out.write_all(b"\n")
    }

    /// Records the stages a successful run brought up to date. `lookup`
    /// gives the key inputs a stage had with a key (see [`KeyLookup`]); it
    /// is asked only for stages whose entry changed. Stages that are not
    /// `in_pipeline` are dropped.
    pub fn record(&mut self, in_pipeline: &dyn Fn(&str) -> bool, report: &RunReport, lookup: KeyLookup<'_>) {
        for (s, key) in brought_up_to_date(report) {
            let outputs = locked_outputs(s);
            let held = self.stages.get(&s.stage).is_some_and(|c| c.values().any(|e| e.key == key && e.outputs == outputs));
            if held {
                continue;
            }
            let Some(key_inputs) = lookup(&s.stage, &key) else { continue };
            let classes = self.stages.entry(s.stage.clone()).or_default();
            classes.retain(|_, e| same_computation(&e.key_inputs, &key_inputs));
            let metrics = s.metrics.iter().map(|(k, v)| (k.clone(), v.is_finite().then_some(*v))).collect();
            classes.insert(class_of(&key_inputs.env), Entry { key, key_inputs, outputs, metrics });
        }
        self.stages.retain(|name, classes| in_pipeline(name) && !classes.is_empty());
    }
}

/// The outputs of a stage report, as the lock records them.
pub(crate) fn locked_outputs(s: &StageReport) -> BTreeMap<String, LockedOutput> {
    s.outputs.iter().map(|(k, o)| (k.clone(), LockedOutput { hash: o.hash, size: o.size })).collect()
}

/// Whether two key inputs ask for the same computation, whatever machine
/// and upstream bytes: kind, version, params and seed.
fn same_computation(a: &KeyInputs, b: &KeyInputs) -> bool {
    a.schema == b.schema && a.kind == b.kind && a.version == b.version && a.params == b.params && a.seed == b.seed
}

/// Temporary file in the same directory, fsync, rename: readers see the
/// old lock or the new one. Nothing is renamed when the file at `path`
/// already hashes the same. Whether it wrote.
fn write_atomic_if_changed(path: &Path, lock: &Lock) -> std::io::Result<bool> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, Hashed { file: tmp, hasher: blake3::Hasher::new() });
    lock.write_to(&mut out)?;
    let Hashed { file: tmp, hasher } = out.into_inner().map_err(|e| e.into_error())?;
    let now = crate::cache::hash::hash_file(path).ok().map(|(now, _)| now);
    if now == Some(ArtifactHash::from_blake3(hasher.finalize())) {
        return Ok(false);
    }
    // Committed and read by everyone, like the pipeline file (a temporary
    // file is created private).
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(true)
}

/// Writes through to `file`, hashing what it wrote.
struct Hashed<W> {
    file: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests;
