//! Garbage collection and whole-cache verification.
//!
//! `collect` deletes objects outside a keep set (what the current pipeline
//! and recent runs reference) and the manifests that name deleted objects,
//! so no manifest is left pointing at nothing. It runs under the cache
//! lock, so it can never race a run that is writing new entries.

use std::collections::BTreeSet;
use std::fs;

use super::{Cache, CacheError};
use crate::digest::ArtifactHash;

#[derive(Debug, Default)]
pub struct GcReport {
    pub objects: usize,
    pub bytes: u64,
    pub manifests: usize,
    pub kept: usize,
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
