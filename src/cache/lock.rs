//! The cache lock: one writer (`run`, `gc`, `verify`) at a time.
//!
//! An advisory `flock` on `<cache>/lock`. The kernel drops it when the
//! holder dies, so a lock left by a killed process can never block anyone:
//! the stale pid in the file is only used in messages. Readers (`status`,
//! `inspect`) take no lock: every file they read is replaced atomically.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::CacheError;

pub struct CacheLock {
    file: File,
}

impl CacheLock {
    /// Takes the lock. When another process holds it, `on_wait` is called
    /// once with its pid, then this waits, unless `wait` is false, in which
    /// case it fails with [`CacheError::Locked`].
    pub fn acquire(cache_dir: &Path, wait: bool, on_wait: impl FnOnce(&str)) -> Result<Self, CacheError> {
        let path = cache_dir.join("lock");
        let mut file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path) {
            Ok(f) => f,
            // A read-only cache can still serve a fully cached run; flock
            // works on a descriptor opened for reading.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) && path.is_file() => {
                File::open(&path).map_err(|e| CacheError::io("cannot open lock file", &path, e))?
            }
            Err(e) => return Err(CacheError::io("cannot open lock file", &path, e)),
        };
        if !try_flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim().to_string();
            if !wait {
                return Err(CacheError::Locked { path: cache_dir.to_path_buf(), pid });
            }
            on_wait(&pid);
            if !try_flock(&file, libc::LOCK_EX)? {
                return Err(CacheError::Locked { path: cache_dir.to_path_buf(), pid });
            }
        }
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(Self { file })
    }
}

fn try_flock(file: &File, op: libc::c_int) -> Result<bool, CacheError> {
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(CacheError::io("cannot lock", "lock", err)),
        }
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        // SAFETY: as above; the lock is released on close anyway.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}
