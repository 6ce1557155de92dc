//! A remote job's working directory on its compute node: a fresh
//! `cairn-jobdir-XXXXXX` directory on the node's own disk (`$SLURM_TMPDIR`,
//! `$TMPDIR`, else `/tmp`), removed when the job ends. A job killed outright
//! cannot remove its own: Slurm sends SIGKILL once its `KillWait` after
//! SIGTERM has passed (a requeue, a preemption, a time limit), and the
//! directory holds the job's inputs, which can be gigabytes. So each job
//! holds an `flock` on its directory for as long as it lives, and every job
//! that starts on a node first removes the unlocked ones it finds, which the
//! kernel unlocked when their process died. A directory is made under a
//! name that no one sweeps, locked, and only then renamed, so no sweep ever
//! sees it unlocked. Directories of other users, and the `cairn-job-*` ones
//! of cairn versions that did not lock them, are left alone.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// What a live job's directory is called: this and six random letters or
/// digits (tempfile's tail), a name nothing else is expected to match.
const PREFIX: &str = "cairn-jobdir-";
/// What it is called until it is locked.
const UNLOCKED_PREFIX: &str = ".cairn-jobdir-new-";

/// A job's locked working directory; dropping it removes the directory.
pub struct NodeDir {
    path: PathBuf,
    /// The open directory the lock is held on (dropped after the removal).
    _lock: File,
}

impl NodeDir {
    /// Removes the directories of dead jobs under the node's temporary
    /// directory, then makes and locks this job's own.
    pub fn create() -> io::Result<NodeDir> {
        Self::create_in(&base())
    }

    fn create_in(base: &Path) -> io::Result<NodeDir> {
        sweep(base);
        let fresh = tempfile::Builder::new().prefix(UNLOCKED_PREFIX).tempdir_in(base)?;
        let lock = File::open(fresh.path())?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
        let tail = fresh.path().file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(UNLOCKED_PREFIX)).expect("named by tempfile with our prefix");
        let path = base.join(format!("{PREFIX}{tail}"));
        fs::rename(fresh.path(), &path)?;
        let _ = fresh.keep();
        Ok(NodeDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NodeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The node's own temporary directory.
fn base() -> PathBuf {
    ["SLURM_TMPDIR", "TMPDIR"].iter().filter_map(std::env::var_os).map(PathBuf::from).find(|p| p.is_dir()).unwrap_or_else(|| "/tmp".into())
}

/// Removes every job directory of this user under `base` whose lock is
/// free. Best effort: what cannot be read or locked is left.
fn sweep(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else { return };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_str().and_then(|n| n.strip_prefix(PREFIX)).is_some_and(|t| t.len() == 6 && t.bytes().all(|b| b.is_ascii_alphanumeric()));
        // Not followed: a link named like a job directory is not one.
        let dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if !ours || !dir {
            continue;
        }
        let Ok(handle) = File::open(&path) else { continue };
        if flock(&handle, FlockOperation::NonBlockingLockExclusive).is_ok() {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(base: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(base).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn a_dead_jobs_directory_is_removed_and_a_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        let live = NodeDir::create_in(base.path()).unwrap();
        fs::write(live.path().join("input"), b"x").unwrap();
        // A killed job's directory: its name, nobody holding its lock.
        let dead = base.path().join(format!("{PREFIX}killed"));
        fs::create_dir_all(dead.join("in")).unwrap();
        // Neither another program's directory, nor an older cairn's, nor
        // one whose name only starts like a job directory's is ours.
        let longer = format!("{PREFIX}tmp-abcdef");
        for other in ["cairn-job-old", "unrelated", &longer] {
            fs::create_dir(base.path().join(other)).unwrap();
        }
        std::os::unix::fs::symlink(base.path().join("unrelated"), base.path().join(format!("{PREFIX}link00"))).unwrap();

        let next = NodeDir::create_in(base.path()).unwrap();
        assert!(!dead.exists(), "the dead job's directory is removed");
        assert!(live.path().join("input").exists(), "a live job's directory is kept");
        assert!(next.path().file_name().unwrap().to_str().unwrap().starts_with(PREFIX));
        let (live_name, next_name) = (live.path().to_owned(), next.path().to_owned());
        drop((live, next));
        assert!(!live_name.exists() && !next_name.exists(), "a job removes its own directory when it ends");
        assert_eq!(names(base.path()), ["cairn-job-old", &format!("{PREFIX}link00"), &longer, "unrelated"]);
        assert!(base.path().join("unrelated").is_dir(), "the link's target is untouched");
    }
}
