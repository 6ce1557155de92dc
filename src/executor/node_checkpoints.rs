//! A job's checkpoints on the remote (`data = "remote"`): the node's
//! checkpoint directory (`work/checkpoints`) goes with its temporary
//! directory, so while the stage runs each new version of its files is
//! uploaded to `v1/jobs/<job>/checkpoints/<file>`, replacing the last one,
//! and at the job's start, before the stage runs, whatever is there is
//! downloaded into it. A requeued job (preempted, `scontrol requeue`) is
//! the same job under the same address, so it resumes, on any node, from
//! the last checkpoint that reached the remote.
//!
//! A resumable kind writes each checkpoint to a temporary name and renames
//! it, so a file read here is one whole version; names ending in `.tmp`
//! are such temporary names and are not sent. The remote is hostile: only
//! plain file names, at most [`FILES_MAX`] files and [`BYTES_MAX`] bytes in
//! all, and the kind checks what it reads (`train` reports a checkpoint
//! that does not parse or fit and trains from the first epoch). Failing
//! to move a checkpoint is a line in the job's log, never a failed stage.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::remote_job::is_plain_name;
use crate::remote::Remote;

/// The checkpoints' folder under the job's files on the remote.
pub const DIR: &str = "checkpoints";
/// The most files of a job's checkpoints moved either way.
pub const FILES_MAX: usize = 16;
/// The most bytes of a job's checkpoints moved either way (a ResNet-50's
/// checkpoint is about 400 MB).
pub const BYTES_MAX: u64 = 16 << 30;

/// One version of a file: a rename brings another inode, a rewrite
/// another size or modification time.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Version {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Version {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { ino: meta.ino(), len: meta.len(), mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128 }
    }
}

/// The node's checkpoint directory and what of it the remote has.
pub struct Checkpoints {
    dir: PathBuf,
    /// The version of each file the remote holds.
    sent: BTreeMap<String, Version>,
    /// Files already reported as not sent, so the log says it once.
    said: BTreeSet<String>,
}

impl Checkpoints {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, sent: BTreeMap::new(), said: BTreeSet::new() }
    }

    /// Downloads the job's checkpoints from the remote into the directory
    /// (created), remembering them as sent.
    pub fn restore(&mut self, remote: &Remote, job: &str) {
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            return say(&format!("cannot create {}: {e}", self.dir.display()));
        }
        let listed = match remote.list_job_files(job, DIR) {
            Ok(listed) => listed,
            Err(e) => return say(&format!("cannot list the job's checkpoints on the remote ({e}); the stage starts without them")),
        };
        let mut total = 0;
        for (name, size) in listed {
            if !sendable(&name) || self.sent.len() >= FILES_MAX || total + size > BYTES_MAX {
                say(&format!("ignoring {DIR}/{name:?} on the remote: not a plain, final file name, or past {FILES_MAX} files or {BYTES_MAX} bytes"));
                continue;
            }
            let dest = self.dir.join(&name);
            let fetched = remote.fetch_job_file(job, &format!("{DIR}/{name}"), BYTES_MAX - total, &dest).map(|()| std::fs::metadata(&dest));
            match fetched {
                Ok(Ok(meta)) => {
                    total += meta.len();
                    self.sent.insert(name.clone(), Version::of(&meta));
                    say(&format!("restored checkpoint {name} ({} bytes) from the remote", meta.len()));
                }
                Ok(Err(e)) => say(&format!("cannot read the restored checkpoint {name}: {e}")),
                Err(e) => say(&format!("cannot restore checkpoint {name}: {e}; the stage starts without it")),
            }
        }
    }

    /// Uploads each file of the directory whose version the remote does
    /// not hold; whether anything was tried. A failure is tried again at
    /// the next call.
    pub fn sync(&mut self, remote: &Remote, job: &str) -> bool {
        let mut tried = false;
        for (name, version) in self.changed() {
            if !self.fits(&name, version.len) {
                if self.said.insert(name.clone()) {
                    say(&format!("not keeping checkpoint {name} on the remote: past {FILES_MAX} files or {BYTES_MAX} bytes; a requeued job cannot resume from it"));
                }
                continue;
            }
            tried = true;
            match remote.put_job_file_from(job, &format!("{DIR}/{name}"), &self.dir.join(&name)) {
                Ok(_) => {
                    self.sent.insert(name, version);
                }
                Err(e) if self.said.insert(name.clone()) => say(&format!("cannot upload checkpoint {name}: {e}; trying again")),
                Err(_) => {}
            }
        }
        tried
    }

    /// The files whose version the remote does not hold, by name.
    fn changed(&self) -> Vec<(String, Version)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<(String, Version)> = entries
            .flatten()
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok().filter(|m| m.is_file())?)))
            .filter(|(name, _)| sendable(name))
            .map(|(name, meta)| (name, Version::of(&meta)))
            .filter(|(name, v)| self.sent.get(name) != Some(v))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether `name` at `len` bytes stays within the bounds, with the
    /// other files the remote holds.
    fn fits(&self, name: &str, len: u64) -> bool {
        let others = self.sent.iter().filter(|(n, _)| *n != name);
        let (count, bytes) = others.fold((1, len), |(c, b), (_, v)| (c + 1, b + v.len));
        count <= FILES_MAX && bytes <= BYTES_MAX
    }
}

/// A name the checkpoints may have on the remote: plain, not temporary.
fn sendable(name: &str) -> bool {
    is_plain_name(name) && !name.ends_with(".tmp")
}

/// A line in the job's log (stdout goes there).
fn say(line: &str) {
    println!("cairn exec-job: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_new_version_is_kept_on_the_remote_and_restored() {
        let t = tempfile::tempdir().unwrap();
        let r = Remote::in_dir(&t.path().join("remote"));
        let dir = t.path().join("ckpt");
        std::fs::create_dir(&dir).unwrap();
        let mut c = Checkpoints::new(dir.clone());
        assert!(!c.sync(&r, "run/train-1"), "nothing to send yet");
        std::fs::write(dir.join("checkpoint.safetensors"), "epoch 1").unwrap();
        std::fs::write(dir.join("checkpoint.safetensors.tmp"), "half").unwrap();
        assert!(c.sync(&r, "run/train-1"));
        assert!(!c.sync(&r, "run/train-1"), "an unchanged file is not sent again");
        // The kind's atomic write: another inode under the same name.
        std::fs::write(dir.join("new.tmp"), "epoch 2").unwrap();
        std::fs::rename(dir.join("new.tmp"), dir.join("checkpoint.safetensors")).unwrap();
        assert!(c.sync(&r, "run/train-1"));
        assert_eq!(r.list_job_files("run/train-1", DIR).unwrap(), [("checkpoint.safetensors".to_string(), 7)]);

        let again = t.path().join("requeued");
        let mut c = Checkpoints::new(again.clone());
        c.restore(&r, "run/train-1");
        assert_eq!(std::fs::read_to_string(again.join("checkpoint.safetensors")).unwrap(), "epoch 2");
        assert!(!c.sync(&r, "run/train-1"), "what was restored is not sent back");
    }

    #[test]
    fn a_hostile_remote_s_checkpoints_are_left_out() {
        let t = tempfile::tempdir().unwrap();
        let r = Remote::in_dir(t.path());
        let files = t.path().join("v1/jobs/run/train-1/checkpoints");
        std::fs::create_dir_all(files.join("sub")).unwrap();
        std::fs::write(files.join("sub/deep"), "x").unwrap();
        std::fs::write(files.join("left.tmp"), "x").unwrap();
        std::fs::write(files.join("ok"), "fine").unwrap();
        let dir = t.path().join("node/ckpt");
        let mut c = Checkpoints::new(dir.clone());
        c.restore(&r, "run/train-1");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["ok"]);
        assert!(!t.path().join("node/sub").exists() && !t.path().join("node/ckpt/sub").exists());
    }

    #[test]
    fn the_bounds_count_every_file_the_remote_holds() {
        let mut c = Checkpoints::new(PathBuf::from("/nonexistent"));
        let v = |len| Version { ino: 0, len, mtime_ns: 0 };
        assert!(c.fits("a", BYTES_MAX));
        c.sent.insert("a".into(), v(BYTES_MAX - 10));
        assert!(c.fits("a", BYTES_MAX), "a new version replaces the old one");
        assert!(c.fits("b", 10) && !c.fits("b", 11));
        c.sent = (0..FILES_MAX).map(|i| (i.to_string(), v(1))).collect();
        assert!(!c.fits("new", 1) && c.fits("0", 1));
    }

    #[test]
    fn a_large_checkpoint_streams_replaces_the_last_version_and_comes_back_bounded() {
        let size = crate::remote::transfer::SINGLE_PUT_MAX as usize + 5;
        let t = tempfile::tempdir().unwrap();
        let (r, local) = (Remote::in_dir(&t.path().join("remote")), t.path().join("ckpt"));
        for fill in [1u8, 2] {
            std::fs::write(&local, vec![fill; size]).unwrap();
            assert_eq!(r.put_job_file_from("run/s-1", "checkpoints/ckpt", &local).unwrap(), size as u64);
        }
        assert_eq!(r.list_job_files("run/s-1", "checkpoints").unwrap(), [("ckpt".to_string(), size as u64)]);
        let back = t.path().join("back");
        let err = r.fetch_job_file("run/s-1", "checkpoints/ckpt", size as u64 - 1, &back).unwrap_err().to_string();
        assert!(err.contains("larger than") && !back.exists(), "{err}");
        r.fetch_job_file("run/s-1", "checkpoints/ckpt", size as u64, &back).unwrap();
        assert!(std::fs::read(&back).unwrap() == vec![2u8; size], "the last version");
        assert!(r.fetch_job_file("run/s-1", "checkpoints/none", 10, &back).unwrap_err().to_string().contains("not on the remote"));
    }
}
