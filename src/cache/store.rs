//! Objects and manifests on disk, written atomically.
//!
//! The store owns its files outright: an output enters it as a private,
//! read-only copy (never as a link to a file someone else can edit), an
//! object whose bytes no longer hash to its name is replaced when the same
//! bytes are ingested again, and cairn writes or deletes only inside a
//! directory that carries its [`CACHE_TAG`].

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::hash::hash_file;
use super::manifest::{Hit, Manifest, ManifestOf};
use super::open_dir::OpenDir;
use super::statcache::{HashError, StatCache};
use super::CacheError;
use crate::digest::{ArtifactHash, StageKey};

/// The marker that makes a directory a cairn cache (the Cache Directory
/// Tagging Specification's tag, so backup tools skip it too).
pub const CACHE_TAG: &str = "CACHEDIR.TAG";
const CACHE_TAG_TEXT: &str =
    "Signature: 8a477f597d28d172789f06886806bc55\n# This directory is a cairn cache; see https://bford.info/cachedir/\n";

/// The subdirectories of a cache.
const SUBDIRS: [&str; 4] = ["objects", "manifests", "runs", "tmp"];

/// Entries a cache made before the tag existed may hold; such a cache is
/// adopted (tagged) when opened.
const LEGACY_ENTRIES: [&str; 8] = ["objects", "manifests", "refs", "runs", "tmp", "lock", "statcache.json", "refs.json"];

/// A stage that took this long or more has its manifest fsynced at once:
/// redoing it after a crash would cost more than a thousand fsyncs.
const SYNC_AT_ONCE_S: f64 = 1.0;

#[derive(Clone)]
pub struct Cache {
    root: PathBuf,
    /// Hashes of external inputs and of objects, by stat.
    stat: Arc<StatCache>,
    /// `objects/` and `manifests/`, where every lookup starts.
    dirs: Arc<LookupDirs>,
}

struct LookupDirs {
    objects: OpenDir,
    manifests: OpenDir,
}

impl LookupDirs {
    fn open(root: &Path) -> Arc<Self> {
        Arc::new(Self { objects: OpenDir::new(root.join("objects")), manifests: OpenDir::new(root.join("manifests")) })
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("root", &self.root).finish()
    }
}

impl Cache {
    /// Opens (creating if needed) a cache directory for writing. A
    /// non-empty directory that is not a cairn cache is refused, and so is
    /// a cache whose subdirectories are symbolic links.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        claim(root)?;
        for sub in SUBDIRS {
            ensure_real_dir(&root.join(sub))?;
        }
        // Absolute, because stages run in their own working directory.
        let root = fs::canonicalize(root).map_err(|e| CacheError::io("cannot open cache directory", root, e))?;
        let stat = Arc::new(StatCache::load(&root));
        Ok(Self { dirs: LookupDirs::open(&root), root, stat })
    }

    /// Opens a cache for reading only; a missing cache is simply empty.
    pub fn open_read(root: &Path) -> Self {
        let root = fs::canonicalize(root).or_else(|_| std::path::absolute(root)).unwrap_or_else(|_| root.to_path_buf());
        let stat = Arc::new(StatCache::load(&root));
        Self { dirs: LookupDirs::open(&root), root, stat }
    }

    /// Opens an existing cache for reading, refusing a directory that is
    /// not one (for commands that report on a cache's health). A missing
    /// or empty directory is an empty cache: a run killed before it had
    /// tagged the directory it just made leaves one.
    pub fn open_existing(root: &Path) -> Result<Self, CacheError> {
        if !is_cache(root) && !is_missing_or_empty(root) {
            return Err(CacheError::Foreign {
                path: root.to_path_buf(),
                reason: "it has no CACHEDIR.TAG and not the layout of one".into(),
            });
        }
        Ok(Self::open_read(root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What is known about file contents by stat (shared by every user of
    /// this cache handle).
    pub fn stat(&self) -> &StatCache {
        &self.stat
    }

    /// The same stat cache, for a holder that outlives this handle.
    pub fn stat_handle(&self) -> Arc<StatCache> {
        self.stat.clone()
    }

    pub fn object_path(&self, h: &ArtifactHash) -> PathBuf {
        let hex = h.hex();
        self.path_under(&["objects", &hex[..2], &hex[2..]])
    }

    /// `root/a/b/…` in one allocation, with room for an extension: a path
    /// is made for each lookup.
    fn path_under(&self, parts: &[&str]) -> PathBuf {
        let len = self.root.as_os_str().len() + parts.iter().map(|p| p.len() + 1).sum::<usize>();
        let mut path = PathBuf::with_capacity(len + ".json".len());
        path.push(&self.root);
        for part in parts {
            path.push(part);
        }
        path
    }

    pub fn has_object(&self, h: &ArtifactHash) -> bool {
        self.object_path(h).is_file()
    }

    /// Whether the object is present and its bytes hash to its name,
    /// re-reading them only when its stat changed since they last did (an
    /// edit through a hard link, a replaced file). Bit rot that changes no
    /// metadata is found by [`Cache::verify_object`], which always reads.
    pub fn object_intact(&self, h: &ArtifactHash) -> Result<bool, CacheError> {
        let p = self.object_path(h);
        let hashed = match self.dirs.objects.file_stat(&p) {
            Ok(Some(stat)) => self.stat.hash_object_at(&p, stat),
            Ok(None) => return Err(CacheError::NotAnObject { path: p }),
            Err(e) => Err(HashError::Io { path: p, source: e }),
        };
        match hashed {
            Ok(actual) => Ok(actual == *h),
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => Ok(false),
            Err(e) => Err(CacheError::Hash(e)),
        }
    }

    /// Whether the object's bytes, read now, hash to its name.
    pub fn verify_object(&self, h: &ArtifactHash) -> Result<bool, CacheError> {
        let p = self.object_path(h);
        match hash_file(&p) {
            Ok((actual, _)) => Ok(actual == *h),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io("cannot read object", p, e)),
        }
    }

    /// Removes a damaged object, and every manifest that names it, so the
    /// stages that made it are recomputed. Rare (only on damage), so the
    /// scan over manifests is affordable.
    pub fn evict_object(&self, h: &ArtifactHash) {
        let p = self.object_path(h);
        self.stat.forget(&p);
        let _ = fs::remove_file(p);
        for m in self.manifests() {
            if m.outputs.values().any(|o| o.hash == *h) {
                self.remove_manifest(&m.key);
            }
        }
    }

    /// A fresh private directory under `tmp/`.
    pub fn scratch_dir(&self, label: &str) -> Result<tempfile::TempDir, CacheError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(&tmp)
            .map_err(|e| CacheError::io("cannot create scratch directory in", tmp, e))
    }

    /// Moves a finished output into the store, returning its hash and size.
    /// A symbolic link is resolved and a file with other hard links is
    /// copied, so the object is always a private file that nothing outside
    /// the store can change. An existing object with these bytes is kept
    /// if intact and replaced if damaged.
    pub fn ingest(&self, file: &Path) -> Result<(ArtifactHash, u64), CacheError> {
        let own = self.private_copy(file)?;
        let (hash, size) = hash_file(own.path()).map_err(|e| CacheError::io("cannot read output", file, e))?;
        let dest = self.object_path(&hash);
        if fs::symlink_metadata(&dest).is_ok() {
            if self.object_intact(&hash)? {
                return Ok((hash, size));
            }
            tracing::warn!(object = %hash.short(), "replacing a damaged object with freshly computed bytes");
        }
        let path = own.keep();
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| CacheError::io("cannot sync output", &path, e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444))
            .map_err(|e| CacheError::io("cannot make read-only", &path, e))?;
        let dir = dest.parent().expect("objects have a parent directory");
        fs::create_dir_all(dir).map_err(|e| CacheError::io("cannot create", dir, e))?;
        fs::rename(&path, &dest).map_err(|e| CacheError::io("cannot move output into", &dest, e))?;
        sync_dir(dir);
        self.stat.record_verified(&dest, hash);
        Ok((hash, size))
    }

    /// `file` itself when it is a regular file with no other name, else a
    /// copy of what it holds or points to (reflinked where the filesystem
    /// can: `fs::copy` uses `copy_file_range`).
    fn private_copy(&self, file: &Path) -> Result<Owned, CacheError> {
        let bad = |message: String| CacheError::Output { path: file.to_path_buf(), message };
        let meta = fs::symlink_metadata(file).map_err(|e| CacheError::io("cannot read output", file, e))?;
        if meta.is_file() && meta.nlink() == 1 {
            return Ok(Owned::Moved(file.to_path_buf()));
        }
        let target = match fs::metadata(file) {
            Ok(m) => m,
            Err(_) => {
                let to = fs::read_link(file).map(|t| t.display().to_string()).unwrap_or_default();
                return Err(bad(format!("is a symbolic link to `{to}`, which does not exist")));
            }
        };
        if !target.is_file() {
            return Err(bad("is not a regular file (an output must be a file; archive a directory first)".into()));
        }
        let tmp = self.root.join("tmp");
        let copy = tempfile::NamedTempFile::new_in(&tmp).map_err(|e| CacheError::io("cannot create temp file in", &tmp, e))?;
        fs::copy(file, copy.path()).map_err(|e| CacheError::io("cannot copy output", file, e))?;
        Ok(Owned::Copied(copy))
    }

    /// Stores `bytes` as an object (if not already there intact); returns its path.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let hash = ArtifactHash::of_bytes(bytes);
        let dest = self.object_path(&hash);
        if !self.object_intact(&hash)? {
            let dir = dest.parent().expect("objects have a parent directory");
            fs::create_dir_all(dir).map_err(|e| CacheError::io("cannot create", dir, e))?;
            self.write_atomic(&dest, bytes)?;
            let _ = fs::set_permissions(&dest, fs::Permissions::from_mode(0o444));
            self.stat.record_verified(&dest, hash);
        }
        Ok(dest)
    }

    fn manifest_path(&self, key: &StageKey) -> PathBuf {
        let mut path = self.path_under(&["manifests", &key.hex()]);
        path.set_extension("json");
        path
    }

    /// The manifest for a key. A miss is `Ok(None)`. A manifest that does
    /// not parse is reported through `warn` and treated as a miss.
    pub fn manifest(&self, key: &StageKey, warn: &dyn Fn(String)) -> Result<Option<Manifest>, CacheError> {
        self.read_manifest(key, warn)
    }

    /// The manifest of `key` without its key inputs: a caller that looks a
    /// key up holds them already (they are what the key hashes), so they
    /// are skipped, not read back (most of a manifest's parse on a no-op
    /// run).
    pub fn manifest_hit(&self, key: &StageKey, warn: &dyn Fn(String)) -> Result<Option<Hit>, CacheError> {
        self.read_manifest(key, warn)
    }

    fn read_manifest<K: serde::de::DeserializeOwned>(&self, key: &StageKey, warn: &dyn Fn(String)) -> Result<Option<ManifestOf<K>>, CacheError> {
        let p = self.manifest_path(key);
        let bytes = match self.dirs.manifests.open(&p).and_then(read_small) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io("cannot read manifest", p, e)),
        };
        match serde_json::from_slice::<ManifestOf<K>>(&bytes) {
            Ok(m) if m.key == *key => Ok(Some(m)),
            Ok(_) => {
                warn(format!("manifest {} names another key; ignoring it", p.display()));
                Ok(None)
            }
            Err(e) => {
                warn(format!("manifest {} is damaged ({e}); treating it as a miss", p.display()));
                Ok(None)
            }
        }
    }

    /// Writes a manifest, after every object it names is durable (see
    /// [`Cache::ingest`]). It is fsynced when its stage took
    /// [`SYNC_AT_ONCE_S`] or more; a quicker stage's is left to the
    /// kernel's writeback, so a crash soon after can lose it or leave it cut
    /// short. Either reads as a miss and the stage runs again, which costs
    /// less than the two fsyncs every quick stage would pay; never as a hit
    /// on objects that are not all there.
    pub fn write_manifest(&self, m: &Manifest) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec_pretty(m).expect("manifests serialise");
        self.write_renamed(&self.manifest_path(&m.key), &bytes, m.duration_s >= SYNC_AT_ONCE_S)
    }

    pub fn remove_manifest(&self, key: &StageKey) {
        let _ = fs::remove_file(self.manifest_path(key));
    }

    /// Every manifest in the cache, and the paths of those that do not parse.
    pub fn manifests_checked(&self) -> (Vec<Manifest>, Vec<PathBuf>) {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        let Ok(dir) = fs::read_dir(self.root.join("manifests")) else { return (good, bad) };
        for e in dir.flatten() {
            match fs::read(e.path()).ok().and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()) {
                Some(m) => good.push(m),
                None => bad.push(e.path()),
            }
        }
        (good, bad)
    }

    /// Every manifest in the cache (damaged ones skipped).
    pub fn manifests(&self) -> Vec<Manifest> {
        self.manifests_checked().0
    }

    /// Writes via temp file + fsync + rename, so readers see old or new.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        self.write_renamed(dest, bytes, true)
    }

    /// Writes via a temp file renamed into place, so readers see old or
    /// new; `durable` syncs the file before and its directory after.
    fn write_renamed(&self, dest: &Path, bytes: &[u8], durable: bool) -> Result<(), CacheError> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| CacheError::io("cannot create temp file in", &tmp_dir, e))?;
        tmp.write_all(bytes).map_err(|e| CacheError::io("cannot write", tmp.path().to_path_buf(), e))?;
        if durable {
            tmp.as_file().sync_all().map_err(|e| CacheError::io("cannot sync", tmp.path().to_path_buf(), e))?;
        }
        tmp.persist(dest).map_err(|e| CacheError::io("cannot write", dest, e.error))?;
        if let (true, Some(dir)) = (durable, dest.parent()) {
            sync_dir(dir);
        }
        Ok(())
    }

    /// Removes leftovers of interrupted runs. Call with the lock held.
    /// `tmp/` is a real directory (checked by [`Cache::open`]); links in it
    /// are removed, never followed.
    pub fn clean_tmp(&self) {
        let Ok(dir) = fs::read_dir(self.root.join("tmp")) else { return };
        for e in dir.flatten() {
            let p = e.path();
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
                _ => fs::remove_file(&p),
            };
        }
    }
}

/// A file about to become an object: the output itself, or a private copy.
enum Owned {
    Moved(PathBuf),
    Copied(tempfile::NamedTempFile),
}

impl Owned {
    fn path(&self) -> &Path {
        match self {
            Owned::Moved(p) => p,
            Owned::Copied(t) => t.path(),
        }
    }

    /// The path, no longer deleted on drop.
    fn keep(self) -> PathBuf {
        match self {
            Owned::Moved(p) => p,
            Owned::Copied(t) => t.into_temp_path().keep().unwrap_or_default(),
        }
    }
}

/// Whether `root` is a cairn cache: tagged, or laid out like an untagged
/// one made before the tag existed.
pub fn is_cache(root: &Path) -> bool {
    root.join(CACHE_TAG).is_file() || is_legacy_cache(root)
}

fn is_legacy_cache(root: &Path) -> bool {
    let Ok(dir) = fs::read_dir(root) else { return false };
    let names: Vec<String> = dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.iter().any(|n| n == "objects")
        && names.iter().any(|n| n == "manifests")
        && names.iter().all(|n| LEGACY_ENTRIES.contains(&n.as_str()) || n == CACHE_TAG)
}

/// Whether `root` does not exist or is an empty directory.
fn is_missing_or_empty(root: &Path) -> bool {
    match fs::read_dir(root) {
        Ok(mut d) => d.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Reads a file of a few KiB (a manifest) in as few calls as the kernel
/// allows: `fs::read` first asks the file's size, a call more per
/// manifest, and a no-op run reads one per stage.
fn read_small(file: File) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(4096);
    file.take(u64::MAX).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Makes `root` a cache directory, or checks that it is one.
fn claim(root: &Path) -> Result<(), CacheError> {
    let foreign = |reason: &str| CacheError::Foreign { path: root.to_path_buf(), reason: reason.to_string() };
    match fs::metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(root).map_err(|e| CacheError::io("cannot create cache directory", root, e))?;
        }
        Err(e) => return Err(CacheError::io("cannot open cache directory", root, e)),
        Ok(m) if !m.is_dir() => return Err(foreign("it is not a directory")),
        Ok(_) => {}
    }
    if root.join(CACHE_TAG).is_file() {
        return Ok(());
    }
    let empty = is_missing_or_empty(root);
    if !empty && !is_legacy_cache(root) {
        return Err(foreign("it holds files that are not cairn's"));
    }
    match fs::write(root.join(CACHE_TAG), CACHE_TAG_TEXT) {
        Ok(()) => Ok(()),
        // A read-only legacy cache can still be read.
        Err(_) if !empty => Ok(()),
        Err(e) => Err(CacheError::io("cannot write", root.join(CACHE_TAG), e)),
    }
}

/// `dir` when it is a real directory (cairn's own), not a link to one:
/// what a cleanup may read and delete in.
pub(super) fn real_dir(dir: PathBuf) -> Option<PathBuf> {
    fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()).then_some(dir)
}

/// Creates `dir` if missing; refuses a link or a non-directory in its place.
pub(super) fn ensure_real_dir(dir: &Path) -> Result<(), CacheError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) => Err(CacheError::Foreign {
            path: dir.to_path_buf(),
            reason: if m.file_type().is_symlink() {
                "it is a symbolic link, and cairn never writes or deletes through one (replace it with a directory)".into()
            } else {
                "it is not a directory".into()
            },
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir(dir).map_err(|e| CacheError::io("cannot create cache directory", dir, e))
        }
        Err(e) => Err(CacheError::io("cannot open cache directory", dir, e)),
    }
}

/// Makes a rename durable. Best effort: not every filesystem supports it.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
