//! `cairn remote gc --keep-runs N`: deleting from the shared remote what
//! none of the last N recorded runs (see [`super::runs`]) needs. A dry run
//! unless `delete` is set, since the results belong to the whole team.
//!
//! Kept: the manifests of the keys the newest N run records list, the
//! objects any kept manifest names, and anything younger than the grace
//! period (a push in progress writes objects and manifests before its run
//! record, and a CI job may still be pulling an entry it just looked up).
//! Deleted, in this order: manifests, then objects, then old run records,
//! so no manifest ever names an object already gone; last, the files of
//! jobs (`v1/jobs/`: descriptions, records, logs, checkpoints) older than
//! the grace period, each by its own age, which nothing reads once their
//! job has ended (only a requeued job reads its checkpoints, and a job
//! that is running rewrites them).
//! A run record among those kept that does not parse could name anything,
//! so gc then deletes nothing and names it ([`RemoteError::UnreadableRuns`]).

use std::collections::BTreeSet;
use std::time::Duration;

use object_store::path::Path as RemotePath;
use object_store::{ObjectMeta, ObjectStoreExt};

use super::transfer::{bounded, Failure};
use super::{Remote, RemoteError};
use crate::cache::Manifest;
use crate::digest::{ArtifactHash, StageKey};

/// What to keep.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// The newest run records whose entries are kept.
    pub keep_runs: usize,
    /// Entries younger than this are never deleted.
    pub grace: Duration,
    /// Delete; otherwise only report.
    pub delete: bool,
}

/// Counts of one kind of entry.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub count: usize,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// What `remote gc` deleted (or would delete) and kept.
#[derive(Debug, Default)]
pub struct GcReport {
    pub runs_kept: usize,
    pub runs: Tally,
    pub manifests: Tally,
    pub objects: Tally,
    pub kept_manifests: Tally,
    pub kept_objects: Tally,
    /// Files of finished jobs of the remote data plane.
    pub jobs: Tally,
    /// Run records that do not parse, older than those kept (kept,
    /// reported: readable, what they list would not be kept either).
    pub bad_runs: Vec<String>,
}

impl Remote {
    /// Collects the remote (see the module doc). A remote that cannot be
    /// used, or a failed listing or deletion, is the error; nothing that a
    /// kept entry needs is deleted before that.
    pub fn gc(&self, opts: GcOptions) -> Result<GcReport, RemoteError> {
        if !self.ready()? {
            return Err(self.unusable());
        }
        let mut report = GcReport::default();
        let now = now_secs();
        let young = |meta: &ObjectMeta| now.saturating_sub(unix(meta)) < opts.grace.as_secs();
        let (keep_keys, old_runs) = self.mark_runs(&mut report, opts.keep_runs, &young)?;
        let (keep_objects, doomed_manifests) = self.mark_manifests(&mut report, &keep_keys, &young)?;
        let doomed_objects = self.mark_objects(&mut report, &keep_objects, &young)?;
        let mut doomed_jobs = Vec::new();
        for meta in self.list_meta("jobs")?.into_iter().filter(|m| !young(m)) {
            report.jobs.add(meta.size);
            doomed_jobs.push(meta.location);
        }
        if opts.delete {
            for path in doomed_manifests.iter().chain(&doomed_objects).chain(&old_runs).chain(&doomed_jobs) {
                self.delete(path)?;
            }
        }
        Ok(report)
    }

    /// The stage keys the kept runs (the newest `keep_runs` and the young)
    /// name, and the older runs to delete; an error naming the kept runs
    /// that do not parse, whose keys cannot be known.
    fn mark_runs(&self, report: &mut GcReport, keep_runs: usize, young: &impl Fn(&ObjectMeta) -> bool) -> Result<(BTreeSet<StageKey>, Vec<RemotePath>), RemoteError> {
        let runs = self.run_records()?;
        let newest = runs.len().saturating_sub(keep_runs);
        let mut keep_keys = BTreeSet::new();
        let mut old_runs = Vec::new();
        let mut unreadable = Vec::new();
        for (i, (meta, record)) in runs.into_iter().enumerate() {
            let kept = i >= newest || young(&meta);
            match record {
                None if kept => unreadable.push(meta.location.to_string()),
                None => report.bad_runs.push(meta.location.to_string()),
                Some(r) if kept => {
                    report.runs_kept += 1;
                    keep_keys.extend(r.keys.into_values());
                }
                Some(_) => {
                    report.runs.add(meta.size);
                    old_runs.push(meta.location);
                }
            }
        }
        if !unreadable.is_empty() {
            return Err(RemoteError::UnreadableRuns { url: self.display.clone(), records: unreadable });
        }
        Ok((keep_keys, old_runs))
    }

    /// The objects the kept manifests (named by a kept run, or young) name,
    /// and the other manifests, to delete.
    fn mark_manifests(
        &self,
        report: &mut GcReport,
        keep_keys: &BTreeSet<StageKey>,
        young: &impl Fn(&ObjectMeta) -> bool,
    ) -> Result<(BTreeSet<ArtifactHash>, Vec<RemotePath>), RemoteError> {
        let mut doomed = Vec::new();
        let mut keep_objects = BTreeSet::new();
        for meta in self.list_meta("manifests")? {
            let key = meta.location.filename().and_then(|n| n.strip_suffix(".json")).and_then(|k| k.parse::<StageKey>().ok());
            if young(&meta) || key.is_some_and(|k| keep_keys.contains(&k)) {
                report.kept_manifests.add(meta.size);
                keep_objects.extend(self.named_objects(&meta.location)?);
            } else {
                report.manifests.add(meta.size);
                doomed.push(meta.location);
            }
        }
        Ok((keep_objects, doomed))
    }

    /// The objects neither a kept manifest names nor young, to delete.
    fn mark_objects(&self, report: &mut GcReport, keep: &BTreeSet<ArtifactHash>, young: &impl Fn(&ObjectMeta) -> bool) -> Result<Vec<RemotePath>, RemoteError> {
        let mut doomed = Vec::new();
        for meta in self.list_meta("objects")? {
            let named = meta.location.filename().and_then(|n| n.parse::<ArtifactHash>().ok()).is_some_and(|h| keep.contains(&h));
            if named || young(&meta) {
                report.kept_objects.add(meta.size);
            } else {
                report.objects.add(meta.size);
                doomed.push(meta.location);
            }
        }
        Ok(doomed)
    }

    /// The objects a remote manifest names (none when it does not parse:
    /// such a manifest can serve nothing).
    fn named_objects(&self, path: &RemotePath) -> Result<Vec<ArtifactHash>, RemoteError> {
        match self.block_on(self.get_small(path)) {
            Ok(bytes) => Ok(serde_json::from_slice::<Manifest>(&bytes).map(|m| m.outputs.values().map(|o| o.hash).collect()).unwrap_or_default()),
            Err(Failure::Missing) | Err(Failure::Bad(_)) => Ok(Vec::new()),
            Err(Failure::Down(cause)) => Err(self.mark_down(cause).unwrap_or_else(|| self.unusable())),
        }
    }

    pub(super) fn delete(&self, path: &RemotePath) -> Result<(), RemoteError> {
        match self.block_on(bounded(self.c().store.delete(path))) {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(match self.failure(&e) {
                Failure::Down(cause) => self.mark_down(cause).unwrap_or_else(|| self.unusable()),
                f => RemoteError::Transfer { url: self.display.clone(), what: format!("cannot delete {path}"), cause: f.to_string() },
            }),
            Err(f) => Err(self.mark_down(f.to_string()).unwrap_or_else(|| self.unusable())),
        }
    }
}

/// Seconds since the epoch, now.
fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An entry's modification time, in seconds since the epoch.
fn unix(meta: &ObjectMeta) -> u64 {
    meta.last_modified.timestamp().max(0) as u64
}
