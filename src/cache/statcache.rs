//! Content hashes of files, remembered by their stat so an unchanged 1 GB
//! file is hashed once, not on every `status`.
//!
//! An entry is trusted only while the file's `(device, inode, size, mtime,
//! ctime)` are what they were when it was hashed, as git's index does:
//! ctime catches an edit whose mtime was put back, and the inode catches a
//! file replaced by another. An entry recorded less than
//! [`RACY_WINDOW_NS`] after the file last changed is "racily clean" (a
//! second write within the same timestamp tick would leave the stat
//! unchanged), so it is not trusted and the file is hashed again.
//!
//! Used for external inputs (data sets, weights) and for the cache's own
//! objects, whose bytes must still hash to their names. A directory's
//! hash is a Merkle hash over its entries in byte order of their names:
//! each entry contributes its kind (file or directory), its name and its
//! content hash, so empty directories and renames count. Symbolic links
//! are followed (model-hub snapshots are made of them): a stage reads what
//! a link points to, so that is what is hashed. A link cycle or a dangling
//! link is an error naming the link.
//!
//! The stat cache only saves work; it never enters a key. It also tells
//! `artifacts` the identity of an object this process has just checked,
//! so placing its link need not look the object up again. If the stat
//! cache is damaged or missing, everything is simply re-hashed. Entries
//! for files that no longer exist are pruned when it is saved.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::hash::hash_file;
use crate::digest::ArtifactHash;

/// How long after a file's last change its hash becomes trustworthy.
pub const RACY_WINDOW_NS: i128 = 2_000_000_000;

/// Bumped when [`Entry`] or the directory hash change meaning.
const FORMAT: u32 = 2;

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stat {
    pub fn of(m: &fs::Metadata) -> Self {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        }
    }

    /// From a raw `stat` (a lookup from an open directory), whose field
    /// types differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    pub fn of_raw(st: &rustix::fs::Stat) -> Self {
        Stat {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
        }
    }

    /// The stat of `path`, following links.
    pub fn read(path: &Path) -> io::Result<Self> {
        fs::metadata(path).map(|m| Self::of(&m))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    stat: Stat,
    hash: ArtifactHash,
    /// When the hash was computed (ns since the epoch).
    hashed_at_ns: i128,
    /// Whether this process found the file at `stat` (and so its hash
    /// trusted): its identity may then be taken from here.
    #[serde(skip)]
    checked: bool,
}

impl Entry {
    fn trusted_for(&self, now: &Stat) -> bool {
        self.stat == *now && self.stat.mtime_ns.max(self.stat.ctime_ns) + RACY_WINDOW_NS <= self.hashed_at_ns
    }
}

/// Keyed by hash, not order: a lookup per input and object on every run
/// is the hot path, and comparing paths component by component for a
/// sorted map cost more than the file's parse.
#[derive(Default, Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    entries: HashMap<Key, Entry>,
}

/// A canonical path as a map key, hashed and compared by its bytes:
/// canonical paths are equal exactly when their bytes are, and `Path`'s
/// own `Hash` and `Eq` split both sides into components on every lookup.
/// Stored as the path itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
struct Key(PathBuf);

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_os_str().hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_os_str() == other.0.as_os_str()
    }
}

impl Eq for Key {}

/// Looked up as `path.as_os_str()`, which hashes the same bytes.
impl std::borrow::Borrow<OsStr> for Key {
    fn borrow(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

#[derive(Default)]
pub struct StatCache {
    path: PathBuf,
    entries: Mutex<HashMap<Key, Entry>>,
    dirty: Mutex<bool>,
}

/// Why a path could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is a symbolic link to {}, which does not exist", path.display(), target.display())]
    Dangling { path: PathBuf, target: PathBuf },
    #[error("{} leads back to {} (a symbolic link cycle)", path.display(), ancestor.display())]
    Cycle { path: PathBuf, ancestor: PathBuf },
    #[error("{} is neither a file nor a directory (a socket, pipe or device cannot be an input)", path.display())]
    Special { path: PathBuf },
}

impl HashError {
    fn io(path: &Path, source: io::Error) -> Self {
        HashError::Io { path: path.to_path_buf(), source }
    }

    /// The underlying I/O error kind, when there is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            HashError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

impl StatCache {
    pub fn load(cache_root: &Path) -> Self {
        let path = cache_root.join("statcache.json");
        let entries = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<OnDisk>(&b).ok())
            .filter(|d| d.format == FORMAT)
            .map(|d| d.entries)
            .unwrap_or_default();
        Self { path, entries: Mutex::new(entries), dirty: Mutex::new(false) }
    }

    /// The content hash of a file or directory (links followed).
    pub fn hash(&self, path: &Path) -> Result<ArtifactHash, HashError> {
        let meta = metadata_following(path)?;
        if meta.is_dir() {
            let mut ancestors = Vec::new();
            return self.hash_dir(path, &meta, &mut ancestors);
        }
        if !meta.is_file() {
            return Err(HashError::Special { path: path.to_path_buf() });
        }
        self.hash_regular(path, &meta)
    }

    fn hash_regular(&self, path: &Path, meta: &fs::Metadata) -> Result<ArtifactHash, HashError> {
        let abs = fs::canonicalize(path).map_err(|e| HashError::io(path, e))?;
        self.hash_object_at(&abs, Stat::of(meta))
    }

    /// The content hash of a regular file named by a path that is already
    /// canonical (no links, absolute): the cache's own objects, whose
    /// paths are built from the canonical cache root. Saves resolving every
    /// component of the path on each look.
    pub fn hash_object(&self, abs: &Path) -> Result<ArtifactHash, HashError> {
        let meta = fs::metadata(abs).map_err(|e| HashError::io(abs, e))?;
        if !meta.is_file() {
            return Err(HashError::Special { path: abs.to_path_buf() });
        }
        self.hash_object_at(abs, Stat::of(&meta))
    }

    /// The content hash of the regular file at canonical path `abs`, whose
    /// stat the caller has just read.
    pub fn hash_object_at(&self, abs: &Path, stat: Stat) -> Result<ArtifactHash, HashError> {
        if let Some(e) = self.entries.lock().unwrap().get_mut(abs.as_os_str()) {
            if e.trusted_for(&stat) {
                e.checked = true;
                return Ok(e.hash);
            }
        }
        let hashed_at_ns = now_ns();
        let (hash, _) = hash_file(abs).map_err(|e| HashError::io(abs, e))?;
        // Record the stat seen before reading: a write during the read
        // changes the stat, so the next look re-hashes.
        self.entries.lock().unwrap().insert(Key(abs.to_path_buf()), Entry { stat, hash, hashed_at_ns, checked: true });
        *self.dirty.lock().unwrap() = true;
        Ok(hash)
    }

    fn hash_dir(&self, dir: &Path, meta: &fs::Metadata, ancestors: &mut Vec<(u64, u64, PathBuf)>) -> Result<ArtifactHash, HashError> {
        if let Some((_, _, first)) = ancestors.iter().find(|(d, i, _)| (*d, *i) == (meta.dev(), meta.ino())) {
            return Err(HashError::Cycle { path: dir.to_path_buf(), ancestor: first.clone() });
        }
        ancestors.push((meta.dev(), meta.ino(), dir.to_path_buf()));
        let mut names: Vec<OsString> = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| HashError::io(dir, e))? {
            names.push(entry.map_err(|e| HashError::io(dir, e))?.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"cairn-dir2\0");
        for name in names {
            let p = dir.join(&name);
            let m = metadata_following(&p)?;
            let (tag, h) = if m.is_dir() {
                (b'd', self.hash_dir(&p, &m, ancestors)?)
            } else if m.is_file() {
                (b'f', self.hash_regular(&p, &m)?)
            } else {
                return Err(HashError::Special { path: p });
            };
            hasher.update(&[tag]);
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&h.0);
        }
        ancestors.pop();
        Ok(ArtifactHash::from_blake3(hasher.finalize()))
    }

    /// Records the hash of a file whose bytes nobody else could have
    /// written since they were hashed (an object just moved into the store
    /// from a private scratch file), so it is trusted at once.
    pub fn record_verified(&self, path: &Path, hash: ArtifactHash) {
        let (Ok(abs), Ok(stat)) = (fs::canonicalize(path), Stat::read(path)) else { return };
        let hashed_at_ns = stat.mtime_ns.max(stat.ctime_ns) + RACY_WINDOW_NS;
        self.entries.lock().unwrap().insert(Key(abs.to_path_buf()), Entry { stat, hash, hashed_at_ns, checked: true });
        *self.dirty.lock().unwrap() = true;
    }

    /// The (device, inode) of canonical `abs` as this process found it
    /// when it trusted or recorded its hash (an object looked up or stored
    /// in this run, under the cache lock), without asking again; `None`
    /// when it has not looked.
    pub fn checked_identity(&self, abs: &Path) -> Option<(u64, u64)> {
        self.entries.lock().unwrap().get(abs.as_os_str()).filter(|e| e.checked).map(|e| (e.stat.dev, e.stat.ino))
    }

    /// Whether `path` (a file) has a trusted entry for its current stat.
    pub fn knows(&self, path: &Path) -> bool {
        let (Ok(meta), Ok(abs)) = (fs::metadata(path), fs::canonicalize(path)) else { return false };
        self.entries.lock().unwrap().get(abs.as_os_str()).is_some_and(|e| e.trusted_for(&Stat::of(&meta)))
    }

    /// Drops what is remembered about a file (e.g. it failed its checksum).
    pub fn forget(&self, path: &Path) {
        if let Ok(abs) = fs::canonicalize(path) {
            self.entries.lock().unwrap().remove(abs.as_os_str());
            *self.dirty.lock().unwrap() = true;
        }
    }

    /// Re-records a file's stat after an operation that changes only its
    /// metadata (a new hard link changes ctime), if its entry was trusted
    /// just before. `op`'s result is returned.
    pub fn keep_through<T>(&self, path: &Path, op: impl FnOnce() -> T) -> T {
        let abs = fs::canonicalize(path).ok();
        let before = abs.as_ref().and_then(|a| Stat::read(a).ok());
        let trusted = match (&abs, before) {
            (Some(a), Some(s)) => self.entries.lock().unwrap().get(a.as_os_str()).is_some_and(|e| e.trusted_for(&s)),
            _ => false,
        };
        let out = op();
        if let (true, Some(a)) = (trusted, abs) {
            if let Ok(after) = Stat::read(&a) {
                let mut entries = self.entries.lock().unwrap();
                if let Some(e) = entries.get_mut(a.as_os_str()) {
                    if (after.dev, after.ino, after.size, after.mtime_ns) == (e.stat.dev, e.stat.ino, e.stat.size, e.stat.mtime_ns) {
                        e.stat = after;
                        e.hashed_at_ns = e.hashed_at_ns.max(after.ctime_ns + RACY_WINDOW_NS);
                        *self.dirty.lock().unwrap() = true;
                    }
                }
            }
        }
        out
    }

    /// Saves new entries (atomically; losing a race only costs a re-hash),
    /// dropping those whose file is gone. Does nothing when nothing changed.
    pub fn save(&self) {
        if !*self.dirty.lock().unwrap() {
            return;
        }
        let Some(dir) = self.path.parent() else { return };
        if !dir.is_dir() {
            return;
        }
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|p, _| p.0.exists());
        let disk = OnDisk { format: FORMAT, entries: std::mem::take(&mut *entries) };
        let bytes = serde_json::to_vec(&disk).unwrap_or_default();
        *entries = disk.entries;
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
            use std::io::Write;
            if tmp.write_all(&bytes).is_ok() && tmp.persist(&self.path).is_ok() {
                *self.dirty.lock().unwrap() = false;
            }
        }
    }
}

/// `fs::metadata`, with a dangling link reported as such.
fn metadata_following(path: &Path) -> Result<fs::Metadata, HashError> {
    match fs::metadata(path) {
        Ok(m) => Ok(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::read_link(path) {
            Ok(target) => Err(HashError::Dangling { path: path.to_path_buf(), target }),
            Err(_) => Err(HashError::io(path, e)),
        },
        Err(e) => Err(HashError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn hash_of(dir: &Path) -> ArtifactHash {
        StatCache::default().hash(dir).unwrap()
    }

    #[test]
    fn directory_hash_follows_symlinks_to_their_content() {
        let t = tempfile::tempdir().unwrap();
        let blobs = t.path().join("blobs");
        fs::create_dir(&blobs).unwrap();
        fs::write(blobs.join("a"), b"weights A").unwrap();
        fs::write(blobs.join("b"), b"weights B").unwrap();
        let snap = t.path().join("snap");
        fs::create_dir(&snap).unwrap();
        symlink(blobs.join("a"), snap.join("model.bin")).unwrap();
        let before = hash_of(&snap);
        fs::remove_file(snap.join("model.bin")).unwrap();
        symlink(blobs.join("b"), snap.join("model.bin")).unwrap();
        assert_ne!(hash_of(&snap), before, "a link to other bytes is other content");
        // A regular file with the same bytes as the link target hashes the same.
        let plain = t.path().join("plain");
        fs::create_dir(&plain).unwrap();
        fs::write(plain.join("model.bin"), b"weights B").unwrap();
        assert_eq!(hash_of(&plain), hash_of(&snap));
    }

    #[test]
    fn empty_directories_and_names_count() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("x"), b"1").unwrap();
        let base = hash_of(&d);
        fs::create_dir(d.join("empty")).unwrap();
        let with_empty = hash_of(&d);
        assert_ne!(with_empty, base);
        fs::rename(d.join("empty"), d.join("other")).unwrap();
        assert_ne!(hash_of(&d), with_empty);
        fs::remove_dir(d.join("other")).unwrap();
        fs::rename(d.join("x"), d.join("y")).unwrap();
        assert_ne!(hash_of(&d), base, "a renamed file changes the hash");
    }

    #[test]
    fn link_cycles_and_dangling_links_are_errors_naming_the_link() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir_all(d.join("sub")).unwrap();
        symlink(&d, d.join("sub").join("loop")).unwrap();
        let e = StatCache::default().hash(&d).unwrap_err();
        assert!(matches!(e, HashError::Cycle { .. }), "{e}");
        assert!(e.to_string().contains("loop"), "{e}");
        fs::remove_file(d.join("sub").join("loop")).unwrap();
        symlink(t.path().join("nowhere"), d.join("gone")).unwrap();
        let e = StatCache::default().hash(&d).unwrap_err();
        assert!(e.to_string().contains("gone") && e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn same_size_edit_with_mtime_restored_is_seen_through_ctime() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, b"aaaa").unwrap();
        let sc = StatCache::default();
        let old = Stat::read(&f).unwrap();
        // Pretend it was hashed long after its last change, so it is trusted.
        sc.entries.lock().unwrap().insert(
            Key(fs::canonicalize(&f).unwrap()),
            Entry { stat: old, hash: ArtifactHash::of_bytes(b"aaaa"), hashed_at_ns: now_ns() + 10 * RACY_WINDOW_NS, checked: false },
        );
        assert!(sc.knows(&f));
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&f, b"bbbb").unwrap();
        fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
        let now = Stat::read(&f).unwrap();
        assert_eq!((now.size, now.mtime_ns), (old.size, old.mtime_ns), "size and mtime are restored");
        assert!(!sc.knows(&f), "ctime differs, so the entry is not trusted");
        assert_eq!(sc.hash(&f).unwrap(), ArtifactHash::of_bytes(b"bbbb"));
    }

    #[test]
    fn racily_clean_entries_are_rehashed() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, b"one").unwrap();
        let sc = StatCache::default();
        sc.hash(&f).unwrap();
        assert!(!sc.knows(&f), "hashed within the racy window of its last write");
    }

    #[test]
    fn an_identity_is_given_only_for_what_this_process_checked() {
        let t = tempfile::tempdir().unwrap();
        let f = fs::canonicalize(t.path()).unwrap().join("f");
        fs::write(&f, b"obj").unwrap();
        let sc = StatCache::load(t.path());
        sc.hash_object(&f).unwrap();
        sc.save();
        let id = fs::metadata(&f).map(|m| (m.dev(), m.ino())).unwrap();
        assert_eq!(sc.checked_identity(&f), Some(id), "hashed here");
        let back = StatCache::load(t.path());
        assert_eq!(back.checked_identity(&f), None, "an entry read from disk was not checked by this process");
        back.hash_object(&f).unwrap();
        assert_eq!(back.checked_identity(&f), Some(id), "checked now");
        back.forget(&f);
        assert_eq!(back.checked_identity(&f), None, "forgotten");
    }

    #[test]
    fn save_prunes_entries_of_files_that_are_gone() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let sc = StatCache::load(t.path());
        sc.hash(&a).unwrap();
        sc.hash(&b).unwrap();
        fs::remove_file(&b).unwrap();
        sc.save();
        let back = StatCache::load(t.path());
        let entries = back.entries.lock().unwrap();
        assert_eq!(entries.len(), 1);
        assert!(entries.contains_key(fs::canonicalize(&a).unwrap().as_os_str()));
    }
}
