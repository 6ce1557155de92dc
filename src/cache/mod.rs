//! The content-addressed cache.
//!
//! Layout under the cache directory:
//!
//! ```text
//! CACHEDIR.TAG          marks the directory as cairn's (nothing else is touched)
//! objects/ab/cdef…      artifact bytes, named by their blake3, read-only
//! manifests/<key>.json  one per stage key: output hashes, timings, metrics
//! projects/<id>.json    each project using the cache: its pipeline file and
//!                       the key inputs each of its stages last ran or hit
//!                       with (for `explain` and `gc`; not part of any key;
//!                       see [`projects`])
//! runs/<run>.parquet    the run history
//! tmp/                  scratch directories and files being written
//! checkpoints/<key>/    resumable stages' checkpoints (never results; see
//!                       `gc::orphan_checkpoints`)
//! statcache.json        content hashes of files (external inputs and
//!                       objects) by (dev, inode, size, mtime, ctime)
//! probe/<id>.json       the worker's environment facts, per worker binary
//!                       and driver (see `crate::env`)
//! lock                  held by `cairn run` and `gc`
//! ```
//!
//! Writes are atomic: a file is written under `tmp/` and renamed into
//! place. Objects and refs are fsynced (file, then directory); a stage's
//! manifest is written only once all its objects are durable, and is
//! fsynced only when the stage took a second or more: a quicker one's is
//! left to the kernel's writeback, since running the stage again costs
//! less than syncing each. So a crash at any moment leaves each entry
//! complete, absent, or with a manifest that is empty or cut short, which
//! reads as a miss (it does not parse, or names another key); never a
//! manifest whose objects are missing or partly written. Orphaned temp
//! files are removed by the next run. A run that changes nothing writes
//! nothing.

pub mod gc;
pub mod hash;
pub mod lock;
pub mod manifest;
mod open_dir;
pub mod projects;
pub mod statcache;
pub mod store;

pub use lock::CacheLock;
pub use manifest::{output_hashes, Hit, Manifest, OutputRecord, StageRef};
pub use hash::hash_file;
pub use projects::Project;
pub use store::Cache;

use std::path::PathBuf;

/// Cache failures. A cache *miss* is never an error: lookups return `Ok(None)`.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the cache at {} is locked by another cairn process (pid {pid}); wait for it or stop it", path.display())]
    Locked { path: PathBuf, pid: String },
    #[error("cannot write to the cache at {}: {source}\n  help: {help}", path.display())]
    NotWritable { path: PathBuf, source: std::io::Error, help: &'static str },
    #[error("{} is not a cairn cache: {reason}\n  help: point --cache-dir (or CAIRN_CACHE_DIR) at an empty or cairn-made directory; cairn will not write into or delete from anything else", path.display())]
    Foreign { path: PathBuf, reason: String },
    #[error("output {} {message}", path.display())]
    Output { path: PathBuf, message: String },
    #[error("cannot hash {0}")]
    Hash(#[from] statcache::HashError),
    #[error("{} should be a cached object (a regular file) but is a directory or a special file\n  help: nothing cairn writes looks like this: remove it (`rm -r {}`) and run again; the stages whose output it was are recomputed", path.display(), path.display())]
    NotAnObject { path: PathBuf },
    #[error("gc cannot read {} record(s) in the cache, so it cannot know what they keep, and deletes nothing:{}\n  help: {}", records.len(), projects::list_unreadable(records), projects::UNREADABLE_HELP)]
    UnreadableRecords { records: Vec<projects::UnreadableRecord> },
}

impl CacheError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        use std::io::ErrorKind;
        // Wrapped errors (tempfile adds the path) keep the kind, not the errno.
        let errno = source.raw_os_error().or(match source.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Some(libc::ENOSPC),
            ErrorKind::ReadOnlyFilesystem => Some(libc::EROFS),
            ErrorKind::PermissionDenied => Some(libc::EACCES),
            _ => None,
        });
        match errno {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => CacheError::NotWritable {
                path,
                source,
                help: "the disk is full: free space or point --cache-dir elsewhere; earlier results are intact",
            },
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => CacheError::NotWritable {
                path,
                source,
                help: "the cache is read-only here: use --cache-dir to point at a writable directory",
            },
            _ => CacheError::Io { action, path, source },
        }
    }
}
