//! `artifacts/<stage>/<output>.<ext>`: the human-facing view of the current
//! outputs of every fresh stage, as hard links into the cache (copies when
//! the cache is on another filesystem).
//!
//! cairn deletes only what it placed: the directory carries a record
//! ([`RECORD`]) of every file cairn put there, with its device and inode,
//! and a file is removed only when the record names it and it is still
//! that very file. Links are never followed while deleting, a stage
//! directory that is a symbolic link is left alone, and a non-empty
//! directory without the record is refused. Before placing anything the
//! record names the paths about to be placed (`pending`), so a run killed
//! midway leaves a directory that is still cairn's and whose half-placed
//! files the next run may replace. Objects are read-only; an edit
//! made through a link anyway (as root) changes the object's stat, so the
//! next `status` or `run` re-hashes it, finds the damage and recomputes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{Cache, OutputRecord};

/// The record of what cairn placed, inside the artifacts directory.
pub const RECORD: &str = ".cairn-artifacts.json";
/// How the record's temp files begin, before one becomes the record.
const RECORD_TEMP: &str = ".cairn-artifacts.json.";

fn is_record_temp(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(RECORD_TEMP)) && fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    #[error("{} is not a cairn artifacts directory (it has files and no {RECORD})\n  help: remove or rename it, or set CAIRN_ARTIFACTS_DIR to an empty directory; cairn will not write into or delete from it", path.display())]
    Foreign { path: PathBuf },
    #[error("{action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArtifactsError + 'a {
    move |source| ArtifactsError::Io { action, path: path.to_path_buf(), source }
}

/// What [`materialize`] did.
#[derive(Debug, Default)]
pub struct Materialized {
    /// Files (re)linked or copied.
    pub linked: usize,
    /// Paths in the way that are not cairn's, left alone.
    pub left_alone: Vec<PathBuf>,
}

/// Relative path → (device, inode) of each file cairn placed, and the
/// paths it was placing when it wrote the record last (empty once a run
/// finished placing).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    files: BTreeMap<String, (u64, u64)>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pending: BTreeSet<String>,
}

impl Record {
    /// Whether the file found at `rel` is one cairn placed (or was placing).
    fn owns(&self, rel: &str, found: &fs::Metadata) -> bool {
        found.is_file() && (self.files.get(rel) == Some(&identity(found)) || self.pending.contains(rel))
    }
}

/// Makes `dir` hold exactly the given outputs, as far as what is there is
/// cairn's to change. Files placed earlier for stages that `untouched`
/// names are kept as they are; an output whose object is not in `cache`
/// is left out.
pub fn materialize<'a>(
    dir: &Path,
    cache: &Cache,
    outputs: impl IntoIterator<Item = (&'a str, &'a str, &'a OutputRecord)>,
    untouched: &dyn Fn(&str) -> bool,
) -> Result<Materialized, ArtifactsError> {
    let old = claim(dir)?;
    let mut record = Record::default();
    let kept = |rel: &String| rel.split_once('/').is_some_and(|(stage, _)| untouched(stage));
    record.files.extend(old.files.iter().filter(|(rel, _)| kept(rel)).map(|(rel, id)| (rel.clone(), *id)));
    record.pending.extend(old.pending.iter().filter(|rel| kept(rel)).cloned());
    let mut done = Materialized::default();
    let mut todo = Vec::new();
    for (stage, name, rec) in outputs {
        let rel = format!("{stage}/{name}.{}", rec.ext);
        let src = cache.object_path(&rec.hash);
        match check(dir, stage, &rel, &src, &old, cache)? {
            Check::Kept(id) => {
                record.files.insert(rel, id);
            }
            Check::Place { replace, make_dir } => todo.push((stage, rel, src, replace, make_dir)),
            Check::NotOurs(p) => done.left_alone.push(p),
            Check::Absent => {}
        }
    }
    if todo.iter().any(|(_, rel, ..)| !old.pending.contains(rel)) {
        // Written ahead, so that a run killed while placing leaves a
        // directory the next one still recognises as cairn's.
        let mut intent = old.clone();
        intent.pending.extend(todo.iter().map(|(_, rel, ..)| rel.clone()));
        write_record(dir, &intent)?;
    }
    let mut made = BTreeSet::new();
    for (stage, rel, src, replace, make_dir) in todo {
        // Each output of a stage without its directory was told to make it.
        if make_dir && made.insert(stage) {
            let stage_dir = dir.join(stage);
            fs::create_dir(&stage_dir).map_err(io_err("cannot create", &stage_dir))?;
        }
        record.files.insert(rel.clone(), place(&dir.join(&rel), &src, replace, cache)?);
        done.linked += 1;
    }
    remove_stale(dir, &old, &record);
    if record != old {
        write_record(dir, &record)?;
    }
    Ok(done)
}

/// What one output needs.
enum Check {
    /// Already there: the object itself, linked earlier.
    Kept((u64, u64)),
    /// To be linked or copied, replacing cairn's own file there, into a
    /// stage directory to be made first.
    Place { replace: bool, make_dir: bool },
    /// Something not cairn's is in the way; left alone.
    NotOurs(PathBuf),
    /// The object is not in this cache (a stage served from a remote
    /// without its bytes).
    Absent,
}

fn identity(m: &fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// Decides what placing one object at `dir/rel` takes, changing nothing.
fn check(dir: &Path, stage: &str, rel: &str, src: &Path, old: &Record, cache: &Cache) -> Result<Check, ArtifactsError> {
    // An object this run looked up was just found at its stat; asking
    // again would cost a path lookup per output.
    let src_id = match cache.stat().checked_identity(src).map(Ok).unwrap_or_else(|| fs::metadata(src).map(|m| identity(&m))) {
        Ok(id) => id,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Check::Absent),
        Err(e) => return Err(io_err("cannot read", src)(e)),
    };
    let found = fs::symlink_metadata(dir.join(rel));
    // Placed here earlier, through a stage directory checked then, and
    // still that object: nothing to do, so nothing to check.
    if found.as_ref().is_ok_and(|m| m.is_file() && identity(m) == src_id && old.files.get(rel) == Some(&src_id)) {
        return Ok(Check::Kept(src_id));
    }
    let stage_dir = dir.join(stage);
    let make_dir = match fs::symlink_metadata(&stage_dir) {
        Ok(m) if m.is_dir() => false,
        Ok(_) => return Ok(Check::NotOurs(stage_dir)),
        Err(_) => true,
    };
    Ok(match found {
        Ok(m) if m.is_file() && identity(&m) == src_id => Check::Kept(src_id),
        Ok(m) if old.owns(rel, &m) => Check::Place { replace: true, make_dir },
        Ok(_) => Check::NotOurs(dir.join(rel)),
        Err(_) => Check::Place { replace: false, make_dir },
    })
}

/// Links (or copies) one object to `dest`, as [`check`] decided.
fn place(dest: &Path, src: &Path, replace: bool, cache: &Cache) -> Result<(u64, u64), ArtifactsError> {
    if replace {
        fs::remove_file(dest).map_err(io_err("cannot replace", dest))?;
    }
    // A new hard link changes only the object's ctime; keep its verified
    // hash through it so the next status need not re-read it.
    if cache.stat().keep_through(src, || fs::hard_link(src, dest)).is_err() {
        fs::copy(src, dest).map_err(io_err("cannot copy to", dest))?;
    }
    fs::symlink_metadata(dest).map(|m| identity(&m)).map_err(io_err("cannot read", dest))
}

/// Checks `dir` is cairn's (creating it if missing) and returns its record.
fn claim(dir: &Path) -> Result<Record, ArtifactsError> {
    let record_path = dir.join(RECORD);
    if let Ok(bytes) = fs::read(&record_path) {
        return Ok(serde_json::from_slice(&bytes).unwrap_or_default());
    }
    match fs::read_dir(dir).map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>()) {
        Ok(entries) if entries.iter().all(|p| is_record_temp(p)) => {
            // Left by a run killed while it wrote the first record.
            entries.iter().for_each(|p| drop(fs::remove_file(p)));
            Ok(Record::default())
        }
        Ok(_) => Err(ArtifactsError::Foreign { path: dir.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
            Ok(Record::default())
        }
        Err(e) => Err(io_err("cannot read", dir)(e)),
    }
}

/// Removes the files cairn placed earlier that are no longer wanted, if
/// they are still the files it placed, then their stage directories if
/// empty. Nothing is followed: `symlink_metadata` and `remove_file` act on
/// links themselves.
fn remove_stale(dir: &Path, old: &Record, new: &Record) {
    let mut stages = BTreeSet::new();
    let placed = old.files.iter().map(|(rel, id)| (rel, Some(id)));
    for (rel, id) in placed.chain(old.pending.iter().map(|rel| (rel, None))) {
        if new.files.contains_key(rel) || new.pending.contains(rel) {
            continue;
        }
        let p = dir.join(rel);
        // A pending path holds, if anything, what cairn was placing there.
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && id.is_none_or(|id| identity(&m) == *id)) {
            let _ = fs::remove_file(&p);
        }
        if let Some((stage, _)) = rel.split_once('/') {
            stages.insert(stage.to_string());
        }
    }
    for stage in stages {
        let p = dir.join(&stage);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            // Only succeeds if it is now empty.
            let _ = fs::remove_dir(&p);
        }
    }
}

fn write_record(dir: &Path, record: &Record) -> Result<(), ArtifactsError> {
    use std::io::Write;
    let path = dir.join(RECORD);
    let bytes = serde_json::to_vec_pretty(record).expect("records serialise");
    // A fresh temp file (never an existing name, which could be a link).
    let mut tmp = tempfile::Builder::new().prefix(RECORD_TEMP).tempfile_in(dir).map_err(io_err("cannot write in", dir))?;
    tmp.write_all(&bytes).map_err(io_err("cannot write", &path))?;
    tmp.persist(&path).map_err(|e| io_err("cannot write", &path)(e.error))?;
    Ok(())
}

#[cfg(test)]
#[path = "artifacts_tests.rs"]
mod tests;
