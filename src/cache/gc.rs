//! Garbage collection and whole-cache verification.
//!
//! [`roots`] finds what must stay: the current pipeline's fresh outputs,
//! what every other project sharing the cache last ran or hit (while its
//! pipeline file exists, and for a grace period after `gc` first finds it
//! gone; see [`super::projects`]), and what each such project's newest N
//! runs reference. `collect` deletes objects outside
//! that set and the manifests that name deleted objects, so no manifest is
//! left pointing at nothing, and the training checkpoints nothing will
//! resume (see [`orphan_checkpoints`]). It runs under the cache lock, so
//! it can never race a run that is writing new entries. A project or run
//! record that does not parse could name anything, so `gc` then deletes
//! nothing and names the record ([`CacheError::UnreadableRecords`]).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::projects::{OtherProject, Project, UnreadableRecord};
use super::{Cache, CacheError};
use crate::digest::{ArtifactHash, StageKey};
use crate::history::HistoryRow;
use crate::timestamp;

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
    super::store::real_dir(cache.root().join(CHECKPOINTS))
}

/// When a live project's newest recorded run started (its id's
/// `YYYYMMDDTHHMMSS`, UTC) and the keys it planned; `None` for a project
/// with no readable run.
pub type NewestRun = Option<(String, BTreeSet<String>)>;

/// Checkpoints nothing will resume, with their sizes. One is an orphan when
/// its key has a manifest (the stage completed, or was pulled, since), or
/// when every live project (`newest`, one entry each) has a recorded run
/// that started after it was last written and did not plan its key (its
/// params or inputs changed since): a checkpoint does not say whose it is.
/// A run killed outright records nothing, so what it checkpointed is newer
/// than its project's newest record and is kept for the next run to resume.
pub fn orphan_checkpoints(cache: &Cache, newest: &[NewestRun]) -> Vec<(PathBuf, u64)> {
    let Some(root) = checkpoints_root(cache) else { return Vec::new() };
    let Ok(dirs) = fs::read_dir(&root) else { return Vec::new() };
    let mut out = Vec::new();
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().to_string();
        let Ok(key) = name.parse::<StageKey>() else { continue };
        let (written, bytes) = last_written(&d.path());
        let superseded = !newest.is_empty()
            && newest.iter().all(|n| n.as_ref().is_some_and(|(started, keys)| written < *started && !keys.contains(&name)));
        if cache.manifest(&key, &|_: String| {}).ok().flatten().is_some() || superseded {
            out.push((d.path(), bytes));
        }
    }
    out
}

/// What `gc` must keep, and the projects it kept it for.
pub struct Roots {
    pub keep: BTreeSet<ArtifactHash>,
    /// Other projects whose pipeline file exists: what they last ran or
    /// hit, and their newest runs, are kept.
    pub others: Vec<OtherProject>,
    /// Other projects whose pipeline file is gone, within their grace
    /// period: kept as if it were there.
    pub held: Vec<Held>,
    /// Other projects forgotten: named by `--forget`, or gone past their
    /// grace period. Nothing is kept for them, and `collect` deletes
    /// their records.
    pub gone: Vec<OtherProject>,
    newest: Vec<NewestRun>,
}

/// Which other projects `gc` forgets: those `named` (by recorded pipeline
/// path), wherever they were recorded, and those whose pipeline file has
/// been gone for `grace` since `gc` first found it gone, at `now`.
pub struct Forget {
    pub named: BTreeSet<String>,
    pub grace: time::Duration,
    pub now: time::OffsetDateTime,
}

/// A project whose pipeline file is gone, kept until `since + grace`.
pub struct Held {
    pub project: OtherProject,
    /// When `gc` first found it gone (now, where its record did not say).
    pub since: time::OffsetDateTime,
    pub until: time::OffsetDateTime,
    /// Whether its record already notes `since`.
    noted: bool,
}

/// Sorts the other projects into live, held and forgotten ones.
fn sort_projects(projects: Vec<OtherProject>, forget: &Forget) -> (Vec<OtherProject>, Vec<Held>, Vec<OtherProject>) {
    let (mut others, mut held, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for p in projects {
        if forget.named.contains(&p.pipeline) {
            gone.push(p);
        } else if p.exists() {
            others.push(p);
        } else {
            let noted = p.gone_since.as_deref().and_then(timestamp::parse);
            let since = noted.unwrap_or(forget.now);
            // A date near the calendar's end (a hostile record, a grace of
            // millions of days) keeps the project rather than overflowing.
            let until = since.checked_add(forget.grace).unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
            if until <= forget.now {
                gone.push(p);
            } else {
                held.push(Held { project: p, since, until, noted: noted.is_some() });
            }
        }
    }
    (others, held, gone)
}

/// The roots of a collection run by project `me`, whose fresh outputs are
/// `fresh`: those, what every other live or held project last ran or hit,
/// and what each such project's newest `keep_runs` runs reference. A run
/// recorded before runs named their project counts as `me`'s. A project
/// or run record that does not parse could name anything, so it is an
/// error ([`CacheError::UnreadableRecords`]) rather than nothing to keep.
pub fn roots(cache: &Cache, me: &Project, fresh: BTreeSet<ArtifactHash>, keep_runs: usize, forget: &Forget) -> Result<Roots, CacheError> {
    let (projects, mut unreadable) = cache.other_projects(me);
    let (others, held, gone) = sort_projects(projects, forget);
    let kept = || others.iter().chain(held.iter().map(|h| &h.project));
    let mut keep = fresh;
    for key in kept().flat_map(|p| p.keys.values()) {
        if let Ok(Some(m)) = cache.manifest(key, &|_: String| {}) {
            keep.extend(m.outputs.values().map(|o| o.hash));
        }
    }
    let (mut runs, bad_runs) = load_runs(cache);
    unreadable.extend(bad_runs);
    if !unreadable.is_empty() {
        return Err(CacheError::UnreadableRecords { records: unreadable });
    }
    runs.reverse();
    let live = std::iter::once(me.clone()).chain(kept().map(|o| Project { pipeline: o.pipeline.clone() }));
    let mut newest = Vec::new();
    for p in live {
        let mine: Vec<&Vec<HistoryRow>> = runs.iter().filter(|(_, rows)| owner(rows, me) == p.pipeline).map(|(_, rows)| rows).collect();
        newest.push(mine.first().map(|rows| started(rows)));
        for rows in mine.into_iter().take(keep_runs) {
            keep.extend(rows.iter().flat_map(|r| r.outputs.values()).filter_map(|h| h.parse::<ArtifactHash>().ok()));
        }
    }
    Ok(Roots { keep, others, held, gone, newest })
}

/// Every recorded run, oldest first, with its id; and the run records
/// that do not parse.
fn load_runs(cache: &Cache) -> (Vec<(String, Vec<HistoryRow>)>, Vec<UnreadableRecord>) {
    let (mut runs, mut bad) = (Vec::new(), Vec::new());
    for id in crate::history::run_ids(cache.root()) {
        match crate::history::load(cache.root(), &id) {
            Ok(rows) => runs.push((id, rows)),
            Err(e) => {
                let path = crate::history::record_path(cache.root(), &id);
                // The table's error names the file first; the list does too.
                let msg = e.to_string();
                let reason = msg.strip_prefix(&format!("{}: ", path.display())).unwrap_or(&msg).to_string();
                bad.push(UnreadableRecord { path, reason });
            }
        }
    }
    (runs, bad)
}

/// Whose run `rows` are: the project they name, else `me`.
fn owner<'a>(rows: &'a [HistoryRow], me: &'a Project) -> &'a str {
    match rows.first().map(|r| r.project.as_str()) {
        Some(p) if !me.owns(p) => p,
        _ => &me.pipeline,
    }
}

/// When a run started and the keys it planned.
fn started(rows: &[HistoryRow]) -> (String, BTreeSet<String>) {
    let id = rows.first().map(|r| r.run_id.as_str()).unwrap_or_default();
    (id.chars().take(15).collect(), rows.iter().map(|r| r.key.clone()).collect())
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
    let stamp = latest.map(timestamp::format).unwrap_or_default();
    (timestamp::compact_second(&stamp), bytes)
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

pub fn collect(cache: &Cache, roots: &Roots, dry_run: bool) -> Result<GcReport, CacheError> {
    let mut report = GcReport::default();
    let mut deleted = BTreeSet::new();
    for (h, size) in objects(cache) {
        if roots.keep.contains(&h) {
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
    for (dir, bytes) in orphan_checkpoints(cache, &roots.newest) {
        report.checkpoints += 1;
        report.checkpoint_bytes += bytes;
        if !dry_run {
            fs::remove_dir_all(&dir).map_err(|e| CacheError::io("cannot delete", dir, e))?;
        }
    }
    if !dry_run {
        note_projects(cache, roots)?;
    }
    Ok(report)
}

/// Deletes the records of forgotten projects, notes when each held one
/// was first found gone, and clears that note from one found back.
fn note_projects(cache: &Cache, roots: &Roots) -> Result<(), CacheError> {
    for p in &roots.gone {
        cache.forget(p)?;
    }
    for h in roots.held.iter().filter(|h| !h.noted) {
        cache.note_gone_since(&h.project, Some(&timestamp::format(h.since)))?;
    }
    for p in roots.others.iter().filter(|p| p.gone_since.is_some() && !p.elsewhere()) {
        cache.note_gone_since(p, None)?;
    }
    Ok(())
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
    /// Project and run records that do not parse (`gc` stops while one is
    /// there).
    pub bad_records: Vec<UnreadableRecord>,
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
    // A project of no pipeline file: every project's record is read.
    report.bad_records = cache.other_projects(&Project { pipeline: String::new() }).1;
    report.bad_records.extend(load_runs(cache).1);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A checkpoint of key `k` (a repeated hex pair) last written at `at`.
    fn checkpoint(cache: &Cache, k: &str, at: SystemTime) -> String {
        let name = k.repeat(32);
        let dir = cache.root().join(CHECKPOINTS).join(&name);
        fs::create_dir_all(&dir).unwrap();
        let f = fs::File::create(dir.join("state")).unwrap();
        f.set_modified(at).unwrap();
        fs::File::open(&dir).unwrap().set_modified(at).unwrap();
        name
    }

    fn stamp(t: SystemTime) -> String {
        timestamp::compact_second(&timestamp::format(time::OffsetDateTime::from(t)))
    }

    #[test]
    fn a_checkpoint_is_an_orphan_only_once_every_live_project_ran_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let hour = Duration::from_secs(3600);
        let now = SystemTime::now();
        let old = checkpoint(&cache, "ab", now - 2 * hour);
        let planned = checkpoint(&cache, "cd", now - 2 * hour);
        let recent = checkpoint(&cache, "ef", now);
        let ran_since = Some((stamp(now - hour), BTreeSet::from([planned.clone()])));
        let names = |newest: &[NewestRun]| -> BTreeSet<String> {
            orphan_checkpoints(&cache, newest).into_iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        // One project that ran since and planned another key.
        assert_eq!(names(std::slice::from_ref(&ran_since)), BTreeSet::from([old.clone()]));
        // A second project that has not run since may still resume it.
        let not_since = Some((stamp(now - 3 * hour), BTreeSet::new()));
        assert!(names(&[ran_since.clone(), not_since]).is_empty());
        // Nor may one that never recorded a run (a killed first run).
        assert!(names(&[ran_since.clone(), None]).is_empty());
        // Both ran since: only the unplanned, older checkpoint goes.
        assert_eq!(names(&[ran_since.clone(), ran_since]), BTreeSet::from([old]));
        assert!(!names(&[]).contains(&recent));
    }
}
