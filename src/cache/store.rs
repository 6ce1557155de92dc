//! Objects and manifests on disk, written atomically.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::manifest::{Manifest, StageRef};
use super::CacheError;
use crate::digest::{ArtifactHash, StageKey};

#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

/// Bytes hashed per read: large enough for blake3's multi-threaded tree
/// hashing to pay off, small enough that hashing a 9 GB artifact keeps
/// the engine's memory flat (mapping the whole file, as blake3's
/// `update_mmap_rayon` does, made the engine's RSS grow to the file's size).
const HASH_CHUNK: usize = 16 << 20;

/// Hashes a file's bytes, reading it in bounded chunks (multi-threaded
/// within each chunk). Returns the hash and the number of bytes read.
pub fn hash_file(path: &Path) -> std::io::Result<(ArtifactHash, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        hasher.update_rayon(&buf[..filled]);
        size += filled as u64;
    }
    Ok((ArtifactHash::from_blake3(hasher.finalize()), size))
}

impl Cache {
    /// Opens (creating if needed) a cache directory.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        for sub in ["objects", "manifests", "refs", "runs", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| CacheError::io("cannot create cache directory", &p, e))?;
        }
        // Absolute, because stages run in their own working directory.
        let root = fs::canonicalize(root).map_err(|e| CacheError::io("cannot open cache directory", root, e))?;
        Ok(Self { root })
    }

    /// Opens a cache for reading only; a missing cache is simply empty.
    pub fn open_read(root: &Path) -> Self {
        Self { root: std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn object_path(&self, h: &ArtifactHash) -> PathBuf {
        let hex = h.to_hex();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    pub fn has_object(&self, h: &ArtifactHash) -> bool {
        self.object_path(h).is_file()
    }

    /// Whether the object's bytes still hash to its name.
    pub fn verify_object(&self, h: &ArtifactHash) -> Result<bool, CacheError> {
        let p = self.object_path(h);
        match hash_file(&p) {
            Ok((actual, _)) => Ok(actual == *h),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io("cannot read object", p, e)),
        }
    }

    /// Removes a damaged object so it is recomputed.
    pub fn evict_object(&self, h: &ArtifactHash) {
        let _ = fs::remove_file(self.object_path(h));
    }

    /// A fresh private directory under `tmp/`.
    pub fn scratch_dir(&self, label: &str) -> Result<tempfile::TempDir, CacheError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(&tmp)
            .map_err(|e| CacheError::io("cannot create scratch directory in", tmp, e))
    }

    /// Moves a finished file into the store, returning its hash and size.
    /// The file must be on the cache's filesystem (scratch dirs are).
    pub fn ingest(&self, file: &Path) -> Result<(ArtifactHash, u64), CacheError> {
        let (hash, size) = hash_file(file).map_err(|e| CacheError::io("cannot read output", file, e))?;
        let dest = self.object_path(&hash);
        if dest.is_file() {
            // Identical bytes are already stored; keep the existing object.
            let _ = fs::remove_file(file);
            return Ok((hash, size));
        }
        let f = File::open(file).map_err(|e| CacheError::io("cannot open output", file, e))?;
        f.sync_all().map_err(|e| CacheError::io("cannot sync output", file, e))?;
        // Read-only, so that hard links in artifacts/ cannot edit the cache.
        let _ = fs::set_permissions(file, fs::Permissions::from_mode(0o444));
        let dir = dest.parent().expect("objects have a parent directory");
        fs::create_dir_all(dir).map_err(|e| CacheError::io("cannot create", dir, e))?;
        fs::rename(file, &dest).map_err(|e| CacheError::io("cannot move output into", &dest, e))?;
        sync_dir(dir);
        Ok((hash, size))
    }

    /// Stores `bytes` as an object (if not already there); returns its path.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let dest = self.object_path(&ArtifactHash::of_bytes(bytes));
        if !dest.is_file() {
            let dir = dest.parent().expect("objects have a parent directory");
            fs::create_dir_all(dir).map_err(|e| CacheError::io("cannot create", dir, e))?;
            self.write_atomic(&dest, bytes)?;
            let _ = fs::set_permissions(&dest, fs::Permissions::from_mode(0o444));
        }
        Ok(dest)
    }

    fn manifest_path(&self, key: &StageKey) -> PathBuf {
        self.root.join("manifests").join(format!("{}.json", key.to_hex()))
    }

    /// The manifest for a key. A miss is `Ok(None)`. A manifest that does
    /// not parse is reported through `warn` and treated as a miss.
    pub fn manifest(&self, key: &StageKey, warn: &dyn Fn(String)) -> Result<Option<Manifest>, CacheError> {
        let p = self.manifest_path(key);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io("cannot read manifest", p, e)),
        };
        match serde_json::from_slice::<Manifest>(&bytes) {
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

    pub fn write_manifest(&self, m: &Manifest) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec_pretty(m).expect("manifests serialise");
        self.write_atomic(&self.manifest_path(&m.key), &bytes)
    }

    pub fn remove_manifest(&self, key: &StageKey) {
        let _ = fs::remove_file(self.manifest_path(key));
    }

    /// Every manifest in the cache (damaged ones skipped).
    pub fn manifests(&self) -> Vec<Manifest> {
        let Ok(dir) = fs::read_dir(self.root.join("manifests")) else { return Vec::new() };
        dir.flatten()
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    pub fn stage_ref(&self, stage: &str) -> Option<StageRef> {
        let bytes = fs::read(self.root.join("refs").join(format!("{stage}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_stage_ref(&self, stage: &str, r: &StageRef) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec_pretty(r).expect("refs serialise");
        self.write_atomic(&self.root.join("refs").join(format!("{stage}.json")), &bytes)
    }

    /// Writes via temp file + fsync + rename, so readers see old or new.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| CacheError::io("cannot create temp file in", &tmp_dir, e))?;
        tmp.write_all(bytes).map_err(|e| CacheError::io("cannot write", tmp.path().to_path_buf(), e))?;
        tmp.as_file().sync_all().map_err(|e| CacheError::io("cannot sync", tmp.path().to_path_buf(), e))?;
        tmp.persist(dest).map_err(|e| CacheError::io("cannot write", dest, e.error))?;
        if let Some(dir) = dest.parent() {
            sync_dir(dir);
        }
        Ok(())
    }

    /// Removes leftovers of interrupted runs. Call with the lock held.
    pub fn clean_tmp(&self) {
        if let Ok(dir) = fs::read_dir(self.root.join("tmp")) {
            for e in dir.flatten() {
                let p = e.path();
                let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            }
        }
    }
}

/// Makes a rename durable. Best effort: not every filesystem supports it.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_hash_equals_one_shot_hash_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, HASH_CHUNK - 1, HASH_CHUNK, HASH_CHUNK + 3, 2 * HASH_CHUNK + 7] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{len}"));
            fs::write(&p, &bytes).unwrap();
            let (h, size) = hash_file(&p).unwrap();
            assert_eq!(size, len as u64);
            assert_eq!(h, ArtifactHash::of_bytes(&bytes), "length {len}");
        }
    }
}
