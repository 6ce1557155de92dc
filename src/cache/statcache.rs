//! Content hashes of external inputs (data sets, weights), remembered by
//! `(device, inode, size, mtime_ns)` so an unchanged 1 GB file is hashed
//! once, not on every `status`. A directory's hash covers the sorted
//! relative paths and content hashes of every file below it.
//!
//! The stat cache only saves work; it never enters a key. If it is damaged
//! or missing, everything is simply re-hashed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::store::hash_file;
use crate::digest::ArtifactHash;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    hash: ArtifactHash,
}

#[derive(Default)]
pub struct StatCache {
    path: PathBuf,
    entries: Mutex<BTreeMap<PathBuf, Entry>>,
    dirty: Mutex<bool>,
}

impl StatCache {
    pub fn load(cache_root: &Path) -> Self {
        let path = cache_root.join("statcache.json");
        let entries = fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Self { path, entries: Mutex::new(entries), dirty: Mutex::new(false) }
    }

    /// The content hash of a file or directory.
    pub fn hash(&self, path: &Path) -> std::io::Result<ArtifactHash> {
        let meta = fs::metadata(path)?;
        if meta.is_dir() {
            return self.hash_dir(path);
        }
        let abs = fs::canonicalize(path)?;
        let (dev, ino, size, mtime_ns) = stat_of(&meta);
        if let Some(e) = self.entries.lock().unwrap().get(&abs) {
            if (e.dev, e.ino, e.size, e.mtime_ns) == (dev, ino, size, mtime_ns) {
                return Ok(e.hash);
            }
        }
        let (hash, _) = hash_file(&abs)?;
        self.entries.lock().unwrap().insert(abs, Entry { dev, ino, size, mtime_ns, hash });
        *self.dirty.lock().unwrap() = true;
        Ok(hash)
    }

    fn hash_dir(&self, dir: &Path) -> std::io::Result<ArtifactHash> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        files.sort();
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"cairn-dir\0");
        for rel in files {
            let h = self.hash(&dir.join(&rel))?;
            let name = rel.to_string_lossy();
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&h.0);
        }
        Ok(ArtifactHash::from_blake3(hasher.finalize()))
    }

    /// Whether a file's current stat matches a remembered hash.
    pub fn knows(&self, path: &Path) -> bool {
        let (Ok(meta), Ok(abs)) = (fs::metadata(path), fs::canonicalize(path)) else { return false };
        let entries = self.entries.lock().unwrap();
        entries.get(&abs).is_some_and(|e| (e.dev, e.ino, e.size, e.mtime_ns) == stat_of(&meta))
    }

    /// Drops what is remembered about a file (e.g. it failed its checksum).
    pub fn forget(&self, path: &Path) {
        if let Ok(abs) = fs::canonicalize(path) {
            self.entries.lock().unwrap().remove(&abs);
            *self.dirty.lock().unwrap() = true;
        }
    }

    /// Saves new entries (atomically; losing a race only costs a re-hash).
    pub fn save(&self) {
        if !*self.dirty.lock().unwrap() {
            return;
        }
        let Some(dir) = self.path.parent() else { return };
        if fs::create_dir_all(dir).is_err() {
            return;
        }
        let bytes = serde_json::to_vec(&*self.entries.lock().unwrap()).unwrap_or_default();
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
            use std::io::Write;
            if tmp.write_all(&bytes).is_ok() {
                let _ = tmp.persist(&self.path);
            }
        }
    }
}

fn stat_of(m: &fs::Metadata) -> (u64, u64, u64, i128) {
    (m.dev(), m.ino(), m.size(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128)
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let p = entry.path();
        if ft.is_dir() {
            collect_files(root, &p, out)?;
        } else if ft.is_file() {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
    Ok(())
}
