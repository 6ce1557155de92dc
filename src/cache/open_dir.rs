//! A store directory held open, so a lookup under it walks only the path
//! below it, not every component of the cache's absolute root again. A
//! no-op run looks up a manifest and an object per stage (BENCHMARKS.md
//! "Fewer allocations, lookups from open directories, mimalloc v2").
//! Where the directory could not be opened (a cache opened for reading
//! before it exists), paths are used as they are.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::statcache::Stat;

pub struct OpenDir {
    path: PathBuf,
    fd: Option<OwnedFd>,
}

impl OpenDir {
    pub fn new(path: PathBuf) -> Self {
        let fd = rustix::fs::open(&path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok();
        Self { path, fd }
    }

    /// The stat of `path` (links followed) when it is a regular file;
    /// `None` when it is something else.
    pub fn file_stat(&self, path: &Path) -> io::Result<Option<Stat>> {
        let Some((fd, rel)) = self.relative(path) else {
            let meta = fs::metadata(path)?;
            return Ok(meta.is_file().then(|| Stat::of(&meta)));
        };
        let st = rustix::fs::statat(fd, rel, AtFlags::empty())?;
        Ok((FileType::from_raw_mode(st.st_mode as _) == FileType::RegularFile).then(|| Stat::of_raw(&st)))
    }

    /// `path` opened for reading.
    pub fn open(&self, path: &Path) -> io::Result<File> {
        let Some((fd, rel)) = self.relative(path) else { return File::open(path) };
        Ok(rustix::fs::openat(fd, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?.into())
    }

    /// This directory's descriptor and `path` below it, when both are.
    fn relative<'p>(&self, path: &'p Path) -> Option<(&OwnedFd, &'p Path)> {
        Some((self.fd.as_ref()?, path.strip_prefix(&self.path).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_from_the_open_directory_sees_what_a_path_lookup_sees() {
        let t = tempfile::tempdir().unwrap();
        let sub = t.path().join("ab");
        fs::create_dir(&sub).unwrap();
        let file = sub.join("cdef");
        fs::write(&file, b"bytes").unwrap();
        std::os::unix::fs::symlink(&file, sub.join("link")).unwrap();
        let open = OpenDir::new(t.path().to_path_buf());
        let closed = OpenDir::new(t.path().join("missing"));
        assert!(open.fd.is_some() && closed.fd.is_none());
        for dir in [&open, &closed] {
            // The same identity as std's, so the stat cache's entries stay valid.
            assert_eq!(dir.file_stat(&file).unwrap(), Some(Stat::read(&file).unwrap()));
            assert_eq!(dir.file_stat(&sub.join("link")).unwrap(), Some(Stat::read(&file).unwrap()), "links are followed");
            assert_eq!(dir.file_stat(&sub).unwrap(), None, "a directory is not a file");
            assert_eq!(dir.file_stat(&sub.join("gone")).unwrap_err().kind(), io::ErrorKind::NotFound);
            assert_eq!(io::read_to_string(dir.open(&file).unwrap()).unwrap(), "bytes");
        }
        let elsewhere = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(open.file_stat(elsewhere.path()).unwrap(), Some(Stat::read(elsewhere.path()).unwrap()), "a path outside it is used as is");
    }
}
