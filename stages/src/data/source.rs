//! Turns a data set source (a directory, a `.tar` or a `.tar.gz`) into one
//! sorted list of files, each readable as bytes.
//!
//! Archives are read in a single streaming pass and never extracted: of
//! the files a reader may need (images, CIFAR batches, their class list)
//! an uncompressed archive's are only located (read from the archive when
//! decoded), a compressed one's are copied end to end into one unnamed
//! spill file in the stage's scratch directory and located there, and
//! everything else is skipped. So memory does not grow with the archive,
//! and a hostile archive cannot place files anywhere (no member's name
//! becomes a path); entries that could only be there to attack an
//! extracting reader (absolute paths, `..`, links) are refused with an
//! error rather than silently skipped. Compression is recognised by
//! content (the gzip magic), not by extension.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use super::DataError;

/// Extensions of the files readers use; archive members with other
/// extensions are skipped unread.
const KEPT_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bin", "txt"];

enum Blob {
    Disk(PathBuf),
    /// An archive member, at `offset` in the tree's [`SourceTree::members`]
    /// file: the archive itself, or the spill file of a compressed one.
    Span { offset: u64, len: u64 },
}

pub(crate) struct SourceFile {
    /// Path relative to the source root, `/`-separated.
    pub name: String,
    blob: Blob,
}

impl SourceFile {
    pub fn read(&self, tree: &SourceTree) -> Result<Cow<'_, [u8]>, DataError> {
        match &self.blob {
            Blob::Disk(path) => {
                std::fs::read(path).map(Cow::Owned).map_err(|source| DataError::Io { path: path.clone(), source })
            }
            Blob::Span { offset, len } => {
                let mut bytes = vec![0; *len as usize]; // no larger than the file, checked when located
                let members = tree.members.as_ref().expect("an archive's tree holds its members' file");
                members.read_exact_at(&mut bytes, *offset).map_err(|e| {
                    DataError::invalid(
                        self.display(tree),
                        format!("cannot read it from the archive ({e}); was the archive changed or cut short while it loaded?"),
                    )
                })?;
                Ok(Cow::Owned(bytes))
            }
        }
    }

    /// The name as shown in messages: inside-archive paths stay relative.
    pub fn display(&self, tree: &SourceTree) -> String {
        match &self.blob {
            Blob::Disk(path) => path.display().to_string(),
            Blob::Span { .. } => format!("{}:{}", tree.origin.display(), self.name),
        }
    }
}

pub(crate) struct SourceTree {
    /// The directory or archive the files come from.
    pub origin: PathBuf,
    /// Sorted by name.
    pub files: Vec<SourceFile>,
    /// Every directory, relative and `/`-separated (to spot empty ones).
    pub dirs: Vec<String>,
    /// Where an archive's members are read from: the archive itself when
    /// uncompressed, else the spill file they were copied to.
    members: Option<File>,
}

impl SourceTree {
    /// Lists the source at `path`; a compressed archive's members are
    /// copied into an unnamed file in `spill_dir` (the stage's scratch).
    pub fn open(path: &Path, spill_dir: &Path) -> Result<SourceTree, DataError> {
        let io = |source| DataError::Io { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mut tree = SourceTree { origin: path.to_path_buf(), files: Vec::new(), dirs: Vec::new(), members: None };
        if meta.is_dir() {
            tree.walk_dir(path, "")?;
        } else {
            tree.read_archive(path, spill_dir)?;
        }
        tree.files.sort_by(|a, b| a.name.cmp(&b.name));
        tree.dirs.sort();
        tree.dirs.dedup();
        Ok(tree)
    }

    fn walk_dir(&mut self, dir: &Path, rel: &str) -> Result<(), DataError> {
        let io = |source| DataError::Io { path: dir.to_path_buf(), source };
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let rel_name = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            // Follows links: a user's own directory may link to data elsewhere.
            let meta = std::fs::metadata(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
            if meta.is_dir() {
                self.dirs.push(rel_name.clone());
                self.walk_dir(&path, &rel_name)?;
            } else if meta.is_file() {
                self.files.push(SourceFile { name: rel_name, blob: Blob::Disk(path) });
            }
        }
        Ok(())
    }

    fn read_archive(&mut self, path: &Path, spill_dir: &Path) -> Result<(), DataError> {
        let io = |source| DataError::Io { path: path.to_path_buf(), source };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let mut magic = [0u8; 2];
        let is_gzip = {
            let buf = std::io::BufRead::fill_buf(&mut reader).map_err(io)?;
            magic.iter_mut().zip(buf).for_each(|(m, b)| *m = *b);
            magic == [0x1f, 0x8b]
        };
        let unreadable = |e| archive_err(path, format!("not a readable tar archive ({e}); give a directory, .tar or .tar.gz"));
        if is_gzip {
            let mut spill = Spill::create(spill_dir)?;
            let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(reader));
            self.add_entries(path, archive.entries().map_err(unreadable)?, |entry, name| spill.copy(path, entry, name))?;
            self.members = Some(spill.finish()?);
        } else {
            let size = reader.get_ref().metadata().map_err(io)?.len();
            let mut archive = tar::Archive::new(reader);
            self.add_entries(path, archive.entries_with_seek().map_err(unreadable)?, |entry, name| {
                let (offset, len) = (entry.raw_file_position(), entry.size());
                if offset.checked_add(len).is_none_or(|end| end > size) {
                    return Err(archive_err(path, format!("corrupt or truncated archive: entry `{name}` runs past the end of the file")));
                }
                Ok(Blob::Span { offset, len })
            })?;
            // The handle read from is the one listed: replacing the file
            // by name while it loads changes nothing.
            self.members = Some(archive.into_inner().into_inner());
        }
        Ok(())
    }

    /// Records the members of archive `path`, each wanted file where
    /// `locate` says it lies.
    fn add_entries<R: Read, F>(&mut self, path: &Path, entries: tar::Entries<'_, R>, mut locate: F) -> Result<(), DataError>
    where
        F: FnMut(&mut tar::Entry<'_, R>, &str) -> Result<Blob, DataError>,
    {
        let archive_err = |problem: String| archive_err(path, problem);
        let mut last: Option<String> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| archive_err(unreadable_entry(last.as_deref(), &e)))?;
            let raw = entry.path().map_err(|e| archive_err(format!("entry with an unreadable name: {e}")))?.into_owned();
            let name = safe_name(&raw).map_err(archive_err)?;
            last = Some(name.clone());
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                if !name.is_empty() {
                    self.dirs.push(name);
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                return Err(archive_err(format!(
                    "entry `{name}` is a link; cairn reads archives without extracting them and does not follow links \
                     (replace the link with the file it points to)"
                )));
            } else if kind.is_file() && wanted(&name) {
                let blob = locate(&mut entry, &name)?;
                // Parent folders appear implicitly in archives without
                // directory entries.
                let mut parent = name.as_str();
                while let Some((up, _)) = parent.rsplit_once('/') {
                    self.dirs.push(up.to_string());
                    parent = up;
                }
                self.files.push(SourceFile { name, blob });
            }
        }
        Ok(())
    }
}

/// The unnamed file a compressed archive's members are copied into, one
/// after another, so that they are read as an uncompressed archive's are.
struct Spill {
    dir: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

impl Spill {
    fn create(dir: &Path) -> Result<Spill, DataError> {
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("archive-members-{}-{n}", std::process::id()));
        let io = |source| DataError::Io { path: path.clone(), source };
        let file = File::options().read(true).write(true).create_new(true).open(&path).map_err(io)?;
        // Unlinked at once: the open handle keeps it until the tree goes,
        // and nothing is left behind if the stage dies.
        std::fs::remove_file(&path).map_err(io)?;
        Ok(Spill { dir: dir.to_path_buf(), out: BufWriter::with_capacity(1 << 20, file), len: 0 })
    }

    fn copy<R: Read>(&mut self, archive: &Path, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Blob, DataError> {
        let offset = self.len;
        // Reading and writing fail apart: one is the archive's fault, the other the disk's.
        let mut buf = [0u8; 64 << 10];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(archive_err(archive, format!("corrupt or truncated archive: cannot read entry `{name}`: {e}"))),
            };
            self.out.write_all(&buf[..n]).map_err(|e| spill_err(&self.dir, e))?;
            self.len += n as u64;
        }
        Ok(Blob::Span { offset, len: self.len - offset })
    }

    fn finish(self) -> Result<File, DataError> {
        let Spill { dir, out, .. } = self;
        out.into_inner().map_err(|e| spill_err(&dir, e.into_error()))
    }
}

fn spill_err(dir: &Path, e: std::io::Error) -> DataError {
    DataError::invalid(
        dir.display().to_string(),
        format!(
            "cannot copy the compressed archive's files here to read them ({e}); free disk space there, \
             or unpack the archive and give its directory"
        ),
    )
}

/// Why a header did not parse, after entry `last`. The tar reader's words
/// quote the header's bytes; for the first header, those are the first
/// bytes of whatever file was named (a `source` pointed at the wrong file,
/// a credentials file, say), so they are left out of the message.
fn unreadable_entry(last: Option<&str>, e: &std::io::Error) -> String {
    match last {
        None => "corrupt or truncated archive: its first header does not parse (is it a tar archive?)".into(),
        Some(name) => {
            let said: String = e.to_string().lines().next().unwrap_or("").chars().take(120).collect();
            format!("corrupt or truncated archive after entry `{name}`: {said}")
        }
    }
}

fn archive_err(archive: &Path, problem: String) -> DataError {
    DataError::invalid(archive.display().to_string(), problem)
}

fn wanted(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    !base.starts_with('.')
        && base.rsplit_once('.').is_some_and(|(_, ext)| KEPT_EXTENSIONS.iter().any(|k| ext.eq_ignore_ascii_case(k)))
}

/// An archive member's path as a relative `/`-separated name, or why it is
/// refused.
fn safe_name(raw: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for comp in raw.components() {
        match comp {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "entry `{}` has an absolute or `..` path, which no data set needs; refusing a possibly hostile archive",
                    raw.display()
                ))
            }
        }
    }
    Ok(parts.join("/"))
}
