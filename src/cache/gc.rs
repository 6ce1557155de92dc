//! Garbage collection and whole-cache verification.
//!
//! `collect` deletes objects outside a keep set (what the current pipeline
//! and recent runs reference) and the manifests that name deleted objects,
//! so no manifest is left pointing at nothing, and the training checkpoints
//! nothing will resume (see [`orphan_checkpoints`]). It runs under the
//! cache lock, so it can never race a run that is writing new entries.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::{Cache, CacheError};
use crate::digest::{ArtifactHash, StageKey};

/// Where interrupted executions of resumable kinds keep their checkpoints,
/// one directory per stage key. Never objects: nothing in it is a result.
const CHECKPOINTS: &str = "checkpoints";

#[derive(Debug, Default)]
pub struct GcReport {
    pub objects: usize,
    pub bytes: u64,
    pub manifests: usize,
    pub kept: usize,
    /// Orphaned checkpoint directories, and their bytes.
    pub checkpoints: usize,
    pub checkpoint_bytes: u64,
}

/// The checkpoint directory of `key` (not created here).
pub fn checkpoint_dir(cache: &Cache, key: &StageKey) -> PathBuf {
    cache.root().join(CHECKPOINTS).join(key.to_hex())
}

/// Removes `key`'s checkpoint, if any: its stage's result is stored. Only
/// inside a real `checkpoints/` directory, never through a link to one.
pub fn remove_checkpoint(cache: &Cache, key: &StageKey) {
    if checkpoints_root(cache).is_some() {
        let _ = fs::remove_dir_all(checkpoint_dir(cache, key));
    }
}

/// `cache/checkpoints` when it is a real directory (cairn's own).
fn checkpoints_root(cache: &Cache) -> Option<PathBuf> {
    let root = cache.root().join(CHECKPOINTS);
    fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()).then_some(root)
}

/// Checkpoints nothing will resume, with their sizes. One is an orphan when
/// its key has a manifest (the stage completed, or was pulled, since), or
/// when it was last written before the newest recorded run started and
/// that run did not plan its key (its params or inputs changed since). A
/// run killed outright records nothing, so what it checkpointed is newer
/// than the newest record and is kept for the next run to resume.
pub fn orphan_checkpoints(cache: &Cache) -> Vec<(PathBuf, u64)> {
    let Some(root) = checkpoints_root(cache) else { return Vec::new() };
    let Ok(dirs) = fs::read_dir(&root) else { return Vec::new() };
    let newest = newest_run(cache);
    let mut out = Vec::new();
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().to_string();
        let Ok(key) = name.parse::<StageKey>() else { continue };
        let (written, bytes) = last_written(&d.path());
        let superseded = newest.as_ref().is_some_and(|(started, keys)| written < *started && !keys.contains(&name));
        if cache.manifest(&key, &|_: String| {}).ok().flatten().is_some() || superseded {
            out.push((d.path(), bytes));
        }
    }
    out
}

/// When the newest recorded run started (its id's `YYYYMMDDTHHMMSS`, UTC)
/// and the keys it planned; `None` when there is none or it cannot be read.
fn newest_run(cache: &Cache) -> Option<(String, BTreeSet<String>)> {
    let id = crate::history::run_ids(cache.root()).pop()?;
    let rows = crate::history::load(cache.root(), &id).ok()?;
    Some((id.chars().take(15).collect(), rows.into_iter().map(|r| r.key).collect()))
}

/// The latest modification time under a checkpoint directory, stamped as
/// run ids are, and the bytes of its files. Links are not followed.
fn last_written(dir: &Path) -> (String, u64) {
    let mut times = vec![fs::symlink_metadata(dir).and_then(|m| m.modified()).ok()];
    let mut bytes = 0;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = e.path().symlink_metadata() {
            bytes += m.len();
            times.push(m.modified().ok());
        }
    }
    let latest = times.into_iter().flatten().max().map(time::OffsetDateTime::from);
    let stamp = latest.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()).unwrap_or_default();
    (stamp.replace([':', '-'], "").chars().take(15).collect(), bytes)
}

/// Every object in the store, with its size.
pub fn objects(cache: &Cache) -> Vec<(ArtifactHash, u64)> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(cache.root().join("objects")) else { return out };
    for shard in shards.flatten() {
        let prefix = shard.file_name().to_string_lossy().to_string();
        let Ok(files) = fs::read_dir(shard.path()) else { continue };
        for f in files.flatten() {
            let name = format!("{prefix}{}", f.file_name().to_string_lossy());
            if let (Ok(h), Ok(meta)) = (name.parse::<ArtifactHash>(), f.metadata()) {
                out.push((h, meta.len()));
            }
        }
    }
    out
}

pub fn collect(cache: &Cache, keep: &BTreeSet<ArtifactHash>, dry_run: bool) -> Result<GcReport, CacheError> {
    let mut report = GcReport::default();
    let mut deleted = BTreeSet::new();
    for (h, size) in objects(cache) {
        if keep.contains(&h) {
            report.kept += 1;
            continue;
        }
        report.objects += 1;
        report.bytes += size;
        deleted.insert(h);
    }
    for m in cache.manifests() {
        if m.outputs.values().any(|o| deleted.contains(&o.hash)) {
            report.manifests += 1;
            if !dry_run {
                cache.remove_manifest(&m.key);
            }
        }
    }
    if !dry_run {
        for h in &deleted {
            let p = cache.object_path(h);
            fs::remove_file(&p).map_err(|e| CacheError::io("cannot delete", p, e))?;
        }
    }
    for (dir, bytes) in orphan_checkpoints(cache) {
        report.checkpoints += 1;
        report.checkpoint_bytes += bytes;
        if !dry_run {
            fs::remove_dir_all(&dir).map_err(|e| CacheError::io("cannot delete", dir, e))?;
        }
    }
    Ok(report)
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    /// Object and `damaged` or `missing`.
    pub problems: Vec<(ArtifactHash, &'static str)>,
    /// Manifests read.
    pub manifests: usize,
    /// Manifests that do not parse.
    pub bad_manifests: Vec<std::path::PathBuf>,
}

impl VerifyReport {
    pub fn damaged(&self) -> usize {
        self.problems.iter().filter(|p| p.1 == "damaged").count()
    }
    pub fn missing(&self) -> usize {
        self.problems.iter().filter(|p| p.1 == "missing").count()
    }
}

/// Re-hashes every object, and checks every manifest's objects exist.
pub fn verify_all(cache: &Cache) -> Result<VerifyReport, CacheError> {
    let mut report = VerifyReport::default();
    let present: BTreeSet<ArtifactHash> = objects(cache).into_iter().map(|(h, _)| h).collect();
    for h in &present {
        report.checked += 1;
        if !cache.verify_object(h)? {
            report.problems.push((*h, "damaged"));
        }
    }
    let mut missing = BTreeSet::new();
    let (manifests, bad) = cache.manifests_checked();
    report.manifests = manifests.len() + bad.len();
    report.bad_manifests = bad;
    for m in manifests {
        for o in m.outputs.values() {
            if !present.contains(&o.hash) {
                missing.insert(o.hash);
            }
        }
    }
    report.problems.extend(missing.into_iter().map(|h| (h, "missing")));
    Ok(report)
}
