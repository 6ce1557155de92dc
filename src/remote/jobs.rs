//! The remote as the data plane of submitted jobs (`data = "remote"`, see
//! `crate::executor::remote_job`): a job's files under `v1/jobs/<job>/`
//! (its description, result record, log and `checkpoints/`) and the
//! blocking transfers of single objects between the remote and plain
//! files, each checked as a pull checks it. Objects are written
//! create-only like every other object; a job's description is too (a job
//! name is never reused), while its record, log and checkpoints are
//! overwritten: a running job rewrites them, and a requeued job that runs
//! again under the same name too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::path::{Path as RemotePath, PathPart};
use object_store::{ObjectStoreExt, PutPayload};

use super::transfer::{bounded, Failure, SINGLE_PUT_MAX};
use super::{Remote, RemoteConfig, RemoteError, CONCURRENCY};
use crate::digest::ArtifactHash;

/// A file to upload as an object: its path, the hash its bytes must have
/// and its size.
pub type LocalObject = (PathBuf, ArtifactHash, u64);

impl Remote {
    /// The configuration this remote was opened with (no credentials).
    pub fn config(&self) -> &RemoteConfig {
        &self.cfg
    }

    /// `v1/jobs/<job>/<name>`; `job` and `name` are made of safe names
    /// and `/`.
    fn job_path(&self, job: &str, name: &str) -> RemotePath {
        job.split('/').chain(name.split('/')).fold(self.c().base.clone().join("jobs"), |p, part| p.join(part))
    }

    /// An error unless the remote can be used (the cause when it is down).
    fn usable(&self) -> Result<(), RemoteError> {
        if self.ready()? {
            return Ok(());
        }
        let cause = self.down().unwrap_or_else(|| "it was found unusable earlier in this run".into());
        Err(RemoteError::Unavailable { url: self.display.clone(), cause })
    }

    /// One failed transfer as an error, the remote marked down when it is.
    fn transfer_error(&self, f: Failure, what: String) -> RemoteError {
        match f {
            Failure::Down(cause) => {
                let _ = self.mark_down(cause.clone());
                RemoteError::Unavailable { url: self.display.clone(), cause }
            }
            Failure::Missing => RemoteError::Transfer { url: self.display.clone(), what, cause: "not on the remote".into() },
            Failure::Bad(cause) => RemoteError::Transfer { url: self.display.clone(), what, cause },
        }
    }

    /// Writes a job's file: create-only (a job's description), or
    /// replacing an earlier one (a record or log a requeued job rewrites).
    pub fn put_job_file(&self, job: &str, name: &str, bytes: Vec<u8>, create_only: bool) -> Result<(), RemoteError> {
        self.usable()?;
        let path = self.job_path(job, name);
        let n = bytes.len() as u64;
        let put = async {
            if create_only {
                return self.put_create(&path, PutPayload::from(bytes)).await;
            }
            bounded(self.c().store.put(&path, PutPayload::from(bytes))).await?.map(|_| ()).map_err(|e| self.failure(&e))
        };
        self.block_on(put).map_err(|f| self.transfer_error(f, format!("cannot write {path}")))?;
        self.count(0, n);
        Ok(())
    }

    /// Reads a job's file, refusing more than `max` bytes; `Ok(None)` when
    /// it is not there. `written`: it is known to have been written (by
    /// the engine before the job, by a job that ended), so a store slow to
    /// show a new object gets two seconds.
    pub fn get_job_file(&self, job: &str, name: &str, max: u64, written: bool) -> Result<Option<Vec<u8>>, RemoteError> {
        self.usable()?;
        let path = self.job_path(job, name);
        let mut tries = if written { 10 } else { 1 };
        loop {
            tries -= 1;
            match self.block_on(self.get_bounded(&path, max, name)) {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(Failure::Missing) if tries > 0 => std::thread::sleep(std::time::Duration::from_millis(200)),
                Err(Failure::Missing) => return Ok(None),
                Err(f) => return Err(self.transfer_error(f, format!("cannot read {path}"))),
            }
        }
    }

    /// Uploads the file `local` as a job's file, replacing an earlier one
    /// (a checkpoint the job rewrites); streamed in parts when large.
    /// Returns the bytes sent.
    pub fn put_job_file_from(&self, job: &str, name: &str, local: &Path) -> Result<u64, RemoteError> {
        let unreadable = |e: std::io::Error| RemoteError::Transfer { url: self.display.clone(), what: format!("cannot upload {}", local.display()), cause: e.to_string() };
        let size = std::fs::metadata(local).map_err(unreadable)?.len();
        if size <= SINGLE_PUT_MAX {
            let bytes = std::fs::read(local).map_err(unreadable)?;
            let n = bytes.len() as u64;
            return self.put_job_file(job, name, bytes, false).map(|()| n);
        }
        self.usable()?;
        let path = self.job_path(job, name);
        self.block_on(self.upload_multipart(local, None, &path, &AtomicU64::new(0))).map_err(|f| self.transfer_error(f, format!("cannot write {path}")))
    }

    /// The files under `v1/jobs/<job>/<dir>/`, each as its path below it
    /// (`/`-separated) and size. A name the store escapes is left out: it
    /// could not be asked for again by that name.
    pub fn list_job_files(&self, job: &str, dir: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        self.usable()?;
        let prefix = self.job_path(job, dir);
        let mut out = Vec::new();
        for meta in self.list_under(&prefix)? {
            let Some(parts) = meta.location.prefix_match(&prefix) else { continue };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            if parts.iter().all(|p| PathPart::from(p.as_str()).as_ref() == p) {
                out.push((parts.join("/"), meta.size));
            }
        }
        Ok(out)
    }

    /// Deletes the files under `v1/jobs/<job>/<dir>/` (a finished job's
    /// checkpoints); how many there were.
    pub fn delete_job_files(&self, job: &str, dir: &str) -> Result<usize, RemoteError> {
        let files = self.list_job_files(job, dir)?;
        for (name, _) in &files {
            self.delete(&self.job_path(job, &format!("{dir}/{name}")))?;
        }
        Ok(files.len())
    }

    /// Downloads a job's file into the new file `dest` (its directory must
    /// exist), refusing more than `max` bytes.
    pub fn fetch_job_file(&self, job: &str, name: &str, max: u64, dest: &Path) -> Result<(), RemoteError> {
        self.usable()?;
        let path = self.job_path(job, name);
        self.block_on(self.download_bounded(&path, max, dest)).map_err(|f| self.transfer_error(f, format!("cannot read {path}")))
    }

    /// Uploads `files` as objects (those the remote lacks), a few at a
    /// time, each re-read and checked against its hash; the bytes sent.
    pub fn push_files(&self, files: &[LocalObject]) -> Result<u64, RemoteError> {
        self.usable()?;
        let sent = AtomicU64::new(0);
        let sent = &sent;
        let results: Vec<Result<u64, (Failure, &Path)>> = self.block_on(
            futures::stream::iter(files.iter().map(|(p, h, size)| async move { self.push_file(p, *h, *size, sent).await.map_err(|f| (f, p.as_path())) }))
                .buffer_unordered(CONCURRENCY)
                .collect(),
        );
        for r in results {
            r.map_err(|(f, p)| self.transfer_error(f, format!("cannot upload {}", p.display())))?;
        }
        Ok(sent.load(Ordering::Relaxed))
    }

    /// Downloads objects to new files, a few at a time, each checked for
    /// its size and hash before it is given its name.
    pub fn fetch_files(&self, files: &[(ArtifactHash, u64, PathBuf)]) -> Result<(), RemoteError> {
        self.usable()?;
        let results: Vec<Result<(), (Failure, ArtifactHash, u64)>> = self.block_on(
            futures::stream::iter(files.iter().map(|(h, size, dest)| async move { self.fetch_to(*h, *size, dest).await.map_err(|f| (f, *h, *size)) }))
                .buffer_unordered(CONCURRENCY)
                .collect(),
        );
        for r in results {
            r.map_err(|(f, h, size)| self.transfer_error(f, format!("object {} ({size} bytes)", h.short())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl Remote {
    /// A `file://` remote in the directory `dir` (created).
    pub(crate) fn in_dir(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let url = format!("file://{}", dir.display());
        Remote::open(&RemoteConfig::resolve(Some(&url), None).unwrap().unwrap()).unwrap()
    }
}
