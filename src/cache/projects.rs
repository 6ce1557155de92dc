//! The projects that use one cache, each with its own refs.
//!
//! Several checkouts, worktrees or pipelines may share a cache
//! (`--cache-dir`, `CAIRN_CACHE_DIR`): keys are content, so one project's
//! results are another's hits. What each project last ran is its own:
//! `projects/<id>.json` holds a project's pipeline file (the canonical
//! path that names the project, and the machine it ran on) and its refs,
//! so `explain` compares with the project's own last run, and `gc` keeps
//! what every project whose pipeline file still exists last ran or hit
//! (a project recorded by another machine, on a cache shared over a
//! network filesystem, cannot be checked from here and is kept until
//! `gc --forget` names it). A project whose file is gone (moved, deleted,
//! on a drive not mounted) is kept for a grace period that starts when
//! `gc` first finds it gone, which the record notes (`gone_since`), so a
//! moved checkout that has not run at its new path yet loses nothing to
//! the next `gc`. A cache written before
//! projects were recorded holds one `refs.json`; a project with no record
//! of its own reads that, and removes it once it writes its own.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Cache, CacheError, StageRef};
use crate::digest::StageKey;

const DIR: &str = "projects";
const LEGACY_REFS: &str = "refs.json";

/// A project: the pipeline file it runs, by canonical path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub pipeline: String,
}

impl Project {
    pub fn of(pipeline_file: &Path) -> Self {
        let path = fs::canonicalize(pipeline_file)
            .or_else(|_| std::path::absolute(pipeline_file))
            .unwrap_or_else(|_| pipeline_file.to_path_buf());
        Self { pipeline: path.to_string_lossy().into_owned() }
    }

    /// Its record's file name: a digest of the path, which may hold any
    /// character and be any length.
    fn file_name(&self) -> String {
        format!("{}.json", &blake3::hash(self.pipeline.as_bytes()).to_hex()[..32])
    }

    /// Whether a run recorded under `pipeline` (empty: recorded before
    /// projects were, when a cache had one) is this project's.
    pub fn owns(&self, pipeline: &str) -> bool {
        pipeline.is_empty() || pipeline == self.pipeline
    }
}

#[derive(Serialize, Deserialize)]
struct Record<R> {
    pipeline: String,
    /// The machine that wrote it (empty in records written without one).
    #[serde(default)]
    host: String,
    /// When `gc` first found the pipeline file gone (RFC 3339, UTC); no
    /// longer there once a run records the project or `gc` finds the file
    /// back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gone_since: Option<String>,
    stages: BTreeMap<String, R>,
}

#[derive(Deserialize)]
struct KeyOnly {
    key: StageKey,
}

/// A record in the cache that cannot be read (a project's or a run's),
/// and why.
#[derive(Debug)]
pub struct UnreadableRecord {
    pub path: PathBuf,
    pub reason: String,
}

/// What to do about a record that does not parse.
pub const UNREADABLE_HELP: &str = "a record that does not parse cannot be repaired: move it out of the cache (or delete it) and run gc again; a project is recorded again on its next run, and a run record lists only what a past run made";

/// One line per record: its path and why it cannot be read.
pub fn list_unreadable(records: &[UnreadableRecord]) -> String {
    records.iter().map(|r| format!("\n  {}: {}", r.path.display(), r.reason)).collect()
}

/// Another project that used the cache, as `gc` sees it.
pub struct OtherProject {
    pub pipeline: String,
    /// The machine that last recorded it.
    pub host: String,
    /// The key each of its stages last ran or hit with.
    pub keys: BTreeMap<String, StageKey>,
    /// When `gc` first found its pipeline file gone, as recorded.
    pub gone_since: Option<String>,
    record: PathBuf,
}

impl OtherProject {
    /// Whether it may still be used: its pipeline file is there, or it
    /// was recorded on another machine, where this one cannot look.
    pub fn exists(&self) -> bool {
        self.elsewhere() || Path::new(&self.pipeline).is_file()
    }

    /// Whether another machine recorded it.
    pub fn elsewhere(&self) -> bool {
        !self.host.is_empty() && self.host != crate::env::hostname()
    }
}

impl Cache {
    fn record_path(&self, p: &Project) -> PathBuf {
        self.root().join(DIR).join(p.file_name())
    }

    /// `p`'s record, else the refs of a cache made before projects were
    /// recorded.
    fn read_refs<R: serde::de::DeserializeOwned>(&self, p: &Project) -> BTreeMap<String, R> {
        if let Ok(bytes) = fs::read(self.record_path(p)) {
            return serde_json::from_slice::<Record<R>>(&bytes).map(|r| r.stages).unwrap_or_default();
        }
        fs::read(self.root().join(LEGACY_REFS)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// The key inputs each of `p`'s stages last ran or hit with.
    pub fn stage_refs(&self, p: &Project) -> BTreeMap<String, StageRef> {
        self.read_refs(p)
    }

    /// The key each of `p`'s stages last ran or hit with: the refs without
    /// their key inputs, which is all a run needs to see whether it
    /// changed them, at a fraction of the parse.
    pub fn stage_ref_keys(&self, p: &Project) -> BTreeMap<String, StageKey> {
        self.read_refs::<KeyOnly>(p).into_iter().map(|(stage, r)| (stage, r.key)).collect()
    }

    /// Replaces `p`'s refs, in one atomic write.
    pub fn write_stage_refs(&self, p: &Project, refs: &BTreeMap<String, StageRef>) -> Result<(), CacheError> {
        super::store::ensure_real_dir(&self.root().join(DIR))?;
        let record = Record { pipeline: p.pipeline.clone(), host: crate::env::hostname(), gone_since: None, stages: refs.clone() };
        self.write_atomic(&self.record_path(p), &serde_json::to_vec(&record).expect("refs serialise"))?;
        let _ = fs::remove_file(self.root().join(LEGACY_REFS));
        Ok(())
    }

    /// Every project but `me` that recorded refs here (none where
    /// `projects/` is not a real directory, since `gc` deletes the records
    /// of projects that are gone), and the records that do not parse:
    /// whose they are cannot be known, so `gc` keeps everything while one
    /// is there. `me`'s own record is known by its name and not read.
    pub fn other_projects(&self, me: &Project) -> (Vec<OtherProject>, Vec<UnreadableRecord>) {
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        let Some(root) = super::store::real_dir(self.root().join(DIR)) else { return (out, bad) };
        let Ok(dir) = fs::read_dir(root) else { return (out, bad) };
        let mine = me.file_name();
        for e in dir.flatten() {
            let name = e.file_name();
            if name.to_str() == Some(mine.as_str()) || !name.to_string_lossy().ends_with(".json") {
                continue;
            }
            let parsed = fs::read(e.path())
                .map_err(|err| err.to_string())
                .and_then(|bytes| serde_json::from_slice::<Record<KeyOnly>>(&bytes).map_err(|err| err.to_string()));
            match parsed {
                Ok(r) if r.pipeline == me.pipeline => {}
                Ok(r) => {
                    let keys = r.stages.into_iter().map(|(s, k)| (s, k.key)).collect();
                    out.push(OtherProject { pipeline: r.pipeline, host: r.host, keys, gone_since: r.gone_since, record: e.path() });
                }
                Err(reason) => bad.push(UnreadableRecord { path: e.path(), reason }),
            }
        }
        out.sort_by(|a, b| a.pipeline.cmp(&b.pipeline));
        (out, bad)
    }

    /// Deletes the record of a project whose pipeline file is gone.
    pub fn forget(&self, other: &OtherProject) -> Result<(), CacheError> {
        fs::remove_file(&other.record).map_err(|e| CacheError::io("cannot delete", other.record.clone(), e))
    }

    /// Notes in `other`'s record when its pipeline file was first found
    /// gone (`None`: found back), keeping the rest of the record as it is.
    /// An unreadable record is left alone.
    pub fn note_gone_since(&self, other: &OtherProject, since: Option<&str>) -> Result<(), CacheError> {
        let Ok(bytes) = fs::read(&other.record) else { return Ok(()) };
        let Ok(serde_json::Value::Object(mut record)) = serde_json::from_slice(&bytes) else { return Ok(()) };
        match since {
            Some(t) => record.insert("gone_since".into(), t.into()),
            None => record.remove("gone_since"),
        };
        self.write_atomic(&other.record, &serde_json::to_vec(&record).expect("a JSON object serialises"))
    }
}
